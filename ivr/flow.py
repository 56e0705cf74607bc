"""The call a flow talks to: the :class:`Call` protocol, and :class:`FlowCall`, which builds digit collection
and menus once on a handful of primitives, so the PBX and the test double (:mod:`ccpbx.ivr.testing`) behave alike.

A flow is an ordinary coroutine function::

    async def main(call: Call) -> None:
        await call.answer()
        choice = await call.menu("main-menu", {"1": "sales", "2": "support"})
        if choice is None:
            await call.play("goodbye")
            return
        await call.transfer(f"queue:{choice}", data={"menu": choice})

Point a number at it with ``destination = "ivr:flows:main"`` (module ``flows``, function ``main``).

What the caller does reaches the flow through the call: digits (RFC 4733, SIP INFO and in-band tones alike)
through :meth:`Call.collect`, :meth:`Call.menu` and interruptible prompts; a hang-up as :class:`CallHangup` at
the flow's next ``await`` (the flow task is also cancelled, so an ``await`` on anything else ends too); cleanup
belongs in ``finally``. :meth:`Call.transfer` does not return: the call leaves the flow
(:class:`~ccpbx.ivr.errors.CallTransferred`).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol, runtime_checkable

from .errors import CallTransferred, FlowError

__all__ = [
    "DIGITS",
    "Call",
    "Flow",
    "FlowCall",
    "Prompt",
    "QueueRequest",
    "number_prompts",
]

#: The keys of a phone's keypad, as digits arrive.
DIGITS = frozenset("0123456789*#ABCD")

#: What ``play`` takes: a prompt name (looked up in the prompt directories), a WAV file's path, a tone
#: (``"tone:beep"``, ``"tone:busy"``, ``"tone:440/500"`` for 440 Hz during 500 ms), or a list of them in order.
Prompt = str | Path | Sequence[str | Path]


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """What ``transfer(..., priority=, skills=)`` asks of a queue: the ACD reads it when the call joins."""

    priority: int | None = None
    #: skill -> lowest acceptable level (1-10)
    skills: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class Call(Protocol):
    """The call as a flow sees it. ``ccpbx.pbx`` implements it on real SIP calls, ``ivr.testing`` on a script."""

    @property
    def id(self) -> str:
        """The call's id (the CDR's ``call_id``)."""

    @property
    def caller(self) -> str:
        """The caller's number (user part of From / P-Asserted-Identity, after trunk normalisation)."""

    @property
    def caller_name(self) -> str:
        """The caller's display name, "" when none was sent."""

    @property
    def dialled(self) -> str:
        """The number that reached the flow."""

    @property
    def data(self) -> dict[str, object]:
        """The call's attached data: set here, it travels into queues, CDRs and to the agent's screen."""

    async def answer(self) -> None: ...

    async def hangup(self) -> None: ...

    async def play(self, prompt: Prompt, *, interruptible: bool = False) -> str | None: ...

    async def say(self, text: str, *, interruptible: bool = False) -> str | None: ...

    async def say_digits(self, digits: str, *, interruptible: bool = False) -> str | None: ...

    async def say_number(self, number: int, *, interruptible: bool = False) -> str | None: ...

    async def collect(self, max_digits: int, *, timeout: float = 5.0, inter_digit_timeout: float = 3.0,
                      terminator: str = "#", prompt: Prompt | None = None) -> str: ...

    async def menu(self, prompt: Prompt, choices: Collection[str], *, retries: int = 3, timeout: float = 5.0,
                   inter_digit_timeout: float = 2.0, invalid: Prompt | None = "invalid",
                   no_input: Prompt | None = "no-input") -> str | None: ...

    async def record(self, *, max_seconds: float = 60.0, silence_stop: float | None = 5.0, beep: bool = True,
                     terminator: str = "#") -> Path: ...

    async def transfer(self, destination: str, *, priority: int | None = None,
                       skills: Mapping[str, int] | Collection[str] | None = None,
                       data: Mapping[str, object] | None = None) -> NoReturn: ...

    def in_schedule(self, name: str) -> bool: ...


Flow = Callable[[Call], Awaitable[None]]


