"""Calls per second through the B2BUA, beside Kamailio as a stateful proxy under the same SIPp load, in one run.

SIPp caller -> server -> SIPp callee (registered to the server): INVITE -> 407 -> ACK -> INVITE with credentials ->
180 -> 200 -> ACK -> hold -> BYE -> 200 (``scenarios/bench_call.xml``: responses matched to their transaction, so a
late retransmitted 2xx is re-ACKed, never taken for an error). Two variants: 0 s hold (pure set-up and tear-down)
and a 1 s hold. Each offered rate runs against ccpbx and then Kamailio (alternating), each ladder going on past its
target's limit. Per step: achieved rate (completion rate of the calls' 200s), failed calls (either SIPp),
retransmissions (SIPp's counters, caller's plus callee's), p50/p99 response time (first INVITE to the 200,
SIPp's ~4 ms clock), and the server's CPU ms per call (user + system of its process tree from /proc over the
step; for ccpbx that includes the media engine's idle ticks, reported apart as ``idle_cpu_pct``).

Figures per variant: the highest achieved rate of a failure-free step, and the highest that is also fast
(p99 <= 100 ms, retransmissions <= 1% of calls); ratio = ccpbx / Kamailio. Kamailio proxies signalling only and
anchors no media (ccpbx allocates and bridges two RTP channels per call), so the ratio compares a B2BUA with a
proxy: a ceiling, not like for like. SIPp caller and callee share the machine's cores with the server under test.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import main_for
from benchmarks.ladder import (
    ServerRejectedError,
    Target,
    asterisk_command,
    kamailio_binary,
    restart_uas,
    rtp_port_ranges,
    run_ladder,
    start_asterisk,
    start_ccpbx,
    start_kamailio,
    start_uas,
)
from benchmarks.measure import Step, ladder_figures, tree_cpu_s

# Steps of 50/s where ccpbx breaks (300-500/s on 2 cores since SIP and media workers): with 100 then 200, or
# 400 then 600, "fast" and "failure-free" could only be told apart to within a third to a doubling (item 2 of
# the performance issue compares the two rates: fast at least 80% of failure-free).
RATES = (50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 800, 1200, 1600, 2400, 3200, 4800)
RATES_QUICK = (50, 100, 150, 200, 250, 300, 400, 800, 1600)
VARIANTS = (("0s_hold", 0), ("1s_hold", 1000))


REFERENCES = ("kamailio", "asterisk")  # the other servers a ladder may hold, each compared with every ccpbx target


def comparison_rows(kind: str, op: str, steps: dict[str, list[Step]]) -> list[dict[str, Any]]:
    """The figures of one ladder as table rows: both maxima with each reference's beside (Kamailio's rows keep the
    plain names, Asterisk's end in ``vs asterisk``), and the CPU per operation and p99 at the highest rate both
    served without a failure; one set per ccpbx target (``ccpbx``, then e.g. ``ccpbx-sip1`` with SIP workers,
    named in the rows as ``kind[ccpbx-sip1]``)."""
    rows = []
    for name in [n for n in steps if n.startswith("ccpbx")]:
        for reference in [r for r in REFERENCES if steps.get(r)] or [None]:
            rows += _target_rows(kind if name == "ccpbx" else f"{kind}[{name}]", op, steps, name, reference)
    return rows


def _target_rows(kind: str, op: str, steps: dict[str, list[Step]], name: str,
                 reference: str | None) -> list[dict[str, Any]]:
    ours = ladder_figures(steps.get(name, []))
    theirs = ladder_figures(steps[reference]) if reference else None
    suffix = f" vs {reference}" if reference not in (None, "kamailio") else ""
    rows = []
    for key, label in (("max_rate_zero_failures", "failure-free"), ("max_rate_fast", "fast (p99<=100ms, rtx<=1%)")):
        ref = theirs[key] if theirs else None
        rows.append({"name": f"{kind}.{key}{suffix}", "value": round(ours[key], 1), "unit": f"{op}s/s, {label}",
                     "reference": reference, "reference_value": round(ref, 1) if ref else ref,
                     "ratio": round(ours[key] / ref, 3) if ref else None})
    if reference:
        both = [(a, b) for a in steps[name] for b in steps[reference]
                if a.offered == b.offered and a.good and b.good and a.cpu_ms_per_op and b.cpu_ms_per_op]
        if both:
            a, b = max(both, key=lambda pair: pair[0].offered)
            assert a.cpu_ms_per_op is not None and b.cpu_ms_per_op is not None
            rows.append({"name": f"{kind}.server_cpu_per_op @ {a.offered:g}/s{suffix}", "value": a.cpu_ms_per_op,
                         "unit": f"CPU ms per {op} (ratio >1: ccpbx costs more)", "reference": reference,
                         "reference_value": b.cpu_ms_per_op, "ratio": round(a.cpu_ms_per_op / b.cpu_ms_per_op, 2)})
            rows.append({"name": f"{kind}.p99 @ {a.offered:g}/s{suffix}", "value": a.p99_ms, "unit": "ms (first "
                         "request to final response)", "reference": reference, "reference_value": b.p99_ms,
                         "ratio": round(a.p99_ms / b.p99_ms, 2) if a.p99_ms and b.p99_ms else None})
    return rows


def start_targets(work: Path, options: dict[str, Any], *, with_uas: bool) -> list[Target]:
    targets: list[Target] = []
    try:
        server_args = list(options.get("server_args", []))
        ports = rtp_port_ranges(1 + len(options.get("sip_workers", [])))  # a range of its own for each ccpbx
        try:
            targets.append(start_ccpbx(work / "ccpbx", server_args, rtp_ports=ports[0]))
        except ServerRejectedError as exc:
            print(f"  {exc}\n  the server rejected {server_args}: running without them", file=sys.stderr)
            targets.append(start_ccpbx(work / "ccpbx", rtp_ports=ports[0]))
        for index, count in enumerate(options.get("sip_workers", []), 1):  # the same server with SIP workers
            name = f"ccpbx-sip{count}"
            try:
                target = start_ccpbx(work / name, [*server_args, "--sip-workers", str(count)],
                                     rtp_ports=ports[index])
            except ServerRejectedError as exc:
                print(f"  {exc}\n  no {name} target", file=sys.stderr)
                continue
            target.name = name
            targets.append(target)
        if options.get("kamailio", True) and kamailio_binary():
            try:
                targets.append(start_kamailio(work / "kamailio"))
            except RuntimeError as exc:
                print(f"  kamailio reference unavailable: {exc}", file=sys.stderr)
        if with_uas and options.get("asterisk", True):  # calls only: Asterisk is the B2BUA the issue compares with
            if asterisk_command() is None:
                print("  no asterisk reference: not installed (benchmarks/asterisk_root.sh installs one)",
                      file=sys.stderr)
            else:
                try:
                    targets.append(start_asterisk(work / "asterisk"))
                except RuntimeError as exc:
                    print(f"  asterisk reference unavailable: {exc}", file=sys.stderr)
        if with_uas:
            for t in targets:
                t.uas = start_uas(t.host, t.port, work / t.name / "uas")
        for t in targets:
            t.info["idle_cpu_pct"] = idle_cpu_pct(t)
    except BaseException:
        for t in targets:
            t.close()
        raise
    return targets


def idle_cpu_pct(target: Target, seconds: float = 2.0) -> float:
    """CPU % of one core ``target`` uses with nothing to do (ccpbx's 20 ms media tick, Kamailio's timers): part of
    every step's CPU per operation, most visible at low rates."""
    before = tree_cpu_s(target.pid)
    time.sleep(seconds)
    return round(100 * (tree_cpu_s(target.pid) - before) / seconds, 1)


