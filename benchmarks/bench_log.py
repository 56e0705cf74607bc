"""A log line's cost as ``ccpbx serve`` writes it (microseconds per line, best of three), beside structlog's stock
pipeline for the same line in the same run: its ``ConsoleRenderer`` without colours (or ``JSONRenderer``) and its
``TimeStamper(fmt="iso", utc=True)``, the other processors as ours. Both write to a file and flush each line, as
the server's log on a redirected stderr. At the default level (info) a basic call writes six lines.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import best_seconds_per_call, main_for


def _line(log: Any) -> None:
    log.info("call.ended", disposition="answered", duration=0.01, side="caller", status=None)


def _ours_us(fmt: str, path: Path, quick: bool) -> float:
    from ccpbx.pbx.log import configure_logging, get_logger

    with path.open("w") as stream:
        configure_logging("info", fmt, stream)
        log = get_logger("ccpbx.calls")
        return 1e6 * best_seconds_per_call(lambda: _line(log), 3, 0.05 if quick else 0.5)


def _stock_us(fmt: str, path: Path, quick: bool) -> float:
    import logging

    import structlog

    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    with path.open("w") as stream:
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.StackInfoRenderer(), renderer],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(stream), context_class=dict,
            cache_logger_on_first_use=False)
        log = structlog.get_logger().bind(logger="ccpbx.calls")  # the name ours adds from its logger
        try:
            return 1e6 * best_seconds_per_call(lambda: _line(log), 3, 0.05 if quick else 0.5)
        finally:
            structlog.reset_defaults()


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-log-") as tmp:
        for fmt in ("console", "json"):
            stock = _stock_us(fmt, Path(tmp) / f"stock-{fmt}.log", quick)
            ours = _ours_us(fmt, Path(tmp) / f"ours-{fmt}.log", quick)
            rows.append({"name": f"log.line.{fmt}", "value": round(ours, 1),
                         "unit": "us per info line (written and flushed to a file)",
                         "reference": "structlog stock pipeline", "reference_value": round(stock, 1),
                         "ratio": round(ours / stock, 2)})
    return rows


if __name__ == "__main__":
    main_for(run, "benchmarks/results/log.json")
