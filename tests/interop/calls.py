"""Helpers for call tests: a SIPp UAS process registered as an extension, CDR rows read from SQLite."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.interop.server import RunningServer
from tests.interop.sipp import free_port, run_sipp, start_sipp_uas, stop_process


@contextmanager
def sipp_uas(sipp: str, scenario: str, server: RunningServer, work: Path, user: str, password: str, *,
             calls: int = 1, timeout_s: int = 30, extra: list[str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Start SIPp as a UAS on a free port and register ``user`` with that port as its Contact."""
    port = free_port()
    proc = start_sipp_uas(sipp, scenario, work, port, calls=calls, timeout_s=timeout_s, extra=extra)
    try:
        reg = run_sipp(sipp, "reg_contact", server.host, server.port, work / "reg", [[user, password, "300",
                                                                                        str(port)]])
        assert reg.returncode == 0, reg.explain()
        server.wait_for_log(rf"sip\.register\.ok.*aor={user}\b")
        yield proc
    finally:
        stop_process(proc, timeout_s + 5)


def uas_result(proc: subprocess.Popen[str], work: Path, scenario: str) -> tuple[int, str]:
    out = proc.stdout.read() if proc.stdout is not None else ""
    err = work / f"{scenario}.uas.errors.log"
    return proc.returncode, out[-2000:] + (err.read_text(errors="replace")[-3000:] if err.exists() else "")


def cdr_rows(server: RunningServer, timeout: float = 5.0, count: int = 1) -> list[dict[str, object]]:
    """Finished CDR rows (end set), newest last; waits for ``count`` of them (written behind by the server)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(server.data_dir / "ccpbx.sqlite3") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute('SELECT * FROM cdrs WHERE "end" IS NOT NULL ORDER BY start')]
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    return rows


@contextmanager
def silent_contact(sipp: str, server: RunningServer, work: Path, user: str,
                   password: str) -> Iterator[socket.socket]:
    """Register ``user`` at a bare UDP socket that never answers; read what reached it with :func:`datagrams`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        reg = run_sipp(sipp, "reg_contact", server.host, server.port, work / "reg",
                       [[user, password, "300", str(port)]])
        assert reg.returncode == 0, reg.explain()
        server.wait_for_log(rf"sip\.register\.ok.*aor={user}\b")
        yield sock
    finally:
        sock.close()


def datagrams(sock: socket.socket) -> list[bytes]:
    """Everything queued on a non-blocking UDP socket, without waiting."""
    out: list[bytes] = []
    while len(out) < 1000:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            break
    return out
