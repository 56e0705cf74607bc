"""Run the benchmarks: ``python benchmarks/run.py [NAME ...] [--quick] [--json FILE] [--chart PNG]``.

NAME is the part after ``bench_`` of a module ``benchmarks/bench_<NAME>.py`` (``calls``, ``register``,
``concurrency``, ``g711``, ``engine``, ``sip``, ...); with no NAME every such module runs. Each module's
``run(quick[, options])`` returns rows, or ``{"rows": [...], "details": {...}}`` (the ladders' steps, the concurrency
curve). All rows are printed as one table; one JSON file holds the rows, the details, the machine (cores, CPU
model, load, versions of SIPp and Kamailio) and the processes that used the most CPU meanwhile (the machine may be
shared: their figures are noise in ours); a PNG chart of the ladders and the curve is written beside it when
matplotlib is installed (``pip install -e '.[bench]'``). A benchmark that raises becomes a failed row, the others
still run, and the runner exits non-zero at the end.

    python benchmarks/run.py calls register --quick     # a few minutes: the README's figures
    python benchmarks/run.py concurrency --media-workers 1 --media-workers 2
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks.common import print_table  # noqa: E402
from benchmarks.measure import LoadWatch, machine_info  # noqa: E402

RESULTS = HERE / "results"


def discover() -> list[str]:
    """The NAME of every ``bench_<NAME>.py`` next to this file, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def run_one(name: str, quick: bool, options: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench_<name>.run``; always ``{"rows": [...], "details": {...}}``."""
    path = HERE / f"bench_{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark module {path}")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up by name
    spec.loader.exec_module(module)
    takes_options = len(inspect.signature(module.run).parameters) >= 2
    out = module.run(quick, options) if takes_options else module.run(quick)
    if isinstance(out, list):
        return {"rows": out, "details": {}}
    return {"rows": list(out.get("rows", [])), "details": dict(out.get("details", {}))}


def default_json(names: list[str], quick: bool) -> Path:
    stem = "-".join(names) if len(names) <= 4 else "all"
    return RESULTS / f"{stem}{'-quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run ccpbx benchmarks and print one combined table.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer and lower steps, shorter: a smoke run")
    parser.add_argument("--json", default=None, help="where to write the results (default "
                        "benchmarks/results/<names>[-quick].json)")
    parser.add_argument("--chart", default=None, help="the PNG chart (default: the JSON path with .png)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument("--no-kamailio", action="store_true", help="ladders without the Kamailio reference")
    parser.add_argument("--no-asterisk", action="store_true",
                        help="calls without the Asterisk reference (used when installed: benchmarks/asterisk_root.sh)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="passed to `ccpbx serve` (repeatable), e.g. --server-arg=--media-workers --server-arg=2")
    parser.add_argument("--media-workers", action="append", type=int, default=[], metavar="N",
                        help="concurrency: one curve per value, `ccpbx serve --media-workers N` (repeatable)")
    parser.add_argument("--sip-workers", action="append", type=int, default=[], metavar="N",
                        help="calls and register: one more ccpbx target per value, `ccpbx serve --sip-workers N`, "
                             "in the same ladders (repeatable)")
    parser.add_argument("--callers", type=int, default=1, metavar="N",
                        help="calls and register: N SIPp callers share each step's rate, each from its own port with "
                             "its own share of the users (many phones: with N > 1 SIP workers share the load)")
    args = parser.parse_args(argv)
    names = args.names or discover()
    options = {"server_args": args.server_arg, "media_workers": args.media_workers, "sip_workers": args.sip_workers,
               "kamailio": not args.no_kamailio, "asterisk": not args.no_asterisk, "callers": max(1, args.callers)}
    json_path = Path(args.json) if args.json else default_json(names, args.quick)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    build = machine["python_build"]
    print(f"# python {build['version']} at {build['executable']}"
          f" ({'shared' if build['shared_libpython'] else 'static'} libpython): every ccpbx process runs on it",
          file=sys.stderr)
    watch = LoadWatch()
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for name in names:
        started = time.perf_counter()
        try:
            out = run_one(name, args.quick, options)
            rows.extend(out["rows"])
            details[name] = out["details"]
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            rows.append({"name": f"{name}: FAILED ({type(exc).__name__}: {exc})", "value": None, "unit": None,
                         "reference": None, "reference_value": None, "ratio": None})
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"# {name}: {seconds[name]:.1f} s", file=sys.stderr)
    # What this run started lives in its temporary directories (ccpbx-bench-*) or the worktree's own files.
    others = watch.others({os.getpid()} | _our_descendants(), own_markers=(str(HERE.parent), "ccpbx-bench-"))
    machine["load_avg_end"] = os.getloadavg()
    result = {"started": started_at, "quick": args.quick, "names": names, "options": options, "machine": machine,
              "seconds": seconds, "other_processes": others, "rows": rows, "details": details}
    print_table(rows)
    if others:
        print("\nother processes busy meanwhile (their CPU use is noise in these figures):")
        for o in others:
            print(f"  {o['cpu_pct']:>5.1f}%  {o['cmd']}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresults: {json_path}")
    if not args.no_chart:
        from benchmarks.chart import write_chart

        chart = Path(args.chart) if args.chart else json_path.with_suffix(".png")
        if write_chart(result, chart):
            print(f"chart:   {chart}")
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _our_descendants() -> set[int]:
    from benchmarks.measure import _proc_table, descendants

    table = _proc_table()
    return descendants(os.getpid(), {p: pp for p, (pp, _) in table.items()})


if __name__ == "__main__":
    sys.exit(main())
