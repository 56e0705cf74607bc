"""Conference rooms: ``conference:NAME`` destinations, callers mixed together in the media engine.

A room is a ``[[conference]]`` table; :class:`Conferences` holds the live rooms and is the destination handler
for :attr:`DestinationKind.CONFERENCE` (registered by :func:`ccpbx.pbx.wiring.wire_destinations`). A caller

1. is refused before any answer when the room is full (``max_members``): a busy tone in early media (RFC 3960),
   then 486 Busy Here, so a phone never hangs in a half-set-up call;
2. is answered; with a ``pin``, hears a short prompt tone and keys the PIN as DTMF ending with ``#`` (or just its
   length of digits), three tries, then is hung up;
3. joins the room's engine conference, which mixes minus the listener (each member hears the others, not
   itself); a member alone hears music on hold, the others hear a rising beep when someone joins and a falling
   one when someone leaves;
4. leaves when its call ends (BYE, a system hang-up) or its caller is moved elsewhere (``Call.transfer``); the
   engine group is dissolved when the last member leaves. The handler then returns :class:`Finished`.

A room's capacity counts the callers still entering (answering, keying the PIN), so two callers racing for the
last place cannot both get in.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ccpbx.media.errors import MediaError
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.source import SAMPLE_RATE, AudioSource
from ccpbx.media.tones import Region, ToneKind, tone_source
from ccpbx.pbx.calls import (
    Call,
    CallEnded,
    CallEvent,
    CallHangup,
    DigitReceived,
    TransferRequested,
    default_music_on_hold,
)
from ccpbx.pbx.config import ConferenceConfig
from ccpbx.pbx.destinations import Finished, Outcome
from ccpbx.pbx.log import get_logger

__all__ = [
    "ConferenceEngine",
    "Conferences",
    "PinEntry",
    "PinResult",
    "Room",
    "join_beep",
    "leave_beep",
    "pin_prompt",
]

log = get_logger("ccpbx.conference")

FULL_TONE_MS = 1_500  # how long a caller refused by a full room hears the busy tone before the 486
PIN_TRIES = 3
PIN_TRY_MS = 15_000  # time to key one PIN attempt, from its prompt
PIN_FAILED_MS = 600  # the congestion tone a caller hears after the last wrong PIN, before the hang-up
WATCH_MS = 500  # how often a member's call is checked for having been moved out of the room (no event says so)
BEEP_LEVEL = 6000.0


class ConferenceEngine(Protocol):
    """What a room needs of the media engine (:class:`ccpbx.media.engine.MediaEngine` is one)."""

    def conference(self, members: Sequence[int]) -> int: ...

    def add_to_conference(self, gid: int, ch: int) -> None: ...

    def remove_from_conference(self, gid: int, ch: int) -> None: ...

    def destroy(self, gid: int) -> None: ...

    def members(self, gid: int) -> Mapping[int, object]: ...

    def play(self, ch: int, source: AudioSource, *, mix: bool = False) -> int: ...

    def stop_play(self, ch: int) -> None: ...


# ---- PIN entry (pure) ------------------------------------------------------------------------------------------

class PinResult(enum.Enum):
    ACCEPTED = "accepted"
    RETRY = "retry"  # wrong (or timed out); another try follows
    FAILED = "failed"  # wrong on the last try


class PinEntry:
    """The PIN decision, digit by digit: ``#`` ends an attempt, so does keying as many digits as the PIN has.

    A ``#`` with nothing keyed is ignored (a phone that sent ``#`` after a full-length PIN must not burn a try).
    """

    def __init__(self, pin: str, tries: int = PIN_TRIES) -> None:
        self.pin = pin
        self.tries_left = tries
        self.keyed = ""

    def press(self, digit: str) -> PinResult | None:
        """One key; ``None`` while the attempt goes on."""
        if digit == "#":
            if not self.keyed:
                return None
            return self._attempt()
        self.keyed += digit
        if len(self.keyed) >= len(self.pin):
            return self._attempt()
        return None

    def timed_out(self) -> PinResult:
        """The attempt's time ran out: it counts as wrong."""
        return self._attempt()

    def _attempt(self) -> PinResult:
        keyed, self.keyed = self.keyed, ""
        if keyed == self.pin:
            return PinResult.ACCEPTED
        self.tries_left -= 1
        return PinResult.RETRY if self.tries_left > 0 else PinResult.FAILED


# ---- rooms ---------------------------------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class Member:
    """One caller in a room: its call and the engine channel it joined with."""

    call: Call
    channel: int
    destination: str


@dataclass(slots=True)
class Room:
    """The live state of one ``[[conference]]`` room."""

    config: ConferenceConfig
    group: int | None = None  # the engine conference, while anyone is in it
    members: list[Member] = field(default_factory=list)
    entering: int = 0  # callers answered or being answered, not yet joined (PIN entry)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def occupancy(self) -> int:
        return len(self.members) + self.entering

    @property
    def full(self) -> bool:
        return self.occupancy >= self.config.max_members


