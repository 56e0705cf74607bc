"""The ``ccpbx`` command, driven through click's CliRunner with temporary data directories."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import sys
import threading
import time
import tomllib
import types
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ccpbx.pbx as ccpbx_pbx
from ccpbx.cli.main import EXIT_CONFIG, default_data_dir, main
from ccpbx.pbx.cdr import CSV_COLUMNS, CallRecord, Disposition, HangupSide, LegRecord, csv_fields
from ccpbx.pbx.config import Config, load_config
from ccpbx.pbx.store import Extension, ExtensionFeatures, Store, digest_ha1

SHIPPED = Path(__file__).resolve().parents[1] / "pbx" / "default_config.toml"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run(args: Sequence[str], *, env: dict[str, str | None] | None = None, data_dir: Path | None = None,
        input: str | None = None) -> Result:
    base: dict[str, str | None] = {"CCPBX_DATA_DIR": None, "CCPBX_CONFIG": None}
    base.update(env or {})
    prefix = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return CliRunner().invoke(main, [*prefix, *args], env=base, input=input)


def extensions(data_dir: Path) -> list[Extension]:
    async def read() -> list[Extension]:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            return await store.list_extensions()

    return asyncio.run(read())


# -- ext -------------------------------------------------------------------------------------------------


def test_ext_add_list_passwd_remove(data_dir: Path) -> None:
    result = run(["ext", "add", "1001", "--password", "secret-one", "--name", "Front Desk"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "added extension 1001" in result.output
    assert run(["ext", "add", "alice", "--password", "secret-two"], data_dir=data_dir).exit_code == 0

    result = run(["ext", "list"], data_dir=data_dir)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["EXT", "DND", "CALL-WAITING", "FORWARD", "NAME"]  # NAME last: it may contain spaces
    assert lines[1].split() == ["1001", "off", "on", "-", "Front", "Desk"]
    assert lines[2].split() == ["alice", "off", "on", "-"]
    assert "secret" not in result.output

    (stored, _) = extensions(data_dir)
    assert stored.ha1_md5 == digest_ha1("MD5", "1001", "ccpbx", "secret-one")

    result = run(["ext", "passwd", "1001", "--password", "new-secret"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    (stored, _) = extensions(data_dir)
    assert stored.ha1_sha256 == digest_ha1("SHA-256", "1001", "ccpbx", "new-secret")

    result = run(["ext", "remove", "1001"], data_dir=data_dir)
    assert result.exit_code == 0
    assert [e.ext for e in extensions(data_dir)] == ["alice"]


def test_ext_add_prompts_for_a_hidden_password(data_dir: Path) -> None:
    result = run(["ext", "add", "bob"], data_dir=data_dir, input="hunter2hunter2\nhunter2hunter2\n")
    assert result.exit_code == 0, result.output
    assert "hunter2hunter2" not in result.output  # hidden input is not echoed
    (stored,) = extensions(data_dir)
    assert stored.ha1_md5 == digest_ha1("MD5", "bob", "ccpbx", "hunter2hunter2")


def test_ext_add_prompt_must_match(data_dir: Path) -> None:
    result = run(["ext", "add", "bob"], data_dir=data_dir, input="hunter2hunter2\nsomething-else\n")
    assert result.exit_code != 0
    assert not (data_dir / "ccpbx.sqlite3").exists() or extensions(data_dir) == []


def test_ext_list_when_empty(data_dir: Path) -> None:
    result = run(["ext", "list"], data_dir=data_dir)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no extensions" in result.stderr


def test_duplicate_extension_fails(data_dir: Path) -> None:
    assert run(["ext", "add", "1001", "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    result = run(["ext", "add", "1001", "--password", "secret-two"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "extension '1001' already exists" in result.stderr
    (stored,) = extensions(data_dir)
    assert stored.ha1_md5 == digest_ha1("MD5", "1001", "ccpbx", "secret-one")


@pytest.mark.parametrize("command", [["remove", "404"], ["passwd", "404", "--password", "secret-one"]])
def test_missing_extension_fails(data_dir: Path, command: list[str]) -> None:
    result = run(["ext", *command], data_dir=data_dir)
    assert result.exit_code == 1
    assert "extension '404' does not exist" in result.stderr


@pytest.mark.parametrize(("name", "fragment"), [("a b", "a space"), ("bob@pbx", "'@'"), ("sip:x", "':'")])
def test_invalid_extension_name_fails(data_dir: Path, name: str, fragment: str) -> None:
    result = run(["ext", "add", name, "--password", "secret-one"], data_dir=data_dir)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert "Invalid value for 'EXT'" in result.stderr


@pytest.mark.parametrize("command", [["add", "1001"], ["passwd", "1001"]])
def test_short_password_fails(data_dir: Path, command: list[str]) -> None:
    if command[0] == "passwd":
        assert run(["ext", "add", "1001", "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    result = run(["ext", *command, "--password", "short"], data_dir=data_dir)
    assert result.exit_code == 2
    assert "at least 8 characters" in result.stderr


def test_ext_list_warns_about_a_changed_realm(data_dir: Path, tmp_path: Path) -> None:
    assert run(["ext", "add", "1001", "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    config = tmp_path / "other.toml"
    config.write_text('[sip]\nrealm = "office"\n')
    result = run(["--config", str(config), "ext", "list"], data_dir=data_dir)
    assert result.exit_code == 0
    assert "another realm" in result.stderr and "1001" in result.stderr


def test_ext_uses_the_configured_realm(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "ccpbx.toml").write_text('[sip]\nrealm = "office"\n')
    assert run(["ext", "add", "1001", "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    (stored,) = extensions(data_dir)
    assert (stored.realm, stored.ha1_md5) == ("office", digest_ha1("MD5", "1001", "office", "secret-one"))


# -- data directory and config resolution ----------------------------------------------------------------


def test_data_dir_from_the_environment(data_dir: Path) -> None:
    result = run(["ext", "add", "1001", "--password", "secret-one"], env={"CCPBX_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert (data_dir / "ccpbx.sqlite3").is_file()


def test_the_flag_wins_over_the_environment(tmp_path: Path, data_dir: Path) -> None:
    other = tmp_path / "other"
    result = run(["ext", "add", "1001", "--password", "secret-one"], env={"CCPBX_DATA_DIR": str(other)},
                 data_dir=data_dir)
    assert result.exit_code == 0
    assert (data_dir / "ccpbx.sqlite3").is_file()
    assert not other.exists()


def test_default_data_dir_follows_xdg(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    result = run(["ext", "add", "1001", "--password", "secret-one"], env={"XDG_DATA_HOME": str(xdg)})
    assert result.exit_code == 0, result.output
    assert (xdg / "ccpbx" / "ccpbx.sqlite3").is_file()
    assert default_data_dir({"XDG_DATA_HOME": "relative/ignored"}) == Path.home() / ".local/share/ccpbx"
    assert default_data_dir({}) == Path.home() / ".local/share/ccpbx"


def test_config_file_data_dir_is_used_when_no_flag(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "ccpbx.toml"
    config.parent.mkdir()
    config.write_text('[server]\ndata_dir = "../from-config"\n')
    result = run(["ext", "add", "1001", "--password", "secret-one"], env={"CCPBX_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-config" / "ccpbx.sqlite3").is_file()


@pytest.mark.parametrize("how", ["flag", "env", "data-dir"])
def test_bad_config_is_reported_with_file_line_and_key(tmp_path: Path, data_dir: Path, how: str) -> None:
    data_dir.mkdir(parents=True)
    config = data_dir / "ccpbx.toml" if how == "data-dir" else tmp_path / "bad.toml"
    config.write_text('[sip]\n\nport = "abc"\n[rtp]\nport_mni = 10000\n')
    args = ["--config", str(config)] if how == "flag" else []
    env = {"CCPBX_CONFIG": str(config)} if how == "env" else {}
    result = run([*args, "ext", "list"], env=env, data_dir=data_dir)
    assert result.exit_code == EXIT_CONFIG
    assert f'{config}:3: [sip] port: must be an integer between 0 and 65535, got "abc"' in result.stderr
    assert f'{config}:5: [rtp] port_mni: unknown key; did you mean "port_min"?' in result.stderr


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = run(["--config", str(tmp_path / "nope.toml"), "config", "check"])
    assert result.exit_code == EXIT_CONFIG
    assert "nope.toml: cannot read" in result.stderr


# -- config ----------------------------------------------------------------------------------------------


def test_config_check_prints_the_effective_config(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "ccpbx.toml"
    config.write_text('[sip]\nport = 5070\n[auth]\nalgorithms = ["MD5"]\n')
    result = run(["--config", str(config), "config", "check"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert f"# configuration: {config} (valid)" in result.stdout
    assert f"# data directory: {data_dir.absolute()}" in result.stdout
    parsed = tomllib.loads(result.stdout)
    assert parsed["sip"]["port"] == 5070
    assert parsed["auth"]["algorithms"] == ["MD5"]
    assert parsed["rtp"] == {"port_min": 10000, "port_max": 20000, "timeout": 30, "workers": "auto"}


def test_config_check_with_defaults(data_dir: Path) -> None:
    result = run(["config", "check"], data_dir=data_dir)
    assert result.exit_code == 0
    assert "built-in defaults" in result.stdout
    assert tomllib.loads(result.stdout)["sip"]["port"] == 5060


def test_config_default_prints_the_shipped_file(tmp_path: Path) -> None:
    result = run(["config", "default"])
    assert result.exit_code == 0
    assert result.stdout == SHIPPED.read_text()
    written = tmp_path / "ccpbx.toml"
    written.write_text(result.stdout)
    assert load_config(written) == Config()


def test_version() -> None:
    result = run(["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("ccpbx, version ")


# -- serve -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--rtp-ports", "10001-20000"], "must be even"),
        (["--rtp-ports", "20000-10000"], "below the highest"),
        (["--rtp-ports", "10000-10000"], "below the highest"),
        (["--rtp-ports", "10000"], "not a port range"),
        (["--rtp-ports", "a-b"], "not a port range"),
        (["--rtp-ports", "-10-20"], "not a port range"),
        (["--rtp-ports", "10000-70000"], "between 1 and 65535"),
        (["--sip-port", "-1"], "--sip-port"),
        (["--sip-port", "abc"], "--sip-port"),
        (["--host", "not a host"], "must be an IP address or a host name"),
        (["--media-workers", "65"], "--media-workers"),
        (["--media-workers", "many"], 'from 0 to 64 or "auto"'),
        (["--media-workers", "-1"], "--media-workers"),
        (["--sip-workers", "9"], 'from 0 to 8 or "auto"'),
        (["--sip-workers", "some"], 'from 0 to 8 or "auto"'),
    ],
)
def test_serve_rejects_bad_options(data_dir: Path, option: list[str], fragment: str) -> None:
    result = run(["serve", *option], data_dir=data_dir)
    assert result.exit_code == 2
    assert fragment in result.stderr


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Config, Path]]:
    calls: list[tuple[Config, Path]] = []

    def serve(config: Config, data_dir: Path) -> int:
        calls.append((config, data_dir))
        return 7

    module: Any = types.ModuleType("ccpbx.pbx.app")
    module.serve = serve
    monkeypatch.setitem(sys.modules, "ccpbx.pbx.app", module)
    # `from ccpbx.pbx import app` reads the package's attribute first: set once an earlier test imported the
    # real module (any simulated-network test), so it is replaced too
    monkeypatch.setattr(ccpbx_pbx, "app", module, raising=False)
    return calls


def test_serve_passes_the_overridden_config_to_the_server(data_dir: Path, fake_app: list[tuple[Config, Path]]) -> None:
    result = run(["serve", "--host", "127.0.0.1", "--sip-port", "5099", "--rtp-ports", "30000-30100",
                  "--media-workers", "2"], data_dir=data_dir)
    assert result.exit_code == 7, result.output
    ((config, given_dir),) = fake_app
    assert given_dir == data_dir.absolute()
    assert given_dir.is_dir()
    assert (config.sip.host, config.sip.port) == ("127.0.0.1", 5099)
    assert (config.rtp.port_min, config.rtp.port_max) == (30000, 30100)
    assert config.rtp.workers == 2
    assert config.server.data_dir == data_dir.absolute()
    assert config.sip.realm == "ccpbx"


def test_serve_takes_auto_media_workers(data_dir: Path, fake_app: list[tuple[Config, Path]]) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "ccpbx.toml").write_text("[rtp]\nworkers = 3\n")
    assert run(["serve", "--media-workers", "AUTO"], data_dir=data_dir).exit_code == 7
    assert run(["serve", "--media-workers", "0"], data_dir=data_dir).exit_code == 7
    assert run(["serve"], data_dir=data_dir).exit_code == 7
    assert [config.rtp.workers for config, _ in fake_app] == ["auto", 0, 3]


def test_serve_takes_auto_sip_workers(data_dir: Path, fake_app: list[tuple[Config, Path]]) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "ccpbx.toml").write_text('[sip]\nworkers = "auto"\n')
    assert run(["serve"], data_dir=data_dir).exit_code == 7
    assert run(["serve", "--sip-workers", "2"], data_dir=data_dir).exit_code == 7
    assert run(["serve", "--sip-workers", "Auto"], data_dir=data_dir).exit_code == 7
    assert [config.sip.workers for config, _ in fake_app] == ["auto", 2, "auto"]


def test_serve_without_options_uses_the_config_file(data_dir: Path, fake_app: list[tuple[Config, Path]]) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "ccpbx.toml").write_text("[sip]\nport = 5088\n[rtp]\nport_min = 40000\nport_max = 40010\n")
    assert run(["serve"], data_dir=data_dir).exit_code == 7
    ((config, _),) = fake_app
    assert (config.sip.port, config.rtp.port_min, config.rtp.port_max) == (5088, 40000, 40010)


def test_serve_option_checked_against_the_file(data_dir: Path, fake_app: list[tuple[Config, Path]]) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "ccpbx.toml").write_text("[rtp]\nport_min = 40000\nport_max = 40010\n")
    assert run(["serve", "--rtp-ports", "50000-50100"], data_dir=data_dir).exit_code == 7
    assert fake_app[0][0].rtp.port_min == 50000


def test_serve_without_a_server_module_fails_cleanly(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ccpbx.pbx.app", None)  # makes the import fail
    monkeypatch.delattr(ccpbx_pbx, "app", raising=False)  # ...even after another test imported it
    result = run(["serve"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "no server" in result.stderr


# -- ext forward / dnd -----------------------------------------------------------------------------------


def features(data_dir: Path, ext: str) -> ExtensionFeatures:
    async def read() -> ExtensionFeatures:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            return await store.get_features(ext)

    return asyncio.run(read())


@pytest.fixture
def two_extensions(data_dir: Path) -> Path:
    for ext in ("1001", "1002"):
        assert run(["ext", "add", ext, "--password", "secret-one"], data_dir=data_dir).exit_code == 0
    return data_dir


def test_ext_forward_sets_changes_and_clears(two_extensions: Path) -> None:
    data_dir = two_extensions
    result = run(["ext", "forward", "1001", "--busy", "1002", "--no-answer", "sip:vm@pbx", "--after", "15"],
                 data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "busy 1002" in result.stdout and "no answer sip:vm@pbx after 15 s" in result.stdout
    assert features(data_dir, "1001") == ExtensionFeatures("1001", forward_busy="1002",
                                                           forward_noanswer="sip:vm@pbx", noanswer_seconds=15)

    result = run(["ext", "forward", "1001", "--always", "+4930123456", "--busy", ""], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert features(data_dir, "1001") == ExtensionFeatures("1001", forward_always="+4930123456",
                                                           forward_noanswer="sip:vm@pbx", noanswer_seconds=15)

    shown = run(["ext", "forward", "1001"], data_dir=data_dir)  # no options: show, change nothing
    assert shown.exit_code == 0
    assert shown.stdout.strip() == ("forwarding of extension 1001: always +4930123456; busy off; "
                                    "no answer sip:vm@pbx after 15 s")

    listed = run(["ext", "list"], data_dir=data_dir).stdout.splitlines()
    assert listed[1].split() == ["1001", "off", "on", "always=+4930123456,no-answer=sip:vm@pbx/15s"]
    assert listed[2].split() == ["1002", "off", "on", "-"]

    assert run(["ext", "forward", "1001", "--off"], data_dir=data_dir).exit_code == 0
    assert features(data_dir, "1001") == ExtensionFeatures("1001", noanswer_seconds=15)


def test_ext_dnd_on_and_off(two_extensions: Path) -> None:
    data_dir = two_extensions
    assert run(["ext", "forward", "1002", "--always", "1001"], data_dir=data_dir).exit_code == 0
    result = run(["ext", "dnd", "1002", "on"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "do not disturb on for extension 1002" in result.stdout
    assert features(data_dir, "1002") == ExtensionFeatures("1002", dnd=True, forward_always="1001")
    assert run(["ext", "list"], data_dir=data_dir).stdout.splitlines()[2].split() == ["1002", "on", "on", "always=1001"]
    assert run(["ext", "dnd", "1002", "OFF"], data_dir=data_dir).exit_code == 0
    assert features(data_dir, "1002") == ExtensionFeatures("1002", forward_always="1001")


def test_ext_call_waiting_off_and_on(two_extensions: Path) -> None:
    data_dir = two_extensions
    result = run(["ext", "call-waiting", "1002", "off"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "call waiting off for extension 1002" in result.stdout
    assert features(data_dir, "1002") == ExtensionFeatures("1002", call_waiting=False)
    assert run(["ext", "list"], data_dir=data_dir).stdout.splitlines()[2].split() == ["1002", "off", "off", "-"]
    assert run(["ext", "call-waiting", "1002", "ON"], data_dir=data_dir).exit_code == 0
    assert features(data_dir, "1002") == ExtensionFeatures("1002")


@pytest.mark.parametrize("command", [["forward", "404", "--always", "1001"], ["forward", "404"], ["dnd", "404", "on"],
                                     ["call-waiting", "404", "off"]])
def test_features_of_a_missing_extension_fail(data_dir: Path, command: list[str]) -> None:
    result = run(["ext", *command], data_dir=data_dir)
    assert result.exit_code == 1
    assert "extension '404' does not exist" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["forward", "1001", "--off", "--busy", "1002"], "--off cannot be combined"),
        (["forward", "1001", "--always", "10 02"], "not a target"),
        (["forward", "1001", "--always", "1001"], "to itself"),
        (["forward", "1001", "--after", "0"], "--after"),
        (["dnd", "1001", "maybe"], "maybe"),
        (["call-waiting", "1001", "maybe"], "maybe"),
    ],
)
def test_bad_feature_arguments_are_usage_errors(two_extensions: Path, args: list[str], fragment: str) -> None:
    result = run(["ext", *args], data_dir=two_extensions)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert features(two_extensions, "1001") == ExtensionFeatures("1001")


# -- cdr -------------------------------------------------------------------------------------------------


def save_records(data_dir: Path, records: Sequence[CallRecord]) -> None:
    async def write() -> None:
        async with await Store.open(data_dir / "ccpbx.sqlite3") as store:
            for record in records:
                await store.upsert_cdr(record.to_row())

    asyncio.run(write())


@pytest.fixture
def call_records(data_dir: Path) -> list[CallRecord]:
    now = time.time()
    answered = CallRecord(
        call_id="c-answered", sip_call_id="s1@pc33", caller="1001", caller_name="Desk", callee="1002",
        destination="extension:1002", start=now - 3 * 3600, answer=now - 3 * 3600 + 5, end=now - 3 * 3600 + 70,
        disposition=Disposition.ANSWERED, hangup_side=HangupSide.CALLER, hangup_status=200,
        legs=(LegRecord("caller", "s1@pc33", "1001", now - 3 * 3600),),
    )
    busy = CallRecord(
        call_id="c-busy", sip_call_id="s2@pc33", caller="1003", caller_name="", callee="600",
        destination="group:sales", start=now - 1800, end=now - 1790, disposition=Disposition.BUSY,
        hangup_side=HangupSide.CALLEE, hangup_status=486, transfers=("c-answered",), parent_call_id="c-answered",
    )
    ringing = CallRecord.new("s3@pc33", "+4930123", "1002", now - 60, destination="extension:1002")
    records = [answered, busy, ringing]
    save_records(data_dir, records)
    return records


def test_cdr_list_table(data_dir: Path, call_records: list[CallRecord]) -> None:
    result = run(["cdr", "list"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["START", "CALLER", "CALLEE", "DESTINATION", "DISPOSITION", "DURATION", "BILLSEC",
                                "HANGUP"]
    answered = call_records[0]
    local = datetime.fromtimestamp(answered.start).strftime("%Y-%m-%d %H:%M:%S").split()
    assert [line.split()[2] for line in lines[1:]] == ["+4930123", "1003", "1001"]  # newest first
    assert lines[3].split() == [*local, "1001", "1002", "extension:1002", "answered", "0:01:10", "0:01:05", "caller"]
    assert lines[2].split()[2:] == ["1003", "600", "group:sales", "busy", "0:00:10", "-", "callee"]
    assert lines[1].split()[2:] == ["+4930123", "1002", "extension:1002", "incomplete", "-", "-", "-"]


def test_cdr_list_filters(data_dir: Path, call_records: list[CallRecord]) -> None:
    def listed(*args: str) -> list[str]:
        result = run(["cdr", "list", "--json", *args], data_dir=data_dir)
        assert result.exit_code == 0, result.output
        return [r["call_id"] for r in json.loads(result.stdout)]

    ringing_id = call_records[2].call_id
    assert listed() == [ringing_id, "c-busy", "c-answered"]
    assert listed("--limit", "1") == [ringing_id]
    limited = run(["cdr", "list", "--limit", "2"], data_dir=data_dir)
    assert len(limited.stdout.splitlines()) == 3
    assert "showing the newest 2 of 3 call records" in limited.stderr
    assert "showing" not in run(["cdr", "list", "--limit", "3"], data_dir=data_dir).stderr
    assert listed("--ext", "1002") == [ringing_id, "c-answered"]
    assert listed("--ext", "1003") == ["c-busy"]
    assert listed("--since", "1h") == [ringing_id, "c-busy"]
    assert listed("--since", "45m", "--until", "10m") == ["c-busy"]
    assert listed("--since", "2d", "--until", "2h") == ["c-answered"]
    iso = datetime.fromtimestamp(call_records[1].start - 1).isoformat(timespec="seconds")
    assert listed("--until", iso) == ["c-answered"]
    assert listed("--since", "2000-01-01", "--until", "2000-01-02") == []


def test_cdr_list_json_has_every_field(data_dir: Path, call_records: list[CallRecord]) -> None:
    result = run(["cdr", "list", "--json", "--ext", "1003"], data_dir=data_dir)
    (record,) = json.loads(result.stdout)
    busy = call_records[1]
    assert record == busy.to_json()
    assert (record["duration"], record["billsec"], record["transfers"]) == (10.0, 0.0, ["c-answered"])


def test_cdr_list_when_empty(data_dir: Path) -> None:
    result = run(["cdr", "list"], data_dir=data_dir)
    assert result.exit_code == 0
    assert result.stdout == "" and "no call records" in result.stderr
    assert json.loads(run(["cdr", "list", "--json"], data_dir=data_dir).stdout) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "yesterday"], "'yesterday' is not a date"),
        (["--until", "2026-13-01"], "is not a date"),
        (["--since", "5y"], "is not a date"),
        (["--since", "1h", "--until", "2h"], "must be before --until"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_cdr_list_bad_arguments(data_dir: Path, args: list[str], fragment: str) -> None:
    result = run(["cdr", "list", *args], data_dir=data_dir)
    assert result.exit_code == 2
    assert fragment in result.stderr


def test_cdr_export_to_stdout(data_dir: Path, call_records: list[CallRecord]) -> None:
    result = run(["cdr", "export"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [tuple(r) for r in rows] == [CSV_COLUMNS] * 3
    assert [r["call_id"] for r in rows] == ["c-answered", "c-busy", call_records[2].call_id]  # oldest first
    assert [tuple(r.values()) for r in rows] == [csv_fields(record) for record in call_records]
    assert result.stderr == ""


def test_cdr_export_to_a_file_with_filters(data_dir: Path, call_records: list[CallRecord], tmp_path: Path) -> None:
    target = tmp_path / "exports" / "out.csv"
    target.parent.mkdir()
    result = run(["cdr", "export", "--output", str(target), "--ext", "1002", "--since", "1d"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "exported 2 call records" in result.stderr
    with target.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["c-answered", call_records[2].call_id]
    assert list(target.parent.iterdir()) == [target]  # no partial file left


def test_large_cdr_export_shows_progress(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ccpbx.cli.main.EXPORT_PROGRESS_MIN_ROWS", 100)
    monkeypatch.setattr("ccpbx.cli.main.EXPORT_PROGRESS_STEP_ROWS", 7)
    save_records(data_dir, [CallRecord.new(f"s{i}", "1001", "1002", 1_790_000_000.0 + i) for i in range(150)])
    target = tmp_path / "big.csv"
    result = run(["cdr", "export", "-o", str(target)], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "exporting call records" in result.stderr
    assert "exported 150 call records" in result.stderr
    assert len(target.read_text().splitlines()) == 151


def test_cdr_export_to_an_unwritable_place_fails(data_dir: Path, call_records: list[CallRecord],
                                                 tmp_path: Path) -> None:
    result = run(["cdr", "export", "--output", str(tmp_path / "missing" / "out.csv")], data_dir=data_dir)
    assert result.exit_code == 1
    assert "cannot write" in result.stderr


def test_a_failing_export_reports_the_output_and_leaves_no_file(
    data_dir: Path, call_records: list[CallRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_full(*args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ccpbx.cli.main.write_csv", disk_full)
    target = tmp_path / "exports" / "out.csv"
    target.parent.mkdir()
    result = run(["cdr", "export", "-o", str(target)], data_dir=data_dir)
    assert result.exit_code == 1
    assert f"cannot write {target}: No space left on device" in result.stderr
    assert list(target.parent.iterdir()) == []


def test_config_check_rejects_a_destination_nothing_serves(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "ccpbx.toml"
    config.write_text('[[dialplan.rule]]\nmatch = "700"\ndestination = "queue:nosuch"\n')
    result = run(["--config", str(config), "config", "check"], data_dir=data_dir)
    assert result.exit_code == 3, result.output
    assert f"{config}:3" in result.output and "queue" in result.output


# -- show ------------------------------------------------------------------------------------------------


@pytest.fixture
def live_admin(data_dir: Path) -> Iterator[Any]:
    """An admin API over a fake live view, served from a thread, with its files in ``data_dir``."""
    from ccpbx.pbx.admin import AdminServer, write_state
    from tests.pbx.test_admin import FakeLiveView, _call, _leg

    live = FakeLiveView(
        call_list=[_call("0123456789abcdef", "2001", _leg("caller", "2001"), _leg("callee", "extension:2002"))])
    data_dir.mkdir(parents=True)
    loop = asyncio.new_event_loop()
    admin = AdminServer(live, token="cli-test-token")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(admin.start(), loop).result(10)
        write_state(data_dir, url, "cli-test-token")
        yield live
    finally:
        asyncio.run_coroutine_threadsafe(admin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_show_without_a_server_exits_1(data_dir: Path) -> None:
    for what in ("calls", "registrations", "devices", "status"):
        result = run(["show", what], data_dir=data_dir)
        assert result.exit_code == 1, result.output
        assert f"no running ccpbx found in {data_dir.absolute()} (admin.json missing)" in result.output


def test_show_with_a_stale_admin_json_exits_1(data_dir: Path) -> None:
    from ccpbx.pbx.admin import write_state

    data_dir.mkdir(parents=True)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_state(data_dir, f"http://127.0.0.1:{port}", "token")
    result = run(["show", "calls"], data_dir=data_dir)
    assert result.exit_code == 1
    assert f"ccpbx at http://127.0.0.1:{port}" in result.output and "does not answer" in result.output


def test_show_with_a_wrong_token_exits_1(data_dir: Path, live_admin: Any) -> None:
    (data_dir / "admin.token").write_text("not-the-token\n")
    result = run(["show", "devices"], data_dir=data_dir)
    assert result.exit_code == 1
    assert "refused the token" in result.output


def test_show_calls_table_and_json(data_dir: Path, live_admin: Any) -> None:
    result = run(["show", "calls"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["CALL", "CALLER", "DIALLED", "DESTINATION", "STATE", "STARTED", "DURATION"]
    assert lines[1].split()[:5] == ["01234567", "2001", "2002", "extension:2002", "answered"]
    assert lines[1].endswith("0:00:12")
    legs = lines[lines.index("") + 1:]
    assert legs[0].split()[:2] == ["CALL", "LEG"]
    assert [line.split()[1:4] for line in legs[1:]] == [["caller", "2001", "confirmed"],
                                                      ["callee", "extension:2002", "confirmed"]]
    assert lines[0].index("CALLER") == lines[1].index("2001")  # aligned columns

    result = run(["show", "calls", "--json"], data_dir=data_dir)
    assert result.exit_code == 0
    assert json.loads(result.output)[0]["id"] == "0123456789abcdef"

    live_admin.call_list.clear()
    result = run(["show", "calls"], data_dir=data_dir)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no active calls\n")


def test_show_registrations_and_devices(data_dir: Path, live_admin: Any) -> None:
    from ccpbx.pbx.admin import DeviceState, DeviceView, RegistrationView

    live_admin.registration_list = [RegistrationView("2002", "<sip:2002@127.0.0.1:5070>", "udp", "127.0.0.1:5070",
                                                     290, "SIPp 3.6")]
    live_admin.device_list = [DeviceView("2001", DeviceState.IN_USE, 2), DeviceView("alice", DeviceState.IDLE, 0)]
    result = run(["show", "registrations"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split() == ["2002", "<sip:2002@127.0.0.1:5070>", "udp", "127.0.0.1:5070",
                                                     "290s", "SIPp", "3.6"]
    result = run(["show", "devices"], data_dir=data_dir)
    assert result.output.splitlines() == ["EXT    STATE   CALLS", "2001   in_use  2", "alice  idle    0"]
    result = run(["show", "status"], data_dir=data_dir)
    assert "calls_active:" in result.output and "uptime:           0:00:42" in result.output
