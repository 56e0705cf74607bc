"""RFC 4733 telephone-events (DTMF digits in RTP): payload format, sender and receiver.

* :class:`TelephoneEvent` — the 4-byte payload of RFC 4733 §2.3 (event, E bit, R bit, volume, duration).
* :class:`TelephoneEventSender` — one digit as a packet schedule per RFC 4733 §2.5.1: the first packet has
  the marker bit, every packet of the event carries the event's start timestamp, the duration grows by one
  frame (160 timestamp units at 8 kHz) per 20 ms packet, and the final packet (E bit) is sent three times.
  Events longer than 0xFFFF timestamp units are split into segments per §2.5.1.3.
* :class:`TelephoneEventReceiver` — reports each event once at the first packet that reaches us (so a lost
  first packet does not lose the digit), ignores retransmissions and redundant end packets, and tells a new
  press of the same digit apart by its RTP timestamp (RFC 4733 §2.5.2.1).

These are pure: the caller supplies RTP timestamps and calls the sender once per 20 ms tick.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .errors import MediaConfigError, RtpParseError
from .rtp import ts_diff

__all__ = [
    "DIGITS",
    "END_PACKET_REPEATS",
    "MAX_DURATION",
    "PACKET_SAMPLES",
    "TelephoneEvent",
    "TelephoneEventReceiver",
    "TelephoneEventSender",
]

#: Event codes 0..15 as characters (RFC 4733 §3.2, table 7).
DIGITS: Final = "0123456789*#ABCD"
#: Timestamp units per 20 ms packet at the 8 kHz telephone-event clock.
PACKET_SAMPLES: Final = 160
_SAMPLES_PER_MS: Final = 8
#: The largest duration one event segment can carry (16-bit field, RFC 4733 §2.5.1.3).
MAX_DURATION: Final = 0xFFFF
#: How many times the final (E bit) packet is sent (RFC 4733 §2.5.1.4 recommends three).
END_PACKET_REPEATS: Final = 3
_PAYLOAD: Final = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 event payload.

    Parameters
    ----------
    event : int
        Event code 0..255 (0..15 are the DTMF digits of :data:`DIGITS`).
    end : bool
        The E bit: this packet ends the event.
    volume : int
        Power level 0..63, in -dBm0 (0 is loudest).
    duration : int
        Duration so far in timestamp units, 0..65535.
    """

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first event block of a payload; the R bit is ignored on receipt (§2.3).

        Raises
        ------
        RtpParseError
            The payload is shorter than 4 bytes.
        """
        if len(payload) < _PAYLOAD.size:
            raise RtpParseError(f"telephone-event payload of {len(payload)} bytes, need 4")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    @property
    def digit(self) -> str | None:
        """The DTMF digit for events 0..15, else None."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None

    def serialize(self) -> bytes:
        """The 4-byte payload, R bit zero.

        Raises
        ------
        MediaConfigError
            A field is out of range.
        """
        if not 0 <= self.event <= 255:
            raise MediaConfigError(f"event must be 0..255, got {self.event}")
        if not 0 <= self.volume <= 63:
            raise MediaConfigError(f"volume must be 0..63, got {self.volume}")
        if not 0 <= self.duration <= MAX_DURATION:
            raise MediaConfigError(f"duration must be 0..65535, got {self.duration}")
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


