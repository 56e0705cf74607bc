"""How answers recover after an overload burst: a burst of calls (0 s hold) far past what the server carries,
then a steady load of calls with a hold, its p99 response time per 2 s window from SIPp's ``-trace_rtt``.

    python scripts/burst_probe.py                         # 1,600 calls/s for 3 s, then 200/s with 1 s hold
    python scripts/burst_probe.py --burst 0               # the same load with no burst before it: the control
    python scripts/burst_probe.py --fresh-callee          # a new SIPp callee after the burst

Not a benchmark (no reference, one server); a check of what follows an overload, as a ladder's next steps meet it.
The callee of the burst keeps the calls the burst left half done: ``--fresh-callee`` tells its share from the
server's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ladder import CALLEE, restart_uas, start_ccpbx, start_uas
from benchmarks.measure import parse_sipp_rtt, percentile
from benchmarks.soak_calls import caller_rows
from tests.interop.sipp import run_sipp

WINDOW_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=1600, help="calls/s of the burst, 0 for none")
    parser.add_argument("--burst-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=200, help="calls/s of the load after it")
    parser.add_argument("--hold-ms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load after it runs")
    parser.add_argument("--fresh-callee", action="store_true", help="a new SIPp callee after the burst")
    args = parser.parse_args()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="burst-probe-") as tmp:
        work = Path(tmp)
        server = start_ccpbx(work / "ccpbx")  # the benchmarks' server and callee (`run.py calls`)
        server.uas = start_uas(server.host, server.port, work / "uas")
        try:
            warm = run_sipp(sipp, "uac_call", server.host, server.port, work / "warm", caller_rows(200), calls=200,
                            rate=100, timeout_s=60, extra=["-s", CALLEE, "-d", "0"])
            if warm.returncode != 0:
                print(warm.explain()[-1500:], file=sys.stderr)
                return 1
            started = time.monotonic()
            if args.burst:
                count = int(args.burst * args.burst_seconds)
                burst = run_sipp(sipp, "uac_call", server.host, server.port, work / "burst", caller_rows(count),
                                 calls=count, rate=args.burst, timeout_s=90,
                                 extra=["-s", CALLEE, "-d", "0", "-l", str(args.burst * 4)])
                print(f"burst: {count} calls at {args.burst}/s, SIPp exit {burst.returncode}, "
                      f"{time.monotonic() - started:.1f} s", flush=True)
            if args.fresh_callee:
                restart_uas(server, work / "uas2")
            offset = time.monotonic() - started
            count = int(args.rate * args.seconds)
            probe = work / "probe"
            load = run_sipp(sipp, "uac_call", server.host, server.port, probe, caller_rows(count), calls=count,
                            rate=args.rate, timeout_s=int(args.seconds * 2 + 60),
                            extra=["-s", CALLEE, "-d", str(args.hold_ms),
                                   "-l", str(int(args.rate * (4 + args.hold_ms / 1000))),
                                   "-trace_rtt", "-rtt_freq", "1"])
            print(f"load: {count} calls at {args.rate}/s, {args.hold_ms} ms hold, SIPp exit {load.returncode}")
            samples = sorted(pair for f in probe.glob("*_rtt.csv") for pair in parse_sipp_rtt(f.read_text()))
            if not samples:
                print("no response times traced", file=sys.stderr)
                return 1
            first = samples[0][0]
            windows: dict[int, list[float]] = {}
            for at, rtt in samples:
                windows.setdefault(int((at - first) / 1000 / WINDOW_S), []).append(rtt)  # SIPp counts ms
            for index in sorted(windows):
                values = windows[index]
                print(f"  {offset + index * WINDOW_S:5.0f} s after the burst began: {len(values):4d} calls, "
                      f"p50 {statistics.median(values):6.0f} ms, p99 {percentile(values, 99) or 0.0:6.0f} ms, "
                      f"max {max(values):6.0f} ms")
            return 0
        finally:
            server.close()  # its callee too


if __name__ == "__main__":
    sys.exit(main())
