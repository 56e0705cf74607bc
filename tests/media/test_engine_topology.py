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


def test_holds_nest_and_the_outermost_release_decides() -> None:
    twin = Twin()
    a = twin.chs[0]
    twin.eng.hold_topology()
    twin.eng.hold_topology()  # a channel's settings inside a media worker's batch
    twin.eng.enable_dtmf_detection(a, True)
    twin.eng.release_topology()
    assert twin.eng.relaying(a) and twin.changes == []  # the inner release decides nothing yet
    twin.eng.release_topology()
    assert not twin.eng.relaying(a) and (a, False) in twin.changes


# Held over a run of commands (a caller of the engine may hold across several): channels opened, bridged, set,
# unbridged, closed and opened again under one hold must end decided as if each command had been decided alone.
COMMAND = st.one_of(
    st.tuples(st.just("open"), st.integers(0, 3)),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("bridge"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("conference"), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("destroy"), st.integers(0, 7)),
    st.tuples(st.just("direction"), st.integers(0, 3), st.sampled_from(list(Direction))),
    st.tuples(st.just("detect"), st.integers(0, 3), st.booleans()),
)
FOUR = [*PHONES, ("192.0.2.4", 40006)]


class Board:
    """An engine and what the test opened on it: a channel per phone (None when closed), the groups made."""

    def __init__(self) -> None:
        self.eng = MediaEngine(rng=random.Random(11), rtp_timeout_ms=10_000)
        self.changes: list[tuple[int, bool]] = []
        self.eng.on_relay_change = lambda ch, on: self.changes.append((ch, on))
        self.chs: list[int | None] = [self.eng.open_channel(Codec.PCMU, addr) for addr in FOUR]
        self.groups: list[int] = []

    def run(self, command: tuple[object, ...]) -> None:
        eng, chs = self.eng, self.chs
        op = command[0]
        if op == "open":
            i = command[1]
            assert isinstance(i, int)
            if chs[i] is None:
                chs[i] = eng.open_channel(Codec.PCMU, FOUR[i])
        elif op == "close":
            i = command[1]
            assert isinstance(i, int)
            ch = chs[i]
            if ch is not None:
                eng.close_channel(ch)
                chs[i] = None
        elif op in ("bridge", "conference"):
            members = [chs[i] for i in dict.fromkeys(command[1:])]  # type: ignore[index]
            if len(members) >= 2 and None not in members:
                self.groups.append(eng.conference(members))  # type: ignore[arg-type]
        elif op == "destroy":
            live = [g for g in self.groups if eng._mixer.has_group(g)]
            if live:
                gid = live[command[1] % len(live)]  # type: ignore[operator]
                eng.destroy(gid)
        else:
            ch = chs[command[1]]  # type: ignore[index]
            if ch is None:
                return
            if op == "direction":
                eng.set_direction(ch, command[2])  # type: ignore[arg-type]
            else:
                eng.enable_dtmf_detection(ch, bool(command[2]))

    def decisions(self) -> list[tuple[bool, bool] | None]:
        return [None if ch is None else (self.eng.relaying(ch), bool(self.eng._dtmf[ch])) for ch in self.chs]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(COMMAND, min_size=1, max_size=8), min_size=1, max_size=6))
def test_a_held_batch_of_commands_is_decided_as_if_each_was_on_its_own(batches: list[list[tuple[object, ...]]]) -> None:
    plain, held = Board(), Board()
    alike = True  # no relay change undone within a batch so far: jitter buffers and markers alike too
    for now, batch in enumerate(batches, start=1):
        held.eng.hold_topology()
        for command in batch:
            plain.run(command)
            held.run(command)
        held.eng.release_topology()
        assert held.chs == plain.chs  # the same channel numbers: the engines made the same moves
        assert held.decisions() == plain.decisions()
        alike = alike and held.changes == plain.changes
        # packets of each open phone and a tick: both engines send the same (the relay routes agree too)
        for i, ch in enumerate(plain.chs):
            if ch is not None:
                packet = HEADER.pack(0x80, 0, now, now * 160, 2000 + i) + bytes([0x40 + i]) * 160
                plain.eng.receive(ch, packet, FOUR[i], 20 * now)
                held.eng.receive(ch, packet, FOUR[i], 20 * now)
        plain.eng.tick(20 * now)
        held.eng.tick(20 * now)
        sent_held, sent_plain = held.eng.outgoing(), plain.eng.outgoing()
        if alike:
            assert sorted(sent_held) == sorted(sent_plain)
