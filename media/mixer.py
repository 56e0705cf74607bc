"""Audio mixing by index arithmetic: bridges, conferences with mix-minus, whisper, monitor, barge.

The topology (who hears whom) changes rarely; the audio changes every 20 ms. So the topology is compiled
once into index arrays (:class:`MixPlan`) and each tick is a handful of numpy gathers and adds over all
channels at once::

    acc[l] = sum_{s in pairs(l)} pcm[s] + sum_{g in groups(l)} (S[g] - own(l, g))   (int32)
    out[l] = clip(acc[l] (+ player frame), -32768, 32767)                           (int16)

where ``S[g]`` is the sum of the speakers of conference ``g`` (one ``np.add.reduceat``) and ``own`` the
listener's own row when it is a speaker of ``g`` (mix-minus: nobody hears themselves). Small groups (a
two-party bridge) are expanded into direct (listener, source) pairs, which is a single gather per tick.

Roles inside a group:

- ``Role.SPEAKER``: hears every other speaker and is heard by all members (a party, or a barging supervisor).
- ``Role.LISTEN_ONLY``: hears the speakers, contributes nothing (silent monitor).
- ``Role.WHISPER_TO(target)``: hears the speakers and is heard by ``target`` only (coaching an agent).

Pairs with the same listener are split into layers with unique listeners so that plain fancy-index ``+=``
(fast) can be used instead of ``np.add.at`` (about 40x slower on these machines).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES = 160  # 20 ms at 8 kHz; mirrors media.source.FRAME_SAMPLES (the mixer works for any width)
PAIRWISE_MAX_SPEAKERS = 2  # groups with more speakers use the conference sum minus the listener's own row
INT16_MIN = -32768
INT16_MAX = 32767


class RoleKind(enum.Enum):
    """What a member of a mix group does."""

    SPEAKER = "speaker"
    LISTEN_ONLY = "listen_only"
    WHISPER = "whisper"


@dataclass(frozen=True, slots=True)
class Role:
    """A member's role in a mix group; ``target`` is the channel a whisperer is heard by."""

    kind: RoleKind
    target: int | None = None

    SPEAKER: ClassVar[Role]
    LISTEN_ONLY: ClassVar[Role]

    @staticmethod
    def WHISPER_TO(target: int) -> Role:  # noqa: N802 - reads as a constant constructor, like the others
        """A member heard only by channel ``target`` (and hearing the whole group)."""
        return Role(RoleKind.WHISPER, int(target))


Role.SPEAKER = Role(RoleKind.SPEAKER)
Role.LISTEN_ONLY = Role(RoleKind.LISTEN_ONLY)


def _demote_whispers_to(members: dict[int, Role], ch: int) -> bool:
    """Whoever whispered to ``ch`` becomes a listener; True if anyone did.

    Values are replaced in place while iterating (the dict does not change size): a member leaving a big
    conference no longer copies the whole member list, only the (rare) whisperers found.
    """
    found = False
    for other, role in members.items():
        if role.target == ch and role.kind is RoleKind.WHISPER:
            members[other] = Role.LISTEN_ONLY
            found = True
    return found


def _intp(values: Iterable[int]) -> npt.NDArray[np.intp]:
    return np.fromiter(values, dtype=np.intp)


@dataclass(frozen=True, slots=True)
class MixPlan:
    """Compiled index arrays of a topology (all arrays intp).

    Attributes
    ----------
    listener_rows : shape (L,), the channel rows that receive a mix, in accumulator order
    prefix_src : shape (P,), sources added to accumulator rows ``0..P-1`` (every listener's first pair)
    pair_layers : tuples (lidx, src) for the remaining pairs, each layer with unique ``lidx``
    sum_src : shape (S,), speaker rows of the summed groups, sorted by group
    sum_starts : shape (G,), start offsets of each group within ``sum_src`` (for ``np.add.reduceat``)
    sum_layers : tuples (lidx, gidx): accumulator rows that add group sum ``gidx``, unique per layer
    minus_layers : tuples (lidx, src): a speaker's own row subtracted from its group sum, unique per layer
    lidx_of_row : shape (max_row + 1,), accumulator index of a channel row or -1
    """

    listener_rows: npt.NDArray[np.intp]
    prefix_src: npt.NDArray[np.intp]
    pair_layers: tuple[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]], ...]
    sum_src: npt.NDArray[np.intp]
    sum_starts: npt.NDArray[np.intp]
    sum_layers: tuple[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]], ...]
    minus_layers: tuple[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]], ...]
    lidx_of_row: npt.NDArray[np.intp]
    hears: Mapping[int, frozenset[int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.listener_rows.size == 0


def _layers(
    terms: list[tuple[int, int]],
) -> tuple[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]], ...]:
    """Split (lidx, value) terms into layers where each lidx appears at most once."""
    layers: list[tuple[list[int], list[int]]] = []
    count: dict[int, int] = {}
    for lidx, value in terms:
        k = count.get(lidx, 0)
        count[lidx] = k + 1
        if k == len(layers):
            layers.append(([], []))
        layers[k][0].append(lidx)
        layers[k][1].append(value)
    return tuple((_intp(a), _intp(b)) for a, b in layers)


