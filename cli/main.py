"""The ``ccpbx`` command: run the server and administer extensions and configuration.

::

    ccpbx [--data-dir DIR] [--config FILE] COMMAND
    ccpbx serve [--host HOST] [--sip-port PORT] [--rtp-ports LO-HI]
    ccpbx ext add EXT [--password PW] [--name NAME]
    ccpbx ext list | ext remove EXT | ext passwd EXT [--password PW]
    ccpbx ext forward EXT [--always NUMBER] [--busy NUMBER] [--no-answer NUMBER] [--after SECONDS] [--off]
    ccpbx ext dnd EXT on|off
    ccpbx cdr list [--since DATE] [--until DATE] [--ext EXT] [--limit N] [--json]
    ccpbx cdr export [--output FILE|-] [--since DATE] [--until DATE] [--ext EXT]
    ccpbx config check | config default
    ccpbx show calls|registrations|devices|status [--json]
    ccpbx schedule show [NAME] [--at INSTANT]
    ccpbx queue log [--since DATE] [--queue Q] [--limit N] [--json]
    ccpbx queue show [--watch [SECONDS]] [--json]
    ccpbx agent login|unpause EXT [--queue Q] | agent logout|pause EXT [--queue Q] [--reason R]

Exit codes: 0 success, 1 failure (such as a duplicate or missing extension), 2 bad usage or argument
(including an invalid extension name or a short password), 3 bad configuration file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from ccpbx.pbx.cdr import CallRecord, iter_records, list_records, write_csv
from ccpbx.pbx.config import MAX_SIP_WORKERS, Config, ConfigError, load_config
from ccpbx.pbx.store import (
    NOANSWER_SECONDS_MAX,
    Extension,
    ExtensionFeatures,
    ExtensionNotFoundError,
    QueueLogRow,
    Store,
    StoreError,
    VoicemailRow,
)
from ccpbx.pbx.users import UserError, validate_extension, validate_password

__all__ = ["CONFIG_FILE_NAME", "DATABASE_FILE_NAME", "EXIT_CONFIG", "default_data_dir", "main"]

CONFIG_FILE_NAME = "ccpbx.toml"
DATABASE_FILE_NAME = "ccpbx.sqlite3"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
CDR_LIST_DEFAULT_LIMIT = 50
# A file export shows a progress bar from this many records on (below that it is over before one is read).
EXPORT_PROGRESS_MIN_ROWS = 10_000
EXPORT_PROGRESS_STEP_ROWS = 1000
ADMIN_TIMEOUT_S = 5.0

_T = TypeVar("_T")


def default_data_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/ccpbx``, or ``~/.local/share/ccpbx`` (XDG Base Directory spec: relative = unset)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "ccpbx"
    return Path.home() / ".local" / "share" / "ccpbx"


class _Failure(click.ClickException):
    """An error message for the user (exit code 1)."""

    exit_code = EXIT_FAILURE


class _ConfigFailure(_Failure):
    """A bad configuration file: every problem found, one per line (exit code 3)."""

    exit_code = EXIT_CONFIG

    def __init__(self, exc: ConfigError) -> None:
        super().__init__("\n".join(str(e) for e in exc.errors))


@dataclass
class _Settings:
    """What the global options say; the config and data directory are resolved on first use."""

    data_dir_option: Path | None
    config_option: Path | None
    _config: Config | None = field(default=None, init=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            path = self.config_option
            if path is None:
                candidate = (self.data_dir_option or default_data_dir()) / CONFIG_FILE_NAME
                path = candidate if candidate.is_file() else None
            try:
                self._config = load_config(path)
            except ConfigError as exc:
                raise _ConfigFailure(exc) from None
        return self._config

    @property
    def data_dir(self) -> Path:
        """--data-dir / CCPBX_DATA_DIR, else ``[server] data_dir``, else the XDG default."""
        if self.data_dir_option is not None:
            return self.data_dir_option.expanduser().absolute()
        configured = self.config.server.data_dir
        return (configured if configured is not None else default_data_dir()).absolute()

    @property
    def database(self) -> Path:
        return self.data_dir / DATABASE_FILE_NAME

    def with_store(self, action: Callable[[Store], Awaitable[_T]]) -> _T:
        """Open the database, run ``action`` on it, close it; a storage error becomes a CLI error."""
        self.config  # noqa: B018 -- a bad config file fails every command that touches data, not some

        async def run() -> _T:
            async with await Store.open(self.database) as store:
                return await action(store)

        try:
            return asyncio.run(run())
        except StoreError as exc:
            raise _Failure(str(exc)) from None
        except sqlite3.Error as exc:  # e.g. "database is locked" past the busy timeout
            raise _Failure(f"database {self.database}: {exc}") from None
        except OSError as exc:
            raise _Failure(f"cannot use data directory {self.data_dir}: {exc.strerror or exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CCPBX_DATA_DIR",
    help="Data directory (database, recordings). Default: $XDG_DATA_HOME/ccpbx or ~/.local/share/ccpbx.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CCPBX_CONFIG",
    help=f"Configuration file. Default: <data-dir>/{CONFIG_FILE_NAME} if it exists, else built-in defaults.",
)
@click.version_option(package_name="ccpbx", prog_name="ccpbx")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, config_file: Path | None) -> None:
    """ccpbx: a pure-Python IP-PBX with a contact-center engine."""
    ctx.obj = _Settings(data_dir, config_file)


# -- serve -----------------------------------------------------------------------------------------------


class _PortRange(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.2
    """``LO-HI``: an even lowest port below the highest, both within 1-65535 (RTP even, RTCP odd)."""

    name = "LO-HI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        lo_text, sep, hi_text = str(value).partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text)
        except ValueError:
            lo = hi = -1
        if not sep or lo < 0:
            self.fail(f"{value!r} is not a port range like 10000-20000", param, ctx)
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            self.fail(f"ports must be between 1 and 65535, got {value!r}", param, ctx)
        if lo % 2:
            self.fail(f"the lowest port must be even (RTP even, RTCP odd), got {lo}", param, ctx)
        if lo >= hi:
            self.fail(f"the lowest port must be below the highest, got {value!r}", param, ctx)
        return lo, hi


class _Workers(click.ParamType):
    """A number of worker processes from 0 to ``maximum``, or "auto"."""

    name = "N|auto"

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return text
        if not text.isdigit() or int(text) > self.maximum:
            self.fail(f'expected a number of workers from 0 to {self.maximum} or "auto", got {value!r}', param, ctx)
        return int(text)


_OVERRIDE_OPTIONS = {"[sip] host": "--host", "[sip] port": "--sip-port", "[rtp] port_min": "--rtp-ports",
                     "[rtp] port_max": "--rtp-ports", "[rtp] workers": "--media-workers",
                     "[sip] workers": "--sip-workers"}


@main.command()
@click.option("--host", help="Address to listen on (overrides [sip] host).")
@click.option("--sip-port", type=click.IntRange(0, 65535),
              help="SIP port (overrides [sip] port; 0 picks a free one, printed at start).")
@click.option("--rtp-ports", type=_PortRange(), help="RTP port range LO-HI (overrides [rtp]).")
@click.option("--media-workers", type=_Workers(64),
              help='Media worker processes (overrides [rtp] workers): "auto" one per core, 0 media in this process.')
@click.option("--sip-workers", type=_Workers(MAX_SIP_WORKERS), default=None,
              help="SIP worker processes sharing the UDP port: REGISTER and INVITE challenges, REGISTER refreshes "
                   '(overrides [sip] workers; "auto": one on two cores or more).')
@click.pass_obj
def serve(settings: _Settings, host: str | None, sip_port: int | None, rtp_ports: tuple[int, int] | None,
          media_workers: int | str | None, sip_workers: int | str | None) -> None:
    """Run the PBX until interrupted."""
    lo, hi = rtp_ports if rtp_ports is not None else (None, None)
    try:
        config = settings.config.with_overrides(
            sip_host=host, sip_port=sip_port, rtp_port_min=lo, rtp_port_max=hi, rtp_workers=media_workers,
            sip_workers=sip_workers,
        )
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=f"'{_OVERRIDE_OPTIONS.get(exc.key, exc.key)}'") from None
    data_dir = settings.data_dir
    config = config.with_overrides(server_data_dir=data_dir)
    _check_destinations(config)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(f"cannot create data directory {data_dir}: {exc.strerror or exc}") from None
    try:
        from ccpbx.pbx import app as server_app
    except ImportError as exc:
        if exc.name != "ccpbx.pbx.app":
            raise
        raise _Failure("this build of ccpbx has no server (ccpbx.pbx.app is missing)") from None
    # a reason the user can fix (the port is taken, no such address): one line, not a traceback
    serve_error: type[Exception] = getattr(server_app, "ServeError", _NeverRaisedError)
    try:
        code = server_app.serve(config, data_dir)
    except serve_error as exc:
        raise _Failure(str(exc)) from None
    raise SystemExit(code)


class _NeverRaisedError(Exception):
    """Stands for an error type a stand-in server module does not define."""


def _check_destinations(config: Config) -> None:
    """Every destination the file names must reach a handler the server registers (``ivr:nosuch`` fails)."""
    from ccpbx.pbx.wiring import check_destinations

    try:
        check_destinations(config)
    except ConfigError as exc:
        raise _ConfigFailure(exc) from None


# -- ext -------------------------------------------------------------------------------------------------


@main.group()
def ext() -> None:
    """Manage extensions (users): add, list, remove, change passwords."""


def _checked_extension(extension: str) -> str:
    try:
        return validate_extension(extension)
    except UserError as exc:
        raise click.BadParameter(str(exc), param_hint="'EXT'") from None


def _checked_password(password: str) -> str:
    try:
        return validate_password(password)
    except UserError as exc:
        raise click.BadParameter(str(exc), param_hint="'--password'") from None


_password_option = click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The SIP password (at least 8 characters); prompted for, hidden, when omitted.",
)


@ext.command("add")
@click.argument("extension", metavar="EXT")
@_password_option
@click.option("--name", default="", help="Display name.")
@click.pass_obj
def ext_add(settings: _Settings, extension: str, password: str, name: str) -> None:
    """Add extension EXT (digits or a name such as alice)."""
    extension = _checked_extension(extension)
    password = _checked_password(password)
    realm = settings.config.sip.realm
    settings.with_store(lambda store: store.add_extension(extension, password, name, realm))
    click.echo(f"added extension {extension}")


@ext.command("list")
@click.pass_obj
def ext_list(settings: _Settings) -> None:
    """List extensions with their call features (never passwords)."""

    async def read(store: Store) -> tuple[list[Extension], dict[str, ExtensionFeatures]]:
        return await store.list_extensions(), await store.list_features()

    extensions, features = settings.with_store(read)
    if not extensions:
        click.echo("no extensions", err=True)
        return
    rows = [
        (e.ext, _on_off(f.dnd), _on_off(f.call_waiting), _forward_summary(f))
        for e in extensions
        for f in (features.get(e.ext, ExtensionFeatures(e.ext)),)
    ]
    titles = ("EXT", "DND", "CALL-WAITING", "FORWARD")
    widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(titles)]
    # NAME comes last: it is the only column that may contain spaces.
    click.echo("  ".join(f"{t:<{w}}" for t, w in zip(titles, widths, strict=True)) + "  NAME")
    for row, e in zip(rows, extensions, strict=True):
        click.echo(("  ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=True)) + f"  {e.name}").rstrip())
    realm = settings.config.sip.realm
    stale = [e.ext for e in extensions if e.realm != realm]
    if stale:
        click.echo(
            f"warning: the password of {', '.join(stale)} was set for another realm than {realm!r}; "
            "these extensions cannot register until `ccpbx ext passwd` sets it again",
            err=True,
        )


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _forward_summary(features: ExtensionFeatures) -> str:
    """``always=1002,busy=1003,no-answer=1004/20s`` (no spaces: a column of ``ext list``), ``-`` for none."""
    parts = []
    if features.forward_always is not None:
        parts.append(f"always={features.forward_always}")
    if features.forward_busy is not None:
        parts.append(f"busy={features.forward_busy}")
    if features.forward_noanswer is not None:
        parts.append(f"no-answer={features.forward_noanswer}/{features.noanswer_seconds}s")
    return ",".join(parts) or "-"


def _forward_description(features: ExtensionFeatures) -> str:
    """The forwarding of an extension in words, for ``ext forward``'s reply."""

    def target(value: str | None) -> str:
        return "off" if value is None else value

    noanswer = target(features.forward_noanswer)
    return (
        f"forwarding of extension {features.ext}: always {target(features.forward_always)}; "
        f"busy {target(features.forward_busy)}; no answer {noanswer} after {features.noanswer_seconds} s"
    )


