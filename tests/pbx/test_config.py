"""Configuration loading: defaults, the shipped file, and errors that name file, line and key."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.config import (
    Config,
    ConfigError,
    DigestAlgorithm,
    LogFormat,
    LogLevel,
    TextValue,
    Transport,
    _KeyLines,
    load_config,
    parse_config,
)

SHIPPED = Path(__file__).resolve().parents[2] / "pbx" / "default_config.toml"


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ccpbx.toml")
    return info.value


# -- defaults and valid files ----------------------------------------------------------------------------


def test_no_file_gives_the_documented_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.server.data_dir is None
    assert config.server.log_level is LogLevel.INFO
    assert config.server.log_format is LogFormat.CONSOLE
    assert (config.sip.host, config.sip.port, config.sip.realm, config.sip.ipv6) == ("0.0.0.0", 5060, "ccpbx", False)
    assert config.sip.transports == (Transport.UDP, Transport.TCP)
    assert config.sip.domain is None
    assert config.sip.user_agent.startswith("ccpbx/")
    assert (config.registrar.min_expires, config.registrar.max_expires, config.registrar.default_expires) == (
        60, 3600, 3600,
    )
    assert config.auth.algorithms == (DigestAlgorithm.MD5,)
    assert (config.auth.nonce_ttl, str(config.auth.qop), config.auth.max_failures) == (300, "auth", 5)
    assert (config.rtp.port_min, config.rtp.port_max) == (10000, 20000)


def test_the_shipped_file_loads_to_the_defaults() -> None:
    config = load_config(SHIPPED)
    assert config == Config()
    assert config.source == SHIPPED


def _table_body(text: str, header: str) -> str:
    """The lines under the first real (not commented) ``header`` up to the next table header."""
    lines = text.splitlines()
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    return "\n" + "\n".join(lines[start:end]) + "\n"


def _assert_every_key_shown(text: str, header: str, name: str, cls: type) -> None:
    body = _table_body(text, header)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
        if isinstance(item, type) and dataclasses.is_dataclass(item) and not issubclass(item, TextValue):
            # an array of tables: [[name.key]] (a TextValue is a string, whatever its Python type)
            nested = f"[[{name}.{f.name}]]"  # none by default: a commented-out example table
            header = nested if nested in text.splitlines() else f"# {nested}"
            _assert_every_key_shown(text, header, f"{name}.{f.name}", item)
            continue
        assert f"\n{f.name} = " in body or f"\n# {f.name} = " in body, f"{header} {f.name} missing"


def test_the_shipped_file_shows_every_key() -> None:
    text = SHIPPED.read_text()
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if section.metadata.get("internal"):
            continue
        hint = hints[section.name]
        if typing.get_origin(hint) is tuple and not getattr(Config(), section.name):
            # none by default ([[conference]]): documented as a commented-out example table
            _assert_every_key_shown(text, f"# [[{section.name}]]", section.name, typing.get_args(hint)[0])
        elif typing.get_origin(hint) is tuple:
            _assert_every_key_shown(text, f"[[{section.name}]]", section.name, typing.get_args(hint)[0])
        else:
            _assert_every_key_shown(text, f"[{section.name}]", section.name, hint)


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text(
        """
        [server]
        data_dir = "data"            # relative to the file
        log_level = "DEBUG"          # enums are case-insensitive
        log_format = "json"
        [sip]
        host = "127.0.0.1"
        port = 5070
        transports = ["udp"]
        domain = "pbx.example.com"
        realm = "example"
        user_agent = "test-pbx/1"
        ipv6 = true
        [registrar]
        min_expires = 30
        max_expires = 7200
        default_expires = 600
        [auth]
        algorithms = ["md5"]
        nonce_ttl = 60
        qop = "auth"
        max_failures = 3
        [rtp]
        port_min = 30000
        port_max = 30010
        """
    )
    config = load_config(path)
    assert config.server.data_dir == tmp_path / "data"
    assert config.server.log_level is LogLevel.DEBUG
    assert config.server.log_format is LogFormat.JSON
    assert config.sip == dataclasses.replace(
        Config().sip, host="127.0.0.1", port=5070, transports=(Transport.UDP,), domain="pbx.example.com",
        realm="example", user_agent="test-pbx/1", ipv6=True,
    )
    assert (config.registrar.min_expires, config.registrar.max_expires, config.registrar.default_expires) == (
        30, 7200, 600,
    )
    assert config.auth.algorithms == (DigestAlgorithm.MD5,)
    assert (config.auth.nonce_ttl, config.auth.max_failures) == (60, 3)
    assert (config.rtp.port_min, config.rtp.port_max) == (30000, 30010)


def test_dotted_keys_and_inline_tables_load() -> None:
    config = parse_config('sip.port = 5080\nrtp = { port_min = 40000, port_max = 40100 }\n')
    assert config.sip.port == 5080
    assert (config.rtp.port_min, config.rtp.port_max) == (40000, 40100)


def test_an_empty_file_is_all_defaults() -> None:
    assert parse_config("# nothing\n") == Config()


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().sip.port = 1  # type: ignore[misc]


# -- errors ----------------------------------------------------------------------------------------------


def test_error_text_names_file_line_and_key() -> None:
    err = _error('[server]\nlog_level = "info"\n\n[sip]\nport = "abc"\n')
    assert (err.file, err.line, err.key) == ("ccpbx.toml", 5, "[sip] port")
    assert str(err) == 'ccpbx.toml:5: [sip] port: must be an integer between 0 and 65535, got "abc"'


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        # wrong types
        ('[sip]\nport = "abc"', 2, "[sip] port", 'must be an integer between 0 and 65535, got "abc"'),
        ("[sip]\nport = 5060.5", 2, "[sip] port", "got 5060.5"),
        ('[sip]\nipv6 = "yes"', 2, "[sip] ipv6", 'must be true or false, got "yes"'),
        ("[sip]\nrealm = 5", 2, "[sip] realm", "must be a string, got 5"),
        ('[sip]\ntransports = "udp"', 2, "[sip] transports", "must be an array"),
        ("[server]\nlog_format = true", 2, "[server] log_format", 'must be one of "console", "json", got true'),
        ("sip = 5", 1, "[sip]", "must be a table, got 5"),
        ("[server]\ndata_dir = 7", 2, "[server] data_dir", "must be a path"),
        # out of range / not allowed
        ("[sip]\nport = 70000", 2, "[sip] port", "between 0 and 65535, got 70000"),
        ("[sip]\nport = -1", 2, "[sip] port", "got -1"),
        ("[auth]\nnonce_ttl = 0", 2, "[auth] nonce_ttl", "got 0"),
        ('[server]\nlog_level = "loud"', 2, "[server] log_level", '"debug", "info"'),
        ('[auth]\nalgorithms = ["MD5", "SHA-512"]', 2, "[auth] algorithms[1]", 'got "SHA-512"'),
        ("[auth]\nalgorithms = []", 2, "[auth] algorithms", "at least one"),
        ('[auth]\nalgorithms = ["MD5", "md5"]', 2, "[auth] algorithms[1]", 'lists "MD5" more than once'),
        ('[auth]\nqop = "auth-int"', 2, "[auth] qop", 'must be one of "auth"'),
        ('[sip]\nrealm = ""', 2, "[sip] realm", "must not be empty"),
        ('[sip]\nrealm = "a\\"b"', 2, "[sip] realm", "must not contain quotes"),
        ('[sip]\nuser_agent = "x\\r\\ny"', 2, "[sip] user_agent", "control characters"),
        ('[sip]\nhost = "not a host"', 2, "[sip] host", 'must be an IP address or a host name, got "not a host"'),
        ('[sip]\ndomain = "a..b"', 2, "[sip] domain", "host name"),
        ("[rtp]\nport_min = 10001", 2, "[rtp] port_min", "must be even"),
        ('[rtp]\nworkers = "many"', 2, "[rtp] workers",
         'must be an integer between 0 and 64 or "auto", got "many"'),
        ("[rtp]\nworkers = 65", 2, "[rtp] workers", "between 0 and 64, got 65"),
        ("[rtp]\nworkers = true", 2, "[rtp] workers", "got true"),
        # cross-field rules
        ("[rtp]\nport_min = 20000\nport_max = 20000", 3, "[rtp] port_max", "greater than port_min (20000)"),
        ("[registrar]\nmin_expires = 4000", 2, "[registrar] min_expires", "must not exceed max_expires (3600)"),
        ("[registrar]\n\ndefault_expires = 10", 3, "[registrar] default_expires", "between min_expires (60)"),
        # unknown names, with suggestions
        ("[sip]\nprot = 5060", 2, "[sip] prot", 'unknown key; did you mean "port"?'),
        ("[sipp]\nport = 5060", 1, "[sipp]", 'unknown section; did you mean "sip"?'),
        ("[auth]\nzzz = 1", 2, "[auth] zzz", 'expected one of "algorithms"'),
        ("port = 5060", 1, "port", "did you mean [sip] port?"),
        ("[rtp.extra]\nx = 1", 1, "[rtp] extra", "unknown key"),
    ],
)
def test_each_kind_of_error_names_file_line_and_key(text: str, line: int, key: str, message: str) -> None:
    err = _error(text + "\n")
    assert err.file == "ccpbx.toml"
    assert err.line == line
    assert err.key == key
    assert message in err.message
    assert str(err).startswith(f"ccpbx.toml:{line}: {key}: ")


# -- [admin] -------------------------------------------------------------------------------------------


def test_admin_defaults_listen_on_loopback_with_the_token_required() -> None:
    admin = Config().admin
    assert (admin.enabled, admin.host, admin.port, admin.metrics_public) == (True, "127.0.0.1", 0, False)


def test_admin_accepts_loopback_addresses_and_a_port() -> None:
    config = parse_config('[admin]\nhost = "::1"\nport = 8089\nmetrics_public = true\nenabled = false\n')
    assert (config.admin.host, config.admin.port, config.admin.metrics_public, config.admin.enabled) == (
        "::1", 8089, True, False)
    assert parse_config('[admin]\nhost = "127.0.0.2"\n').admin.host == "127.0.0.2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('host = "0.0.0.0"', "must be a loopback address"),
        ('host = "192.168.1.20"', "must be a loopback address"),
        ('host = "::"', "must be a loopback address"),
        ('host = "localhost"', "must be a loopback IP address"),
        ("port = 65536", "between 0 and 65535, got 65536"),
        ("port = -1", "between 0 and 65535, got -1"),
        ('port = "8080"', 'must be an integer between 0 and 65535, got "8080"'),
        ('metrics_public = "yes"', 'must be true or false, got "yes"'),
    ],
)
def test_admin_errors_name_the_key(text: str, message: str) -> None:
    err = _error(f"[admin]\n{text}\n")
    key = text.split(" ", 1)[0]
    assert (err.line, err.key) == (2, f"[admin] {key}")
    assert message in err.message, err.message


def test_lines_are_found_past_decoys() -> None:
    text = (
        '# port = "in a comment"\n'                    # 1
        "[server]\n"                                   # 2
        'log_level = """\n'                            # 3  a multi-line string holding key-like lines
        "[sip]\n"                                      # 4
        "port = 1\n"                                   # 5
        '"""\n'                                        # 6
        "[sip]\n"                                      # 7
        "transports = [\n"                             # 8
        '  "udp",  # port = 2\n'                       # 9
        '  "sctp",\n'                                  # 10
        "]\n"                                          # 11
        "'quoted key' = 1\n"                           # 12
    )
    err = _error(text)
    found = {(e.line, e.key) for e in err.errors}
    assert (3, "[server] log_level") in found
    assert (10, "[sip] transports[1]") in found
    assert (12, "[sip] quoted key") in found
    assert [e.line for e in err.errors] == sorted(e.line or 0 for e in err.errors)


