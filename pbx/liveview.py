"""The default :class:`~ccpbx.pbx.admin.LiveView`: what the running server's call manager, location service and
media server hold right now, as the admin API's typed views; and :func:`start_live_view`, the one call the
composition root makes to serve it.

Reads only; every method runs on the event loop's thread between two callbacks, so what it sees is consistent.
Device states come from the server's device-state tracker (:class:`~ccpbx.pbx.devicestate.DeviceStates`),
the same one busy lamps and busy-aware groups read; another ``devices`` provider may be passed to
:class:`ServerLiveView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ccpbx.media.errors import MediaError
from ccpbx.media.workers import AnyMedia
from ccpbx.pbx.admin import (
    AdminServer,
    CallState,
    CallView,
    DeviceView,
    LegView,
    MetricsSnapshot,
    RateWindow,
    RegistrationView,
    RtpView,
    new_token,
    remove_state,
    write_state,
)
from ccpbx.pbx.calls import CallManager, Leg, LegState
from ccpbx.pbx.config import Config
from ccpbx.pbx.devicestate import DeviceStates
from ccpbx.pbx.location import LocationService
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.loopwatch import LoopWatch
from ccpbx.pbx.queue_api import QueueControl

__all__ = ["LiveViewService", "ServerLiveView", "ServerParts", "start_live_view"]

log = get_logger("ccpbx.admin")

RATE_SAMPLE_S = 1.0


class _Extensions(Protocol):
    @property
    def extensions(self) -> Callable[[], Iterable[str]]: ...


class _RequestCounts(Protocol):
    @property
    def by_method(self) -> Mapping[str, int]: ...


class ServerParts(Protocol):
    """The pieces of ``SipServer`` the live view reads (a protocol, so this module does not import ``app``)."""

    @property
    def calls(self) -> CallManager: ...

    @property
    def location(self) -> LocationService: ...

    @property
    def media(self) -> AnyMedia: ...

    @property
    def router(self) -> _Extensions: ...

    @property
    def stats(self) -> _RequestCounts: ...

    @property
    def devices(self) -> DeviceStates: ...

    @property
    def loop_watch(self) -> LoopWatch: ...

    @property
    def queues(self) -> QueueControl | None:
        """The running ACD (``GET /api/queues``, agent commands), or None when no queue is configured."""

    def trunk_statuses(self) -> list[dict[str, object]]:
        """Every trunk's registration, reachability and channels (``GET /api/trunks``)."""

    # the bans (``GET/POST/DELETE /api/bans``): see :class:`~ccpbx.pbx.admin.BanControl`
    def ban_list(self) -> Mapping[str, object]: ...

    def unban(self, ip: str) -> bool: ...

    def ban_address(self, ip: str, seconds: float, reason: str = "manual") -> Mapping[str, object] | None: ...


