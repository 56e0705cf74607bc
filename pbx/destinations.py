"""The destination registry: ``kind -> handler``, how a routed call reaches an extension, group, room, flow...

The dial plan decides *where* (a :class:`Destination` ``kind:target``); a handler registered here for that kind
carries it out on a :class:`~ccpbx.pbx.calls.Call`. Routing, blind transfers (REFER) and an application's
``transfer()`` all go through the same registry, so a kind added at start-up (a conference room, an IVR flow, an
ACD queue, a trunk) is reachable from every one of them — pjsip's module registration, applied to routing.

A handler is ``async def handler(call, target, number) -> Outcome``:

- :class:`Connected`: the call is now bridged to someone; routing waits for its end (carrying out transfers);
- :class:`Finished`: the handler served the call to its end or refused it (a reject, a feature, a conference
  left); nothing more to do;
- :class:`Redirect`: send the call on to another destination (forwarding, a group's final destination).

A handler may also validate targets for ``ccpbx config check`` and at start-up (``validate(target)`` returns a
problem or ``None``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccpbx.pbx.config import Destination, DestinationKind

if TYPE_CHECKING:
    from ccpbx.pbx.calls import Call

__all__ = [
    "Connected",
    "DestinationHandler",
    "DestinationRegistry",
    "Finished",
    "Outcome",
    "Redirect",
    "UnknownDestinationError",
    "Validator",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The call is bridged with a party; routing waits for its end."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The handler has served or refused the call; nothing more to do."""


@dataclass(frozen=True, slots=True)
class Redirect:
    """Go on to ``destination`` with ``number`` (forwarding, a group's final destination)."""

    destination: Destination
    number: str


Outcome = Connected | Finished | Redirect
DestinationHandler = Callable[["Call", str, str], Awaitable[Outcome]]
Validator = Callable[[str], "str | None"]


class UnknownDestinationError(LookupError):
    """No handler is registered for a destination's kind."""


@dataclass(frozen=True, slots=True)
class _Entry:
    handler: DestinationHandler
    validate: Validator | None
    description: str


class DestinationRegistry:
    """Handlers by :class:`DestinationKind`; one per kind, registered at start-up."""

    def __init__(self) -> None:
        self._entries: dict[DestinationKind, _Entry] = {}

    def register(self, kind: DestinationKind, handler: DestinationHandler, *, validate: Validator | None = None,
                 description: str = "", replace: bool = False) -> None:
        """Make ``kind:target`` destinations reachable through ``handler``.

        Raises :class:`ValueError` when the kind already has a handler (unless ``replace``): two modules
        claiming one kind is a wiring mistake, not something to resolve silently.
        """
        if kind in self._entries and not replace:
            raise ValueError(f"destination kind {kind.value!r} already has a handler")
        self._entries[kind] = _Entry(handler, validate, description or kind.value)

    def handler(self, kind: DestinationKind) -> DestinationHandler:
        entry = self._entries.get(kind)
        if entry is None:
            raise UnknownDestinationError(f"no handler for {kind.value}: destinations")
        return entry.handler

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    @property
    def kinds(self) -> frozenset[DestinationKind]:
        return frozenset(self._entries)

    def problem(self, destination: Destination) -> str | None:
        """Why ``destination`` cannot be reached, or ``None``; templates are checked per call, not here."""
        entry = self._entries.get(destination.kind)
        if entry is None:
            available = ", ".join(sorted(k.value for k in self._entries)) or "none"
            return (f"names a {destination.kind.value}: destination, but this server has no "
                    f"{destination.kind.value} destinations (available kinds: {available})")
        if entry.validate is None or destination.is_template:
            return None
        return entry.validate(destination.target)

    async def dispatch(self, call: Call, destination: Destination, number: str) -> Outcome:
        return await self.handler(destination.kind)(call, destination.target, number)
