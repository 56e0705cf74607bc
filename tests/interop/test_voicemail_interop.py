"""Voicemail end to end with real clients against ``ccpbx serve``: a SIPp caller leaves a message, the owner on
baresip hears it through the ``*97`` menu, a SIPp lamp follows the box and the owner gets the e-mail.

- 2001's no-answer forward is ``voicemail:2001`` (set with ``ccpbx ext forward``, its PIN and e-mail address
  with ``ccpbx voicemail pin`` / ``email``); 2001 is not registered when 2002 calls, so the call goes to the
  unavailable greeting.
- The caller (SIPp) streams PCMU from a WAV: silence through the greeting and the beep, then a 700 Hz tone,
  then presses ``#`` (SIP INFO). The stored WAV's loud stretch must be 700 Hz.
- The owner (baresip, RFC 4733 keys) dials ``*97``, keys the PIN and ``1``; what baresip decoded must hold
  the 700 Hz message.
- SIPp subscribed to 2001's ``message-summary`` gets ``Voice-Message`` 0/0, then 1/0, then 0/1 once heard.
- The e-mail with the WAV attached reaches an SMTP sink on loopback.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ccpbx.ivr.prompt_library import SHIPPED_PROMPTS
from ccpbx.media.g711 import ulaw_encode
from tests.interop.baresip import baresip_phone, dominant_frequency, rms
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, ccpbx, serving
from tests.interop.sipp import SCENARIOS, free_port, run_sipp
from tests.interop.test_blf_sipp import _notify_bodies, _stop
from tests.interop.test_call_api_sipp import _write_ulaw_wav
from tests.smtp_sink import SmtpSink

RATE = 8000
MESSAGE_HZ = 700
OWNER_TONE_HZ = 1400
PIN = "4321"
OWNER_EMAIL = "owner-2001@example.com"
TOLERANCE_HZ = 15.0
MESSAGE_S = 2.0
BEEP_S = 0.4  # ivr.prompt_library DEFAULT_BEEP_MS

pytestmark = pytest.mark.timeout(120)


def prompt_seconds(*names: str) -> float:
    total = 0.0
    for name in names:
        with wave.open(str(SHIPPED_PROMPTS / "en" / f"{name}.wav")) as w:
            total += w.getnframes() / w.getframerate()
    return total


def sine(hz: float, seconds: float, level: int = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * hz * t) * level).astype(np.int16)


def loud_dominant_hz(pcm: npt.NDArray[np.int16], threshold: int = 2000) -> float:
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    assert loud.size > RATE, f"only {loud.size} loud samples"
    return dominant_frequency(pcm[loud[0]:loud[-1] + 1])


def tone_seconds(pcm: npt.NDArray[np.int16], hz: float) -> float:
    """How long ``pcm`` holds a loud ``hz`` tone, counted in 100 ms windows (speech prompts around it are not a
    steady tone: they never count)."""
    window = RATE // 10
    found = 0
    for i in range(0, len(pcm) - window + 1, window):
        chunk = pcm[i:i + window]
        if rms(chunk) > 2000 and abs(dominant_frequency(chunk) - hz) <= 40:
            found += 1
    return found / 10


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def pbx(tmp_path: Path, sink: SmtpSink) -> Iterator[RunningServer]:
    rtp_min = random.randrange(20000, 38000, 2)
    config = (f"[registrar]\nmin_expires = 10\n[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + 400}\n"
              f'[voicemail]\nmin_message = 1.0\nsmtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\n'
              'smtp_from = "pbx@example.com"\n')
    with serving(tmp_path / "data", config_text=config, extensions=USERS) as srv:
        yield srv


def _admin(pbx: RunningServer, *args: str) -> str:
    result = ccpbx(pbx.data_dir, *args, config=pbx.config)
    return result.stdout


def _watcher(sipp: str, pbx: RunningServer, work: Path, user: str) -> subprocess.Popen[str]:
    """SIPp subscribed to ``user``'s own message-summary, logging every message to ``messages.log``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "watcher.csv").write_text(
        f"SEQUENTIAL\n{user};[authentication username={user} password={USERS[user]}]\n")
    cmd = [sipp, f"{pbx.host}:{pbx.port}", "-sf", str(SCENARIOS / "watch_mwi.xml"), "-inf",
           str(work / "watcher.csv"), "-s", user, "-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()),
           "-timeout", "90s", "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(work / "errors.log"),
           "-trace_msg", "-message_file", str(work / "messages.log")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)


def _counts(work: Path) -> list[tuple[str, str]]:
    log = work / "messages.log"
    found = []
    for state, body in _notify_bodies(log.read_text(errors="replace") if log.exists() else ""):
        text = body.decode()
        counts = re.search(r"(?m)^Voice-Message: (\d+/\d+) \(0/0\)$", text)
        assert counts and re.search(r"(?m)^Message-Account: sip:2001@\S+$", text), text
        waiting = "yes" if "Messages-Waiting: yes" in text else "no"
        assert (waiting == "yes") == (not counts.group(1).startswith("0/")), text
        found.append((state.split(";")[0], counts.group(1)))
    return found


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not seen within {timeout} s"
        time.sleep(0.1)


