"""The voicemail flows (ivr/voicemail.py) on the scripted call, with an in-memory mailbox."""

from __future__ import annotations

from pathlib import Path

from ccpbx.ivr.testing import run_flow
from ccpbx.ivr.voicemail import VoicemailSettings, VoiceMessage, leave_message, mailbox_menu

SETTINGS = VoicemailSettings()


class FakeBox:
    def __init__(self, number: str = "1001", pin: str | None = "4321", keep: bool = True) -> None:
        self._number = number
        self.pin = pin
        self.keep = keep
        self.store: list[VoiceMessage] = []
        self.greetings: dict[str, Path] = {}
        self.deleted: list[int] = []

    @property
    def number(self) -> str:
        return self._number

    async def greeting(self, kind: str) -> Path | None:
        return self.greetings.get(kind)

    async def store_greeting(self, kind: str, path: Path) -> None:
        self.greetings[kind] = path

    async def deposit(self, path: Path, caller: str, caller_name: str) -> VoiceMessage | None:
        if not self.keep:
            return None
        message = VoiceMessage(len(self.store) + 1, self._number, "new", caller, caller_name, 0.0, 3.0, path)
        self.store.append(message)
        return message

    async def messages(self, folder: str) -> list[VoiceMessage]:
        return [m for m in self.store if m.folder == folder]

    async def move(self, message: VoiceMessage, folder: str) -> None:
        self.store = [VoiceMessage(m.id, m.mailbox, folder, m.caller, m.caller_name, m.received_at, m.duration_s,
                                   m.path) if m.id == message.id else m for m in self.store]

    async def delete(self, message: VoiceMessage) -> None:
        self.store = [m for m in self.store if m.id != message.id]
        self.deleted.append(message.id)

    async def has_pin(self) -> bool:
        return self.pin is not None

    async def check_pin(self, pin: str) -> bool:
        return pin == self.pin

    async def set_pin(self, pin: str) -> None:
        self.pin = pin


def message(box: FakeBox, caller: str = "1002", folder: str = "new") -> VoiceMessage:
    m = VoiceMessage(len(box.store) + 1, box.number, folder, caller, "", 0.0, 2.0, Path(f"/vm/{caller}.wav"))
    box.store.append(m)
    return m


async def test_a_caller_hears_the_default_greeting_leaves_a_message_and_hears_it_saved() -> None:
    box = FakeBox()
    result = await run_flow(lambda call: leave_message(call, box, SETTINGS), caller="1002")
    assert result.played == ["vm-person-at", "1", "0", "0", "1", "vm-unavailable", "vm-leave-message", "tone:beep",
                             "vm-message-saved", "goodbye"]
    assert [m.caller for m in box.store] == ["1002"] and result.data == {"voicemail": 1}


async def test_pound_skips_the_greeting() -> None:
    box = FakeBox()
    result = await run_flow(lambda call: leave_message(call, box, SETTINGS), caller="1002", presses=["#"])
    assert result.played == ["vm-person-at", "tone:beep", "vm-message-saved", "goodbye"] and len(box.store) == 1


async def test_the_busy_greeting_and_an_owners_recorded_greeting() -> None:
    box = FakeBox()
    result = await run_flow(lambda call: leave_message(call, box, SETTINGS, "user-busy"), caller="1002")
    assert "vm-busy" in result.played
    box.greetings["unavailable"] = Path("/vm/mine.wav")
    result = await run_flow(lambda call: leave_message(call, box, SETTINGS, "no-answer"), caller="1002")
    assert result.played[0] == "/vm/mine.wav"


async def test_a_too_short_message_is_not_kept_and_a_full_box_takes_none() -> None:
    result = await run_flow(lambda call: leave_message(call, FakeBox(keep=False), SETTINGS))
    assert "vm-too-short" in result.played
    full = FakeBox()
    for _ in range(2):
        message(full)
    result = await run_flow(lambda call: leave_message(call, full, VoicemailSettings(max_messages=2)))
    assert result.played == ["vm-mailbox-full", "goodbye"] and len(full.store) == 2


async def test_three_wrong_pins_end_the_call() -> None:
    result = await run_flow(lambda call: mailbox_menu(call, FakeBox(), SETTINGS), presses=["1#", "2#", "3#"])
    assert result.played.count("vm-bad-pin") == 3 and result.played[-1] == "goodbye" and result.hung_up


async def test_listen_a_new_message_which_becomes_saved_then_delete_another() -> None:
    box = FakeBox()
    first, second = message(box, "1002"), message(box, "1003")
    result = await run_flow(lambda call: mailbox_menu(call, box, SETTINGS),
                            presses=["4321#", "1", "9", "7", "#"])
    assert result.played[1] == "vm-you-have"  # interrupted by the 1; 9 and 7 pressed during the headers
    assert box.deleted == [second.id]
    assert [(m.id, m.folder) for m in box.store] == [(first.id, "saved")]


async def test_a_message_plays_when_the_owner_listens() -> None:
    box = FakeBox()
    first = message(box, "1002")
    result = await run_flow(lambda call: mailbox_menu(call, box, SETTINGS), presses=["4321#", "1", None, "#", "#"])
    assert result.played[result.played.index("vm-message"):][:5] == ["vm-message", "1", "vm-from", "1", "0"]
    assert str(first.path) in result.played and box.store[0].folder == "saved"


async def test_the_owner_hears_the_counts() -> None:
    box = FakeBox()
    message(box, "1002")
    message(box, "1003", folder="saved")
    result = await run_flow(lambda call: mailbox_menu(call, box, SETTINGS), presses=["4321#", None, "#"])
    assert result.played[1:7] == ["vm-you-have", "1", "vm-new-messages", "vm-and", "1", "vm-saved-messages"]


async def test_call_back_transfers_to_the_caller() -> None:
    box = FakeBox()
    message(box, "1002")
    result = await run_flow(lambda call: mailbox_menu(call, box, SETTINGS), presses=["4321#", "1", "8"])
    assert result.transferred_to == "1002"


async def test_a_new_box_asks_its_owner_for_a_pin_and_greetings_can_be_recorded() -> None:
    box = FakeBox(pin=None)
    result = await run_flow(lambda call: mailbox_menu(call, box, SETTINGS),
                            presses=["12#", "5555#", "5555#", "0", "2", "#", "#", "#"])
    assert box.pin == "5555"
    assert "vm-pin-too-short" in result.played and "vm-pin-changed" in result.played
    assert "busy" in box.greetings and "vm-greeting-saved" in result.played
    other = FakeBox(pin=None)
    result = await run_flow(lambda call: mailbox_menu(call, other, SETTINGS, own=False))
    assert result.played == ["vm-no-pin", "goodbye"] and other.pin is None
