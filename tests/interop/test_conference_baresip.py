"""A conference room with real baresip 1.0.0 phones: three members hear each other (and not themselves), a
fourth past ``max_members`` is refused cleanly, and the CDRs name the room.

Every phone sends its own sine (600, 1000 and 1400 Hz; the refused one 1800 Hz). What a member receives, decoded
by baresip and dumped to WAV, must show the other two members' tones as its two strongest spectral peaks and
carry almost nothing at its own frequency: the engine mixes minus the listener.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.interop.baresip import BaresipPhone, band_level, baresip_phone, rms, spectral_peaks
from tests.interop.server import RunningServer, serving

EXTENSIONS = {"3101": "pw-3101-conference", "3102": "pw-3102-conference", "3103": "pw-3103-conference",
              "3104": "pw-3104-conference"}
TONES_HZ = {"3101": 600, "3102": 1000, "3103": 1400, "3104": 1800}
MEMBERS = ("3101", "3102", "3103")
ROOM, ROOM_NUMBER = "standup", "800"
TOLERANCE_HZ = 20.0
RATE_HZ = 8000
MUSIC_MIN_RMS = 300.0  # the generated music on hold is quiet (RMS ~1,300)
MIX_MIN_RMS = 2000.0  # two of ausine's sines after G.711 round trips; silence or comfort noise is near 0
OWN_TONE_MAX_RATIO = 0.05  # own frequency's magnitude against the weaker of the two others (mix-minus)
SETTLE_SAMPLES = RATE_HZ // 2  # skip 0.5 s after a change: jitter buffers, the join beep
LISTEN_S = 2.0
RTP_RANGE_LO, RTP_RANGE_HI, RTP_RANGE_PORTS = 20000, 38000, 400

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[RunningServer]:
    rtp_min = random.randrange(RTP_RANGE_LO, RTP_RANGE_HI, 2)  # see test_calls_baresip.py (and its workers = 0)
    config = (f"[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + RTP_RANGE_PORTS}\nworkers = 0\n\n"
              f'[[conference]]\nname = "{ROOM}"\nnumber = "{ROOM_NUMBER}"\nmax_members = 3\n')
    with serving(tmp_path / "data", extensions=EXTENSIONS, config_text=config) as srv:
        yield srv


def assert_hears_the_others(pcm: npt.NDArray[np.int16], user: str) -> None:
    own = TONES_HZ[user]
    others = sorted(TONES_HZ[m] for m in MEMBERS if m != user)
    assert len(pcm) >= RATE_HZ, f"{user}: only {len(pcm)} samples received"
    level = rms(pcm)
    assert level > MIX_MIN_RMS, f"{user}: received audio is near silence (RMS {level:.0f})"
    peaks = sorted(spectral_peaks(pcm, 2))
    assert all(abs(p - f) <= TOLERANCE_HZ for p, f in zip(peaks, others, strict=True)), (
        f"{user}: strongest peaks {peaks} Hz, expected the others' {others} Hz")
    weaker = min(band_level(pcm, f) for f in others)
    mine = band_level(pcm, own)
    assert mine < OWN_TONE_MAX_RATIO * weaker, (
        f"{user} hears its own {own} Hz at {mine / weaker:.1%} of the others' level (no mix-minus?)")


def cdr_rows(pbx: RunningServer, sip_call_ids: list[str], timeout: float = 5.0) -> dict[str, dict[str, object]]:
    """The finished CDR row of each SIP call, by Call-ID."""
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
            db.row_factory = sqlite3.Row
            marks = ",".join("?" * len(sip_call_ids))
            rows = {str(r["sip_call_id"]): dict(r) for r in db.execute(
                f'SELECT * FROM cdrs WHERE "end" IS NOT NULL AND sip_call_id IN ({marks})', sip_call_ids)}
        if len(rows) == len(sip_call_ids):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"CDRs of {sip_call_ids} not all written in {timeout}s: {rows}")


def test_three_phones_in_a_room_hear_each_other_and_a_fourth_is_refused(
        baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    with ExitStack() as stack:
        phones: dict[str, BaresipPhone] = {
            user: stack.enter_context(baresip_phone(baresip, pbx, tmp_path / user, user, EXTENSIONS[user],
                                                    tone_hz=TONES_HZ[user]))
            for user in (*MEMBERS, "3104")}
        uri = f"sip:{ROOM_NUMBER}@{pbx.host}:{pbx.port}"
        call_ids: dict[str, str] = {}
        for count, user in enumerate(MEMBERS, start=1):
            phones[user].command("dial", uri)
            call_ids[user] = str(phones[user].wait_event("CALL_ESTABLISHED", timeout=10)["id"])
            pbx.wait_for_log(rf"conference\.joined\s.*members={count}", timeout=5)
        phones["3101"].drain(0.5)  # the dumps are written in blocks: let them catch up before marking
        marks = {user: phones[user].audio_mark() for user in MEMBERS}
        phones["3101"].drain(LISTEN_S + 0.5)
        for user in MEMBERS:
            assert_hears_the_others(phones[user].received_audio()[marks[user] + SETTLE_SAMPLES:], user)

        # a fourth caller: the room is full, refused before any answer, the others undisturbed
        fourth = phones["3104"]
        fourth.command("dial", uri)
        closed = fourth.wait_event("CALL_CLOSED", timeout=10)
        assert re.search(r"\b486\b", str(closed.get("param"))), closed
        assert not fourth.events_of("CALL_ESTABLISHED"), "the fourth caller was answered"
        refused_id = str(closed["id"])
        pbx.wait_for_log(r"conference\.full\s.*members=3", timeout=5)
        marks = {user: phones[user].audio_mark() for user in MEMBERS}
        phones["3101"].drain(LISTEN_S + 0.5)
        for user in MEMBERS:
            assert not phones[user].events_of("CALL_CLOSED"), f"{user}'s call ended"
            assert_hears_the_others(phones[user].received_audio()[marks[user] + SETTLE_SAMPLES:], user)

        for user in MEMBERS:
            phones[user].command("hangup")
            phones[user].wait_event("CALL_CLOSED", timeout=10)
        pbx.wait_for_log(r"conference\.left\s.*members=0", timeout=5)

    rows = cdr_rows(pbx, [*call_ids.values(), refused_id])
    for user in MEMBERS:
        row = rows[call_ids[user]]
        assert (row["caller"], row["callee"], row["destination"]) == (user, ROOM_NUMBER, f"conference:{ROOM}"), row
        assert row["disposition"] == "answered" and row["hangup_side"] == "caller", row
        assert float(row["end"]) - float(row["answer"]) > 2 * LISTEN_S, row  # type: ignore[arg-type]
    refused = rows[refused_id]
    assert (refused["caller"], refused["destination"]) == ("3104", f"conference:{ROOM}"), refused
    assert (refused["disposition"], refused["hangup_status"], refused["answer"]) == ("busy", 486, None), refused
    assert "Traceback" not in pbx.log, pbx.log[-6000:]


@pytest.fixture
def pin_pbx(tmp_path: Path) -> Iterator[RunningServer]:
    rtp_min = random.randrange(RTP_RANGE_LO, RTP_RANGE_HI, 2)
    config = (f"[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + RTP_RANGE_PORTS}\nworkers = 0\n\n"
              f'[[conference]]\nname = "board"\nnumber = "{ROOM_NUMBER}"\npin = "2468"\n')
    with serving(tmp_path / "data", extensions=EXTENSIONS, config_text=config) as srv:
        yield srv


def test_a_pin_room_takes_the_right_digits_and_hangs_up_after_three_wrong_tries(
        baresip: str, pin_pbx: RunningServer, tmp_path: Path) -> None:
    pbx = pin_pbx
    uri = f"sip:{ROOM_NUMBER}@{pbx.host}:{pbx.port}"
    with ExitStack() as stack:
        a, b = (stack.enter_context(baresip_phone(baresip, pbx, tmp_path / user, user, EXTENSIONS[user],
                                                  tone_hz=TONES_HZ[user])) for user in ("3101", "3102"))
        a.command("dial", uri)
        a.wait_event("CALL_ESTABLISHED", timeout=10)
        a.command("sndcode", "1357")  # RFC 4733 telephone-events; four digits end an attempt at a 4-digit PIN
        pbx.wait_for_log(r"conference\.pin\.wrong\s.*tries_left=2", timeout=10)
        a.command("sndcode", "2468#")
        pbx.wait_for_log(r"conference\.joined\s.*members=1 room=board", timeout=10)
        a.drain(0.5)
        mark = a.audio_mark()
        a.drain(LISTEN_S)
        alone = a.received_audio()[mark + SETTLE_SAMPLES:]
        assert len(alone) >= RATE_HZ // 2 and rms(alone) > MUSIC_MIN_RMS, f"alone, A hears silence ({rms(alone):.0f})"
        assert band_level(alone, TONES_HZ["3101"]) < OWN_TONE_MAX_RATIO * band_level(alone, 0, half_width_hz=4000)

        b.command("dial", uri)
        b.wait_event("CALL_ESTABLISHED", timeout=10)
        for digits, tries_left, seen in (("1#", 2, 2), ("22#", 1, 1), ("333#", 0, 1)):  # A's wrong try was "2"
            b.command("sndcode", digits)
            pbx.wait_for_log(rf"conference\.pin\.wrong\s.*tries_left={tries_left}", timeout=10, count=seen)
        b.wait_event("CALL_CLOSED", timeout=10)  # hung up by the server
        pbx.wait_for_log(r"conference\.pin\.failed\s.*room=board", timeout=5)
        assert not a.events_of("CALL_CLOSED"), "the member's call ended"
        a.command("hangup")
        a.wait_event("CALL_CLOSED", timeout=10)
        pbx.wait_for_log(r"conference\.left\s.*members=0", timeout=5)
    assert len(re.findall(r"conference\.joined", pbx.log)) == 1, pbx.log[-4000:]


def test_a_caller_blind_transferred_into_the_room_meets_the_next_member(
        baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    uri = f"sip:{ROOM_NUMBER}@{pbx.host}:{pbx.port}"
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(baresip_phone(baresip, pbx, tmp_path / user, user, EXTENSIONS[user],
                                                     tone_hz=TONES_HZ[user], auto_answer=user == "3102"))
                   for user in MEMBERS)
        a.command("dial", f"sip:3102@{pbx.host}:{pbx.port}")
        call_id = str(a.wait_event("CALL_ESTABLISHED", timeout=10)["id"])
        b.wait_event("CALL_ESTABLISHED", timeout=10)
        b.command("transfer", uri)  # REFER to the room's number: the registry hands A over to the room
        b.wait_event("CALL_CLOSED", timeout=10)
        pbx.wait_for_log(r"conference\.joined\s.*members=1 room=standup", timeout=10)
        c.command("dial", uri)
        c.wait_event("CALL_ESTABLISHED", timeout=10)
        pbx.wait_for_log(r"conference\.joined\s.*members=2 room=standup", timeout=10)
        a.drain(0.5)
        marks = {"a": a.audio_mark(), "c": c.audio_mark()}
        a.drain(LISTEN_S + 0.5)
        for who, phone, other in (("a", a, "3103"), ("c", c, "3101")):
            heard = phone.received_audio()[marks[who] + SETTLE_SAMPLES:]
            assert len(heard) >= RATE_HZ and rms(heard) > MIX_MIN_RMS, f"{who} hears near silence"
            assert abs(spectral_peaks(heard, 1)[0] - TONES_HZ[other]) <= TOLERANCE_HZ, (who, spectral_peaks(heard, 3))
        assert not a.events_of("CALL_CLOSED"), "A's call ended instead of being transferred"
        a.command("hangup")
        c.command("hangup")
        a.wait_event("CALL_CLOSED", timeout=10)
        c.wait_event("CALL_CLOSED", timeout=10)
        pbx.wait_for_log(r"conference\.left\s.*members=0", timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
            destinations = [r[0] for r in db.execute(
                'SELECT destination FROM cdrs WHERE "end" IS NOT NULL AND sip_call_id = ? ORDER BY start', (call_id,))]
        if len(destinations) == 2:
            break
        time.sleep(0.1)
    assert destinations == ["extension:3102", f"conference:{ROOM}"], destinations
