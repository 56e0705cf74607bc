"""The call API applications hold: IVR flows, the ACD adapter, voicemail, conferences, the dialer, tests.

One object, :class:`CallControl`, over the B2BUA (:mod:`ccpbx.pbx.calls`) and routing (:mod:`ccpbx.pbx.routing`)::

    control = server.control
    call = await control.originate("extension:1002", caller=Party("wakeup", "Wake-up call"), timeout_s=30)
    try:
        call.record()                                    # WAV in <data dir>/recordings, named in the CDR
        await call.play(PromptPlayer("good-morning.wav"))  # returns when it has played
        digit = await call.next_digit(timeout=5)         # RFC 4733, SIP INFO or in-band, each press once
        call.data["confirmed"] = digit == "1"            # lands in the CDR's data column
        if digit == "0":
            await call.transfer("queue:reception")       # any destination kind, through the registry
    except CallHangup:
        pass                                             # the party hung up: clean up here
    finally:
        call.hangup()

A destination kind is plugged in with :meth:`register_destination`; device state and the live view follow legs
with :meth:`on_leg_change`. Everything here is the public surface the next issues (IVR, ACD, trunks) build on;
``CallManager``'s and ``CallRouter``'s underscored members are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ccpbx.pbx.calls import Call, CallError, CallHangup, CallManager, Leg, Party
from ccpbx.pbx.config import DestinationKind
from ccpbx.pbx.destinations import DestinationHandler, Validator
from ccpbx.pbx.routing import CallRouter

__all__ = ["Call", "CallControl", "CallError", "CallHangup", "Leg", "Party"]


class CallControl:
    """Originate, find, transfer calls; register destination kinds; observe legs. See the module docstring."""

    def __init__(self, manager: CallManager, router: CallRouter) -> None:
        self._manager = manager
        self._router = router

    async def originate(self, destination: str, *, caller: Party, timeout_s: float | None = None,
                        headers: Sequence[tuple[str, str]] = (), data: dict[str, object] | None = None) -> Call:
        """Call ``destination`` (``extension:X``, ``group:Y`` or a number) and return the answered call.

        Raises :class:`CallError` (``status_hint``: 480, 486, 408...) when nobody answers; ``ValueError`` when
        the destination routes nowhere.
        """
        return await self._router.originate(destination, caller=caller, timeout_s=timeout_s, headers=headers,
                                            data=data)

    async def transfer(self, call: Call, destination: str) -> bool:
        """:meth:`Call.transfer`: the caller goes to ``destination``; True when it got connected to someone."""
        return await call.transfer(destination)

    def calls(self) -> list[Call]:
        """The calls in progress."""
        return list(self._manager.calls.values())

    def call(self, call_id: str) -> Call | None:
        return self._manager.calls.get(call_id)

    def legs(self) -> list[Leg]:
        return self._manager.legs()

    def register_destination(self, kind: DestinationKind, handler: DestinationHandler, *,
                             validate: Validator | None = None, description: str = "",
                             replace: bool = False) -> None:
        """Make ``kind:target`` reachable from the dial plan, REFER and :meth:`Call.transfer`; ``replace``
        takes over a kind the server already serves (an application's own queue or IVR engine)."""
        self._router.destinations.register(kind, handler, validate=validate, description=description,
                                           replace=replace)

    def on_leg_change(self, listener: Callable[[Leg], None]) -> None:
        """``listener(leg)`` on every leg creation, state change, hold/resume and end."""
        self._manager.add_leg_listener(listener)
