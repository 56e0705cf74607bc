"""Location service (RFC 3261 §10.3): the bindings of addresses-of-record to contact addresses.

Pure and in memory, like Kamailio's ``usrloc`` beside its ``registrar``: the registrar decides, this keeps the
bindings, and the application writes each change through to SQLite (``ccpbx.pbx.store``) so a restart keeps
them. Registrations outlive the process, so their expiry is an absolute wall-clock time (Unix seconds) that the
caller passes in as ``now``; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact registered for an address-of-record.

    ``aor`` is the user part our single-domain PBX keys on (an extension such as ``"201"`` or ``"alice"``).
    ``source_*`` is where the REGISTER really came from (RFC 3581 ``received``/``rport``), used to reach a
    phone behind NAT; ``transport`` is ``"udp"``, ``"tcp"`` or ``"tls"``.
    """

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    transport: str
    source_host: str
    source_port: int
    q: float | None = None
    user_agent: str = ""
    instance_id: str = ""
    reg_id: int | None = None
    registered_at: float = 0.0

    def expires_in(self, now: float) -> int:
        """Whole seconds left, never negative (the value a 200 OK to REGISTER reports)."""
        return max(0, int(self.expires_at - now + 0.5))

    def refreshed(self, **changes: object) -> Binding:
        return replace(self, **changes)  # type: ignore[arg-type]


class LocationService:
    """Bindings by AOR, each AOR's contacts keyed by contact URI (or ``+sip.instance`` when given)."""

    def __init__(self) -> None:
        self._by_aor: dict[str, dict[str, Binding]] = {}

    @staticmethod
    def key(binding: Binding) -> str:
        return binding.instance_id or binding.contact

    def put(self, binding: Binding) -> None:
        self._by_aor.setdefault(binding.aor, {})[self.key(binding)] = binding

    def remove(self, aor: str, key: str) -> Binding | None:
        contacts = self._by_aor.get(aor)
        if not contacts:
            return None
        removed = contacts.pop(key, None)
        if not contacts:
            del self._by_aor[aor]
        return removed

    def remove_all(self, aor: str) -> list[Binding]:
        return list(self._by_aor.pop(aor, {}).values())

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``, highest q first (absent q counts as 1.0), newest first on ties."""
        live = [b for b in self._by_aor.get(aor, {}).values() if b.expires_at > now]
        live.sort(key=lambda b: (-(1.0 if b.q is None else b.q), -b.registered_at))
        return live

    def find(self, aor: str, key: str) -> Binding | None:
        return self._by_aor.get(aor, {}).get(key)

    def expire(self, now: float) -> list[Binding]:
        """Drop and return every binding whose time is up."""
        gone: list[Binding] = []
        for aor in list(self._by_aor):
            for key, binding in list(self._by_aor[aor].items()):
                if binding.expires_at <= now:
                    gone.append(binding)
                    self.remove(aor, key)
        return gone

    def __iter__(self) -> Iterator[Binding]:
        for contacts in self._by_aor.values():
            yield from contacts.values()

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_aor.values())
