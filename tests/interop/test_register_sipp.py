"""REGISTER with digest against SIPp, a SIP test tool no one here wrote (RFC 3261 §10, RFC 7616)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, start_server
from tests.interop.sipp import run_sipp


def bindings(server: RunningServer, aor: str) -> list[tuple[str, float]]:
    """Rows of the location table (written behind within ~0.2 s)."""
    with sqlite3.connect(server.data_dir / "ccpbx.sqlite3") as db:
        return db.execute("SELECT contact, expires_at FROM bindings WHERE aor = ?", (aor,)).fetchall()


def wait_bindings(server: RunningServer, aor: str, count: int, timeout: float = 5.0) -> list[tuple[str, float]]:
    deadline = time.monotonic() + timeout
    rows = bindings(server, aor)
    while len(rows) != count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = bindings(server, aor)
    return rows


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_register_with_the_right_password(server: RunningServer, sipp: str, tmp_path: Path, transport: str) -> None:
    result = run_sipp(sipp, "reg_ok", server.host, server.port, tmp_path, [["2001", USERS["2001"], "120"]],
                      transport=transport)
    assert result.returncode == 0, result.explain()
    rows = wait_bindings(server, "2001", 1)
    assert len(rows) == 1 and rows[0][0].startswith("sip:2001@127.0.0.1:")
    assert 100 < rows[0][1] - time.time() <= 120


def test_non_numeric_user_registers(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "reg_ok", server.host, server.port, tmp_path, [["alice", USERS["alice"], "300"]])
    assert result.returncode == 0, result.explain()
    assert len(wait_bindings(server, "alice", 1)) == 1


def test_wrong_password_gets_401_then_403(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "reg_wrong", server.host, server.port, tmp_path, [["2002", "whatever", "120"]])
    assert result.returncode == 0, result.explain()
    assert bindings(server, "2002") == []
    server.wait_for_log(r"sip\.register\.forbidden")


def test_unknown_user_is_challenged_then_refused(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "reg_wrong", server.host, server.port, tmp_path, [["9999", "x", "120"]])
    assert result.returncode == 0, result.explain()


def test_interval_too_brief_gets_423(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "reg_too_brief", server.host, server.port, tmp_path, [["2001", USERS["2001"], "5"]])
    assert result.returncode == 0, result.explain()


def test_register_unregister_reregister_and_wildcard(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "reg_cycle", server.host, server.port, tmp_path, [["2001", USERS["2001"], "60"]])
    assert result.returncode == 0, result.explain()
    assert wait_bindings(server, "2001", 0) == []


def test_expired_nonce_is_answered_stale(tmp_path: Path, sipp: str) -> None:
    srv = start_server(tmp_path / "data", config_text="[auth]\nnonce_ttl = 1\n", extensions={"2001": USERS["2001"]})
    try:
        result = run_sipp(sipp, "reg_stale", srv.host, srv.port, tmp_path, [["2001", USERS["2001"], "120"]])
        assert result.returncode == 0, result.explain()
    finally:
        assert srv.stop() == 0


def test_registrations_survive_a_restart(tmp_path: Path, sipp: str) -> None:
    data = tmp_path / "data"
    srv = start_server(data, extensions={"2001": USERS["2001"]})
    try:
        result = run_sipp(sipp, "reg_ok", srv.host, srv.port, tmp_path, [["2001", USERS["2001"], "600"]])
        assert result.returncode == 0, result.explain()
        wait_bindings(srv, "2001", 1)
    finally:
        assert srv.stop() == 0
    srv = start_server(data)
    try:
        assert "bindings=1" in srv.wait_for_log(r"sip\.server\.started")
        assert len(bindings(srv, "2001")) == 1
    finally:
        assert srv.stop() == 0


def test_many_registrations_at_a_modest_rate(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    rows = [[u, p, "300"] for u, p in USERS.items()] * 20
    result = run_sipp(sipp, "reg_ok", server.host, server.port, tmp_path, rows, calls=len(rows), rate=50)
    assert result.returncode == 0, result.explain()
    assert server.options_ok()
