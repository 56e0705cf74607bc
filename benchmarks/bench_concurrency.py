"""The concurrency curve: server CPU per call-second and exact packet loss at 100, 300, 500, 1,000, 2,000 anchored
G.711 calls, so the cost's growth with the number of calls is visible.

At each point N calls are set up by SIPp (``scenarios/bench_call.xml``, PCMU only on both legs, so ccpbx bridges
the same codec and forwards the payload bytes unchanged) and held. A Python generator owns one UDP socket per call
(the caller's SDP port) and, once all N calls are up (set up at 50/s; ccpbx runs with ``[rtp] timeout = 0`` so
the first calls are not hung up meanwhile), sends 50 packets/s per call into ccpbx; ccpbx bridges them to the
callee leg; the SIPp callee's SDP names an echo (:mod:`benchmarks.echo`, one socket with a 16 MB receive buffer:
SIPp's own ``-rtp_echo`` socket has the system's default 212 KB and dropped bursts from 300 calls up) that sends
each packet back; ccpbx bridges it back to the generator. Every
payload carries the stream, a sequence number and a CRC-32 (:func:`measure.make_payload`): the receiver counts
*distinct valid* sequence numbers of its own stream, so a repeated, concealed, corrupted or misrouted frame is not
a received one. Loss = 1 - distinct valid received / sent over the measuring window (each counted packet crossed
ccpbx twice, and the echo once: loss there is charged to ccpbx). Jitter: RFC 3550 interarrival jitter per
stream at the generator (from the payload's sequence number), mean and p99 over the streams.

CPU per call-second = CPU seconds of the server's process tree over the window / (N x window), in ms; the server
CPU % is of one core. Nothing is pinned: the server, SIPp and the generator share the machine's cores, and a step
where the generator itself sent under 95% of its packets is marked generator-limited (its loss is not the
server's alone). ``--media-workers N`` (repeatable) runs the curve once per value with ``ccpbx serve
--media-workers N``; a server that rejects the option is skipped with a message.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os

from benchmarks.common import main_for
from benchmarks.ladder import (
    CALLEE,
    SCENARIOS,
    ServerRejectedError,
    Target,
    free_media_port,
    free_port,
    start_ccpbx,
    start_uas,
    stop_proc,
    write_injection,
)
from benchmarks.measure import (
    StreamTally,
    bound_udp_sockets,
    make_payload,
    percentile,
    read_payload,
    tree_cpu_s,
    tree_pids,
    tree_rss_mb,
    udp_drops,
)
from ccpbx.pbx.app import raise_open_files_limit

POINTS = (100, 300, 500, 1000, 2000)
POINTS_QUICK = (50, 200)
SETUP_RATE = 50  # calls/s while the calls are set up (under the failure-free call rate of a busy box)
# The calls are all set up before any RTP flows (the set-up is not measured), so the server must not hang up the
# first ones for want of RTP meanwhile (30 s by default).
SERVER_CONFIG = "[rtp]\ntimeout = 0\n"
FRAME_S = 0.020
SAMPLES = 160
RTP = struct.Struct("!BBHII")
GENERATOR_OK = 0.95


@dataclass
class Point:
    calls: int
    answered: int
    window_s: float
    sent: int
    received: int
    duplicates: int
    invalid: int
    loss_pct: float
    jitter_ms_mean: float | None
    jitter_ms_p99: float | None
    server_cpu_pct: float
    cpu_ms_per_call_s: float | None
    generator_ratio: float
    drops_echo: int = 0  # datagrams the kernel dropped over the window at the SIPp callee's (echo) sockets
    drops_server: int = 0  # ... at the server's sockets
    drops_generator: int = 0  # ... at the generator's sockets
    rss_mb: float = 0.0  # resident memory of the server's process tree (media workers included) with the calls up
    echo_cpu_pct: float = 0.0  # the callee's processes (SIPp and the echo), % of one core over the window
    note: str = ""


def rtp_scenario(work: Path) -> Path:
    """``bench_call.xml`` that also logs ``MAP <our port> <the answer's port>`` when the 200 arrives."""
    text = (SCENARIOS / "bench_call.xml").read_text()
    recv = '<recv response="200" rtd="1" rrs="true" response_txn="inv2"/>'
    assert recv in text, "bench_call.xml changed: update rtp_scenario"
    text = text.replace(recv, recv[:-2] + '>\n    <action>\n      <ereg regexp="m=audio ([0-9]+)" search_in="body" '
                        'check_it="true" assign_to="whole,port"/>\n      <log message="MAP [field2] [$port] [$whole]"/>'
                        '\n    </action>\n  </recv>')
    path = work / "bench_call_rtp.xml"
    path.write_text(text)
    return path


