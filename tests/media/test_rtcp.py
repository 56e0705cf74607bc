"""RTCP (RFC 3550 §6.4-6.6) packets and the receiver statistics of appendix A.1, A.3 and A.8."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.errors import RtpParseError
from ccpbx.media.rtp import (
    MAX_DROPOUT,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtpReceiverStats,
    SdesChunk,
    SdesItem,
    SdesType,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    parse_rtcp,
    serialize_rtcp,
)

u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    last_sr=u32,
    delay_since_last_sr=u32,
)
report_lists = st.lists(blocks, max_size=4).map(tuple)
words = st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])
rtcp_packets = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, report_lists, words),
    st.builds(ReceiverReport, u32, report_lists, words),
    st.builds(
        SourceDescription,
        st.lists(
            st.builds(
                SdesChunk,
                u32,
                st.lists(st.builds(SdesItem, st.integers(1, 8), st.binary(max_size=30)), max_size=3).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(Bye, st.lists(u32, max_size=4).map(tuple), st.none() | st.text(max_size=20)),
    st.builds(UnknownRtcp, st.integers(205, 210), st.integers(0, 31), words),
)


def test_sender_report_wire_format() -> None:
    block = ReportBlock(0xCAFEBABE, 25, -3, 0x0001_0005, 42, 0x1234_5678, 65536)
    sr = SenderReport(0x11223344, 0xE000_0000_8000_0000, 160, 10, 1600, (block,))
    wire = sr.serialize()
    assert wire[:4] == bytes((0x81, 200)) + struct.pack("!H", 12)  # 6 + 6 words, minus one
    assert len(wire) == 52
    assert wire[28:36] == bytes((0xCA, 0xFE, 0xBA, 0xBE, 25, 0xFF, 0xFF, 0xFD))  # -3 as 24-bit two's complement
    assert parse_rtcp(wire) == [sr]


def test_compound_rr_sdes_bye_roundtrip() -> None:
    packets = [
        ReceiverReport(1, (ReportBlock(2, 0, 0, 100, 3),)),
        SourceDescription.cname(1, "alice@192.0.2.1"),
        Bye((1,), "hang up"),
    ]
    wire = serialize_rtcp(packets)
    assert len(wire) % 4 == 0
    parsed = parse_rtcp(wire)
    assert parsed == packets
    assert isinstance(parsed[1], SourceDescription) and parsed[1].chunks[0].cname == "alice@192.0.2.1"
    assert parsed[1].chunks[0].items[0].type == SdesType.CNAME


def test_padding_in_last_packet() -> None:
    rr = ReceiverReport(5).serialize()
    padded = bytes((rr[0] | 0x20, rr[1])) + struct.pack("!H", 2) + rr[4:] + b"\x00\x00\x00\x04"
    assert parse_rtcp(padded) == [ReceiverReport(5)]
    with pytest.raises(RtpParseError, match="not the last"):
        parse_rtcp(padded + rr)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x81\xc9\x00", "truncated"),
        (b"\x41\xc9\x00\x01\x00\x00\x00\x01", "version 1"),
        (b"\x81\xc9\x00\x07\x00\x00\x00\x01", "runs past"),
        (b"\x81\xc9\x00\x01\x00\x00\x00\x01", "report blocks"),
        (b"\x80\xc8\x00\x01\x00\x00\x00\x01", "sender info"),
        (b"\x81\xca\x00\x01\x00\x00\x00\x01", "not terminated"),
        (b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09ab", "item runs past"),
        (b"\x82\xcb\x00\x01\x00\x00\x00\x01", "BYE"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x00", "padding count 0"),
    ],
)
def test_malformed_rtcp(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=message):
        parse_rtcp(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(rtcp_packets, min_size=1, max_size=4))
def test_rtcp_roundtrip(packets: list[object]) -> None:
    wire = serialize_rtcp(packets)  # type: ignore[arg-type]
    parsed = parse_rtcp(wire)
    assert serialize_rtcp(parsed) == wire
    for got, want in zip(parsed, packets, strict=True):
        if isinstance(want, Bye) and want.reason is not None:
            assert isinstance(got, Bye) and got.reason == want.reason and got.ssrcs == want.ssrcs
        else:
            assert got == want


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_only_raise_rtp_parse_error(data: bytes) -> None:
    if data:
        data = bytes((0x80 | (data[0] & 0x3F),)) + data[1:]
    try:
        parse_rtcp(data)
    except RtpParseError:
        pass


# --- receiver statistics ------------------------------------------------------------------------------


def _feed(stats: RtpReceiverStats, seqs: list[int], transit: int = 1000) -> None:
    for seq in seqs:
        ts = seq * 160
        stats.update(seq & 0xFFFF, ts & 0xFFFFFFFF, ts + transit)


def test_probation_then_counting() -> None:
    stats = RtpReceiverStats()
    assert stats.update(10, 0, 0) is False  # first packet of a new source: on probation
    assert not stats.valid
    assert stats.update(11, 160, 160) is True
    assert stats.valid and stats.received == 1 and stats.expected == 1 and stats.lost == 0
    _feed(stats, list(range(12, 20)))
    assert stats.received == 9 and stats.expected == 9 and stats.lost == 0


def test_sequence_wrap_counts_a_cycle() -> None:
    stats = RtpReceiverStats()
    _feed(stats, list(range(65530, 65536 + 10)))
    assert stats.cycles == 65536
    assert stats.max_seq == 9
    assert stats.extended_max == 65536 + 9
    assert stats.expected == stats.received == 15
    block = stats.report_block(99)
    assert block.highest_sequence == 65536 + 9 and block.cumulative_lost == 0 and block.fraction_lost == 0


def test_every_tenth_packet_lost() -> None:
    stats = RtpReceiverStats()
    _feed(stats, [s for s in range(0, 1001) if s % 10 != 5])
    assert stats.expected == 1000  # base is seq 1 (seq 0 was the probation packet)
    assert stats.lost == 100
    assert stats.fraction_lost == 25  # 256 * 100 / 1000 = 25.6, truncated
    block = stats.report_block(7)
    assert (block.fraction_lost, block.cumulative_lost, block.ssrc) == (25, 100, 7)
    # The next interval has no loss: fraction resets, cumulative stays.
    _feed(stats, list(range(1001, 1101)))
    assert stats.fraction_lost == 0 and stats.lost == 100


def test_duplicates_make_loss_negative_and_fraction_zero() -> None:
    stats = RtpReceiverStats()
    _feed(stats, [0, 1, 2, 3, 3, 3, 4])
    assert stats.expected == 4 and stats.received == 6 and stats.lost == -2 and stats.fraction_lost == 0


def test_reordering_within_misorder_is_not_a_restart() -> None:
    stats = RtpReceiverStats()
    _feed(stats, [0, 1, 2, 4, 3, 5])
    assert stats.lost == 0 and stats.max_seq == 5


def test_large_jump_needs_two_packets_to_resync() -> None:
    stats = RtpReceiverStats()
    _feed(stats, list(range(0, 10)))
    jump = 10 + MAX_DROPOUT + 100
    assert stats.update(jump, jump * 160, jump * 160) is False
    assert stats.max_seq == 9
    assert stats.update(jump + 1, (jump + 1) * 160, (jump + 1) * 160) is True
    assert stats.base_seq == jump + 1 and stats.received == 1


def test_cumulative_lost_clamps_to_24_bits() -> None:
    stats = RtpReceiverStats()
    _feed(stats, [0, 1])
    stats.received = -0x900000  # force the arithmetic past the 24-bit range
    assert stats.lost == 0x7FFFFF
    stats.received = 0x900000
    assert stats.lost == -0x800000


def test_constant_transit_gives_zero_jitter() -> None:
    stats = RtpReceiverStats()
    _feed(stats, list(range(500)), transit=12345)
    assert stats.jitter == 0


def test_alternating_delay_converges_to_analytic_jitter() -> None:
    # Arrival alternates X timestamp units late/early around a constant transit: |D| = 2X every packet,
    # so J_n = 2X (1 - (15/16)^n) -> 2X.
    x = 80  # 10 ms at 8 kHz
    stats = RtpReceiverStats()
    for n in range(400):
        ts = n * 160
        stats.update(n, ts, ts + 1000 + (x if n % 2 else -x))
    assert stats.jitter in (2 * x - 1, 2 * x)
    # After exactly k updates of |D| = 2X the value is analytic.
    stats = RtpReceiverStats()
    for n in range(10):
        ts = n * 160
        stats.update(n, ts, ts + (x if n % 2 else -x))
    k = 8  # packets 2..9 carry a transit difference (0 is probation, 1 sets the first transit)
    assert stats.jitter == int(2 * x * (1 - (15 / 16) ** k))


def test_jitter_across_timestamp_wrap() -> None:
    stats = RtpReceiverStats()
    start = 0xFFFFFFFF - 160 * 5
    for n in range(20):
        ts = start + 160 * n
        stats.update(n, ts & 0xFFFFFFFF, ts + 500)
    assert stats.jitter == 0
