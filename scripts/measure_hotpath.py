"""CPU per call and per registration of ``ccpbx serve``: a fixed-rate SIPp run, the server's CPU from /proc.

    python scripts/measure_hotpath.py calls --rate 100 --seconds 20
    python scripts/measure_hotpath.py calls --rate 250 --hold-ms 1000   # calls that stay up a second
    python scripts/measure_hotpath.py register --rate 500 --seconds 10
    python scripts/measure_hotpath.py calls --profile prof.txt   # py-spy raw samples of the server meanwhile

Not a benchmark (those are in benchmarks/, with ladders and a reference); a quick before/after check of one
change on the hot path, run twice on the same box.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import tree_pids
from benchmarks.soak_calls import CALLEE, CALLERS, caller_rows, server_for_calls, start_uas, stop
from tests.interop.sipp import run_sipp

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (media workers)."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += cpu_s_path(Path(f"/proc/{p}/stat"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` by thread id (the main thread's id is the pid)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_s_path(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def cpu_s_path(stat: Path) -> float:
    user, system = user_sys_s(stat)
    return user + system


def user_sys_s(stat: Path) -> tuple[float, float]:
    """User and system CPU seconds from a /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("calls", "register"))
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--hold-ms", type=int, default=0, help="calls: how long each call stays up")
    parser.add_argument("--media-workers", type=int, default=None, help="[rtp] workers (default: the server's)")
    parser.add_argument("--sip-workers", type=int, default=0, help="[sip] workers")
    parser.add_argument("--log-level", default=None, help="[server] log_level (default: the server's, info)")
    args = parser.parse_args()
    sipp = shutil.which("sipp")
    assert sipp, "sipp not installed"
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        work = Path(tmp)
        server = server_for_calls(work, args.media_workers, args.sip_workers, args.log_level)
        uas = None
        spy = None
        try:
            count = int(args.rate * args.seconds)
            if args.what == "calls":
                uas = start_uas(sipp, server.host, server.port, work / "uas", echo=False)
                warm = run_sipp(sipp, "uac_call", server.host, server.port, work / "warm", caller_rows(200),
                                calls=200, rate=100, timeout_s=60, extra=["-s", CALLEE, "-d", "0"])
                assert warm.returncode == 0, warm.explain()
            else:  # every user registered once: what is measured are refreshes, as phones send all day
                rows = [[r[0], r[1], "3600", "5999"] for r in caller_rows(CALLERS)]
                warm = run_sipp(sipp, "reg_contact", server.host, server.port, work / "warm", rows, calls=len(rows),
                                rate=200, timeout_s=120)
                assert warm.returncode == 0, warm.explain()
            time.sleep(1.0)
            idle0 = cpu_s(server.proc.pid)
            time.sleep(2.0)
            idle_per_s = (cpu_s(server.proc.pid) - idle0) / 2.0
            if args.profile:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                        str(server.proc.pid), "--format", "raw", "-o", args.profile, "--nonblocking",
                                        *os.environ.get("SPY_ARGS", "").split(),
                                        "--duration", str(int(args.seconds))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            threads0 = thread_cpu_s(server.proc.pid)
            procs0 = {p: user_sys_s(Path(f"/proc/{p}/stat")) for p in tree_pids(server.proc.pid)}
            main_stat = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/stat")
            user0, sys0 = user_sys_s(main_stat)
            c0, t0 = cpu_s(server.proc.pid), time.monotonic()
            if args.what == "calls":
                result = run_sipp(sipp, "uac_call", server.host, server.port, work / "run", caller_rows(count),
                                  calls=count, rate=args.rate, timeout_s=int(args.seconds * 4 + 60),
                                  extra=["-s", CALLEE, "-d", str(args.hold_ms),
                                         "-l", str(max(200, int(args.rate * (4 + args.hold_ms / 1000))))])
            else:
                rows = [[r[0], r[1], "3600", "5999"] for r in caller_rows(count)]
                result = run_sipp(sipp, "reg_contact", server.host, server.port, work / "run", rows, calls=count,
                                  rate=args.rate, timeout_s=int(args.seconds * 4 + 60))
            time.sleep(1.0)  # the last BYEs and CDR writes
            elapsed = time.monotonic() - t0
            used = cpu_s(server.proc.pid) - c0 - idle_per_s * elapsed
            threads1 = thread_cpu_s(server.proc.pid)
            for p in tree_pids(server.proc.pid):
                if p in procs0 and p != server.proc.pid:
                    cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                    name = next((c.decode() for c in cmd if c.startswith(b"ccpbx.")), str(p))
                    user, system = user_sys_s(Path(f"/proc/{p}/stat"))
                    print(f"  process {p} {name}: user {user - procs0[p][0]:.2f}s, system {system - procs0[p][1]:.2f}s")
            user1, sys1 = user_sys_s(main_stat)
            ok = result.returncode == 0
            main_s = threads1.get(server.proc.pid, 0.0) - threads0.get(server.proc.pid, 0.0)
            print(f"  main thread {main_s:.2f}s, the rest (threads, media workers, idle removed) "
                  f"{used - main_s:+.2f}s ({len(threads1) - 1} threads besides the main one); main thread user "
                  f"{user1 - user0:.2f}s, system {sys1 - sys0:.2f}s")
            print(f"{args.what}: {count} at {args.rate}/s in {elapsed:.1f}s, ok={ok}, server CPU "
                  f"{used:.2f}s (idle {idle_per_s * 1000:.1f} ms/s removed) -> {used / count * 1000:.3f} ms each")
            if not ok:
                print(result.explain()[-1500:])
            return 0 if ok else 1
        finally:
            if spy is not None:
                spy.wait(60)
            if uas is not None:
                stop(uas.proc)
            server.stop()
            print(loop_summary(server.log))


def loop_summary(log_text: str) -> str:
    """The server's own account of its event loop over its life (its ``sip.server.stopped`` line): p99 and
    worst lateness of a probe due every 20 ms, stalls, the collector's pauses."""
    found = re.findall(r"sip\.server\.stopped.*", log_text)
    if not found:
        return "  event loop: no sip.server.stopped line in the server's log"
    fields = dict(re.findall(r"(loop_\w+|gc_pause_s)=(\S+)", found[-1]))
    return (f"  event loop: p99 lateness within {fields.get('loop_lag_p99_within_ms', '?')} ms, worst "
            f"{fields.get('loop_lag_max_ms', '?')} ms, stalls {fields.get('loop_stalls', '?')}; collector pauses "
            f"{fields.get('gc_pause_s', '?')} s in all")


if __name__ == "__main__":
    raise SystemExit(main())
