"""The transport's relay from a route (``MediaEngine.routes``) against the engine's general path.

The socket callback of :class:`~ccpbx.media.transport._RtpReader` relays a connected channel's steady packets from
its route alone, counting there, and the engine folds those counts in when it reads them. Two engines in the same
state (same random source) get the same generated packets and changes: one takes every packet through
``MediaEngine.receive`` (the reference), the other through real readers whose sockets are stand-ins that hand over
the packets and record what is sent, with the kernel's part played here (a connected socket hears only the
address it is connected to). Every datagram sent, every event and every channel's statistics must match.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpbx.media.engine import ROUTE, ROUTE_BYTES, MediaEngine
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.prompts import PromptPlayer
from ccpbx.media.rtp import RtpPacket
from ccpbx.media.transport import MediaServer, PortAllocator, _RtpReader

from .test_engine_forward import VARIANTS, Side, apply_change
from .test_transport import Collector, F, _dominant, _tone

# Loopback addresses for the phones: the readers connect real (unused) sockets to them, which sends nothing.
PHONES = [("127.0.0.1", 40000), ("127.0.0.1", 40002)]
ELSEWHERE = ("127.0.0.1", 50000)
# The changes that take a pair off the relay stay until their opposite comes: those come three times as often.
CHANGES = (("play", "detect", "recvonly", "remote_moved")
           + ("stop_play", "undetect", "sendrecv", "remote", "srtp_off") * 3)
TIMEOUT_MS = 60_000  # routed packets restart the RTP timeout at the next tick: compared apart (below)


class FakeSocket:
    """What a reader uses of its socket: datagrams handed in by the test, sends recorded, connect kept on a real
    socket (the reader connects to nothing again through the descriptor)."""

    family = socket.AF_INET

    def __init__(self, ch: int, sent: list[tuple[int, bytes, Any]]) -> None:
        self.ch = ch
        self.sent = sent
        self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.real.bind(("127.0.0.1", 0))
        self.connected: tuple[str, int] | None = None
        self.pending: list[tuple[bytes, tuple[str, int]]] = []

    def fileno(self) -> int:
        return self.real.fileno()

    def connect(self, addr: tuple[str, int]) -> None:
        self.real.connect(addr)
        self.connected = addr

    def recv_into(self, buffer: bytearray) -> int:
        data, _ = self.pending.pop(0)
        buffer[: len(data)] = data
        return len(data)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        return self.pending.pop(0)

    def send(self, data: bytes | memoryview) -> int:
        assert self.connected is not None
        self.sent.append((self.ch, bytes(data), self.connected))
        return len(data)

    def sendto(self, data: bytes | memoryview, addr: tuple[str, int]) -> int:
        self.sent.append((self.ch, bytes(data), addr))
        return len(data)

    def close(self) -> None:
        self.real.close()


def _engine() -> tuple[MediaEngine, int, int]:
    eng = MediaEngine(rng=random.Random(11), rtp_timeout_ms=TIMEOUT_MS)
    a = eng.open_channel(Codec.PCMU, PHONES[0])
    b = eng.open_channel(Codec.PCMU, PHONES[1])
    eng.set_codec(a, Codec.PCMU, 101, also=((8, Codec.PCMA),))
    eng.bridge(a, b)
    return eng, a, b


class Reference:
    """The engine alone, every packet through ``receive``."""

    def __init__(self) -> None:
        self.eng, self.a, self.b = _engine()
        self.sent: list[tuple[int, bytes, Any]] = []

    def packet(self, ch: int, data: bytes, source: tuple[str, int], now: int) -> None:
        self.eng.receive(ch, data, source, now)
        self.drain()

    def drain(self) -> None:
        self.sent.extend(self.eng.outgoing_by_channel())
        self.sent.extend(self.eng.outgoing_rtcp())


class Routed(Reference):
    """The same engine driven through a MediaServer's socket readers."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.server = MediaServer("127.0.0.1", PortAllocator(40000, 40010), engine=self.eng)
        self.socks: dict[int, FakeSocket] = {}
        for ch in (self.a, self.b):
            sock = FakeSocket(ch, self.sent)
            reader = _RtpReader(self.server, sock, ch)  # type: ignore[arg-type]
            # the loop's clock in seconds, which the reader turns into whole milliseconds (half a one more: exact)
            reader.time = lambda: (self.now + 0.5) / 1000.0  # type: ignore[method-assign]
            self.server._readers[ch] = reader
            self.server._socks[ch] = sock  # type: ignore[assignment]
            self.server._protocols[ch] = (reader, types.SimpleNamespace(srtp=None))  # type: ignore[assignment]
            self.server._senders.extend([None] * (ch + 1 - len(self.server._senders)))
            self.socks[ch] = sock

    def heard(self, ch: int, source: tuple[str, int]) -> bool:
        """The kernel's part: a connected socket drops what comes from elsewhere."""
        peer = self.server._readers[ch].peer
        return peer is None or peer == source

    def packet(self, ch: int, data: bytes, source: tuple[str, int], now: int) -> None:
        self.now = now
        self.socks[ch].pending.append((data, source))
        self.server._readers[ch].readable()
        assert not self.socks[ch].pending
        self.sent.extend(self.eng.outgoing_rtcp())

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