def compile_plan(groups: Iterable[Mapping[int, Role]]) -> MixPlan:
    """Compile mix groups (``{channel_row: Role}`` each) into a :class:`MixPlan`.

    Called when the topology changes, never per tick. A channel may belong to several groups.
    """
    pairs: dict[int, list[int]] = {}
    sum_terms: list[tuple[int, int]] = []  # (listener row, group index)
    minus_terms: list[tuple[int, int]] = []  # (listener row, own row)
    sum_src: list[int] = []
    sum_starts: list[int] = []
    hears: dict[int, set[int]] = {}

    for members in groups:
        speakers = [ch for ch, role in members.items() if role.kind is RoleKind.SPEAKER]
        for ch in members:
            pairs.setdefault(ch, [])
            heard = hears.setdefault(ch, set())
            heard.update(s for s in speakers if s != ch)
        if len(speakers) <= PAIRWISE_MAX_SPEAKERS:
            for ch in members:
                pairs[ch].extend(s for s in speakers if s != ch)
        else:
            gidx = len(sum_starts)
            sum_starts.append(len(sum_src))
            sum_src.extend(speakers)
            for ch, role in members.items():
                sum_terms.append((ch, gidx))
                if role.kind is RoleKind.SPEAKER:
                    minus_terms.append((ch, ch))
        for ch, role in members.items():
            if role.kind is RoleKind.WHISPER and role.target is not None and role.target != ch:
                pairs.setdefault(role.target, []).append(ch)
                hears.setdefault(role.target, set()).add(ch)

    # Listeners with at least one pair first, so every listener's first pair is one contiguous slice.
    with_pairs = [ch for ch, srcs in pairs.items() if srcs]
    without = [ch for ch, srcs in pairs.items() if not srcs]
    order = with_pairs + without
    lidx = {ch: i for i, ch in enumerate(order)}
    prefix_src = _intp(pairs[ch][0] for ch in with_pairs)
    rest = [(lidx[ch], s) for ch in with_pairs for s in pairs[ch][1:]]
    lidx_of_row = np.full(max(order, default=-1) + 1, -1, dtype=np.intp)
    if order:
        lidx_of_row[_intp(order)] = np.arange(len(order), dtype=np.intp)
    return MixPlan(
        listener_rows=_intp(order),
        prefix_src=prefix_src,
        pair_layers=_layers(rest),
        sum_src=_intp(sum_src),
        sum_starts=_intp(sum_starts),
        sum_layers=_layers([(lidx[ch], g) for ch, g in sum_terms]),
        minus_layers=_layers([(lidx[ch], s) for ch, s in minus_terms]),
        lidx_of_row=lidx_of_row,
        hears={ch: frozenset(s) for ch, s in hears.items()},
    )


EMPTY_PLAN = compile_plan(())


