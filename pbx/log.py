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

import asyncio
import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

from ccpbx.pbx.config import LogFormat, LogLevel

__all__ = ["LineBatcher", "PlainConsoleRenderer", "UtcTimestamper", "configure_logging", "flush_logs", "get_logger"]

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
    out: TextIO = sys.stderr if stream is None else stream
    _use_batcher(LineBatcher(out) if _has_descriptor(out) else None)
    if _BATCHER is not None:
        out = _BATCHER  # type: ignore[assignment]  # what the handler and the loggers use of a stream: write, flush
    levelno = _LEVELS[level]

    timestamper = UtcTimestamper()
    renderer: Processor
    if fmt is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
        finishing: list[Processor] = [structlog.processors.format_exc_info]
    else:
        colors = _isatty(out) and "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=True) if colors else PlainConsoleRenderer()
        finishing = []  # the console renderer formats exceptions itself

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        timestamper,
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        # the same steps as ``shared`` + finishing + renderer (the stdlib records' chain below), made one
        processors=[EventPipeline(timestamper, [*finishing, renderer])],
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
    """A structlog logger, with ``logger=name`` bound when a name is given (plus any ``initial`` fields).

    Made once at module level, it follows a later :func:`configure_logging` (and structlog's
    ``capture_logs`` in tests) like structlog's lazy proxy, but assembles its bound logger once per
    configuration instead of at every call (:class:`CachedLogger`).
    """
    return CachedLogger(name, initial)


class CachedLogger:
    """A module-level logger assembled once per structlog configuration.

    structlog's ``BoundLoggerLazyProxy`` builds a new bound logger (and a new output logger) at every call so
    that it follows reconfiguration: about 8 µs for an ``info()`` that the level filter then drops, against
    0.4 µs for a bound logger — a call's dozens of log calls cost more than its SIP parsing. This keeps the
    assembled logger and assembles it again only when the configuration it was made from is replaced
    (``structlog.configure`` installs new processor lists, factories and classes: identity tells).
    """

    __slots__ = ("_bound", "_factory", "_factory_args", "_initial", "_processors", "_wrapper")

    def __init__(self, name: str | None, initial: dict[str, Any]) -> None:
        self._factory_args = () if name is None else (name,)  # the name travels to the logger factory
        self._initial = initial
        self._bound: Any = None
        self._processors: object = None
        self._factory: object = None
        self._wrapper: object = None

    def _logger(self) -> Any:
        config = _STRUCTLOG_CONFIG
        if (config.default_processors is not self._processors or config.logger_factory is not self._factory
                or config.default_wrapper_class is not self._wrapper):
            self._processors = config.default_processors
            self._factory = config.logger_factory
            self._wrapper = config.default_wrapper_class
            self._bound = structlog.get_logger(*self._factory_args, **self._initial).bind()
        return self._bound

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger(), name)


# structlog keeps its configuration in one object that configure() updates in place; reading four attributes of
# it is what makes CachedLogger cheap (structlog.get_config() builds a dict at each call).
_STRUCTLOG_CONFIG = structlog._config._CONFIG


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_STACK_INFO = structlog.processors.StackInfoRenderer()


class EventPipeline:
    """Our events' processors as one: ``merge_contextvars``, ``add_log_level``, the logger's name, the time
    stamp and ``StackInfoRenderer`` in that order (the keys land in the same order), then ``rest`` (the
    renderer, with ``format_exc_info`` before it for JSON). The same line as the processors one by one, with
    six Python calls less: a call logs five lines at the default level."""

    __slots__ = ("_rest", "_stamp")

    def __init__(self, timestamper: UtcTimestamper, rest: list[Processor]) -> None:
        self._stamp = timestamper
        self._rest = rest

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:
        event_dict = structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
        event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)  # add_log_level
        name = getattr(logger, "name", None)  # _add_logger_name (our events have no stdlib record)
        if name:
            event_dict.setdefault("logger", name)
        event_dict = self._stamp(logger, method_name, event_dict)
        if "stack_info" in event_dict:
            event_dict = _STACK_INFO(logger, method_name, event_dict)
        result: Any = event_dict
        for processor in self._rest:
            result = processor(logger, method_name, result)
        return result


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # structlog's add_log_level: the others as called


def _add_logger_name(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was asked for (read by ``add_logger_name``). Into a
    :class:`LineBatcher` a line is handed over without the flush WriteLogger makes after each."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name
        if isinstance(file, LineBatcher):
            for method in _LOGGER_METHODS:  # WriteLogger's names for its msg(), one per level
                setattr(self, method, file.write_line)
            for method in _LOGGER_METHODS_AT_ONCE:  # what someone may read before the loop turns (or never)
                setattr(self, method, file.write_line_now)


_LOGGER_METHODS = ("msg", "log", "debug", "info")
_LOGGER_METHODS_AT_ONCE = ("warn", "warning", "fatal", "failure", "err", "error", "critical", "exception")


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else None)


