"""Calls through the B2BUA between two SIPp instances: UAC -> ccpbx -> UAS (RFC 3261 §13-§15)."""

from __future__ import annotations

from pathlib import Path

from tests.interop.calls import cdr_rows, sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer
from tests.interop.sipp import run_sipp


def test_plain_call_and_its_cdr(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    with sipp_uas(sipp, "uas_answer", server, tmp_path / "uas", "2002", USERS["2002"]) as uas:
        result = run_sipp(sipp, "uac_call", server.host, server.port, tmp_path / "uac",
                          [["2001", USERS["2001"], "1000"]], extra=["-s", "2002", "-d", "1000"])
        assert result.returncode == 0, result.explain() + server.log[-3000:]
    code, text = uas_result(uas, tmp_path / "uas", "uas_answer")
    assert code == 0, text + server.log[-3000:]
    rows = cdr_rows(server)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["caller"], row["callee"], row["destination"]) == ("2001", "2002", "extension:2002")
    assert row["disposition"] == "answered" and row["hangup_side"] == "caller"
    assert 0.8 < float(row["end"]) - float(row["answer"]) < 5.0  # type: ignore[arg-type]