def _change(twin: Reference, what: str, ch: int, now: int) -> None:
    eng = twin.eng
    phone = PHONES[0] if ch == twin.a else PHONES[1]
    if what == "remote_moved":  # the phone moved: SDP names another port, then back
        eng.set_remote(ch, ELSEWHERE)
        eng.set_remote(ch, phone)
    elif what == "srtp_off":
        if isinstance(twin, Routed):
            twin.server.set_srtp(ch, None)  # plain RTP restated: the route is made again from the next packet
    else:
        apply_change(eng, what, ch, phone)
    eng.tick(now)
    twin.drain()


def _state(twin: Reference) -> tuple[Any, ...]:
    eng = twin.eng
    return (twin.sent, eng.events(), eng.stats(twin.a), eng.stats(twin.b), eng.relaying(twin.a),
            eng.relaying(twin.b))


# Mostly steady packets, so that both sockets connect and runs of packets take the route between the changes
# and the other packets that end it.
ROUTE_VARIANTS = ("steady",) * 60 + tuple(v for v in VARIANTS if v != "steady")
packets = st.tuples(st.just("packet"), st.integers(0, 1), st.sampled_from(ROUTE_VARIANTS), st.integers(0, 25))
steps = st.lists(
    st.one_of(
        *(packets,) * 10,
        st.tuples(st.just("change"), st.integers(0, 1), st.sampled_from(CHANGES), st.integers(0, 25)),
        st.tuples(st.just("tick"), st.integers(0, 1), st.just(""), st.integers(0, 25)),
    ),
    min_size=40,
    max_size=150,
)


def _run(script: list[tuple[str, int, str, int]], check: Callable[[Reference, Routed], None]) -> None:
    async def main() -> None:
        ref, routed = Reference(), Routed()
        try:
            sides = [[Side(t.a, 0), Side(t.b, 1)] for t in (ref, routed)]
            for pair in sides:
                for i, side in enumerate(pair):
                    side.addr = PHONES[i]
            now = 0
            for k, (kind, who, what, gap) in enumerate(script):
                now += gap
                if kind == "packet":
                    datagrams = [side[who].packet(what, k) for side in sides]
                    data, source = datagrams[1]
                    if source != PHONES[who]:
                        source = ELSEWHERE
                    if routed.heard(sides[1][who].ch, source):
                        ref.packet(sides[0][who].ch, datagrams[0][0], source, now)
                        routed.packet(sides[1][who].ch, data, source, now)
                elif kind == "change":
                    for twin in (ref, routed):
                        _change(twin, what, twin.a if who == 0 else twin.b, now)
                else:
                    for twin in (ref, routed):
                        twin.eng.tick(now)
                        twin.drain()
                check(ref, routed)
            for tick in range(now + 20, now + 6_000, 20):  # long enough for RTCP reports from both
                for twin in (ref, routed):
                    twin.eng.tick(tick)
                    twin.drain()
            check(ref, routed)
        finally:
            routed.close()

    asyncio.run(main())


def _same(ref: Reference, routed: Routed) -> None:
    assert _state(ref) == _state(routed)


