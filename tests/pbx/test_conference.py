"""Conference rooms with a fake engine and fake calls: bookkeeping, capacity, PIN entry, leaving, config check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ccpbx.cli.main import EXIT_CONFIG, main
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.source import AudioSource
from ccpbx.media.tones import ToneSource
from ccpbx.pbx import conference as conference_module
from ccpbx.pbx.calls import CallEnded, CallHangup, DigitReceived, TransferRequested
from ccpbx.pbx.cdr import HangupSide
from ccpbx.pbx.conference import Conferences, PinEntry, PinResult
from ccpbx.pbx.config import ConferenceConfig, ConfigError, load_config
from ccpbx.pbx.destinations import Finished
from ccpbx.pbx.wiring import check_destinations

STEP_S = 0.05  # long enough for the handler tasks to react to what a test did (the watch interval is 10 ms)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conference_module, "WATCH_MS", 10)
    monkeypatch.setattr(conference_module, "FULL_TONE_MS", 0)
    monkeypatch.setattr(conference_module, "PIN_FAILED_MS", 0)


HANDLER_TASKS: list[asyncio.Task[object]] = []


@pytest.fixture(autouse=True)
async def _no_stray_tasks() -> AsyncIterator[None]:
    """Every handler task ends with its test, its exception retrieved: an unretrieved one is logged from a
    finalizer at some later garbage collection, in the middle of another test."""
    yield
    tasks, HANDLER_TASKS[:] = list(HANDLER_TASKS), []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- fakes ---------------------------------------------------------------------------------------------------

@dataclass
class FakeEngine:
    """The conference part of the media engine, with its rule that closing a group's last channel dissolves it."""

    groups: dict[int, set[int]] = field(default_factory=dict)
    players: dict[int, tuple[AudioSource, bool]] = field(default_factory=dict)
    next_id: int = 100
    destroyed: list[int] = field(default_factory=list)
    closed: set[int] = field(default_factory=set)

    def conference(self, members: Sequence[int]) -> int:
        self.next_id += 1
        self.groups[self.next_id] = set(members)
        return self.next_id

    def add_to_conference(self, gid: int, ch: int) -> None:
        self.members(gid)
        self.groups[gid].add(ch)

    def remove_from_conference(self, gid: int, ch: int) -> None:
        self.members(gid)
        self.groups[gid].discard(ch)

    def destroy(self, gid: int) -> None:
        self.members(gid)
        del self.groups[gid]
        self.destroyed.append(gid)

    def members(self, gid: int) -> Mapping[int, object]:
        if gid not in self.groups:
            raise MediaConfigError(f"no bridge/conference {gid}")
        return dict.fromkeys(self.groups[gid], "speaker")

    def play(self, ch: int, source: AudioSource, *, mix: bool = False) -> int:
        if ch in self.closed:
            raise MediaConfigError(f"no open channel {ch}")
        self.players[ch] = (source, mix)
        return 1

    def stop_play(self, ch: int) -> None:
        self.players.pop(ch, None)

    def close_channel(self, ch: int) -> None:
        self.closed.add(ch)
        self.players.pop(ch, None)
        for gid in list(self.groups):
            self.groups[gid].discard(ch)
            if not self.groups[gid]:
                del self.groups[gid]

    def hears(self, ch: int) -> type | None:
        player = self.players.get(ch)
        return type(player[0]) if player is not None else None


@dataclass
class FakeLeg:
    channel: int | None
    call: Any = None
    ended: bool = False


@dataclass
class FakeManager:
    engine: FakeEngine
    notified: list[tuple[int, bool]] = field(default_factory=list)

    def transfer_progress(self, transferor: object, status: int, reason: str, *, final: bool = False) -> None:
        self.notified.append((status, final))


