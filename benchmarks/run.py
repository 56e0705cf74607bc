"""Run the benchmarks: ``python benchmarks/run.py [NAME ...] [--quick] [--json FILE]``.

NAME is the part after ``bench_`` of a module ``benchmarks/bench_<NAME>.py``; with no NAME every such module
runs. Each module's ``run(quick)`` returns rows; all rows are printed as one table and written as one JSON
list (default ``benchmarks/results/latest.json``). A benchmark that raises becomes a failed row, the others
still run, and the runner exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import print_table, write_json  # noqa: E402

DEFAULT_JSON = str(HERE / "results" / "latest.json")


def discover() -> list[str]:
    """The NAME of every ``bench_<NAME>.py`` next to this file, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def run_one(name: str, quick: bool) -> list[dict[str, Any]]:
    path = HERE / f"bench_{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark module {path}")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up by name
    spec.loader.exec_module(module)
    rows: list[dict[str, Any]] = module.run(quick)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run ccpbx benchmarks and print one combined table.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the rows (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    names = args.names or discover()
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in names:
        started = time.perf_counter()
        try:
            rows.extend(run_one(name, args.quick))
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            rows.append(
                {
                    "name": f"{name}: FAILED ({type(exc).__name__}: {exc})",
                    "value": None,
                    "unit": None,
                    "reference": None,
                    "reference_value": None,
                    "ratio": None,
                }
            )
        print(f"# {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print_table(rows)
    write_json(rows, args.json)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
