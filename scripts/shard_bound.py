"""What splitting calls across processes could give on this box, at best: one ``ccpbx serve`` offered a rate,
against two independent servers offered half of it each (their own SIPp callers and callees, no coordination
between them: the upper bound of any design that spreads calls over processes), alternating rate by rate.

    python scripts/shard_bound.py                       # 300 to 700 calls/s, 4 s steps, 0 s hold
    python scripts/shard_bound.py 200 300 400 --hold-ms 1000

Not a benchmark of a feature (the two servers share no registrations, no device state, no queues); a bound to
weigh a multi-process design against. Each row: achieved rate, failures, retransmissions, p99 (the worse of
the two servers), CPU ms per call (all server processes) and whether the step is fast (p99 <= 100 ms,
retransmissions <= 1%).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ladder import Target, run_step, start_ccpbx, start_uas, wait_idle
from benchmarks.measure import Step

SCENARIO = "bench_call"


def _row(label: str, steps: list[Step]) -> str:
    offered = sum(s.offered for s in steps)
    achieved = sum(s.achieved for s in steps)
    completed = sum(s.completed for s in steps)
    failed = sum(s.failed for s in steps)
    retrans = sum(s.retransmissions for s in steps)
    p99 = max((s.p99_ms for s in steps if s.p99_ms is not None), default=None)
    cpu = sum((s.cpu_ms_per_op or 0.0) * s.completed for s in steps) / completed if completed else None
    fast = all(s.fast for s in steps)
    flag = "fast" if fast else ("ok" if all(s.good for s in steps) else "not clean")
    return (f"{label:<12} offered {offered:5.0f}/s  achieved {achieved:6.1f}/s  failed {failed:5}  "
            f"retrans {retrans:5}  p99 {'-' if p99 is None else f'{p99:.0f}':>5} ms  "
            f"cpu {'-' if cpu is None else f'{cpu:.2f}':>5} ms/call  {flag}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rates", nargs="*", type=float, default=[300, 400, 500, 600, 700],
                        help="total calls/s offered, step by step")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of a step")
    parser.add_argument("--hold-ms", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shard-bound-") as tmp:
        work = Path(tmp)
        servers: list[Target] = []
        try:
            for name in ("a", "b"):
                server = start_ccpbx(work / name)
                servers.append(server)
                server.uas = start_uas(server.host, server.port, work / f"uas-{name}")
                run_step(server, SCENARIO, work / f"warm-{name}", 100, 2)  # registrations, caches, pools
            one = servers[0]
            for rate in args.rates:
                alone = run_step(one, SCENARIO, work / f"one-{rate:g}", rate, args.seconds, hold_ms=args.hold_ms)
                print(_row("one server", [alone]), flush=True)
                for server in servers:
                    wait_idle(server)
                with ThreadPoolExecutor(len(servers)) as pool:  # the two halves at once
                    futures = [pool.submit(run_step, server, SCENARIO, work / f"two-{i}-{rate:g}", rate / 2,
                                           args.seconds, hold_ms=args.hold_ms) for i, server in enumerate(servers)]
                    halves = [f.result() for f in futures]
                print(_row("two servers", halves), flush=True)
                for server in servers:
                    wait_idle(server)
        finally:
            for server in servers:
                server.close()  # its callee too
    return 0


if __name__ == "__main__":
    sys.exit(main())
