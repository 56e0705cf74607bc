"""The dial plan at work with SIPp phones: DND, call forwarding, ring groups and feature codes.

2001 calls; 2002 and alice are SIPp UAS processes registered as those extensions. Forwarding and DND are set
the way an administrator does (``ccpbx ext forward|dnd``) or the way a user does (feature codes from the phone).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.calls import cdr_rows, sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, ccpbx, serving
from tests.interop.sipp import SippResult, run_sipp

GROUPS = """
[registrar]
min_expires = 10

[[group]]
name = "linear"
number = "600"
strategy = "linear"
members = ["2002", "alice"]
ring_time = 2
final = "hangup:480"

[[group]]
name = "overflow"
number = "602"
strategy = "ringall"
members = ["2002"]
ring_time = 2
final = "extension:alice"

[[group]]
name = "all"
number = "601"
strategy = "ringall"
members = ["2002", "alice"]
ring_time = 10
final = "hangup:480"
"""


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", config_text=GROUPS, extensions=USERS) as srv:
        yield srv


def _caller(sipp: str, server: RunningServer, work: Path, scenario: str, dialled: str) -> SippResult:
    return run_sipp(sipp, scenario, server.host, server.port, work, [["2001", USERS["2001"], "1000"]],
                    timeout_s=20, extra=["-s", dialled, "-d", "500"])


def _admin(server: RunningServer, *args: str) -> None:
    ccpbx(server.data_dir, *args, config=server.config)


def test_dnd_gets_busy(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    _admin(pbx, "ext", "dnd", "2002", "on")
    result = _caller(sipp, pbx, tmp_path / "uac", "uac_busy", "2002")
    assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    row = cdr_rows(pbx)[0]
    assert (row["disposition"], row["hangup_status"]) == ("busy", 486), row


def test_forward_always_reaches_the_target(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    _admin(pbx, "ext", "forward", "2002", "--always", "alice")
    with sipp_uas(sipp, "uas_answer", pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=15) as alice:
        result = _caller(sipp, pbx, tmp_path / "uac", "uac_call", "2002")
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert uas_result(alice, tmp_path / "alice", "uas_answer")[0] == 0
    row = cdr_rows(pbx)[0]
    assert (row["callee"], row["destination"], row["disposition"]) == ("2002", "extension:alice", "answered"), row


@pytest.mark.parametrize(("kind", "callee_scenario"), [("--busy", "uas_busy"), ("--no-answer", "uas_ring_cancel")])
def test_forward_on_busy_and_on_no_answer(pbx: RunningServer, sipp: str, tmp_path: Path, kind: str,
                                          callee_scenario: str) -> None:
    _admin(pbx, "ext", "forward", "2002", kind, "alice", "--after", "2")
    with sipp_uas(sipp, callee_scenario, pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=15) as b, \
            sipp_uas(sipp, "uas_answer", pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=15) as alice:
        result = _caller(sipp, pbx, tmp_path / "uac", "uac_call", "2002")
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert uas_result(b, tmp_path / "b", callee_scenario)[0] == 0
    assert uas_result(alice, tmp_path / "alice", "uas_answer")[0] == 0
    row = cdr_rows(pbx)[0]
    assert (row["destination"], row["disposition"]) == ("extension:alice", "answered"), row
    legs = row["legs"]
    assert isinstance(legs, str) and legs.count('"callee"') == 2  # 2002's leg that failed, alice's that answered


def test_linear_group_hunts_to_the_second_member(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    with sipp_uas(sipp, "uas_ring_cancel", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=15) as b, \
            sipp_uas(sipp, "uas_answer", pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=15) as alice:
        result = _caller(sipp, pbx, tmp_path / "uac", "uac_call", "600")
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert uas_result(b, tmp_path / "b", "uas_ring_cancel")[0] == 0  # rang 2 s, then was cancelled
    assert uas_result(alice, tmp_path / "alice", "uas_answer")[0] == 0
    row = cdr_rows(pbx)[0]
    assert (row["callee"], row["destination"], row["disposition"]) == ("600", "group:linear", "answered"), row


def test_ringall_group_cancels_the_others_when_one_answers(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    with sipp_uas(sipp, "uas_ring_cancel", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=15) as b, \
            sipp_uas(sipp, "uas_answer", pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=15) as alice:
        result = _caller(sipp, pbx, tmp_path / "uac", "uac_call", "601")
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert uas_result(b, tmp_path / "b", "uas_ring_cancel")[0] == 0
    assert uas_result(alice, tmp_path / "alice", "uas_answer")[0] == 0
    assert cdr_rows(pbx)[0]["destination"] == "group:all"


def test_feature_codes_set_and_clear_dnd_from_the_phone(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    def dnd() -> int | None:
        with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
            row = db.execute("SELECT dnd FROM extension_features WHERE ext = '2001'").fetchone()
        return None if row is None else int(row[0])

    result = _caller(sipp, pbx, tmp_path / "on", "uac_answered_then_bye", "*78")
    assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert dnd() == 1
    result = _caller(sipp, pbx, tmp_path / "off", "uac_answered_then_bye", "*79")
    assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert dnd() == 0


def test_unanswered_group_goes_to_its_final_destination(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    with sipp_uas(sipp, "uas_ring_cancel", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=15) as b, \
            sipp_uas(sipp, "uas_answer", pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=15) as alice:
        result = _caller(sipp, pbx, tmp_path / "uac", "uac_call", "602")
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    assert uas_result(b, tmp_path / "b", "uas_ring_cancel")[0] == 0
    assert uas_result(alice, tmp_path / "alice", "uas_answer")[0] == 0
    row = cdr_rows(pbx)[0]
    assert (row["callee"], row["destination"], row["disposition"]) == ("602", "extension:alice", "answered"), row
