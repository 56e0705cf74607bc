"""The call-placing helpers ``benchmarks/soak.py`` drives its load with: a SIPp callee registered to the server
(``start_uas``), SIPp callers (``caller_rows``) and a quick capacity estimate (``step_cps``). The benchmarks
themselves use ``benchmarks/ladder.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ladder import PASSWORD, USERS, _make_users
from tests.interop.server import RunningServer, start_server
from tests.interop.sipp import SCENARIOS, free_media_port, free_port, run_sipp

CALLEE = f"u{USERS - 1:04d}"
CALLERS = USERS - 1
HOLD_MS = 1000


@dataclass
class Uas:
    """A SIPp UAS answering every call, registered as ``CALLEE`` with the server under test."""

    proc: subprocess.Popen[bytes]
    port: int
    media_port: int
    errors: Path


def start_uas(sipp: str, host: str, port: int, work: Path, *, echo: bool, lifetime_s: int = 600) -> Uas:
    """The callee, answering for ``lifetime_s`` (SIPp's ``-timeout``: it exits then, whatever is running)."""
    work.mkdir(parents=True, exist_ok=True)
    sip_port, media_port = free_port(), free_media_port()
    err = work / "uas.errors.log"
    cmd = [sipp, "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.1", "-p", str(sip_port),
           "-mp", str(media_port), "-nostdin", "-trace_err", "-error_file", str(err), "-max_recv_loops", "1000",
           "-timeout", f"{lifetime_s}s", *(["-rtp_echo"] if echo else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    uas = Uas(proc, sip_port, media_port, err)
    try:
        register_uas(sipp, host, port, work, uas)
    except RuntimeError:
        stop(proc)
        raise
    return uas


def register_uas(sipp: str, host: str, port: int, work: Path, uas: Uas) -> None:
    """(Re-)register the callee for an hour: a run longer than that re-registers it before then."""
    reg = run_sipp(sipp, "reg_contact", host, port, work / "reg", [[CALLEE, PASSWORD, "3600", str(uas.port)]])
    if reg.returncode != 0:
        raise RuntimeError("the UAS could not register: " + reg.explain())


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


SUSTAINED_FRACTION = 0.95  # a step whose calls complete slower than this fraction of the offered rate failed


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
        if rate_achieved < SUSTAINED_FRACTION * rate:  # calls piled up: the server did not keep this rate
            print(f"    fell behind: {rate_achieved:.0f}/s of {rate}/s", file=sys.stderr)
            break
        achieved[rate] = min(rate_achieved, float(rate))  # SIPp never places faster than asked
    return achieved


def server_for_calls(work: Path, media_workers: int | None = None, sip_workers: int = 0,
                     log_level: str | None = None) -> RunningServer:
    """A server with the benchmark's users; ``media_workers`` sets ``[rtp] workers`` (None: the default),
    ``sip_workers`` ``[sip] workers`` (always written: 0 means none), ``log_level`` ``[server] log_level``
    (None: the default, info, which logs about six lines a call)."""
    data = work / "ccpbx-data"
    data.mkdir(parents=True)
    asyncio.run(_make_users(data))
    rtp = "" if media_workers is None else f"[rtp]\nworkers = {media_workers}\n"
    rtp += f"[sip]\nworkers = {sip_workers}\n"  # 0 as asked, not the default ("auto": one on two cores)
    level = "" if log_level is None else f'[server]\nlog_level = "{log_level}"\n'
    return start_server(data, config_text=level + rtp)