class Conferences:
    """The live conference rooms and the ``conference:`` destination handler (``await conferences(call, ...)``).

    Parameters
    ----------
    rooms : the ``[[conference]]`` tables
    region : the tone plan of the busy and congestion tones
    music : 8 kHz mono int16 played to a member alone; the generated melody when ``None``
    """

    def __init__(self, rooms: Iterable[ConferenceConfig], *, region: Region = Region.ETSI,
                 music: npt.NDArray[np.int16] | None = None, engine: Callable[[Call], ConferenceEngine] | None = None
                 ) -> None:
        self.rooms: dict[str, Room] = {r.name: Room(r) for r in rooms}
        self.region = region
        self._music = music
        self._engine = engine or _engine_of

    def validate(self, target: str) -> str | None:
        """``ccpbx config check``: a ``conference:`` destination must name a defined room."""
        if target in self.rooms:
            return None
        defined = ", ".join(f'"{name}"' for name in self.rooms) or "none"
        return f'names conference room "{target}", which is not defined (rooms: {defined})'

    @property
    def music(self) -> npt.NDArray[np.int16]:
        if self._music is None:
            self._music = default_music_on_hold()
        return self._music

    async def __call__(self, call: Call, target: str, number: str) -> Outcome:
        room = self.rooms.get(target)
        if room is None:  # a rule's template named a room that does not exist
            log.warning("conference.unknown", room=target)
            await self._tone_then_reject(call, ToneKind.CONGESTION, 404, "No such conference")
            return Finished()
        call.destination = f"conference:{room.name}"
        if room.full:
            log.info("conference.full", room=room.name, members=len(room.members),
                     max_members=room.config.max_members)
            await self._tone_then_reject(call, ToneKind.BUSY, 486, "Conference full")
            return Finished()
        room.entering += 1
        try:
            await call.answer()
            if room.config.pin is not None and not await self._pin(call, room.config.pin):
                log.info("conference.pin.failed", room=room.name)
                call.hangup()
                return Finished()
            member = self._join(room, call)
        finally:
            room.entering -= 1
        try:
            await self._stay(member)
        finally:
            self._leave(room, member)
        return Finished()

    # ---- entering ------------------------------------------------------------------------------------------
    async def _tone_then_reject(self, call: Call, tone: ToneKind, status: int, reason: str) -> None:
        try:
            await call.early_media(tone_source(tone, self.region))
            await asyncio.sleep(FULL_TONE_MS / 1000)
        except CallHangup:
            return
        await call.reject(status, reason)

    async def _pin(self, call: Call, pin: str) -> bool:
        """Collect the PIN from the caller's digits; True when it was keyed right within ``PIN_TRIES`` tries."""
        entry = PinEntry(pin)
        loop = asyncio.get_running_loop()
        channel = call.a.channel
        if channel is None:
            raise CallHangup("the caller has gone")
        engine = self._engine(call)
        while True:
            _play_to_caller(engine, call, channel, PromptPlayer(pin_prompt()))
            deadline = loop.time() + PIN_TRY_MS / 1000
            result: PinResult | None = None
            while result is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    result = entry.timed_out()
                    break
                try:
                    event = await asyncio.wait_for(call.wait_event(), remaining)
                except TimeoutError:
                    continue
                if isinstance(event, CallEnded):
                    raise CallHangup("the caller left while keying the PIN")
                if isinstance(event, DigitReceived) and event.leg is call.a:
                    result = entry.press(event.digit)
                elif isinstance(event, TransferRequested):
                    _decline_transfer(call, event)
            if result is PinResult.ACCEPTED:
                return True  # (joining stops the prompt)
            log.info("conference.pin.wrong", tries_left=entry.tries_left)
            if result is PinResult.FAILED:
                _play_to_caller(engine, call, channel, tone_source(ToneKind.CONGESTION, self.region))
                await asyncio.sleep(PIN_FAILED_MS / 1000)
                return False

    def _join(self, room: Room, call: Call) -> Member:
        channel = call.a.channel
        if channel is None or call.finished:
            raise CallHangup("the caller has gone")
        engine = self._engine(call)
        engine.stop_play(channel)  # the PIN prompt, if any
        if room.group is not None and not _group_exists(engine, room.group):
            room.group = None  # the engine dissolved it when its last channel closed
        if room.group is None:
            room.group = engine.conference([channel])
        else:
            engine.add_to_conference(room.group, channel)
        member = Member(call, channel, call.destination)
        others = list(room.members)
        room.members.append(member)
        if not others:
            if room.config.music_when_alone:
                engine.play(channel, MusicOnHold(self.music))
        else:
            for other in others:
                self._play_to(engine, other, PromptPlayer(join_beep()) if room.config.tones else None)
        log.info("conference.joined", room=room.name, members=len(room.members))
        return member

    # ---- in the room ---------------------------------------------------------------------------------------
    async def _stay(self, member: Member) -> None:
        """Wait until the member's call ends or it is taken out of the room (moved by ``Call.transfer``)."""
        call = member.call
        getter: asyncio.Task[CallEvent] | None = None
        try:
            while not _moved_or_gone(member):
                if getter is None:
                    getter = asyncio.ensure_future(call.wait_event())
                done, _ = await asyncio.wait({getter}, timeout=WATCH_MS / 1000)
                if not done:
                    continue
                event = getter.result()
                getter = None
                if isinstance(event, CallEnded):
                    return
                if isinstance(event, TransferRequested):
                    _decline_transfer(call, event)
                # digits are ignored in the room (mute and the like would go here)
        finally:
            if getter is not None:
                getter.cancel()

    def _leave(self, room: Room, member: Member) -> None:
        call = member.call
        engine = self._engine(call)
        with contextlib.suppress(ValueError):
            room.members.remove(member)
        ours = _still_ours(member)
        if room.group is not None and _group_exists(engine, room.group):
            if _channel_open(member) and member.channel in engine.members(room.group):
                with contextlib.suppress(MediaError):
                    engine.remove_from_conference(room.group, member.channel)
            if not room.members:
                with contextlib.suppress(MediaError):
                    engine.destroy(room.group)
        if not room.members:
            room.group = None
        if ours:
            with contextlib.suppress(MediaError):
                engine.stop_play(member.channel)  # music or a beep still playing to the leaver
        if len(room.members) == 1 and room.config.music_when_alone:
            self._play_to(engine, room.members[0], MusicOnHold(self.music), mix=False)
        elif room.members and room.config.tones:
            for other in room.members:
                self._play_to(engine, other, PromptPlayer(leave_beep()))
        log.info("conference.left", room=room.name, members=len(room.members),
                 reason="ended" if call.finished else "moved")

    @staticmethod
    def _play_to(engine: ConferenceEngine, member: Member, source: AudioSource | None, *, mix: bool = True) -> None:
        """Play ``source`` to a member over the mix (or replacing it), stopping its music on hold first."""
        if not _still_ours(member):
            return
        with contextlib.suppress(MediaError):
            if source is None:
                engine.stop_play(member.channel)  # a lone member's music, now that someone came
            else:
                engine.play(member.channel, source, mix=mix)  # replaces the music too: one player a channel


