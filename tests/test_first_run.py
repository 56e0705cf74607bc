"""A first run without surprises: what a new user meets before any phone registers.

``ccpbx serve`` that cannot listen says why in one line (exit 1, no traceback); ``config check FILE`` checks that
file; the banner names an address phones can reach; the server module does not pay for scipy at import.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccpbx.pbx.app import phone_addresses
from tests.test_cli import run

CCPBX = [sys.executable, "-c", "import sys; from ccpbx.cli.main import main; sys.exit(main())"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.bind(("127.0.0.1", port))
        tcp.listen()
    except OSError:
        pass  # the UDP port alone is enough to refuse
    try:
        yield port
    finally:
        udp.close()
        tcp.close()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CCPBX, "--data-dir", str(tmp_path / "data"), "serve", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("host", "words"), [
    ("127.0.0.1", "the port is already in use"),
    ("192.0.2.254", "is not an address of this machine"),  # TEST-NET-1: nobody's address here
    ("no-such-host.invalid", "is not an address or a name this machine can resolve"),
])
def test_serve_that_cannot_listen_says_why_in_one_line(tmp_path: Path, taken_port: int, host: str,
                                                       words: str) -> None:
    result = _serve(tmp_path, "--host", host, "--sip-port", str(taken_port))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot listen on") and words in last, last
    assert "pass --" in last  # and what to do about it


def test_config_check_takes_a_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[sip]\nport = 5070\n")
    result = run(["config", "check", str(good)], data_dir=tmp_path / "data")
    assert result.exit_code == 0 and f"# configuration: {good} (valid)" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[sip]\nport = "abc"\n')
    result = run(["config", "check", str(bad)], data_dir=tmp_path / "data")
    assert result.exit_code == 3 and f"{bad}:2: [sip] port" in result.output
    result = run(["config", "check", str(tmp_path / "missing.toml")], data_dir=tmp_path / "data")
    assert result.exit_code == 1 and "no such file" in result.output


def _kernel_source() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("198.51.100.1", 9))
        except OSError:
            return None
        return str(sock.getsockname()[0])


def test_the_banner_address_is_one_phones_can_reach() -> None:
    assert phone_addresses("127.0.0.1") == ["127.0.0.1"]
    assert phone_addresses("192.0.2.7") == ["192.0.2.7"]
    addresses = phone_addresses("0.0.0.0")
    expected = _kernel_source()
    if expected is not None and not expected.startswith("127."):
        assert addresses[0] == expected  # the default route's source, not the host name's 127.0.1.1
    assert all(":" not in a for a in addresses)  # an IPv4 wildcard lists IPv4 addresses only
    assert len(addresses) == len(set(addresses))


def test_the_server_module_does_not_import_scipy() -> None:
    code = "import sys, ccpbx.pbx.app; print('scipy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_serve_lifts_the_open_files_limit_a_shell_gives_it() -> None:
    """A shell's soft limit of 1,024 files would end calls near 250 (two RTP sockets a leg): serve lifts it."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}: nothing to lift")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from ccpbx.pbx.app import raise_open_files_limit; "
            "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=low_limit, check=True).stdout.strip().splitlines()[-1]  # after the log line
    before_after, soft_now = out.rsplit(" ", 1)
    assert before_after.startswith("(256, ")
    assert int(soft_now) > 256 and int(soft_now) == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


def test_sigusr1_logs_where_the_memory_went_when_traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from tests.interop.server import serving

    monkeypatch.setenv("PYTHONTRACEMALLOC", "4")
    with serving(tmp_path / "data") as server:
        os.kill(server.proc.pid, signal.SIGUSR1)
        line = server.wait_for_log("memory.top", timeout=30)
        assert "rank=1" in line and "mb=" in line and "where=" in line
        assert "memory.traced" in server.log