@ext.command("remove")
@click.argument("extension", metavar="EXT")
@click.pass_obj
def ext_remove(settings: _Settings, extension: str) -> None:
    """Remove extension EXT and its registrations."""
    settings.with_store(lambda store: store.remove_extension(extension))
    click.echo(f"removed extension {extension}")


@ext.command("passwd")
@click.argument("extension", metavar="EXT")
@_password_option
@click.pass_obj
def ext_passwd(settings: _Settings, extension: str, password: str) -> None:
    """Set the password of extension EXT."""
    password = _checked_password(password)
    realm = settings.config.sip.realm
    settings.with_store(lambda store: store.set_password(extension, password, realm))
    click.echo(f"password of extension {extension} changed")


def _checked_target(extension: str, value: str | None, option: str) -> str | None:
    """A forward target as given: ``None`` leaves it unchanged, ``""`` turns it off (returned as ``""``)."""
    if value is None or value == "":
        return value
    try:
        ExtensionFeatures(extension, forward_always=value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a target to forward to (an extension, a number or a SIP URI, no spaces)",
            param_hint=f"'{option}'",
        ) from None
    if value == extension:
        raise click.BadParameter(f"cannot forward extension {extension} to itself", param_hint=f"'{option}'")
    return value


async def _existing(store: Store, extension: str) -> ExtensionFeatures:
    if await store.get_extension(extension) is None:
        raise ExtensionNotFoundError(extension)
    return await store.get_features(extension)


