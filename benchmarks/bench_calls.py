"""Call figures: calls per second through the B2BUA, simultaneous anchored calls with RTP, and Kamailio's rate.

1. ``calls.cps.max_rate_zero_failures`` — SIPp UAC -> ccpbx -> SIPp UAS, each call INVITE -> 407 -> INVITE with
   credentials -> 180 -> 200 -> ACK -> 1 s hold -> BYE (both legs), at rising offered rates. A rate passes when SIPp
   counts no failed call on either side; the figure is the highest achieved rate of a passing run. Stepping stops at
   the first failure or when the achieved rate falls below 80% of the offered one. Signalling only: SIPp sends no
   RTP in this figure (the media channels are still allocated and anchored for every call). SIPp shares the two
   cores with the server, as in bench_sip.
2. ``calls.rtp.max_concurrent_loss_below_1pct`` — N calls set up by SIPp and held, with G.711 RTP on both legs:
   a Python load generator owns one UDP socket per call (its port is the caller's SDP offer, the answer's port
   is logged by SIPp), sends 50 packets/s of a tone to ccpbx; ccpbx bridges it to the callee leg; the SIPp UAS
   (``-rtp_echo``) sends each packet back; ccpbx bridges it back to the generator. Loss is counted end to end:
   1 - (tone frames received) / (frames sent) over a steady window, so each lost packet crossed ccpbx twice
   (and SIPp's echo once: loss there is charged to ccpbx, which makes the figure conservative). The server is
   pinned to core 0, SIPp and the generator to core 1. A step is void (and stepping stops) when the generator
   itself cannot keep 50 packets/s per call.
3. ``calls.cps`` reference: the same SIPp load through Kamailio as a stateful proxy (tm, rr, registrar/usrloc; the
   INVITE challenged with 407 and the REGISTER with 401, as ccpbx does), the UAS registered to it. Kamailio proxies
   signalling only and anchors no media, so the ratio is a ceiling, not a like-for-like B2BUA comparison.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_sip import PASSWORD, USERS, _make_users
from benchmarks.common import main_for
from tests.interop.server import RunningServer, start_server
from tests.interop.sipp import SCENARIOS, free_port, run_sipp

HERE = Path(__file__).resolve().parent
RTP_SCENARIO = HERE / "scenarios" / "uac_rtp_hold.xml"
CALLEE = f"u{USERS - 1:04d}"
CALLERS = USERS - 1
HOLD_MS = 1000
CPS_RATES = (25, 50, 100, 150, 200, 300, 400, 600, 800)
CPS_RATES_QUICK = (50, 100, 200)
CONCURRENT_STEPS = (50, 100, 200, 300, 400, 500, 600, 800)
CONCURRENT_STEPS_QUICK = (100,)
SETUP_RATE = 100  # calls/s while the concurrent calls are set up
FRAME_MS = 20
FRAME_SAMPLES = 160
PACKETS_PER_S = 1000 // FRAME_MS
RTP_PORT_BASE = 30000  # the generator's ports: outside ccpbx's default 10000-20000 and SIPp's own
ULAW_SILENCE = frozenset((0xFF, 0x7F))
LOSS_LIMIT = 0.01

KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
memdbg=5
memlog=5
children=2
tcp_children=1
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="{mpath}"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("auth", "secret", "ccpbx-bench-secret")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (!loose_route() && is_method("ACK") && !t_check_trans()) {{ exit; }}
        t_relay();
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_auth_check("ccpbx", "{password}", "0", "0")) {{ auth_challenge("ccpbx", "1"); exit; }}
        save("location");
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!pv_auth_check("ccpbx", "{password}", "0", "0")) {{ auth_challenge("ccpbx", "1"); exit; }}
        consume_credentials();
        record_route();
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


# ---- 1 and 3: calls per second ---------------------------------------------------------------------------------
@dataclass
class Uas:
    """A SIPp UAS answering every call, registered as ``CALLEE`` with the server under test."""

    proc: subprocess.Popen[bytes]
    port: int
    media_port: int
    errors: Path


def start_uas(sipp: str, host: str, port: int, work: Path, *, echo: bool) -> Uas:
    work.mkdir(parents=True, exist_ok=True)
    sip_port, media_port = free_port(), free_port()
    err = work / "uas.errors.log"
    cmd = [sipp, "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.1", "-p", str(sip_port),
           "-mp", str(media_port), "-nostdin", "-trace_err", "-error_file", str(err), "-max_recv_loops", "1000",
           "-timeout", "600s", *(["-rtp_echo"] if echo else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    reg = run_sipp(sipp, "reg_contact", host, port, work / "reg", [[CALLEE, PASSWORD, "3600", str(sip_port)]])
    if reg.returncode != 0:
        stop(proc)
        raise RuntimeError("the UAS could not register: " + reg.explain())
    return Uas(proc, sip_port, media_port, err)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def caller_rows(count: int, *extra: str) -> list[list[str]]:
    return [[f"u{n % CALLERS:04d}", PASSWORD, *extra] for n in range(count)]


def step_cps(sipp: str, host: str, port: int, work: Path, rates: tuple[int, ...], seconds: float,
             server: RunningServer | None = None) -> dict[int, float]:
    """Calls per second achieved at each offered rate, until the first rate with a failed call.

    A one-call run first measures SIPp's fixed cost (start, first call, exit) ``overhead``; a run of ``count`` calls
    then takes ``overhead + (count - 1) / achieved + hold``, which gives the achieved rate.
    """

    def place(rate: int, count: int, tag: str) -> tuple[bool, float, str]:
        started = time.perf_counter()
        result = run_sipp(sipp, "uac_call", host, port, work / tag, caller_rows(count), calls=count,
                          rate=rate, timeout_s=int(seconds * 4 + 30),
                          extra=["-s", CALLEE, "-d", str(HOLD_MS), "-l", str(max(200, rate * 4))])
        return result.returncode == 0, time.perf_counter() - started, result.errors

    ok, single, errors = place(100, 1, "calibrate")
    if not ok:
        raise RuntimeError("a single call failed: " + errors[-1500:])
    overhead = single - HOLD_MS / 1000
    achieved: dict[int, float] = {}
    for rate in rates:
        count = int(rate * seconds)
        ok, elapsed, errors = place(rate, count, f"c{rate}")
        rate_achieved = (count - 1) / max(elapsed - HOLD_MS / 1000 - overhead, 1e-3)
        print(f"  {rate:>5}/s offered: {'ok' if ok else 'FAILED'} ({count} calls in {elapsed:.1f}s, "
              f"~{rate_achieved:.0f}/s)", file=sys.stderr)
        if not ok:
            print("    " + errors[-800:].replace("\n", "\n    "), file=sys.stderr)
            if server is not None and "Traceback" in server.log:
                print("    server log:\n" + server.log[-3000:], file=sys.stderr)
            break
        achieved[rate] = min(rate_achieved, float(rate))  # SIPp never places faster than asked
        if rate_achieved < 0.8 * rate:
            break
    return achieved


def server_for_calls(work: Path) -> RunningServer:
    data = work / "ccpbx-data"
    data.mkdir(parents=True)
    asyncio.run(_make_users(data))
    return start_server(data, config_text='[server]\nlog_level = "warning"\n')


def bench_ccpbx_cps(sipp: str, work: Path, rates: tuple[int, ...], seconds: float) -> float:
    server = server_for_calls(work / "cps")
    uas = None
    try:
        uas = start_uas(sipp, server.host, server.port, work / "cps" / "uas", echo=False)
        achieved = step_cps(sipp, server.host, server.port, work / "cps", rates, seconds, server)
    finally:
        if uas is not None:
            stop(uas.proc)
        server.stop()
    if "Traceback" in server.log:
        print("  server log has a traceback:\n" + server.log[-3000:], file=sys.stderr)
    return max(achieved.values(), default=0.0)


def bench_kamailio_cps(kamailio: str, sipp: str, work: Path, rates: tuple[int, ...], seconds: float) -> float:
    work.mkdir(parents=True)
    port = free_port()
    candidates = [str(p) for p in Path("/usr/lib").glob("*/kamailio/modules")] + ["/usr/lib/kamailio/modules"]
    mpath = next((p for p in candidates if Path(p).is_dir()), candidates[-1]) + "/"
    cfg = work / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, mpath=mpath, password=PASSWORD))
    log = work / "kamailio.log"
    proc = subprocess.Popen([kamailio, "-f", str(cfg), "-DD", "-E", "-m", "256", "-M", "32", "-P",
                             str(work / "kamailio.pid"), "-Y", str(work)], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    uas = None
    try:
        time.sleep(1.5)
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited: {log.read_text()[-2000:]}")
        uas = start_uas(sipp, "127.0.0.1", port, work / "uas", echo=False)
        achieved = step_cps(sipp, "127.0.0.1", port, work, rates, seconds)
    finally:
        if uas is not None:
            stop(uas.proc)
        stop(proc)
    return max(achieved.values(), default=0.0)


# ---- 2: simultaneous calls with RTP on both legs ---------------------------------------------------------------
def tone_frame() -> bytes:
    """One 20 ms frame of a 1 kHz tone in G.711 mu-law: never the silence code, so a relayed frame is countable."""
    import math

    import numpy as np

    from ccpbx.media.g711 import ulaw_encode

    t = np.arange(FRAME_SAMPLES) / 8000.0
    pcm = (8000 * np.sin(2 * math.pi * 1000.0 * t)).astype(np.int16)
    return bytes(ulaw_encode(pcm))


@dataclass
class LoadResult:
    sent: int
    received: int
    send_rate_ratio: float  # achieved / intended packets per second over the window

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0


def generator_ports(count: int) -> list[int]:
    """Even ports the generator can bind (RTCP would use the odd one above, RFC 3550 §11)."""
    ports: list[int] = []
    port = RTP_PORT_BASE
    while len(ports) < count and port < 65000:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", port))
            ports.append(port)
        except OSError:
            pass
        port += 2
    return ports


def run_rtp_load(sockets: dict[int, socket.socket], mapping_log: Path, calls: int, setup_timeout_s: float,
                 warmup_s: float, window_s: float) -> LoadResult:
    """Wait until every call is answered (its answer port logged), then send 50 pps per call and count echoes."""
    targets: dict[int, int] = {}
    deadline = time.monotonic() + setup_timeout_s
    while len(targets) < calls and time.monotonic() < deadline:
        time.sleep(0.1)
        if mapping_log.exists():
            for line in mapping_log.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[-3] == "MAP":
                    targets[int(parts[-2])] = int(parts[-1])
    if len(targets) < calls:
        raise RuntimeError(f"only {len(targets)} of {calls} calls were answered")
    frame = tone_frame()
    selector = selectors.DefaultSelector()
    for port in targets:
        selector.register(sockets[port], selectors.EVENT_READ)
    order = [(sockets[p], ("127.0.0.1", targets[p]), p) for p in targets]
    seq = {p: 0 for p in targets}
    sent = received = 0
    counting = False
    start = time.monotonic()
    window_start = start + warmup_s
    window_end = window_start + window_s
    ticks = 0
    window_ticks = 0
    while True:
        now = time.monotonic()
        if now >= window_end:
            break
        if not counting and now >= window_start:
            counting = True
        due = start + ticks * FRAME_MS / 1000
        if now >= due:
            ticks += 1
            for sock, dest, port in order:
                n = seq[port]
                header = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, (n * FRAME_SAMPLES) & 0xFFFFFFFF, port)
                try:
                    sock.sendto(header + frame, dest)
                except OSError:
                    pass
                seq[port] = n + 1
            if counting:
                sent += len(order)
                window_ticks += 1
            continue
        for key, _ in selector.select(timeout=max(0.0, due - now)):
            sock = key.fileobj
            while True:
                try:
                    data = sock.recv(2048)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if counting and len(data) > 12 + 40 and data[1] & 0x7F == 0 and not ULAW_SILENCE.issuperset(
                        data[12:52]):
                    received += 1
    # Packets sent near the end of the window are still in flight: drain, counting only tone frames.
    drain_end = time.monotonic() + 0.3
    while time.monotonic() < drain_end:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            while True:
                try:
                    data = sock.recv(2048)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if len(data) > 52 and data[1] & 0x7F == 0 and not ULAW_SILENCE.issuperset(data[12:52]):
                    received += 1
    selector.close()
    intended = window_s * 1000 / FRAME_MS
    return LoadResult(sent, min(received, sent), window_ticks / intended if intended else 0.0)


def concurrent_step(sipp: str, server: RunningServer, uas: Uas, work: Path, calls: int, ports: list[int],
                    warmup_s: float, window_s: float) -> LoadResult:
    work.mkdir(parents=True, exist_ok=True)
    sockets: dict[int, socket.socket] = {}
    try:
        for port in ports[:calls]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            sock.bind(("127.0.0.1", port))
            sock.setblocking(False)
            sockets[port] = sock
        setup_s = calls / SETUP_RATE + 3
        hold_ms = int((setup_s + warmup_s + window_s + 3) * 1000)
        inf = work / "uac.csv"
        rows = caller_rows(calls)
        lines = [f"{r[0]};[authentication username={r[0]} password={r[1]}];{p}"
                 for r, p in zip(rows, ports[:calls], strict=True)]
        inf.write_text("SEQUENTIAL\n" + "".join(line + "\n" for line in lines))
        log = work / "map.log"
        err = work / "uac.errors.log"
        cmd = [sipp, f"{server.host}:{server.port}", "-sf", str(RTP_SCENARIO), "-inf", str(inf), "-m", str(calls),
               "-r", str(SETUP_RATE), "-l", str(calls + 10), "-s", CALLEE, "-d", str(hold_ms), "-i", "127.0.0.1",
               "-p", str(free_port()), "-mp", str(free_port()), "-nostdin", "-trace_logs", "-log_file", str(log),
               "-trace_err", "-error_file", str(err), "-timeout", f"{int(hold_ms / 1000 + setup_s + 60)}s",
               "-timeout_error", "-max_recv_loops", "1000"]
        uac = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        try:
            result = run_rtp_load(sockets, log, calls, setup_s + 10, warmup_s, window_s)
            code = uac.wait(hold_ms / 1000 + setup_s + 90)
        finally:
            stop(uac)
        if code != 0:
            errors = err.read_text(errors="replace")[-800:] if err.exists() else ""
            raise RuntimeError(f"SIPp UAC exited {code} with {calls} calls: {errors}")
        return result
    finally:
        for sock in sockets.values():
            sock.close()


def bench_concurrent(sipp: str, work: Path, steps: tuple[int, ...], warmup_s: float, window_s: float) -> int:
    """The most simultaneous calls with RTP on both legs and < 1% loss, ccpbx pinned to one core."""
    server = server_for_calls(work / "rtp")
    own = os.sched_getaffinity(0)
    pinned = len(os.sched_getaffinity(0)) >= 2
    if pinned:
        # -a: every thread of the server (asyncio's default executor, aiosqlite) shares core 0.
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.proc.pid)], check=False,
                       stdout=subprocess.DEVNULL)
        os.sched_setaffinity(0, {1})  # the generator and the SIPp processes it starts share core 1
    best = 0
    uas = None
    try:
        uas = start_uas(sipp, server.host, server.port, work / "rtp" / "uas", echo=True)
        ports = generator_ports(max(steps))
        for calls in steps:
            try:
                result = concurrent_step(sipp, server, uas, work / "rtp" / f"n{calls}", calls, ports, warmup_s,
                                         window_s)
            except RuntimeError as exc:
                print(f"  {calls:>5} calls: FAILED ({exc})", file=sys.stderr)
                break
            print(f"  {calls:>5} calls: loss {result.loss:.3%} ({result.received}/{result.sent} frames, "
                  f"generator at {result.send_rate_ratio:.0%} of 50 pps)", file=sys.stderr)
            if result.send_rate_ratio < 0.95:
                print("  the load generator could not keep up: stopping", file=sys.stderr)
                break
            if result.loss >= LOSS_LIMIT:
                break
            best = calls
            time.sleep(1.0)  # let the previous calls' BYEs settle
    finally:
        if uas is not None:
            stop(uas.proc)
        server.stop()
        if pinned:
            os.sched_setaffinity(0, own)
    if "Traceback" in server.log:
        print("  server log has a traceback:\n" + server.log[-3000:], file=sys.stderr)
    return best


def run(quick: bool = False) -> list[dict[str, Any]]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (apt-get install sip-tester)")
    rates = CPS_RATES_QUICK if quick else CPS_RATES
    seconds = 2.0 if quick else 5.0
    steps = CONCURRENT_STEPS_QUICK if quick else CONCURRENT_STEPS
    window_s = 3.0 if quick else 6.0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-calls-") as tmp:
        work = Path(tmp)
        print("ccpbx calls per second:", file=sys.stderr)
        ours = bench_ccpbx_cps(sipp, work, rates, seconds)
        kamailio = shutil.which("kamailio") or (
            "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
        theirs = None
        if kamailio:
            print("kamailio (stateful proxy) calls per second:", file=sys.stderr)
            try:
                theirs = bench_kamailio_cps(kamailio, sipp, work / "kamailio", rates, seconds) or None
            except RuntimeError as exc:
                print(f"  kamailio reference unavailable: {exc}", file=sys.stderr)
        print("ccpbx simultaneous calls with RTP on both legs (server on one core):", file=sys.stderr)
        concurrent = bench_concurrent(sipp, work, steps, 1.0, window_s)
    rows.append({"name": "calls.cps.max_rate_zero_failures", "value": round(ours, 1),
                 "unit": f"calls/s (407 challenge, {HOLD_MS} ms hold, both legs, no RTP)",
                 "reference": "kamailio stateful proxy" if theirs else None,
                 "reference_value": round(theirs, 1) if theirs else None,
                 "ratio": round(ours / theirs, 3) if theirs else None})
    rows.append({"name": "calls.rtp.max_concurrent_loss_below_1pct", "value": concurrent,
                 "unit": "calls (G.711 50 pps both legs, one core; highest step tried: " + str(max(steps)) + ")",
                 "reference": None, "reference_value": None, "ratio": None})
    return rows


if __name__ == "__main__":
    main_for(run, "benchmarks/results/calls.json")
