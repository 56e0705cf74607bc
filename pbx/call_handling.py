"""Calls in the handler chain: a new INVITE is admitted (407 digest, or a trusted network) and handed to the
B2BUA; requests inside its dialogs, CANCEL, responses and failures go to :class:`~ccpbx.pbx.calls.CallManager`.
"""

from __future__ import annotations

from ccpbx.pbx.admission import Admission, Admitted
from ccpbx.pbx.calls import CallManager, Party
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.pickup import Pickup
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip_handlers import SipServices, admit, admit_now, stable_to_tag
from ccpbx.pbx.store import Extension

__all__ = ["IN_DIALOG_METHODS", "CallHandler"]

log = get_logger("ccpbx.call_handling")

# Requests call control answers inside its dialogs (and CANCEL, which names an INVITE transaction).
IN_DIALOG_METHODS = frozenset({"ACK", "BYE", "CANCEL", "UPDATE", "REFER", "NOTIFY", "INFO", "INVITE", "OPTIONS",
                               "PRACK"})


class CallHandler:
    """INVITE and everything inside call dialogs; see the module docstring."""

    def __init__(self, services: SipServices, admission: Admission, calls: CallManager, *,
                 pickup: Pickup | None = None) -> None:
        self.services = services
        self.admission = admission
        self.calls = calls
        self.pickup = pickup

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        method = request.method
        if method == "ACK":
            self.calls.on_request(request, source, None)  # never answered (§17); a stray one is dropped
            return True
        if request.to.tag is not None or method == "CANCEL":
            return method in IN_DIALOG_METHODS and self.calls.on_request(request, source, key)
        if method == "INVITE" and key is not None:
            new_call = self._new_call_of(request)
            if new_call is None:
                return True
            admitted = admit_now(self.services, self.admission, request, source, challenge_status=407)
            if admitted is None:
                return True  # refused or challenged (the first INVITE of most calls), answered
            if isinstance(admitted, Admitted):
                known, extension = self.services.cached_extension(admitted.user)
                if known:  # the caller's extension was cached: the call starts now, no task
                    self._start(request, source, key, *new_call, admitted, extension)
                    return True
                self.services.spawn(self._invite(request, source, key, *new_call, admitted))
                return True
            self.services.spawn(self._invite(request, source, key, *new_call, None))  # the store first
            return True
        return False

    def _new_call_of(self, request: Request) -> tuple[str, str] | None:
        """The number dialled and the caller's display name; None when the INVITE was refused for them."""
        try:
            dialled = request.sip_uri.user_unescaped or ""
            display = request.from_.display_name or ""
        except SipParseError as exc:
            self.services.reply(request, exc.status_hint, reason=str(exc)[:80])
            return None
        if not dialled:
            self.services.reply(request, 484, reason="No number in the Request-URI")
            return None
        return dialled, display

    def on_response(self, response: Response, key: ClientKey) -> bool:
        return self.calls.on_response(response, key)

    def on_stray_response(self, response: Response) -> None:
        self.calls.on_stray_response(response)

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        return self.calls.on_transaction_failed(key, request)

    def on_prack_timed_out(self, key: ServerKey) -> None:
        self.calls.on_prack_timed_out(key)

    async def _invite(self, request: Request, source: Destination, key: ServerKey, dialled: str, display: str,
                      admitted: Admitted | None) -> None:
        """A new call whose admission (``admitted`` None) or caller's extension needs the store first."""
        if admitted is None:
            admitted = await admit(self.services, self.admission, request, source, challenge_status=407)
            if admitted is None:
                return
        self._start(request, source, key, dialled, display, admitted, await self.services.extension(admitted.user))

    def _start(self, request: Request, source: Destination, key: ServerKey, dialled: str, display: str,
               admitted: Admitted, extension: Extension | None) -> None:
        """An admitted new call (RFC 3261 §22.3: INVITE is never let through unchallenged) to the B2BUA."""
        if extension is None:
            self.services.reply(request, 403)
            return
        if admitted.via == "trusted":
            log.info("sip.invite.trusted", user=extension.ext, source=f"{source[1]}:{source[2]}")
        caller = Party(extension.ext, extension.name or display)
        if "replaces" in request.headers and self.pickup is not None:
            # RFC 3891 outside a REFER: a BLF key picking up a ringing call (or taking over a confirmed one)
            self.pickup.on_invite(request, source, key, caller, dialled, local_tag=stable_to_tag(request),
                                  device=extension.ext)
            return
        self.calls.on_invite(request, source, key, caller, dialled, local_tag=stable_to_tag(request),
                             device=extension.ext)
