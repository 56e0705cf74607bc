"""Trunks: SIP providers and VoIP/TDM gateways, in and out.

Each ``[[trunk]]`` becomes a :class:`Trunk` at run time: its addresses (RFC 3263: NAPTR, SRV, A/AAAA through
:mod:`ccpbx.pbx.sip.resolve`), its registration with the provider (:mod:`ccpbx.pbx.sip.registration_client`),
its OPTIONS pings (:mod:`ccpbx.pbx.sip.options_ping`) and its channels in use. :class:`Trunks` carries them:

- **in the handler chain**, before the calls handler: a new INVITE from a trunk (its ``allowed_sources``, the
  very address it is reached at, or our registration's Contact user from the provider's address) is the
  trunk's call — no digest asked. The DID is read from the Request-URI or To (the profile's ``did_from``),
  the caller's number from P-Asserted-Identity, Remote-Party-ID or From, normalised (E.164 or national,
  :mod:`ccpbx.pbx.numbers`), and Diversion (RFC 5806) kept as the call's diversion. The call is routed only
  by the dial-plan rules with ``from_trunk`` (:meth:`ccpbx.pbx.dialplan.DialPlan.route`). A call beyond the
  trunk's inbound limit gets 503 at once.
- **as destinations**: ``trunk:NAME`` and ``route:NAME``. A route strips and prepends, checks the toll-fraud
  policy (:mod:`ccpbx.pbx.outbound_policy`) for the extension that pays, picks the caller ID (extension's,
  route's, trunk's, or the caller's own) and tries its trunks in order: a trunk that is down (OPTIONS
  unanswered), full (``max_channels``) or unresolved is passed over; 5xx, 408 and silence (no response at all
  within ``no_response_timeout``) go on to the next; any other failure (busy, not found) is the caller's
  answer. When no trunk could take the call the caller hears congestion and gets 503.
- **its own SIP traffic**: REGISTER and OPTIONS responses and timeouts come back through the chain to the
  trunk's pure cores; one loop timer serves every core's next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass

from ccpbx.media.tones import ToneKind
from ccpbx.pbx.calls import Call, CallManager, DialTarget, Leg, LegState, Party
from ccpbx.pbx.config import (
    Config,
    DidSource,
    IdentityHeader,
    ProfileConfig,
    RouteConfig,
    TrunkConfig,
    parse_source,
)
from ccpbx.pbx.destinations import Connected, Finished, Outcome
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.numbers import NumberError, NumberFormat, NumberPlan, clean, format_number
from ccpbx.pbx.outbound_policy import OutboundPolicy
from ccpbx.pbx.routing import CallRouter
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.options_ping import OptionsPinger, PeerState, PeerStateChanged
from ccpbx.pbx.sip.registration_client import (
    Registered,
    RegistrationClient,
    RegistrationFailed,
    RegistrationState,
    RegistrationStatus,
    Unregistered,
)
from ccpbx.pbx.sip.resolve import ResolveError, SipResolver
from ccpbx.pbx.sip.transaction import ClientKey, Destination, ServerKey
from ccpbx.pbx.sip.uri import NameAddr, SipUri
from ccpbx.pbx.sip_handlers import DeadlineTimer, SipServices, stable_to_tag

__all__ = ["Trunk", "TrunkStatus", "Trunks"]

log = get_logger("ccpbx.trunks")

FAILOVER_STATUSES = frozenset({408})  # with every 5xx: the next trunk is tried
RESOLVE_RETRY_S = 30.0  # a host that did not resolve is tried again this often
RESOLVE_MIN_TTL_S = 30.0
RESOLVE_MAX_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class TrunkStatus:
    """One trunk as ``ccpbx trunk list`` and the admin API show it."""

    name: str
    host: str
    profile: str
    addresses: tuple[str, ...]  # "udp:192.0.2.1:5060", in the order they are tried
    registration: str  # off, registering, registered, failed, unregistered
    registration_detail: str  # "200 OK, 600 s", "403 Forbidden, retry in 60 s"...
    reachability: str  # off (no pings), unknown, up, down
    rtt_ms: int | None
    inbound: int
    outbound: int
    max_channels: int | None
    max_inbound: int | None
    max_outbound: int | None
    available: bool  # calls out may use it now

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Trunk:
    """A trunk at run time; see the module docstring."""

    def __init__(self, config: TrunkConfig, profile: ProfileConfig) -> None:
        self.config = config
        self.profile = profile
        self.name = config.name
        self.plan = NumberPlan(country_code=config.country_code, national_prefix=config.national_prefix,
                               international_prefix=config.international_prefix)
        self.sources = [parse_source(s) for s in config.allowed_sources]
        self.addresses: list[Destination] = []  # resolved, in the order to try
        self.resolve_error = ""
        self.resolved_until = 0.0  # monotonic s
        # the Contact user of our registration: the provider sends calls for the account to it
        self.contact_user = config.username or f"ccpbx-{secrets.token_hex(4)}"
        self.registration: RegistrationClient | None = None
        self.pinger: OptionsPinger | None = None
        self.inbound: set[str] = set()  # leg ids up or ringing, from the trunk
        self.outbound: set[str] = set()  # leg ids up or ringing, through the trunk

    # ---- who it is -------------------------------------------------------------------------------------
    def sends_from(self, source: Destination, request_user: str) -> bool:
        """Whether a request from ``source`` is this trunk's: an allowed source, the address it is reached
        at, or (a provider's other servers) its address with our registration's Contact user."""
        try:
            address = ipaddress.ip_address(source[1])
        except ValueError:
            return False
        for network, port in self.sources:
            if address in network and (port is None or port == source[2]):
                return True
        if source in self.addresses:
            return True
        if self.config.register and request_user == self.contact_user:
            return any(a[1] == source[1] for a in self.addresses)
        return False

    # ---- capacity ---------------------------------------------------------------------------------------
    def has_room(self, inbound: bool) -> bool:
        config = self.config
        total = len(self.inbound) + len(self.outbound)
        if config.max_channels is not None and total >= config.max_channels:
            return False
        limit = config.max_inbound if inbound else config.max_outbound
        used = len(self.inbound) if inbound else len(self.outbound)
        return limit is None or used < limit

    @property
    def down(self) -> bool:
        return self.pinger is not None and self.pinger.status.state is PeerState.DOWN

    @property
    def available(self) -> bool:
        return bool(self.addresses) and not self.down and self.has_room(inbound=False)

    def status(self) -> TrunkStatus:
        registration, detail = "off", ""
        if self.registration is not None:
            st = self.registration.status
            registration = st.state.value
            detail = _describe(st, time.monotonic() * 1000)
        reachability, rtt = "off", None
        if self.pinger is not None:
            ping = self.pinger.status
            reachability, rtt = ping.state.value, ping.last_rtt_ms
        if not self.addresses and self.resolve_error:
            detail = (detail + "; " if detail else "") + self.resolve_error
        return TrunkStatus(
            name=self.name, host=self.config.host, profile=self.profile.name,
            addresses=tuple(f"{t}:{h}:{p}" for t, h, p in self.addresses), registration=registration,
            registration_detail=detail, reachability=reachability, rtt_ms=rtt, inbound=len(self.inbound),
            outbound=len(self.outbound), max_channels=self.config.max_channels,
            max_inbound=self.config.max_inbound, max_outbound=self.config.max_outbound, available=self.available)

    # ---- numbers -----------------------------------------------------------------------------------------
    def caller_number(self, raw: str) -> str:
        """An inbound caller's number as the trunk's ``caller_format`` says (raw when it is no number)."""
        return _formatted(raw, self.plan, self.config.caller_format)

    def outside_number(self, number: str) -> str:
        """A number as this trunk wants it (the profile's ``number_format``)."""
        return _formatted(number, self.plan, self.profile.number_format)

    @property
    def domain(self) -> str:
        return self.config.from_domain or self.config.host

    def request_uri(self, number: str) -> SipUri:
        return SipUri(user=number, host=self.config.host, port=self.config.port)


def _formatted(raw: str, plan: NumberPlan, fmt: NumberFormat) -> str:
    try:
        return format_number(clean(raw), plan, fmt)
    except (NumberError, ValueError):
        return raw


class Trunks:
    """Every trunk, its routes and the SIP traffic of its own; see the module docstring."""

    def __init__(self, config: Config, router: CallRouter, *, resolver: SipResolver | None = None) -> None:
        self.config = config
        self.router = router
        profiles = config.profiles()
        self.trunks: dict[str, Trunk] = {t.name: Trunk(t, profiles[t.profile]) for t in config.trunk}
        self.routes: dict[str, RouteConfig] = {r.name: r for r in config.route}
        self.policy = OutboundPolicy(config.outbound)
        self.resolver = resolver
        self.services: SipServices | None = None
        self.calls: CallManager | None = None
        self._pending: dict[ClientKey, Trunk] = {}  # our REGISTER/OPTIONS transactions
        self._kind: dict[ClientKey, str] = {}
        self._outside: dict[str, set[str]] = {}  # extension -> its legs out through trunks
        self._leg_payer: dict[str, str] = {}  # leg id -> the extension it counts against
        self._timer: DeadlineTimer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        # told each address a trunk resolves to (the composition root exempts them from the rate limit)
        self.on_address: Callable[[str], None] | None = None

    # ---- destinations ------------------------------------------------------------------------------------
    def validate_trunk(self, target: str) -> str | None:
        if target not in self.trunks:
            known = ", ".join(repr(n) for n in self.trunks) or "none"
            return f"names trunk {target!r}, which is not defined (trunks: {known})"
        return None

    def validate_route(self, target: str) -> str | None:
        if target not in self.routes:
            known = ", ".join(repr(n) for n in self.routes) or "none"
            return f"names route {target!r}, which is not defined (routes: {known})"
        return None

    async def dial_trunk(self, call: Call, target: str, number: str) -> Outcome:
        """``trunk:NAME``: the number leaves through that trunk only."""
        return await self._dial_out(call, [self.trunks[target]], number, None)

    async def dial_route(self, call: Call, target: str, number: str) -> Outcome:
        """``route:NAME``: strip, prepend, then the route's trunks in order."""
        route = self.routes[target]
        number = route.prepend + number[route.strip:]
        return await self._dial_out(call, [self.trunks[name] for name in route.trunks], number, route)

    def payer(self, call: Call) -> str | None:
        """The extension a call out is charged to: the one that forwarded it, else the phone that placed it;
        None for a call an application placed or one that came in from a trunk (a ``from_trunk`` rule)."""
        if call.diversion is not None:
            return call.diversion[1]
        a = call.a
        if a is not None and a.inbound and a.trunk is None:
            return a.device
        return None

    async def _dial_out(self, call: Call, trunks: Sequence[Trunk], number: str, route: RouteConfig | None
                        ) -> Outcome:
        if not number:
            await call.reject(484, "Address Incomplete")
            return Finished()
        payer = self.payer(call)
        route_name = route.name if route is not None else f"trunk:{trunks[0].name}"
        if payer is not None:
            active = len(self._outside.get(payer, ()))
            number_class, refusal = self.policy.check(payer, number, active,
                                                      route.number_class if route is not None else None)
            if refusal is not None:
                source = call.a.destination if call.a is not None else ("", "", 0)
                log.warning("security.outbound.refused", ext=payer, number=number, number_class=number_class.value,
                            kind=refusal.kind, route=route_name, source=f"{source[1]}:{source[2]}",
                            reason=refusal.reason)
                await call.reject(refusal.status, "Not allowed to call this number" if refusal.kind == "class"
                                  else "Too many outside calls")
                return Finished()
        else:
            number_class = (route.number_class if route is not None and route.number_class is not None
                            else self.policy.classify(number))
            if call.trunk is not None:
                log.info("trunk.outbound.transit", from_trunk=call.trunk, route=route_name, number=number)
        tried = 0
        last_status = 503
        await call.ring()
        for trunk in trunks:
            if not trunk.addresses:
                log.info("trunk.skipped", trunk=trunk.name, reason="unresolved", error=trunk.resolve_error)
                continue
            if trunk.down:
                log.info("trunk.skipped", trunk=trunk.name, reason="down")
                continue
            if not trunk.has_room(inbound=False):
                log.warning("trunk.full", trunk=trunk.name, direction="outbound", inbound=len(trunk.inbound),
                            outbound=len(trunk.outbound))
                continue
            for address in trunk.addresses:
                tried += 1
                target = self._target(call, trunk, address, number, route, payer)
                log.info("trunk.dialling", trunk=trunk.name, number=target.to.number, address=f"{address}",
                         number_class=number_class.value, ext=payer)
                outcome = await call.dial([target], trunk.config.ring_timeout * 1000, label=f"trunk:{trunk.name}",
                                          response_timeout_ms=trunk.config.no_response_timeout * 1000)
                if outcome.answered is not None:
                    return Connected()
                last_status = outcome.best_status
                if last_status < 500 and last_status not in FAILOVER_STATUSES:
                    await call.reject(last_status)
                    return Finished()
                log.info("trunk.failover", trunk=trunk.name, address=f"{address}", status=last_status)
                if last_status != 408:
                    break  # the trunk answered 5xx: its other addresses are the same service
        if not tried:
            log.warning("trunk.none_available", route=route_name, number=number)
            await self.router.tone_then_reject(call, ToneKind.CONGESTION, 503, "All trunks busy or down")
            return Finished()
        await call.reject(503 if last_status == 408 else last_status)
        return Finished()

    def _target(self, call: Call, trunk: Trunk, address: Destination, number: str, route: RouteConfig | None,
                payer: str | None) -> DialTarget:
        profile = trunk.profile
        outside = trunk.outside_number(number)
        caller = call.caller
        shown = trunk.outside_number(self._caller_id(call, trunk, route, number))
        headers: list[tuple[str, str]] = []
        identity = f"<sip:{shown}@{trunk.domain}>"
        if profile.caller_id_header is IdentityHeader.PAI:
            headers.append(("P-Asserted-Identity", identity))
        elif profile.caller_id_header is IdentityHeader.RPID:
            privacy = "full" if caller.restricted else "off"
            headers.append(("Remote-Party-ID", f"{identity};party=calling;screen=yes;privacy={privacy}"))
        if caller.restricted and profile.caller_id_header is not IdentityHeader.FROM:
            headers.append(("Privacy", "id"))
        if profile.session_expires:
            headers.append(("Session-Expires", str(profile.session_expires)))
        if call.diversion is not None:
            reason, ext = call.diversion
            template = self.policy.permission(ext).caller_id
            diverter = template.format(caller=ext, number=number, dialled=number) if template else ""
            diverter = trunk.outside_number(diverter or trunk.config.caller_id or ext)
            headers.append(("Diversion", f"<sip:{diverter}@{trunk.domain}>;reason={reason};counter=1"))
        # with the identity in a header, From may carry the account (what many providers authenticate)
        from_user = shown
        if profile.caller_id_header is not IdentityHeader.FROM and trunk.config.username:
            from_user = trunk.config.username
        if caller.restricted and profile.caller_id_header is IdentityHeader.FROM:
            from_user = "anonymous"
        credentials = None
        if trunk.config.password:
            credentials = (trunk.config.auth_username or trunk.config.username, trunk.config.password)
        return DialTarget(
            uri=trunk.request_uri(outside), destination=address, label=f"trunk:{trunk.name}",
            to=Party(outside), credentials=credentials, trunk=trunk.name,
            from_uri=SipUri(user=from_user, host=trunk.domain), headers=tuple(headers),
            codecs=profile.codecs, dtmf=profile.dtmf.value, early_media=profile.early_media,
            reliable_provisional=profile.prack.value)

    def _caller_id(self, call: Call, trunk: Trunk, route: RouteConfig | None, number: str) -> str:
        """The number shown to the called party: an extension's own outside number (its
        ``[[outbound.extension]] caller_id``), else the route's, else the trunk's; a rule that set the caller
        ID wins; a caller from outside (a forwarded call) keeps its own number."""
        caller = call.caller
        a = call.a
        ext = a.device if a is not None and a.inbound and a.trunk is None else None
        if ext is not None and caller.number == ext:
            template = self.policy.permission(ext).caller_id
            own = template.format(caller=ext, number=number, dialled=number) if template else ""
            return own or (route.caller_id if route is not None else "") or trunk.config.caller_id or ext
        if ext is None and call.trunk is None:  # placed by an application (a callback, the dialer)
            return (route.caller_id if route is not None else "") or trunk.config.caller_id or caller.number
        return caller.number

    # ---- channels -----------------------------------------------------------------------------------------
    def leg_changed(self, leg: Leg) -> None:
        """The calls' leg listener: count the legs of each trunk (and each extension's outside calls)."""
        if leg.trunk is None:
            return
        trunk = self.trunks.get(leg.trunk)
        if trunk is None:
            return
        legs = trunk.inbound if leg.inbound else trunk.outbound
        if leg.state is LegState.ENDED:
            legs.discard(leg.id)
            payer = self._leg_payer.pop(leg.id, None)
            if payer is not None:
                mine = self._outside.get(payer)
                if mine is not None:
                    mine.discard(leg.id)
                    if not mine:
                        del self._outside[payer]
            return
        if leg.id not in legs:
            legs.add(leg.id)
            if not leg.inbound:
                payer = self.payer(leg.call)
                if payer is not None:
                    self._leg_payer[leg.id] = payer
                    self._outside.setdefault(payer, set()).add(leg.id)

    def outside_calls(self, ext: str) -> int:
        return len(self._outside.get(ext, ()))

    # ---- the handler chain -------------------------------------------------------------------------------
    def attach(self, services: SipServices, calls: CallManager) -> None:
        """Called by the composition root: where to send, and the calls to hand inbound INVITEs to."""
        self.services = services
        self.calls = calls
        calls.add_leg_listener(self.leg_changed)

    def identify(self, request: Request, source: Destination) -> Trunk | None:
        try:
            user = request.sip_uri.user_unescaped or ""
        except SipParseError:
            user = ""
        for trunk in self.trunks.values():
            if trunk.sends_from(source, user):
                return trunk
        return None

    def may_send_from(self, source: Destination) -> bool:
        """Whether a trunk's INVITE could come from ``source``, whatever its Request-URI."""
        return any(trunk.sends_from(source, trunk.contact_user) for trunk in self.trunks.values())

    def on_request(self, request: Request, source: Destination, key: ServerKey | None) -> bool:
        if request.method != "INVITE" or key is None or request.to.tag is not None or not self.trunks:
            return False
        trunk = self.identify(request, source)
        if trunk is None:
            return False
        assert self.services is not None and self.calls is not None
        if not trunk.has_room(inbound=True):
            log.warning("trunk.full", trunk=trunk.name, direction="inbound", inbound=len(trunk.inbound),
                        outbound=len(trunk.outbound))
            self.services.reply(request, 503, reason="Trunk channel limit reached", headers=[("Retry-After", "5")])
            return True
        try:
            did = _did(request, trunk.profile.did_from)
            caller, restricted = _identity(request)
            diversion = _diversion(request)
        except SipParseError as exc:
            self.services.reply(request, exc.status_hint, reason=str(exc)[:80])
            return True
        if not did:
            self.services.reply(request, 484, reason="No number dialled")
            return True
        number = trunk.caller_number(caller) if caller else "anonymous"
        try:
            name = request.from_.display_name or ""
        except SipParseError:
            name = ""
        party = Party(number, name, restricted)
        log.info("trunk.call.in", trunk=trunk.name, did=did, caller=number, source=f"{source[1]}:{source[2]}")
        call = self.calls.on_invite(request, source, key, party, did, local_tag=stable_to_tag(request),
                                    trunk=trunk.name, codecs=trunk.profile.codecs, dtmf=trunk.profile.dtmf.value)
        if call is not None and diversion is not None:
            reason, diverter = diversion
            call.diversion = (reason, trunk.caller_number(diverter))
        return True

    def on_response(self, response: Response, key: ClientKey) -> bool:
        trunk = self._pending.get(key)
        if trunk is None:
            return False
        core = self._core(trunk, self._kind.get(key))
        if response.status >= 200:
            self._pending.pop(key, None)
            self._kind.pop(key, None)
        if core is not None:
            core.receive_response(response, self._now())
        self._pump()
        return True

    def on_transaction_failed(self, key: ClientKey | ServerKey, request: Request) -> bool:
        if not isinstance(key, ClientKey):
            return False
        trunk = self._pending.pop(key, None)
        kind = self._kind.pop(key, None)
        if trunk is None:
            return False
        core = self._core(trunk, kind)
        if core is not None:
            core.transaction_failed(self._now(), request)
        self._pump()
        return True

    @staticmethod
    def _core(trunk: Trunk, kind: str | None) -> RegistrationClient | OptionsPinger | None:
        return trunk.registration if kind == "register" else trunk.pinger if kind == "options" else None

    # ---- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve every trunk, then start its registration and pings."""
        if not self.trunks:
            return
        self._started = True
        self._timer = DeadlineTimer(self._on_timer)
        await asyncio.gather(*(self._resolve(trunk) for trunk in self.trunks.values()))
        for trunk in self.trunks.values():
            self._start_cores(trunk)
        self._pump()
        self._spawn(self._keep_resolved())

    async def stop(self) -> None:
        """Unregister from providers (best effort, bounded) and stop pinging."""
        if not self._started:
            return
        now = self._now()
        waiting = []
        for trunk in self.trunks.values():
            if trunk.registration is not None and trunk.registration.status.state is RegistrationState.REGISTERED:
                trunk.registration.stop(now)
                waiting.append(trunk)
            trunk.pinger = None
        self._pump()
        deadline = time.monotonic() + 2.0
        while waiting and time.monotonic() < deadline and any(
                t.registration is not None and t.registration.status.state is not RegistrationState.STOPPED
                for t in waiting) and self._pending:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._started = False

    def statuses(self) -> list[TrunkStatus]:
        return [trunk.status() for trunk in self.trunks.values()]

    # ---- internals ----------------------------------------------------------------------------------------
    def _now(self) -> int:
        assert self.services is not None
        return self.services.now()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, trunk: Trunk) -> None:
        config = trunk.config
        try:
            if self.resolver is None:
                self.resolver = SipResolver()
            targets = await self.resolver.resolve(config.host, config.port, config.transport.value)
        except ResolveError as exc:
            trunk.resolve_error = str(exc)
            trunk.resolved_until = time.monotonic() + RESOLVE_RETRY_S
            if not trunk.addresses:
                log.warning("trunk.unresolved", trunk=trunk.name, host=config.host, error=str(exc))
            return
        addresses = [(t.transport, t.address, t.port) for t in targets]
        if addresses != trunk.addresses:
            log.info("trunk.resolved", trunk=trunk.name, host=config.host,
                     addresses=[f"{t}:{h}:{p}" for t, h, p in addresses])
        trunk.addresses = addresses
        trunk.resolve_error = ""
        if self.on_address is not None:
            for _, host, _ in addresses:
                self.on_address(host)
        ttl = min((t.ttl for t in targets if t.ttl is not None), default=RESOLVE_MAX_TTL_S)
        trunk.resolved_until = time.monotonic() + min(max(ttl, RESOLVE_MIN_TTL_S), RESOLVE_MAX_TTL_S)

    async def _keep_resolved(self) -> None:
        while True:
            now = time.monotonic()
            due = [t for t in self.trunks.values() if t.resolved_until <= now]
            for trunk in due:
                had = bool(trunk.addresses)
                await self._resolve(trunk)
                if not had and trunk.addresses:
                    self._start_cores(trunk)
                    self._pump()
            wake = min((t.resolved_until for t in self.trunks.values()), default=now + RESOLVE_MAX_TTL_S)
            await asyncio.sleep(max(1.0, wake - time.monotonic()))

    def _start_cores(self, trunk: Trunk) -> None:
        if not trunk.addresses or self.services is None:
            return
        config = trunk.config
        address = trunk.addresses[0]
        local_host, local_port = self.services.local_address(address)
        shown = f"[{local_host}]" if ":" in local_host else local_host
        param = "" if address[0] == "udp" else f";transport={address[0]}"
        now = self._now()
        agent = self.config.sip.user_agent
        if config.register and trunk.registration is None:
            aor = SipUri(user=config.username, host=trunk.domain)
            registrar = SipUri(host=config.host, port=config.port)
            contact = f"<sip:{trunk.contact_user}@{shown}:{local_port}{param}>"
            credentials = ((config.auth_username or config.username, config.password) if config.password
                           else None)
            trunk.registration = RegistrationClient(
                aor, registrar, contact, credentials, config.register_expires, via_host=local_host,
                via_port=local_port, transport=address[0], user_agent=agent)
            trunk.registration.start(now)
        interval = trunk.profile.keepalive
        if interval and trunk.pinger is None:
            target = SipUri(host=config.host, port=config.port)
            # a probe unanswered for an interval (at most Timer F's 32 s) is a miss: a dead trunk is marked
            # down after two intervals, not two Timer F's
            trunk.pinger = OptionsPinger(target, interval, timeout_ms=min(32_000, interval * 1000),
                                         via_host=local_host, via_port=local_port,
                                         transport=address[0], user_agent=agent,
                                         from_uri=SipUri(user="ccpbx", host=trunk.domain))
            trunk.pinger.start(now)

    def _on_timer(self) -> None:
        now = self._now()
        for trunk in self.trunks.values():
            for core in (trunk.registration, trunk.pinger):
                if core is not None:
                    deadline = core.next_deadline()
                    if deadline is not None and deadline <= now:
                        core.handle_timer(now)
        self._pump()

    def _pump(self) -> None:
        """Send what the cores have queued, log what happened to them, and arm the one timer for the earliest
        deadline."""
        if self.services is None:
            return
        deadlines: list[int] = []
        for trunk in self.trunks.values():
            if not trunk.addresses:
                continue
            address = trunk.addresses[0]
            cores: tuple[tuple[str, RegistrationClient | OptionsPinger | None], ...] = (
                ("register", trunk.registration), ("options", trunk.pinger))
            for kind, core in cores:
                if core is None:
                    continue
                for _ in range(4):  # a failed send makes the core queue its retry: bounded
                    requests = core.outgoing()
                    if not requests:
                        break
                    for request in requests:
                        try:
                            key = self.services.send_request(request, address)
                        except Exception as exc:  # a transport error: the core hears it as a failure
                            log.info("trunk.send_failed", trunk=trunk.name, method=request.method, error=str(exc))
                            core.transaction_failed(self._now(), request)
                            continue
                        self._pending[key] = trunk
                        self._kind[key] = kind
                for event in core.events():
                    _log_event(trunk, event)
                deadline = core.next_deadline()
                if deadline is not None:
                    deadlines.append(deadline)
        if self._timer is not None and self._started:
            self._timer.arm(min(deadlines) if deadlines else None)


def _log_event(trunk: Trunk, event: object) -> None:
    if isinstance(event, Registered):
        log.info("trunk.registered", trunk=trunk.name, granted_s=event.granted_s, status=event.status,
                 contact_listed=event.contact_listed)
    elif isinstance(event, RegistrationFailed):
        log.warning("trunk.registration_failed", trunk=trunk.name, status=event.status, reason=event.reason,
                    cause=event.cause.value, failures=event.failures)
    elif isinstance(event, Unregistered):
        log.info("trunk.unregistered", trunk=trunk.name, status=event.status)
    elif isinstance(event, PeerStateChanged):
        if event.state is PeerState.DOWN:
            log.warning("trunk.down", trunk=trunk.name, misses=event.misses)
        else:
            log.info("trunk.reachable", trunk=trunk.name, state=event.state.value, rtt_ms=event.rtt_ms)


def _describe(status: RegistrationStatus, now_ms: float) -> str:
    """A registration's state in a few words: "200 OK, 600 s" or "403 Forbidden (wrong-credentials)"."""
    parts = []
    if status.last_status is not None:
        parts.append(f"{status.last_status} {status.last_reason}".strip())
    if status.state is RegistrationState.REGISTERED and status.granted_s is not None:
        parts.append(f"{status.granted_s} s")
    if status.cause is not None:
        parts.append(status.cause.value)
    if status.next_attempt_ms is not None and status.state is RegistrationState.FAILED:
        parts.append(f"retry in {max(0, int((status.next_attempt_ms - now_ms) / 1000))} s")
    return ", ".join(parts)


# ---- reading an inbound INVITE -----------------------------------------------------------------------------

def _did(request: Request, source: DidSource) -> str:
    uri = request.sip_uri if source is DidSource.REQUEST_URI else request.to.uri
    if not isinstance(uri, SipUri):
        return ""
    return uri.user_unescaped or ""


def _identity(request: Request) -> tuple[str, bool]:
    """The caller's number (P-Asserted-Identity, Remote-Party-ID, then From; RFC 3325 — the trunk is trusted)
    and whether it asked for privacy (RFC 3323 ``Privacy: id``, an anonymous From)."""
    privacy = {p.strip().lower() for p in (request.headers.get("privacy") or "").split(";")}
    restricted = "id" in privacy or "full" in privacy
    number = ""
    for header in ("p-asserted-identity", "remote-party-id"):
        for value in request.headers.get_all(header):
            user = _user_of(value.split(",")[0])
            if header == "remote-party-id" and "privacy=full" in value.lower().replace(" ", ""):
                restricted = True
            if user:
                number = user
                break
        if number:
            break
    if not number:
        uri = request.from_.uri
        number = (uri.user_unescaped or "") if isinstance(uri, SipUri) else ""
    if number.lower() in ("anonymous", "unknown", "restricted", ""):
        return "", True
    return number, restricted


def _user_of(value: str) -> str:
    with contextlib.suppress(SipParseError, ValueError):
        address = NameAddr.parse(value.strip())
        uri = address.uri
        if isinstance(uri, SipUri):
            return uri.user_unescaped or ""
        text = str(uri)
        if text.lower().startswith("tel:"):
            return text[4:].split(";")[0]
    return ""


def _diversion(request: Request) -> tuple[str, str] | None:
    """The most recent diverting party of RFC 5806 ``Diversion`` (the first value) and its reason, or None."""
    values = request.headers.get_all("diversion")
    if not values:
        return None
    try:
        address = NameAddr.parse(values[0].split(",")[0])
    except (SipParseError, ValueError):
        return None
    uri = address.uri
    user = (uri.user_unescaped or "") if isinstance(uri, SipUri) else ""
    if not user:
        return None
    reason = next((str(value).strip('"').lower() for name, value in address.params
                   if name.lower() == "reason" and value), "unknown")
    return reason, user