def test_dotted_keys_and_inline_tables_are_located() -> None:
    assert _error('\n\nsip.port = "x"\n').line == 3
    err = _error('\nrtp = { port_min = 10000, port_max = "many" }\n')
    assert (err.line, err.key) == (2, "[rtp] port_max")
    err = _error('sip = { realm = "x", transports = [\n  "udp",\n  "sctp",\n] }\n')
    assert (err.line, err.key) == (3, "[sip] transports[1]")
    err = _error('[sip]\n\nrealm.x = 1\n')
    assert (err.line, err.key) == (3, "[sip] realm")


def test_every_problem_is_reported_earliest_first() -> None:
    err = _error('[rtp]\nport_min = 3\n[sip]\nport = "x"\nhost = ""\n[server]\nlog_format = "xml"\n')
    assert [(e.line, e.key) for e in err.errors] == [
        (2, "[rtp] port_min"), (4, "[sip] port"), (5, "[sip] host"), (7, "[server] log_format"),
    ]
    assert err is err.errors[0]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[sip]\nport = = 3\n", 2),
        ("[sip]\nport = 1\n[sip]\n", 3),          # table defined twice
        ("\n\n\n[sip\n", 4),
        ('[sip]\nrealm = "unterminated\n', 2),
        ("[sip]\nport = 1\nport = 2\n", 3),        # key defined twice
    ],
)
def test_a_syntax_error_reports_tomllibs_line(text: str, line: int) -> None:
    err = _error(text)
    assert err.line == line
    assert err.key == ""
    assert str(err).startswith(f"ccpbx.toml:{line}: invalid TOML: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.line is None
    assert "cannot read" in str(info.value)


def test_a_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[sip]\nrealm = \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.line, info.value.message) == (2, "not valid UTF-8")


