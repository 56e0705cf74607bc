"""Logging set-up: JSON and console output, bound context, level filtering, stdlib routing."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from ccpbx.pbx.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    # fileConfig() below disables every existing logger; other tests must not inherit that.
    for existing in logging.root.manager.loggerDict.values():
        if isinstance(existing, logging.Logger):
            existing.disabled = False


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_timestamp_and_bound_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = get_logger("ccpbx.test")
    structlog.contextvars.bind_contextvars(call_id="a84b4c76e66710", leg="A")
    log.info("sip.request.received", method="INVITE")
    structlog.contextvars.unbind_contextvars("leg")
    log.warning("sip.transaction.timed_out", aor="1001")
    first, second = _json_lines(out)
    assert first["event"] == "sip.request.received"
    assert first["method"] == "INVITE"
    assert (first["call_id"], first["leg"]) == ("a84b4c76e66710", "A")
    assert first["level"] == "info"
    assert first["logger"] == "ccpbx.test"
    assert str(first["timestamp"]).endswith("Z") and "T" in str(first["timestamp"])
    assert second["event"] == "sip.transaction.timed_out"
    assert "leg" not in second and second["call_id"] == "a84b4c76e66710"


def test_levels_below_the_threshold_are_dropped() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", out)
    log = get_logger()
    log.debug("a.debug")
    log.info("a.info")
    log.warning("a.warning")
    log.error("a.error")
    assert [line["event"] for line in _json_lines(out)] == ["a.warning", "a.error"]


def test_stdlib_logging_goes_to_the_same_output_and_filter() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.contextvars.bind_contextvars(call_id="c1")
    library = logging.getLogger("some.library")
    library.debug("not shown")
    library.warning("disk %s full", "/var")
    (line,) = _json_lines(out)
    assert (line["event"], line["level"], line["logger"], line["call_id"]) == (
        "disk /var full", "warning", "some.library", "c1",
    )


def test_exceptions_are_rendered_in_json() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        get_logger().exception("sip.handler.failed")
    (line,) = _json_lines(out)
    assert "RuntimeError: kaput" in str(line["exception"])


def test_console_format_is_key_value() -> None:
    out = io.StringIO()
    configure_logging("debug", "console", out)
    get_logger("ccpbx.test").debug("acd.contact.offered", agent="7", queue="sales")
    text = out.getvalue()
    assert "acd.contact.offered" in text
    assert "agent=7" in text and "queue=sales" in text
    assert "\x1b[" not in text  # no colours into a non-terminal


def test_reconfiguring_replaces_rather_than_duplicates() -> None:
    early = get_logger("ccpbx.module")  # made before any configuration, as module-level loggers are
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("debug", "json", second)
    early.debug("x.debug")
    logging.getLogger("lib").info("stdlib")
    assert first.getvalue() == ""
    assert [line["event"] for line in _json_lines(second)] == ["x.debug", "stdlib"]
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ccpbx_handler", False)]
    assert len(ours) == 1


def test_a_librarys_file_config_cannot_silence_us(tmp_path: Path) -> None:
    out = io.StringIO()
    stdlib_logger = logging.getLogger("ccpbx.stdlib_user")
    configure_logging("info", "json", out)
    ini = tmp_path / "logging.ini"
    ini.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=null\n[formatters]\nkeys=\n"
        "[logger_root]\nlevel=CRITICAL\nhandlers=null\n"
        "[handler_null]\nclass=NullHandler\nargs=()\n"
    )
    logging.config.fileConfig(ini)  # disable_existing_loggers=True by default
    assert stdlib_logger.disabled
    get_logger("ccpbx.app").info("still.here")
    assert [line["event"] for line in _json_lines(out)] == ["still.here"]
    # Configuring again undoes the disabling for stdlib loggers too.
    configure_logging("info", "json", out)
    assert not stdlib_logger.disabled


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("info", "xml", io.StringIO())


def test_module_loggers_follow_reconfiguration_and_capture() -> None:
    import io

    from structlog.testing import capture_logs

    from ccpbx.pbx.log import configure_logging, get_logger

    log = get_logger("ccpbx.test")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    log.info("one", n=1)
    configure_logging("warning", "json", second)  # a new stream and level: the cached logger is rebuilt
    log.info("dropped")
    log.warning("two")
    with capture_logs() as captured:
        log.warning("captured", n=3)
    log.warning("three")
    assert '"event": "one"' in first.getvalue() and "two" not in first.getvalue()
    assert '"event": "two"' in second.getvalue() and '"event": "three"' in second.getvalue()
    assert "dropped" not in second.getvalue() and "captured" not in second.getvalue()
    assert captured == [{"n": 3, "event": "captured", "log_level": "warning"}]


def test_the_garbage_collector_is_tuned_for_a_server() -> None:
    import gc

    from ccpbx.pbx.gcpace import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# ---- the cheap line: the same text as structlog's own renderers ------------------------------------------------

from datetime import UTC, datetime  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ccpbx.pbx.log import PlainConsoleRenderer, UtcTimestamper, _json_line  # noqa: E402

# structlog's ConsoleRenderer gives "exception", "exc_info" and "stack" meanings of their own (a traceback's text:
# it fails on an int there), and both renderers leave lines with them to structlog (the test after this one)
_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.", min_size=1, max_size=12).filter(
    lambda key: key not in ("exception", "exc_info", "stack"))
_values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(),
                    st.tuples(st.integers(), st.text(max_size=5)), st.sampled_from(["in_use", "a b", "x=y", "'q'"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6), st.text(max_size=40),
       st.sampled_from(["debug", "info", "warning", "error", "critical", "exception"]),
       st.none() | st.text(max_size=15), st.none() | st.just("2026-12-06T11:55:45.554821Z"))
def test_plain_console_line_is_structlogs_line(fields: dict[str, object], event: str, level: str,
                                               logger: str | None, timestamp: str | None) -> None:
    event_dict: dict[str, object] = {**fields, "event": event, "level": level}
    if logger is not None:
        event_dict["logger"] = logger
    if timestamp is not None:
        event_dict["timestamp"] = timestamp
    ours = PlainConsoleRenderer()(None, "info", dict(event_dict))
    assert ours == structlog.dev.ConsoleRenderer(colors=False)(None, "info", dict(event_dict))


def test_plain_console_line_leaves_exceptions_to_structlog() -> None:
    try:
        raise RuntimeError("kaput")
    except RuntimeError as exc:
        event_dict = {"event": "sip.handler.failed", "level": "error", "exc_info": exc}
        line = PlainConsoleRenderer()(None, "error", dict(event_dict))
    assert "RuntimeError: kaput" in line and line.startswith("[error    ] sip.handler.failed")


def test_timestamps_are_iso_utc_with_microseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = UtcTimestamper()
    before = datetime.now(UTC)
    text = str(stamp(None, "info", {})["timestamp"])
    after = datetime.now(UTC)
    assert len(text) == len("2026-12-06T11:55:45.554821Z") and text.endswith("Z")
    assert before.replace(microsecond=0) <= datetime.fromisoformat(text) <= after
    # the date and time of day are formatted once per second: the next second gets its own
    now = [1_796_558_145_999_999_000]
    monkeypatch.setattr("ccpbx.pbx.log.time.time_ns", lambda: now[0])
    assert stamp(None, "info", {})["timestamp"] == "2026-12-06T11:55:45.999999Z"
    now[0] += 1_000
    assert stamp(None, "info", {})["timestamp"] == "2026-12-06T11:55:46.000000Z"
    now[0] = 1_796_558_145_000_001_000  # back in time (the clock was set): still right
    assert stamp(None, "info", {})["timestamp"] == "2026-12-06T11:55:45.000001Z"


class _Custom:
    def __structlog__(self) -> str:
        return "custom!"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values | st.just(_Custom()) | st.just({1, 2}) | st.lists(st.integers(), max_size=3),
                       max_size=6))
def test_json_line_is_structlogs_line(fields: dict[str, object]) -> None:
    assert _json_line(fields) == structlog.processors.JSONRenderer()(None, "info", dict(fields))


@pytest.mark.parametrize("method", ["debug", "info", "warn", "warning", "error", "exception", "critical"])
@pytest.mark.parametrize("stack_info", [None, False])
def test_event_pipeline_renders_what_the_processors_one_by_one_render(
        monkeypatch: pytest.MonkeyPatch, method: str, stack_info: bool | None) -> None:
    """Our events go through one processor that does the shared steps itself: its line is the stock steps'
    line, key order included (JSON keeps it), with bound context, a logger name and a stack_info flag."""
    from ccpbx.pbx.log import EventPipeline, UtcTimestamper, _add_logger_name, _json_line

    monkeypatch.setattr("time.time_ns", lambda: 1_765_000_000_123_456_789)
    renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    stock = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, _add_logger_name,
             UtcTimestamper(), structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info,
             renderer]
    fused = EventPipeline(UtcTimestamper(), [structlog.processors.format_exc_info, renderer])

    class Named:
        name = "ccpbx.test"

    structlog.contextvars.bind_contextvars(call="c1", leg="l2")
    event = {"event": "call.started", "caller": "u0001", "leg": "mine"}
    if stack_info is not None:
        event["stack_info"] = stack_info
    expected: object = dict(event)
    for processor in stock:
        expected = processor(Named(), method, expected)  # type: ignore[arg-type]
    assert fused(Named(), method, dict(event)) == expected
    assert '"call":"c1"' in str(expected).replace(" ", "") and '"leg":"mine"' in str(expected).replace(" ", "")


def test_event_pipeline_adds_a_stack_when_asked() -> None:
    from ccpbx.pbx.log import EventPipeline, UtcTimestamper

    fused = EventPipeline(UtcTimestamper(), [])
    out = fused(None, "info", {"event": "x", "stack_info": True})
    assert "stack_info" not in out and "test_event_pipeline_adds_a_stack_when_asked" in out["stack"]


def _lines(path: Path) -> list[str]:
    return [line.split("] ", 1)[1].split()[0] for line in path.read_text().splitlines()]


async def test_a_loop_iterations_lines_reach_a_file_together_at_the_next_and_in_order(tmp_path: Path) -> None:
    """Into an OS file the lines an iteration logs wait for the next iteration (one write for all); a stdlib
    record, a warning, a thread without a loop and flush_logs() write what waits at once, ahead of their own."""
    import asyncio
    import threading

    from ccpbx.pbx.log import flush_logs

    path = tmp_path / "server.log"
    with path.open("w") as out:
        configure_logging("info", "console", out)
        log = get_logger("ccpbx.test")
        log.info("first")
        log.info("second")
        assert _lines(path) == []  # the iteration is not over
        await asyncio.sleep(0)
        assert _lines(path) == ["first", "second"]
        log.info("third")
        logging.getLogger("lib").warning("stdlib")  # its handler flushes: what waits goes first
        assert _lines(path) == ["first", "second", "third", "stdlib"]
        log.info("fourth")
        thread = threading.Thread(target=lambda: log.info("from.thread"))
        thread.start()
        thread.join()
        assert _lines(path)[-2:] == ["fourth", "from.thread"]
        log.info("fifth")
        flush_logs()
        assert _lines(path)[-1] == "fifth"
        log.info("waits")
        log.warning("at.once")  # a warning is not left for the loop to turn (a server may stop or hang next)
        assert _lines(path)[-2:] == ["waits", "at.once"]
        log.info("sixth")
        await asyncio.sleep(0)
        assert _lines(path) == ["first", "second", "third", "stdlib", "fourth", "from.thread", "fifth", "waits",
                                "at.once", "sixth"]


def test_without_a_loop_and_into_memory_each_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tool.log"
    with path.open("w") as out:
        configure_logging("info", "console", out)
        get_logger("ccpbx.test").info("at.once")
        assert _lines(path) == ["at.once"]
    memory = io.StringIO()
    configure_logging("info", "console", memory)
    get_logger("ccpbx.test").info("in.memory")
    assert "in.memory" in memory.getvalue()
