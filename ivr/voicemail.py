"""Voicemail as two flows over the :class:`~ccpbx.ivr.flow.Call` protocol and a :class:`Mailbox`.

:func:`leave_message` greets the caller (the owner's recorded greeting, or "the person at extension ... is not
available / is on the phone"), records after the tone until ``#``, silence, the maximum length or the caller's
hang-up (the message is kept), and deposits it. :func:`mailbox_menu` is the owner's DTMF menu, on the model of
Asterisk's VoiceMailMain:

- PIN first (three tries); a box without a PIN asks its owner to choose one;
- main menu: **1** new messages, **2** saved messages, **0** mailbox options, **#** goodbye;
- after each message: **1** replay, **4** previous, **6** next, **7** delete, **9** save, **8** call the caller
  back, **#** back to the main menu (a new message is saved once heard);
- options: **1** record the unavailable greeting, **2** the busy greeting, **5** change the PIN, **#** back.

The storage is the PBX's (``ccpbx.pbx.voicemail``: SQLite rows, WAV files, message-waiting lamps, e-mail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .flow import Call, number_prompts

__all__ = ["Mailbox", "VoiceMessage", "VoicemailSettings", "leave_message", "mailbox_menu"]

NEW = "new"
SAVED = "saved"
BUSY_REASONS = frozenset({"user-busy"})


@dataclass(frozen=True, slots=True)
class VoiceMessage:
    id: int
    mailbox: str
    folder: str  # "new" or "saved"
    caller: str
    caller_name: str
    received_at: float  # UNIX seconds
    duration_s: float
    path: Path


@dataclass(frozen=True, slots=True)
class VoicemailSettings:
    max_message_s: float = 180.0
    min_message_s: float = 1.0
    silence_stop_s: float = 10.0
    max_messages: int = 100
    min_pin_digits: int = 4


class Mailbox(Protocol):
    """One extension's voicemail box, as the flows need it."""

    @property
    def number(self) -> str: ...

    async def greeting(self, kind: str) -> Path | None:
        """The owner's recorded greeting, ``kind`` "unavailable" or "busy"; None: the default prompt."""

    async def store_greeting(self, kind: str, path: Path) -> None: ...

    async def deposit(self, path: Path, caller: str, caller_name: str) -> VoiceMessage | None:
        """Keep a recorded message (moved into the box); None when it was too short to keep."""

    async def messages(self, folder: str) -> list[VoiceMessage]: ...

    async def move(self, message: VoiceMessage, folder: str) -> None: ...

    async def delete(self, message: VoiceMessage) -> None: ...

    async def has_pin(self) -> bool: ...

    async def check_pin(self, pin: str) -> bool: ...

    async def set_pin(self, pin: str) -> None: ...


def _digits(number: str) -> list[str]:
    names = {"*": "star", "#": "pound"}
    return [names.get(d, d) for d in number if d.isdigit() or d in names]


async def leave_message(call: Call, box: Mailbox, settings: VoicemailSettings, reason: str = "unavailable") -> None:
    """The caller's side: greeting, beep, record, deposit."""
    await call.answer()
    kind = "busy" if reason in BUSY_REASONS else "unavailable"
    if len(await box.messages(NEW)) + len(await box.messages(SAVED)) >= settings.max_messages:
        await call.play(["vm-mailbox-full", "goodbye"])
        await call.hangup()
        return
    greeting = await box.greeting(kind)
    if greeting is not None:
        key = await call.play(greeting, interruptible=True)
    else:
        key = await call.play(["vm-person-at", *_digits(box.number), "vm-busy" if kind == "busy" else "vm-unavailable"],
                              interruptible=True)
    if key != "#":  # "#" skips the greeting, straight to the tone (as callers know from Asterisk)
        await call.play("vm-leave-message", interruptible=True)
    path = await call.record(max_seconds=settings.max_message_s, silence_stop=settings.silence_stop_s, beep=True,
                             terminator="#")
    kept = await box.deposit(path, call.caller, call.caller_name)
    if kept is not None:
        call.data["voicemail"] = kept.id
    await call.play(["vm-message-saved" if kept is not None else "vm-too-short", "goodbye"])
    await call.hangup()