def run(quick: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    options = options or {}
    rates = RATES_QUICK if quick else RATES
    seconds = 2.0 if quick else 4.0
    variants = VARIANTS[:1] if quick else VARIANTS
    rows: list[dict[str, Any]] = []
    ladders: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-calls-") as tmp:
        work = Path(tmp)
        targets = start_targets(work, options, with_uas=True)
        try:
            for index, (name, hold_ms) in enumerate(variants):
                if index:
                    for t in targets:  # each ladder with a callee of its own (see restart_uas)
                        restart_uas(t, work / t.name / f"uas-{name}")
                print(f"calls per second, {hold_ms} ms hold ({', '.join(t.name for t in targets)} alternating):",
                      file=sys.stderr)
                steps = run_ladder(targets, "bench_call", work / name, rates, seconds, hold_ms=hold_ms,
                                   callers=options.get("callers", 1))
                ladders[f"calls.{name}"] = {k: [s.as_dict() for s in v] for k, v in steps.items()}
                rows += comparison_rows(f"calls.{name}", "call", steps)
        finally:
            info = {t.name: t.info for t in targets}
            for t in targets:
                t.close()
    return {"rows": rows, "details": {"ladders": ladders, "targets": info, "step_seconds": seconds}}


if __name__ == "__main__":
    main_for(run, "benchmarks/results/calls.json")