# -- overrides and output --------------------------------------------------------------------------------


def test_overrides_replace_values_and_skip_none() -> None:
    base = Config()
    config = base.with_overrides(sip_host="127.0.0.1", sip_port=5070, rtp_port_min=None,
                                 server_data_dir=Path("/tmp/x"))
    assert (config.sip.host, config.sip.port) == ("127.0.0.1", 5070)
    assert config.rtp == base.rtp
    assert config.server.data_dir == Path("/tmp/x")
    assert base.sip.port == 5060  # the original is untouched
    assert base.with_overrides() is base


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(sip_port=70000)
    assert str(info.value) == "command line: [sip] port: must be an integer between 0 and 65535, got 70000"
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(rtp_port_min=30000)  # above the file's port_max
    assert info.value.key == "[rtp] port_max"
    with pytest.raises(TypeError):
        Config().with_overrides(sip_colour="blue")


def test_to_toml_reads_back_equal() -> None:
    config = parse_config(
        '[sip]\nport = 5080\ntransports = ["tcp"]\ndomain = "pbx.test"\n[auth]\nalgorithms = ["MD5"]\n'
        '[server]\ndata_dir = "/srv/ccpbx"\n'
    )
    text = config.to_toml()
    tomllib.loads(text)
    assert parse_config(text) == config


