"""Call-control decisions that need no network: NAT reachability, status mapping, generated audio."""

from __future__ import annotations

import numpy as np
import pytest

from ccpbx.pbx.calls import DialOutcome, _disposition_for, default_music_on_hold, reachable_at
from ccpbx.pbx.cdr import Disposition
from ccpbx.pbx.routing import CallRouter, confirmation_beeps, special_information_tone
from ccpbx.pbx.sip.uri import SipUri


def dominant_hz(pcm: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("contact", "source", "expected"), [
    ("sip:1001@127.0.0.1:5062", ("udp", "127.0.0.1", 5062), ("udp", "127.0.0.1", 5062)),
    # same host, the phone listens on its Contact port while sending from another one
    ("sip:1001@127.0.0.1:5062", ("udp", "127.0.0.1", 40000), ("udp", "127.0.0.1", 5062)),
    ("sip:1001@127.0.0.1", ("udp", "127.0.0.1", 40000), ("udp", "127.0.0.1", 5060)),
    # behind NAT: a private Contact, packets from the NAT's public address: answer the source
    ("sip:1001@192.168.1.20:5060", ("udp", "203.0.113.7", 61000), ("udp", "203.0.113.7", 61000)),
    # connection-oriented: always the connection the phone opened
    ("sip:1001@127.0.0.1:5062;transport=tcp", ("tcp", "127.0.0.1", 40001), ("tcp", "127.0.0.1", 40001)),
])
def test_reachable_at(contact: str, source: tuple[str, str, int], expected: tuple[str, str, int]) -> None:
    assert reachable_at(SipUri.parse(contact), source) == expected


@pytest.mark.parametrize(("statuses", "best", "busy"), [
    ((), 480, False),
    ((486,), 486, True),
    ((480, 486), 486, True),
    ((408, 480), 480, False),
    ((487, 404), 404, False),
    ((503, 480), 480, False),
    ((600, 486), 600, True),
])
def test_dial_outcome_best_status(statuses: tuple[int, ...], best: int, busy: bool) -> None:
    outcome = DialOutcome(None, statuses)
    assert outcome.best_status == best
    assert outcome.busy is busy


def test_caller_status_hides_timeouts_and_server_errors() -> None:
    assert CallRouter._caller_status(DialOutcome(None, (408,))) == 480
    assert CallRouter._caller_status(DialOutcome(None, (503,))) == 480
    assert CallRouter._caller_status(DialOutcome(None, (486,))) == 486
    assert CallRouter._caller_status(DialOutcome(None, (488,))) == 488


@pytest.mark.parametrize(("status", "disposition"), [
    (486, Disposition.BUSY), (487, Disposition.CANCELLED), (480, Disposition.NO_ANSWER),
    (408, Disposition.NO_ANSWER), (404, Disposition.REJECTED), (488, Disposition.REJECTED),
    (500, Disposition.FAILED), (None, Disposition.FAILED),
])
def test_disposition_for_status(status: int | None, disposition: Disposition) -> None:
    assert _disposition_for(status) is disposition


def test_generated_audio_is_audible_and_in_range() -> None:
    moh = default_music_on_hold()
    assert moh.dtype == np.int16 and moh.size >= 8000 * 4
    assert 1000 < np.sqrt(np.mean(moh.astype(np.float64) ** 2)) < 12000
    sit = special_information_tone()
    third = int(8000 * 0.33)
    assert [round(dominant_hz(sit[i * third:(i + 1) * third]), -1) for i in range(3)] == [950.0, 1400.0, 1800.0]
    beeps = confirmation_beeps()
    assert beeps.dtype == np.int16 and np.abs(beeps).max() > 5000


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("Session-Expires", None, None),
    ("Session-Expires", "1800", (1800, None)),
    ("Session-Expires", "90;refresher=uac", (90, "uac")),
    ("x", "120 ; refresher = UAS", (120, "uas")),  # the compact form (RFC 4028 §4)
    ("Session-Expires", "600;foo=bar;refresher=uas", (600, "uas")),
    ("Session-Expires", "soon", None),
])
def test_session_expires(name: str, value: str | None, expected: tuple[int, str | None] | None) -> None:
    from ccpbx.pbx.calls import session_expires
    from ccpbx.pbx.sip.message import Request

    request = Request(method="UPDATE")
    if value is not None:
        request.headers.add(name, value)
    assert session_expires(request) == expected
    if value == "soon":
        with pytest.raises(ValueError):
            session_expires(request, strict=True)