# ---- writing lines ------------------------------------------------------------------------------------------
def _has_descriptor(stream: TextIO) -> bool:
    """A stream backed by an OS file (a file, a pipe, a terminal, journald's socket), where each write of a line
    is a system call; an in-memory one (``io.StringIO``) is written to directly."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False
    return True


class LineBatcher:
    """The lines one event-loop iteration logs, written to ``stream`` together at the start of the next.

    A line written (and flushed) on its own costs a system call: ~13 us each in a server under load, five lines
    a basic call at the default level, a call's INVITE alone logging three in one iteration. The lines of an
    iteration wait in memory until a callback the iteration scheduled (``call_soon``) writes them, before the
    loop's next turn waits for I/O: what a reader of the log sees is late by the rest of the iteration, never
    by a timer. Warnings and errors, a stdlib record, and any line from a thread without a running loop (start-up,
    another thread, a synchronous tool) are written at once, after whatever waits, so the order holds.
    :func:`flush_logs` (also at exit) writes what waits now.
    """

    __slots__ = ("__weakref__", "_home", "_home_thread", "_lines", "_lock", "_loop", "stream")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop a write is scheduled on
        # The running loop found at the last look and its thread: asking asyncio for the running loop costs a
        # getpid() system call in CPython 3.11 (its fork check), asking this loop whether it runs does not.
        self._home: asyncio.AbstractEventLoop | None = None
        self._home_thread = -1

    def write_line(self, message: str) -> None:
        """structlog's logger method: ``message`` without its line end."""
        self.write(message + "\n")

    def write_line_now(self, message: str) -> None:
        """The same for a warning or an error: written at once, after what waits (a server that stops or hangs
        next still shows it)."""
        with self._lock:
            self._lines.append(message + "\n")
            self._write_locked()

    def write(self, text: str) -> int:
        loop = self._home
        if loop is None or self._home_thread != threading.get_ident() or not loop.is_running():
            loop = asyncio._get_running_loop()
            if loop is not None:
                self._home, self._home_thread = loop, threading.get_ident()
        with self._lock:
            self._lines.append(text)
            scheduled = self._loop
            if loop is scheduled and loop is not None:  # a write is already due at the end of this iteration
                return len(text)
            if loop is None or scheduled is not None:  # no loop here, or another thread's: at once, in order
                self._write_locked()
                return len(text)
            self._loop = loop
        try:
            loop.call_soon(self.flush)
        except RuntimeError:  # the loop is closing: nothing runs after this
            self.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        self._loop = None
        lines = self._lines
        if not lines:
            return
        self._lines = []
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream or a full disk: the lines are lost, the server goes on
            pass

    def isatty(self) -> bool:  # what configure_logging asks of its stream (colours)
        return _isatty(self.stream)


_BATCHER: LineBatcher | None = None


def _use_batcher(batcher: LineBatcher | None) -> None:
    global _BATCHER
    if _BATCHER is not None:
        _BATCHER.flush()
    _BATCHER = batcher


def flush_logs() -> None:
    """Write the log lines waiting for the end of this event-loop iteration now (before printing elsewhere to
    the same output, and at exit)."""
    batcher = _BATCHER
    if batcher is not None:
        batcher.flush()


atexit.register(flush_logs)


# ---- the cost of a line ------------------------------------------------------------------------------------
# A basic call logs six INFO lines (started, route, the callee's leg calling and answered, bridged, ended; the
# phones' device states are debug). With structlog's own console renderer and time stamper a line cost ~22 us in
# process (13 of them rendering, 2.4 the time stamp), and the eleven lines a call wrote then cost ~0.85 ms of the
# server's main thread per call: a fifth of a call at the default level (benchmarks/bench_log.py measures both).


class UtcTimestamper:
    """``timestamp`` as ISO 8601 in UTC with microseconds (``2026-12-06T11:55:45.554821Z``): what
    ``TimeStamper(fmt="iso", utc=True)`` writes, except that the microseconds are always there (fixed width), with
    the date and time of day formatted once per second instead of a ``datetime`` per line."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # (epoch second, its text): swapped whole, threads log too

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        event_dict["timestamp"] = f"{cached[1]}.{nanoseconds // 1000:06d}Z"
        return event_dict


_NOTHING = object()
_QUOTED_CHARS = frozenset(" \t=\r\n\"'")  # a text value holding any of these is written as repr()
_LEVEL_WIDTH = 9  # len("exception"), the longest level name
_EVENT_WIDTH = 30


class PlainConsoleRenderer:
    """The line ``structlog.dev.ConsoleRenderer(colors=False)`` renders, built directly:
    ``timestamp [level    ] event<padded to 30> [logger] key=value ...`` with the other keys sorted, a text value
    as it is unless it holds a space, tab, ``=``, quote or line end (then ``repr``), anything else ``repr``.
    Events with an exception or a stack go to structlog's renderer, which formats those."""

    __slots__ = ("_full",)

    def __init__(self) -> None:
        self._full = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> str:
        if "exception" in event_dict or "exc_info" in event_dict or "stack" in event_dict or "" in event_dict:
            return str(self._full(logger, method_name, event_dict))
        parts: list[str] = []
        pop = event_dict.pop
        value = pop("timestamp", _NOTHING)
        if value is not _NOTHING:
            parts.append(str(value))
        value = pop("level", _NOTHING)
        if value is not _NOTHING:
            parts.append(f"[{str(value).ljust(_LEVEL_WIDTH)}]")
        value = pop("event", _NOTHING)
        if value is not _NOTHING:
            parts.append(str(value).ljust(_EVENT_WIDTH))
        value = pop("logger", _NOTHING)
        if value is not _NOTHING:
            parts.append(f"[{value}]")
        value = pop("logger_name", _NOTHING)
        if value is not _NOTHING:
            parts.append(f"[{value}]")
        for key in sorted(event_dict):
            value = event_dict[key]
            if not isinstance(value, str) or not _QUOTED_CHARS.isdisjoint(value):
                value = repr(value)
            parts.append(f"{key}={value}")
        return " ".join([part for part in parts if part]).rstrip(" ")


def _json_fallback(value: Any) -> Any:
    """What structlog's JSON renderer writes for a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


_JSON_ENCODER = json.JSONEncoder(default=_json_fallback)


def _json_line(event_dict: EventDict, **_: Any) -> str:
    """``json.dumps(event_dict, default=...)`` without building an encoder per line."""
    return _JSON_ENCODER.encode(event_dict)
