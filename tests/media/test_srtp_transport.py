"""SRTP/SRTCP at the media socket edge (RFC 3711): a bridge where one side speaks SRTP over real loopback UDP.

Phone A speaks SRTP with its own pylibsrtp sessions (an independent implementation of the far end), phone B
plain RTP; the engine in between only ever sees plain RTP.
"""

from __future__ import annotations

import asyncio
import os
import random

import numpy as np
import pylibsrtp
import pytest

from ccpbx.media.engine import MediaEngine
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.rtp import Bye, RtpPacket, parse_rtcp
from ccpbx.media.srtp import SrtpParameters, SrtpSuite
from ccpbx.media.transport import MediaServer, PortAllocator

F = 160
RATE = 8000
pytestmark = pytest.mark.timeout(30)


class Raw(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append(data)


def _tone(freq: float, frames: int) -> np.ndarray:
    n = np.arange(frames * F)
    return (6000 * np.sin(2 * np.pi * freq * n / RATE)).astype(np.int16).reshape(frames, F)


def _dominant(payloads: list[bytes]) -> float:
    codes = np.frombuffer(b"".join(payloads), dtype=np.uint8).copy()
    pcm = Codec.PCMU.decode(codes).astype(np.float64)
    mag = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / RATE)[int(np.argmax(mag))])


def _sessions(suite: SrtpSuite, send_key: bytes, receive_key: bytes) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=send_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                            srtp_profile=suite.profile))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=receive_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                            srtp_profile=suite.profile))
    return tx, rx


@pytest.mark.parametrize("suite", list(SrtpSuite))
@pytest.mark.parametrize("relay", [True, False], ids=["relay", "mixed"])
async def test_srtp_leg_bridged_to_plain_leg(suite: SrtpSuite, relay: bool) -> None:
    loop = asyncio.get_running_loop()
    lo = random.randrange(20000, 60000, 2)
    server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 200), engine=MediaEngine(relay=relay))
    ta, pa = await loop.create_datagram_endpoint(Raw, local_addr=("127.0.0.1", 0))
    ta_rtcp, pa_rtcp = await loop.create_datagram_endpoint(Raw, local_addr=("127.0.0.1", 0))
    tb, pb = await loop.create_datagram_endpoint(Raw, local_addr=("127.0.0.1", 0))
    ours, theirs = os.urandom(30), os.urandom(30)
    phone_tx, phone_rx = _sessions(suite, theirs, ours)
    try:
        async with asyncio.timeout(20), server:
            ca = await server.open_channel(Codec.PCMU, ta.get_extra_info("sockname"))
            cb = await server.open_channel(Codec.PCMU, tb.get_extra_info("sockname"))
            server.set_srtp(ca.channel, SrtpParameters(suite, local_key=ours, remote_key=theirs))
            server.engine.set_rtcp_remote(ca.channel, ta_rtcp.get_extra_info("sockname"))
            server.engine.bridge(ca.channel, cb.channel)
            sig_a, sig_b = ulaw_encode(_tone(1000, 50)), ulaw_encode(_tone(400, 50))
            for k in range(50):
                plain = RtpPacket(0, k, k * F, 0xA, sig_a[k].tobytes(), k == 0).serialize()
                ta.sendto(phone_tx.protect(plain), ("127.0.0.1", ca.port))
                tb.sendto(RtpPacket(0, 7 + k, 99 + k * F, 0xB, sig_b[k].tobytes()).serialize(), ("127.0.0.1", cb.port))
                await asyncio.sleep(0.02)
            # a forged packet (right shape, wrong key) and a replayed one are dropped and counted, not played
            ta.sendto(_sessions(suite, os.urandom(30), ours)[0].protect(
                RtpPacket(0, 60, 60 * F, 0xA, bytes(F)).serialize()), ("127.0.0.1", ca.port))
            replayed = phone_tx.protect(RtpPacket(0, 61, 61 * F, 0xA, sig_a[0].tobytes()).serialize())
            ta.sendto(replayed, ("127.0.0.1", ca.port))
            await asyncio.sleep(0.05)
            ta.sendto(replayed, ("127.0.0.1", ca.port))
            await asyncio.sleep(0.3)
            assert server.srtp_errors == 2
            assert server.engine.stats(ca.channel).packets_in == 51
            # B hears A's tone in plain RTP; A gets B's tone protected: plain parsing of A's packets sees noise
            got_b = [RtpPacket.parse(d) for d in pb.datagrams]
            assert abs(_dominant([p.payload for p in got_b if p.payload_type == 0][-35:]) - 1000) < 10
            to_a = list(pa.datagrams)
            assert to_a
            tag = 10 if suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80 else 4
            assert all(len(d) == 12 + F + tag for d in to_a if RtpPacket.parse(d).payload_type == 0)
            unprotected = [RtpPacket.parse(phone_rx.unprotect(d)) for d in to_a]
            assert abs(_dominant([p.payload for p in unprotected if p.payload_type == 0][-35:]) - 400) < 10
            assert server.engine.stats(ca.channel).bad == 0
            assert server.srtp_of(ca.channel) == SrtpParameters(suite, ours, theirs)
            server.set_srtp(ca.channel, SrtpParameters(suite, ours, theirs))  # same keys: the context is kept
            server.set_srtp(cb.channel, None)
            # SRTCP: the BYE sent on close is protected (RFC 3711 §3.4); plain parsing would fail
            server.close_channel(ca.channel)
            await asyncio.sleep(0.1)
            assert pa_rtcp.datagrams
            compound = parse_rtcp(phone_rx.unprotect_rtcp(pa_rtcp.datagrams[-1]))
            assert any(isinstance(p, Bye) for p in compound)
    finally:
        ta.close()
        ta_rtcp.close()
        tb.close()
    assert "ours" not in repr(SrtpParameters(suite, ours, theirs))
    with pytest.raises(MediaConfigError):
        SrtpParameters(suite, b"short", theirs)
