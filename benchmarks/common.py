"""Helpers shared by the benchmark scripts: a plain-text table, a JSON dump and a standalone ``main``.

A benchmark row is a dict with the keys of :data:`COLUMNS`; ``reference``, ``reference_value`` and ``ratio``
are ``None`` when a figure has no reference to compare with.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("name", "value", "unit", "reference", "reference_value", "ratio")


def row(name: str, value: float | None, unit: str, reference: str | None = None,
        reference_value: float | None = None, ratio: float | None = None) -> dict[str, Any]:
    """One benchmark row (the keys of :data:`COLUMNS`)."""
    return {"name": name, "value": value, "unit": unit, "reference": reference, "reference_value": reference_value,
            "ratio": ratio}


def best_seconds_per_call(fn: Callable[[], object], repeats: int, target_s: float = 0.002) -> float:
    """Best per-call time of ``fn`` over ``repeats`` runs, each of enough calls to last about ``target_s``."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, int(target_s / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-2):
            return f"{value:.3e}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows as an aligned text table with the columns of :data:`COLUMNS`."""
    cells = [list(COLUMNS)] + [[_cell(row.get(col)) for col in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for n, r in enumerate(cells):
        padded = (c.ljust(w) if i in (0, 2, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        print("  ".join(padded))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows as a JSON list, creating the parent folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rows, indent=2) + "\n")


def main_for(
    run_fn: Callable[[bool], Any], default_json: str, argv: Sequence[str] | None = None
) -> None:
    """Run one benchmark from the command line: ``[--quick] [--json FILE]``, print the table, write JSON.

    ``run_fn`` returns rows, or ``{"rows": [...], "details": {...}}`` (written whole). ``benchmarks/run.py``
    does the same with options, the machine's description and a chart.
    """
    parser = argparse.ArgumentParser(description=run_fn.__module__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--json", default=default_json, help=f"where to write the rows (default {default_json})")
    args = parser.parse_args(argv)
    out = run_fn(args.quick)
    rows = out["rows"] if isinstance(out, dict) else out
    print_table(rows)
    p = Path(args.json)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2, default=str) + "\n")