class FakeCall:
    """What the handler uses of :class:`ccpbx.pbx.calls.Call`."""

    def __init__(self, manager: FakeManager, channel: int) -> None:
        self.manager = manager
        self.a = FakeLeg(channel)
        self.a.call = self
        self.destination = ""
        self.finished = False
        self.bridge_id: int | None = None
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.answered = False
        self.rejected: int | None = None
        self.early: list[AudioSource] = []

    async def answer(self) -> None:
        if self.finished:
            raise CallHangup("gone")
        self.answered = True

    async def reject(self, status: int, reason: str | None = None) -> None:
        self.rejected = status
        self.finished = True

    async def early_media(self, source: AudioSource) -> None:
        self.early.append(source)

    def hangup(self) -> None:
        self.end(HangupSide.SYSTEM)

    def decline_transfer(self, request: object, status: int = 603, reason: str = "Declined") -> None:
        self.manager.transfer_progress(request, status, reason, final=True)

    async def wait_event(self) -> object:
        return await self.events.get()

    def end(self, side: HangupSide = HangupSide.CALLER) -> None:
        """The caller hangs up: the leg's channel closes (leaving its engine groups), then CallEnded."""
        if self.finished:
            return
        self.finished = True
        self.a.ended = True
        if self.a.channel is not None:
            self.manager.engine.close_channel(self.a.channel)
            self.a.channel = None
        self.events.put_nowait(CallEnded(side))

    def key(self, digits: str) -> None:
        for digit in digits:
            self.events.put_nowait(DigitReceived(self.a, digit))  # type: ignore[arg-type]


class Harness:
    def __init__(self, *rooms: ConferenceConfig) -> None:
        self.engine = FakeEngine()
        self.manager = FakeManager(self.engine)
        self.rooms = Conferences(rooms, engine=lambda call: self.engine)  # type: ignore[arg-type,return-value]
        self.next_channel = 0
        self.tasks: list[asyncio.Task[object]] = []

    def dial(self, room: str) -> tuple[FakeCall, asyncio.Task[object]]:
        self.next_channel += 1
        call = FakeCall(self.manager, self.next_channel)
        task: asyncio.Task[object] = asyncio.ensure_future(self.rooms(call, room, "800"))  # type: ignore[arg-type]
        self.tasks.append(task)
        HANDLER_TASKS.append(task)
        return call, task

    def group_of(self, room: str) -> set[int]:
        gid = self.rooms.rooms[room].group
        return set() if gid is None else self.engine.groups.get(gid, set())


async def settle() -> None:
    await asyncio.sleep(STEP_S)


# ---- rooms ---------------------------------------------------------------------------------------------------

async def test_members_join_one_engine_group_hear_music_alone_and_beeps_after() -> None:
    h = Harness(ConferenceConfig(name="standup"))
    a, a_task = h.dial("standup")
    await settle()
    assert a.answered and a.destination == "conference:standup"
    assert h.group_of("standup") == {1}
    assert h.engine.hears(1) is MusicOnHold  # alone: music
    b, _ = h.dial("standup")
    await settle()
    assert h.group_of("standup") == {1, 2}
    assert h.engine.players[1][0].__class__ is PromptPlayer and h.engine.players[1][1] is True  # a join beep
    assert h.engine.hears(2) is None  # the newcomer hears the room, no music
    c, _ = h.dial("standup")
    await settle()
    assert h.group_of("standup") == {1, 2, 3}
    assert h.engine.hears(2) is PromptPlayer and h.engine.hears(3) is None
    assert [len(r.members) for r in h.rooms.rooms.values()] == [3]

    a.end()
    await settle()
    assert a_task.done() and a_task.result() == Finished()
    assert h.group_of("standup") == {2, 3}
    assert h.engine.hears(2) is PromptPlayer and h.engine.players[2][1] is True  # a leave beep over the mix
    b.end()
    await settle()
    assert h.group_of("standup") == {3}
    assert h.engine.hears(3) is MusicOnHold  # alone again: music again
    c.end()
    await settle()
    room = h.rooms.rooms["standup"]
    assert room.group is None and room.members == [] and room.entering == 0
    assert not h.engine.groups
    assert all(t.done() for t in h.tasks)


async def test_no_music_and_no_tones_when_switched_off() -> None:
    h = Harness(ConferenceConfig(name="quiet", music_when_alone=False, tones=False))
    a, _ = h.dial("quiet")
    await settle()
    assert h.engine.hears(1) is None
    b, _ = h.dial("quiet")
    await settle()
    assert h.engine.hears(1) is None and h.engine.hears(2) is None
    a.end()
    b.end()
    await settle()


