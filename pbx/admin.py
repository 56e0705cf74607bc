"""The local admin API: a live view of a running server (calls, registrations, devices) and Prometheus metrics.

An aiohttp application bound to a loopback address only (``[admin] host``, checked by the config). Every start
writes a fresh random token to ``<data-dir>/admin.token`` (mode 0600) and the address to ``admin.json``, which
is how ``ccpbx show ...`` finds the server; a clean stop removes both. Every request carries
``Authorization: Bearer <token>`` (compared in constant time); ``/metrics`` may go without it when
``[admin] metrics_public`` is true.

What the API shows comes from a :class:`LiveView`: four methods returning frozen dataclasses, implemented over
the running server by :mod:`ccpbx.pbx.liveview`; device states come from the one device-state tracker
(:mod:`ccpbx.pbx.devicestate`) that busy lamps and busy-aware groups read too.

Endpoints (JSON unless noted): ``GET /api/calls``, ``/api/registrations``, ``/api/devices``, ``/api/status``,
and ``GET /metrics`` (Prometheus text exposition from a private registry whose collector reads the live
values at scrape time). With a :class:`~ccpbx.pbx.queue_api.QueueControl` (the running ACD): ``GET /api/queues``
(its snapshot: per-queue figures and agents) and ``POST /api/agents/{ext}/{login|logout|pause|unpause}`` with an
optional JSON body ``{"queue": ..., "reason": ...}``, answering ``{"ok": true}``, or 400 ``{"error": ...}`` for a
command the ACD refuses; both answer 503 ``{"error": "no queues configured"}`` without one. With a
:class:`BanControl`: ``GET /api/bans`` (``{"bans": [{"ip", "reason", "failures", "until", "remaining"}],
"dropped_banned", "dropped_rate_limited"}``), ``POST /api/bans`` ``{"ip": ..., "seconds": 600, "reason": ...}``
and ``DELETE /api/bans/{ip}`` (404 when it was not banned).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from ccpbx.pbx.devicestate import DeviceState
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.queue_api import AgentAction, AgentCommandError, QueueControl

__all__ = [
    "STATE_FILE_NAME",
    "TOKEN_FILE_NAME",
    "AdminEndpoint",
    "AdminServer",
    "AdminStateError",
    "BanControl",
    "CallView",
    "DeviceState",
    "DeviceView",
    "LegView",
    "LiveView",
    "MetricsSnapshot",
    "RateWindow",
    "RegistrationView",
    "RtpView",
    "new_token",
    "read_state",
    "remove_state",
    "write_state",
]

log = get_logger("ccpbx.admin")

TOKEN_FILE_NAME = "admin.token"
STATE_FILE_NAME = "admin.json"
TOKEN_BYTES = 32
RATE_WINDOW_S = 60.0
NO_QUEUES = "no queues configured"


# ---- what the API shows: plain typed data -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RtpView:
    """A leg's RTP counters from the media engine (RFC 3550 §6.4.1 interarrival jitter)."""

    packets_received: int
    packets_sent: int
    lost: int
    jitter_ms: float | None


@dataclass(frozen=True, slots=True)
class LegView:
    """One leg (one SIP dialog) of a call; ``state`` is the leg's dialog state (``calling`` ... ``confirmed``).

    ``peer`` is the caller's extension for the inbound leg, the routing label (``extension:1002``) for an
    outbound one; ``held`` is true while the phone on this leg holds the call (RFC 3264 §8.4).
    """

    role: str
    inbound: bool
    peer: str
    state: str
    sip_call_id: str
    codec: str | None
    held: bool
    rtp: RtpView | None

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "inbound": self.inbound, "peer": self.peer, "state": self.state,
                "sip_call_id": self.sip_call_id, "codec": self.codec, "held": self.held,
                "rtp": None if self.rtp is None else {
                    "packets_received": self.rtp.packets_received, "packets_sent": self.rtp.packets_sent,
                    "lost": self.rtp.lost, "jitter_ms": self.rtp.jitter_ms}}


