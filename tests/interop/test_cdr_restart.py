"""A call in progress when the server dies leaves an incomplete CDR, not nothing (and SIGTERM ends calls cleanly)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.interop.calls import sipp_uas
from tests.interop.conftest import USERS
from tests.interop.server import start_server
from tests.interop.sipp import SCENARIOS, free_port


def _rows(data_dir: Path) -> list[dict[str, object]]:
    with sqlite3.connect(data_dir / "ccpbx.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM cdrs ORDER BY start")]


def _long_call(sipp: str, host: str, port: int, work: Path) -> subprocess.Popen[str]:
    """A SIPp caller that stays on the call for 30 s (killed by the test long before)."""
    work.mkdir(parents=True, exist_ok=True)
    inf = work / "caller.csv"
    inf.write_text(f"SEQUENTIAL\n2001;[authentication username=2001 password={USERS['2001']}];0\n")
    cmd = [sipp, f"{host}:{port}", "-sf", str(SCENARIOS / "uac_call.xml"), "-inf", str(inf), "-m", "1",
           "-s", "2002", "-d", "30000", "-i", "127.0.0.1", "-p", str(free_port()), "-timeout", "40s", "-nostdin"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=work)


def test_a_call_cut_by_a_crash_becomes_an_incomplete_record(sipp: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, extensions=USERS)
    caller = None
    try:
        with sipp_uas(sipp, "uas_answer", server, tmp_path / "uas", "2002", USERS["2002"], timeout_s=8) as uas:
            caller = _long_call(sipp, server.host, server.port, tmp_path / "uac")
            server.wait_for_log(r"call\.leg\.answered")
            deadline = time.monotonic() + 5
            while not _rows(data) and time.monotonic() < deadline:
                time.sleep(0.05)
            in_progress = _rows(data)
            assert len(in_progress) == 1 and in_progress[0]["end"] is None, in_progress
            server.proc.send_signal(signal.SIGKILL)  # a crash: no chance to write anything more
            server.proc.wait(10)
            uas.kill()
    finally:
        if caller is not None:
            caller.kill()
            caller.wait(10)
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
    restarted = start_server(data, extensions=USERS)
    try:
        restarted.wait_for_log(r"cdr\.incomplete\.closed.*count=1")
        rows = _rows(data)
        assert len(rows) == 1
        row = rows[0]
        assert row["disposition"] == "incomplete" and row["hangup_side"] == "system"
        assert row["end"] is not None and float(row["end"]) >= float(row["start"])  # type: ignore[arg-type]
        assert (row["caller"], row["callee"]) == ("2001", "2002")
    finally:
        assert restarted.stop() == 0


def test_sigterm_ends_calls_in_progress_with_bye_and_a_final_record(sipp: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, extensions=USERS)
    caller = None
    try:
        with sipp_uas(sipp, "uas_answer", server, tmp_path / "uas", "2002", USERS["2002"], timeout_s=10) as uas:
            caller = _long_call(sipp, server.host, server.port, tmp_path / "uac")
            server.wait_for_log(r"call\.leg\.answered")
            assert server.stop() == 0
            # the callee got our BYE and answered it: its scenario ends successfully
            assert uas.wait(10) == 0
    finally:
        if caller is not None:
            caller.kill()
            caller.wait(10)
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
    rows = _rows(data)
    assert len(rows) == 1 and rows[0]["end"] is not None
    assert rows[0]["disposition"] == "answered" and rows[0]["hangup_side"] == "system"
