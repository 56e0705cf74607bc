"""``MediaEngine.hold_topology`` / ``release_topology``: settings given together are decided on once.

A media worker applies a channel's settings from one SDP exchange (codec, packet time, remote, direction, DTMF
detection) inside a hold, so the relay and detection decisions are made once. Two engines in the same state are
given the same batches of settings, one plainly and one held; after each batch both must have decided alike
(relay fast path, in-band detection, relay changes reported) and must then send the same packets.
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccpbx.media.engine import Direction, MediaEngine
from ccpbx.media.g711 import Codec

PHONES = [("192.0.2.1", 40000), ("192.0.2.2", 40002), ("192.0.2.3", 40004)]  # RFC 5737: nothing leaves
ELSEWHERE = ("198.51.100.7", 50000)
HEADER = struct.Struct("!BBHII")

SETTING = st.one_of(
    st.tuples(st.just("codec"), st.sampled_from([Codec.PCMU, Codec.PCMA])),
    st.tuples(st.just("ptime"), st.sampled_from([None, 20, 30])),
    st.tuples(st.just("remote"), st.sampled_from([None, ELSEWHERE, PHONES[0]])),
    st.tuples(st.just("direction"), st.sampled_from(list(Direction))),
    st.tuples(st.just("detect"), st.tuples(st.booleans(), st.booleans())),
    st.tuples(st.just("restart_timeout"), st.none()),
)
BATCH = st.tuples(st.integers(0, 2), st.lists(SETTING, min_size=1, max_size=6))


class Twin:
    """An engine with three channels, the first two bridged, recording the relay changes it reports."""

    def __init__(self) -> None:
        self.eng = MediaEngine(rng=random.Random(7), rtp_timeout_ms=10_000)
        self.changes: list[tuple[int, bool]] = []
        self.eng.on_relay_change = lambda ch, on: self.changes.append((ch, on))
        self.chs = [self.eng.open_channel(Codec.PCMU, addr) for addr in PHONES]
        self.eng.bridge(self.chs[0], self.chs[1])
        self.changes.clear()

    def apply(self, index: int, batch: list[tuple[str, object]], held: bool) -> None:
        eng, ch = self.eng, self.chs[index]
        if held:
            eng.hold_topology()
        for name, value in batch:
            if name == "codec":
                assert isinstance(value, Codec)
                eng.set_codec(ch, value, 101)
            elif name == "ptime":
                eng.set_send_ptime(ch, value)  # type: ignore[arg-type]
            elif name == "remote":
                eng.set_remote(ch, value)  # type: ignore[arg-type]
            elif name == "direction":
                eng.set_direction(ch, value)  # type: ignore[arg-type]
            elif name == "detect":
                enabled, unpaired = value  # type: ignore[misc]
                eng.enable_dtmf_detection(ch, enabled, unpaired_only=unpaired)
            else:
                eng.restart_rtp_timeout(ch)
        if held:
            eng.release_topology()

    def decisions(self) -> list[tuple[bool, bool]]:
        return [(self.eng.relaying(ch), bool(self.eng._dtmf[ch])) for ch in self.chs]

    def feed(self, now: int, seq: int) -> list[tuple[bytes, tuple[str, int]]]:
        """A packet from each bridged phone, a tick: what the engine sends."""
        for index in (0, 1):
            packet = HEADER.pack(0x80, 0, seq, seq * 160, 1000 + index) + bytes([0x55 + index]) * 160
            self.eng.receive(self.chs[index], packet, PHONES[index], now)
        self.eng.tick(now)
        return self.eng.outgoing()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(BATCH, min_size=1, max_size=8))
def test_held_settings_are_decided_as_if_given_one_by_one(batches: list[tuple[int, list[tuple[str, object]]]]) -> None:
    plain, held = Twin(), Twin()
    alike = True  # both engines' jitter buffers and markers as well as their decisions
    for step, (index, batch) in enumerate(batches):
        seen = len(plain.changes), len(held.changes)
        plain.apply(index, batch, held=False)
        held.apply(index, batch, held=True)
        assert held.decisions() == plain.decisions()
        plain_changes, held_changes = plain.changes[seen[0]:], held.changes[seen[1]:]
        # The held engine reports the outcome only: a relay change the batch undid before its end is not made
        # (nor the fresh jitter buffer and marker bit of a return to the audio path that came with it).
        net: dict[int, bool] = {}
        for ch, on in plain_changes:
            net[ch] = on
        first = {ch: on for ch, on in plain_changes[::-1]}  # a channel's first change leaves what it was before
        assert sorted(held_changes) == sorted((ch, on) for ch, on in net.items() if first[ch] == on)
        alike = alike and held_changes == plain_changes
        now = 20 * (step + 1)
        sent_held, sent_plain = held.feed(now, step), plain.feed(now, step)
        if alike:
            assert sent_held == sent_plain


def test_a_held_change_is_not_decided_before_the_release() -> None:
    twin = Twin()
    a, b = twin.chs[0], twin.chs[1]
    assert twin.eng.relaying(a) and twin.eng.relaying(b)
    twin.eng.hold_topology()
    twin.eng.enable_dtmf_detection(a, True)  # an in-band detector needs the audio path
    twin.eng.set_direction(b, Direction.RECVONLY)
    assert twin.eng.relaying(a) and twin.changes == []  # still as before: decided at the release
    twin.eng.release_topology()
    assert not twin.eng.relaying(a) and not twin.eng.relaying(b)
    assert sorted(twin.changes) == [(a, False), (b, False)]
    twin.eng.release_topology()  # a release without a hold decides nothing again
    assert len(twin.changes) == 2