class TelephoneEventSender:
    """Packet schedule for one digit at a time, RFC 4733 §2.5.1.

    Call :meth:`start`, then :meth:`next_packet` once per 20 ms tick until it returns None. Each packet is
    ``(payload, marker, is_end)``; send it with RTP timestamp ``event_start + timestamp_offset``, where
    ``event_start`` is the media timestamp when the marker packet goes out (the offset is 0 except in later
    segments of an event longer than 0xFFFF units, §2.5.1.3).
    """

    __slots__ = ("_elapsed", "_end_sent", "_event", "_remaining", "_segment_start", "_total", "_volume")

    def __init__(self) -> None:
        self._event = 0
        self._volume = 0
        self._total = 0
        self._elapsed = 0
        self._segment_start = 0
        self._end_sent = 0
        self._remaining = 0  # packets left in the schedule; 0 when idle

    @property
    def active(self) -> bool:
        """True while packets remain to be sent."""
        return self._remaining > 0

    @property
    def timestamp_offset(self) -> int:
        """Timestamp units to add to the event's start timestamp for the packet just returned."""
        return self._segment_start

    def start(self, digit: str, duration_ms: int = 100, volume: int = 10) -> None:
        """Begin sending `digit` (one of :data:`DIGITS`) for `duration_ms` milliseconds.

        Raises
        ------
        MediaConfigError
            Unknown digit, a non-positive duration, or a volume outside 0..63.
        """
        if len(digit) != 1 or digit.upper() not in DIGITS:
            raise MediaConfigError(f"digit must be one of {DIGITS!r}, got {digit!r}")
        if duration_ms <= 0:
            raise MediaConfigError(f"duration_ms must be positive, got {duration_ms}")
        if not 0 <= volume <= 63:
            raise MediaConfigError(f"volume must be 0..63, got {volume}")
        self._event = DIGITS.index(digit.upper())
        self._volume = volume
        self._total = duration_ms * _SAMPLES_PER_MS
        self._elapsed = 0
        self._segment_start = 0
        self._end_sent = 0
        self._remaining = 1

    def next_packet(self) -> tuple[bytes, bool, bool] | None:
        """The next ``(payload, marker, is_end)``, or None when the event is over (or none was started)."""
        if not self._remaining:
            return None
        if self._elapsed >= self._total:
            # Final packet, repeated for robustness against loss (§2.5.1.4).
            self._end_sent += 1
            if self._end_sent >= END_PACKET_REPEATS:
                self._remaining = 0
            return self._payload(end=True), False, True
        marker = self._elapsed == 0
        self._elapsed = min(self._elapsed + PACKET_SAMPLES, self._total)
        if self._elapsed - self._segment_start > MAX_DURATION:
            # §2.5.1.3: the previous segment was reported up to 0xFFFF; continue as a new segment whose
            # timestamp is the old one plus 0xFFFF, without the marker bit.
            self._segment_start += MAX_DURATION
        if self._elapsed >= self._total:
            self._end_sent = 1
            return self._payload(end=True), marker, True
        return self._payload(end=False), marker, False

    def _payload(self, end: bool) -> bytes:
        duration = min(self._elapsed - self._segment_start, MAX_DURATION)
        return TelephoneEvent(self._event, end, self._volume, duration).serialize()


class TelephoneEventReceiver:
    """Turns received telephone-event payloads into digits, once per event (RFC 4733 §2.5.2).

    An event is identified by its RTP timestamp: every packet of one event (including its retransmitted end
    packets) carries the same timestamp, and a new press of the same digit has a new one. Packets older
    than the current event (late retransmissions) are ignored, as are continuation segments of a long event
    (§2.5.1.3: same event, not yet ended, timestamp advanced by exactly 0xFFFF).
    """

    __slots__ = ("_duration", "_ended", "_event", "_timestamp")

    def __init__(self) -> None:
        self._timestamp: int | None = None
        self._event = -1
        self._ended = False
        self._duration = 0

    def feed(self, payload: bytes, rtp_timestamp: int) -> str | None:
        """Account one packet; return its digit if it is the first packet seen of a new event.

        Raises
        ------
        RtpParseError
            The payload is shorter than 4 bytes.
        """
        ev = TelephoneEvent.parse(payload)
        last = self._timestamp
        if last is not None:
            delta = ts_diff(rtp_timestamp, last)
            if delta == 0:
                self._ended = self._ended or ev.end
                self._duration = max(self._duration, ev.duration)
                return None
            if delta < 0:
                return None  # a late packet of an earlier event
            if ev.event == self._event and not self._ended and delta == MAX_DURATION:
                # Next segment of a long event (timestamp advanced by exactly 0xFFFF), not a new press.
                self._timestamp = rtp_timestamp & 0xFFFFFFFF
                self._ended = ev.end
                self._duration = ev.duration
                return None
        self._timestamp = rtp_timestamp & 0xFFFFFFFF
        self._event = ev.event
        self._ended = ev.end
        self._duration = ev.duration
        return ev.digit