async def test_the_last_member_leaving_by_hangup_dissolves_the_group_and_a_new_one_is_made() -> None:
    h = Harness(ConferenceConfig(name="r"))
    a, _ = h.dial("r")
    await settle()
    first = h.rooms.rooms["r"].group
    a.end()  # the channel closes first: the engine dissolves the group before the handler sees CallEnded
    await settle()
    assert h.rooms.rooms["r"].group is None
    b, _ = h.dial("r")
    await settle()
    second = h.rooms.rooms["r"].group
    assert second is not None and second != first and h.group_of("r") == {2}
    b.end()
    await settle()
    assert h.engine.destroyed == []  # both groups went with their last channel


async def test_a_full_room_refuses_before_answering_with_busy() -> None:
    h = Harness(ConferenceConfig(name="small", max_members=2))
    a, _ = h.dial("small")
    b, _ = h.dial("small")
    await settle()
    c, c_task = h.dial("small")
    await settle()
    assert c_task.done() and c_task.result() == Finished()
    assert c.rejected == 486 and not c.answered
    assert len(c.early) == 1 and isinstance(c.early[0], ToneSource)  # the busy tone in early media
    assert c.destination == "conference:small"  # the CDR says where it was refused
    assert h.group_of("small") == {1, 2}
    a.end()
    await settle()
    d, _ = h.dial("small")  # a place is free again
    await settle()
    assert d.answered and h.group_of("small") == {2, 4}
    b.end()
    d.end()
    await settle()


async def test_a_caller_keying_the_pin_holds_a_place() -> None:
    h = Harness(ConferenceConfig(name="board", pin="42", max_members=2))
    a, _ = h.dial("board")
    await settle()
    b, b_task = h.dial("board")  # answered, keying nothing yet
    await settle()
    assert a.answered and b.answered and h.rooms.rooms["board"].entering == 2
    c, _ = h.dial("board")
    await settle()
    assert c.rejected == 486
    a.key("42")
    b.end()
    await settle()
    assert b_task.done() and h.rooms.rooms["board"].entering == 0 and h.group_of("board") == {1}
    a.end()
    await settle()


async def test_an_unknown_room_is_refused_with_404() -> None:
    h = Harness(ConferenceConfig(name="r"))
    call, task = h.dial("nosuch")
    await settle()
    assert task.result() == Finished() and call.rejected == 404 and not call.answered


async def test_a_member_moved_elsewhere_leaves_the_room_without_its_new_audio_touched() -> None:
    h = Harness(ConferenceConfig(name="r"))
    a, a_task = h.dial("r")
    b, _ = h.dial("r")
    await settle()
    # what Call.transfer does: a new destination, then a bridge of the same channel elsewhere
    a.destination = "extension:1002"
    a.bridge_id = 999
    h.engine.play(1, PromptPlayer(conference_module.pin_prompt()))  # stands for whatever plays there now
    await settle()
    assert a_task.done() and a_task.result() == Finished()
    assert h.group_of("r") == {2}
    assert h.engine.hears(1) is PromptPlayer  # not stopped by the room
    assert h.engine.hears(2) is MusicOnHold
    b.end()
    await settle()


async def test_a_members_refer_is_declined() -> None:
    h = Harness(ConferenceConfig(name="r"))
    a, _ = h.dial("r")
    await settle()
    a.events.put_nowait(TransferRequested(a.a, "1002", None))  # type: ignore[arg-type]
    await settle()
    assert h.manager.notified == [(603, True)]
    assert h.group_of("r") == {1}
    a.end()
    await settle()


# ---- PIN -----------------------------------------------------------------------------------------------------

def test_pin_entry_ends_with_hash_or_length() -> None:
    entry = PinEntry("1234")
    assert [entry.press(d) for d in "123"] == [None, None, None]
    assert entry.press("4") is PinResult.ACCEPTED
    entry = PinEntry("1234")
    assert [entry.press(d) for d in "12"] == [None, None]
    assert entry.press("#") is PinResult.RETRY and entry.tries_left == 2
    assert entry.press("#") is None  # nothing keyed: ignored, no try burnt
    assert [entry.press(d) for d in "1234"][-1] is PinResult.ACCEPTED


