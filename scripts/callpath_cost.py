"""What one basic call costs the server's code, in one process, without the network's noise.

    python scripts/callpath_cost.py                        # process CPU per call (server and phones)
    python scripts/callpath_cost.py --profile prof.out     # the same under cProfile (pstats file)
    python scripts/callpath_cost.py --callgrind --calls 150 --concurrency 1   # instructions per call

The real ``SipServer`` on the in-memory network of ``tests/pbx/simnet.py`` (media in one worker process, as
served), two simulated phones: 1001 calls 1002, which answers, and hangs up; INVITE challenged. The figures
include the phones' share (the same SIP cores parse and build their side), so compare two versions of the code
with the same command rather than reading one figure alone.

``--callgrind`` runs the measured calls under valgrind's callgrind with the instrumentation switched on only
around them (``callgrind_control -i``) and prints the instructions counted per call: on this 2-core virtual
machine, whose CPU time per call swings by 10-30% from one run to the next, two runs of the same code agree
within about 2% (timers that fire by the wall clock still differ). Use ``--concurrency 1`` there: valgrind runs
the code some 30 times slower, and concurrent calls then meet the SIP retransmission timers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

USERS = {"1001": "pw-1001-cost", "1002": "pw-1002-cost"}
CONFIG = "[admin]\nenabled = false\n[rtp]\nport_min = {lo}\nport_max = {hi}\nworkers = 1\n"


async def _calls(phone, count: int, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            call = await phone.call("1002", timeout=10)
            assert call.final is not None and call.final.status == 200, call.final
            assert (await phone.hangup(call, timeout=10)).status == 200

    await asyncio.gather(*(one() for _ in range(count)))


async def _measure(args: argparse.Namespace) -> None:
    from ccpbx.pbx.gcpace import tune_garbage_collector
    from ccpbx.pbx.log import configure_logging
    from tests.pbx.simnet import registered, sim_pbx

    with tempfile.TemporaryDirectory(prefix="callpath-") as tmp, open(Path(tmp) / "server.log", "w") as log:
        configure_logging(args.log_level, "console", log)
        lo, hi = (int(p) for p in args.rtp_ports.split("-"))
        async with sim_pbx(Path(tmp), CONFIG.format(lo=lo, hi=hi), USERS) as server:
            caller = await registered(server, "1001", USERS["1001"])
            await registered(server, "1002", USERS["1002"], auto_answer=True)
            await _calls(caller, args.warm, args.concurrency)  # caches, pools, the worker's first channels
            server.loop_watch.stop()  # its probe every 20 ms would be counted as the calls' work
            tune_garbage_collector()  # the collector as `ccpbx serve` runs it
            await asyncio.sleep(0.5)
            profile = cProfile.Profile() if args.profile else None
            if args.inside_callgrind:
                subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=False)
            cpu0, wall0 = time.process_time(), time.monotonic()
            if profile is not None:
                profile.enable()
            await _calls(caller, args.calls, args.concurrency)
            if profile is not None:
                profile.disable()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            if args.inside_callgrind:
                subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=False)
            print(f"{args.calls} calls: {cpu / args.calls * 1000:.3f} ms of process CPU a call "
                  f"({wall:.1f} s wall, {args.concurrency} at a time)")
            if profile is not None:
                profile.dump_stats(args.profile)


def _under_callgrind(args: argparse.Namespace) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable,
               __file__, "--inside-callgrind", "--calls", str(args.calls), "--warm", str(args.warm),
               "--concurrency", str(args.concurrency), "--log-level", args.log_level, "--rtp-ports", args.rtp_ports]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", run.stderr)
        if run.returncode != 0 or found is None:
            print(run.stdout[-2000:], run.stderr[-2000:], file=sys.stderr)
            return 1
        instructions = int(found.group(1))
        print(f"{args.calls} calls: {instructions:,} instructions, {instructions // args.calls:,} a call")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=50, help="calls before the measured ones")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--log-level", default="info", help="the server's, as `[server] log_level` (default info)")
    parser.add_argument("--rtp-ports", default="56000-60000", help="the media worker's RTP ports (two per call)")
    parser.add_argument("--profile", default=None, help="write a cProfile file of the measured calls")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument("--inside-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind:
        return _under_callgrind(args)
    import uvloop

    uvloop.run(_measure(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