def _messages(pbx: RunningServer) -> list[dict[str, object]]:
    with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM voicemail_messages ORDER BY id")]


def test_a_message_is_left_heard_through_the_menu_lit_and_mailed(
        pbx: RunningServer, sipp: str, baresip: str, sink: SmtpSink, tmp_path: Path) -> None:
    assert "forward" in _admin(pbx, "ext", "forward", "2001", "--no-answer", "voicemail:2001")
    _admin(pbx, "voicemail", "pin", "2001", "--pin", PIN)
    _admin(pbx, "voicemail", "email", "2001", OWNER_EMAIL)

    lamp = tmp_path / "lamp"
    watcher = _watcher(sipp, pbx, lamp, "2001")
    try:
        pbx.wait_for_log(r"sip\.subscription\.started.*package=message-summary", timeout=15)
        _wait(lambda: _counts(lamp) == [("active", "0/0")], 10, "the first NOTIFY (0/0)")

        # -- 2002 leaves a message: silence through the greeting and the beep, a tone, then "#"
        greeting_s = prompt_seconds("vm-person-at", "2", "0", "0", "1", "vm-unavailable", "vm-leave-message")
        lead_s = greeting_s + BEEP_S + 1.0
        caller = tmp_path / "caller"
        caller.mkdir()
        pcm = np.concatenate([np.zeros(int(RATE * lead_s), np.int16), sine(MESSAGE_HZ, MESSAGE_S),
                              np.zeros(RATE // 2, np.int16)])
        _write_ulaw_wav(caller / "message.wav", ulaw_encode(pcm).tobytes())
        result = run_sipp(sipp, "uac_leave_message", pbx.host, pbx.port, caller, [["2002", USERS["2002"]]],
                          timeout_s=60, extra=["-s", "2001", "-d", str(int((lead_s + MESSAGE_S + 0.3) * 1000))])
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
        [message] = _messages(pbx)
        assert (message["mailbox"], message["folder"], message["caller"]) == ("2001", "new", "2002")
        path = Path(str(message["path"]))
        with wave.open(str(path)) as w:
            stored = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert abs(loud_dominant_hz(stored) - MESSAGE_HZ) <= TOLERANCE_HZ
        assert tone_seconds(stored, MESSAGE_HZ) >= MESSAGE_S - 0.3
        _wait(lambda: [c for _, c in _counts(lamp)] == ["0/0", "1/0"], 10, "the lamp lit (1/0)")
        listed = _admin(pbx, "voicemail", "list", "2001")
        assert "2002" in listed and "new" in listed

        # -- the owner dials *97, keys the PIN and 1 (RFC 4733), and hears the message
        with baresip_phone(baresip, pbx, tmp_path / "owner", "2001", USERS["2001"], tone_hz=OWNER_TONE_HZ) as owner:
            owner.command("dial", f"sip:*97@{pbx.host}:{pbx.port}")
            owner.wait_event("CALL_ESTABLISHED")
            owner.drain(1.0)  # into the PIN prompt
            owner.command("sndcode", f"{PIN}#")
            owner.drain(2.0)  # the PIN checked, "you have one new message..."
            mark = owner.audio_mark()
            owner.command("sndcode", "1")
            _wait(lambda: tone_seconds(owner.received_audio()[mark:], MESSAGE_HZ) >= MESSAGE_S - 0.3, 25,
                  "the message in what the owner hears")
            _wait(lambda: [c for _, c in _counts(lamp)][:3] == ["0/0", "1/0", "0/1"], 15, "the lamp off (0/1)")
            owner.command("hangup")
            owner.wait_event("CALL_CLOSED")
    finally:
        code, out = _stop(watcher, 30)
    errors = lamp / "errors.log"
    assert code == 0, out + (errors.read_text() if errors.exists() else "") + pbx.log[-3000:]
    assert _counts(lamp) == [("active", "0/0"), ("active", "1/0"), ("active", "0/1"), ("terminated", "0/1")]
    assert [m["folder"] for m in _messages(pbx)] == ["saved"]

    [mail] = sink.wait(1)
    assert mail.recipients == [OWNER_EMAIL]
    parsed = mail.parsed()
    assert "2002" in str(parsed["Subject"])
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content_type() == "audio/wav" and attachment.get_content() == path.read_bytes()

    export = tmp_path / "export"
    assert "exported 1 message" in _admin(pbx, "voicemail", "export", "2001", "--output", str(export))
    assert [p.read_bytes() for p in export.glob("*.wav")] == [path.read_bytes()]
