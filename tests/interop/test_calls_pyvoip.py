"""Calls with pyVoIP 1.6.8, a softphone stack no one here wrote: it is called, and it calls.

pyVoIP answers a call from a SIPp UAC through the B2BUA; SIPp runs with ``-rtp_echo``, so the tone pyVoIP
writes travels pyVoIP -> ccpbx -> SIPp, is echoed, and comes back SIPp -> ccpbx -> pyVoIP: audio through
both anchored legs, both directions (RFC 3550 over the media engine's relay).

pyVoIP cannot place an authenticated call: its ``SIPClient.invite`` only understands a ``401`` challenge, so our
``407 Proxy-Authenticate`` (RFC 3261 §22.3) is treated as an unknown response and the INVITE is never retried
with credentials. The second test pins what does hold: the unauthenticated INVITE is challenged, nothing rings,
and no CDR is written. The third places pyVoIP's call the way an administrator would for such a phone: from a
``[auth] trusted_networks`` network, where an INVITE from the address its extension registered from is not
challenged (and pyVoIP's ACK, which carries a To tag of its own invention, still acknowledges our 200).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.calls import cdr_rows
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, serving
from tests.interop.sipp import free_media_port, free_port, run_sipp

pyvoip = pytest.importorskip("pyVoIP.VoIP")

SAMPLE_RATE_HZ = 8000
FRAME_BYTES = 160  # pyVoIP's 20 ms frame of 8-bit unsigned linear samples
TONE_HZ = 700.0
TONE_SECONDS = 4
REGISTER_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 20.0
SILENCE = 0x80  # pyVoIP's 8-bit linear audio is offset by 128: 0x80 is zero amplitude


def tone_u8(freq_hz: float, seconds: float, amplitude: int = 90) -> bytes:
    """A sine in pyVoIP's audio format: unsigned 8-bit linear, 8 kHz, bias 128."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (SILENCE + amplitude * np.sin(2 * math.pi * freq_hz * t)).round().astype(np.uint8).tobytes()


def dominant_hz(u8: bytes) -> float:
    """The strongest frequency of unsigned 8-bit 8 kHz audio (Hann-windowed FFT)."""
    x = np.frombuffer(u8, dtype=np.uint8).astype(np.float64) - SILENCE
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * SAMPLE_RATE_HZ / x.size)


