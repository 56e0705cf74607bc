"""RFC 4733 telephone-events: payload, sender schedule (§2.5.1) and once-per-event receiver (§2.5.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.errors import MediaConfigError, RtpParseError
from ccpbx.media.telephone_event import (
    DIGITS,
    MAX_DURATION,
    PACKET_SAMPLES,
    TelephoneEvent,
    TelephoneEventReceiver,
    TelephoneEventSender,
)


def test_payload_wire_format() -> None:
    ev = TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert ev.serialize() == bytes((11, 0x80 | 10)) + (800).to_bytes(2, "big")
    assert TelephoneEvent.parse(ev.serialize()) == ev
    assert ev.digit == "#"


def test_r_bit_ignored_and_extra_bytes_tolerated() -> None:
    ev = TelephoneEvent.parse(bytes((5, 0x40 | 0x3F, 0x01, 0x00)) + b"junk")
    assert ev == TelephoneEvent(5, False, 63, 256)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_short_payload_is_a_parse_error(payload: bytes) -> None:
    with pytest.raises(RtpParseError, match="need 4"):
        TelephoneEvent.parse(payload)


@pytest.mark.parametrize(
    "ev", [TelephoneEvent(256, False, 0, 0), TelephoneEvent(1, False, 64, 0), TelephoneEvent(1, False, 0, 65536)]
)
def test_serialize_rejects_out_of_range(ev: TelephoneEvent) -> None:
    with pytest.raises(MediaConfigError):
        ev.serialize()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_payload_roundtrip(event: int, end: bool, volume: int, duration: int) -> None:
    ev = TelephoneEvent(event, end, volume, duration)
    assert TelephoneEvent.parse(ev.serialize()) == ev


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=8))
def test_garbage_parses_or_raises_parse_error(data: bytes) -> None:
    try:
        ev = TelephoneEvent.parse(data)
    except RtpParseError:
        assert len(data) < 4
        return
    assert ev.event == data[0] and ev.serialize()[0] == data[0]


def _drain(sender: TelephoneEventSender) -> list[tuple[TelephoneEvent, bool, bool, int]]:
    out = []
    for _ in range(10_000):
        pkt = sender.next_packet()
        if pkt is None:
            return out
        payload, marker, is_end = pkt
        out.append((TelephoneEvent.parse(payload), marker, is_end, sender.timestamp_offset))
    raise AssertionError("sender never finished")


def test_sender_schedule_100ms() -> None:
    sender = TelephoneEventSender()
    assert sender.next_packet() is None and not sender.active
    sender.start("5", duration_ms=100, volume=7)
    packets = _drain(sender)
    assert [p[0].duration for p in packets] == [160, 320, 480, 640, 800, 800, 800]
    assert [p[1] for p in packets] == [True] + [False] * 6  # marker only on the first packet
    assert [p[2] for p in packets] == [False] * 4 + [True] * 3  # end packet three times
    assert all(p[0].end == p[2] for p in packets)
    assert {p[0].event for p in packets} == {5} and {p[0].volume for p in packets} == {7}
    assert {p[3] for p in packets} == {0}  # one timestamp for the whole event
    assert not sender.active and sender.next_packet() is None


def test_sender_short_and_odd_durations() -> None:
    sender = TelephoneEventSender()
    sender.start("D", duration_ms=10)
    packets = _drain(sender)
    assert [(p[0].duration, p[1], p[2]) for p in packets] == [(80, True, True), (80, False, True), (80, False, True)]
    sender.start("*", duration_ms=50)
    assert [p[0].duration for p in _drain(sender)] == [160, 320, 400, 400, 400]


def test_sender_rejects_bad_input() -> None:
    sender = TelephoneEventSender()
    for digit in ("E", "", "12", "x"):
        with pytest.raises(MediaConfigError):
            sender.start(digit)
    with pytest.raises(MediaConfigError):
        sender.start("1", duration_ms=0)
    with pytest.raises(MediaConfigError):
        sender.start("1", volume=64)


def test_sender_splits_long_events() -> None:
    sender = TelephoneEventSender()
    sender.start("1", duration_ms=10_000)  # 80,000 units > 0xFFFF
    packets = _drain(sender)
    assert all(p[0].duration <= MAX_DURATION for p in packets)
    offsets = sorted({p[3] for p in packets})
    assert offsets == [0, MAX_DURATION]
    assert sum(p[1] for p in packets) == 1  # the new segment carries no marker
    last = packets[-1]
    assert last[2] and last[3] + last[0].duration == 80_000
    # A receiver sees one digit for the whole long event.
    rx = TelephoneEventReceiver()
    digits = [rx.feed(p[0].serialize(), 1000 + p[3]) for p in packets]
    assert [d for d in digits if d] == ["1"]


@pytest.mark.parametrize("digit", list(DIGITS))
def test_every_digit_sent_and_received(digit: str) -> None:
    sender = TelephoneEventSender()
    rx = TelephoneEventReceiver()
    sender.start(digit)
    got = [rx.feed(p[0].serialize(), 4242) for p in _drain(sender)]
    assert [d for d in got if d is not None] == [digit]
    assert got[0] == digit


def _event_packets(event: int, duration: int = 800) -> list[bytes]:
    steps = list(range(PACKET_SAMPLES, duration, PACKET_SAMPLES))
    body = [TelephoneEvent(event, False, 10, d).serialize() for d in steps]
    return body + [TelephoneEvent(event, True, 10, duration).serialize()] * 3


def test_receiver_reports_once_with_redundant_end_packets() -> None:
    rx = TelephoneEventReceiver()
    results = [rx.feed(p, 16000) for p in _event_packets(3)]
    assert results == ["3"] + [None] * (len(results) - 1)


def test_receiver_lost_first_packets_still_reports() -> None:
    rx = TelephoneEventReceiver()
    packets = _event_packets(9)
    assert rx.feed(packets[2], 500) == "9"
    assert [rx.feed(p, 500) for p in packets[3:]] == [None] * (len(packets) - 3)
    # Only the end packets arrived for the next event: still one digit.
    rx2 = TelephoneEventReceiver()
    ends = _event_packets(0)[-3:]
    assert [rx2.feed(p, 7) for p in ends] == ["0", None, None]


def test_receiver_same_digit_twice_told_apart_by_timestamp() -> None:
    rx = TelephoneEventReceiver()
    first = [rx.feed(p, 1000) for p in _event_packets(1)]
    second = [rx.feed(p, 1000 + 1600) for p in _event_packets(1)]
    assert first.count("1") == 1 and second.count("1") == 1
    # Even when the first press lost all its end packets.
    rx = TelephoneEventReceiver()
    assert rx.feed(_event_packets(1)[0], 1000) == "1"
    assert rx.feed(_event_packets(1)[0], 1000 + 1280) == "1"


def test_receiver_ignores_late_packets_of_previous_event() -> None:
    rx = TelephoneEventReceiver()
    a = _event_packets(4)
    b = _event_packets(6)
    assert rx.feed(a[0], 100) == "4"
    assert rx.feed(b[0], 2000) == "6"
    assert rx.feed(a[-1], 100) is None  # a retransmitted end of "4" arriving after "6" started
    assert rx.feed(b[-1], 2000) is None


def test_receiver_timestamp_wrap() -> None:
    rx = TelephoneEventReceiver()
    assert rx.feed(_event_packets(2)[0], 0xFFFFFF00) == "2"
    assert rx.feed(_event_packets(2)[-1], 0xFFFFFF00) is None
    assert rx.feed(_event_packets(2)[0], 0x00000100) == "2"


def test_receiver_non_digit_events_not_reported() -> None:
    rx = TelephoneEventReceiver()
    assert rx.feed(TelephoneEvent(16, False, 10, 160).serialize(), 10) is None  # flash
    assert rx.feed(TelephoneEvent(16, True, 10, 800).serialize(), 10) is None
    with pytest.raises(RtpParseError):
        rx.feed(b"\x01", 10)
