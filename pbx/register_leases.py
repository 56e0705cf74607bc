"""Leases of registrations to the SIP workers (``[sip] workers``): which bindings a worker may refresh itself,
and the refreshes it answered, applied to the location service. Pure: no sockets, no clock of its own.

A REGISTER the server answered 200 is leased when a worker could answer its refreshes exactly as the server
would (:mod:`ccpbx.pbx.sip_worker` checks each refresh against the lease's terms): it came over UDP with
digest credentials (not admitted as a trusted network's), with one Contact, no body and only the headers of
:data:`~ccpbx.pbx.sip_worker.LEASE_HEADERS`, and its binding is the address-of-record's only one, from the
request's own sender. Anything else ends the address-of-record's lease (the server then answers its refreshes).
"""

from __future__ import annotations

from collections.abc import Mapping

from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.registrar import Registrar, contact_value_parts
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.uri import NameAddr
from ccpbx.pbx.sip_worker import LEASE_HEADERS, Lease

__all__ = ["RegisterLeases"]


class RegisterLeases:
    """The leases in force, by address-of-record (what a restarted worker is given again)."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar
        self.leases: dict[str, Lease] = {}

    def offer(self, request: Request, source: Destination, aor: str, bindings: tuple[Binding, ...],
              ha1s: Mapping[str, str] | None) -> Lease | None:
        """The lease for ``request``, just answered 200 with the address-of-record's ``bindings``, kept and
        returned; None when its refreshes are the server's to answer (any lease of ``aor`` has ended then)."""
        lease = self._terms(request, source, aor, bindings, ha1s)
        if lease is None:
            self.leases.pop(aor, None)
        else:
            self.leases[aor] = lease
        return lease

    def _terms(self, request: Request, source: Destination, aor: str, bindings: tuple[Binding, ...],
               ha1s: Mapping[str, str] | None) -> Lease | None:
        headers = request.headers
        if (source[0] != "udp" or not ha1s or len(bindings) != 1 or request.body
                or "authorization" not in headers or not headers.names() <= LEASE_HEADERS):
            return None
        binding = bindings[0]
        contacts = headers.get_all("contact")
        if ((binding.transport, binding.source_host, binding.source_port) != source or len(contacts) != 1
                or contacts[0].strip() == "*"):
            return None
        try:
            granted = self.registrar.granted(NameAddr.parse(contacts[0]), request.expires)
        except SipParseError:  # the registrar would not have said 200
            return None
        return Lease(aor=aor, key=LocationService.key(binding), source=source, ha1s=dict(ha1s),
                     request_uri=str(request.uri), contact=contacts[0], expires=headers.get("expires"),
                     user_agent=headers.get("user-agent"), granted=granted,
                     answer_contact=contact_value_parts(binding), call_id=binding.call_id, cseq=binding.cseq)

    def revoke(self, aor: str) -> bool:
        """End ``aor``'s lease; whether there was one."""
        return self.leases.pop(aor, None) is not None

    def revoke_all(self) -> bool:
        had = bool(self.leases)
        self.leases.clear()
        return had

    def apply(self, location: LocationService, aor: str, key: str, call_id: str, cseq: int, expires_at: float,
              source: Destination) -> Binding | None:
        """A refresh a worker answered 200: the binding, updated in ``location``; None when it is gone or no
        longer this sender's (the server removed or replaced it meanwhile; the caller ends the lease).

        Applied even when the lease ended meanwhile (the worker had not heard yet): the refresh was verified
        against the user's credentials of a moment ago, as the server itself would have a moment ago."""
        binding = location.find(aor, key)
        if binding is None or (binding.transport, binding.source_host, binding.source_port) != source:
            return None
        lease = self.leases.get(aor)
        if lease is not None and lease.key == key:
            lease.call_id, lease.cseq = call_id, cseq
        refreshed = binding.refreshed(expires_at=expires_at, call_id=call_id, cseq=cseq)
        location.put(refreshed)
        return refreshed
