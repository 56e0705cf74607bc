"""REGISTER in the handler chain (RFC 3261 §10.3): admission with 401 digest, then the registrar decides.

The registrar's logic stays in :mod:`ccpbx.pbx.registrar` (pure) over the location service; this handler only
admits, applies and answers, and tells the edge which bindings changed (written behind to SQLite).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ccpbx.pbx.admission import Admission, Admitted
from ccpbx.pbx.location import Binding
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.registrar import RegisterResult, Registrar
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.sip_handlers import SipServices, admit, admit_now

__all__ = ["RegistrationHandler"]

log = get_logger("ccpbx.registration")


class RegistrationHandler:
    """Takes REGISTER requests; ``on_binding(binding, saved)`` reports each saved or removed binding and
    ``on_answered(request, source, aor, result)`` each REGISTER answered 200, as it is answered."""

    def __init__(self, services: SipServices, admission: Admission, registrar: Registrar,
                 on_binding: Callable[[Binding, bool], None],
                 on_answered: Callable[[Request, Destination, str, RegisterResult], None] | None = None) -> None:
        self.services = services
        self.admission = admission
        self.registrar = registrar
        self.on_binding = on_binding
        self.on_answered = on_answered
        self.registered = 0

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        if request.method != "REGISTER":
            return False
        aor = self._aor_of(request)
        if aor is None:
            return True
        admitted = admit_now(self.services, self.admission, request, source, challenge_status=401, must_match=aor)
        if isinstance(admitted, Admitted):  # credentials checked against the cached extension: no task
            self._apply(request, source, aor)
        elif admitted is not None:  # the user's extension must come from the store first
            self.services.spawn(self._register(request, source, aor))
        return True  # else refused or challenged (the first REGISTER of each refresh), answered

    def _aor_of(self, request: Request) -> str | None:
        """The address-of-record being registered (its To user); None when the REGISTER was refused for it."""
        services = self.services
        try:
            to_uri = request.to.uri
        except SipParseError as exc:
            services.reply(request, 400, reason=str(exc)[:80])
            return None
        if not isinstance(to_uri, SipUri):
            services.reply(request, 416)
            return None
        aor = to_uri.user_unescaped
        if not aor:
            services.reply(request, 404, reason="No user in To")
            return None
        return aor

    def on_response(self, response: Response, key: ClientKey) -> bool:
        return False

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        return False

    async def _register(self, request: Request, source: Destination, aor: str) -> None:
        if await admit(self.services, self.admission, request, source, challenge_status=401,
                       must_match=aor) is not None:
            self._apply(request, source, aor)

    def _apply(self, request: Request, source: Destination, aor: str) -> None:
        """The registrar's decision on an admitted REGISTER; its answer goes out once what it changed is
        committed (``when_durable``): a ``kill -9`` cannot lose a registration the phone was told about."""
        outcome = self.registrar.register(request, aor, source, time.time())
        for binding in outcome.saved:
            self.on_binding(binding, True)
        for binding in outcome.removed:
            self.on_binding(binding, False)

        def answer() -> None:
            if outcome.status == 200:
                self.registered += 1
                log.info("sip.register.ok", aor=aor, contacts=len(outcome.bindings),
                         source=f"{source[1]}:{source[2]}")
            self.services.reply(request, outcome.status, reason=outcome.reason, headers=list(outcome.headers))
            if outcome.status == 200 and self.on_answered is not None:
                self.on_answered(request, source, aor, outcome)

        if outcome.saved or outcome.removed:
            self.services.when_durable(answer)
        else:
            answer()