class Callee:
    """pyVoIP's callCallback: answers, writes a tone, keeps every non-silent frame it reads until the BYE."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.ended = threading.Event()
        self.frames: list[bytes] = []
        self.read_frames = 0
        self.error: BaseException | None = None

    def __call__(self, call: Any) -> None:
        from pyVoIP.VoIP import CallState

        try:
            call.answer()
            self.answered.set()
            call.write_audio(tone_u8(TONE_HZ, TONE_SECONDS))
            deadline = time.monotonic() + CALL_TIMEOUT_S
            while call.state == CallState.ANSWERED and time.monotonic() < deadline:
                frame = call.read_audio(FRAME_BYTES, blocking=False)
                self.read_frames += 1
                if frame != bytes([SILENCE]) * FRAME_BYTES:
                    self.frames.append(frame)
                time.sleep(0.01)
        except BaseException as exc:  # a thread root: surfaced to the test through self.error
            self.error = exc
        finally:
            self.ended.set()


def start_phone(server: RunningServer, user: str, **kwargs: Any) -> Any:
    """A registered pyVoIP phone on free loopback ports; the caller must ``stop()`` it."""
    from pyVoIP.VoIP import PhoneStatus, VoIPPhone

    rtp = free_port()
    phone = VoIPPhone(server.host, server.port, user, USERS[user], myIP="127.0.0.1", sipPort=free_port(),
                      rtpPortLow=rtp, rtpPortHigh=rtp + 20, **kwargs)
    phone.start()
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while phone.get_status() != PhoneStatus.REGISTERED and time.monotonic() < deadline:
        time.sleep(0.05)
    if phone.get_status() != PhoneStatus.REGISTERED:
        phone.stop()
        raise AssertionError(f"pyVoIP {user} did not register: {phone.get_status()}\n{server.log[-3000:]}")
    server.wait_for_log(rf"sip\.register\.ok\s.*aor={user} contacts=1")
    return phone


def test_pyvoip_is_called_answers_and_audio_flows_both_ways(server: RunningServer, sipp: str,
                                                           tmp_path: Path) -> None:
    callee = Callee()
    phone = start_phone(server, "2001", callCallback=callee)
    try:
        result = run_sipp(sipp, "uac_call", server.host, server.port, tmp_path / "uac",
                          [["2002", USERS["2002"], "3000"]],
                          extra=["-s", "2001", "-d", "3000", "-rtp_echo", "-mp", str(free_media_port())])
        assert result.returncode == 0, result.explain() + server.log[-3000:]
        assert callee.ended.wait(CALL_TIMEOUT_S), "pyVoIP never saw the BYE"
    finally:
        phone.stop()
    assert callee.error is None, repr(callee.error)
    assert callee.answered.is_set()
    # 3 s of talk minus the round trip's start-up: well over a second of echoed tone must have come back.
    assert len(callee.frames) >= 50, (len(callee.frames), callee.read_frames)
    heard = b"".join(callee.frames)
    assert abs(dominant_hz(heard) - TONE_HZ) < 20.0, dominant_hz(heard)
    rows = cdr_rows(server)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["caller"], row["callee"], row["destination"]) == ("2002", "2001", "extension:2001")
    assert row["disposition"] == "answered" and row["hangup_side"] == "caller", row
    assert 2.5 < float(row["end"]) - float(row["answer"]) < 10.0  # type: ignore[arg-type]


def test_pyvoip_cannot_answer_the_invite_challenge_and_nothing_rings(server: RunningServer) -> None:
    """pyVoIP's ``invite()`` returns on our 100 Trying; the 407 that follows reaches its receive loop, which
    drops every response but 200/404/503 ("TODO: Add 500 Error"), so it never ACKs it nor retries with
    Proxy-Authorization. What must hold on our side: the unauthenticated INVITE reaches nobody and leaves no CDR.
    """
    from pyVoIP.VoIP import CallState

    rung = threading.Event()
    callee = start_phone(server, "2001", callCallback=lambda call: rung.set())
    try:
        caller = start_phone(server, "2002")
        try:
            placed: dict[str, Any] = {}
            dialer = threading.Thread(target=lambda: placed.update(call=caller.call("2001")), daemon=True)
            dialer.start()
            dialer.join(CALL_TIMEOUT_S)
            assert not dialer.is_alive(), "pyVoIP's call() did not return"
            # Long enough for the 407 and three of its Timer G retransmissions (0.5, 1, 2 s; RFC 3261 §17.2.1).
            assert not rung.wait(4.0), "an unauthenticated INVITE was let through to 2001"
            assert placed["call"].state == CallState.DIALING
        finally:
            caller.stop()
    finally:
        callee.stop()
    assert "call.started" not in server.log, server.log[-3000:]
    assert cdr_rows(server, timeout=0.5) == []


@pytest.fixture
def trusting_server(tmp_path: Path) -> Any:
    """A server that lets registered phones on 127.0.0.1 call without the 407 round (``[auth]
    trusted_networks``): pyVoIP cannot answer a challenge to an INVITE, so this is how it places calls."""

    with serving(tmp_path / "data", config_text='[auth]\ntrusted_networks = ["127.0.0.1/32"]\n',
                       extensions=USERS) as srv:
        yield srv


def test_pyvoip_calls_an_extension_from_a_trusted_network(trusting_server: RunningServer) -> None:
    from pyVoIP.VoIP import CallState

    server = trusting_server
    callee = Callee()
    answering = start_phone(server, "2001", callCallback=callee)
    try:
        caller = start_phone(server, "2002")
        try:
            call = caller.call("2001")
            deadline = time.monotonic() + CALL_TIMEOUT_S
            while call.state != CallState.ANSWERED and time.monotonic() < deadline:
                time.sleep(0.05)
            assert call.state == CallState.ANSWERED, (call.state, server.log[-3000:])
            call.write_audio(tone_u8(500.0, TONE_SECONDS))
            heard: list[bytes] = []
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                frame = call.read_audio(FRAME_BYTES, blocking=False)
                if frame != bytes([SILENCE]) * FRAME_BYTES:
                    heard.append(frame)
                time.sleep(0.01)
            call.hangup()
            assert callee.ended.wait(CALL_TIMEOUT_S), "the callee never saw the BYE"
        finally:
            caller.stop()
    finally:
        answering.stop()
    assert callee.error is None, repr(callee.error)
    assert "sip.invite.trusted" in server.log
    assert len(heard) >= 50 and abs(dominant_hz(b"".join(heard)) - TONE_HZ) < 20.0, len(heard)
    assert len(callee.frames) >= 50 and abs(dominant_hz(b"".join(callee.frames)) - 500.0) < 20.0
    row = cdr_rows(server)[0]
    assert (row["caller"], row["callee"], row["disposition"], row["hangup_side"]) == (
        "2002", "2001", "answered", "caller"), row