# -- the line locator, as a property ---------------------------------------------------------------------

_keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_values = st.sampled_from(
    ['"x"', "1", "true", "[1, 2]", '"""\nkey = 1\n"""', "'''\n[t]\n'''", "[\n  1,\n  2,\n]", "{ a = 1 }",
     '"a # b"', "1979-05-27 07:32:00Z"]
)
_filler = st.sampled_from(["", "# comment", "   ", "# k = 1"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_keys, st.lists(st.tuples(_keys, _values, _filler), max_size=4, unique_by=lambda t: t[0])),
                max_size=4, unique_by=lambda t: t[0]))
def test_key_lines_match_where_keys_are_written(doc: list[tuple[str, list[tuple[str, str, str]]]]) -> None:
    chunks: list[str] = []
    line = 0
    expected: dict[tuple[str | int, ...], int] = {}

    def write(chunk: str) -> int:
        nonlocal line
        chunks.append(chunk + "\n")
        first = line + 1
        line += chunk.count("\n") + 1
        return first

    for table, pairs in doc:
        expected[(table,)] = write(f"[{table}]")
        for key, value, filler in pairs:
            if filler:
                write(filler)
            expected[(table, key)] = write(f"{key} = {value}")
    text = "".join(chunks)
    tomllib.loads(text)  # the generator only writes valid TOML
    found = _KeyLines(text)
    for path, line in expected.items():
        assert found.line_of(path) == line


def test_key_lines_follow_arrays_of_tables() -> None:
    text = (
        "[[queues]]\n"             # 1
        'name = "a"\n'             # 2
        "[[queues.members]]\n"     # 3
        'agent = "x"\n'            # 4
        "[[queues]]\n"             # 5
        'name = "b"\n'             # 6
        "[queues.options]\n"       # 7
        "wrap = 3\n"               # 8
        "[[queues.members]]\n"     # 9
        'agent = "y"\n'            # 10
    )
    found = _KeyLines(text)
    assert found.line_of(("queues", 0, "name")) == 2
    assert found.line_of(("queues", 0, "members", 0, "agent")) == 4
    assert found.line_of(("queues", 1, "name")) == 6
    assert found.line_of(("queues", 1, "options", "wrap")) == 8
    assert found.line_of(("queues", 1, "members", 0, "agent")) == 10
    assert found.line_of(("queues", 1, "missing")) == 5


@pytest.mark.parametrize(("text", "workers"), [("", "auto"), ('workers = "Auto"', "auto"), ("workers = 0", 0),
                                                ("workers = 3", 3)])
def test_media_workers_are_a_number_or_auto(text: str, workers: object) -> None:
    assert parse_config(f"[rtp]\n{text}\n").rtp.workers == workers


def test_sip_workers_take_a_number_or_auto() -> None:
    from ccpbx.pbx.app import sip_worker_count

    assert parse_config('[sip]\nworkers = "AUTO"\n').sip.workers == "auto"
    assert parse_config("[sip]\nworkers = 2\n").sip.workers == 2
    assert Config().sip.workers == "auto"  # the default: one worker on two cores or more
    for text, fragment in (('workers = "many"', 'must be an integer between 0 and 8 or "auto"'),
                           ("workers = 9", "between 0 and 8")):
        with pytest.raises(ConfigError) as info:
            parse_config(f"[sip]\n{text}\n")
        assert fragment in str(info.value)
    # "auto": one worker from two usable cores on (it takes the challenges off the server's core), none on one
    assert [sip_worker_count("auto", cores) for cores in (1, 2, 16)] == [0, 1, 1]
    assert [sip_worker_count(n) for n in (0, 3)] == [0, 3]
