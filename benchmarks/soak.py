"""Soak: does ``ccpbx serve`` keep a flat memory curve for an hour of calls (and hostile junk)?

A real ``ccpbx serve`` (subprocess, its own data directory, 200 extensions) carries SIPp calls — SIPp UAC ->
ccpbx -> SIPp UAS registered as an extension: INVITE -> 407 -> INVITE with credentials -> 180 -> 200 -> ACK ->
hold -> BYE — at ``--rate`` calls per second (default: 80% of the rate measured first, stepping as
``soak_calls.step_cps`` does) for ``--minutes``. With ``--hostile`` a sender mixes junk in at ``--junk-rate``
datagrams per second: unanswered INVITEs with random Call-IDs, REGISTERs guessing users with forged nonces, stray
responses, OPTIONS, BYEs for no dialog, SUBSCRIBEs (the same junk as ``tests/pbx/test_bounded_state.py``).

Every ``--every`` seconds it reads the server's RSS (``VmRSS`` of ``/proc/PID/status``) and prints a row; at the end
it writes the samples as JSON and exits 1 when the RSS grew by more than ``--leak-mb`` from the second quarter of the
run (median of its samples: start-up and warm-up are over) to the last quarter (median): a leak.
It also exits 1 when more than ``--max-failures`` (1%) of the calls failed: then the server was past its
capacity and the run does not show what it claims. With ``--hostile`` the junk starts before the capacity is
measured, so 80% is of the capacity under junk.

    python benchmarks/soak.py --minutes 60 --hostile
    python benchmarks/soak.py --minutes 3 --rate 40 --hostile --every 10
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.soak_calls import (
    CALLEE,
    HOLD_MS,
    caller_rows,
    register_uas,
    server_for_calls,
    start_uas,
    step_cps,
    stop,
)
from tests.interop.sipp import SCENARIOS, free_port
from tests.pbx.junk import junk

CAPACITY_RATES = (25, 50, 65, 80, 95, 110, 130, 150, 200, 300)
CAPACITY_STEP_S = 60.0  # well past the 32 s transaction and ACK timers: their deferred clean-up is in the figure
REREGISTER_S = 900.0  # the callee registers again this often (its binding lasts 3600 s)
LOAD_FRACTION = 0.8  # the default rate: this fraction of the measured capacity
DEFAULT_LEAK_MB = 15.0
DATAGRAMS_PER_SOURCE = 4  # junk datagrams sent from one loopback address before the next


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/PID/status (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sipp_counts(stat_csv: Path) -> tuple[int | None, int | None]:
    """Successful and failed calls (cumulative) from the last row of SIPp's ``-trace_stat`` file."""
    try:
        lines = [line for line in stat_csv.read_text(errors="replace").splitlines() if line.strip()]
        header, last = lines[0].split(";"), lines[-1].split(";")
        row = dict(zip(header, last, strict=False))
        return int(row["SuccessfulCall(C)"]), int(row["FailedCall(C)"])
    except (OSError, IndexError, KeyError, ValueError):
        return None, None


