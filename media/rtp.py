"""RTP and RTCP wire formats and receiver statistics, RFC 3550.

* :class:`RtpPacket` — the RTP fixed header, CSRC list, header extension and padding (RFC 3550 §5.1, §5.3.1).
* RTCP (RFC 3550 §6.4-6.6): :class:`SenderReport`, :class:`ReceiverReport` with :class:`ReportBlock`,
  :class:`SourceDescription` (SDES, CNAME at least), :class:`Bye`, and :class:`UnknownRtcp` for anything else
  (APP, feedback, XR) so a compound packet always round-trips. :func:`parse_rtcp` / :func:`serialize_rtcp`
  handle compound packets (§6.1).
* :class:`RtpReceiverStats` — per-source sequence validation, loss and jitter (RFC 3550 appendix A.1, A.3,
  A.8) feeding the report blocks.
* Sequence-number arithmetic modulo 2^16 (:func:`seq_diff`, :func:`seq_add`, :func:`seq_newer`) and
  timestamp arithmetic modulo 2^32 (:func:`ts_diff`).

Parsing arbitrary bytes either returns a value or raises :class:`~ccpbx.media.errors.RtpParseError`; it never
lets an ``IndexError`` or ``struct.error`` escape. Building from bad field values raises
:class:`~ccpbx.media.errors.MediaConfigError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from .errors import MediaConfigError, RtpParseError

__all__ = [
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MIN_SEQUENTIAL",
    "RTCP_HEADER",
    "RTP_HEADER",
    "RTP_HEADER_BYTES",
    "RTP_VERSION",
    "SEQ_MOD",
    "TS_MOD",
    "Bye",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "RtcpType",
    "RtpPacket",
    "RtpParseError",
    "RtpReceiverStats",
    "SdesChunk",
    "SdesItem",
    "SdesType",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcp",
    "parse_rtcp",
    "seq_add",
    "seq_diff",
    "seq_newer",
    "serialize_rtcp",
    "ts_diff",
]

RTP_VERSION: Final = 2
#: The fixed 12-byte RTP header: V/P/X/CC, M/PT, sequence, timestamp, SSRC (RFC 3550 §5.1).
RTP_HEADER: Final = struct.Struct("!BBHII")
RTP_HEADER_BYTES: Final = RTP_HEADER.size
#: The 4-byte RTCP common header: V/P/count, packet type, length in 32-bit words minus one (§6.4.1).
RTCP_HEADER: Final = struct.Struct("!BBH")
_EXT_HEADER: Final = struct.Struct("!HH")
_SR_INFO: Final = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packet and octet counts
_REPORT_BLOCK: Final = struct.Struct("!IB3sIIII")

SEQ_MOD: Final = 1 << 16
TS_MOD: Final = 1 << 32
# RFC 3550 appendix A.1: packets needed in sequence before a source is valid, the largest forward jump
# taken as loss, and the largest backward jump taken as reordering (in sequence numbers).
MIN_SEQUENTIAL: Final = 2
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
_CUMULATIVE_LOST_MAX: Final = 0x7FFFFF
_CUMULATIVE_LOST_MIN: Final = -0x800000


# --- sequence and timestamp arithmetic -------------------------------------------------------------------


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit RTP sequence numbers, as a signed int16 (in ``[-32768, 32767]``)."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2^16."""
    return (a + n) & 0xFFFF


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number `a` comes after `b`, allowing for wrap-around (RFC 1982 style)."""
    return seq_diff(a, b) > 0


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, as a signed int32."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise MediaConfigError(message)


def _in_range(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise MediaConfigError(f"{name} must be in 0..{(1 << bits) - 1}, got {value}")


# --- RTP -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet, RFC 3550 §5.1 (header), §5.3.1 (header extension).

    Parameters
    ----------
    payload_type : int
        7-bit payload type (RFC 3551 §6).
    sequence : int
        16-bit sequence number.
    timestamp : int
        32-bit media timestamp.
    ssrc : int
        32-bit synchronisation source.
    payload : bytes
        The payload, without padding.
    marker : bool
        The M bit.
    csrc : tuple of int
        Up to 15 contributing sources.
    extension_profile : int or None
        The 16-bit "defined by profile" field when the X bit is set, else None.
    extension_data : bytes
        The extension body (a multiple of 4 bytes); only with `extension_profile`.
    padding : int
        Number of padding bytes at the end (0, or 1..255 including the count byte itself).
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_data: bytes = b""
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet.

        Raises
        ------
        RtpParseError
            Too short, version not 2, CSRC list / extension / padding running past the end, or a zero
            padding count.
        """
        size = len(data)
        if size < RTP_HEADER_BYTES:
            raise RtpParseError(f"RTP packet too short: {size} bytes, the fixed header needs 12")
        b0, b1, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTP version {b0 >> 6}, expected 2")
        offset = RTP_HEADER_BYTES
        cc = b0 & 0x0F
        csrc: tuple[int, ...] = ()
        if cc:
            end = offset + 4 * cc
            if end > size:
                raise RtpParseError(f"RTP CSRC list of {cc} entries runs past the end ({size} bytes)")
            csrc = struct.unpack_from(f"!{cc}I", data, offset)
            offset = end
        extension_profile: int | None = None
        extension_data = b""
        if b0 & 0x10:
            if offset + 4 > size:
                raise RtpParseError("RTP header extension header runs past the end")
            extension_profile, words = _EXT_HEADER.unpack_from(data, offset)
            end = offset + 4 + 4 * words
            if end > size:
                raise RtpParseError(f"RTP header extension of {words} words runs past the end ({size} bytes)")
            extension_data = bytes(data[offset + 4 : end])
            offset = end
        padding = 0
        if b0 & 0x20:
            padding = data[size - 1]
            if padding == 0:
                raise RtpParseError("RTP padding bit set but the padding count is 0")
            if offset + padding > size:
                raise RtpParseError(f"RTP padding of {padding} bytes is longer than the payload area")
        return cls(
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset : size - padding]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=extension_profile,
            extension_data=extension_data,
            padding=padding,
        )

    def serialize(self) -> bytes:
        """The packet on the wire; padding bytes are zeros followed by the count.

        Raises
        ------
        MediaConfigError
            A field is out of range (payload type, sequence, timestamp, SSRC/CSRC, more than 15 CSRCs,
            extension not a multiple of 4 bytes or longer than 65535 words, padding outside 0..255).
        """
        _in_range(self.payload_type, 7, "payload_type")
        _in_range(self.sequence, 16, "sequence")
        _in_range(self.timestamp, 32, "timestamp")
        _in_range(self.ssrc, 32, "ssrc")
        _need(len(self.csrc) <= 15, f"at most 15 CSRCs, got {len(self.csrc)}")
        for c in self.csrc:
            _in_range(c, 32, "csrc")
        _in_range(self.padding, 8, "padding")
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        parts = [b""]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension_profile is not None:
            _in_range(self.extension_profile, 16, "extension_profile")
            words, rest = divmod(len(self.extension_data), 4)
            _need(rest == 0, "extension_data must be a multiple of 4 bytes")
            _in_range(words, 16, "extension length in words")
            b0 |= 0x10
            parts.append(_EXT_HEADER.pack(self.extension_profile, words))
            parts.append(self.extension_data)
        else:
            _need(not self.extension_data, "extension_data needs an extension_profile")
        parts.append(self.payload)
        if self.padding:
            b0 |= 0x20
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        parts[0] = RTP_HEADER.pack(b0, (0x80 if self.marker else 0) | self.payload_type, self.sequence,
                                   self.timestamp, self.ssrc)
        return b"".join(parts)


