"""Registrar (RFC 3261 §10.3): the decisions on a REGISTER, separate from where bindings are kept.

Authentication happens before this runs (``ccpbx.pbx.sip.auth``). ``Registrar.register`` applies the
request's Contacts to the ``LocationService`` and says what to answer and which bindings changed, so the
application can write them through to SQLite. ``now`` is wall-clock Unix seconds (see ``location``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import formatdate

from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.uri import NameAddr, SipUri, unquote_string


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What to answer (status, extra header lines) and what changed in the location service."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    saved: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()
    bindings: tuple[Binding, ...] = field(default=())


class Registrar:
    def __init__(self, location: LocationService, policy: RegistrarPolicy | None = None) -> None:
        self.location = location
        self.policy = policy or RegistrarPolicy()

    def register(self, request: Request, aor: str, source: Destination, now: float) -> RegisterResult:
        """Apply one authenticated REGISTER for ``aor`` (RFC 3261 §10.3 steps 6-8)."""
        try:
            return self._register(request, aor, source, now)
        except SipParseError as exc:
            return RegisterResult(400, str(exc)[:100])

    def _register(self, request: Request, aor: str, source: Destination, now: float) -> RegisterResult:
        call_id = request.call_id
        cseq = request.cseq.seq
        header_expires = request.expires
        if request.is_wildcard_contact:
            # §10.3 step 6: "*" only alone and only with Expires: 0.
            if request.contacts or header_expires != 0:
                return RegisterResult(400, "Wildcard Contact needs Expires: 0 and no other Contact")
            current = [b for b in self.location.lookup(aor, now)]
            for binding in current:
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return RegisterResult(400, "Out of order CSeq")
            return self._ok(aor, now, removed=tuple(self.location.remove_all(aor)))

        contacts = request.contacts
        changes: list[tuple[NameAddr, int]] = []
        for contact in contacts:
            expires = self._expires_of(contact, header_expires)
            if 0 < expires < self.policy.min_expires:
                return RegisterResult(423, None, (("Min-Expires", str(self.policy.min_expires)),))
            changes.append((contact, self.granted(contact, header_expires)))

        user_agent = request.headers.get("user-agent") or ""
        saved: list[Binding] = []
        removed: list[Binding] = []
        plan: list[tuple[str, Binding | None, Binding | None]] = []  # (key, old, new)
        for contact, expires in changes:
            if not isinstance(contact.uri, SipUri):
                return RegisterResult(400, f"Contact must be a SIP URI: {contact.uri}")
            instance = unquote_string(contact.param("+sip.instance") or "")
            reg_id_text = contact.param("reg-id")
            key = instance or str(contact.uri)
            old = self.location.find(aor, key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                return RegisterResult(400, "Out of order CSeq")
            if expires == 0:
                plan.append((key, old, None))
                continue
            q_text = contact.param("q")
            try:
                q = float(q_text) if q_text is not None else None
            except ValueError:
                return RegisterResult(400, f"bad q value {q_text!r}")
            if q is not None and not 0.0 <= q <= 1.0:
                return RegisterResult(400, f"q out of range {q_text!r}")
            new = Binding(
                aor=aor, contact=str(contact.uri), expires_at=now + expires, call_id=call_id, cseq=cseq,
                transport=source[0], source_host=source[1], source_port=source[2], q=q,
                user_agent=user_agent, instance_id=instance,
                reg_id=int(reg_id_text) if reg_id_text and reg_id_text.isdigit() else None,
                registered_at=now if old is None else old.registered_at,
            )
            plan.append((key, old, new))

        live_keys = {LocationService.key(b) for b in self.location.lookup(aor, now)}
        for key, _, planned in plan:
            if planned is None:
                live_keys.discard(key)
            else:
                live_keys.add(key)
        if len(live_keys) > self.policy.max_contacts:
            return RegisterResult(403, f"At most {self.policy.max_contacts} contacts per user")

        for key, previous, planned in plan:
            if planned is None:
                if previous is not None:
                    self.location.remove(aor, key)
                    removed.append(previous)
            else:
                self.location.put(planned)
                saved.append(planned)
        return self._ok(aor, now, tuple(saved), tuple(removed))

    def granted(self, contact: NameAddr, header_expires: int | None) -> int:
        """The seconds a 200 grants ``contact`` (its own expires, else the header's, else the default; at most
        the policy's maximum)."""
        return min(self._expires_of(contact, header_expires), self.policy.max_expires)

    def _expires_of(self, contact: NameAddr, header_expires: int | None) -> int:
        text = contact.param("expires")
        if text is not None:
            if not text.strip().isdigit():
                raise SipParseError(f"bad Contact expires {text!r}")
            return int(text)
        if header_expires is not None:
            return header_expires
        return self.policy.default_expires

    def _ok(self, aor: str, now: float, saved: tuple[Binding, ...] = (),
            removed: tuple[Binding, ...] = ()) -> RegisterResult:
        current = tuple(self.location.lookup(aor, now))
        headers = [("Contact", _contact_value(b, now)) for b in current]
        headers.append(("Date", formatdate(now, usegmt=True)))
        return RegisterResult(200, None, tuple(headers), saved, removed, current)


def _contact_value(binding: Binding, now: float) -> str:
    before, after = contact_value_parts(binding)
    return f"{before}{binding.expires_in(now)}{after}"


def contact_value_parts(binding: Binding) -> tuple[str, str]:
    """A Contact of a 200 to REGISTER, before and after its seconds left; RFC 5626 §6 wants ``+sip.instance``
    and ``reg-id`` echoed."""
    after = ""
    if binding.instance_id:
        after += f';+sip.instance="{binding.instance_id}"'
    if binding.reg_id is not None:
        after += f";reg-id={binding.reg_id}"
    return f"<{binding.contact}>;expires=", after