class ServerLiveView:
    """A :class:`~ccpbx.pbx.admin.LiveView` over a running server's parts."""

    def __init__(self, server: ServerParts, *,
                 devices: Callable[[], Sequence[DeviceView]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self._devices = devices
        self._clock = clock
        self._started = time.monotonic()
        self.rate = RateWindow()
        self._lost_open: dict[str, int] = {}  # leg id -> RTP loss last seen on its open channel
        self._lost_closed = 0  # loss of channels closed since, as last seen

    # -- LiveView ----------------------------------------------------------------------------------------
    def calls(self) -> list[CallView]:
        return self._call_views(with_media=True)

    def registrations(self) -> list[RegistrationView]:
        now = self._clock()
        views = []
        for b in self.server.location:
            if b.expires_at <= now:
                continue
            host = f"[{b.source_host}]" if ":" in b.source_host else b.source_host
            views.append(RegistrationView(b.aor, b.contact, b.transport, f"{host}:{b.source_port}",
                                          b.expires_in(now), b.user_agent))
        views.sort(key=lambda r: (r.aor, r.contact))
        return views

    def devices(self) -> Sequence[DeviceView]:
        if self._devices is not None:
            return self._devices()
        tracker = self.server.devices
        return [DeviceView(ext, state, len({leg.call.id for leg in tracker.legs(ext)}))
                for ext, state in tracker.snapshot(self.server.router.extensions()).items()]

    def metrics(self) -> MetricsSnapshot:
        manager = self.server.calls
        stats = manager.stats
        media = self.server.media
        engine = media.engine
        lost_open: dict[str, int] = {}
        jitters: list[float] = []
        for ch, leg in list(manager.by_channel.items()):
            try:
                s = engine.stats(ch)
            except MediaError:
                continue
            lost_open[leg.id] = max(0, s.lost)
            if s.packets_in:
                jitters.append(s.jitter_ms / 1000.0)
        for leg_id, lost in self._lost_open.items():
            if leg_id not in lost_open:
                self._lost_closed += lost
        self._lost_open = lost_open
        self.sample()
        ticks = media.tick_durations
        watch = self.server.loop_watch
        return MetricsSnapshot(
            uptime_s=time.monotonic() - self._started,
            calls_active=len(manager.calls),
            calls_total=stats.calls,
            calls_answered=stats.answered,
            calls_failed=stats.failed,
            calls_per_second=self.rate.rate(),
            registrations=len(self.registrations()),
            sip_requests=tuple(sorted(self.server.stats.by_method.items())),
            rtp_channels=len(lost_open),
            rtp_packets_lost=self._lost_closed + sum(lost_open.values()),
            rtp_jitter_max_s=max(jitters, default=0.0),
            rtp_jitter_mean_s=sum(jitters) / len(jitters) if jitters else 0.0,
            media_ticks=media.ticks,
            media_late_ticks=media.late_ticks,
            media_skipped_ticks=media.skipped_ticks,
            tick_buckets=tuple(ticks.cumulative()),
            tick_seconds_sum=ticks.total_s,
            loop_lag_buckets=tuple(watch.lag.cumulative()),
            loop_lag_seconds_sum=watch.lag.total_s,
            loop_stalls=watch.stalls,
            gc_pause_buckets=tuple(watch.gc_pauses.cumulative()),
            gc_pause_seconds_sum=watch.gc_pauses.total_s,
            gc_paced=(self.server.gc_pacer.paced[0], self.server.gc_pacer.paced[1]),
            gc_pacer_running=self.server.gc_pacer.running,
        )

    # -- the rest ------------------------------------------------------------------------------------------
    def sample(self) -> None:
        """Feed the calls-per-second window (called every second by :class:`LiveViewService`)."""
        self.rate.observe(time.monotonic(), self.server.calls.stats.calls)

    def _call_views(self, *, with_media: bool) -> list[CallView]:
        now = self._clock()
        views = []
        for call in list(self.server.calls.calls.values()):
            legs = tuple(self._leg_view(leg, with_media) for leg in call.legs if leg.state is not LegState.ENDED)
            views.append(CallView(
                id=call.id, caller=call.caller.number, caller_name=call.caller.name, dialled=call.dialled,
                destination=call.destination,
                state=CallState.ANSWERED if call.answered_at is not None else CallState.RINGING,
                started=call.started, answered=call.answered_at, duration_s=max(0.0, now - call.started),
                legs=legs))
        views.sort(key=lambda c: c.started)
        return views

    def _leg_view(self, leg: Leg, with_media: bool) -> LegView:
        rtp = None
        if with_media and leg.channel is not None:
            with contextlib.suppress(MediaError):
                s = self.server.media.engine.stats(leg.channel)
                rtp = RtpView(s.packets_in, s.packets_out, max(0, s.lost), s.jitter_ms if s.packets_in else None)
        return LegView(role=leg.role, inbound=leg.inbound, peer=leg.peer, state=leg.state.value,
                       sip_call_id=leg.sip_call_id, codec=leg.audio.codec.name if leg.audio is not None else None,
                       held=leg.held_by_remote, rtp=rtp)


class LiveViewService:
    """The running admin API and its rate sampler; :meth:`stop` undoes :func:`start_live_view`."""

    def __init__(self, data_dir: Path, admin: AdminServer | None, live: ServerLiveView | None) -> None:
        self.data_dir = data_dir
        self.admin = admin
        self.live = live
        self._sampler: asyncio.Task[None] | None = None
        if live is not None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample(live), name="admin-rate")

    @staticmethod
    async def _sample(live: ServerLiveView) -> None:
        while True:
            live.sample()
            await asyncio.sleep(RATE_SAMPLE_S)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self.admin is not None:
            remove_state(self.data_dir)
            await self.admin.stop()
            self.admin = None
            log.info("admin.stopped")


async def start_live_view(config: Config, data_dir: Path, server: ServerParts) -> LiveViewService:
    """Serve the admin API over ``server`` (unless ``[admin] enabled = false``) and write its address and a
    fresh token into ``data_dir``. A failure to serve it is logged and the PBX runs on without it."""
    settings = config.admin
    if not settings.enabled:
        return LiveViewService(data_dir, None, None)
    live = ServerLiveView(server)
    token = new_token()
    admin = AdminServer(live, token=token, host=settings.host, port=settings.port,
                        metrics_public=settings.metrics_public, queues=server.queues,
                        trunks=server.trunk_statuses, bans=server)
    try:
        url = await admin.start()
        write_state(data_dir, url, token)
    except OSError as exc:
        await admin.stop()
        log.error("admin.start_failed", host=settings.host, port=settings.port, error=str(exc))
        return LiveViewService(data_dir, None, None)
    log.info("admin.started", url=url, token_file=str(data_dir / "admin.token"))
    return LiveViewService(data_dir, admin, live)