class FlowCall(abc.ABC):
    """The shared half of every :class:`Call`: prompt lists, collection, menus and transfer arguments.

    Subclasses supply the primitives: ``answer``, ``hangup``, ``play_one``, ``next_digit``, ``flush_digits``,
    ``say``, ``record``, ``hand_over`` and ``in_schedule`` (and the identity properties).
    """

    # -- identity (subclasses set these) ------------------------------------------------------------------
    id: str
    caller: str
    caller_name: str
    dialled: str
    data: dict[str, object]

    # -- primitives ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def answer(self) -> None:
        """Answer the call (a no-op when it is answered already)."""

    @abc.abstractmethod
    async def hangup(self) -> None:
        """End the call."""

    @abc.abstractmethod
    async def play_one(self, prompt: str | Path, *, interruptible: bool) -> str | None:
        """Play one prompt, file or tone; the digit that interrupted it, if any."""

    @abc.abstractmethod
    async def next_digit(self, timeout: float | None) -> str | None:
        """The next key the caller presses, or None after ``timeout`` seconds."""

    @abc.abstractmethod
    def flush_digits(self) -> None:
        """Forget keys pressed and not read yet."""

    @abc.abstractmethod
    async def say(self, text: str, *, interruptible: bool = False) -> str | None:
        """Speak ``text`` (espeak-ng, rendered once and cached); the digit that interrupted it, if any."""

    @abc.abstractmethod
    async def record(self, *, max_seconds: float = 60.0, silence_stop: float | None = 5.0, beep: bool = True,
                     terminator: str = "#") -> Path:
        """Record what the caller says until ``terminator``, ``silence_stop`` seconds of silence,
        ``max_seconds`` or the caller's hang-up; the WAV's path. A hang-up ends the recording and keeps it (a
        voicemail message): the flow's next operation on the call raises ``CallHangup``."""

    @abc.abstractmethod
    async def hand_over(self, destination: str, request: QueueRequest | None) -> None:
        """Check ``destination`` and note where the call goes when the flow ends (``transfer``'s primitive).
        Raises :class:`FlowError` for a destination nothing can reach."""

    @abc.abstractmethod
    def in_schedule(self, name: str) -> bool:
        """Whether the named ``[[schedule]]`` is open now."""

    # -- built on them -------------------------------------------------------------------------------------
    async def play(self, prompt: Prompt, *, interruptible: bool = False) -> str | None:
        """Play a prompt (or several in order); with ``interruptible`` a key press stops it and is returned."""
        for item in _prompt_items(prompt):
            digit = await self.play_one(item, interruptible=interruptible)
            if digit is not None:
                return digit
        return None

    async def say_digits(self, digits: str, *, interruptible: bool = False) -> str | None:
        """Read out ``digits`` one by one ("1", "2", "star"...) from the shipped number prompts."""
        names = {"*": "star", "#": "pound"}
        return await self.play([names.get(d, d) for d in digits if d in DIGITS or d.isdigit()],
                               interruptible=interruptible)

    async def say_number(self, number: int, *, interruptible: bool = False) -> str | None:
        """Read out an integer in English words from the shipped prompts ("two thousand forty five")."""
        return await self.play(number_prompts(number), interruptible=interruptible)

    async def collect(self, max_digits: int, *, timeout: float = 5.0, inter_digit_timeout: float = 3.0,
                      terminator: str = "#", prompt: Prompt | None = None) -> str:
        """Up to ``max_digits`` keys: wait ``timeout`` s for the first, ``inter_digit_timeout`` s for each next.

        ``terminator`` (not included) ends early; ``prompt`` is played first and a key pressed during it counts
        as the first digit. Returns "" when nothing was pressed in time, what was pressed so far otherwise.
        """
        if max_digits < 1:
            raise FlowError(f"collect needs max_digits >= 1, got {max_digits}")
        if timeout < 0 or inter_digit_timeout < 0:
            raise FlowError("collect timeouts must not be negative")
        digits = ""
        first: str | None = None
        if prompt is not None:
            first = await self.play(prompt, interruptible=True)
        while len(digits) < max_digits:
            digit = first if first is not None else await self.next_digit(
                timeout if not digits else inter_digit_timeout)
            first = None
            if digit is None:
                break
            if terminator and digit in terminator:
                break
            digits += digit
        return digits

    async def menu(self, prompt: Prompt, choices: Collection[str], *, retries: int = 3, timeout: float = 5.0,
                   inter_digit_timeout: float = 2.0, invalid: Prompt | None = "invalid",
                   no_input: Prompt | None = "no-input") -> str | None:
        """Play ``prompt`` and return the caller's choice among ``choices`` (keys such as "1", "2", "*", "10").

        Invalid keys play ``invalid``, silence plays ``no_input``, then the menu starts again; after
        ``retries`` attempts in all, None (the flow decides: an operator, a goodbye). Type-ahead from before
        the menu is forgotten; a key pressed during the prompt interrupts it.
        """
        options = {str(c) for c in choices}
        if not options or any(not c or any(d not in DIGITS for d in c) for c in options):
            raise FlowError(f"menu choices must be non-empty strings of keypad keys, got {sorted(options)}")
        if retries < 1:
            raise FlowError(f"menu needs retries >= 1, got {retries}")
        longest = max(len(c) for c in options)
        self.flush_digits()
        for _attempt in range(retries):
            digits = ""
            digit = await self.play(prompt, interruptible=True)
            while True:
                if digit is None:
                    digit = await self.next_digit(timeout if not digits else inter_digit_timeout)
                if digit is None or (digit == "#" and "#" not in options and digits):
                    break
                digits += digit
                digit = None
                # done as soon as no longer choice could still match
                if len(digits) >= longest or not any(c.startswith(digits) and c != digits for c in options):
                    break
            if digits in options:
                return digits
            feedback = no_input if not digits else invalid
            if feedback is not None:
                await self.play(feedback)
            self.flush_digits()
        return None

    async def transfer(self, destination: str, *, priority: int | None = None,
                       skills: Mapping[str, int] | Collection[str] | None = None,
                       data: Mapping[str, object] | None = None) -> NoReturn:
        """Send the call to ``destination`` ("extension:1001", "queue:support", "ivr:flows:other",
        "voicemail:1001", or a number the dial plan routes) and leave the flow: this does not return.

        ``priority`` and ``skills`` (``{"french": 5}``: skill at level >= 5; a plain list means level >= 1)
        travel with the call into a queue; ``data`` is merged into the call's attached data first.
        """
        request = None
        if priority is not None or skills:
            request = QueueRequest(priority=priority, skills=_skill_levels(skills))
        if data:
            self.data.update(data)
        await self.hand_over(destination, request)
        raise CallTransferred(destination)