@ext.command("forward")
@click.argument("extension", metavar="EXT")
@click.option("--always", metavar="NUMBER", help="Forward every call to NUMBER.")
@click.option("--busy", metavar="NUMBER", help="Forward calls to NUMBER while EXT is busy.")
@click.option("--no-answer", "no_answer", metavar="NUMBER", help="Forward calls EXT does not answer to NUMBER.")
@click.option("--after", type=click.IntRange(1, NOANSWER_SECONDS_MAX), metavar="SECONDS",
              help="Ring this long before --no-answer applies (default 20).")
@click.option("--off", is_flag=True, help="Turn every forward off.")
@click.pass_obj
def ext_forward(settings: _Settings, extension: str, always: str | None, busy: str | None,
                no_answer: str | None, after: int | None, off: bool) -> None:
    """Set or show the call forwarding of extension EXT.

    Options not given are left as they are; an empty NUMBER ('') turns that one forward off. Without
    options, prints the current forwarding.
    """
    if off and (always is not None or busy is not None or no_answer is not None):
        raise click.UsageError("--off cannot be combined with --always, --busy or --no-answer")
    targets = {
        "forward_always": _checked_target(extension, always, "--always"),
        "forward_busy": _checked_target(extension, busy, "--busy"),
        "forward_noanswer": _checked_target(extension, no_answer, "--no-answer"),
    }

    async def apply(store: Store) -> ExtensionFeatures:
        features = await _existing(store, extension)
        changes: dict[str, Any] = {name: value or None for name, value in targets.items() if value is not None}
        if off:
            changes = dict.fromkeys(targets, None)
        if after is not None:
            changes["noanswer_seconds"] = after
        if changes:
            features = dataclasses.replace(features, **changes)
            await store.set_features(features)
        return features

    click.echo(_forward_description(settings.with_store(apply)))


@ext.command("dnd")
@click.argument("extension", metavar="EXT")
@click.argument("state", type=click.Choice(["on", "off"], case_sensitive=False), metavar="on|off")
@click.pass_obj
def ext_dnd(settings: _Settings, extension: str, state: str) -> None:
    """Turn do-not-disturb of extension EXT on or off (calls to it are refused while on)."""

    async def apply(store: Store) -> None:
        features = await _existing(store, extension)
        await store.set_features(dataclasses.replace(features, dnd=state.lower() == "on"))

    settings.with_store(apply)
    click.echo(f"do not disturb {state.lower()} for extension {extension}")


@ext.command("call-waiting")
@click.argument("extension", metavar="EXT")
@click.argument("state", type=click.Choice(["on", "off"], case_sensitive=False), metavar="on|off")
@click.pass_obj
def ext_call_waiting(settings: _Settings, extension: str, state: str) -> None:
    """Turn call waiting of extension EXT on or off (off: a call while EXT is on a call gets busy)."""

    async def apply(store: Store) -> None:
        features = await _existing(store, extension)
        await store.set_features(dataclasses.replace(features, call_waiting=state.lower() == "on"))

    settings.with_store(apply)
    click.echo(f"call waiting {state.lower()} for extension {extension}")


