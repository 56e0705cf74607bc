"""The application: the composition root that wires SIP, media, call control, storage and ``ccpbx serve``.

One asyncio edge around the pure cores: datagrams and stream items go into the ``SipEndpoint``; after each
input its outputs are sent and its events dispatched; ONE ``loop.call_at`` is armed at the endpoint's next
deadline. Each request passes the UAS core's checks (RFC 3261 §8.2: 416, 420) and then the handler chain
(:mod:`ccpbx.pbx.sip_handlers`: registration, calls, ...), which share one admission decision
(:mod:`ccpbx.pbx.admission`); what no handler takes gets OPTIONS 200, 481, 405 or 501 here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ccpbx.acd.events import QueueLog
from ccpbx.media.transport import MediaServer, PortAllocator
from ccpbx.media.workers import AnyMedia, MediaWorkers, usable_cores
from ccpbx.pbx.admission import Admission, Admitted, Challenged, Refused
from ccpbx.pbx.bans import (
    AuthFailed,
    Ban,
    BanEvent,
    BanExpired,
    BanLifted,
    BanPolicy,
    Bans,
    BanStarted,
    FailureKind,
    RateLimited,
)
from ccpbx.pbx.bounded import ExpiringCache
from ccpbx.pbx.call_handling import IN_DIALOG_METHODS, CallHandler
from ccpbx.pbx.calls import ALLOW, CallManager, CallsConfig
from ccpbx.pbx.cdr import CallRecord, close_incomplete
from ccpbx.pbx.config import AUTO_MEDIA_WORKERS_MAX, Config, parse_source
from ccpbx.pbx.control import CallControl
from ccpbx.pbx.devicestate import DeviceState, DeviceStates
from ccpbx.pbx.dialoginfo import DialogEventPackage
from ccpbx.pbx.dialplan import DialPlan
from ccpbx.pbx.gcpace import GcPacer, tune_garbage_collector
from ccpbx.pbx.liveview import start_live_view
from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.log import flush_logs, get_logger
from ccpbx.pbx.loopwatch import LoopWatch
from ccpbx.pbx.messaging import MessageRelay
from ccpbx.pbx.mwi import MessageSummaryPackage, UnsolicitedMwi
from ccpbx.pbx.pickup import Pickup
from ccpbx.pbx.register_leases import RegisterLeases
from ccpbx.pbx.registrar import RegisterResult, Registrar, RegistrarPolicy
from ccpbx.pbx.registration import RegistrationHandler
from ccpbx.pbx.routing import CallRouter
from ccpbx.pbx.sip.auth import DigestAuthenticator
from ccpbx.pbx.sip.endpoint import MalformedMessageReceived, SipEndpoint
from ccpbx.pbx.sip.framing import CREDENTIALS_RE, MAX_HEAD_SCAN, NEW_WORK_METHODS, StreamItem
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.steering import SteeringUnavailableError, steering_available
from ccpbx.pbx.sip.transaction import (
    LINGER_GRAIN_MS,
    AckTimedOut,
    ClientKey,
    Destination,
    PrackTimedOut,
    RequestReceived,
    ResponseReceived,
    ServerKey,
    StrayResponseReceived,
    TransactionLayer,
    TransactionTimedOut,
    TransportFailed,
)
from ccpbx.pbx.sip.transport import ListenAddress, SipTransports, TlsSetupError, client_context, server_context
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.sip_handlers import DeadlineTimer, SipHandler, stable_to_tag
from ccpbx.pbx.sip_worker import Counts, WorkerSetup
from ccpbx.pbx.sip_workers import SipWorkers
from ccpbx.pbx.store import CdrRow, Extension, QueueLogRow, Store
from ccpbx.pbx.subscribe_handling import SubscriptionHandler
from ccpbx.pbx.subscriptions import Notifier
from ccpbx.pbx.wiring import wire_destinations

log = get_logger("ccpbx.app")
security_log = get_logger("ccpbx.security")

# Methods this server implements as a UAS; the others RFC 3261 and its extensions define get 405.
ALLOWED_METHODS = ("REGISTER", "MESSAGE", "SUBSCRIBE", *(m.strip() for m in ALLOW.split(",")))
KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO", "UPDATE", "PRACK",
                           "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})
SUPPORTED_OPTION_TAGS = frozenset({"path", "outbound", "gruu", "timer", "replaces", "100rel"})
# An extension's credentials (or its absence) are kept this long; a change made beside the running server (the
# CLI writes the database) empties the cache within DATA_VERSION_POLL_S (SQLite's data_version tells).
CREDENTIAL_CACHE_S = 300.0
DATA_VERSION_POLL_S = 1.0
CREDENTIAL_CACHE_ENTRIES = 10_000  # user names cached at most (unknown ones too: a scanner's guesses)
LOCAL_IP_CACHE_ENTRIES = 1_024  # peer address -> our source address toward it
LOCAL_IP_CACHE_S = 300.0  # re-asked after this (routes change)
FLUSH_INTERVAL_S = 0.2  # a registration change no REGISTER's answer waits for is written within this
HOUSEKEEPING_S = 1.0  # the housekeeper's round: the database's data_version polled, expiry swept every fifth
EXPIRY_SWEEP_S = 5.0
OPEN_FILES_WANTED = 1 << 20  # the soft open-files limit sought when the hard one is unlimited
CDR_BATCH_MAX = 500  # call records written in one transaction at most; a backlog goes in several
# A batch follows the last by this much at least: under load the states a call goes through in that time (start,
# answer, end) are one row and one transaction, not three; when idle the first record is written at once.
CDR_BATCH_INTERVAL_S = 0.1
FLUSH_BATCH_MAX = 1_000  # registration changes written in one transaction at most
# A registration commit follows the last by this much at least: idle, a REGISTER's binding is committed at once;
# under load the REGISTERs of this interval share one transaction (one trip to the database thread, one WAL
# append) instead of one each, for at most this much more before their 200 OK.
FLUSH_GROUP_S = 0.01
# Datagram work done per turn of the event loop before the rest waits in the inbox: the loop then reads more
# from the socket (a few dozen datagrams a turn), so a backlog is in our hands, ordered by urgency, and not in
# the kernel's buffer where nothing can be told apart.
INBOX_TURN_BUDGET_S = 0.005
# A new request (INVITE, REGISTER, ...) that waited in the inbox longer than this is dropped unread: its sender
# retransmits it (RFC 3261 Timer A/E, 500 ms), and the work goes to calls that can still be served in time.
SHED_AFTER_MS = 250
INBOX_MAX = 20_000  # datagrams waiting at most; past it the newest are dropped (senders retransmit)
# A datagram a SIP worker read this long before it is taken in here counts as late, as one that waited in the
# inbox does: a new INVITE's 100 Trying then goes at once (see SipServer._receive)
LATE_DATAGRAM_MS = 50
# What a new request waiting too long in the inbox may be refused for (an in-dialog one never is)
OVERLOAD_REFUSABLE = frozenset(m.decode().strip() for m in NEW_WORK_METHODS)
# Refusals start only once the inbox has held datagrams without a break for this long: a backlog that drains
# sooner (a collector's pause, a burst of registrations) is served late, not refused.
OVERLOAD_SUSTAINED_MS = 500
# A new request refused for overload ([sip] overload_reject_ms) is told to come back after a random number of
# seconds in this range, so the refused phones and trunks do not all retry in the same instant.
OVERLOAD_RETRY_AFTER_S = (2, 10)


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    responses: int = 0
    malformed: int = 0
    challenges: int = 0
    forbidden: int = 0
    handler_errors: int = 0
    late_responses: int = 0  # answers dropped because their transaction had ended
    deferred: int = 0  # datagrams that waited in the inbox for a later turn of the loop
    shed: int = 0  # new requests dropped unread after SHED_AFTER_MS in the inbox
    overload_rejected: int = 0  # new requests answered 503 after [sip] overload_reject_ms in the inbox
    inbox_full: int = 0  # datagrams dropped because INBOX_MAX were waiting
    worker_challenges: int = 0  # REGISTER and INVITE challenges the SIP workers sent (in requests and challenges too)
    worker_refreshes: int = 0  # leased REGISTER refreshes the SIP workers answered 200 (in requests too)
    worker_quick: int = 0  # of the workers' challenges and refreshes, those answered from the quick reading
    by_method: dict[str, int] = field(default_factory=dict)


def _log_device_state(ext: str, old: DeviceState, new: DeviceState) -> None:
    # debug, not info: five changes a basic call (the caller's two, the callee's three) were nearly half of a
    # call's info lines and of their cost; the live view, BLF subscriptions and queue events carry the state
    if log.is_enabled_for(logging.DEBUG):  # no arguments built for a dropped line
        log.debug("device.state.changed", ext=ext, old=old.value, new=new.value)


class SipServer:
    """ccpbx's SIP side: transports + endpoint + UAS core + registrar over a ``Store``."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.endpoint = SipEndpoint(TransactionLayer(linger_grain_ms=LINGER_GRAIN_MS, report_terminations=False),
                                    server_header=config.sip.user_agent)
        sip = config.sip
        server_ssl = None
        if sip.tls_certificate is not None and sip.tls_private_key is not None:
            server_ssl = server_context(sip.tls_certificate, sip.tls_private_key)
        self.transports = SipTransports(self._on_datagram, self._on_stream_item, self._on_send_failed,
                                        server_ssl=server_ssl,
                                        client_ssl=client_context(sip.tls_ca, sip.tls_certificate,
                                                                  sip.tls_private_key))
        self.location = LocationService()
        reg = config.registrar
        self.registrar = Registrar(self.location, RegistrarPolicy(reg.min_expires, reg.max_expires,
                                                                  reg.default_expires))
        self.auth = DigestAuthenticator(
            config.sip.realm, algorithms=tuple(str(a) for a in config.auth.algorithms),
            nonce_ttl_ms=config.auth.nonce_ttl * 1000, qop=str(config.auth.qop),
            owned_methods=frozenset({"REGISTER"}))  # a SIP worker's nonces are its own for REGISTER
        self.stats = ServerStats()
        self.dialplan = DialPlan.from_config(config)
        rtp_host = config.sip.host if config.sip.host not in ("0.0.0.0", "::") else "0.0.0.0"
        ports = PortAllocator(config.rtp.port_min, config.rtp.port_max)
        self.media: AnyMedia
        self.media_workers = media_worker_count(config.rtp.workers)
        if self.media_workers:  # media on other cores: RTP, mixing and recording in worker processes
            self.media = MediaWorkers(rtp_host, ports, self.media_workers, on_event=self._on_media_event,
                                      uvloop=os.environ.get("CCPBX_NO_UVLOOP") != "1", on_notice=_media_notice)
        else:
            self.media = MediaServer(rtp_host, ports, on_event=self._on_media_event)
        self.router = CallRouter(self.dialplan, self.location, store, extensions=lambda: self._extension_names,
                                 display_name=lambda ext: self._display_names.get(ext, ""))
        self.calls = CallManager(self, self.media, self.router, cdr=self._on_cdr, config=CallsConfig(
            domain=config.sip.domain or "ccpbx", user_agent=config.sip.user_agent,
            rtp_timeout_s=config.rtp.timeout, recordings_dir=_recordings_dir(config), srtp=str(config.sip.srtp)))
        self.router.manager = self.calls
        self.pickup = Pickup(self.calls, self.dialplan)
        self.router.pickup = self.pickup
        self.apps = wire_destinations(self.router, config)
        self.queues = self.apps.queues  # the ACD: the admin API's QueueControl
        self.control = CallControl(self.calls, self.router)
        self.trunks = self.apps.trunks  # providers and gateways: inbound INVITEs, REGISTER/OPTIONS, routes out
        self.trunks.attach(self, self.calls)
        # device state (BLF, busy-aware groups, call waiting, agent availability) from registrations and legs
        self.devices = DeviceStates(self._registered)
        self.calls.add_leg_listener(self.devices.leg_changed)
        self.devices.add_listener(_log_device_state)
        self.router.device_state = self.devices.state
        self.devices.add_listener(lambda ext, old, new: self.queues.device_changed(ext, new))
        self.bans = Bans(ban_policy(config))  # asked for every packet before it is parsed (_admit_packet)
        # challenges of known phones (REGISTER, INVITE) answered by processes sharing the UDP port ([sip] workers)
        self.sip_workers: SipWorkers | None = None
        wanted = sip_worker_count(config.sip.workers)
        self._sip_worker_count = wanted if steering_available() else 0
        if wanted and not self._sip_worker_count and config.sip.workers != "auto":
            log.warning("sip.workers.unavailable", workers=config.sip.workers,
                        hint="SIP workers need Linux (SO_REUSEPORT with a BPF program): running without")
        self.trunks.on_address = self.bans.add_unlimited  # providers' and gateways' addresses: not rate limited
        self.admission = Admission(self.auth, max_failures=config.auth.max_failures,
                                   failure_window_s=config.auth.nonce_ttl,
                                   trusted_networks=config.auth.trusted_networks)
        self.registration = RegistrationHandler(self, self.admission, self.registrar, self._registrar_changed,
                                                self._registration_answered)
        self.leases = RegisterLeases(self.registrar)  # the bindings the SIP workers may refresh
        self.call_handler = CallHandler(self, self.admission, self.calls, pickup=self.pickup)
        self.messages = MessageRelay(
            self, self.admission, domain=config.sip.domain or "ccpbx",
            reachable=lambda ext: [(t.uri, t.destination) for t in self.router.reachable(ext)],
            exists=lambda ext: ext in self._extension_names)
        # SUBSCRIBE/NOTIFY (RFC 6665) with the `dialog` package (RFC 4235) for busy lamps
        self.notifier = Notifier(self, user_agent=config.sip.user_agent)
        self.subscriptions = SubscriptionHandler(self, self.admission, self.notifier,
                                                 exists=lambda ext: ext in self._extension_names,
                                                 reload=self._load_extension_names)
        self.dialog_events = DialogEventPackage(self.devices, config.sip.domain or "ccpbx",
                                                functools.partial(self.subscriptions.resource_changed, "dialog"))
        self.calls.add_leg_listener(self.dialog_events.leg_changed)
        self.notifier.register(self.dialog_events)
        # voicemail's message-waiting lamps (RFC 3842): subscribed phones, and unsolicited NOTIFYs if configured
        domain = config.sip.domain or "ccpbx"
        self.voicemail = self.apps.voicemail
        def counts(box: str) -> tuple[int, int]:
            return self.voicemail.counts.get(box, (0, 0))

        self.notifier.register(MessageSummaryPackage(counts, domain))
        self.unsolicited_mwi = UnsolicitedMwi(
            self, counts, domain, lambda ext: [(t.uri, t.destination) for t in self.router.reachable(ext)])
        self.voicemail.on_change(lambda box: self.subscriptions.resource_changed("message-summary", box))
        if config.voicemail.unsolicited_mwi:
            self.voicemail.on_change(self.unsolicited_mwi.changed)
        # the handler chain, in order: each request, response and failure goes to the first that takes it
        self.handlers: list[SipHandler] = [self.registration, self.subscriptions, self.trunks, self.call_handler,
                                           self.messages, self.unsolicited_mwi]
        self.calls.converse = self.router.converse
        self.calls.transfer_handler = self.router.transfer_call
        self.calls.target_resolver = self.router.dial_targets
        # the CDR writer's inbox: a deque and a future that wakes the writer when it waits on an empty one (an
        # asyncio.Queue costs four Python calls a put and as many a get, three times a call)
        self._cdr_items: collections.deque[tuple[str, CallRecord | Callable[[], CallRecord], bool] | None] = \
            collections.deque()
        self._cdr_wake: asyncio.Future[None] | None = None
        self._cdr_task: asyncio.Task[None] | None = None
        self._extension_names: set[str] = set()
        self._display_names: dict[str, str] = {}
        self._local_ips: ExpiringCache[str, str] = ExpiringCache(LOCAL_IP_CACHE_S, LOCAL_IP_CACHE_ENTRIES)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer = DeadlineTimer(self._on_timer)
        # how late the loop runs what is due, the collector's pauses (/metrics); probes less often at rest (no SIP
        # message for a second): an idle process's wake-up costs ~0.1 ms of CPU
        self.loop_watch = LoopWatch(activity=self._activity)
        self.gc_pacer = GcPacer()  # young collections on time too: started by run_server with the tuned collector
        self._tasks: set[asyncio.Task[None]] = set()
        self._bans_saving = False  # a _save_bans task is pending
        self._credentials: ExpiringCache[str, Extension | None] = ExpiringCache(CREDENTIAL_CACHE_S,
                                                                               CREDENTIAL_CACHE_ENTRIES)
        self._dirty: dict[tuple[str, str], Binding | None] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_now = asyncio.Event()  # a REGISTER's answer waits for the flush: write now (a group commit)
        self._flush_due = asyncio.Event()  # a registration change waits to be written: within FLUSH_INTERVAL_S
        self._durable_callbacks: list[Callable[[], None]] = []  # REGISTER answers waiting for their commit
        self.listening: list[ListenAddress] = []
        # datagrams waiting for a later turn of the loop (arrival ms, bytes, source): urgent ones, new requests
        # answering our challenge, the other new requests
        self._urgent: deque[tuple[int, bytes, Destination]] = deque()
        self._answering: deque[tuple[int, bytes, Destination]] = deque()
        self._new_work: deque[tuple[int, bytes, Destination]] = deque()
        self._turn_started: float | None = None  # perf_counter when this turn's first datagram was taken
        self._drain_scheduled = False
        # set while a new request that waited past [sip] overload_reject_ms goes through the endpoint: the UAS
        # core answers it 503 (the endpoint still parses it and keeps its transaction, so a retransmission gets
        # the same 503 and the ACK is absorbed)
        self._refusing = False
        self._backlog_since: int | None = None  # loop ms since when the inbox has not been empty
        self._reject_after_ms = config.sip.overload_reject_ms or None
        self._emergency = config.outbound.emergency

    # ---- lifecycle ----------------------------------------------------------------------------------------
    async def start(self, host: str | None = None, port: int | None = None) -> list[ListenAddress]:
        self._loop = asyncio.get_running_loop()
        now = time.time()
        for binding in await self.store.load_bindings():
            if binding.expires_at > now:
                self.location.put(binding)
                # it authenticated to register: its requests are not rate limited after our restart either
                self.bans.succeeded((binding.transport, binding.source_host, binding.source_port), self._now())
        host = host or self.config.sip.host
        port = self.config.sip.port if port is None else port
        transports = tuple(str(t) for t in self.config.sip.transports)
        hosts = [host]
        if self.config.sip.ipv6 and host == "0.0.0.0":
            hosts.append("::")
        for h in hosts:
            port = await self._listen(h, port, transports)
        self.listening = list(self.transports.listening)
        await self._load_extension_names()
        self.devices.seed(self._extension_names | {b.aor for b in self.location})
        closed = await close_incomplete(self.store, time.time())
        if closed:
            log.warning("cdr.incomplete.closed", count=closed, hint="calls in progress when the server last stopped")
        await self.media.start()
        self._cdr_task = asyncio.create_task(self._write_cdrs())
        await self.voicemail.start(self.store, lambda: self._extension_names)
        saved = await self.store.get_meta(AGENT_LOGINS_KEY)
        try:
            logins = json.loads(saved) if saved else {}
        except ValueError:
            logins = {}
        await self.queues.start(sink=self._write_queue_log, prompts=self.apps.flows.source,
                                devices=self.devices.state, logins=logins if isinstance(logins, dict) else {},
                                save_logins=lambda joined: self.store.set_meta(AGENT_LOGINS_KEY, json.dumps(joined)))
        await self._restore_bans()
        await self._start_sip_workers()
        await self.trunks.start()
        self._housekeeping = asyncio.create_task(self._housekeep())
        self._flusher = asyncio.create_task(self._flush_loop())
        self.loop_watch.start()
        log.info("sip.server.started", listening=[f"{a.transport}:{a.host}:{a.port}" for a in self.listening],
                 bindings=len(self.location), media_workers=self.media_workers,
                 sip_workers=len(self.sip_workers.workers) if self.sip_workers is not None else 0)
        return self.listening

    async def _start_sip_workers(self) -> None:
        """``[sip] workers`` processes on the UDP addresses listened on; without them (they did not start), the
        requests steered to them fall back to this process (the kernel's own choice among the sockets left)."""
        udp = [(a.host, a.port) for a in self.listening if a.transport == "udp"]
        if not self._sip_worker_count or not udp:
            return
        auth = self.auth
        setup = WorkerSetup(realm=auth.realm, algorithms=auth.algorithms, qop=auth.qop,
                            nonce_ttl_ms=auth.nonce_ttl_ms, secret=auth.secret, opaque=auth.opaque,
                            server_header=self.config.sip.user_agent,
                            trusted_networks=tuple(str(n) for n in self.config.auth.trusted_networks),
                            known_ms=self.bans.policy.known_ms, sockets=len(udp))
        workers = SipWorkers(self._sip_worker_count, udp, setup, on_datagram=self._from_sip_worker,
                             on_counts=self._sip_worker_counts,
                             known=lambda: self.bans.known_endpoints(self._now()),
                             bans=lambda: [(b.ip, b.until) for b in self.bans.list(self._now())],
                             leases=lambda: list(self.leases.leases.values()), on_refreshed=self._worker_refreshed,
                             on_notice=_sip_worker_notice, uvloop=os.environ.get("CCPBX_NO_UVLOOP") != "1")
        try:
            await workers.start()
        except OSError as exc:
            log.error("sip.workers.start_failed", error=str(exc), hint="REGISTERs are handled here")
            await workers.stop()
            return
        self.sip_workers = workers

    def _from_sip_worker(self, data: bytes, source: Destination, read_at: int, vouched: str | None) -> None:
        """A datagram a SIP worker read at ``read_at`` and passed on: what waited past SHED_AFTER_MS on the way
        is dropped as the inbox would drop it (its sender has retransmitted meanwhile). ``vouched``: the
        worker's own nonce it carries, whose count the worker checked and kept (accepted here from now on)."""
        now = self._now()
        if now - read_at > SHED_AFTER_MS:
            self.stats.shed += 1
            return
        if vouched is not None:
            self.auth.vouch(vouched, now)
        self._on_datagram(data, source, read_at, now)

    def _sip_worker_counts(self, pid: int, counts: Counts) -> None:
        """A worker's second: challenges it sent (counted as requests here), datagrams it passed on (counted
        when handled here), dropped (banned senders), shed (not passed on: this process was behind), refreshes
        answered (counted as each is applied: :meth:`_worker_refreshed`) and ACKs of its 407s (logged)."""
        stats = self.stats
        stats.shed += counts.shed
        challenged = counts.challenged + counts.invites_challenged
        stats.requests += challenged  # not the ACKs of the 407s: absorbed by a transaction here, not counted either
        stats.challenges += challenged
        stats.worker_challenges += challenged
        stats.worker_quick += counts.quick
        by_method = stats.by_method
        for method, count in (("REGISTER", counts.challenged), ("INVITE", counts.invites_challenged)):
            if count:
                by_method[method] = by_method.get(method, 0) + count
        self.bans.dropped_banned += counts.dropped
        log.info("sip.worker.counts", pid=pid, **counts._asdict())

    def _worker_refreshed(self, aor: str, key: str, call_id: str, cseq: int, expires_at: float,
                          source: Destination) -> None:
        """A SIP worker answered a leased refresh 200: the binding's new expiry, stored at the next commit."""
        binding = self.leases.apply(self.location, aor, key, call_id, cseq, expires_at, source)
        if binding is None:  # removed or replaced meanwhile: the phone's next refresh comes here
            self._unlease(aor)
            log.info("sip.worker.refresh_unmatched", aor=aor, source=f"{source[1]}:{source[2]}")
            return
        stats = self.stats
        stats.requests += 1
        stats.by_method["REGISTER"] = stats.by_method.get("REGISTER", 0) + 1
        stats.worker_refreshes += 1
        self.registration.registered += 1
        self._binding_changed(binding, True)
        now = self._now()
        self.bans.succeeded(source, now)
        if self.sip_workers is not None:
            self.sip_workers.authenticated(source, now)
        log.info("sip.register.ok", aor=aor, contacts=1, source=f"{source[1]}:{source[2]}", via="worker")

    def _registration_answered(self, request: Request, source: Destination, aor: str,
                               outcome: RegisterResult) -> None:
        """A REGISTER answered 200 here: lease its binding to the SIP workers, or end the lease it had."""
        workers = self.sip_workers
        if workers is None:
            return
        found, extension = self._credentials.lookup(aor, time.monotonic())
        lease = self.leases.offer(request, source, aor, outcome.bindings,
                                  self.ha1s(extension) if found else None)
        if lease is not None:
            workers.lease(lease)
        else:
            workers.unlease([aor])

    def _unlease(self, aor: str) -> None:
        if self.leases.revoke(aor) and self.sip_workers is not None:
            self.sip_workers.unlease([aor])

    def _registrar_changed(self, binding: Binding, saved: bool) -> None:
        """A REGISTER handled here changed ``binding``: the address-of-record's lease ends until it is answered
        (and leased again)."""
        self._unlease(binding.aor)
        self._binding_changed(binding, saved)

    async def _listen(self, host: str, port: int, transports: tuple[str, ...]) -> int:
        # Port 0 asks the OS for a UDP port; TCP then wants the same number, which may be taken: retry.
        for attempt in range(20):
            try:
                return await self.transports.listen(host, port, transports, tls_port=self.config.sip.tls_port,
                                                    udp_workers=self._sip_worker_count)
            except SteeringUnavailableError as exc:  # an old kernel: no SIP workers, the port as always
                log.warning("sip.workers.unavailable", workers=self._sip_worker_count, error=str(exc))
                self._sip_worker_count = 0  # (listen closed the socket it could not steer; nothing else is open)
            except OSError:
                if port != 0 or attempt == 19:
                    raise
                await self.transports.close()
        raise OSError("no free port")

    async def _write_queue_log(self, records: list[tuple[float, QueueLog]]) -> None:
        """The ACD's log records, committed before the ACD acts on them."""
        await self.store.append_queue_log([QueueLogRow.from_record(r, when) for when, r in records])

    async def stop(self) -> None:
        if self.sip_workers is not None:
            await self.sip_workers.stop()  # their REGISTERs come here again (the kernel's fallback)
            self.sip_workers = None
        await self.trunks.stop()
        await self.queues.stop()
        await self.voicemail.stop()
        await self.calls.stop()
        self.subscriptions.stop()
        self._pump()
        await asyncio.sleep(0.05)  # let the BYEs/CANCELs leave before the sockets close
        await self.media.stop()
        if self._cdr_task is not None:
            self._put_cdr(None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._cdr_task, timeout=5.0)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            try:
                await self._housekeeping
            except asyncio.CancelledError:
                pass
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        await self._flush()
        await self._save_bans()
        self._timer.cancel()
        await self.transports.close()
        self.loop_watch.stop()
        self.gc_pacer.stop()
        watch = self.loop_watch
        log.info("sip.server.stopped", requests=self.stats.requests, malformed=self.stats.malformed,
                 loop_lag_p99_within_ms=round(watch.lag_quantile_bound(0.99) * 1000, 1),
                 loop_lag_max_ms=round(watch.max_lag_s * 1000, 1), loop_stalls=watch.stalls,
                 gc_pause_s=round(watch.gc_pauses.total_s, 3), gc_paced=list(self.gc_pacer.paced))

    async def _housekeep(self) -> None:
        last_sweep = last_poll = time.time()
        data_version = await self._data_version()
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = time.time()
            if now - last_poll >= DATA_VERSION_POLL_S:
                last_poll = now
                version = await self._data_version()
                if version != data_version:  # another process wrote the database: what we cached may be stale
                    data_version = version
                    self._credentials.clear()
                    if self.leases.revoke_all() and self.sip_workers is not None:
                        self.sip_workers.unlease(None)  # their users' passwords may have changed
                    self.router.features_cache.clear()
                    last_sweep = 0.0  # reload the extension names now, not at the next sweep
            if now - last_sweep >= EXPIRY_SWEEP_S:
                last_sweep = now
                for binding in self.location.expire(now):
                    self._registrar_changed(binding, False)  # its lease ends, it is deleted, its lamp goes dark
                    log.info("sip.registration.expired", aor=binding.aor, contact=binding.contact)
                self.expire(self._now(), now)
                self._log_ban_events()
                before = set(self._extension_names)
                await self._load_extension_names()
                removed = before - self._extension_names
                if removed:  # `ccpbx ext remove`: its lamps go dark, its watchers are told (noresource)
                    self.subscriptions.resources_gone("dialog", removed)
                    for ext in removed:
                        self.devices.registration_changed(ext)
                    self._pump()

    async def _data_version(self) -> int | None:
        try:
            return await self.store.data_version()
        except Exception:  # a store that cannot answer: caches then live out their time
            log.exception("store.data_version.failed")
            return None

    def expire(self, now_ms: int, now_s: float) -> None:
        """Drop what has expired from every table that is not swept by its own timer (the transaction layer
        and the subscriptions are): nonce counts and failure windows, the credential, feature and address
        caches. Every one also has a hard cap (see :meth:`table_sizes`)."""
        self.admission.purge(now_ms, now_s)
        self.bans.purge(now_ms)
        mono = time.monotonic()
        self._credentials.purge(mono)
        self._local_ips.purge(mono)
        self.router.features_cache.purge(mono)

    def table_sizes(self) -> dict[str, int]:
        """How many entries each in-memory table holds now: the soak test and the metrics read these."""
        layer = self.endpoint.transactions
        calls = self.calls
        return {
            "transactions": len(layer), "transaction_timers": layer.heap_entries,
            "ack_waiters": layer.ack_waiter_entries, "calls": len(calls.calls), "dialogs": len(calls.by_dialog),
            "client_legs": len(calls.by_client), "invite_legs": len(calls.by_invite),
            "awaiting_ack": len(calls.awaiting_ack), "outbound_call_ids": len(calls.outbound_call_ids),
            "nonce_counts": self.auth.nonce_count_entries, "auth_failure_windows": len(self.admission.failures.windows),
            "credentials_cache": len(self._credentials), "features_cache": len(self.router.features_cache),
            "local_ip_cache": len(self._local_ips), "bindings": len(self.location),
            **self.notifier.table_sizes, **{f"bans_{k}": v for k, v in self.bans.sizes().items()},
            "tasks": len(self._tasks), "inbox": self._waiting(),
        }

    def evictions(self) -> dict[str, int]:
        """Entries each capped table dropped before their time (the caps at work), since the start."""
        layer = self.endpoint.transactions
        return {
            "transactions": layer.evicted, "transactions_refused": layer.refused,
            "transactions_abandoned": layer.abandoned, "calls_refused": self.calls.stats.refused_over_cap,
            "nonce_counts": self.auth.evicted, "credentials_cache": self._credentials.evicted,
            "features_cache": self.router.features_cache.evicted, "local_ip_cache": self._local_ips.evicted,
            "subscriptions": self.notifier.evicted, "auth_failure_windows": self.admission.failures.evicted,
            "bans": self.bans.evicted, "inbox_shed": self.stats.shed, "inbox_full": self.stats.inbox_full,
            "overload_rejected": self.stats.overload_rejected,
        }

    async def _load_extension_names(self) -> None:
        try:
            extensions = await self.store.list_extensions()
        except Exception:
            log.exception("store.extensions.load_failed")
            return
        self._extension_names = {e.ext for e in extensions}
        self._display_names = {e.ext: e.name for e in extensions if e.name}

    # ---- CDRs: written in order by one task, so a slow disk never holds up a call ------------------------------
    def _on_cdr(self, call_id: str, record: CallRecord | Callable[[], CallRecord], final: bool) -> None:
        """A call's record (:data:`~ccpbx.pbx.calls.CdrSink`): the record, or what builds its newest state."""
        self._put_cdr((call_id, record, final))

    def _put_cdr(self, item: tuple[str, CallRecord | Callable[[], CallRecord], bool] | None) -> None:
        self._cdr_items.append(item)
        wake = self._cdr_wake
        if wake is not None:
            self._cdr_wake = None
            if not wake.done():
                wake.set_result(None)

    async def _next_cdr(self) -> tuple[str, CallRecord | Callable[[], CallRecord], bool] | None:
        items = self._cdr_items
        while not items:
            self._cdr_wake = wake = asyncio.get_running_loop().create_future()
            try:
                await wake
            finally:
                self._cdr_wake = None
        return items.popleft()

    async def _write_cdrs(self) -> None:
        """Write call records in batches: whatever queued while the last batch was written goes in one
        transaction (at most ``CDR_BATCH_MAX`` calls), only the newest state of each call (a final record is not
        replaced by a later one that is not), so the store keeps up with hundreds of calls a second. A record
        given as what builds it is built here, once per batch."""
        loop = asyncio.get_running_loop()
        last_write = -CDR_BATCH_INTERVAL_S
        stopping = False
        while not stopping:
            item = await self._next_cdr()
            wait = last_write + CDR_BATCH_INTERVAL_S - loop.time()
            if wait > 0 and item is not None:
                await asyncio.sleep(wait)  # group commit: what queues meanwhile joins this batch
            last_write = loop.time()
            batch, stopping = self._cdr_batch(item)
            del item  # nothing of a written call stays referenced here while the next is awaited
            if batch:
                await self._write_cdr_batch(batch)  # empties it once the rows are built

    def _cdr_batch(self, item: tuple[str, CallRecord | Callable[[], CallRecord], bool] | None
                   ) -> tuple[dict[str, tuple[CallRecord | Callable[[], CallRecord], bool]], bool]:
        """``item`` and what queued after it, up to ``CDR_BATCH_MAX`` calls: the newest state of each call, and
        whether the end of the queue (None) came."""
        stopping = False
        batch: dict[str, tuple[CallRecord | Callable[[], CallRecord], bool]] = {}
        while True:
            if item is None:
                stopping = True
            else:
                call_id, record, final = item
                held = batch.get(call_id)
                if final or held is None or not held[1]:
                    batch[call_id] = (record, final)
            if not self._cdr_items or len(batch) >= CDR_BATCH_MAX:
                return batch, stopping  # bounded: converting a huge backlog at once would hold the loop (and SIP)
            item = self._cdr_items.popleft()

    async def _write_cdr_batch(self, batch: dict[str, tuple[CallRecord | Callable[[], CallRecord], bool]]) -> None:
        rows: list[CdrRow] = []
        for call_id, (record, _) in batch.items():
            try:
                rows.append((record if isinstance(record, CallRecord) else record()).to_row())
            except Exception:  # one call's bad data (say, in call.data) must not cost the others theirs
                log.exception("cdr.build_failed", call=call_id)
        batch.clear()  # the calls themselves are not needed any more, only their rows
        if not rows:
            return
        try:
            await self.store.upsert_cdrs(rows)
        except Exception:
            log.exception("cdr.write_failed", count=len(rows))

    async def _flush(self) -> None:
        """Write registration changes to SQLite in one transaction per ``FLUSH_BATCH_MAX`` changes (a group
        commit; a backlog goes in several, each building its rows without holding the loop long), then send
        the REGISTER answers waiting for them (:meth:`when_durable`)."""
        callbacks, self._durable_callbacks = self._durable_callbacks, []
        dirty, self._dirty = self._dirty, {}
        items = list(dirty.items())
        for start in range(0, len(items), FLUSH_BATCH_MAX):
            chunk = items[start:start + FLUSH_BATCH_MAX]
            try:
                await self.store.write_bindings([b for _, b in chunk if b is not None],
                                                [key for key, b in chunk if b is None])
            except Exception:
                log.exception("store.bindings.flush_failed", count=len(items) - start)
                for k, v in items[start:]:
                    self._dirty.setdefault(k, v)
                break
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one answer failing must not keep the others from going out
                self.stats.handler_errors += 1
                log.exception("sip.handler.failed", kind="when_durable")

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a REGISTER's answer) once the binding changes made so far are committed, so a
        ``kill -9`` cannot lose a registration the phone was told about. Every REGISTER of the same
        ``FLUSH_GROUP_S`` shares one transaction (group commit); the flusher is woken at once."""
        if self._loop is None or self._flusher is None:
            callback()
            return
        self._durable_callbacks.append(callback)
        self._flush_due.set()
        self._flush_now.set()

    def cached_extension(self, user: str) -> tuple[bool, Extension | None]:
        return self._credentials.lookup(user, time.monotonic())

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -FLUSH_GROUP_S
        while True:
            if not self._dirty and not self._durable_callbacks:  # nothing to write: no timer until there is
                self._flush_due.clear()
                await self._flush_due.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), FLUSH_INTERVAL_S)
            wait = last + FLUSH_GROUP_S - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # group commit: the REGISTERs arriving meanwhile join this one
            self._flush_now.clear()
            last = loop.time()
            await self._flush()

    # ---- the edge: inputs, outputs, the one timer ------------------------------------------------------------
    def _activity(self) -> int:
        """A count that moves whenever the server has SIP work (messages handled): the loop watch rests without."""
        stats = self.stats
        return stats.requests + stats.responses

    def _now(self) -> int:
        assert self._loop is not None
        return int(self._loop.time() * 1000)

    def _on_datagram(self, data: bytes, source: Destination, arrived: int | None = None,
                     now: int | None = None) -> None:
        """A datagram read now (or at ``arrived``, by a SIP worker that passed it on; ``now``: the caller's clock
        reading, when it has one)."""
        if now is None:
            now = self._now()
        # responses and CRLF keep-alives are never charged; a banned address is dropped whatever it sends
        if not self._admit_packet(source, now, data[:4] != b"SIP/" and bool(data.strip(b"\r\n\x00 "))):
            return
        if self._urgent or self._answering or self._new_work:  # others wait: this one joins them (in its rank)
            self._defer(now if arrived is None else arrived, data, source)
            return
        started = self._turn_started
        if started is None:
            self._turn_started = time.perf_counter()
            if self._loop is not None:
                self._loop.call_soon(self._end_turn)  # runs once this turn's datagrams are all taken
        elif time.perf_counter() - started > INBOX_TURN_BUDGET_S:
            self._defer(now if arrived is None else arrived, data, source)  # this turn has done its share
            return
        self._receive(data, source, now, late=arrived is not None and now - arrived >= LATE_DATAGRAM_MS)

    def _receive(self, data: bytes, source: Destination, now: int, *, late: bool = False) -> None:
        """Take in one datagram. A ``late`` one waited on its way here (in the inbox, in a worker's link): the
        server is behind, and a new INVITE's 100 Trying goes at once instead of after 200 ms without a ring
        (§17.2.1): a caller that has waited already stops retransmitting as soon as its INVITE is read, before the
        routing that may take as long again."""
        if late:
            layer = self.endpoint.transactions
            delay, layer.trying_delay_ms = layer.trying_delay_ms, 0
            try:
                self.endpoint.receive_datagram(data, source, now)
            finally:
                layer.trying_delay_ms = delay
        else:
            self.endpoint.receive_datagram(data, source, now)
        self._pump()

    def _end_turn(self) -> None:
        self._turn_started = None

    def _defer(self, now: int, data: bytes, source: Destination) -> None:
        if self._waiting() >= INBOX_MAX:
            self.stats.inbox_full += 1
            return
        self.stats.deferred += 1
        if self._backlog_since is None:
            self._backlog_since = now
        if not data.startswith(NEW_WORK_METHODS):
            self._urgent.append((now, data, source))
        elif CREDENTIALS_RE.search(data, 0, MAX_HEAD_SCAN) is not None:
            self._answering.append((now, data, source))
        else:
            self._new_work.append((now, data, source))
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def _drain_inbox(self) -> None:
        """One turn's share of the inbox: what finishes calls in progress first, then new requests answering our
        challenge (the second half of work begun: RFC 6357 §5), then the other new requests, each in order of
        arrival, new requests past SHED_AFTER_MS dropped unread; the rest waits for the next turn. Once the inbox
        has not been empty for OVERLOAD_SUSTAINED_MS (overload, not a pause), a new request that waited past
        ``[sip] overload_reject_ms`` is answered 503 (never one answering a challenge)."""
        self._drain_scheduled = False
        self._tell_overload()
        deadline = time.perf_counter() + INBOX_TURN_BUDGET_S
        urgent, answering, new_work = self._urgent, self._answering, self._new_work
        handled = 0  # at least one datagram a turn, whatever the budget: the inbox always moves
        while urgent and (not handled or time.perf_counter() < deadline):
            _, data, source = urgent.popleft()
            self._receive(data, source, self._now())
            handled += 1
        while answering and not urgent and (not handled or time.perf_counter() < deadline):
            arrived, data, source = answering.popleft()
            now = self._now()
            if now - arrived > SHED_AFTER_MS:
                self._shed()
                continue
            self._receive(data, source, now, late=True)
            handled += 1
        backlog_since = self._backlog_since
        while new_work and not urgent and not answering and (not handled or time.perf_counter() < deadline):
            arrived, data, source = new_work.popleft()
            now = self._now()
            waited = now - arrived
            if waited > SHED_AFTER_MS:
                self._shed()
                continue
            reject_after = self._reject_after_ms
            self._refusing = (reject_after is not None and waited >= reject_after and backlog_since is not None
                              and now - backlog_since >= OVERLOAD_SUSTAINED_MS)
            try:
                self._receive(data, source, now, late=True)
            finally:
                self._refusing = False
            handled += 1
        if not urgent and not answering and not new_work:
            self._backlog_since = None
        elif self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_inbox)
        self._tell_overload()

    def _tell_overload(self) -> None:
        """With ``[sip] overload_reject_ms``, tell the SIP workers when a sustained backlog starts and ends: while
        it lasts they pass new calls' INVITEs on unchallenged, so that this process can refuse them (503) as it
        refuses its own; a challenge from a worker would make every INVITE reaching it one that answers a
        challenge, which is never refused."""
        workers = self.sip_workers
        if workers is None or self._reject_after_ms is None:
            return
        since = self._backlog_since
        workers.overloaded(since is not None and self._now() - since >= OVERLOAD_SUSTAINED_MS)

    def _waiting(self) -> int:
        return len(self._urgent) + len(self._answering) + len(self._new_work)

    def _shed(self) -> None:
        self.stats.shed += 1
        if self.stats.shed % 1000 == 1:  # the first, then one line per thousand
            log.warning("sip.overload.shed", shed=self.stats.shed, waiting=self._waiting(),
                        hint=f"new requests that waited over {SHED_AFTER_MS} ms were dropped; senders retransmit")

    def _on_stream_item(self, item: StreamItem, source: Destination) -> None:
        now = self._now()
        if not self._admit_packet(source, now, not isinstance(item, Response)):
            if self.bans.banned(source[1], now):  # a banned peer's connection is closed, not just ignored
                connection = getattr(self.transports, "connections", {}).get(source)
                if connection is not None and connection.transport is not None:
                    connection.transport.close()
            return
        self.endpoint.receive_stream_item(item, source, now)  # type: ignore[arg-type]
        self._pump()

    def _admit_packet(self, source: Destination, now: int, request: bool) -> bool:
        """Before parsing: drop everything from a banned address, and requests beyond the rate limit."""
        bans = self.bans
        if bans.banned(source[1], now):
            bans.dropped_banned += 1
            return False
        if request and not bans.admit_request(source, now):
            self._log_ban_events()
            return False
        return True

    def _on_send_failed(self, destination: Destination) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._transport_error, destination)

    def _transport_error(self, destination: Destination) -> None:
        self.endpoint.transport_error(destination, self._now())
        self._pump()

    def _on_timer(self) -> None:
        self.endpoint.handle_timer(self._now())
        self._pump()

    def _pump(self) -> None:
        endpoint = self.endpoint
        for _ in range(100):  # handlers may produce more output; bounded so a bug cannot spin forever
            outgoing, events = endpoint.take()
            for data, destination in outgoing:
                self.transports.send(data, destination)
            for event in events:
                try:
                    self._dispatch(event)
                except Exception:  # a task root: log, count, go on serving everyone else
                    self.stats.handler_errors += 1
                    log.exception("sip.handler.failed", kind=type(event).__name__)  # `event` is structlog's own
            if not events:
                break  # nothing was dispatched, so nothing new can have been produced
        if self._loop is not None:  # the one timer at the transactions' next deadline (most turns: unchanged)
            deadline = endpoint.transactions.next_deadline()
            if deadline != self._timer.at:
                self._timer.arm(deadline)

    # ---- the UAS core -------------------------------------------------------------------------------------
    def _dispatch(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self.stats.responses += 1
            for handler in self.handlers:
                if handler.on_response(event.response, event.key):
                    break
        elif isinstance(event, StrayResponseReceived):
            self.call_handler.on_stray_response(event.response)
        elif isinstance(event, RequestReceived):
            self.stats.requests += 1
            method = event.request.method
            if method not in KNOWN_METHODS:
                method = "other"  # any token is a method: counted per name, they would grow without end
            self.stats.by_method[method] = self.stats.by_method.get(method, 0) + 1
            self._on_request(event.request, event.source, event.key)  # type: ignore[arg-type]
        elif isinstance(event, MalformedMessageReceived):
            self.stats.malformed += 1
            log.info("sip.message.malformed", source=f"{event.source[1]}:{event.source[2]}",
                     error=str(event.error), answered=event.answered)
        elif isinstance(event, PrackTimedOut):
            log.info("sip.transaction.prack_timeout", call_id=event.request.call_id)
            self.call_handler.on_prack_timed_out(event.key)
        elif isinstance(event, TransactionTimedOut | TransportFailed | AckTimedOut):
            log.info("sip.transaction.failed", kind=type(event).__name__, method=event.request.method)
            for handler in self.handlers:
                if handler.on_transaction_failed(event.key, event.request):  # type: ignore[arg-type]
                    break

    @staticmethod
    def _answers_challenge(request: Request) -> bool:
        """Credentials: the second half of an exchange we began with a 401/407 (work in progress, RFC 6357 §5:
        refusing it wastes the challenge; refusing the first request keeps new work out instead)."""
        headers = request.headers
        return "authorization" in headers or "proxy-authorization" in headers

    def _emergency_call(self, request: Request) -> bool:
        """An INVITE to an ``[outbound] emergency`` number: served however long it waited."""
        uri = request.uri
        user = uri.user if isinstance(uri, SipUri) else None
        return request.method == "INVITE" and bool(user) and any(p.matches(user) for p in self._emergency)

    def _refuse_for_overload(self, request: Request, now: int) -> None:
        """503 with Retry-After (RFC 3261 §21.5.4, RFC 6357 §5): the sender stops retransmitting and may try
        elsewhere (a trunk's next route) or later, instead of waiting seconds for a call set up too late."""
        self.stats.overload_rejected += 1
        if self.stats.overload_rejected % 1000 == 1:  # the first, then one line per thousand
            log.warning("sip.overload.rejected", rejected=self.stats.overload_rejected, method=request.method,
                        waiting=self._waiting(),
                        hint=f"new requests that waited over {self._reject_after_ms} ms in the inbox were answered "
                             "503 ([sip] overload_reject_ms)")
        retry = random.randint(*OVERLOAD_RETRY_AFTER_S)
        self.endpoint.respond(request, 503, now, headers=[("Retry-After", str(retry))],
                              to_tag=stable_to_tag(request))

    def _on_request(self, request: Request, source: Destination, key: ServerKey | None) -> None:
        """The UAS core (RFC 3261 §8.2): checks every request passes, then the handler chain, then the rest."""
        method = request.method
        now = self._now()
        if method != "ACK":
            if not isinstance(request.uri, SipUri):
                self.endpoint.respond(request, 416, now, to_tag=stable_to_tag(request))
                return
            unsupported = request.header_tokens("require") - SUPPORTED_OPTION_TAGS
            if unsupported and method != "CANCEL":
                self.endpoint.respond(request, 420, now, headers=[("Unsupported", ", ".join(sorted(unsupported)))],
                                      to_tag=stable_to_tag(request))
                return
        if (self._refusing and request.to.tag is None and method in OVERLOAD_REFUSABLE
                and not self._answers_challenge(request) and not self._emergency_call(request)):
            self._refuse_for_overload(request, now)
            return
        for handler in self.handlers:
            if handler.on_request(request, source, key):
                return
        if method == "ACK":
            return
        if request.to.tag is not None or method in ("CANCEL", "PRACK"):  # a PRACK names an early dialog
            if method in IN_DIALOG_METHODS:
                self.endpoint.respond(request, 481, now)  # no INVITE or dialog of ours matches (§12.2.2)
                return
        tag = stable_to_tag(request)  # made here, not for every request: the handlers answer most of them
        if method == "OPTIONS":
            self.endpoint.respond(request, 200, now, headers=self._capabilities(), to_tag=tag)
        elif method == "BYE":
            self.endpoint.respond(request, 481, now, to_tag=tag)
        elif method in KNOWN_METHODS:
            self.endpoint.respond(request, 405, now, headers=[("Allow", ", ".join(ALLOWED_METHODS))], to_tag=tag)
        else:
            self.endpoint.respond(request, 501, now, headers=[("Allow", ", ".join(ALLOWED_METHODS))], to_tag=tag)

    def _capabilities(self) -> list[tuple[str, str]]:
        """RFC 3261 §11.2: what an OPTIONS 200 describes."""
        return [("Allow", ", ".join(ALLOWED_METHODS)), ("Allow-Events", self.notifier.allow_events),
                ("Accept", "application/sdp"),
                ("Accept-Encoding", "identity"), ("Accept-Language", "en"),
                ("Supported", ", ".join(sorted(SUPPORTED_OPTION_TAGS)))]

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.handler_errors += 1
            log.error("sip.task.failed", error=repr(task.exception()))

    async def extension(self, ext: str) -> Extension | None:
        found, cached = self._credentials.lookup(ext, time.monotonic())
        if found:
            return cached
        extension = await self.store.get_extension(ext)
        self._credentials.put(ext, extension, time.monotonic())
        return extension

    # ---- SipServices: what the handlers use (with reply, spawn, extension, ha1s and the SipPort methods) --------
    def admission_decided(self, request: Request, source: Destination, user: str,
                          decision: Admitted | Challenged | Refused) -> None:
        if isinstance(decision, Challenged):
            self.stats.challenges += 1
        elif isinstance(decision, Refused) and decision.status == 403:
            self.stats.forbidden += 1
            key = "aor" if request.method == "REGISTER" else "user"
            log.info(f"sip.{request.method.lower()}.forbidden", **{key: user}, source=source[1],
                     reason=decision.reason or "wrong credentials")
        self._count_for_bans(request, source, user, decision)

    def _count_for_bans(self, request: Request, source: Destination, user: str,
                        decision: Admitted | Challenged | Refused) -> None:
        """Feed the bans: a success frees the endpoint from the rate limit; only wrong credentials count
        (pbx/bans.py says which); the first challenge of a request without credentials never does."""
        now = self._now()
        if isinstance(decision, Admitted):
            if decision.via == "digest":
                self.bans.succeeded(source, now)
                workers = self.sip_workers
                if workers is not None:
                    workers.authenticated(source, now)
                    if request.method == "INVITE" and not self.trunks.may_send_from(source):
                        workers.caller_admitted(source, now)  # its next calls' 407s come from the workers
            return
        cause = decision.cause
        if cause in ("wrong-password", "unknown-user", "locked-out"):
            self._unlease(user)  # its refreshes come here, where the lock-out and the failures are
            if self.sip_workers is not None:
                self.sip_workers.caller_failed(source)  # and its new calls
        if cause in ("wrong-password", "unknown-user"):
            self.bans.failed(source, FailureKind(cause), now, user=user)
        elif cause == "locked-out" and ("authorization" in request.headers
                                        or "proxy-authorization" in request.headers):
            self.bans.failed(source, FailureKind.LOCKED_OUT, now, user=user)
        elif cause in ("nonce-unknown", "nonce-replayed"):
            self.bans.stale_nonce(source, now, user=user)
        else:
            return
        self._log_ban_events()

    def _log_ban_events(self) -> None:
        """Security events, one stable key=value line each at WARNING (fail2ban matches ``ip=<HOST>``)."""
        events = self.bans.events()
        if events:
            now = self._now()
            workers = self.sip_workers
            for event in events:
                _log_ban_event(event, now)
                if workers is not None:
                    if isinstance(event, BanStarted):
                        workers.banned(event.ban.ip, event.ban.until)
                    elif isinstance(event, BanLifted | BanExpired):
                        workers.unbanned(event.ban.ip)
            if not self._bans_saving and any(isinstance(e, BanStarted | BanLifted | BanExpired) for e in events):
                self._bans_saving = True  # one write at a time: the bans in force when it runs
                self.spawn(self._save_bans())

    async def _save_bans(self) -> None:
        """The bans in force, with wall-clock ends, into the store's meta table."""
        self._bans_saving = False
        now, wall = self._now(), time.time()
        bans = sorted(self.bans.list(now), key=lambda b: b.until, reverse=True)[:MAX_SAVED_BANS]
        saved = [{"ip": b.ip, "reason": b.reason, "failures": b.failures,
                  "until": round(wall + b.remaining_ms(now) / 1000, 3)} for b in bans]
        try:
            await self.store.set_meta(BANS_KEY, json.dumps(saved))
        except Exception:  # a full disk must not take the server down; the bans still hold in memory
            log.exception("security.bans.save_failed")

    async def _restore_bans(self) -> None:
        """The bans saved before a restart that have not ended, in force again (logged as ``security.ban``)."""
        try:
            saved = json.loads(await self.store.get_meta(BANS_KEY) or "[]")
            now, wall = self._now(), time.time()
            restored = 0
            for entry in saved if isinstance(saved, list) else []:
                remaining_ms = int((float(entry["until"]) - wall) * 1000)
                if remaining_ms > 0 and self.bans.ban(str(entry["ip"]), str(entry["reason"]), now + remaining_ms,
                                                      now=now, failures=int(entry.get("failures", 0))):
                    restored += 1
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("security.bans.restore_failed", error=str(exc), hint="the saved bans are ignored")
            return
        self._bans_saving = True  # restoring is not a change worth writing back
        self._log_ban_events()
        self._bans_saving = False
        if restored:
            log.info("security.bans.restored", count=restored)

    # ---- the admin API's bans (ccpbx security ...) ----------------------------------------------------------
    def ban_list(self) -> dict[str, object]:
        now = self._now()
        return {"bans": [_ban_json(ban, now) for ban in self.bans.list(now)],
                "dropped_banned": self.bans.dropped_banned,
                "dropped_rate_limited": self.bans.dropped_rate_limited}

    def unban(self, ip: str) -> bool:
        lifted = self.bans.lift(ip) is not None
        self._log_ban_events()
        return lifted

    def ban_address(self, ip: str, seconds: float, reason: str = "manual") -> dict[str, object] | None:
        now = self._now()
        ban = self.bans.ban(ip, reason, now + int(seconds * 1000), now=now)
        self._log_ban_events()
        return None if ban is None else _ban_json(ban, now)

    def _binding_changed(self, binding: Binding, saved: bool) -> None:
        self._dirty[(binding.aor, LocationService.key(binding))] = binding if saved else None
        self._flush_due.set()
        self.devices.registration_changed(binding.aor)
        if saved and self.config.voicemail.unsolicited_mwi:
            # as Asterisk does: a phone that (re-)registers learns its lamp's state now, not at the next message;
            # after this REGISTER's 200 OK has gone out
            asyncio.get_running_loop().call_soon(self.unsolicited_mwi.changed, binding.aor)

    def trunk_statuses(self) -> list[dict[str, object]]:
        """Every trunk as ``GET /api/trunks`` and ``ccpbx trunk list`` show it."""
        return [status.to_json() for status in self.trunks.statuses()]

    def _registered(self, ext: str) -> bool:
        return bool(self.location.lookup(ext, time.time()))

    def ha1s(self, extension: Extension | None) -> Mapping[str, str] | None:
        if extension is None or extension.realm != self.config.sip.realm:
            return None
        return extension.ha1_by_algorithm()

    # ---- the SipPort call control drives ------------------------------------------------------------------------
    def now(self) -> int:
        return self._now()

    def respond(self, request: Request, status: int, *, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                to_tag: str | None = None) -> Response:
        response = self.endpoint.respond(request, status, self._now(), reason=reason, headers=headers, body=body,
                                         content_type=content_type, to_tag=to_tag)
        self._pump()
        return response

    def respond_reliably(self, request: Request, status: int, *, headers: Iterable[tuple[str, str]] = (),
                         body: bytes = b"", content_type: str | None = None, to_tag: str | None = None) -> Response:
        response = self.endpoint.respond_reliably(request, status, self._now(), headers=headers, body=body,
                                                  content_type=content_type, to_tag=to_tag)
        self._pump()
        return response

    def acknowledge_provisional(self, key: ServerKey) -> None:
        self.endpoint.acknowledge_provisional(key, self._now())
        self._pump()

    def send_request(self, request: Request, destination: Destination) -> ClientKey:
        key = self.endpoint.send_request(request, destination, self._now())
        self._pump()
        return key  # type: ignore[return-value]

    def send_stateless(self, message: Request, destination: Destination) -> None:
        self.endpoint.send_stateless(message, destination)
        self._pump()

    def local_address(self, destination: Destination) -> tuple[str, int]:
        """Our SIP address as ``destination`` sees it: for Via, Contact and the SDP of calls."""
        transport, host, _ = destination
        v6 = ":" in host
        chosen = None
        for addr in self.listening:
            if addr.transport == transport and (":" in addr.host) == v6:
                chosen = addr
                break
        if chosen is None:
            chosen = self.listening[0]
        local = chosen.host
        if local in ("0.0.0.0", "::"):
            local = self._local_ip_toward(host)
        return local, chosen.port

    def _local_ip_toward(self, host: str) -> str:
        """The source address the kernel picks for ``host`` (a connected UDP socket sends nothing)."""
        cached = self._local_ips.get(host, time.monotonic())
        if cached is not None:
            return cached
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, 9))
                address = str(probe.getsockname()[0])
        except OSError:
            pass
        self._local_ips.put(host, address, time.monotonic())
        return address

    def _on_media_event(self, event: object) -> None:
        try:
            self.calls.on_media_event(event)  # type: ignore[arg-type]
        except Exception:
            log.exception("media.event.failed", kind=type(event).__name__)
        self._pump()

    def reply(self, request: Request, status: int, *, reason: str | None = None,
              headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> None:
        """SipServices: a response outside any dialog, with a To tag stable across retransmissions.

        An answer that comes after its transaction ended (the store was slow under overload past the 32 s a
        non-INVITE transaction waits, or the capped table evicted it) is dropped and counted: the client has
        given up on it, and its retransmissions were absorbed meanwhile."""
        if not self.endpoint.transactions.has_server(request):
            self.stats.late_responses += 1
            log.info("sip.response.too_late", method=request.method, status=status, call_id=request.call_id)
            return
        self.endpoint.respond(request, status, self._now(), reason=reason, headers=headers,
                              to_tag=stable_to_tag(request))
        self._pump()


AGENT_LOGINS_KEY = "acd.agent_logins"  # meta: the dynamic agents logged in, and to which queues
BANS_KEY = "security.bans"  # meta: the bans in force, so a restart does not let a banned guesser back in
MAX_SAVED_BANS = 10_000  # the longest-running ones are kept when more are in force


def ban_policy(config: Config) -> BanPolicy:
    """``[security]`` as the bans core takes it; trunks' ``allowed_sources`` are not rate limited."""
    sec = config.security
    unlimited = tuple(str(parse_source(source)[0]) for trunk in config.trunk for source in trunk.allowed_sources)
    return BanPolicy(ban_after=sec.ban_after, window_ms=sec.ban_window * 1000, ban_ms=sec.ban_time * 1000,
                     rate_per_s=float(sec.rate_limit), burst=float(sec.rate_burst), allow=sec.allow,
                     unlimited=unlimited, flood_ban_after=sec.flood_ban_after)


def _wall(until_ms: int, now_ms: int) -> str:
    return datetime.fromtimestamp(time.time() + (until_ms - now_ms) / 1000, UTC).isoformat(timespec="seconds")


def _ban_json(ban: Ban, now: int) -> dict[str, object]:
    return {"ip": ban.ip, "reason": ban.reason, "failures": ban.failures, "until": _wall(ban.until, now),
            "remaining": round(ban.remaining_ms(now) / 1000)}


def _log_ban_event(event: BanEvent, now: int) -> None:
    if isinstance(event, AuthFailed):
        security_log.warning("security.auth.failed", ip=event.ip, user=event.user, reason=event.kind.value,
                             failures=event.failures)
    elif isinstance(event, BanStarted):
        ban = event.ban
        security_log.warning("security.ban", ip=ban.ip, reason=ban.reason, failures=ban.failures,
                             until=_wall(ban.until, now), seconds=round(ban.remaining_ms(now) / 1000))
    elif isinstance(event, BanLifted):
        security_log.warning("security.ban.lifted", ip=event.ban.ip)
    elif isinstance(event, BanExpired):
        security_log.warning("security.ban.expired", ip=event.ban.ip)
    elif isinstance(event, RateLimited):
        security_log.warning("security.rate_limited", ip=event.ip, dropped=event.dropped)


def _recordings_dir(config: Config) -> Path:
    data_dir = config.server.data_dir
    return (data_dir if data_dir is not None else Path.cwd()) / "recordings"


# ---- ccpbx serve ----------------------------------------------------------------------------------------------
def _route_source(family: int, probe: str) -> str | None:
    """The source address the kernel picks toward ``probe`` (a documentation address: nothing is sent)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address in ("0.0.0.0", "::") else address


def _interface_addresses() -> list[str]:
    """Every IPv4 address of this machine's interfaces but loopback (Linux: SIOCGIFADDR per interface), then
    global IPv6 addresses (/proc/net/if_inet6)."""
    found: list[str] = []
    try:
        import fcntl
        import struct

        siocgifaddr = 0x8915
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address on it
                address = socket.inet_ntoa(packed[20:24])
                if not address.startswith("127.") and address not in found:
                    found.append(address)
    except (ImportError, OSError):
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) < 6 or fields[5] == "lo" or int(fields[3], 16) != 0:  # scope 0: global
                    continue
                address = str(ipaddress.ip_address(int(fields[0], 16)))
                if address not in found:
                    found.append(address)
    except (OSError, ValueError):
        pass
    return found


def phone_addresses(host: str) -> list[str]:
    """The addresses phones can reach us at, best first: the bind address itself, or for a wildcard the one the
    kernel would use toward the network (the default route's source), then every other interface address;
    loopback only when there is nothing else. (Debian maps the host name to 127.0.1.1, so the name is no help.)"""
    if host not in ("0.0.0.0", "::"):
        return [host]
    addresses: list[str] = []
    primary = _route_source(socket.AF_INET, "192.0.2.1")
    if primary is not None:
        addresses.append(primary)
    for address in _interface_addresses():
        if address not in addresses and (host == "::" or ":" not in address):
            addresses.append(address)
    return addresses or ["127.0.0.1"]


class ServeError(Exception):
    """The server cannot start for a reason the user can fix (the port is taken, no such address); the message
    is one line saying what to do."""


def _listen_problem(config: Config, exc: OSError) -> str:
    host, port = config.sip.host, config.sip.port
    where = f"{host}:{port}"
    cause: BaseException | None = exc
    while cause is not None and getattr(cause, "errno", None) is None:  # uvloop wraps the socket's error
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, socket.gaierror):
        return (f"cannot listen on {where}: {host!r} is not an address or a name this machine can resolve "
                f"({exc.strerror}); pass --host with one of this machine's addresses, or 0.0.0.0 for all")
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the port is already in use (another ccpbx, Asterisk, Kamailio?); "
                f"stop it or pass --sip-port with a free port")
    if exc.errno == errno.EADDRNOTAVAIL:
        mine = ", ".join(phone_addresses("0.0.0.0"))
        return (f"cannot listen on {where}: {host} is not an address of this machine (it has {mine}); "
                f"pass --host with one of those, or 0.0.0.0 for all")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {where}: permission denied (ports below 1024 may need privileges); "
                f"pass --sip-port 5060 or higher")
    return f"cannot listen on {where}: {exc.strerror or exc}"


async def run_server(config: Config, data_dir: Path, *, stop: asyncio.Event | None = None) -> int:
    from ccpbx.pbx.users import ensure_demo_extensions

    data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(data_dir / "ccpbx.sqlite3")
    try:
        demo = await ensure_demo_extensions(store, config.sip.realm)
        stale_realm = [e.ext for e in await store.list_extensions() if e.realm != config.sip.realm]
        if stale_realm:
            log.warning("auth.realm.changed", realm=config.sip.realm, extensions=stale_realm,
                        hint="their passwords were set for another realm; run `ccpbx ext passwd` for each")
        try:
            server = SipServer(config, store)
        except TlsSetupError as exc:
            raise ServeError(str(exc)) from None
        except OSError as exc:  # the media server resolves the host name
            raise ServeError(_listen_problem(config, exc)) from None
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        import tracemalloc

        if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=N: SIGUSR1 logs where the memory went
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, log_memory_top)
        try:
            listening = await server.start()
        except OSError as exc:
            with contextlib.suppress(Exception):  # close whatever did open; the message is what matters
                await server.stop()
            raise ServeError(_listen_problem(config, exc)) from None
        live_view = await start_live_view(config, data_dir, server)
        _print_banner(config, data_dir, listening, demo, server.media_workers,
                      len(server.sip_workers.workers) if server.sip_workers is not None else 0)
        tune_garbage_collector()
        server.gc_pacer.start()
        await stop.wait()
        log.info("ccpbx.stopping")
        await live_view.stop()
        await server.stop()
        return 0
    finally:
        await store.close()


def _print_banner(config: Config, data_dir: Path, listening: list[ListenAddress],
                  demo: list[tuple[str, str]], media_workers: int = 0, sip_workers: int = 0) -> None:
    flush_logs()  # the lines logged so far come first when both outputs go to one place
    out = sys.stdout
    for addr in listening:
        print(f"ccpbx: listening {addr.transport} {addr.host} {addr.port}", file=out)
    first = listening[0] if listening else None
    if first is not None:
        shown, *others = phone_addresses(first.host)
        host = f"[{shown}]" if ":" in shown else shown
        print(f"ccpbx: point your phones at {host}:{first.port} "
              f"({', '.join(sorted({a.transport.upper() for a in listening}))}), "
              f"realm {config.sip.realm!r}, user = extension, password as set", file=out)
        tls = next((a for a in listening if a.transport == "tls"), None)
        if tls is not None:
            print(f"ccpbx: SIP over TLS (sips:) at {host}:{tls.port}", file=out)
        if others:
            print(f"ccpbx: this machine is also reachable at {', '.join(others)}", file=out)
    print(f"ccpbx: data in {data_dir}", file=out)
    print(f"ccpbx: media in {media_workers} worker process{'es' if media_workers != 1 else ''}" if media_workers
          else "ccpbx: media in the server's process", file=out)
    if sip_workers:
        plural = "es" if sip_workers != 1 else ""
        print(f"ccpbx: REGISTER and INVITE challenges, REGISTER refreshes in {sip_workers} SIP worker "
              f"process{plural}", file=out)
    if demo:
        print("ccpbx: demo extensions created (passwords shown this once):", file=out)
        for ext, password in demo:
            print(f"ccpbx:   extension {ext:<8} password {password}", file=out)
    print("ccpbx: ready", file=out)
    out.flush()


def log_memory_top(count: int = 15) -> None:
    """Log the ``count`` allocation sites holding the most memory (``PYTHONTRACEMALLOC=N ccpbx serve``, then
    ``kill -USR1``): where a server's memory went, without stopping it."""
    import tracemalloc

    stats = tracemalloc.take_snapshot().statistics("traceback")
    log.warning("memory.traced", total_mb=round(sum(s.size for s in stats) / 1e6, 1), sites=len(stats))
    for rank, stat in enumerate(stats[:count], 1):
        log.warning("memory.top", rank=rank, mb=round(stat.size / 1e6, 2), blocks=stat.count,
                    where=" <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(stat.traceback)))


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one: each call leg holds two RTP sockets (and the pool
    parks more), so a shell's default of 1,024 ends in "503 No media ports" near 250 calls. Returns the
    (before, after) soft limits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("server.open_files.limit", soft=soft, hard=hard, error=str(exc))
            return soft, soft
        log.info("server.open_files.raised", before=soft, after=wanted)
        return soft, wanted
    return soft, soft


def sip_worker_count(setting: int | str, cores: int | None = None) -> int:
    """``[sip] workers``: a number as given, ``"auto"`` one when this process may use two cores or more (a
    worker answering the challenges leaves the server's core more of each call), none on one core."""
    if setting == "auto":
        return 1 if (usable_cores() if cores is None else cores) >= 2 else 0
    return int(setting)


def media_worker_count(setting: int | str) -> int:
    """``[rtp] workers``: a number as given, ``"auto"`` one per core this process may use (at most
    ``AUTO_MEDIA_WORKERS_MAX``)."""
    if setting == "auto":
        return min(usable_cores(), AUTO_MEDIA_WORKERS_MAX)
    return int(setting)


def _sip_worker_notice(kind: str, fields: dict[str, object]) -> None:
    if kind == "sip.worker.started":
        log.info(kind, **fields)  # type: ignore[arg-type]
    else:
        log.error(kind, **fields)  # type: ignore[arg-type]


def _media_notice(kind: str, fields: dict[str, object]) -> None:
    """What the media workers report: a refused command is a warning, a dead worker an error."""
    level = log.error if kind == "worker.died" else log.warning if kind == "worker.error" else log.info
    level(f"media.{kind}", **fields)


def serve(config: Config, data_dir: Path) -> int:
    """Run the server until SIGINT/SIGTERM; the exit code for ``ccpbx serve``."""
    from ccpbx.pbx.log import configure_logging

    configure_logging(str(config.server.log_level), str(config.server.log_format))
    raise_open_files_limit()
    loop_factory = None
    if os.environ.get("CCPBX_NO_UVLOOP") != "1":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_server(config, data_dir))  # what the last iteration logged: flush_logs at exit
