"""Unit-test IVR flows without SIP: a scripted call that presses keys, and a record of what the flow did.

::

    from ccpbx.ivr.testing import run_flow

    async def test_sales_is_option_one():
        result = await run_flow(main, caller="+4930123", presses=["1"])
        assert result.transferred_to == "queue:sales"
        assert "main-menu" in result.played

``presses`` is the caller's side, in order: each string's keys are pressed one after another whenever the flow
waits for a key (or plays an interruptible prompt); ``None`` is a pause long enough for any timeout. A string is
one burst of typing: keys of it the flow has not read when it starts a menu (``flush_digits``) are type-ahead
and are dropped, as on a real call; the next string is typed after that. When the
script runs out the caller stays silent, or hangs up with ``hangup_when_done=True``. ``hangup_after_prompts=N``
hangs up during the N-th prompt (as a caller who gives up), so ``finally`` blocks can be tested. Nothing waits
for real time: a timeout happens at once.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CallHangup, CallTransferred, FlowError
from .flow import DIGITS, Flow, FlowCall, QueueRequest

__all__ = ["FlowResult", "ScriptedCall", "run_flow"]

_ids = itertools.count(1)


class ScriptedCall(FlowCall):
    """A :class:`~ccpbx.ivr.flow.Call` driven by a script of key presses; it records everything the flow does."""

    def __init__(self, *, caller: str = "1000", caller_name: str = "", dialled: str = "700",
                 data: Mapping[str, object] | None = None, presses: Iterable[str | None] = (),
                 schedules: Mapping[str, bool] | Callable[[str], bool] | None = None,
                 destinations: Callable[[str], str | None] | None = None,
                 hangup_when_done: bool = False, hangup_after_prompts: int | None = None,
                 record_dir: Path | None = None) -> None:
        self.id = f"scripted-{next(_ids)}"
        self.caller = caller
        self.caller_name = caller_name
        self.dialled = dialled
        self.data = dict(data or {})
        self._script: deque[tuple[str | None, int]] = deque()  # (key or None for a silence, burst number)
        self._bursts = itertools.count()
        self._last_burst = -1
        self.press(*presses)
        self._schedules = schedules or {}
        self._check_destination = destinations
        self._hangup_when_done = hangup_when_done
        self._hangup_after_prompts = hangup_after_prompts
        self._record_dir = record_dir
        #: every prompt, file or tone played, in order (names as the flow gave them; ``say`` text as "say:...")
        self.played: list[str] = []
        self.answered = False
        self.hung_up = False
        self.caller_hung_up = False
        self.transferred_to: str | None = None
        self.queue_request: QueueRequest | None = None
        self.recordings: list[Path] = []
        #: the digits the flow read, in order
        self.digits_read: list[str] = []

    def press(self, *presses: str | None) -> None:
        """Queue more of the caller's key presses (``None``: a silence that lets one wait time out)."""
        for item in presses:
            burst = next(self._bursts)
            if item is None:
                self._script.append((None, burst))
                continue
            for key in item:
                if key not in DIGITS:
                    raise FlowError(f"not a keypad key: {key!r}")
                self._script.append((key, burst))

    # -- primitives -----------------------------------------------------------------------------------------
    async def answer(self) -> None:
        self._alive()
        self.answered = True

    async def hangup(self) -> None:
        self.hung_up = True

    async def play_one(self, prompt: str | Path, *, interruptible: bool) -> str | None:
        self._alive()
        self.played.append(str(prompt))
        if self._hangup_after_prompts is not None and len(self.played) >= self._hangup_after_prompts:
            self._caller_leaves()
        if interruptible and self._script and self._script[0][0] is not None:
            return self._take()
        return None

    async def say(self, text: str, *, interruptible: bool = False) -> str | None:
        return await self.play_one(f"say:{text}", interruptible=interruptible)

    async def next_digit(self, timeout: float | None) -> str | None:
        self._alive()
        if not self._script:
            if self._hangup_when_done:
                self._caller_leaves()
            return None
        return self._take()

    def flush_digits(self) -> None:
        """Drop the rest of the burst being typed (type-ahead); later bursts are typed after this."""
        while self._script and self._script[0][1] == self._last_burst and self._script[0][0] is not None:
            self._script.popleft()

    def _take(self) -> str | None:
        key, self._last_burst = self._script.popleft()
        if key is not None:
            self.digits_read.append(key)
        return key

    async def record(self, *, max_seconds: float = 60.0, silence_stop: float | None = 5.0, beep: bool = True,
                     terminator: str = "#") -> Path:
        self._alive()
        if beep:
            self.played.append("tone:beep")
        directory = self._record_dir or Path(".")
        path = directory / f"{self.id}-{len(self.recordings) + 1}.wav"
        self.recordings.append(path)
        # the caller speaks, then presses the terminator if the script says so
        if self._script and self._script[0][0] is not None and self._script[0][0] in terminator:
            self._take()
        return path

    async def hand_over(self, destination: str, request: QueueRequest | None) -> None:
        self._alive()
        if self._check_destination is not None:
            problem = self._check_destination(destination)
            if problem is not None:
                raise FlowError(problem)
        self.transferred_to = destination
        self.queue_request = request

    def in_schedule(self, name: str) -> bool:
        if callable(self._schedules):
            return self._schedules(name)
        if name not in self._schedules:
            raise FlowError(f"no schedule named {name!r} (known: {', '.join(sorted(self._schedules)) or 'none'})")
        return self._schedules[name]

    # -- internals ------------------------------------------------------------------------------------------
    def _alive(self) -> None:
        if self.caller_hung_up:
            raise CallHangup("the scripted caller hung up")

    def _caller_leaves(self) -> None:
        self.caller_hung_up = True
        raise CallHangup("the scripted caller hung up")


@dataclass
class FlowResult:
    """What a flow did with a scripted call (see :func:`run_flow`)."""

    call: ScriptedCall
    #: where ``transfer`` sent the call, or None
    transferred_to: str | None
    #: the flow ended because the caller hung up
    caller_hung_up: bool
    #: the flow itself hung up (or returned with the call still up, which ends the call too)
    hung_up: bool
    played: list[str] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)
    queue_request: QueueRequest | None = None


async def run_flow(flow: Flow, **script: object) -> FlowResult:
    """Run ``flow`` on a :class:`ScriptedCall` built from ``script`` (its keyword arguments) to its end.

    A transfer or a caller's hang-up ends it as on a real call; any other exception propagates (a flow that
    raises on a real call sends the caller to ``[ivr] fallback``, which is worth a test of its own).
    """
    call = ScriptedCall(**script)  # type: ignore[arg-type]
    try:
        await flow(call)
    except CallTransferred:
        pass
    except CallHangup:
        if not call.caller_hung_up:
            raise
    hung_up = call.hung_up or (call.transferred_to is None and not call.caller_hung_up)
    return FlowResult(call=call, transferred_to=call.transferred_to, caller_hung_up=call.caller_hung_up,
                      hung_up=hung_up, played=list(call.played), data=dict(call.data),
                      queue_request=call.queue_request)