class CallState(enum.StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"


@dataclass(frozen=True, slots=True)
class CallView:
    """An active call; times are wall-clock Unix seconds, ``duration_s`` counts from the start."""

    id: str
    caller: str
    caller_name: str
    dialled: str
    destination: str
    state: CallState
    started: float
    answered: float | None
    duration_s: float
    legs: tuple[LegView, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "caller": self.caller, "caller_name": self.caller_name, "dialled": self.dialled,
                "destination": self.destination, "state": self.state.value, "started": _iso(self.started),
                "answered": None if self.answered is None else _iso(self.answered),
                "duration": round(self.duration_s, 3), "legs": [leg.to_json() for leg in self.legs]}


@dataclass(frozen=True, slots=True)
class RegistrationView:
    """A live binding (RFC 3261 §10.3): ``source`` is where its REGISTER came from, ``host:port``."""

    aor: str
    contact: str
    transport: str
    source: str
    expires_in: int
    user_agent: str

    def to_json(self) -> dict[str, Any]:
        return {"aor": self.aor, "contact": self.contact, "transport": self.transport, "source": self.source,
                "expires_in": self.expires_in, "user_agent": self.user_agent}


@dataclass(frozen=True, slots=True)
class DeviceView:
    extension: str
    state: DeviceState
    calls: int

    def to_json(self) -> dict[str, Any]:
        return {"extension": self.extension, "state": self.state.value, "calls": self.calls}


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Counters and gauges read at scrape time.

    ``rtp_packets_lost`` is cumulative since the start (channels that closed keep counting with their last
    value seen); the jitter figures aggregate the channels open now: the largest and the mean, in seconds.
    ``tick_buckets`` are cumulative ``(upper bound in seconds, ticks)`` pairs ending with ``inf``, and so are
    ``loop_lag_buckets`` (probes) and ``gc_pause_buckets`` (collections).
    """

    uptime_s: float
    calls_active: int
    calls_total: int
    calls_answered: int
    calls_failed: int
    calls_per_second: float
    registrations: int
    sip_requests: tuple[tuple[str, int], ...]
    rtp_channels: int
    rtp_packets_lost: int
    rtp_jitter_max_s: float
    rtp_jitter_mean_s: float
    media_ticks: int
    media_late_ticks: int
    media_skipped_ticks: int
    tick_buckets: tuple[tuple[float, int], ...]
    tick_seconds_sum: float
    # the event loop (:class:`~ccpbx.pbx.loopwatch.LoopWatch`): probes by lateness, collections by length
    loop_lag_buckets: tuple[tuple[float, int], ...] = ()
    loop_lag_seconds_sum: float = 0.0
    loop_stalls: int = 0
    gc_pause_buckets: tuple[tuple[float, int], ...] = ()
    gc_pause_seconds_sum: float = 0.0
    # the collector's pacer (:class:`~ccpbx.pbx.gcpace.GcPacer`): collections it ran, young and middle
    gc_paced: tuple[int, int] = (0, 0)
    gc_pacer_running: bool = False


class BanControl(Protocol):
    """The running server's bans (``ccpbx security ...``): GET, POST and DELETE ``/api/bans``."""

    def ban_list(self) -> Mapping[str, object]: ...

    def unban(self, ip: str) -> bool: ...

    def ban_address(self, ip: str, seconds: float, reason: str = "manual") -> Mapping[str, object] | None: ...


class LiveView(Protocol):
    """What the admin API reads; the composition root passes one in (see :mod:`ccpbx.pbx.liveview`)."""

    def calls(self) -> Sequence[CallView]: ...

    def registrations(self) -> Sequence[RegistrationView]: ...

    def devices(self) -> Sequence[DeviceView]: ...

    def metrics(self) -> MetricsSnapshot: ...


# ---- calls per second over a sliding window (pure) ------------------------------------------------------

class RateWindow:
    """The rate of a counter over the last ``window_s`` seconds, from samples ``(now_s, total)``.

    Sample it regularly (the live view does, once a second); the rate is the counter's increase between the
    oldest sample still inside the window and the newest, divided by the time between them.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, now_s: float, total: int) -> None:
        samples = self._samples
        samples.append((now_s, total))
        while len(samples) > 2 and samples[1][0] <= now_s - self.window_s:
            samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


# ---- Prometheus: a private registry whose collector reads the live view ---------------------------------

class _LiveCollector:
    """Reads :meth:`LiveView.metrics` at each scrape (no global registry, no state of its own)."""

    def __init__(self, live: LiveView) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        m = self.live.metrics()
        yield GaugeMetricFamily("ccpbx_uptime_seconds", "Seconds since the server started.", value=m.uptime_s)
        yield GaugeMetricFamily("ccpbx_calls_active", "Calls in progress.", value=m.calls_active)
        yield CounterMetricFamily("ccpbx_calls", "Calls started.", value=m.calls_total)
        ended = CounterMetricFamily("ccpbx_calls_ended", "Calls ended, by outcome: answered or failed "
                                    "(busy, no answer, rejected, cancelled).", labels=["outcome"])
        ended.add_metric(["answered"], m.calls_answered)
        ended.add_metric(["failed"], m.calls_failed)
        yield ended
        yield GaugeMetricFamily("ccpbx_calls_per_second", f"Calls started per second over the last "
                                f"{RATE_WINDOW_S:.0f} s.", value=m.calls_per_second)
        yield GaugeMetricFamily("ccpbx_registrations", "Live registered contacts.", value=m.registrations)
        requests = CounterMetricFamily("ccpbx_sip_requests", "SIP requests received, by method.",
                                       labels=["method"])
        for method, count in m.sip_requests:
            requests.add_metric([method], count)
        yield requests
        yield GaugeMetricFamily("ccpbx_rtp_channels", "Open RTP channels (one per call leg).",
                                value=m.rtp_channels)
        yield CounterMetricFamily("ccpbx_rtp_packets_lost", "RTP packets lost (RFC 3550 cumulative loss), "
                                  "summed over every channel since the start.", value=m.rtp_packets_lost)
        jitter = GaugeMetricFamily("ccpbx_rtp_jitter_seconds", "Interarrival jitter (RFC 3550 §6.4.1) of the "
                                   "open channels: the largest and the mean.", labels=["aggregate"])
        jitter.add_metric(["max"], m.rtp_jitter_max_s)
        jitter.add_metric(["mean"], m.rtp_jitter_mean_s)
        yield jitter
        yield _histogram("ccpbx_media_tick_seconds",
                         "Work of one 20 ms media tick: the engine's tick and sending its packets.",
                         m.tick_buckets, m.tick_seconds_sum)
        yield CounterMetricFamily("ccpbx_media_ticks", "Media ticks run.", value=m.media_ticks)
        yield CounterMetricFamily("ccpbx_media_late_ticks", "Media ticks that started late.",
                                  value=m.media_late_ticks)
        yield CounterMetricFamily("ccpbx_media_skipped_ticks", "Media ticks skipped after a stall.",
                                  value=m.media_skipped_ticks)
        yield _histogram("ccpbx_loop_lag_seconds",
                         "How late the server's event loop ran a probe due every 20 ms: the wait a SIP answer or "
                         "timer due then had on top of its own work.", m.loop_lag_buckets, m.loop_lag_seconds_sum)
        yield CounterMetricFamily("ccpbx_loop_stalls", "Probes the event loop ran 250 ms or more late (each "
                                  "logged as loop.stalled, with the garbage collector's share).", value=m.loop_stalls)
        yield _histogram("ccpbx_gc_pause_seconds", "Collections of Python's cyclic garbage collector, by length: "
                         "the event loop stands still meanwhile.", m.gc_pause_buckets, m.gc_pause_seconds_sum)
        paced = CounterMetricFamily("ccpbx_gc_paced_collections", "Collections the server ran on time because "
                                    "the collector's allocation count had not come to them.", labels=["generation"])
        for generation, count in zip(("young", "middle"), m.gc_paced, strict=True):
            paced.add_metric([generation], count)
        yield paced
        yield GaugeMetricFamily("ccpbx_gc_pacer_running", "1 while young collections are also paced by time.",
                                value=1 if m.gc_pacer_running else 0)


def _histogram(name: str, documentation: str, buckets: tuple[tuple[float, int], ...],
               sum_value: float) -> HistogramMetricFamily:
    """A histogram from cumulative ``(upper bound, count)`` pairs ending with ``inf``; none yet: one empty
    ``+Inf`` bucket."""
    return HistogramMetricFamily(
        name, documentation, sum_value=sum_value,
        buckets=[("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in buckets]
        or [("+Inf", 0)])


class _QueueCollector:
    """Per-queue gauges from :meth:`QueueControl.snapshot` at each scrape; none while no ACD runs. The
    answered/abandoned figures are gauges, not counters: they restart at midnight with the snapshot's."""

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin

    def collect(self) -> Iterator[Metric]:
        queues = self.admin.queues
        if queues is None:
            return
        figures = queues.snapshot().get("queues", [])
        labels = ["queue"]
        waiting = GaugeMetricFamily("ccpbx_queue_waiting", "Contacts waiting in the queue.", labels=labels)
        longest = GaugeMetricFamily("ccpbx_queue_longest_wait_seconds", "Wait of the longest-waiting contact.",
                                    labels=labels)
        staffed = GaugeMetricFamily("ccpbx_queue_agents_staffed", "Agents logged in to the queue.", labels=labels)
        level = GaugeMetricFamily("ccpbx_queue_service_level", "Answered within the service-level time over "
                                  "answered plus abandoned, since midnight (absent before anything counted).",
                                  labels=labels)
        answered = GaugeMetricFamily("ccpbx_queue_answered", "Contacts answered since midnight.", labels=labels)
        abandoned = GaugeMetricFamily("ccpbx_queue_abandoned", "Contacts abandoned since midnight.", labels=labels)
        for q in figures:
            name = [str(q.get("name", ""))]
            waiting.add_metric(name, q.get("waiting") or 0)
            longest.add_metric(name, q.get("longest_wait_s") or 0)
            staffed.add_metric(name, q.get("staffed") or 0)
            if q.get("service_level") is not None:
                level.add_metric(name, q["service_level"])
            answered.add_metric(name, q.get("answered") or 0)
            abandoned.add_metric(name, q.get("abandoned") or 0)
        yield from (waiting, longest, staffed, level, answered, abandoned)


# ---- the HTTP application ---------------------------------------------------------------------------------

def _version() -> str:
    try:
        return metadata.version("ccpbx")
    except metadata.PackageNotFoundError:
        return "0"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """The admin API over ``live``; :attr:`app` is the aiohttp application (tests serve it themselves).

    ``queues`` is the running ACD, read at each request (so it may be set after construction); None: the
    queue endpoints answer 503 and ``/metrics`` has no queue gauges.
    """

    def __init__(self, live: LiveView, *, token: str, host: str = "127.0.0.1", port: int = 0,
                 metrics_public: bool = False, queues: QueueControl | None = None,
                 trunks: Callable[[], Sequence[Mapping[str, object]]] | None = None,
                 bans: BanControl | None = None) -> None:
        self.live = live
        self.bans = bans
        self.queues = queues
        self.trunks = trunks
        self.host = host
        self.port = port
        self.metrics_public = metrics_public
        self._token = token.encode()
        self._version = _version()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LiveCollector(live))
        self.registry.register(_QueueCollector(self))
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get("/api/calls", self._calls)
        self.app.router.add_get("/api/registrations", self._registrations)
        self.app.router.add_get("/api/devices", self._devices)
        self.app.router.add_get("/api/status", self._status)
        self.app.router.add_get("/api/queues", self._queues)
        self.app.router.add_get("/api/trunks", self._trunks)
        self.app.router.add_post("/api/agents/{extension}/{action}", self._agent_command)
        self.app.router.add_get("/api/bans", self._bans)
        self.app.router.add_post("/api/bans", self._ban)
        self.app.router.add_delete("/api/bans/{ip}", self._unban)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """Listen on ``host:port`` (0: a free port); returns the base URL."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def authorized(self, header: str) -> bool:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics" and self.metrics_public:
            return await handler(request)
        if not self.authorized(request.headers.get("Authorization", "")):
            response = _json({"error": "unauthorized: send Authorization: Bearer <the token in admin.token>"},
                             status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="ccpbx-admin"'
            return response
        return await handler(request)

    async def _calls(self, request: web.Request) -> web.Response:
        return _json([c.to_json() for c in self.live.calls()])

    async def _registrations(self, request: web.Request) -> web.Response:
        return _json([r.to_json() for r in self.live.registrations()])

    async def _devices(self, request: web.Request) -> web.Response:
        return _json([d.to_json() for d in self.live.devices()])

    async def _status(self, request: web.Request) -> web.Response:
        m = self.live.metrics()
        return _json({"version": self._version, "pid": os.getpid(), "uptime": round(m.uptime_s, 3),
                      "calls_active": m.calls_active, "calls_total": m.calls_total,
                      "calls_answered": m.calls_answered, "calls_failed": m.calls_failed,
                      "calls_per_second": round(m.calls_per_second, 3), "registrations": m.registrations,
                      "rtp_channels": m.rtp_channels})

    async def _trunks(self, request: web.Request) -> web.Response:
        return _json(list(self.trunks()) if self.trunks is not None else [])

    async def _queues(self, request: web.Request) -> web.Response:
        if self.queues is None:
            return _json({"error": NO_QUEUES}, status=503)
        return _json(self.queues.snapshot())

    async def _agent_command(self, request: web.Request) -> web.Response:
        extension = request.match_info["extension"]
        try:
            action = AgentAction(request.match_info["action"])
        except ValueError:
            actions = ", ".join(a.value for a in AgentAction)
            return _json({"error": f"no agent action {request.match_info['action']!r} (one of {actions})"},
                         status=400)
        options: dict[str, str | None] = {"queue": None, "reason": None}
        raw = await request.read()  # bounded by the application's client_max_size (413 beyond)
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return _json({"error": "the body must be a JSON object"}, status=400)
            if not isinstance(body, dict):
                return _json({"error": "the body must be a JSON object"}, status=400)
            for key, value in body.items():
                if key not in options:
                    return _json({"error": f"unknown key {key!r} (queue, reason)"}, status=400)
                if value is not None and not isinstance(value, str):
                    return _json({"error": f"{key} must be a string"}, status=400)
                options[key] = value or None
        if self.queues is None:
            return _json({"error": NO_QUEUES}, status=503)
        try:
            await self.queues.agent_command(extension, action, queue=options["queue"], reason=options["reason"])
        except AgentCommandError as exc:
            return _json({"error": str(exc)}, status=400)
        log.info("admin.agent_command", agent=extension, action=action.value, queue=options["queue"],
                 reason=options["reason"])
        return _json({"ok": True})

    async def _bans(self, request: web.Request) -> web.Response:
        if self.bans is None:
            return _json({"bans": [], "dropped_banned": 0, "dropped_rate_limited": 0})
        return _json(self.bans.ban_list())

    async def _ban(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("ip"), str):
            return _json({"error": 'the body must be {"ip": ..., "seconds": ..., "reason": ...}'}, status=400)
        ip, seconds, reason = body["ip"], body.get("seconds", 600), body.get("reason") or "manual"
        if not _is_ip(ip) or not isinstance(seconds, int | float) or seconds <= 0 or not isinstance(reason, str):
            return _json({"error": "ip must be an IP address, seconds a positive number"}, status=400)
        if self.bans is None:
            return _json({"error": "bans are not available"}, status=404)
        ban = self.bans.ban_address(ip, float(seconds), reason)
        if ban is None:
            return _json({"error": f"{ip} is in [security] allow: never banned"}, status=400)
        log.info("admin.ban", ip=ip, seconds=seconds, reason=reason)
        return _json(ban)

    async def _unban(self, request: web.Request) -> web.Response:
        ip = request.match_info["ip"]
        if self.bans is None or not self.bans.unban(ip):
            return _json({"error": f"{ip} is not banned"}, status=404)
        log.info("admin.unban", ip=ip)
        return _json({"ok": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---- admin.json and admin.token: how the command line finds the server ----------------------------------

class AdminStateError(Exception):
    """No running server's admin files in a data directory, or unreadable ones."""


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    url: str
    token: str
    pid: int | None


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (created 0600, never wider)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_state(data_dir: Path, url: str, token: str) -> None:
    """The token first, then ``admin.json``: a reader that finds the address finds the matching token."""
    _write_private(data_dir / TOKEN_FILE_NAME, token + "\n")
    _write_private(data_dir / STATE_FILE_NAME, json.dumps({"url": url, "pid": os.getpid()}) + "\n")


def remove_state(data_dir: Path) -> None:
    """Remove the admin files if they are still this process's (a newer server may have replaced them)."""
    with contextlib.suppress(AdminStateError):
        if read_state(data_dir).pid not in (None, os.getpid()):
            return
    for name in (STATE_FILE_NAME, TOKEN_FILE_NAME):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()


def read_state(data_dir: Path) -> AdminEndpoint:
    """The running server's admin URL and token; :class:`AdminStateError` says why there are none."""
    state_path = data_dir / STATE_FILE_NAME
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdminStateError(f"no running ccpbx found in {data_dir} ({STATE_FILE_NAME} missing)") from None
    except (OSError, ValueError) as exc:
        raise AdminStateError(f"cannot read {state_path}: {exc}") from None
    url = state.get("url") if isinstance(state, dict) else None
    if not isinstance(url, str) or not url.startswith("http://"):
        raise AdminStateError(f"{state_path} names no admin URL")
    pid = state.get("pid")
    try:
        token = (data_dir / TOKEN_FILE_NAME).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminStateError(f"cannot read {data_dir / TOKEN_FILE_NAME}: {exc.strerror or exc}") from None
    return AdminEndpoint(url, token, pid if isinstance(pid, int) else None)