def mix(
    plan: MixPlan,
    pcm: npt.NDArray[np.int16],
    out: npt.NDArray[np.int16],
    player_rows: npt.NDArray[np.intp] | None = None,
    player_frames: npt.NDArray[np.int16] | None = None,
    player_mix: npt.NDArray[np.bool_] | None = None,
) -> None:
    """Mix one frame for every listener of ``plan`` and add the players' frames.

    Parameters
    ----------
    plan : the compiled topology
    pcm : ndarray, shape (channels, n), int16 -- what each channel said this frame (decoded inbound audio)
    out : ndarray, shape (channels, n), int16 -- what each channel hears; rows that are neither listeners nor
        players are left untouched (the caller zeroes them)
    player_rows : ndarray, shape (p,), intp, unique -- channels with a player attached this frame
    player_frames : ndarray, shape (p, n), int16 -- the players' frames
    player_mix : ndarray, shape (p,), bool -- True: the frame is added to what the channel hears;
        False: it replaces it (a prompt or music on hold instead of the bridge audio)
    """
    n_listen = plan.listener_rows.size
    width = pcm.shape[1]
    acc = np.zeros((n_listen, width), dtype=np.int32)
    if plan.prefix_src.size:
        acc[: plan.prefix_src.size] += pcm[plan.prefix_src]
    for lidx, src in plan.pair_layers:
        acc[lidx] += pcm[src]
    if plan.sum_starts.size:
        sums = np.add.reduceat(pcm[plan.sum_src].astype(np.int32), plan.sum_starts, axis=0)
        for lidx, gidx in plan.sum_layers:
            acc[lidx] += sums[gidx]
        for lidx, src in plan.minus_layers:
            acc[lidx] -= pcm[src]

    if player_rows is not None and player_frames is not None and player_rows.size:
        mix_mask = np.ones(player_rows.size, dtype=bool) if player_mix is None else player_mix
        table = plan.lidx_of_row
        known = player_rows < table.size
        where = np.full(player_rows.size, -1, dtype=np.intp)
        where[known] = table[player_rows[known]]
        listening = where >= 0
        adds = listening & mix_mask
        if adds.any():
            acc[where[adds]] += player_frames[adds]
        repl = listening & ~mix_mask
        if repl.any():
            acc[where[repl]] = player_frames[repl]
        alone = ~listening
        if alone.any():
            out[player_rows[alone]] = player_frames[alone]

    if n_listen:
        np.clip(acc, INT16_MIN, INT16_MAX, out=acc)
        out[plan.listener_rows] = acc


class Mixer:
    """Holds the mix groups of an engine and recompiles the plan only when they change.

    Groups marked relayed (:meth:`set_relayed`: every member's packets are relayed, nothing is mixed) stay out
    of the plan, and changes to them do not recompile it: with thousands of relayed two-party calls and a call
    set up or torn down every tick, the plan is rebuilt from the few mixed groups, not from all of them.
    """

    __slots__ = ("_dirty", "_groups", "_plan", "_relayed")

    def __init__(self) -> None:
        self._groups: dict[int, dict[int, Role]] = {}
        self._relayed: set[int] = set()
        self._plan = EMPTY_PLAN
        self._dirty = False

    def set_group(self, gid: int, members: Mapping[int, Role]) -> None:
        """Create or replace group ``gid`` (mixed until :meth:`set_relayed` says otherwise)."""
        self._groups[gid] = dict(members)
        self._relayed.discard(gid)
        self._dirty = True

    def set_relayed(self, gid: int, relayed: bool) -> None:
        """Mark group ``gid`` relayed (left out of the plan) or mixed."""
        if relayed == (gid in self._relayed):
            return
        if relayed:
            self._relayed.add(gid)
        else:
            self._relayed.discard(gid)
        self._dirty = True

    def _changed(self, gid: int) -> None:
        if gid not in self._relayed:
            self._dirty = True

    def add_member(self, gid: int, ch: int, role: Role) -> None:
        self._groups[gid][ch] = role
        self._changed(gid)

    def remove_member(self, gid: int, ch: int) -> None:
        """Drop ``ch`` from group ``gid``; whoever whispered to it becomes a listener."""
        members = self._groups[gid]
        if members.pop(ch, None) is not None:
            self._changed(gid)
            _demote_whispers_to(members, ch)

    def remove_group(self, gid: int) -> None:
        if self._groups.pop(gid, None) is not None:
            self._changed(gid)
            self._relayed.discard(gid)

    def remove_channel(self, ch: int) -> None:
        """Drop ``ch`` from every group, and any whisper aimed at it."""
        for gid, members in self._groups.items():
            if members.pop(ch, None) is not None:
                self._changed(gid)
            if _demote_whispers_to(members, ch):
                self._changed(gid)

    def group(self, gid: int) -> Mapping[int, Role]:
        return self._groups[gid]

    def has_group(self, gid: int) -> bool:
        return gid in self._groups

    @property
    def groups(self) -> Mapping[int, Mapping[int, Role]]:
        return self._groups

    @property
    def plan(self) -> MixPlan:
        """The compiled plan of the mixed groups, rebuilt lazily after a change to one of them."""
        if self._dirty:
            relayed = self._relayed
            self._plan = compile_plan(m for g, m in self._groups.items() if g not in relayed)
            self._dirty = False
        return self._plan