# Both phones talk first: both sockets connect and the routes are in use when the generated steps begin.
WARM_UP = [("packet", k % 2, "steady", 10) for k in range(10)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_routed_relay_sends_counts_and_reports_what_the_general_path_does(
        script: list[tuple[str, int, str, int]]) -> None:
    _run(WARM_UP + script, _same)


def test_steady_packets_on_a_connected_socket_leave_from_the_route() -> None:
    """The first steady packet makes the route and connects the socket; the next ones take the route (nothing
    reaches ``forward``), each with the peer's SSRC and numbering, and the counts show in the statistics."""

    async def main() -> None:
        routed = Routed()
        try:
            side = Side(routed.a, 0)
            side.addr = PHONES[0]
            calls = 0
            forward = routed.eng.forward

            def counting(*args: Any) -> Any:
                nonlocal calls
                calls += 1
                return forward(*args)

            reader = routed.server._readers[routed.a]
            reader.forward = counting  # type: ignore[method-assign]
            routed.server._readers[routed.b].peer = PHONES[1]  # the peer's socket is connected (its phone spoke)
            routed.socks[routed.b].connected = PHONES[1]
            for k in range(3):
                routed.packet(routed.a, *side.packet("steady", k), 20 * k)
            assert reader.peer == PHONES[0]  # locked after its first relayed packet
            size = ROUTE.unpack_from(routed.eng.routes, routed.a * ROUTE_BYTES)[0]
            assert size == 172
            before = calls
            for k in range(3, 50):
                routed.packet(routed.a, *side.packet("steady", k), 20 * k)
            assert calls == before  # all through the route
            out = [d for ch, d, addr in routed.sent if ch == routed.b and addr == PHONES[1] and len(d) == 172]
            assert len(out) == 50
            seqs = [int.from_bytes(d[2:4], "big") for d in out]
            assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
            assert {d[8:12] for d in out} == {routed.eng.ssrc(routed.b).to_bytes(4, "big")}
            stats_a, stats_b = routed.eng.stats(routed.a), routed.eng.stats(routed.b)
            assert stats_a.packets_in == 50 and stats_b.relayed == 50
            # The relay ends (a prompt to b): the route goes, and b's own numbering follows the relayed packets.
            routed.eng.play(routed.b, PromptPlayer(np.full(1600, 300, dtype=np.int16)), mix=True)
            assert ROUTE.unpack_from(routed.eng.routes, routed.a * ROUTE_BYTES)[0] == 0
            already = len(routed.sent)
            routed.eng.tick(1000)
            routed.drain()
            own = [d for ch, d, _ in routed.sent[already:] if ch == routed.b and len(d) == 172]
            assert own and int.from_bytes(own[0][2:4], "big") == (seqs[-1] + 1) & 0xFFFF
        finally:
            routed.close()

    asyncio.run(main())


def test_a_routed_channel_that_falls_silent_times_out_and_one_that_talks_does_not() -> None:
    """Routed packets are counted, not stamped: the tick that sees a route's count move restarts its RTP
    timeout, so a talking channel never times out and a silent one does, within a tick of the general path."""

    async def main() -> None:
        routed = Routed()
        try:
            routed.eng.rtp_timeout_ms = 300
            routed.server._readers[routed.b].peer = PHONES[1]
            routed.socks[routed.b].connected = PHONES[1]
            side = Side(routed.a, 0)
            side.addr = PHONES[0]
            for k in range(100):  # two seconds of a talking a (b says nothing: it times out)
                routed.packet(routed.a, *side.packet("steady", k), 20 * k)
                routed.eng.tick(20 * k + 10)
            timeouts = [e.channel for e in routed.eng.events() if type(e).__name__ == "RtpTimeout"]
            assert timeouts == [routed.b]
            for k in range(100, 118):  # a falls silent
                routed.eng.tick(20 * k + 10)
            assert [e.channel for e in routed.eng.events() if type(e).__name__ == "RtpTimeout"] == [routed.a]
        finally:
            routed.close()

    asyncio.run(main())


def test_a_peer_socket_connected_to_nothing_again_stops_the_route_sending_from_it() -> None:
    """Whatever disconnects the socket a route sends from (here its reader alone, without the engine), the route
    stops using it: the next packet goes the general way, to the peer's address, and the route is made again."""

    async def main() -> None:
        routed = Routed()
        try:
            side = Side(routed.a, 0)
            side.addr = PHONES[0]
            peer = routed.server._readers[routed.b]
            peer.peer = PHONES[1]
            routed.socks[routed.b].connected = PHONES[1]
            for k in range(5):
                routed.packet(routed.a, *side.packet("steady", k), 20 * k)
            assert routed.server._senders[routed.a] is not None
            peer.unlock()
            assert routed.server._senders[routed.a] is None
            routed.packet(routed.a, *side.packet("steady", 5), 100)
            assert routed.sent[-1][0] == routed.b and routed.sent[-1][2] == PHONES[1]
            assert routed.server._senders[routed.a] is None  # the peer's socket is not connected: sendto
            assert routed.eng.stats(routed.a).packets_in == 6
        finally:
            routed.close()

    asyncio.run(main())


@pytest.mark.parametrize("order", ["bridge_then_close", "close_then_bridge"])
def test_a_blind_transfer_over_real_sockets_sends_the_transferees_audio_to_the_new_party(order: str) -> None:
    """A blind transfer's media steps as call control takes them, on loopback sockets with every phone talking
    throughout: A and B relayed (A's packets from their route), the bridge gone and music to A, C opened and
    talking, the music stopped and A bridged with C, B closed (before or after). Every packet A sends once bridged
    with C reaches C with A's audio (from a route made anew, not B's), and none leaves from B's socket."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lo = random.randrange(20000, 60000, 2)
        server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 200), engine=MediaEngine())
        ends = [await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0)) for _ in range(3)]
        (ta, _pa), (tb, pb), (tc, pc) = ends
        try:
            async with asyncio.timeout(30), server:
                engine = server.engine
                ca = await server.open_channel(Codec.PCMU, ta.get_extra_info("sockname"))
                cb = await server.open_channel(Codec.PCMU, tb.get_extra_info("sockname"))
                bridge = engine.bridge(ca.channel, cb.channel)
                tones = {name: ulaw_encode(_tone(hz, 200)) for name, hz in (("a", 600), ("b", 900), ("c", 1300))}
                sent = 0

                async def step(*talkers: tuple[str, Any, int]) -> None:
                    nonlocal sent
                    for name, transport, port in talkers:
                        payload = tones[name][sent].tobytes()
                        ssrc = {"a": 0xA, "b": 0xB, "c": 0xC}[name]
                        transport.sendto(RtpPacket(0, 1000 * ssrc + sent, sent * F, ssrc, payload).serialize(),
                                         ("127.0.0.1", port))
                    sent += 1
                    await asyncio.sleep(0.02)

                a, b = ("a", ta, ca.port), ("b", tb, cb.port)
                for _ in range(30):
                    await step(a, b)
                assert ROUTE.unpack_from(engine.routes, ca.channel * ROUTE_BYTES)[0] != 0  # A's route to B
                engine.destroy(bridge)
                engine.play(ca.channel, PromptPlayer(np.zeros(8000, dtype=np.int16)))
                for _ in range(3):
                    await step(a, b)
                cc = await server.open_channel(Codec.PCMU, tc.get_extra_info("sockname"))
                c = ("c", tc, cc.port)
                await step(a, c)
                engine.stop_play(ca.channel)
                if order == "bridge_then_close":
                    engine.bridge(ca.channel, cc.channel)
                    server.close_channel(cb.channel)
                else:
                    server.close_channel(cb.channel)
                    engine.bridge(ca.channel, cc.channel)
                at_b, at_c = len(pb.packets), len(pc.packets)
                for _ in range(50):
                    await step(a, c)
                await asyncio.sleep(0.2)
                got = [p for p in pc.packets[at_c:] if p.payload_type == 0]
                assert len(got) == 50, (len(got), server.send_errors)
                assert abs(_dominant(got[-40:]) - 600) < 10
                assert {p.ssrc for p in got} == {engine.ssrc(cc.channel)}
                assert len(pb.packets) == at_b  # nothing more from B's socket
                assert ROUTE.unpack_from(engine.routes, ca.channel * ROUTE_BYTES)[0] != 0  # routed to C now
        finally:
            for transport, _ in ends:
                transport.close()

    asyncio.run(main())