# -- cdr -------------------------------------------------------------------------------------------------


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class _When(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.2
    """A point in time, as UNIX seconds: an ISO 8601 date or date and time (local unless it has an offset),
    or a time ago such as ``30m``, ``1h``, ``2d`` (s, m, h, d, w)."""

    name = "DATE"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        relative = _RELATIVE.fullmatch(text)
        if relative is not None:
            return self._clock() - int(relative[1]) * _UNIT_SECONDS[relative[2].lower()]
        try:
            return datetime.fromisoformat(text).timestamp()  # a naive time is local time
        except (ValueError, OverflowError, OSError):
            self.fail(
                f"{text!r} is not a date (2026-12-01), a date and time (2026-12-01T10:00) "
                "or a time ago (30m, 1h, 2d)",
                param,
                ctx,
            )


_since_option = click.option("--since", type=_When(), help="Calls that started at or after DATE.")
_until_option = click.option("--until", type=_When(), help="Calls that started before DATE.")
_ext_option = click.option("--ext", "extension", metavar="EXT",
                           help="Calls placed by, dialled to or routed to extension EXT.")


def _check_range(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since >= until:
        raise click.BadParameter("must be before --until", param_hint="'--since'")


@main.group()
def cdr() -> None:
    """Call detail records: list them, export them as CSV."""


def _local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(timedelta(seconds=round(seconds)))


def _cdr_table_row(record: CallRecord) -> tuple[str, ...]:
    return (
        _local_time(record.start), record.caller or "-", record.callee or "-", record.destination or "-",
        record.disposition.value, _hms(record.duration), _hms(record.billsec) if record.answer is not None else "-",
        record.hangup_side.value if record.hangup_side is not None else "-",
    )


_CDR_TITLES = ("START", "CALLER", "CALLEE", "DESTINATION", "DISPOSITION", "DURATION", "BILLSEC", "HANGUP")


@cdr.command("list")
@_since_option
@_until_option
@_ext_option
@click.option("--limit", type=click.IntRange(min=1), default=CDR_LIST_DEFAULT_LIMIT, show_default=True,
              help="Show at most this many calls (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the records, every field.")
@click.pass_obj
def cdr_list(settings: _Settings, since: float | None, until: float | None, extension: str | None, limit: int,
             as_json: bool) -> None:
    """List call records, newest first; times are local."""
    _check_range(since, until)

    async def read(store: Store) -> tuple[list[CallRecord], int]:
        records = await list_records(store, since=since, until=until, extension=extension, limit=limit)
        more = len(records) == limit
        total = await store.count_cdrs(since=since, until=until, extension=extension) if more else len(records)
        return records, total

    records, total = settings.with_store(read)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    elif not records:
        click.echo("no call records", err=True)
    else:
        rows = [_cdr_table_row(r) for r in records]
        widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(_CDR_TITLES)]
        for row in (_CDR_TITLES, *rows):
            click.echo("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())
    if total > len(records):
        click.echo(f"showing the newest {len(records)} of {total} call records; see --limit", err=True)


@cdr.command("export")
@click.option("--output", "-o", default="-", show_default=True, metavar="FILE|-",
              type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="The CSV file to write ('-': standard output). Written whole or not at all.")
@_since_option
@_until_option
@_ext_option
@click.pass_obj
def cdr_export(settings: _Settings, output: str, since: float | None, until: float | None,
               extension: str | None) -> None:
    """Export call records as CSV.

    Oldest first, times in UTC (ISO 8601), durations in seconds; read from the database in chunks, so any
    number of records can be exported.
    """
    _check_range(since, until)
    to_stdout = output == "-"

    async def export(store: Store, out: TextIO) -> int:
        try:
            return await write_rows(store, out)
        except OSError as exc:  # the output, not the database (with_store would blame the data directory)
            raise _Failure(f"cannot write {output}: {exc.strerror or exc}") from None

    async def write_rows(store: Store, out: TextIO) -> int:
        records = iter_records(store, since=since, until=until, extension=extension)
        total = 0 if to_stdout else await store.count_cdrs(since=since, until=until, extension=extension)
        if total < EXPORT_PROGRESS_MIN_ROWS:
            return await write_csv(records, out)
        with click.progressbar(length=total, label="exporting call records",
                               file=sys.stderr) as bar:

            def advance(count: int) -> None:
                if count % EXPORT_PROGRESS_STEP_ROWS == 0:
                    bar.update(EXPORT_PROGRESS_STEP_ROWS)

            count = await write_csv(records, out, progress=advance)
            bar.update(count % EXPORT_PROGRESS_STEP_ROWS)
            return count

    if to_stdout:
        settings.with_store(lambda store: export(store, sys.stdout))
        return
    path = Path(output)
    # Write beside the target and rename at the end, so a failed export never leaves half a file behind.
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with partial.open("w", newline="", encoding="utf-8") as out:
            count = settings.with_store(lambda store: export(store, out))
        partial.replace(path)
    except OSError as exc:
        raise _Failure(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"exported {count} call records to {output}", err=True)


# -- config ----------------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check the configuration or print the default one."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def config_check(settings: _Settings, file: Path | None) -> None:
    """Validate the configuration FILE (default: --config, else the data directory's ccpbx.toml) and print
    the effective configuration; exit 3 naming file, line and key for each problem."""
    if file is not None:
        if not file.is_file():
            raise _Failure(f"{file}: no such file")
        settings = _Settings(settings.data_dir_option, file)
    config = settings.config
    _check_destinations(config)
    source = str(config.source) if config.source is not None else "built-in defaults"
    click.echo(f"# configuration: {source} (valid)")
    click.echo(f"# data directory: {settings.data_dir}")
    click.echo(config.to_toml(), nl=False)


def default_config_text() -> str:
    """The documented default configuration shipped with the package."""
    return resources.files("ccpbx.pbx").joinpath("default_config.toml").read_text(encoding="utf-8")


@config_group.command("default")
def config_default() -> None:
    """Print the default configuration file, every key documented."""
    click.echo(default_config_text(), nl=False)


# -- tls -------------------------------------------------------------------------------------------------


@main.group()
def tls() -> None:
    """Certificates for SIP over TLS."""


@tls.command("selfsigned")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for ccpbx.crt and ccpbx.key (default: <data-dir>/tls).")
@click.option("--host", "hosts", multiple=True,
              help="Name or address the certificate is for (repeatable; default: this machine's addresses).")
@click.option("--force", is_flag=True, help="Replace an existing certificate and key.")
@click.pass_obj
def tls_selfsigned(settings: _Settings, out_dir: Path | None, hosts: tuple[str, ...], force: bool) -> None:
    """Create a self-signed certificate and key for a first run of SIP over TLS, and print the [sip] lines
    that use them. Phones must be told to trust it (or not to verify the server)."""
    try:
        from ccpbx.pbx.tlscert import make_self_signed
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise _Failure("the Python package 'cryptography' is missing: pip install cryptography") from None
    from ccpbx.pbx.app import phone_addresses

    out_dir = out_dir or settings.data_dir / "tls"
    if not hosts:
        hosts = tuple(dict.fromkeys([*phone_addresses("0.0.0.0"), socket.gethostname(), "127.0.0.1"]))
    certificate, key = out_dir / "ccpbx.crt", out_dir / "ccpbx.key"
    existing = [p for p in (certificate, key) if p.exists()]
    if existing and not force:
        raise _Failure(f"{existing[0]} exists; pass --force to replace it")
    try:
        made = make_self_signed(hosts)
    except ValueError as exc:
        raise _Failure(f"cannot make a certificate for {', '.join(hosts)}: {exc}") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the key is never world-readable
        with os.fdopen(fd, "wb") as out:
            out.write(made.private_key_pem)
        certificate.write_bytes(made.certificate_pem)
    except OSError as exc:
        raise _Failure(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    click.echo(f"wrote {certificate} and {key} for {', '.join(hosts)}")
    click.echo(f"SHA-256 fingerprint {made.fingerprint_sha256}")
    click.echo("add to the [sip] section of the configuration:")
    click.echo('  transports = ["udp", "tcp", "tls"]')
    click.echo(f'  tls_certificate = "{certificate.resolve()}"')
    click.echo(f'  tls_private_key = "{key.resolve()}"')


# -- show: the live view of a running server ------------------------------------------------------------


@main.group()
def show() -> None:
    """What a running server is doing now (through its local admin API).

    The server writes its admin address to <data-dir>/admin.json and a token to <data-dir>/admin.token at
    each start; these commands read both, so run them as the user the server runs as, with its data directory.
    """


def _admin_get(settings: _Settings, path: str) -> Any:
    """GET ``path`` from the admin API of the server whose data directory this is; errors exit 1."""
    from ccpbx.pbx.admin import STATE_FILE_NAME, TOKEN_FILE_NAME, AdminStateError, read_state

    data_dir = settings.data_dir
    try:
        endpoint = read_state(data_dir)
    except AdminStateError as exc:
        raise _Failure(str(exc)) from None
    request = urllib.request.Request(endpoint.url + path, headers={
        "Authorization": f"Bearer {endpoint.token}", "Accept": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(request, timeout=ADMIN_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _Failure(f"ccpbx at {endpoint.url} refused the token in {data_dir / TOKEN_FILE_NAME}") from None
        raise _Failure(f"ccpbx at {endpoint.url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Failure(f"ccpbx at {endpoint.url} (from {data_dir / STATE_FILE_NAME}) does not answer: {reason}; "
                       "is it still running?") from None


def _echo_table(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(titles)]
    for row in (titles, *rows):
        click.echo("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())


def _iso_local(text: str | None) -> str:
    if not text:
        return "-"
    return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _count(value: object) -> str:
    return "-" if value is None else str(value)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON as it is.")


@show.command("calls")
@_json_option
@click.pass_obj
def show_calls(settings: _Settings, as_json: bool) -> None:
    """Active calls, then their legs with codec and RTP counters (received, sent, lost, jitter)."""
    calls = _admin_get(settings, "/api/calls")
    if as_json:
        click.echo(json.dumps(calls, indent=2))
        return
    if not calls:
        click.echo("no active calls", err=True)
        return
    _echo_table(("CALL", "CALLER", "DIALLED", "DESTINATION", "STATE", "STARTED", "DURATION"), [
        (c["id"][:8], c["caller"] or "-", c["dialled"] or "-", c["destination"] or "-", c["state"],
         _iso_local(c["started"]), _hms(c["duration"])) for c in calls])
    legs = []
    for c in calls:
        for leg in c["legs"]:
            rtp = leg["rtp"] or {}
            jitter = rtp.get("jitter_ms")
            state = leg["state"] + (" held" if leg["held"] else "")
            legs.append((c["id"][:8], leg["role"], leg["peer"] or "-", state, leg["codec"] or "-",
                         _count(rtp.get("packets_received")), _count(rtp.get("packets_sent")),
                         _count(rtp.get("lost")), "-" if jitter is None else f"{jitter:.1f}ms", leg["sip_call_id"]))
    if legs:
        click.echo()
        _echo_table(("CALL", "LEG", "PEER", "STATE", "CODEC", "RX", "TX", "LOST", "JITTER", "SIP CALL-ID"), legs)


@show.command("registrations")
@_json_option
@click.pass_obj
def show_registrations(settings: _Settings, as_json: bool) -> None:
    """Registered contacts: address-of-record, contact, where it registered from, seconds left."""
    registrations = _admin_get(settings, "/api/registrations")
    if as_json:
        click.echo(json.dumps(registrations, indent=2))
        return
    if not registrations:
        click.echo("no registrations", err=True)
        return
    # USER AGENT comes last: the only column that may contain spaces.
    _echo_table(("AOR", "CONTACT", "TRANSPORT", "SOURCE", "EXPIRES", "USER AGENT"), [
        (r["aor"], r["contact"], r["transport"], r["source"], f"{r['expires_in']}s", r["user_agent"])
        for r in registrations])


@show.command("devices")
@_json_option
@click.pass_obj
def show_devices(settings: _Settings, as_json: bool) -> None:
    """Every extension's device: idle, ringing, in_use, on_hold or unavailable, and its calls."""
    devices = _admin_get(settings, "/api/devices")
    if as_json:
        click.echo(json.dumps(devices, indent=2))
        return
    if not devices:
        click.echo("no extensions", err=True)
        return
    _echo_table(("EXT", "STATE", "CALLS"), [(d["extension"], d["state"], str(d["calls"])) for d in devices])


@show.command("status")
@_json_option
@click.pass_obj
def show_status(settings: _Settings, as_json: bool) -> None:
    """Version, uptime and counts of the running server."""
    status = _admin_get(settings, "/api/status")
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for key, value in status.items():
        click.echo(f"{key + ':':<18}{_hms(value) if key == 'uptime' else value}")


# -- schedule --------------------------------------------------------------------------------------------


@main.group("schedule")
def schedule_group() -> None:
    """Time conditions: the [[schedule]] tables of the configuration."""


def _parse_instant(text: str | None) -> datetime:
    from datetime import UTC

    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time such as 2026-12-24T17:30+01:00",
                                 param_hint="--at") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@schedule_group.command("show")
@click.argument("name", required=False)
@click.option("--at", "at_text", metavar="INSTANT",
              help="Evaluate at this ISO 8601 time (2026-12-24T17:30+01:00; no offset: UTC) instead of now.")
@click.pass_obj
def schedule_show(settings: _Settings, name: str | None, at_text: str | None) -> None:
    """Each schedule (or NAME): open or closed now, and when that next changes (in the schedule's zone)."""
    from ccpbx.pbx.schedules import Schedules

    at = _parse_instant(at_text)
    schedules = Schedules.from_tables(settings.config.schedule)
    if name is not None and name not in schedules:
        defined = ", ".join(schedules) or "none"
        raise _Failure(f"no schedule named {name!r} (schedules: {defined})")
    names = [name] if name is not None else list(schedules)
    if not names:
        click.echo("no schedules configured", err=True)
        return
    rows = []
    for each in names:
        schedule = schedules[each]
        is_open = schedule.is_open(at)
        change = schedule.next_change(at)
        upcoming = "-" if change is None else (
            f"{'closes' if is_open else 'opens'} {change.astimezone(schedule.zone):%Y-%m-%d %H:%M %Z}")
        rows.append((each, schedule.timezone, "open" if is_open else "closed", upcoming))
    _echo_table(("NAME", "TIMEZONE", "NOW", "NEXT CHANGE"), rows)


# -- trunks ----------------------------------------------------------------------------------------------


@main.group("trunk")
def trunk_group() -> None:
    """SIP providers and gateways: the [[trunk]] tables and their state in the running server."""


def _channels(used: int, limit: object) -> str:
    return f"{used}/{limit}" if limit is not None else str(used)


@trunk_group.command("list")
@_json_option
@click.pass_obj
def trunk_list(settings: _Settings, as_json: bool) -> None:
    """Each trunk of the running server: addresses, registration, reachability (OPTIONS), channels in use."""
    trunks = _admin_call(settings, "GET", "/api/trunks")
    if as_json:
        click.echo(json.dumps(trunks, indent=2))
        return
    if not trunks:
        click.echo("no trunks configured", err=True)
        return
    rows = []
    for t in trunks:
        registration = t["registration"] + (f" ({t['registration_detail']})" if t.get("registration_detail") else "")
        reach = t["reachability"] + (f" {t['rtt_ms']} ms" if t.get("rtt_ms") is not None else "")
        rows.append((t["name"], t["host"], ", ".join(t["addresses"]) or "-", registration, reach,
                     _channels(t["inbound"], t.get("max_inbound")), _channels(t["outbound"], t.get("max_outbound")),
                     str(t.get("max_channels") or "-"), "yes" if t["available"] else "no"))
    _echo_table(("NAME", "HOST", "ADDRESSES", "REGISTRATION", "OPTIONS", "IN", "OUT", "MAX", "AVAILABLE"), rows)


@trunk_group.command("profiles")
@click.pass_obj
def trunk_profiles(settings: _Settings) -> None:
    """The gateway/provider profiles a trunk can name: shipped ones and the file's [[profile]] tables."""
    rows = [(p.name, p.dtmf.value, p.prack.value, p.caller_id_header.value, p.did_from.value, p.number_format.value,
             ",".join(p.codecs), p.description) for p in settings.config.profiles().values()]
    _echo_table(("NAME", "DTMF", "100REL", "CALLER ID", "DID FROM", "NUMBERS", "CODECS", "DESCRIPTION"), rows)


# -- acd -------------------------------------------------------------------------------------------------
# Self-contained: the ACD's commands import only ccpbx.acd, lazily, so the rest of the CLI does not load it.


@main.group()
def acd() -> None:
    """The contact-center engine: simulate a staffed queue against Erlang C / Erlang A."""


@acd.command("simulate")
@click.option("--agents", type=click.IntRange(min=1), required=True, help="Agents logged in.")
@click.option("--arrivals-per-hour", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--aht", "aht_s", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Mean handle time, seconds.")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True)
@click.option("--patience", "patience_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean caller patience, seconds (exponential): adds abandonment and the Erlang A prediction.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sl-seconds", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Service-level threshold: answered within this many seconds.")
@click.option("--lognormal", is_flag=True, help="Log-normal handle times (same mean, CV 1) instead of exponential.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def acd_simulate(agents: int, arrivals_per_hour: float, aht_s: float, hours: float, patience_s: float | None,
                 seed: int, sl_seconds: float, lognormal: bool, as_json: bool) -> None:
    """Drive the real ACD engine with Poisson arrivals and print service level, ASA, occupancy and abandonment
    beside the Erlang C (and, with --patience, Erlang A) prediction for the same load."""
    from ccpbx.acd.erlang import erlang_a_prediction, erlang_c_prediction
    from ccpbx.acd.simulate import SimulationConfig, simulate

    config = SimulationConfig(agents=agents, arrivals_per_hour=arrivals_per_hour, aht_s=aht_s, hours=hours,
                              patience_s=patience_s, seed=seed, lognormal=lognormal, sl_seconds=sl_seconds)
    horizon_s = round(hours * 3600)
    with click.progressbar(length=horizon_s, label="simulating", file=sys.stderr) as bar:
        done = 0

        def progress(simulated_ms: int) -> None:
            nonlocal done
            bar.update(simulated_ms // 1000 - done)
            done = simulated_ms // 1000

        result = simulate(config, progress)
    keys = ("service_level", "asa_s", "occupancy", "abandon_rate")
    columns: dict[str, dict[str, float]] = {"simulated": {k: getattr(result, k) for k in keys}}
    columns["erlang_c"] = {k: getattr(erlang_c_prediction(agents, arrivals_per_hour, aht_s, sl_seconds), k)
                           for k in keys}
    if patience_s is not None:
        columns["erlang_a"] = {
            k: getattr(erlang_a_prediction(agents, arrivals_per_hour, aht_s, patience_s, sl_seconds), k)
            for k in keys}
    if as_json:
        click.echo(json.dumps(columns, indent=2))
        return
    erlangs = arrivals_per_hour * aht_s / 3600
    click.echo(f"{agents} agents, {arrivals_per_hour:g} arrivals/h, AHT {aht_s:g} s ({erlangs:.2f} erlangs), "
               f"{hours:g} h simulated, {result.arrivals} contacts counted")
    names = list(columns)
    click.echo(f"{'':<22}" + "".join(f"{n:>12}" for n in names))
    labels = {"service_level": f"service level ({sl_seconds:g} s)", "asa_s": "ASA (s)",
              "occupancy": "occupancy", "abandon_rate": "abandoned"}
    for k in keys:
        cells = "".join(f"{columns[n][k]:>12.1%}" if k != "asa_s" else f"{columns[n][k]:>12.1f}" for n in names)
        click.echo(f"{labels[k]:<22}{cells}")


# -- queue and agent: the queue log (read from SQLite) and the running ACD (through the admin API) ------------

QUEUE_LOG_DEFAULT_LIMIT = 100
QUEUE_WATCH_DEFAULT_S = 2.0
_AGENT_DONE = {"login": "logged in", "logout": "logged out", "pause": "paused", "unpause": "unpaused"}
_sleep = time.sleep  # tests replace it to end a --watch loop


def _admin_call(settings: _Settings, method: str, path: str, body: object = None) -> Any:
    """``method path`` on the running server's admin API; a refusal's ``{"error": ...}`` becomes the message of
    a failure (exit 1), as do a missing server and a refused token."""
    from ccpbx.pbx.admin import STATE_FILE_NAME, TOKEN_FILE_NAME, AdminStateError, read_state

    data_dir = settings.data_dir
    try:
        endpoint = read_state(data_dir)
    except AdminStateError as exc:
        raise _Failure(str(exc)) from None
    headers = {"Authorization": f"Bearer {endpoint.token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(endpoint.url + path, data=data, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(request, timeout=ADMIN_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _Failure(f"ccpbx at {endpoint.url} refused the token in {data_dir / TOKEN_FILE_NAME}") from None
        try:
            message = json.load(exc)["error"]
        except (OSError, ValueError, TypeError, KeyError):
            message = None
        if not isinstance(message, str):
            raise _Failure(f"ccpbx at {endpoint.url} answered {exc.code} {exc.reason}") from None
        if exc.code == 503:
            message += " (no [[queue]] in the running server's configuration)"
        raise _Failure(message) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Failure(f"ccpbx at {endpoint.url} (from {data_dir / STATE_FILE_NAME}) does not answer: {reason}; "
                       "is it still running?") from None


@main.group("security")
def security_group() -> None:
    """Banned addresses: who guessed passwords or was banned by hand (through the running server's admin API)."""


@security_group.command("bans")
@_json_option
@click.pass_obj
def security_bans(settings: _Settings, as_json: bool) -> None:
    """The addresses banned now: reason, failures, until when; then the packets dropped since the start."""
    answer = _admin_call(settings, "GET", "/api/bans")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    bans = answer.get("bans", [])
    if bans:
        _echo_table(("ADDRESS", "REASON", "FAILURES", "UNTIL", "LEFT"),
                    [(b["ip"], b["reason"], str(b.get("failures") or "-"), _iso_local(b.get("until")),
                      _hms(b.get("remaining"))) for b in bans])
    else:
        click.echo("no address is banned")
    click.echo(f"dropped since the start: {answer.get('dropped_banned', 0)} packets from banned addresses, "
               f"{answer.get('dropped_rate_limited', 0)} requests over the rate limit")


@security_group.command("ban")
@click.argument("ip", metavar="IP")
@click.option("--time", "seconds", type=click.IntRange(min=1), default=600, show_default=True,
              help="Seconds the ban lasts.")
@click.option("--reason", default="manual", show_default=True)
@click.pass_obj
def security_ban(settings: _Settings, ip: str, seconds: int, reason: str) -> None:
    """Ban IP now: its packets are dropped unanswered."""
    _admin_call(settings, "POST", "/api/bans", {"ip": ip, "seconds": seconds, "reason": reason})
    click.echo(f"{ip} banned for {seconds} s")


@security_group.command("unban")
@click.argument("ip", metavar="IP")
@click.pass_obj
def security_unban(settings: _Settings, ip: str) -> None:
    """Lift IP's ban (and forget its failures); exits 1 when it was not banned."""
    from urllib.parse import quote

    _admin_call(settings, "DELETE", f"/api/bans/{quote(ip, safe='')}")
    click.echo(f"{ip} unbanned")


@main.group("queue")
def queue_group() -> None:
    """Queues: the queue log (every queue and agent event) and live figures of the running server."""


def _seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}"


def _queue_log_detail(row: QueueLogRow) -> str:
    parts = [f"{name}={value}" for name, value in (("target", row.target), ("attempt", row.attempt))
             if value is not None]
    if row.ring_ms is not None:
        parts.append(f"ring={_seconds(row.ring_ms)}s")
    if row.reason:
        parts.append(f"reason={row.reason}")
    return " ".join(parts) or "-"


@queue_group.command("log")
@click.option("--since", type=_When(),
              help="Events at or after DATE: 2026-12-04T08:00 (local unless it has an offset), 2026-12-04, or a "
                   "time ago (30m, 1h, 2d).")
@click.option("--queue", "queue_name", metavar="Q", help="Events of queue Q only.")
@click.option("--limit", type=click.IntRange(min=1), default=QUEUE_LOG_DEFAULT_LIMIT, show_default=True,
              help="Show at most this many events (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the events, every field.")
@click.pass_obj
def queue_log(settings: _Settings, since: float | None, queue_name: str | None, limit: int, as_json: bool) -> None:
    """The queue log, oldest first: enter, offer, connect, complete, abandon, transfer, overflow, callbacks,
    agent log-ins, log-outs and pauses. Times are local; WAIT and TALK in seconds; POS is the place in the queue.

    Read from the database, so it works whether or not the server runs.
    """

    async def read(store: Store) -> list[QueueLogRow]:
        return await store.list_queue_log(since=since, queue=queue_name, limit=limit + 1, newest_first=True)

    rows = settings.with_store(read)
    more = len(rows) > limit
    rows = rows[:limit][::-1]
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
    elif not rows:
        click.echo("no queue events", err=True)
    else:
        # DETAIL comes last: a reason may contain spaces.
        _echo_table(("TIME", "QUEUE", "CALL", "AGENT", "EVENT", "WAIT", "TALK", "POS", "DETAIL"), [
            (_local_time(r.time), r.queue or "-", (r.call_id or "-")[:8], r.agent or "-", r.event,
             _seconds(r.wait_ms), _seconds(r.talk_ms), _count(r.position), _queue_log_detail(r)) for r in rows])
    if more:
        click.echo(f"showing the newest {limit} queue events; see --limit and --since", err=True)


def _percent(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1%}"


def _echo_queue_snapshot(snapshot: dict[str, Any]) -> None:
    queues = snapshot.get("queues") or []
    agents = snapshot.get("agents") or []
    since = snapshot.get("since")
    click.echo(f"queues at {datetime.now():%H:%M:%S}, counting since {_iso_local(since)}")
    if not queues:
        click.echo("no queues")
    else:
        rows = []
        for q in queues:
            by_state = " ".join(f"{state}:{n}" for state, n in sorted((q.get("agents") or {}).items()) if n) or "-"
            sl = "-" if q.get("service_level") is None else f"{_percent(q['service_level'])}<{q['service_level_s']}s"
            rows.append((q["name"] + ("" if q.get("open", True) else " (closed)"), str(q["waiting"]),
                         _hms(q["longest_wait_s"]) if q["waiting"] else "-", str(q["staffed"]), str(q["answered"]),
                         str(q["abandoned"]), sl, _hms(q.get("asa_s")), by_state))
        # AGENTS comes last: its cell has spaces.
        _echo_table(("QUEUE", "WAITING", "LONGEST", "STAFFED", "ANSWERED", "ABANDONED", "SL", "ASA", "AGENTS"),
                    rows)
    click.echo()
    if not agents:
        click.echo("no agents")
        return
    agent_rows = []
    for a in agents:
        device = "available" if a.get("device_available", True) else "unavailable"
        if not a.get("device_available", True) and a.get("device_reason"):
            device += f" ({a['device_reason']})"
        agent_rows.append((a["extension"], a["state"], _hms(a.get("time_in_state_s")), str(a.get("answered", "-")),
                     ",".join(a.get("queues") or []) or "-", a.get("pause_reason") or "-", device))
    _echo_table(("AGENT", "STATE", "IN STATE", "ANSWERED", "QUEUES", "PAUSE REASON", "DEVICE"), agent_rows)


@queue_group.command("show")
@click.option("--watch", type=click.FloatRange(min=0.1), is_flag=False, flag_value=QUEUE_WATCH_DEFAULT_S,
              default=None, metavar="[SECONDS]",
              help=f"Redraw every SECONDS (default {QUEUE_WATCH_DEFAULT_S:g}) until Ctrl-C.")
@_json_option
@click.pass_obj
def queue_show(settings: _Settings, watch: float | None, as_json: bool) -> None:
    """Live figures of the running server: per queue waiting, longest wait, staffed agents, answered,
    abandoned, service level (answered within the queue's time), average speed of answer, agents by state
    (counters since midnight); then every agent with its state, time in it, pause reason and device.

    With --watch and --json, one compact JSON snapshot per line.
    """
    try:
        while True:
            snapshot = _admin_call(settings, "GET", "/api/queues")
            if as_json:
                click.echo(json.dumps(snapshot, indent=None if watch else 2))
            else:
                if watch:
                    click.clear()
                _echo_queue_snapshot(snapshot)
            if watch is None:
                return
            _sleep(watch)
    except KeyboardInterrupt:
        return


@main.group("agent")
def agent_group() -> None:
    """Log queue agents in and out, pause and unpause them (through the running server's admin API)."""


def _agent_command(settings: _Settings, action: str, extension: str, queue_name: str | None,
                   reason: str | None = None) -> None:
    from urllib.parse import quote

    body = {key: value for key, value in (("queue", queue_name), ("reason", reason)) if value is not None}
    _admin_call(settings, "POST", f"/api/agents/{quote(extension, safe='')}/{action}", body)
    where = {"login": " to queue ", "logout": " of queue "}.get(action, " in queue ")
    click.echo(f"agent {extension} {_AGENT_DONE[action]}" + (where + queue_name if queue_name else "")
               + (f" (reason: {reason})" if reason else ""))


_agent_queue_option = click.option("--queue", "queue_name", metavar="Q",
                                   help="Queue Q only (default: every queue the agent serves).")
_agent_reason_option = click.option("--reason", metavar="R", help="Why (kept in the queue log).")


@agent_group.command("login")
@click.argument("extension", metavar="EXT")
@_agent_queue_option
@click.pass_obj
def agent_login(settings: _Settings, extension: str, queue_name: str | None) -> None:
    """Log agent EXT in: it is offered calls from now on."""
    _agent_command(settings, "login", extension, queue_name)


@agent_group.command("logout")
@click.argument("extension", metavar="EXT")
@_agent_queue_option
@_agent_reason_option
@click.pass_obj
def agent_logout(settings: _Settings, extension: str, queue_name: str | None, reason: str | None) -> None:
    """Log agent EXT out: calls ringing it are withdrawn, a call in progress goes on to its end."""
    _agent_command(settings, "logout", extension, queue_name, reason)


@agent_group.command("pause")
@click.argument("extension", metavar="EXT")
@_agent_queue_option
@_agent_reason_option
@click.pass_obj
def agent_pause(settings: _Settings, extension: str, queue_name: str | None, reason: str | None) -> None:
    """Pause agent EXT: logged in, but offered nothing until unpaused."""
    _agent_command(settings, "pause", extension, queue_name, reason)


@agent_group.command("unpause")
@click.argument("extension", metavar="EXT")
@_agent_queue_option
@click.pass_obj
def agent_unpause(settings: _Settings, extension: str, queue_name: str | None) -> None:
    """Unpause agent EXT: it is offered calls again."""
    _agent_command(settings, "unpause", extension, queue_name)


# ---- voicemail ---------------------------------------------------------------------------------------------------
@main.group()
def voicemail() -> None:
    """Voicemail boxes: list and export messages, set a box's PIN and e-mail address."""


async def _require_extension(store: Store, ext: str) -> None:
    if await store.get_extension(ext) is None:
        raise _Failure(f"no extension {ext!r} (its mailbox exists only with it)")


@voicemail.command("list")
@click.argument("ext")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the messages, every field.")
@click.pass_obj
def voicemail_list(settings: _Settings, ext: str, as_json: bool) -> None:
    """List EXT's messages, new first, oldest first within each folder; times are local."""

    async def read(store: Store) -> list[VoicemailRow]:
        await _require_extension(store, ext)
        rows = await store.list_voicemail(ext)
        return sorted(rows, key=lambda r: (r.folder != "new", r.received_at, r.id))

    rows = settings.with_store(read)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no messages in mailbox {ext}", err=True)
        return
    titles = ("ID", "FOLDER", "RECEIVED", "FROM", "LENGTH", "FILE")
    table = [(str(r.id), r.folder, _local_time(r.received_at),
              f"{r.caller_name} <{r.caller}>" if r.caller_name else (r.caller or "-"),
              f"{r.duration_s:.1f} s", r.path) for r in rows]
    widths = [max(len(t), *(len(row[i]) for row in table)) for i, t in enumerate(titles)]
    for row in (titles, *table):
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())


@voicemail.command("export")
@click.argument("ext")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory the WAV files and index.json are written to (created if needed).")
@click.pass_obj
def voicemail_export(settings: _Settings, ext: str, output: Path) -> None:
    """Copy EXT's messages as WAV files into a directory, with an index.json of who called when."""

    async def read(store: Store) -> list[VoicemailRow]:
        await _require_extension(store, ext)
        return await store.list_voicemail(ext)

    rows = settings.with_store(read)
    output.mkdir(parents=True, exist_ok=True)
    index = []
    missing = 0
    with click.progressbar(rows, label=f"exporting {len(rows)} message(s)", file=sys.stderr) as bar:
        for r in bar:
            source = Path(r.path)
            stamp = datetime.fromtimestamp(r.received_at).strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{r.id}-{''.join(c for c in r.caller if c.isalnum()) or 'unknown'}.wav"
            if not source.is_file():
                missing += 1
                continue
            shutil.copyfile(source, output / name)
            index.append({**dataclasses.asdict(r), "file": name})
    (output / "index.json").write_text(json.dumps(index, indent=2))
    click.echo(f"exported {len(index)} message(s) of mailbox {ext} to {output}")
    if missing:
        raise _Failure(f"{missing} message file(s) are missing from the data directory")


@voicemail.command("pin")
@click.argument("ext")
@click.option("--pin", prompt="New PIN", hide_input=True, confirmation_prompt=True,
              help="The new PIN (digits; asked without echo when not given).")
@click.pass_obj
def voicemail_pin(settings: _Settings, ext: str, pin: str) -> None:
    """Set EXT's mailbox PIN (stored only as a salted hash)."""
    from ccpbx.pbx.voicemail import hash_pin

    minimum = settings.config.voicemail.min_pin_digits
    if not pin.isdigit() or len(pin) < minimum:
        raise click.BadParameter(f"must be at least {minimum} digits", param_hint="'--pin'")

    async def write(store: Store) -> None:
        await _require_extension(store, ext)
        await store.update_voicebox(ext, pin_hash=hash_pin(pin))

    settings.with_store(write)
    click.echo(f"PIN of mailbox {ext} set")


@voicemail.command("email")
@click.argument("ext")
@click.argument("address")
@click.pass_obj
def voicemail_email(settings: _Settings, ext: str, address: str) -> None:
    """E-mail EXT's new messages to ADDRESS ("" stops it); needs [voicemail] smtp_host."""
    if address and ("@" not in address or any(c.isspace() for c in address)):
        raise click.BadParameter("is not an e-mail address", param_hint="'ADDRESS'")

    async def write(store: Store) -> None:
        await _require_extension(store, ext)
        await store.update_voicebox(ext, email=address or None)

    settings.with_store(write)
    if address:
        click.echo(f"new messages of mailbox {ext} go to {address}"
                   + ("" if settings.config.voicemail.smtp_host else " (once [voicemail] smtp_host is set)"))
    else:
        click.echo(f"mailbox {ext} sends no e-mail")
