"""A real ``ccpbx serve`` process for interop tests: temporary data dir, loopback, ephemeral port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ccpbx.pbx.config import load_config
from ccpbx.pbx.store import Store

if TYPE_CHECKING:
    from ccpbx.pbx.app import SipServer

CLI = [sys.executable, "-c", "import sys; from ccpbx.cli.main import main; sys.exit(main())"]


def asks_for_sip_workers(config_text: str) -> bool:
    """Whether a test's configuration sets ``[sip] workers``. The servers of the other tests run without SIP
    workers (the default, "auto", starts one on two cores): what a worker changes is tested in
    test_sip_workers.py, and everything else is about the server's own handling."""
    try:
        return "workers" in tomllib.loads(config_text).get("sip", {})
    except tomllib.TOMLDecodeError:
        return False  # a test of a bad configuration: the server refuses it either way
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def ccpbx(
    data_dir: Path, *args: str, config: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, "--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=check)


@dataclass
class RunningServer:
    data_dir: Path
    config: Path
    host: str
    port: int
    proc: subprocess.Popen[str]
    stdout_lines: list[str] = field(default_factory=list)
    log_path: Path = Path()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the server's log; returns the log."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.log
            if len(regex.findall(text)) >= count:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen {count}x in the server log within {timeout}s:\n{self.log[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("ccpbx serve did not stop on SIGTERM") from None
        return self.proc.returncode

    def options_ok(self, timeout: float = 2.0) -> bool:
        """Is the server answering? A raw OPTIONS over UDP gets a 200, retried as a UAC would (Timer E)."""
        attempts = 4
        for _ in range(attempts):
            reply = send_udp_request(self.host, self.port, build_options(self.host, self.port), timeout / attempts)
            if reply.startswith("SIP/2.0 200"):
                return True
        return False


def build_options(host: str, port: int, call_id: str | None = None) -> bytes:
    call_id = call_id or f"opt-{time.monotonic_ns()}"
    host = f"[{host}]" if ":" in host else host
    return (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:9;branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=probe\r\nTo: <sip:{host}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def send_udp_request(host: str, port: int, data: bytes, timeout: float = 2.0) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((host, 0))
        sock.sendto(data, (host, port))
        try:
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            return ""
        return reply.decode("utf-8", "replace")


async def _add_extensions(data_dir: Path, config: Path, extensions: dict[str, str]) -> None:
    """Create the missing extensions through the store (what `ccpbx ext add` does, without a process each:
    the command itself is tested in tests/test_cli.py)."""
    realm = load_config(config).sip.realm
    store = await Store.open(data_dir / "ccpbx.sqlite3")
    try:
        existing = {e.ext for e in await store.list_extensions()}
        missing = [(ext, password, "") for ext, password in extensions.items() if ext not in existing]
        if missing:
            await store.add_extensions(missing, realm)
    finally:
        await store.close()


def start_server(data_dir: Path, *, host: str = "127.0.0.1", config_text: str = "",
                 extensions: dict[str, str] | None = None) -> RunningServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "ccpbx.toml"
    config.write_text(config_text)
    if extensions:
        asyncio.run(_add_extensions(data_dir, config, extensions))
    log_path = data_dir / "server.log"
    out_path = data_dir / "server.out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("a") as log_file, out_path.open("w") as out_file:
        no_workers = [] if asks_for_sip_workers(config_text) else ["--sip-workers", "0"]
        proc = subprocess.Popen([*CLI, "--data-dir", str(data_dir), "--config", str(config), "serve", "--host",
                                 host, "--sip-port", "0", *no_workers], stdout=out_file, stderr=log_file, text=True,
                                env=env)
    server = RunningServer(data_dir, config, host, 0, proc, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ccpbx serve exited with {proc.returncode}:\n{server.log[-4000:]}")
        server.stdout_lines = out_path.read_text(errors="replace").splitlines()
        for line in server.stdout_lines:
            m = re.match(r"ccpbx: listening udp (\S+) (\d+)", line)
            if m:
                server.port = int(m.group(2))
        if "ccpbx: ready" in server.stdout_lines and server.port:
            return server
        time.sleep(0.05)
    server.proc.kill()
    server.proc.wait(5)
    raise AssertionError(f"ccpbx serve did not become ready:\n{server.log[-4000:]}")


@contextmanager
def serving(data_dir: Path, **kw: object) -> Iterator[RunningServer]:
    """:func:`start_server`, stopped with SIGTERM at the end: it must exit 0 with no traceback in its log."""
    srv = start_server(data_dir, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"ccpbx serve exited {code} on SIGTERM:\n{srv.log[-3000:]}"
        assert "Traceback" not in srv.log, srv.log[-6000:]


@asynccontextmanager
async def in_process(tmp_path: Path, config_text: str, users: Mapping[str, str],
                     prepare: Callable[[Store], Awaitable[None]] | None = None) -> AsyncIterator[SipServer]:
    """``ccpbx serve``'s ``SipServer`` in the test's own event loop on loopback (an ephemeral SIP port), so a test
    can hold the call API and read the store while third-party phones talk to it; ``users`` are extensions."""
    from ccpbx.pbx.app import SipServer
    from ccpbx.pbx.config import parse_config

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    config = parse_config(f'[server]\ndata_dir = "{data}"\n[admin]\nenabled = false\n' + config_text,
                          base_dir=tmp_path)
    if not asks_for_sip_workers(config_text):
        config = config.with_overrides(sip_workers=0)
    store = await Store.open(data / "ccpbx.sqlite3")
    await store.add_extensions([(ext, pw, "") for ext, pw in users.items()], config.sip.realm)
    if prepare is not None:
        await prepare(store)
    server = SipServer(config, store)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


def udp_port(server: SipServer) -> int:
    return next(a.port for a in server.listening if a.transport == "udp")
