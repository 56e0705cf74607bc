"""Logging set-up: structlog for our events, the standard library's ``logging`` routed to the same output.

Our events (``log.info("sip.request.received", call_id=...)``) go from structlog straight to the stream, not
through a ``logging.Logger``: a library that calls ``logging.config.fileConfig()`` (whose
``disable_existing_loggers`` defaults to true) or raises the root level cannot silence them. Records from
libraries that use ``logging`` (asyncio, aiosqlite, ...) are rendered by the same renderer through
:class:`structlog.stdlib.ProcessorFormatter`, so the output is one consistent stream.

Per-call context is bound with :func:`structlog.contextvars.bind_contextvars` when a call task starts and is
merged into every event that task logs (``merge_contextvars`` is the first processor).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

from ccpbx.pbx.config import LogFormat, LogLevel

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.CRITICAL: logging.CRITICAL,
}
_HANDLER_MARK = "_ccpbx_handler"


def configure_logging(
    level: LogLevel | str = LogLevel.INFO,
    fmt: LogFormat | str = LogFormat.CONSOLE,
    stream: TextIO | None = None,
) -> None:
    """Send structlog events and stdlib ``logging`` records to ``stream`` (default: ``sys.stderr`` now).

    Parameters
    ----------
    level : {"debug", "info", "warning", "error", "critical"}
        Lowest level written, for both structlog events and stdlib records.
    fmt : {"console", "json"}
        ``console``: ``timestamp [level] event key=value ...`` lines (coloured on a terminal unless
        ``NO_COLOR`` is set); ``json``: one JSON object per line with ``timestamp`` (ISO 8601, UTC),
        ``level``, ``event`` and the bound fields.
    stream : text file, optional

    Calling it again replaces the previous set-up (no duplicated handlers); loggers that an earlier
    ``fileConfig`` disabled are enabled again.
    """
    level = LogLevel(str(level).lower())
    fmt = LogFormat(str(fmt).lower())
    out = sys.stderr if stream is None else stream
    levelno = _LEVELS[level]

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    if fmt is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
        finishing: list[Processor] = [structlog.processors.format_exc_info]
    else:
        colors = _isatty(out) and "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        finishing = []  # the console renderer formats exceptions itself

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        timestamper,
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*shared, *finishing, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_NamedWriteLoggerFactory(out),
        context_class=dict,
        # Not cached: module-level loggers made before configure_logging must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.ExtraAdder(),
                *finishing,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    # disable_existing_loggers=False semantics: undo whatever an earlier fileConfig()/dictConfig() disabled.
    for existing in logging.root.manager.loggerDict.values():
        if isinstance(existing, logging.Logger):
            existing.disabled = False


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger, with ``logger=name`` bound when a name is given (plus any ``initial`` fields)."""
    # A lazy proxy: it resolves the configuration at each call, so a module-level logger follows a later
    # configure_logging(); the name travels as a logger-factory argument (``logger`` is reserved by bind).
    return structlog.get_logger(*(() if name is None else (name,)), **initial)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _add_logger_name(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was asked for (read by ``add_logger_name``)."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else None)
