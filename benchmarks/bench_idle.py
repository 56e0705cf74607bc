"""What a server costs with nothing to do: CPU and memory of ``ccpbx serve`` at rest, beside Asterisk and Kamailio.

Each server starts as the calls benchmark starts it (ccpbx: the default configuration, media workers and all, the
benchmark's 200 extensions; Asterisk 22 through ``benchmarks/asterisk_root.sh`` when installed; Kamailio with its
default children), is left alone for a few seconds to finish starting, and is then measured over a window with no
traffic at all: CPU (user + system of its process tree from /proc, in ms per second: 10 ms ticks, so a 30 s window
reads to about 0.3 ms/s) and memory: the tree's proportional set size (PSS: a page shared by several of its
processes, as the Python runtime and numpy are by ccpbx's, or Kamailio's shared memory by its children, counted
once), with the sum of their RSS beside it for the record (which counts such pages once per process). The
servers are measured one after the other, each alone. A box that runs a PBX is idle most of the day, and what it
spends then is paid for all day.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import main_for
from benchmarks.ladder import Target, asterisk_command, kamailio_binary, start_asterisk, start_ccpbx, start_kamailio
from benchmarks.measure import tree_cpu_s, tree_pids, tree_pss_mb, tree_rss_mb

SETTLE_S = 5.0
WINDOW_S = 30.0
SETTLE_S_QUICK = 2.0
WINDOW_S_QUICK = 10.0


def measure_idle(target: Target, settle_s: float, window_s: float) -> dict[str, Any]:
    """``target``'s CPU in ms per second over ``window_s`` seconds with no traffic (after ``settle_s``), its
    memory (PSS and summed RSS) and how many processes its tree has."""
    time.sleep(settle_s)
    before, t0 = tree_cpu_s(target.pid), time.monotonic()
    time.sleep(window_s)
    used, wall = tree_cpu_s(target.pid) - before, time.monotonic() - t0
    return {"cpu_ms_per_s": round(1000.0 * used / wall, 2), "pss_mb": round(tree_pss_mb(target.pid), 1),
            "rss_mb": round(tree_rss_mb(target.pid), 1), "processes": len(tree_pids(target.pid)),
            "window_s": round(wall, 1)}


def idle_rows(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows from each server's :func:`measure_idle` figures: ccpbx's CPU and memory, each beside every
    reference that was measured (ratio > 1: ccpbx costs more), or alone when none was."""
    ours = figures.get("ccpbx")
    if ours is None:
        return []
    rows = []
    references = [name for name in ("asterisk", "kamailio") if name in figures] or [None]
    for reference in references:
        theirs = figures[reference] if reference else None
        suffix = f" vs {reference}" if reference else ""
        for key, unit in (("cpu_ms_per_s", "CPU ms per second at rest (ratio >1: ccpbx costs more)"),
                          ("pss_mb", "MB at rest (PSS: shared pages counted once)")):
            ref = theirs[key] if theirs else None
            rows.append({"name": f"idle.{key}{suffix}", "value": ours[key], "unit": unit, "reference": reference,
                         "reference_value": ref, "ratio": round(ours[key] / ref, 2) if ref else None})
    return rows


def run(quick: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    options = options or {}
    settle, window = (SETTLE_S_QUICK, WINDOW_S_QUICK) if quick else (SETTLE_S, WINDOW_S)
    starters: list[tuple[str, Callable[[Path], Target]]] = [
        ("ccpbx", lambda work: start_ccpbx(work, list(options.get("server_args", []))))]
    if options.get("asterisk", True):
        if asterisk_command() is None:
            print("  no asterisk reference: not installed (benchmarks/asterisk_root.sh installs one)", file=sys.stderr)
        else:
            starters.append(("asterisk", start_asterisk))
    if options.get("kamailio", True) and kamailio_binary():
        starters.append(("kamailio", start_kamailio))
    figures: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-idle-") as tmp:
        for name, start in starters:
            try:
                target = start(Path(tmp) / name)
            except RuntimeError as exc:
                if name == "ccpbx":
                    raise
                print(f"  {name} reference unavailable: {exc}", file=sys.stderr)
                continue
            try:
                figures[name] = measure_idle(target, settle, window)
                info[name] = target.info
            finally:
                target.close()
            f = figures[name]
            print(f"  {name:<9} at rest: {f['cpu_ms_per_s']:6.2f} ms CPU per second, {f['pss_mb']:6.1f} MB PSS "
                  f"({f['rss_mb']:.1f} MB RSS summed) in {f['processes']} process(es) over {f['window_s']:.0f} s",
                  file=sys.stderr, flush=True)
    return {"rows": idle_rows(figures), "details": {"idle": figures, "targets": info, "settle_s": settle}}


if __name__ == "__main__":
    main_for(run, "benchmarks/results/idle.json")
