"""The ``ccpbx`` command: run the server and administer extensions and configuration.

::

    ccpbx [--data-dir DIR] [--config FILE] COMMAND
    ccpbx serve [--host HOST] [--sip-port PORT] [--rtp-ports LO-HI]
    ccpbx ext add EXT [--password PW] [--name NAME]
    ccpbx ext list | ext remove EXT | ext passwd EXT [--password PW]
    ccpbx config check | config default

Exit codes: 0 success, 1 failure (such as a duplicate or missing extension), 2 bad usage or argument
(including an invalid extension name or a short password), 3 bad configuration file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import click

from ccpbx.pbx.config import Config, ConfigError, load_config
from ccpbx.pbx.store import Store, StoreError
from ccpbx.pbx.users import UserError, validate_extension, validate_password

__all__ = ["CONFIG_FILE_NAME", "DATABASE_FILE_NAME", "EXIT_CONFIG", "default_data_dir", "main"]

CONFIG_FILE_NAME = "ccpbx.toml"
DATABASE_FILE_NAME = "ccpbx.sqlite3"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3

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


_OVERRIDE_OPTIONS = {"[sip] host": "--host", "[sip] port": "--sip-port", "[rtp] port_min": "--rtp-ports",
                     "[rtp] port_max": "--rtp-ports"}


@main.command()
@click.option("--host", help="Address to listen on (overrides [sip] host).")
@click.option("--sip-port", type=click.IntRange(0, 65535),
              help="SIP port (overrides [sip] port; 0 picks a free one, printed at start).")
@click.option("--rtp-ports", type=_PortRange(), help="RTP port range LO-HI (overrides [rtp]).")
@click.pass_obj
def serve(settings: _Settings, host: str | None, sip_port: int | None, rtp_ports: tuple[int, int] | None) -> None:
    """Run the PBX until interrupted."""
    lo, hi = rtp_ports if rtp_ports is not None else (None, None)
    try:
        config = settings.config.with_overrides(
            sip_host=host, sip_port=sip_port, rtp_port_min=lo, rtp_port_max=hi
        )
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=f"'{_OVERRIDE_OPTIONS.get(exc.key, exc.key)}'") from None
    data_dir = settings.data_dir
    config = config.with_overrides(server_data_dir=data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(f"cannot create data directory {data_dir}: {exc.strerror or exc}") from None
    try:
        from ccpbx.pbx.app import serve as run_server
    except ImportError as exc:
        if exc.name != "ccpbx.pbx.app":
            raise
        raise _Failure("this build of ccpbx has no server (ccpbx.pbx.app is missing)") from None
    raise SystemExit(run_server(config, data_dir))


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
    """List extensions (never passwords)."""
    extensions = settings.with_store(lambda store: store.list_extensions())
    if not extensions:
        click.echo("no extensions", err=True)
        return
    width = max(len("EXT"), *(len(e.ext) for e in extensions))
    click.echo(f"{'EXT':<{width}}  NAME")
    for e in extensions:
        click.echo(f"{e.ext:<{width}}  {e.name}".rstrip())
    realm = settings.config.sip.realm
    stale = [e.ext for e in extensions if e.realm != realm]
    if stale:
        click.echo(
            f"warning: the password of {', '.join(stale)} was set for another realm than {realm!r}; "
            "these extensions cannot register until `ccpbx ext passwd` sets it again",
            err=True,
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


# -- config ----------------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check the configuration or print the default one."""


@config_group.command("check")
@click.pass_obj
def config_check(settings: _Settings) -> None:
    """Validate the configuration file and print the effective configuration."""
    config = settings.config
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
