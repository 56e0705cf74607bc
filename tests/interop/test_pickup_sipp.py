"""Call pickup with SIPp phones: directed (``**1002``), group (``*8``) and a BLF's INVITE with Replaces.

1001 calls 1002, a SIPp UAS that rings and never answers; 1003 picks the call up. 1001 must get 200 and end
up bridged with 1003 (1003 hangs up, 1001 gets our BYE), 1002 must get a CANCEL carrying
``Reason: SIP;cause=200`` (its scenario checks it with ``<ereg check_it>``), and the CDR must name 1003 as the
destination. For the Replaces variant the test reads the ringing dialog (Call-ID, tags) from the UAS's log
and injects it into the picker's scenario.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.calls import cdr_rows, sipp_uas, uas_result
from tests.interop.server import RunningServer, serving
from tests.interop.sipp import SippResult, run_sipp

USERS = {"1001": "secret-1001-pw", "1002": "secret-1002-pw", "1003": "secret-1003-pw"}
CONFIG = """
[registrar]
min_expires = 10

[[group]]
name = "desk"
number = "650"
members = ["1002", "1003"]
ring_time = 20
"""
RING_WAIT_S = 10.0


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", config_text=CONFIG, extensions=USERS) as srv:
        yield srv


def _logged_dialog(log_file: Path, state: str = "RINGING", timeout: float = RING_WAIT_S) -> dict[str, str]:
    """The dialog a UAS logged: ``call_id``, ``from_tag`` (ours), ``to_tag`` (the UAS's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        m = re.search(state + r" call_id=(\S+) from_tag=(\S+) to_tag=(\S+)", text)
        if m:
            return {"call_id": m.group(1), "from_tag": m.group(2), "to_tag": m.group(3)}
        time.sleep(0.05)
    raise AssertionError(f"the UAS logged no {state} dialog within {timeout}s: {log_file}")


def _picked_up(pbx: RunningServer, sipp: str, tmp_path: Path, pick: str) -> None:
    """1001 calls 1002 (ringing), then ``pick(uas_log)`` makes 1003 pick it up; checks all three phones."""
    uas_log = tmp_path / "b" / "uas.log"
    with sipp_uas(sipp, "uas_ring_pickup", pbx, tmp_path / "b", "1002", USERS["1002"], timeout_s=20,
                  extra=["-trace_logs", "-log_file", str(uas_log)]) as ringing, \
            ThreadPoolExecutor(max_workers=1) as pool:
        caller: Future[SippResult] = pool.submit(
            run_sipp, sipp, "uac_callee_bye", pbx.host, pbx.port, tmp_path / "a", [["1001", USERS["1001"], "0"]],
            timeout_s=20, extra=["-s", "1002"])
        dialog = _logged_dialog(uas_log)
        picker = _pick(pbx, sipp, tmp_path, pick, dialog)
        assert picker.returncode == 0, picker.explain() + pbx.log[-4000:]
        result = caller.result(timeout=40)
        assert result.returncode == 0, result.explain() + pbx.log[-4000:]
    code, text = uas_result(ringing, tmp_path / "b", "uas_ring_pickup")
    assert code == 0, text + pbx.log[-3000:]
    assert "CANCELLED reason=cause=200" in uas_log.read_text(errors="replace")


def _pick(pbx: RunningServer, sipp: str, tmp_path: Path, pick: str, dialog: dict[str, str]) -> SippResult:
    work = tmp_path / "picker"
    if pick == "replaces":
        # RFC 3891 §3: to-tag names the recipient's (ccpbx's) own tag, from-tag the ringing phone's
        row = ["1003", USERS["1003"], dialog["call_id"], dialog["from_tag"], dialog["to_tag"]]
        return run_sipp(sipp, "uac_pickup_replaces", pbx.host, pbx.port, work, [row], timeout_s=20,
                        extra=["-s", "1002", "-d", "1000"])
    return run_sipp(sipp, "uac_call", pbx.host, pbx.port, work, [["1003", USERS["1003"], "0"]], timeout_s=20,
                    extra=["-s", pick, "-d", "1000"])


def _check_cdrs(pbx: RunningServer, picker_dialled: str) -> None:
    rows = cdr_rows(pbx, count=2)
    picked = next(r for r in rows if r["caller"] == "1001")
    assert (picked["callee"], picked["destination"], picked["disposition"]) == (
        "1002", "extension:1003", "answered"), rows
    assert picked["hangup_side"] == "callee", picked  # 1003, now the callee, hung up
    legs = str(picked["legs"])
    assert '"role":"picker"' in legs and '"status":487' in legs, legs  # 1002 was cancelled
    mine = next(r for r in rows if r["caller"] == "1003")
    assert mine["callee"] == picker_dialled and picked["call_id"] in str(mine["transfers"]), rows


@pytest.mark.parametrize("code", ["**1002", "*8"], ids=["directed", "group"])
def test_feature_code_picks_up_the_ringing_call(pbx: RunningServer, sipp: str, tmp_path: Path, code: str) -> None:
    _picked_up(pbx, sipp, tmp_path, code)
    pbx.wait_for_log(r"pickup\.done")
    _check_cdrs(pbx, code)


def test_invite_with_replaces_picks_up_the_ringing_dialog(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    _picked_up(pbx, sipp, tmp_path, "replaces")
    pbx.wait_for_log(r"pickup\.done")
    _check_cdrs(pbx, "1002")
    assert pbx.log.count("route.resolved") == 1  # the caller's call only: the picker's INVITE is not routed


def test_nothing_ringing_is_a_tone_then_404(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "uac_unknown", pbx.host, pbx.port, tmp_path / "picker", [["1003", USERS["1003"], "0"]],
                      timeout_s=20, extra=["-s", "**1002"])
    assert result.returncode == 0, result.explain() + pbx.log[-3000:]
    row = cdr_rows(pbx)[0]
    assert (row["callee"], row["hangup_status"]) == ("**1002", 404), row


def _replaces_row(dialog: dict[str, str]) -> list[str]:
    """1003's credentials and a Replaces naming ``dialog`` as ccpbx sees it (to-tag = ccpbx's own tag)."""
    return ["1003", USERS["1003"], dialog["call_id"], dialog["from_tag"], dialog["to_tag"]]


def test_invite_with_replaces_takes_over_a_call_in_progress(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    """RFC 3891 §3 on a confirmed dialog: early-only gets 486, a dialog of nobody's 481, a plain Replaces puts
    1003 in 1002's place (1002 gets BYE), and 1001 ends up talking to 1003."""
    uas_log = tmp_path / "b" / "uas.log"
    with sipp_uas(sipp, "uas_answer_logged", pbx, tmp_path / "b", "1002", USERS["1002"], timeout_s=25,
                  extra=["-trace_logs", "-log_file", str(uas_log)]) as answered, \
            ThreadPoolExecutor(max_workers=1) as pool:
        caller: Future[SippResult] = pool.submit(
            run_sipp, sipp, "uac_callee_bye", pbx.host, pbx.port, tmp_path / "a", [["1001", USERS["1001"], "0"]],
            timeout_s=25, extra=["-s", "1002"])
        dialog = _logged_dialog(uas_log, "ANSWERED")
        early_only = run_sipp(sipp, "uac_replaces_refused", pbx.host, pbx.port, tmp_path / "early", [
            _replaces_row(dialog)], timeout_s=10, extra=["-s", "1002"])
        assert early_only.returncode == 0, early_only.explain() + pbx.log[-3000:]
        pbx.wait_for_log(r"pickup\.replaces\.refused.*status=486")
        unknown = run_sipp(sipp, "uac_replaces_refused", pbx.host, pbx.port, tmp_path / "unknown", [
            _replaces_row({**dialog, "call_id": "nobody@127.0.0.1"})], timeout_s=10, extra=["-s", "1002"])
        assert unknown.returncode == 0, unknown.explain() + pbx.log[-3000:]
        pbx.wait_for_log(r"pickup\.replaces\.refused.*status=481")
        picker = run_sipp(sipp, "uac_pickup_replaces", pbx.host, pbx.port, tmp_path / "picker",
                          [_replaces_row(dialog)], timeout_s=20, extra=["-s", "1002", "-d", "1000"])
        assert picker.returncode == 0, picker.explain() + pbx.log[-4000:]
        result = caller.result(timeout=40)
        assert result.returncode == 0, result.explain() + pbx.log[-4000:]
    code, text = uas_result(answered, tmp_path / "b", "uas_answer_logged")
    assert code == 0, text + pbx.log[-3000:]  # 1002 got our BYE when 1003 replaced it
    pbx.wait_for_log(r"call\.leg\.replaced")
    rows = cdr_rows(pbx, count=2)
    call = next(r for r in rows if r["caller"] == "1001")
    assert (call["callee"], call["destination"], call["disposition"]) == ("1002", "extension:1002", "answered")
    assert '"role":"replacing"' in str(call["legs"]), call
    mine = next(r for r in rows if r["caller"] == "1003")  # refused INVITEs start no call, hence no record
    assert call["call_id"] in str(mine["transfers"]) and len(rows) == 2, rows
