"""RTP packets (RFC 3550 §5.1): parse/serialize round trip, malformed input, sequence arithmetic."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.errors import MediaConfigError, MediaError, RtpParseError
from ccpbx.media.rtp import RTP_HEADER, RtpPacket, seq_add, seq_diff, seq_newer, ts_diff


def test_parse_minimal_packet() -> None:
    data = RTP_HEADER.pack(0x80, 0x80 | 8, 65535, 0xDEADBEEF, 0x12345678) + b"\xd5" * 160
    p = RtpPacket.parse(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (8, 65535, 0xDEADBEEF, 0x12345678, True)
    assert p.payload == b"\xd5" * 160 and p.csrc == () and p.extension_profile is None and p.padding == 0
    assert p.serialize() == data


def test_parse_csrc_extension_padding() -> None:
    header = RTP_HEADER.pack(0x80 | 0x20 | 0x10 | 2, 0, 7, 8, 9)
    csrc = struct.pack("!II", 111, 222)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    data = header + csrc + ext + b"payload" + b"\x00\x00\x03"
    p = RtpPacket.parse(data)
    assert p.csrc == (111, 222)
    assert p.extension_profile == 0xBEDE and p.extension_data == b"\x10\xaa\x00\x00"
    assert p.payload == b"payload" and p.padding == 3
    assert p.serialize() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x80" * 11, "too short"),
        (RTP_HEADER.pack(0x40, 0, 0, 0, 0), "version 1"),
        (RTP_HEADER.pack(0x00, 0, 0, 0, 0), "version 0"),
        (RTP_HEADER.pack(0xC0, 0, 0, 0, 0), "version 3"),
        (RTP_HEADER.pack(0x83, 0, 0, 0, 0) + b"\x00" * 8, "CSRC"),
        (RTP_HEADER.pack(0x90, 0, 0, 0, 0) + b"\x00\x01", "extension"),
        (RTP_HEADER.pack(0x90, 0, 0, 0, 0) + b"\x00\x01\x00\x02" + b"\x00" * 4, "extension"),
        (RTP_HEADER.pack(0xA0, 0, 0, 0, 0) + b"abc\x00", "padding count is 0"),
        (RTP_HEADER.pack(0xA0, 0, 0, 0, 0) + b"ab\x09", "padding"),
    ],
)
def test_malformed_packets_raise_rtp_parse_error(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=message):
        RtpPacket.parse(data)


def test_padding_may_cover_the_whole_payload_area() -> None:
    data = RTP_HEADER.pack(0xA0, 0, 1, 2, 3) + b"\x00\x00\x00\x04"
    p = RtpPacket.parse(data)
    assert p.payload == b"" and p.padding == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"sequence": 65536},
        {"timestamp": -1},
        {"ssrc": 1 << 32},
        {"csrc": tuple(range(16))},
        {"extension_profile": 1, "extension_data": b"abc"},
        {"extension_data": b"abcd"},
        {"padding": 256},
    ],
)
def test_serialize_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0, "payload": b""}
    fields.update(kwargs)
    with pytest.raises(MediaConfigError):
        RtpPacket(**fields).serialize()  # type: ignore[arg-type]


u32 = st.integers(0, 0xFFFFFFFF)
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension_profile=st.none() | st.integers(0, 0xFFFF),
    padding=st.integers(0, 255),
).flatmap(
    lambda p: st.builds(
        lambda ext: RtpPacket(
            p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload, p.marker, p.csrc,
            p.extension_profile, ext if p.extension_profile is not None else b"", p.padding,
        ),
        st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),
    )
)


@settings(max_examples=150, deadline=None)
@given(packets)
def test_roundtrip(packet: RtpPacket) -> None:
    wire = packet.serialize()
    assert RtpPacket.parse(wire) == packet
    assert RtpPacket.parse(memoryview(wire)) == packet
    assert RtpPacket.parse(wire).serialize() == wire


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_only_raise_rtp_parse_error(data: bytes) -> None:
    try:
        p = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert data[0] >> 6 == 2
    assert (p.payload_type, p.marker) == (data[1] & 0x7F, bool(data[1] & 0x80))
    assert p.sequence == int.from_bytes(data[2:4], "big") and p.ssrc == int.from_bytes(data[8:12], "big")
    assert len(p.payload) + p.padding <= len(data) - 12


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=80))
def test_valid_version_garbage_only_raises_rtp_parse_error(data: bytes) -> None:
    # Force version 2 so the deeper checks (CSRC, extension, padding) are exercised.
    data = bytes((0x80 | (data[0] & 0x3F),)) + data[1:]
    try:
        p = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert p.padding == 0 or data[-1] == p.padding
    assert isinstance(p.payload, bytes)


def test_error_hierarchy() -> None:
    assert issubclass(RtpParseError, MediaError) and issubclass(MediaConfigError, MediaError)


def test_seq_diff_wraps() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 5) == 0
    assert seq_diff(100, 65500) == 136
    assert seq_diff(32767, 0) == 32767 and seq_diff(32768, 0) == -32768
    assert seq_add(65535, 1) == 0 and seq_add(0, -1) == 65535 and seq_add(65530, 10) == 4
    assert seq_newer(0, 65535) and not seq_newer(65535, 0) and not seq_newer(7, 7)
    assert ts_diff(0, 0xFFFFFFFF) == 1 and ts_diff(0xFFFFFFFF, 0) == -1 and ts_diff(160, 0) == 160


@given(st.integers(0, 0xFFFF), st.integers(-32768, 32767))
def test_seq_diff_inverts_seq_add(a: int, n: int) -> None:
    assert seq_diff(seq_add(a, n), a) == n