def number_prompts(number: int) -> list[str]:
    """The shipped prompt names that read ``number`` in English: 2045 -> ["2", "thousand", "40", "5"]."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise FlowError(f"say_number takes an int, got {number!r}")
    if number < 0:
        return ["minus", *number_prompts(-number)]
    if number >= 10**12:
        raise FlowError(f"say_number reads numbers below a million millions, got {number}")
    if number < 20:
        return [str(number)]
    if number < 100:
        tens, ones = divmod(number, 10)
        return [str(tens * 10)] + ([str(ones)] if ones else [])
    for size, word in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if number >= size:
            high, rest = divmod(number, size)
            return [*number_prompts(high), word] + (number_prompts(rest) if rest else [])
    raise AssertionError(number)  # pragma: no cover - every int above is handled


def _prompt_items(prompt: Prompt) -> list[str | Path]:
    if isinstance(prompt, str | Path):
        return [prompt]
    items = list(prompt)
    for item in items:
        if not isinstance(item, str | Path):
            raise FlowError(f"a prompt is a name, a path or a tone, got {item!r}")
    return items


def _skill_levels(skills: Mapping[str, int] | Collection[str] | None) -> dict[str, int]:
    if not skills:
        return {}
    levels = dict(skills) if isinstance(skills, Mapping) else dict.fromkeys(skills, 1)
    for name, level in levels.items():
        if not isinstance(name, str) or not name:
            raise FlowError(f"skill names are non-empty strings, got {name!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 10:
            raise FlowError(f"skill {name!r} needs a level from 1 to 10, got {level!r}")
    return levels