class JunkSender(threading.Thread):
    """Sends hostile datagrams at ``rate`` per second from one socket until stopped."""

    def __init__(self, host: str, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.target = (host, port)
        self.rate = rate
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        rnd = random.Random(1)
        sock: socket.socket | None = None
        start = time.monotonic()
        try:
            while not self.halt.is_set():
                due = int((time.monotonic() - start) * self.rate)
                while self.sent < due:
                    if sock is None or self.sent % DATAGRAMS_PER_SOURCE == 0:
                        # a fresh loopback source now and then: junk from many addresses, as from a botnet, so
                        # the per-address bans and rate limits do not silence it (nor ban SIPp's 127.0.0.1)
                        if sock is not None:
                            sock.close()
                        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        sock.bind((junk_source(self.sent // DATAGRAMS_PER_SOURCE), 0))
                        sock.setblocking(False)
                    data, _ = junk(self.sent, rnd)
                    try:
                        sock.sendto(data, self.target)
                    except OSError:
                        pass  # a full buffer: the junk is lost, as on a network
                    self.sent += 1
                time.sleep(0.005)
        finally:
            if sock is not None:
                sock.close()


def junk_source(n: int) -> str:
    """The ``n``-th loopback source address of the junk: 127.1.0.1, 127.1.0.2, ... (never 127.0.0.x)."""
    n %= 200 * 255 * 254
    return f"127.{1 + n // (255 * 254)}.{n // 254 % 255}.{n % 254 + 1}"


def run(args: argparse.Namespace) -> int:
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ccpbx-soak-"))
    server = server_for_calls(work / "soak")
    uas = None
    load: subprocess.Popen[bytes] | None = None
    sender: JunkSender | None = None
    samples: list[dict[str, Any]] = []
    try:
        # The callee outlives the capacity steps and the soak (SIPp's -timeout ends it whatever it is doing: a
        # 600 s callee once failed every call from minute 10 of a soak on).
        uas = start_uas(sipp, server.host, server.port, work / "uas", echo=False,
                        lifetime_s=int(args.minutes * 60) + 3600)
        if args.hostile:  # started first, so the capacity is measured under the same junk the soak carries
            sender = JunkSender(server.host, server.port, args.junk_rate)
            sender.start()
        rate = args.rate
        if rate is None:
            print("measuring capacity" + (" (junk on)..." if sender else "..."), file=sys.stderr)
            achieved = step_cps(sipp, server.host, server.port, work / "capacity", CAPACITY_RATES, CAPACITY_STEP_S,
                                server)
            if not achieved:
                print("no rate passed: cannot measure the capacity", file=sys.stderr)
                return 2
            rate = max(1.0, round(LOAD_FRACTION * max(achieved.values()), 1))
            print(f"capacity ~{max(achieved.values()):.0f} calls/s: soaking at {rate}/s", file=sys.stderr)
        seconds = args.minutes * 60.0
        calls = int(rate * seconds) + 1
        inf = work / "load.csv"
        rows = caller_rows(calls)
        inf.write_text("SEQUENTIAL\n" + "".join(f"{u};[authentication username={u} password={p}]\n" for u, p in rows))
        cmd = [sipp, f"{server.host}:{server.port}", "-sf", str(SCENARIOS / "uac_call.xml"), "-inf", str(inf),
               "-m", str(calls), "-r", str(rate), "-l", str(max(200, int(rate * 8))), "-i", "127.0.0.1",
               "-p", str(free_port()), "-s", CALLEE, "-d", str(args.hold_ms), "-nostdin",
               "-timeout", f"{int(seconds + 120)}s", "-max_recv_loops", "1000",
               "-trace_stat", "-fd", str(int(args.every)), "-stf", str(work / "load.stat.csv")]
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        pid = server.proc.pid
        start = time.monotonic()
        registered = start
        junk0 = sender.sent if sender else 0
        print(f"{'t_s':>7}  {'rss_mb':>8}  {'junk_sent':>9}  {'calls_ok':>8}  {'failed':>7}", flush=True)
        while True:
            now = time.monotonic() - start
            ok, failed = sipp_counts(work / "load.stat.csv")
            sample = {"t_s": round(now, 1), "rss_kib": rss_kib(pid),
                      "junk_sent": sender.sent - junk0 if sender else 0, "calls_ok": ok, "calls_failed": failed}
            samples.append(sample)
            print(f"{sample['t_s']:>7.1f}  {sample['rss_kib'] / 1024:>8.1f}  {sample['junk_sent']:>9}  "
                  f"{ok if ok is not None else '-':>8}  {failed if failed is not None else '-':>7}", flush=True)
            if now >= seconds or server.proc.poll() is not None:
                break
            if uas is not None and time.monotonic() - registered > REREGISTER_S:  # its 3600 s must not lapse
                register_uas(sipp, server.host, server.port, work / "uas", uas)
                registered = time.monotonic()
            time.sleep(min(args.every, max(0.0, seconds - now)))
    finally:
        if sender is not None:
            sender.halt.set()
            sender.join(5)
        if load is not None:
            stop(load)
        if uas is not None:
            stop(uas.proc)
        code = server.stop()
    crashed = code != 0 or "Traceback" in server.log
    calls_ok, calls_failed = sipp_counts(work / "load.stat.csv")
    n = len(samples)
    second_q = [s["rss_kib"] for s in samples if seconds * 0.25 <= s["t_s"] < seconds * 0.5] or [samples[0]["rss_kib"]]
    last_q = [s["rss_kib"] for s in samples if s["t_s"] >= seconds * 0.75] or [samples[-1]["rss_kib"]]
    growth_mb = (statistics.median(last_q) - statistics.median(second_q)) / 1024
    peak_mb = max(s["rss_kib"] for s in samples) / 1024
    leak = growth_mb > args.leak_mb
    # A soak whose calls fail is not the load it claims: the server was past its capacity, not at 80% of it.
    attempted = (calls_ok or 0) + (calls_failed or 0)
    failure_ratio = (calls_failed or 0) / attempted if attempted else 1.0
    overloaded = failure_ratio > args.max_failures
    result = {"rate_cps": rate, "minutes": args.minutes, "hold_ms": args.hold_ms, "hostile": args.hostile,
              "junk_rate": args.junk_rate if args.hostile else 0, "samples": samples,
              "rss_second_quarter_mb": statistics.median(second_q) / 1024,
              "rss_last_quarter_mb": statistics.median(last_q) / 1024, "growth_mb": growth_mb, "peak_mb": peak_mb,
              "leak_threshold_mb": args.leak_mb, "leak": leak, "server_exit": code, "server_traceback": crashed,
              "calls_successful": calls_ok, "calls_failed": calls_failed, "failure_ratio": failure_ratio,
              "overloaded": overloaded}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n} samples; RSS median 2nd quarter {result['rss_second_quarter_mb']:.1f} MB, last quarter "
          f"{result['rss_last_quarter_mb']:.1f} MB (growth {growth_mb:+.1f} MB, threshold {args.leak_mb} MB), "
          f"peak {peak_mb:.1f} MB; {'LEAK' if leak else 'flat'}; SIPp calls {calls_ok} ok, {calls_failed} failed "
          f"({failure_ratio:.2%}{', OVERLOADED' if overloaded else ''}); "
          f"JSON in {args.json}")
    if crashed:
        print("the server crashed or logged a traceback:\n" + server.log[-3000:], file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if leak or crashed or overloaded else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=None, help="calls per second (default: 80%% of measured)")
    parser.add_argument("--hold-ms", type=int, default=HOLD_MS)
    parser.add_argument("--hostile", action="store_true", help="mix hostile junk in")
    parser.add_argument("--junk-rate", type=float, default=300.0, help="junk datagrams per second (--hostile)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--max-failures", type=float, default=0.01,
                        help="fraction of failed calls above which the run fails as overloaded (default 1%%)")
    parser.add_argument("--leak-mb", type=float, default=DEFAULT_LEAK_MB,
                        help="RSS growth from the 2nd quarter to the last counted as a leak")
    parser.add_argument("--json", default="benchmarks/results/soak.json")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
