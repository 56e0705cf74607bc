"""SIP figures: REGISTER with digest through ``ccpbx serve`` driven by SIPp at rising rates, beside a minimal
Kamailio registrar under the same load (when ``kamailio`` is installed), and the message parser's speed.

Each SIPp "call" is one registration: REGISTER -> 401 -> REGISTER with credentials -> 200, i.e. two REGISTER
transactions. A rate passes when every registration of the run succeeded (SIPp counts no failed call); the figure is the
highest throughput achieved in a passing run. Stepping stops at the first failure or when the achieved rate
falls below 80% of the offered one (saturation). SIPp shares the two cores with the server under test.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import main_for
from tests.interop.server import start_server
from tests.interop.sipp import free_port, run_sipp

USERS = 200
PASSWORD = "bench-password-1"
RATES = (100, 200, 400, 800, 1200, 1600, 2400, 3200, 4800, 6400)
CAPTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "sip" / "captures" / "baresip_invite.sip"

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
loadmodule "textops.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("auth", "secret", "ccpbx-bench-secret")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_auth_check("ccpbx", "{password}", "0", "0")) {{
            auth_challenge("ccpbx", "1");
            exit;
        }}
        save("location");
        exit;
    }}
    sl_send_reply("404", "Not here");
}}
"""


def _rows(count: int) -> list[list[str]]:
    users = [f"u{n:04d}" for n in range(USERS)]
    return [[users[n % USERS], PASSWORD, "3600"] for n in range(count)]


def _step(sipp: str, host: str, port: int, work: Path, rates: tuple[int, ...], seconds: float) -> dict[int, float]:
    """Registrations per second achieved at each offered rate, until the first rate with a failure."""
    achieved: dict[int, float] = {}
    for rate in rates:
        count = int(rate * seconds)
        started = time.perf_counter()
        result = run_sipp(sipp, "reg_ok", host, port, work / f"r{rate}", _rows(count), calls=count, rate=rate,
                          timeout_s=int(seconds * 4 + 20), extra=["-l", str(max(200, rate * 2))])
        elapsed = time.perf_counter() - started
        print(f"  {rate:>6}/s offered: {'ok' if result.returncode == 0 else 'FAILED'} "
              f"({count} registrations in {elapsed:.1f}s)", file=sys.stderr)
        if result.returncode != 0:
            break
        achieved[rate] = count / elapsed
        if achieved[rate] < 0.8 * rate:
            break  # saturated: SIPp could not place calls at the offered rate any more
    return achieved


async def _make_users(data: Path) -> None:
    from ccpbx.pbx.store import Store

    store = await Store.open(data / "ccpbx.sqlite3")
    try:
        await store.add_extensions([(f"u{n:04d}", PASSWORD, "") for n in range(USERS)], "ccpbx")
    finally:
        await store.close()


def bench_ccpbx(sipp: str, work: Path, rates: tuple[int, ...], seconds: float) -> float:
    data = work / "ccpbx-data"
    data.mkdir(parents=True)
    asyncio.run(_make_users(data))
    server = start_server(data, config_text="[server]\nlog_level = \"warning\"\n")
    try:
        achieved = _step(sipp, server.host, server.port, work / "ccpbx", rates, seconds)
    finally:
        server.stop()
    return max(achieved.values(), default=0.0)


def bench_kamailio(kamailio: str, sipp: str, work: Path, rates: tuple[int, ...], seconds: float) -> float:
    port = free_port()
    candidates = [str(p) for p in Path("/usr/lib").glob("*/kamailio/modules")] + ["/usr/lib/kamailio/modules"]
    mpath = next((p for p in candidates if Path(p).is_dir()), candidates[-1]) + "/"
    cfg = work / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, mpath=mpath, password=PASSWORD))
    proc = subprocess.Popen([kamailio, "-f", str(cfg), "-DD", "-E", "-m", "128", "-M", "16", "-P",
                             str(work / "kamailio.pid"), "-Y", str(work)], stdout=subprocess.DEVNULL,
                            stderr=(work / "kamailio.log").open("w"))
    try:
        time.sleep(1.5)
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited: {(work / 'kamailio.log').read_text()[-2000:]}")
        achieved = _step(sipp, "127.0.0.1", port, work / "kamailio", rates, seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return max(achieved.values(), default=0.0)


def bench_parser(quick: bool) -> float:
    from ccpbx.pbx.sip.message import parse_message

    data = CAPTURE.read_bytes()
    n = 2_000 if quick else 20_000
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            parse_message(data).serialize()
        best = min(best, time.perf_counter() - started)
    return n / best


def run(quick: bool = False) -> list[dict[str, Any]]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (apt-get install sip-tester)")
    rates = RATES[:5] if quick else RATES
    seconds = 2.0 if quick else 4.0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-sip-") as tmp:
        work = Path(tmp)
        ours = bench_ccpbx(sipp, work, rates, seconds)
        kamailio = shutil.which("kamailio") or (
            "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
        theirs = None
        if kamailio:
            try:
                theirs = bench_kamailio(kamailio, sipp, work, rates, seconds)
            except RuntimeError as exc:
                print(f"  kamailio reference unavailable: {exc}", file=sys.stderr)
    rows.append({"name": "sip.register.max_rate_zero_failures", "value": round(ours, 1),
                 "unit": "registrations/s (2 REGISTER each)", "reference": "kamailio" if theirs else None,
                 "reference_value": round(theirs, 1) if theirs else None,
                 "ratio": round(ours / theirs, 3) if theirs else None})
    parsed = bench_parser(quick)
    rows.append({"name": "sip.parser.parse_serialize", "value": round(parsed), "unit": "messages/s",
                 "reference": None, "reference_value": None, "ratio": None})
    return rows


if __name__ == "__main__":
    main_for(run, "benchmarks/results/sip.json")