def read_map(log: Path, known: dict[int, int]) -> None:
    if not log.exists():
        return
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if "MAP" not in parts:
            continue
        k = parts.index("MAP")
        try:
            known[int(parts[k + 1])] = int(parts[k + 2])
        except (ValueError, IndexError):
            continue


def measure_point(target: Target, work: Path, calls: int, warmup_s: float, window_s: float) -> Point:
    assert target.uas is not None
    work.mkdir(parents=True, exist_ok=True)
    socks: list[socket.socket] = []
    try:
        socks = bound_udp_sockets(calls, 1 << 18)
        ports = [s.getsockname()[1] for s in socks]
        by_port = {p: i for i, p in enumerate(ports)}
        write_injection(work / "inject.csv", calls, ports=ports)
        setup_s = 2 * calls / SETUP_RATE + 10
        # _drive waits up to setup_s for the answers (SIPp's log reaches the disk late), then warms up and counts:
        # the first call must still be up at the end of the window.
        hold_ms = int((setup_s + warmup_s + window_s + 3) * 1000)
        log = work / "map.log"
        cmd = ["sipp", f"{target.host}:{target.port}", "-sf", str(rtp_scenario(work)), "-inf",
               str(work / "inject.csv"), "-m", str(calls), "-r", str(SETUP_RATE), "-l", str(calls + 10), "-s", CALLEE,
               "-d", str(hold_ms), "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_media_port()), "-nostdin",
               "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(work / "errors.log"),
               "-timeout", f"{int(hold_ms / 1000 + setup_s + 60)}s", "-max_recv_loops", "1000"]
        uac = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        try:
            point = _drive(target, socks, by_port, log, calls, setup_s, warmup_s, window_s, started=time.monotonic(),
                           hold_s=hold_ms / 1000)
            if point.answered < calls and uac.poll() not in (None, 0):
                point.note += f" SIPp caller exited {uac.returncode}: {_last_error(work / 'errors.log')};"
            try:
                uac.wait(hold_ms / 1000 + setup_s + 60)
            except subprocess.TimeoutExpired:
                point.note += " SIPp caller did not finish;"
        finally:
            stop_proc(uac)
        return point
    finally:
        for s in socks:
            s.close()


