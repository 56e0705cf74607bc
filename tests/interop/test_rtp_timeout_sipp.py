"""A call whose RTP stops is hung up: BYE to both legs within the timeout plus 2 s, and the CDR says why.

SIPp caller -> ccpbx -> SIPp callee, neither sending any RTP after the answer (a phone that crashed or lost
its network looks the same to the PBX). ``[rtp] timeout = 3``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.calls import cdr_rows, sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, serving
from tests.interop.sipp import run_sipp

TIMEOUT_S = 3
SLACK_S = 2.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", extensions=USERS, config_text=f"[rtp]\ntimeout = {TIMEOUT_S}\n") as srv:
        yield srv


def test_silent_call_is_hung_up_on_both_legs(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    with sipp_uas(sipp, "uas_answer", pbx, tmp_path / "uas", "2002", USERS["2002"], timeout_s=30) as uas:
        started = time.monotonic()
        caller = run_sipp(sipp, "uac_answered_then_bye", pbx.host, pbx.port, tmp_path / "uac",
                          [["2001", USERS["2001"]]], extra=["-s", "2002"], timeout_s=30)
        elapsed = time.monotonic() - started
        assert caller.returncode == 0, caller.explain()  # the caller got BYE from ccpbx and answered it
        uas.wait(15)
    code, output = uas_result(uas, tmp_path / "uas", "uas_answer")
    assert code == 0, output  # the callee got its BYE too
    assert elapsed <= TIMEOUT_S + SLACK_S + 1.0, f"the silent call lasted {elapsed:.1f} s"
    row = cdr_rows(pbx)[-1]
    assert row["end_reason"] == "rtp_timeout"
    assert row["hangup_side"] == "system" and row["disposition"] == "answered"
    assert row["answer"] is not None and row["end"] is not None
    talk = float(row["end"]) - float(row["answer"])  # type: ignore[arg-type]
    assert TIMEOUT_S - 0.5 <= talk <= TIMEOUT_S + SLACK_S, f"hung up {talk:.2f} s after the answer"
    assert json.loads(str(row["data"])) == {}
    assert "call.rtp.timeout" in pbx.log
