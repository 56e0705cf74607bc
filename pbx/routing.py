"""Routing: carries out what the dial plan decides, on calls.

``CallRouter`` is the ``Router`` the call manager runs for every new call. It asks :class:`DialPlan` where the
dialled string goes, then rings extensions (their registered contacts, in parallel), hunts groups (ring-all,
linear, round-robin, then the group's final destination), applies each extension's do-not-disturb and call
forwarding (unconditional, busy, no answer), carries out feature codes (forwarding and DND on/off) and blind
transfers (REFER) by routing the transfer target the same way. A number that routes nowhere hears a tone in
early media before its 404, never silence. Its ``clock`` (the real UTC time unless a test passes another) is
the instant every routing decision evaluates the rules' schedules at; flows ask ``router.in_schedule(name)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ccpbx.ivr.flow import QueueRequest
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.source import SAMPLE_RATE, AudioSource
from ccpbx.media.tones import Region, ToneKind, tone_source
from ccpbx.pbx.bounded import ExpiringCache
from ccpbx.pbx.calls import (
    Call,
    CallEnded,
    CallError,
    CallHangup,
    CallManager,
    DialOutcome,
    DialTarget,
    Party,
    TransferRequested,
    reachable_at,
)
from ccpbx.pbx.config import ToneRegion, UnknownNumberTreatment
from ccpbx.pbx.destinations import Connected, DestinationRegistry, Finished, Outcome, Redirect
from ccpbx.pbx.devicestate import BUSY_STATES, DeviceState
from ccpbx.pbx.dialplan import (
    Destination,
    DestinationKind,
    DialPlan,
    FeatureCode,
    FeatureRequest,
    Presentation,
    Route,
)
from ccpbx.pbx.location import LocationService
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.pickup import Pickup
from ccpbx.pbx.schedules import Schedules
from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.store import ExtensionFeatures, Store

log = get_logger("ccpbx.routing")

DEFAULT_RING_MS = 30_000
AGENT_CODES = frozenset({FeatureCode.AGENT_LOGIN, FeatureCode.AGENT_LOGOUT, FeatureCode.AGENT_PAUSE,
                         FeatureCode.AGENT_UNPAUSE})
MAX_REDIRECTS = 5  # forwards/finals followed for one call before giving up (forwarding loops)
UNKNOWN_TONE_MS = 3_000  # how long a caller hears the "no such number" tone before the 404
CONFIRM_MS = 1_200  # the confirmation beeps after a feature code
# An extension's DND/forwarding is read again from the store after this; changes made through the server
# (feature codes, the admin API) drop the entry at once, changes made beside it (the CLI) empty the cache
# within a second (pbx.app polls SQLite's data_version).
FEATURES_CACHE_S = 300.0
FEATURES_CACHE_ENTRIES = 10_000  # extensions whose features are cached at most


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Hop:
    destination: Destination
    number: str


class CallRouter:
    """The dial plan's executor; see the module docstring."""

    def __init__(self, dialplan: DialPlan, location: LocationService, store: Store, *,
                 extensions: Callable[[], set[str]], display_name: Callable[[str], str] | None = None,
                 ring_ms: int = DEFAULT_RING_MS, clock: Callable[[], datetime] | None = None) -> None:
        self.dialplan = dialplan
        self.clock = clock or _utc_now  # an aware "now" for schedules; tests inject fixed times
        self.location = location
        self.store = store
        self.extensions = extensions
        self.display_name = display_name or (lambda ext: "")
        self.ring_ms = ring_ms
        self.manager: CallManager | None = None
        self.pickup: Pickup | None = None  # call pickup's feature codes (set by the composition root)
        # the ACD's agent codes (login, logout, pause, unpause), set by the queues when they are wired
        self.agent_features: Callable[[Call, FeatureRequest], Awaitable[None]] | None = None
        self.voicemail_feature: Callable[[Call, FeatureRequest], Awaitable[None]] | None = None  # *97
        # the current device state of an extension (set by the composition root); None: nobody is ever busy
        self.device_state: Callable[[str], DeviceState] | None = None
        self.features_cache: ExpiringCache[str, ExtensionFeatures] = ExpiringCache(FEATURES_CACHE_S,
                                                                             FEATURES_CACHE_ENTRIES)
        self.destinations = DestinationRegistry()
        self.destinations.register(DestinationKind.EXTENSION, self._extension, description="an extension's phones")
        self.destinations.register(DestinationKind.GROUP, self._group, validate=self._check_group,
                                   description="a ring group")
        self.destinations.register(DestinationKind.HANGUP, self._hangup, description="a final SIP status")
        self.destinations.register(DestinationKind.FEATURE, self._feature_destination, description="a feature")

    async def features(self, ext: str) -> ExtensionFeatures:
        """An extension's DND/forwarding, cached for a moment: a call rings once per call, not per lookup, and
        ``ccpbx ext forward`` (another process) is seen within ``FEATURES_CACHE_S``."""
        cached = self.features_cache.get(ext, time.monotonic())
        if cached is not None:
            return cached
        features = await self.store.get_features(ext)
        self.features_cache.put(ext, features, time.monotonic())
        return features

    @property
    def schedules(self) -> Schedules:
        """The ``[[schedule]]`` tables by name (pure: pass the instant)."""
        return self.dialplan.schedules

    def in_schedule(self, name: str, at: datetime | None = None) -> bool:
        """Whether schedule ``name`` is open at ``at`` (default: the router's clock); unknown names raise
        :class:`~ccpbx.pbx.schedules.UnknownScheduleError`, a :class:`KeyError`."""
        return self.dialplan.schedules.in_schedule(name, self.clock() if at is None else at)

    def _route(self, dialled: str, caller: str, trunk: str | None = None) -> Route | FeatureRequest | None:
        return self.dialplan.route(dialled, caller, self.extensions(), now=self.clock(), trunk=trunk)

    @property
    def region(self) -> Region:
        return Region.NORTH_AMERICA if self.dialplan.region is ToneRegion.US else Region.ETSI

    # ---- the router ---------------------------------------------------------------------------------------
    async def __call__(self, call: Call) -> None:
        route = self._route(call.dialled, call.caller.number, call.trunk)
        log.info("route.resolved", dialled=call.dialled, trunk=call.trunk,
                 route=str(route.destination) if isinstance(route, Route) else repr(route))
        if route is None:
            await self._unknown(call)
            return
        if isinstance(route, FeatureRequest):
            await self._feature(call, route)
            return
        if route.caller_id_number or route.caller_id_name or route.presentation is Presentation.RESTRICTED:
            call.caller = Party(route.caller_id_number or call.caller.number,
                                route.caller_id_name or call.caller.name,
                                route.presentation is Presentation.RESTRICTED)
        if route.priority is not None:  # a rule's queue priority (VIP numbers, a premium line)
            call.queue_request = QueueRequest(priority=route.priority)
        connected = await self.route_to(call, route.destination, route.number)
        if connected:
            await self.converse(call)

    async def converse(self, call: Call) -> None:
        """Wait for the end of a connected call, carrying out blind transfers on the way."""
        while not call.finished:
            event = await call.wait_event()
            if isinstance(event, CallEnded):
                return
            if isinstance(event, TransferRequested):
                await self._transfer(event)

    async def _transfer(self, event: TransferRequested) -> None:
        """A blind transfer (REFER): the transferee goes wherever the target routes, through the registry.

        Extensions and groups keep the transferor until the target answers (NOTIFY progress, bridged back on
        failure, as phone users expect); any other destination (a queue, a flow, a room) takes the transferee at
        once: the transferor gets NOTIFY 200 and BYE, and the transferee is routed like a new call.
        """
        manager = self.manager
        assert manager is not None
        # a party on a trunk transfers with the trunk's rights (its rules only), a phone with an extension's
        route = self._route(event.target, event.transferor.peer, event.transferor.trunk)
        if (not isinstance(route, Route) or route.destination.kind not in self.destinations
                or route.destination.kind in (DestinationKind.HANGUP, DestinationKind.FEATURE)):
            manager.transfers.transfer_progress(event.transferor, 404, "Not Found", final=True)
            log.info("route.transfer.failed", target=event.target)
            return
        kind = route.destination.kind
        if kind not in (DestinationKind.EXTENSION, DestinationKind.GROUP):
            new = manager.transfers.hand_over(event, label=str(route.destination))
            if new is not None:
                await self.serve(new, route.destination, route.number)
            return
        targets: list[DialTarget] = []
        if kind is DestinationKind.EXTENSION:
            ext = route.destination.target
            features = await self.features(ext)
            if not features.dnd:
                targets = self._targets(ext)
            label = f"extension:{ext}"
        else:
            targets = await self._group_contacts(route.destination.target)
            label = f"group:{route.destination.target}"
        if not targets:
            manager.transfers.transfer_progress(event.transferor, 404, "Not Found", final=True)
            log.info("route.transfer.failed", target=event.target)
            return
        manager.transfers.transfer_progress(event.transferor, 180, "Ringing")
        new = await manager.transfers.blind_transfer(event, targets, self.ring_ms, label)
        if new is not None:
            await self.converse(new)

    async def originate(self, destination: str, *, caller: Party, timeout_s: float | None = None,
                        headers: Sequence[tuple[str, str]] = (), data: dict[str, object] | None = None) -> Call:
        """Place an outbound call to ``destination`` (``"extension:1002"``, ``"group:sales"`` — every member at
        once — or a number the dial plan routes to one of those); returns it answered.

        Raises :class:`CallError` with the SIP status when it cannot be placed or nobody answers (480 not
        registered, 486 do-not-disturb or busy, 408/480 no answer, 501 for a kind that cannot be called out).
        """
        manager = self.manager
        assert manager is not None
        target, number = self.resolve(destination, caller.number)
        targets = await self._contacts(target)
        timeout_ms = int((timeout_s if timeout_s is not None else self.ring_ms / 1000) * 1000)
        return await manager.originate(targets, caller=caller, dialled=number, timeout_ms=timeout_ms,
                                       headers=headers, data=data, label=str(target))

    async def dial_targets(self, destination: str, caller: str) -> list[DialTarget]:
        """The contacts ``Call.call_out`` rings for ``destination``; :class:`CallError` when there are none."""
        target, _ = self.resolve(destination, caller)
        return await self._contacts(target)

    async def _contacts(self, target: Destination) -> list[DialTarget]:
        targets: list[DialTarget] = []
        if target.kind is DestinationKind.EXTENSION:
            if (await self.features(target.target)).dnd:
                raise CallError(f"{target.target} is on do-not-disturb", 486)
            targets = self._targets(target.target)
        elif target.kind is DestinationKind.GROUP:
            targets = await self._group_contacts(target.target)
        else:
            raise CallError(f"cannot place a call to a {target.kind.value}: destination", 501)
        if not targets:
            raise CallError(f"{target} has no registered phone", 480)
        return targets

    def resolve(self, destination: str, caller: str) -> tuple[Destination, str]:
        """``kind:target`` as written, or a number through the dial plan; ValueError when it routes nowhere."""
        if ":" in destination:
            target = Destination.parse(destination)
            return target, target.target
        route = self._route(destination, caller)
        if not isinstance(route, Route):
            raise ValueError(f"{destination!r} routes nowhere")
        return route.destination, route.number

    async def serve(self, call: Call, destination: Destination, number: str) -> None:
        """Route ``call`` (not started by the SIP edge: a transferee, an originated call) to its end."""
        try:
            if await self.route_to(call, destination, number):
                await self.converse(call)
        except CallHangup:
            pass
        finally:
            if not call.finished:
                call.hangup()

    async def transfer_call(self, call: Call, destination: str) -> bool:
        """``Call.transfer``: send the call's caller to ``destination`` (``kind:target`` or a number to route).

        Whoever the caller was bridged with is hung up; True when the caller ended up connected to someone.
        """
        target, number = self.resolve(destination, call.caller.number)
        call.drop_others()
        call.destination = str(target)
        return await self.route_to(call, target, number)

    # ---- destinations -------------------------------------------------------------------------------------
    async def route_to(self, call: Call, destination: Destination, number: str) -> bool:
        """Send ``call`` to ``destination`` through the registry; True when it ended up connected (bridged).

        Redirects (forwarding, a group's final destination) are followed up to ``MAX_REDIRECTS`` times.
        """
        hop: _Hop | None = _Hop(destination, number)
        for _ in range(MAX_REDIRECTS + 1):
            if hop is None:
                return False
            if hop.destination.kind not in self.destinations:
                # a kind this server has no handler for (its issue has not landed, or it is not configured):
                # the caller is told so with a congestion tone and 503 rather than left in silence
                log.warning("route.destination.unavailable", destination=str(hop.destination))
                await self.tone_then_reject(call, ToneKind.CONGESTION, 503, "Destination not available")
                return False
            outcome: Outcome = await self.destinations.dispatch(call, hop.destination, hop.number)
            if isinstance(outcome, Connected):
                return True
            if isinstance(outcome, Finished):
                if not call.finished and call.a is not None and call.a.up:
                    call.hangup()  # the destination served the caller to its end: nobody is left to talk to
                return False
            hop = _Hop(outcome.destination, outcome.number)
        log.warning("route.redirect.loop", dialled=call.dialled)
        await call.reject(482, "Forwarding loop")
        return False

    async def _hangup(self, call: Call, target: str, number: str) -> Outcome:
        await call.reject(int(target))
        return Finished()

    async def _feature_destination(self, call: Call, target: str, number: str) -> Outcome:
        await self._feature(call, FeatureRequest(FeatureCode[target.upper()], ""))
        return Finished()

    def _check_group(self, target: str) -> str | None:
        try:
            self.dialplan.hunt(target)
        except LookupError:
            return f"names group {target!r}, which is not defined"
        return None

    async def _extension(self, call: Call, ext: str, number: str = "") -> Outcome:
        features = await self.features(ext)
        if features.forward_always:
            return self._forward(call, ext, features.forward_always, "unconditional")
        if features.dnd:
            if features.forward_busy:
                return self._forward(call, ext, features.forward_busy, "user-busy")
            await call.reject(486, "Do Not Disturb")
            return Finished()
        if not features.call_waiting and self._busy(ext):
            log.info("route.extension.busy", ext=ext, state=str(self._state(ext)))
            if features.forward_busy:
                return self._forward(call, ext, features.forward_busy, "user-busy")
            await call.reject(486, "Busy Here")
            return Finished()
        targets = self._targets(ext)
        timeout = features.noanswer_seconds * 1000 if features.forward_noanswer else self.ring_ms
        if not targets:
            if features.forward_noanswer:
                return self._forward(call, ext, features.forward_noanswer, "unavailable")
            await call.reject(480, "Not registered")
            return Finished()
        await call.ring()
        outcome = await call.dial(targets, timeout, label=f"extension:{ext}")
        if outcome.answered is not None:
            return Connected()
        if outcome.busy and features.forward_busy:
            return self._forward(call, ext, features.forward_busy, "user-busy")
        if not outcome.busy and features.forward_noanswer:
            return self._forward(call, ext, features.forward_noanswer, "no-answer")
        await call.reject(self._caller_status(outcome))
        return Finished()

    async def _group(self, call: Call, name: str, number: str = "") -> Outcome:
        plan = self.dialplan.hunt(name)
        ring_busy = self.dialplan.group(name).ring_busy
        await call.ring()
        for step in plan.steps:
            targets: list[DialTarget] = []
            for member in step.members:
                features = await self.features(member)
                if features.dnd:
                    continue
                if not ring_busy and self._busy(member):
                    log.info("route.group.member_busy", group=name, member=member, state=str(self._state(member)))
                    continue
                targets.extend(self._targets(member))
            if not targets:
                continue
            outcome = await call.dial(targets, step.ring_ms, label=f"group:{name}")
            if outcome.answered is not None:
                return Connected()
        log.info("route.group.unanswered", group=name, final=str(plan.final))
        return Redirect(plan.final, call.dialled)

    async def _group_contacts(self, name: str) -> list[DialTarget]:
        """Every member of group ``name`` at once (a transfer to it, an originated call): its members' phones,
        leaving out members on do-not-disturb and, unless the group has ``ring_busy``, members on a call."""
        plan = self.dialplan.hunt(name)
        ring_busy = self.dialplan.group(name).ring_busy
        targets: list[DialTarget] = []
        for member in dict.fromkeys(m for step in plan.steps for m in step.members):
            if (await self.features(member)).dnd or (not ring_busy and self._busy(member)):
                continue
            targets.extend(self._targets(member))
        return targets

    def _state(self, ext: str) -> DeviceState | None:
        return self.device_state(ext) if self.device_state is not None else None

    def _busy(self, ext: str) -> bool:
        """On a call (talking or holding): busy-aware groups pass it by, call waiting off refuses a call."""
        return self._state(ext) in BUSY_STATES

    def _forward(self, call: Call, ext: str, target: str, reason: str) -> Outcome:
        """Call forwarding to ``target`` (a number the dial plan routes, or ``kind:target`` such as
        ``voicemail:1001``); ``reason`` (RFC 5806: unconditional, user-busy, no-answer, unavailable) goes with
        the call, so voicemail picks the busy or the unavailable greeting."""
        call.diversion = (reason, ext)
        try:
            destination, number = self.resolve(target, ext)
        except ValueError:
            return Finished()
        return Redirect(destination, number)

    def reachable(self, ext: str) -> list[DialTarget]:
        """The contacts a request for ``ext`` goes to (every live registration, NAT-aware)."""
        return self._targets(ext)

    def _targets(self, ext: str) -> list[DialTarget]:
        """Every live registration of ``ext``, sent to where the REGISTER really came from (NAT)."""
        targets = []
        for binding in self.location.lookup(ext, time.time()):
            try:
                uri = SipUri.parse(binding.contact)
            except SipParseError:
                continue
            source = (binding.transport, binding.source_host, binding.source_port)
            targets.append(DialTarget(uri=uri, destination=reachable_at(uri, source),
                                      label=f"extension:{ext}", to=Party(ext, self.display_name(ext)),
                                      device=ext))
        return targets

    @staticmethod
    def _caller_status(outcome: DialOutcome) -> int:
        status = outcome.best_status
        if status in (408, 487):
            return 480  # nobody answered in time: Temporarily Unavailable for the caller
        if status >= 500 and status < 600:
            return 480  # a callee's server error is not ours to report as our own failure
        return status

    # ---- unknown numbers and features ---------------------------------------------------------------------
    async def _unknown(self, call: Call) -> None:
        """A number that routes nowhere: a tone in early media (RFC 3960), then 404 (RFC 3261 §21.4.5).

        ``announcement`` plays the special information tone (ITU-T E.180 §8: 950/1400/1800 Hz), the signal
        that precedes a "number not in service" intercept; spoken announcements come with prompt files.
        """
        source: AudioSource = tone_source(ToneKind.CONGESTION, self.region)
        if self.dialplan.unknown_number is UnknownNumberTreatment.ANNOUNCEMENT:
            source = MusicOnHold(special_information_tone())
        await self._media_then_reject(call, source, 404, "No route to this number")

    async def tone_then_reject(self, call: Call, tone: ToneKind, status: int, reason: str) -> None:
        """The caller hears ``tone`` in early media for a few seconds, then the final ``status``."""
        await self._media_then_reject(call, tone_source(tone, self.region), status, reason)

    async def _media_then_reject(self, call: Call, source: AudioSource, status: int, reason: str) -> None:
        try:
            await call.early_media(source)
            await asyncio.sleep(UNKNOWN_TONE_MS / 1000)
        except CallHangup:
            return
        await call.reject(status, reason)

    async def _feature(self, call: Call, request: FeatureRequest) -> None:
        ext = call.caller.number
        if call.trunk is not None or ext not in self.extensions():  # a caller from outside is no extension
            await call.reject(403, "Feature codes are for extensions")
            return
        if request.code in (FeatureCode.PICKUP_GROUP, FeatureCode.PICKUP_DIRECTED) and self.pickup is not None:
            await self.pickup.feature(call, request)
            return
        if request.code is FeatureCode.VOICEMAIL and self.voicemail_feature is not None:
            await self.voicemail_feature(call, request)
            return
        if request.code in AGENT_CODES and self.agent_features is not None:
            await self.agent_features(call, request)
            return
        features = await self.features(ext)
        code = request.code
        changes: dict[str, object] = {}
        if code in (FeatureCode.FORWARD_ALWAYS_ON, FeatureCode.FORWARD_BUSY_ON, FeatureCode.FORWARD_NOANSWER_ON):
            if not request.argument:
                await call.reject(484, "Forward target missing")
                return
            field_name = {FeatureCode.FORWARD_ALWAYS_ON: "forward_always", FeatureCode.FORWARD_BUSY_ON:
                          "forward_busy", FeatureCode.FORWARD_NOANSWER_ON: "forward_noanswer"}[code]
            changes[field_name] = request.argument
        elif code is FeatureCode.FORWARD_ALWAYS_OFF:
            changes["forward_always"] = None
        elif code is FeatureCode.FORWARD_BUSY_OFF:
            changes["forward_busy"] = None
        elif code is FeatureCode.FORWARD_NOANSWER_OFF:
            changes["forward_noanswer"] = None
        elif code is FeatureCode.DND_ON:
            changes["dnd"] = True
        elif code is FeatureCode.DND_OFF:
            changes["dnd"] = False
        else:
            await self.tone_then_reject(call, ToneKind.CONGESTION, 503, f"{code.name.lower()} not available")
            return
        updated: ExtensionFeatures = dataclasses.replace(features, **changes)  # type: ignore[arg-type]
        await self.store.set_features(updated)
        self.features_cache.pop(ext)
        log.info("feature.set", ext=ext, code=code.name, argument=request.argument)
        await call.answer()
        try:
            await asyncio.wait_for(call.play(PromptPlayer(confirmation_beeps())), CONFIRM_MS / 1000 + 1)
        except (CallHangup, TimeoutError):
            pass
        call.hangup()


def special_information_tone() -> np.ndarray:
    """ITU-T E.180 §8 / Q.35 special information tone: 950, 1400, 1800 Hz, 330 ms each, then 1 s of silence."""
    rate = SAMPLE_RATE
    pieces = []
    for f in (950.0, 1400.0, 1800.0):
        t = np.arange(int(rate * 0.33)) / rate
        pieces.append(np.sin(2 * np.pi * f * t) * 6000)
    pieces.append(np.zeros(rate))
    return np.concatenate(pieces).astype(np.int16)


def confirmation_beeps() -> np.ndarray:
    """Three short rising beeps: the "feature set" acknowledgement many PBXs play."""
    rate = SAMPLE_RATE
    pieces = []
    for f in (660.0, 880.0, 1100.0):
        t = np.arange(int(rate * 0.15)) / rate
        pieces.append(np.sin(2 * np.pi * f * t) * 8000)
        pieces.append(np.zeros(int(rate * 0.08)))
    return np.concatenate(pieces).astype(np.int16)
