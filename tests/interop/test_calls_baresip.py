"""Calls between real baresip 1.0.0 phones through the ccpbx B2BUA (RFC 3261 calls, RFC 4733 DTMF,
RFC 3264 §8.4 hold, RFC 3515 REFER blind transfer), checked by what each phone actually hears.

Every phone sends its own sine (A 600 Hz, B 1400 Hz, C 1000 Hz); the audio each one received, decoded by
baresip itself and dumped to WAV, must have the other party's tone as its dominant frequency. One ``ccpbx serve``
is shared by the module (starting one costs seconds); each test finds its own CDR rows by the caller's Call-ID.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.interop.baresip import BaresipPhone, baresip_phone, dominant_frequency, rms
from tests.interop.server import RunningServer, serving
from tests.interop.sipp import run_sipp

EXTENSIONS = {"1001": "pw-1001-baresip", "1002": "pw-1002-baresip", "1003": "pw-1003-baresip"}
TONE_A_HZ, TONE_B_HZ, TONE_C_HZ = 600, 1400, 1000
TOLERANCE_HZ = 20.0
RATE_HZ = 8000
TONE_MIN_RMS = 2000.0  # ausine's sine after G.711 round trips is ~10,000; silence or comfort noise is near 0
SOUND_MIN_RMS = 300.0  # the generated music on hold is quiet (peaks 6000 with decaying notes, RMS ~1,300)
SETTLE_SAMPLES = RATE_HZ // 2  # skip the first 0.5 s after a change: jitter buffers and the switch-over
LISTEN_S = 2.0
RTP_RANGE_LO, RTP_RANGE_HI, RTP_RANGE_PORTS = 20000, 38000, 400

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # A random RTP range of our own: other ccpbx servers on this host all start allocating at 10000 and the
    # phones (rtp_ports in tests/interop/baresip.py) use a range above this one.
    # Media in the server's process (workers = 0): test_media_workers.py runs these tests again with workers,
    # as every server with the default config does.
    rtp_min = random.randrange(RTP_RANGE_LO, RTP_RANGE_HI, 2)
    config = f"[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + RTP_RANGE_PORTS}\nworkers = 0\n"
    with serving(tmp_path_factory.mktemp("pbx") / "data", extensions=EXTENSIONS, config_text=config) as srv:
        yield srv


def phone(binary: str, pbx: RunningServer, tmp_path: Path, user: str, tone_hz: int, auto_answer: bool = False
          ) -> AbstractContextManager[BaresipPhone]:
    return baresip_phone(binary, pbx, tmp_path / user, user, EXTENSIONS[user], tone_hz=tone_hz,
                         auto_answer=auto_answer)


def dial(caller: BaresipPhone, callee: BaresipPhone, pbx: RunningServer, number: str) -> str:
    """Caller dials ``number`` through ccpbx, the auto-answering callee picks up; returns the caller's Call-ID."""
    caller.command("dial", f"sip:{number}@{pbx.host}:{pbx.port}")
    established = caller.wait_event("CALL_ESTABLISHED")
    callee.wait_event("CALL_ESTABLISHED")
    return str(established["id"])


def assert_hears(pcm: npt.NDArray[np.int16], tone_hz: int, who: str) -> None:
    assert len(pcm) >= RATE_HZ, f"{who}: only {len(pcm)} samples received"
    level, peak = rms(pcm), dominant_frequency(pcm)
    assert level > TONE_MIN_RMS, f"{who}: received audio is near silence (RMS {level:.0f})"
    assert abs(peak - tone_hz) <= TOLERANCE_HZ, f"{who}: dominant {peak:.1f} Hz, expected {tone_hz} Hz"


