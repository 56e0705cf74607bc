"""Attended transfer (RFC 3515 REFER + RFC 3891 Replaces) with SIPp phones on both calls of the transferor.

2001 talks to 2002 (call 1) and, in a consultation call, to alice (call 2); it then REFERs call 1 to alice with
Replaces naming call 2. ccpbx must answer 202, NOTIFY progress, join 2002 with alice and hang up both of the
transferor's dialogs; the joined call's CDR names call 1 as its parent.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import subprocess
from pathlib import Path

from tests.interop.calls import sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer
from tests.interop.sipp import SCENARIOS, free_port, run_sipp


def _server_tag(call_id: str, from_tag: str) -> str:
    """The To tag ccpbx gives an INVITE's dialog (stable across the 407 round, see app._to_tag_for)."""
    return hashlib.blake2s(f"{call_id}||{from_tag}".encode(), digest_size=6).hexdigest()


def test_refer_with_replaces_joins_the_two_far_parties(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    consult_token = f"consult-{secrets.token_hex(6)}"
    consult_id = f"{consult_token}@127.0.0.1"  # SIPp's -cid_str with %s = its local address
    consult_tag = f"ct{secrets.token_hex(4)}"
    with sipp_uas(sipp, "uas_answer", server, tmp_path / "b", "2002", USERS["2002"], timeout_s=25) as b_uas, \
            sipp_uas(sipp, "uas_answer", server, tmp_path / "c", "alice", USERS["alice"], timeout_s=25) as c_uas:
        work = tmp_path / "consult"
        work.mkdir()
        inf = work / "consult.csv"
        inf.write_text(f"SEQUENTIAL\n2001;[authentication username=2001 password={USERS['2001']}];0;"
                       f"{consult_id};{consult_tag}\n")
        consult = subprocess.Popen(
            [sipp, f"{server.host}:{server.port}", "-sf", str(SCENARIOS / "uac_consult.xml"), "-inf", str(inf),
             "-m", "1", "-s", "alice", "-cid_str", f"{consult_token}@%s", "-i", "127.0.0.1", "-p", str(free_port()),
             "-timeout", "20s", "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(work / "errors.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        try:
            server.wait_for_log(r"call\.leg\.answered")
            result = run_sipp(sipp, "uac_refer_replaces", server.host, server.port, tmp_path / "a",
                              [["2001", USERS["2001"], "0", consult_id.replace("@", "%40"), consult_tag,
                                _server_tag(consult_id, consult_tag), "alice"]],
                              extra=["-s", "2002", "-d", "1000"])
            assert result.returncode == 0, result.explain() + server.log[-4000:]
            assert consult.wait(15) == 0, (work / "errors.log").read_text() if (work / "errors.log").exists() else ""
        finally:
            if consult.poll() is None:
                consult.kill()
                consult.wait(5)
        server.wait_for_log(r"call\.transfer\.attended")
        assert server.stop() == 0  # hangs up the joined call: both far parties get our BYE
        for proc, name in ((b_uas, "b"), (c_uas, "c")):
            code, text = uas_result(proc, tmp_path / name, "uas_answer") if proc.wait(10) is not None else (1, "")
            assert code == 0, text
    with sqlite3.connect(server.data_dir / "ccpbx.sqlite3") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM cdrs ORDER BY start")]
    assert len(rows) == 3, rows
    first = next(r for r in rows if r["callee"] == "2002" and r["parent_call_id"] is None)
    joined = next(r for r in rows if r["parent_call_id"] == first["call_id"])
    assert joined["call_id"] in first["transfers"]  # type: ignore[operator]
    assert all(r["end"] is not None and r["disposition"] == "answered" for r in rows), rows