def _engine_of(call: Call) -> ConferenceEngine:
    return call.manager.engine


def _group_exists(engine: ConferenceEngine, gid: int) -> bool:
    try:
        engine.members(gid)
    except MediaError:
        return False
    return True


def _play_to_caller(engine: ConferenceEngine, call: Call, channel: int, source: AudioSource) -> None:
    """Play to the caller on ``channel``; :class:`CallHangup` when the caller's channel closed meanwhile (its BYE
    came in before the digits queued ahead of it were read), never a play on a channel number reused since."""
    if call.a.ended or call.a.channel != channel:
        raise CallHangup("the caller has gone")
    try:
        engine.play(channel, source)
    except MediaError as exc:
        raise CallHangup("the caller's media has gone") from exc


def _channel_open(member: Member) -> bool:
    """The member's leg still has the channel it joined with (a closed channel left every group by itself,
    and its number may already belong to another leg)."""
    a = member.call.a
    return not a.ended and a.channel == member.channel


def _still_ours(member: Member) -> bool:
    """The member's caller is still on the channel it joined with, in the call that joined (not moved)."""
    call = member.call
    a = call.a
    return (not call.finished and not a.ended and a.channel == member.channel and a.call is call
            and call.destination == member.destination)


def _moved_or_gone(member: Member) -> bool:
    return not _still_ours(member) or member.call.bridge_id is not None


def _decline_transfer(call: Call, event: TransferRequested) -> None:
    """A member's REFER: there is nobody to transfer in a room (RFC 3515 §2.4.5: a final NOTIFY)."""
    call.decline_transfer(event, 603, "Declined")
    log.info("conference.transfer.declined", target=event.target)


# ---- sounds --------------------------------------------------------------------------------------------------

def _beeps(frequencies: Sequence[float], on_ms: int, gap_ms: int) -> npt.NDArray[np.int16]:
    pieces = []
    for f in frequencies:
        t = np.arange(SAMPLE_RATE * on_ms // 1000) / SAMPLE_RATE
        ramp = np.minimum(1.0, np.minimum(t, t[::-1]) * 200.0)  # 5 ms fades: no clicks
        pieces.append(np.sin(2 * np.pi * f * t) * ramp * BEEP_LEVEL)
        pieces.append(np.zeros(SAMPLE_RATE * gap_ms // 1000))
    return np.concatenate(pieces).astype(np.int16)


def join_beep() -> npt.NDArray[np.int16]:
    """Two rising beeps: someone joined the room."""
    return _beeps((700.0, 1050.0), 110, 30)


def leave_beep() -> npt.NDArray[np.int16]:
    """Two falling beeps: someone left the room."""
    return _beeps((1050.0, 700.0), 110, 30)


def pin_prompt() -> npt.NDArray[np.int16]:
    """Three short beeps on one note: key the PIN now (until spoken prompts exist)."""
    return _beeps((880.0, 880.0, 880.0), 90, 90)