def _last_error(path: Path) -> str:
    """The last line SIPp wrote to its error file (why it stopped), or a note that there is none."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no error file"
    return lines[-1][-200:] if lines else "empty error file"


def _drive(target: Target, socks: list[socket.socket], by_port: dict[int, int], log: Path, calls: int,
           setup_s: float, warmup_s: float, window_s: float, *, started: float, hold_s: float) -> Point:
    """Once every call is answered (or set-up time is up), send 50 pps to each answered call: warm up, then
    count over the window; then drain what is still in flight."""
    mapped: dict[int, int] = {}
    dest: list[tuple[str, int] | None] = [None] * len(socks)
    tallies = [StreamTally() for _ in socks]
    first_seq: list[int | None] = [None] * len(socks)
    selector = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        selector.register(s, selectors.EVENT_READ, i)
    t0 = time.monotonic()
    tick = 0
    next_map = t0
    window_start = window_end = None
    win_first = win_last = 0
    win_ticks = 0
    cpu0 = 0.0
    echo_cpu0 = 0.0
    cpu_t0 = 0.0
    who: dict[str, set[int]] = {}
    drops0: dict[str, int] = {}
    sent_in_window = 0
    deadline_setup = started + setup_s
    while True:
        now = time.monotonic()
        if window_start is None and now >= next_map:
            read_map(log, mapped)
            next_map = now + 0.2
            if len(mapped) >= calls or now >= deadline_setup:
                for port, their in mapped.items():
                    i = by_port.get(port)
                    if i is not None:
                        dest[i] = ("127.0.0.1", their)
                window_start = now + warmup_s
                window_end = window_start + window_s
                t0, tick = now, 0
        if window_end is not None and now >= window_end:
            break
        due = t0 + tick * FRAME_S
        if now >= due:
            counting = window_start is not None and now >= window_start
            if counting and cpu0 == 0.0:
                who = {"echo": target.uas.pids() if target.uas else set(), "server": tree_pids(target.pid),
                       "generator": {os.getpid()}}
                drops0 = {k: udp_drops(v) for k, v in who.items()}
                cpu0 = tree_cpu_s(target.pid)
                echo_cpu0 = sum(tree_cpu_s(pid) for pid in who["echo"])
                cpu_t0 = time.monotonic()
                win_first = tick
            for i, s in enumerate(socks):
                d = dest[i]
                if d is None:
                    continue
                if first_seq[i] is None:
                    first_seq[i] = tick
                head = RTP.pack(0x80, 0, tick & 0xFFFF, (tick * SAMPLES) & 0xFFFFFFFF, 0x10000 + i)
                pkt = head + make_payload(i, tick)
                try:
                    s.sendto(pkt, d)
                    if counting:
                        sent_in_window += 1
                except OSError:
                    pass
            if counting:
                win_ticks += 1
                win_last = tick
            tick += 1
            continue
        _receive(selector, tallies, timeout=max(0.0, due - now), counting=window_start is not None)
    cpu1 = tree_cpu_s(target.pid)
    echo_cpu = sum(tree_cpu_s(pid) for pid in who["echo"]) - echo_cpu0 if cpu0 else 0.0
    rss_mb = tree_rss_mb(target.pid)
    drops = {k: udp_drops(v) - drops0[k] for k, v in who.items()} if cpu0 else {}
    cpu_wall = time.monotonic() - cpu_t0 if cpu0 else 0.0
    drain_end = time.monotonic() + 0.5
    while time.monotonic() < drain_end:
        _receive(selector, tallies, timeout=0.05, counting=True)
    selector.close()
    answered = sum(1 for d in dest if d is not None)
    received = sum(t.received_in(win_first, win_last) for t, d in zip(tallies, dest, strict=True) if d is not None)
    sent = sent_in_window
    jit = [t.jitter / 8.0 for t, d in zip(tallies, dest, strict=True) if d is not None and len(t.seen) > 2]
    cpu = cpu1 - cpu0
    intended = window_s / FRAME_S
    note = ""
    if answered < calls:
        note += f" only {answered} of {calls} calls answered;"
    if window_end is not None and window_end > started + hold_s:
        note += " window overlapped the hang-ups;"
    ratio = win_ticks / intended if intended else 0.0
    if ratio < GENERATOR_OK:
        note += f" generator-limited ({ratio:.0%} of its packets sent);"
    return Point(calls=calls, answered=answered, window_s=round(cpu_wall, 2), sent=sent, received=min(received, sent),
                 duplicates=sum(t.duplicates for t in tallies), invalid=sum(t.invalid for t in tallies),
                 loss_pct=round(100.0 * (1 - received / sent), 3) if sent else 100.0,
                 jitter_ms_mean=round(statistics.mean(jit), 3) if jit else None,
                 jitter_ms_p99=round(p, 3) if (p := percentile(jit, 99)) is not None else None,
                 server_cpu_pct=round(100 * cpu / cpu_wall, 1) if cpu_wall else 0.0,
                 cpu_ms_per_call_s=round(1000 * cpu / (answered * cpu_wall), 4) if answered and cpu_wall else None,
                 generator_ratio=round(ratio, 3), drops_echo=drops.get("echo", 0),
                 drops_server=drops.get("server", 0), drops_generator=drops.get("generator", 0),
                 rss_mb=round(rss_mb, 1), echo_cpu_pct=round(100 * echo_cpu / cpu_wall, 1) if cpu_wall else 0.0,
                 note=note.strip())


def _receive(selector: selectors.BaseSelector, tallies: list[StreamTally], timeout: float, counting: bool) -> None:
    """Read every ready socket; a packet that is not a valid payload of that socket's own stream counts as
    invalid once the calls are all up (``counting``): before that the server sends silence to calls it has not
    bridged yet."""
    for key, _ in selector.select(timeout=timeout):
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        i = key.data
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            if len(data) < 12 or 192 <= data[1] <= 223:
                continue  # RTCP (RFC 5761 §4): ccpbx's reports for another call's RTP port + 1 may land here
            cc = data[0] & 0x0F
            got = read_payload(data[12 + 4 * cc :])
            now = time.monotonic()
            if got is None or got[0] != i:
                if counting:
                    tallies[i].add(None, now)  # made up, corrupted or another call's
            else:
                tallies[i].add(got[1], now)


def format_point(label: str, p: Point) -> str:
    jit = "-" if p.jitter_ms_mean is None else f"{p.jitter_ms_mean:.2f}/{p.jitter_ms_p99:.2f}"
    cpu = "-" if p.cpu_ms_per_call_s is None else f"{p.cpu_ms_per_call_s:.3f}"
    return (f"  {label:<10} {p.calls:>5} calls ({p.answered} up): cpu {cpu:>7} ms per call-second, server "
            f"{p.server_cpu_pct:>5.1f}% of a core, loss {p.loss_pct:.3f}% ({p.received}/{p.sent}, "
            f"{p.duplicates} dup, {p.invalid} invalid), jitter mean/p99 {jit} ms, kernel drops at echo/server/"
            f"generator {p.drops_echo}/{p.drops_server}/{p.drops_generator}, echo {p.echo_cpu_pct:.0f}% of a core, "
            f"server RSS {p.rss_mb:.0f} MB  {p.note}")


def curve(label: str, server_args: list[str], work: Path, points: tuple[int, ...], warmup_s: float,
          window_s: float) -> list[Point] | None:
    try:
        target = start_ccpbx(work / "ccpbx", server_args, config_text=SERVER_CONFIG)
    except ServerRejectedError as exc:
        print(f"  skipping {label}: the server rejected {' '.join(server_args)} ({exc})", file=sys.stderr)
        return None
    out: list[Point] = []
    try:
        target.uas = start_uas(target.host, target.port, work / "uas", echo=True)
        for n in points:
            try:
                p = measure_point(target, work / f"n{n}", n, warmup_s, window_s)
            except (RuntimeError, OSError) as exc:
                print(f"  {label} {n} calls: FAILED ({exc})", file=sys.stderr)
                break
            print(format_point(label, p), file=sys.stderr, flush=True)
            out.append(p)
            time.sleep(2.0)  # the previous calls' BYEs settle
    finally:
        target.close()
        if "Traceback" in target.log():
            print("  server log has a traceback:\n" + target.log()[-3000:], file=sys.stderr)
    return out


def run(quick: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    options = options or {}
    raise_open_files_limit()  # thousands of sockets (a shell's default soft limit is 1,024 descriptors)
    points = POINTS_QUICK if quick else POINTS
    warmup_s, window_s = (1.0, 3.0) if quick else (2.0, 6.0)
    base = list(options.get("server_args", []))
    configs: list[tuple[str, list[str]]] = [("default", base)]
    for n in options.get("media_workers", []) or []:
        configs.append((f"workers={n}", [*base, "--media-workers", str(n)]))
    if options.get("media_workers"):
        configs = configs[1:]  # asked for specific worker counts: those are the curves
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-concurrency-") as tmp:
        for label, args in configs:
            print(f"concurrency curve, ccpbx serve {' '.join(args) or '(defaults)'}:", file=sys.stderr)
            got = curve(label, args, Path(tmp) / label, points, warmup_s, window_s)
            if got is None:
                curves[label] = {"skipped": f"server rejected {args}"}
                rows.append({"name": f"concurrency[{label}]: skipped", "value": None,
                             "unit": f"ccpbx serve rejected {' '.join(args)}", "reference": None,
                             "reference_value": None, "ratio": None})
                continue
            curves[label] = {"server_args": args, "points": [asdict(p) for p in got]}
            for p in got:
                limited = " (generator-limited)" if p.generator_ratio < GENERATOR_OK else ""
                rows.append({"name": f"concurrency[{label}] {p.calls} calls: cpu per call-second{limited}",
                             "value": p.cpu_ms_per_call_s, "unit": f"CPU ms (server {p.server_cpu_pct}% of a core)",
                             "reference": None, "reference_value": None, "ratio": None})
                rows.append({"name": f"concurrency[{label}] {p.calls} calls: exact loss{limited}",
                             "value": p.loss_pct, "unit": f"% ({p.received}/{p.sent} distinct valid packets)",
                             "reference": None, "reference_value": None, "ratio": None})
            if len(got) >= 2 and got[-1].answered > got[0].answered:  # memory per call: the slope of the curve
                per_call_kb = 1024 * (got[-1].rss_mb - got[0].rss_mb) / (got[-1].answered - got[0].answered)
                rows.append({"name": f"concurrency[{label}]: memory per call ({got[0].answered} to {got[-1].answered})",
                             "value": round(per_call_kb, 1), "unit": "KB of server RSS per anchored call",
                             "reference": None, "reference_value": None, "ratio": None})
    return {"rows": rows, "details": {"concurrency": curves, "window_s": window_s, "setup_rate": SETUP_RATE}}


if __name__ == "__main__":
    main_for(run, "benchmarks/results/concurrency.json")