# --- RTCP ------------------------------------------------------------------------------------------------


class RtcpType(enum.IntEnum):
    """RTCP packet types, RFC 3550 §12.1."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204


class SdesType(enum.IntEnum):
    """SDES item types, RFC 3550 §12.2."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block, RFC 3550 §6.4.1.

    ``cumulative_lost`` is the signed 24-bit count, ``highest_sequence`` the extended (32-bit) highest
    sequence number received, ``jitter`` in timestamp units, ``last_sr`` the middle 32 bits of the last SR's
    NTP timestamp and ``delay_since_last_sr`` in units of 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int = 0
    delay_since_last_sr: int = 0

    def serialize(self) -> bytes:
        _in_range(self.ssrc, 32, "ssrc")
        _in_range(self.fraction_lost, 8, "fraction_lost")
        _need(
            _CUMULATIVE_LOST_MIN <= self.cumulative_lost <= _CUMULATIVE_LOST_MAX,
            f"cumulative_lost must fit 24 signed bits, got {self.cumulative_lost}",
        )
        _in_range(self.highest_sequence, 32, "highest_sequence")
        _in_range(self.jitter, 32, "jitter")
        _in_range(self.last_sr, 32, "last_sr")
        _in_range(self.delay_since_last_sr, 32, "delay_since_last_sr")
        lost = (self.cumulative_lost & 0xFFFFFF).to_bytes(3, "big")
        return _REPORT_BLOCK.pack(self.ssrc, self.fraction_lost, lost, self.highest_sequence, self.jitter,
                                  self.last_sr, self.delay_since_last_sr)

    @classmethod
    def _parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """An RTCP SR packet, RFC 3550 §6.4.1. ``ntp_timestamp`` is the full 64-bit NTP time (32.32 fixed point);
    ``extension`` is any profile-specific extension after the report blocks, kept verbatim."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        _in_range(self.ssrc, 32, "ssrc")
        _in_range(self.ntp_timestamp, 64, "ntp_timestamp")
        _in_range(self.rtp_timestamp, 32, "rtp_timestamp")
        _in_range(self.packet_count, 32, "packet_count")
        _in_range(self.octet_count, 32, "octet_count")
        body = _SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count,
                             self.octet_count)
        body += b"".join(r.serialize() for r in self.reports) + self.extension
        return _rtcp_packet(RtcpType.SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """An RTCP RR packet, RFC 3550 §6.4.2."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        _in_range(self.ssrc, 32, "ssrc")
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports) + self.extension
        return _rtcp_packet(RtcpType.RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesItem:
    """One SDES item, RFC 3550 §6.5 (``type`` is an :class:`SdesType` value; ``value`` up to 255 bytes)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The SDES items of one source, RFC 3550 §6.5."""

    ssrc: int
    items: tuple[SdesItem, ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item decoded as UTF-8 (RFC 3550 §6.5.1), or None."""
        for item in self.items:
            if item.type == SdesType.CNAME:
                return item.value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """An RTCP SDES packet, RFC 3550 §6.5."""

    chunks: tuple[SdesChunk, ...]

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> SourceDescription:
        """The usual one-chunk SDES carrying just a CNAME."""
        return cls((SdesChunk(ssrc, (SdesItem(SdesType.CNAME, cname.encode()),)),))

    def serialize(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            _in_range(chunk.ssrc, 32, "ssrc")
            body += struct.pack("!I", chunk.ssrc)
            for item in chunk.items:
                _need(1 <= item.type <= 255, f"SDES item type must be 1..255, got {item.type}")
                _need(len(item.value) <= 255, "SDES item value longer than 255 bytes")
                body += bytes((item.type, len(item.value))) + item.value
            # The item list ends with a null octet, then nulls up to the next 32-bit boundary (§6.5).
            body += bytes(4 - len(body) % 4)
        return _rtcp_packet(RtcpType.SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True, slots=True)
class Bye:
    """An RTCP BYE packet, RFC 3550 §6.6."""

    ssrcs: tuple[int, ...]
    reason: str | None = None

    def serialize(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.ssrcs)
        if self.reason is not None:
            text = self.reason.encode()
            _need(len(text) <= 255, "BYE reason longer than 255 bytes")
            body += bytes((len(text),)) + text
            body += bytes(-len(body) % 4)
        return _rtcp_packet(RtcpType.BYE, len(self.ssrcs), body)


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """Any other RTCP packet (APP, RTPFB/PSFB, XR, …), kept verbatim: 5-bit ``count`` and the body."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        _in_range(self.packet_type, 8, "packet_type")
        return _rtcp_packet(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def _rtcp_packet(packet_type: int, count: int, body: bytes) -> bytes:
    _in_range(count, 5, "RTCP count")
    _need(len(body) % 4 == 0, "RTCP packet body must be a multiple of 4 bytes")
    _in_range(len(body) // 4, 16, "RTCP length in words")
    return RTCP_HEADER.pack((RTP_VERSION << 6) | count, packet_type, len(body) // 4) + body


def serialize_rtcp(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """A compound RTCP packet: the packets concatenated (RFC 3550 §6.1). Put an SR or RR first."""
    return b"".join(p.serialize() for p in packets)


def _parse_reports(body: bytes, offset: int, count: int, what: str) -> tuple[tuple[ReportBlock, ...], int]:
    end = offset + count * _REPORT_BLOCK.size
    if end > len(body):
        raise RtpParseError(f"RTCP {what}: {count} report blocks run past the end of the packet")
    reports = tuple(ReportBlock._parse(body, offset + i * _REPORT_BLOCK.size) for i in range(count))
    return reports, end


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtpParseError("RTCP SDES: chunk runs past the end of the packet")
        (ssrc,) = struct.unpack_from("!I", body, offset)
        offset += 4
        items = []
        while True:
            if offset >= len(body):
                raise RtpParseError("RTCP SDES: item list not terminated")
            item_type = body[offset]
            if item_type == SdesType.END:
                offset = (offset + 4) & ~3  # skip the null and the padding to the 32-bit boundary
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtpParseError("RTCP SDES: item runs past the end of the packet")
            length = body[offset + 1]
            items.append(SdesItem(item_type, bytes(body[offset + 2 : offset + 2 + length])))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Bye:
    end = 4 * count
    if end > len(body):
        raise RtpParseError(f"RTCP BYE: {count} SSRCs run past the end of the packet")
    ssrcs = struct.unpack_from(f"!{count}I", body, 0)
    reason = None
    if end < len(body):
        length = body[end]
        if end + 1 + length > len(body):
            raise RtpParseError("RTCP BYE: reason runs past the end of the packet")
        reason = body[end + 1 : end + 1 + length].decode("utf-8", "replace")
    return Bye(ssrcs, reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet into its packets, RFC 3550 §6.1 and the checks of appendix A.2.

    Raises
    ------
    RtpParseError
        Empty, version not 2, a length running past the datagram, padding anywhere but in the last packet
        or with a bad count, or a body too short for its packet type.
    """
    data = bytes(data)
    if not data:
        raise RtpParseError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    size = len(data)
    while offset < size:
        if offset + 4 > size:
            raise RtpParseError(f"RTCP header truncated at byte {offset}")
        b0, packet_type, words = RTCP_HEADER.unpack_from(data, offset)
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTCP version {b0 >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > size:
            raise RtpParseError(f"RTCP packet length {4 * (words + 1)} runs past the datagram ({size} bytes)")
        body_end = end
        if b0 & 0x20:
            if end != size:
                raise RtpParseError("RTCP padding bit set in a packet that is not the last of the compound")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtpParseError(f"RTCP padding count {pad} is invalid")
            body_end = end - pad
        body = data[offset + 4 : body_end]
        count = b0 & 0x1F
        packets.append(_parse_one(packet_type, count, body))
        offset = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RtcpType.SR:
        if len(body) < _SR_INFO.size:
            raise RtpParseError("RTCP SR shorter than its sender info")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        reports, end = _parse_reports(body, _SR_INFO.size, count, "SR")
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports, body[end:])
    if packet_type == RtcpType.RR:
        if len(body) < 4:
            raise RtpParseError("RTCP RR shorter than its SSRC")
        (ssrc,) = struct.unpack_from("!I", body)
        reports, end = _parse_reports(body, 4, count, "RR")
        return ReceiverReport(ssrc, reports, body[end:])
    if packet_type == RtcpType.SDES:
        return _parse_sdes(body, count)
    if packet_type == RtcpType.BYE:
        return _parse_bye(body, count)
    return UnknownRtcp(packet_type, count, body)


# --- receiver statistics ---------------------------------------------------------------------------------


class RtpReceiverStats:
    """Reception statistics of one RTP source, RFC 3550 appendix A.1 (sequence validation with probation and
    wrap-around cycles), A.3 (expected / lost / fraction lost) and A.8 (interarrival jitter).

    Time is passed in: ``arrival_ts`` is the arrival time converted by the caller to the source's timestamp
    units (e.g. milliseconds x 8 for 8 kHz audio). Nothing here reads a clock.
    """

    __slots__ = (
        "_bad_seq",
        "_expected_prior",
        "_have_transit",
        "_jitter",
        "_last_transit",
        "_probation",
        "_received_prior",
        "base_seq",
        "cycles",
        "max_seq",
        "received",
    )

    def __init__(self) -> None:
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self._bad_seq = SEQ_MOD + 1  # "not a sequence number": no jump seen yet
        self._probation = -1  # -1: no packet seen yet
        self._received_prior = 0
        self._expected_prior = 0
        self._jitter = 0.0
        self._last_transit = 0
        self._have_transit = False

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self._bad_seq = SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        # Appendix A.1 update_seq(), returning whether the packet counts.
        if self._probation < 0:
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self._probation = MIN_SEQUENTIAL
        udelta = (seq - self.max_seq) & 0xFFFF
        if self._probation:
            # A new source is valid only after MIN_SEQUENTIAL packets in sequence.
            if seq == (self.max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self.max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self._probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            # In order, with a permissible gap.
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        elif udelta <= SEQ_MOD - MAX_MISORDER:
            # A very large jump: accept it only if the next packet follows it (the sender restarted).
            if seq == self._bad_seq:
                self._init_seq(seq)
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: a duplicate or reordered packet, counted but not moving max_seq.
        self.received += 1
        return True

    def update(self, seq: int, rtp_timestamp: int, arrival_ts: int) -> bool:
        """Account one received packet; returns False while the source is on probation or after a jump.

        Parameters
        ----------
        seq : int
            The packet's 16-bit sequence number.
        rtp_timestamp : int
            The packet's 32-bit RTP timestamp.
        arrival_ts : int
            Arrival time in the same units as `rtp_timestamp` (any origin).
        """
        valid = self._update_seq(seq & 0xFFFF)
        transit = arrival_ts - rtp_timestamp
        if valid:
            if self._have_transit:
                # A.8: J += (|D| - J) / 16, D the change in transit time, modulo the 32-bit timestamp.
                d = abs(ts_diff(transit, self._last_transit))
                self._jitter += (d - self._jitter) / 16.0
            self._have_transit = True
        self._last_transit = transit
        return valid

    @property
    def valid(self) -> bool:
        """True once the source has passed probation (A.1)."""
        return self._probation == 0

    @property
    def extended_max(self) -> int:
        """The highest sequence number received, extended with the wrap-around cycle count."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected since the source became valid (A.3)."""
        if not self.valid:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to 24 signed bits (negative with duplicates) (A.3)."""
        return max(_CUMULATIVE_LOST_MIN, min(_CUMULATIVE_LOST_MAX, self.expected - self.received))

    @property
    def fraction_lost(self) -> int:
        """Fraction lost since the last report block, 8-bit fixed point (A.3); does not start a new interval."""
        expected_interval = self.expected - self._expected_prior
        lost_interval = expected_interval - (self.received - self._received_prior)
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return min(255, (lost_interval << 8) // expected_interval)

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units (A.8), truncated to an integer as sent in reports."""
        return int(self._jitter)

    def report_block(self, ssrc: int, last_sr: int = 0, delay_since_last_sr: int = 0) -> ReportBlock:
        """A report block for source `ssrc`; starts a new interval for :attr:`fraction_lost`."""
        block = ReportBlock(
            ssrc=ssrc,
            fraction_lost=self.fraction_lost,
            cumulative_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=min(self.jitter, 0xFFFFFFFF),
            last_sr=last_sr,
            delay_since_last_sr=delay_since_last_sr,
        )
        self._expected_prior = self.expected
        self._received_prior = self.received
        return block