def call_cdrs(pbx: RunningServer, sip_call_id: str, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """Finished CDR rows of the caller's SIP call (a transfer adds a child row with the same Call-ID)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(
                'SELECT * FROM cdrs WHERE "end" IS NOT NULL AND sip_call_id = ? ORDER BY start', (sip_call_id,))]
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{count} CDR rows for {sip_call_id} not written in {timeout}s: {rows}")


def two_way_call_then_hangup(baresip: str, pbx: RunningServer, tmp_path: Path, *, callee_hangs_up: bool
                             ) -> dict[str, object]:
    with phone(baresip, pbx, tmp_path, "1001", TONE_A_HZ) as a, \
            phone(baresip, pbx, tmp_path, "1002", TONE_B_HZ, auto_answer=True) as b:
        call_id = dial(a, b, pbx, "1002")
        a.drain(LISTEN_S + 0.5)
        assert_hears(a.received_audio()[SETTLE_SAMPLES:], TONE_B_HZ, "A hears B")
        assert_hears(b.received_audio()[SETTLE_SAMPLES:], TONE_A_HZ, "B hears A")
        hanging, other = (b, a) if callee_hangs_up else (a, b)
        hanging.command("hangup")
        hanging.wait_event("CALL_CLOSED")
        other.wait_event("CALL_CLOSED")  # ccpbx relayed the BYE to the other party
    rows = call_cdrs(pbx, call_id, 1)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["caller"], row["callee"], row["destination"]) == ("1001", "1002", "extension:1002"), row
    assert row["disposition"] == "answered", row
    assert row["answer"] is not None and float(row["end"]) - float(row["answer"]) > LISTEN_S, row  # type: ignore[arg-type]
    return row


def test_audio_both_ways_and_caller_hangs_up(baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    row = two_way_call_then_hangup(baresip, pbx, tmp_path, callee_hangs_up=False)
    assert row["hangup_side"] == "caller", row


def test_audio_both_ways_and_callee_hangs_up(baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    row = two_way_call_then_hangup(baresip, pbx, tmp_path, callee_hangs_up=True)
    assert row["hangup_side"] == "callee", row


def test_rfc4733_digits_reach_the_callee(baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    digits = "123#"
    with phone(baresip, pbx, tmp_path, "1001", TONE_A_HZ) as a, \
            phone(baresip, pbx, tmp_path, "1002", TONE_B_HZ, auto_answer=True) as b:
        dial(a, b, pbx, "1002")
        a.drain(0.5)
        a.command("sndcode", digits)  # baresip sends these as telephone-event packets, RFC 4733 §2.3
        b.wait_event("CALL_DTMF_START", timeout=10, count=len(digits))
        received = "".join(str(e["param"]) for e in b.events_of("CALL_DTMF_START"))
        assert received == digits
        assert not a.events_of("CALL_DTMF_START"), "digits echoed back to the sender"
        a.command("hangup")
        b.wait_event("CALL_CLOSED")


def test_hold_plays_music_to_the_other_party_and_resume_restores_audio(
        baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    with phone(baresip, pbx, tmp_path, "1001", TONE_A_HZ) as a, \
            phone(baresip, pbx, tmp_path, "1002", TONE_B_HZ, auto_answer=True) as b:
        dial(a, b, pbx, "1002")
        a.drain(2.0)
        before_hold = b.audio_mark()
        assert_hears(b.received_audio()[SETTLE_SAMPLES:before_hold], TONE_A_HZ, "B before hold")
        held, resumed = r"call\.hold\s.*leg=caller", r"call\.resume\s.*leg=caller"
        holds = len(re.findall(held, pbx.log))
        a.command("hold")  # re-INVITE with a=sendonly, RFC 3264 §8.4
        pbx.wait_for_log(held, count=holds + 1, timeout=5)
        a.drain(LISTEN_S + 0.5)
        held_at = b.audio_mark()
        on_hold = b.received_audio()[before_hold + SETTLE_SAMPLES:held_at]
        assert len(on_hold) >= RATE_HZ, f"B received only {len(on_hold)} samples while on hold"
        level, peak = rms(on_hold), dominant_frequency(on_hold)
        assert level > SOUND_MIN_RMS, f"B hears silence on hold (RMS {level:.0f}), no music"
        assert abs(peak - TONE_A_HZ) > 3 * TOLERANCE_HZ, f"B still hears A's tone on hold ({peak:.1f} Hz)"
        resumes = len(re.findall(resumed, pbx.log))
        a.command("resume")  # re-INVITE with a=sendrecv
        pbx.wait_for_log(resumed, count=resumes + 1, timeout=5)
        a.drain(LISTEN_S + 0.5)
        assert_hears(b.received_audio()[held_at + SETTLE_SAMPLES:], TONE_A_HZ, "B after resume")
        assert_hears(a.received_audio()[-RATE_HZ:], TONE_B_HZ, "A after resume")
        a.command("hangup")
        b.wait_event("CALL_CLOSED")


def test_blind_transfer_to_a_third_phone(baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    with phone(baresip, pbx, tmp_path, "1001", TONE_A_HZ) as a, \
            phone(baresip, pbx, tmp_path, "1002", TONE_B_HZ, auto_answer=True) as b, \
            phone(baresip, pbx, tmp_path, "1003", TONE_C_HZ, auto_answer=True) as c:
        call_id = dial(a, b, pbx, "1002")
        a.drain(2.0)
        assert_hears(a.received_audio()[SETTLE_SAMPLES:], TONE_B_HZ, "A hears B")
        before_transfer = a.audio_mark()
        b.command("transfer", f"sip:1003@{pbx.host}:{pbx.port}")  # REFER, RFC 3515
        c.wait_event("CALL_ESTABLISHED", timeout=10)
        b.wait_event("CALL_CLOSED", timeout=10)
        a.drain(LISTEN_S + 0.5)
        assert not a.events_of("CALL_CLOSED"), "A's call ended instead of being transferred"
        assert_hears(a.received_audio()[before_transfer + SETTLE_SAMPLES:], TONE_C_HZ, "A hears C")
        assert_hears(c.received_audio()[SETTLE_SAMPLES:], TONE_A_HZ, "C hears A")
        a.command("hangup")
        c.wait_event("CALL_CLOSED")
    rows = call_cdrs(pbx, call_id, 2)
    assert len(rows) == 2, rows
    first, child = rows
    assert (first["caller"], first["callee"], first["disposition"]) == ("1001", "1002", "answered"), first
    assert first["parent_call_id"] is None, first
    assert (child["caller"], child["callee"], child["disposition"]) == ("1001", "1003", "answered"), child
    assert child["parent_call_id"] == first["call_id"], (first, child)
    assert child["call_id"] in json.loads(str(first["transfers"])), first
    assert child["hangup_side"] == "caller", child


def test_sip_info_digits_reach_a_same_codec_callee_once_each(
        baresip: str, sipp: str, pbx: RunningServer, tmp_path: Path) -> None:
    """SIPp calls baresip over PCMU on both legs (the engine's packet-relay fast path) and sends 5, 9, # as
    SIP INFO (application/dtmf-relay): each reaches the callee once, as RFC 4733 events ccpbx generates."""
    with phone(baresip, pbx, tmp_path, "1002", TONE_B_HZ, auto_answer=True) as b:
        result = run_sipp(sipp, "uac_info_digits", pbx.host, pbx.port, tmp_path / "sipp",
                          [["1001", EXTENSIONS["1001"]]], extra=["-s", "1002"])
        assert result.returncode == 0, result.explain()
        b.wait_event("CALL_DTMF_START", timeout=10, count=3)
        b.drain(0.5)
        received = "".join(str(e["param"]) for e in b.events_of("CALL_DTMF_START"))
        assert received == "59#"