def test_pin_entry_fails_after_three_wrong_tries() -> None:
    entry = PinEntry("77")
    assert entry.press("1") is None and entry.press("2") is PinResult.RETRY
    assert entry.timed_out() is PinResult.RETRY
    assert entry.press("9") is None and entry.press("#") is PinResult.FAILED
    assert entry.tries_left == 0


async def test_the_right_pin_lets_a_caller_in() -> None:
    h = Harness(ConferenceConfig(name="board", pin="4321"))
    a, _ = h.dial("board")
    await settle()
    assert a.answered and h.engine.hears(1) is PromptPlayer  # the prompt beeps
    assert h.group_of("board") == set()
    a.key("9#")  # wrong
    await settle()
    assert h.group_of("board") == set()
    a.key("4321")
    await settle()
    assert h.group_of("board") == {1} and h.engine.hears(1) is MusicOnHold
    a.end()
    await settle()


async def test_three_wrong_pins_hang_up() -> None:
    h = Harness(ConferenceConfig(name="board", pin="4321"))
    a, task = h.dial("board")
    await settle()
    a.key("1111")
    a.key("2#")
    a.key("3333")
    await settle()
    assert task.done() and task.result() == Finished()
    assert a.finished and h.group_of("board") == set() and h.rooms.rooms["board"].entering == 0


async def test_a_caller_hanging_up_during_the_pin_frees_the_place() -> None:
    h = Harness(ConferenceConfig(name="board", pin="4321"))
    a, task = h.dial("board")
    await settle()
    a.end()
    await settle()
    assert task.done() and isinstance(task.exception(), CallHangup)  # routing's call task catches it
    assert h.rooms.rooms["board"].entering == 0


async def test_a_wrong_digit_read_after_the_caller_left_ends_quietly() -> None:
    h = Harness(ConferenceConfig(name="board", pin="4"))
    a, task = h.dial("board")
    await settle()
    a.key("5")  # wrong: the prompt would play again...
    a.end()  # ...but the BYE closed the channel before the handler read the digit
    await settle()
    assert task.done() and isinstance(task.exception(), CallHangup)
    assert h.rooms.rooms["board"].entering == 0


async def test_a_slow_pin_counts_as_a_wrong_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conference_module, "PIN_TRY_MS", 20)
    h = Harness(ConferenceConfig(name="board", pin="4321"))
    a, task = h.dial("board")
    await asyncio.wait_for(task, 2.0)
    assert a.finished and h.group_of("board") == set()


# ---- configuration check ---------------------------------------------------------------------------------------

def test_the_validator_names_the_missing_room() -> None:
    rooms = Conferences([ConferenceConfig(name="standup"), ConferenceConfig(name="board")])
    assert rooms.validate("standup") is None
    problem = rooms.validate("nosuch")
    assert problem is not None and '"nosuch"' in problem and '"standup", "board"' in problem


ROOMS = '[[conference]]\nname = "standup"\nnumber = "800"\n\n[[conference]]\nname = "board"\npin = "4321"\n'


def test_config_check_refuses_a_room_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text(ROOMS + '\n[dialplan]\n[[dialplan.rule]]\nmatch = "801"\ndestination = "conference:nosuch"\n')
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        check_destinations(config)
    assert (info.value.file, info.value.line) == (str(path), 12)
    assert '"nosuch"' in info.value.message and '"standup"' in info.value.message, str(info.value)


def test_config_check_accepts_existing_rooms(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text(ROOMS + '\n[dialplan]\n[[dialplan.rule]]\nmatch = "801"\ndestination = "conference:board"\n')
    check_destinations(load_config(path))


def test_ccpbx_config_check_refuses_a_room_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text('[[dialplan.rule]]\nmatch = "801"\ndestination = "conference:nosuch"\n')
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), "--config", str(path), "config",
                                       "check"], env={"CCPBX_DATA_DIR": None, "CCPBX_CONFIG": None})
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"{path}:3" in result.output and '"nosuch"' in result.output, result.output