async def mailbox_menu(call: Call, box: Mailbox, settings: VoicemailSettings, *, own: bool = True) -> None:
    """The owner's side: PIN, counts, listen, save, delete, call back, greetings, PIN change."""
    await call.answer()
    if not await box.has_pin():
        if not own:
            await call.play(["vm-no-pin", "goodbye"])
            await call.hangup()
            return
        await call.play("vm-set-pin-first")
        if not await _change_pin(call, box, settings):
            await call.play("goodbye")
            await call.hangup()
            return
    elif not await _login(call, box):
        await call.play("goodbye")
        await call.hangup()
        return
    new, saved = await box.messages(NEW), await box.messages(SAVED)
    key = await call.play(["vm-you-have", *number_prompts(len(new)), "vm-new-messages", "vm-and",
                           *number_prompts(len(saved)), "vm-saved-messages"], interruptible=True)
    main_keys = ["1", "2", "0", "#"]
    while True:
        choice = key if key in main_keys else await call.menu("vm-main-menu", main_keys)
        key = None
        if choice == "1":
            await _listen(call, box, NEW)
        elif choice == "2":
            await _listen(call, box, SAVED)
        elif choice == "0":
            await _options(call, box, settings)
        else:
            break
    await call.play("goodbye")
    await call.hangup()


async def _login(call: Call, box: Mailbox) -> bool:
    for _ in range(3):
        pin = await call.collect(12, timeout=8, prompt="vm-enter-pin")
        if pin and await box.check_pin(pin):
            return True
        await call.play("vm-bad-pin")
    return False


async def _listen(call: Call, box: Mailbox, folder: str) -> None:
    messages: list[VoiceMessage] = await box.messages(folder)
    if not messages:
        await call.play("vm-no-messages")
        return
    i = 0
    replay = True
    while 0 <= i < len(messages):
        message = messages[i]
        key = None
        if replay:
            key = await call.play(["vm-message", *number_prompts(i + 1), "vm-from", *_digits(message.caller)],
                                  interruptible=True)
            if message.folder == NEW:  # being heard: no longer new (the lamp follows), also if the owner hangs up
                await box.move(message, SAVED)
                message = messages[i] = _moved(message, SAVED)
            if key is None:
                key = await call.play(message.path, interruptible=True)
        choice = key if key in _MESSAGE_KEYS else await call.menu("vm-message-menu", _MESSAGE_KEYS)
        replay = True
        if choice == "1":
            continue
        if choice == "4":
            i = max(0, i - 1)
        elif choice == "6":
            i += 1
            if i >= len(messages):
                await call.play("vm-no-more-messages")
                return
        elif choice == "7":
            await box.delete(message)
            del messages[i]
            await call.play("vm-deleted")
            if i >= len(messages):
                return
        elif choice == "9":
            await call.play("vm-saved")
            i += 1
        elif choice == "8" and message.caller:
            await call.play("vm-calling-back")
            await call.transfer(message.caller)
        elif choice == "#" or choice is None:
            return
        else:
            replay = False


_MESSAGE_KEYS: Sequence[str] = ("1", "4", "6", "7", "8", "9", "#")


def _moved(message: VoiceMessage, folder: str) -> VoiceMessage:
    return VoiceMessage(message.id, message.mailbox, folder, message.caller, message.caller_name,
                        message.received_at, message.duration_s, message.path)


async def _options(call: Call, box: Mailbox, settings: VoicemailSettings) -> None:
    while True:
        choice = await call.menu("vm-options-menu", ["1", "2", "5", "#"])
        if choice in ("1", "2"):
            kind = "unavailable" if choice == "1" else "busy"
            await call.play("vm-record-greeting")
            path = await call.record(max_seconds=60, silence_stop=5, beep=True, terminator="#")
            await box.store_greeting(kind, path)
            await call.play("vm-greeting-saved")
        elif choice == "5":
            await _change_pin(call, box, settings)
        else:
            return


async def _change_pin(call: Call, box: Mailbox, settings: VoicemailSettings) -> bool:
    for _ in range(3):
        first = await call.collect(12, timeout=10, prompt="vm-new-pin")
        if len(first) < settings.min_pin_digits or not first.isdigit():
            await call.play("vm-pin-too-short")
            continue
        second = await call.collect(12, timeout=10, prompt="vm-repeat-pin")
        if second != first:
            await call.play("vm-pin-mismatch")
            continue
        await box.set_pin(first)
        await call.play("vm-pin-changed")
        return True
    return False
