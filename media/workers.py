"""Media across cores: :class:`MediaWorkers` runs the media engine in worker processes and offers the signalling
process the same interface as an in-process :class:`~ccpbx.media.transport.MediaServer`.

- **Processes.** ``count`` workers (``python -m ccpbx.media.worker``), each with its own engine, sockets and
  20 ms tick, commanded over a :class:`~ccpbx.media.link.Link` (a Unix socket pair). Commands are batched per
  event-loop iteration and never waited for: ids of channels, groups, players and recorders are given here,
  so :attr:`engine` answers at once, like an in-process engine.
- **Sockets.** This process binds every channel's RTP/RTCP pair (one port range, one allocator) and passes the
  descriptors to the worker that runs the channel; it keeps its own copies (never read) and pools them after
  the channel closes, as :class:`MediaServer` does. Keeping them lets a channel move between workers. A
  closed channel's pair stays open in its worker too (its transports drop what arrives), and a channel opened
  on that worker once the quarantine is over reopens it by port: after warm-up no descriptor crosses and no
  transport is created. A dead worker's pairs go back to a shared pool and are passed again.
- **Placement.** A channel opens on the worker of the channel named ``near`` (the other leg of its call), else
  on the least loaded worker. Bridging or conferencing channels that live on different workers first moves the
  lighter side (its channels and their groups) to the other worker: the channel closes on one worker and
  opens on the other with the same sockets, codec, remote, direction, SRTP keys and player (which restarts).
  Its RTP stream gets a new SSRC there, as after any re-anchoring (RFC 3550 §8.2 lets a receiver follow it).
  A recording moves with its channels (they count as joined): the old worker closes the file, says when, and
  the new one goes on in the same file, with silence for the frames the hand-over took.
- **What comes back.** Engine events (with this process's ids), relay changes (:meth:`RemoteEngine.relaying`),
  whether a new bridge is relayed when asked (``bridge(..., decided=)``: call control's bridge line),
  per-channel statistics once a second (:meth:`RemoteEngine.stats`, the admin API's quality figures), the tick
  histograms (summed), and the frames of monitored recordings (IVR silence detection runs here).
- **A worker that dies** (killed, crashed) takes only its channels: each gets a :class:`ChannelLost` event,
  which call control turns into a hang-up with a BYE and a CDR (end reason ``media_worker_lost``), and a new
  worker is started in its place (with a back-off if it keeps dying).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import io
import itertools
import math
import os
import pickle
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import (
    Address,
    ChannelStats,
    Direction,
    MediaEngine,
    MediaEvent,
    PlaybackFinished,
    SourceChanged,
)
from .errors import MediaConfigError, MediaError
from .g711 import Codec
from .link import (
    FRAME_GAP_S,
    Link,
    reap,
    restart_delay,
    spawn_worker_process,
    start_again,
    stop_worker_processes,
    wait_started,
)
from .mixer import Role, RoleKind
from .source import FRAME_MS, AudioSource
from .srtp import SrtpParameters
from .transport import (
    POOL_QUARANTINE_S,
    MediaServer,
    OpenedChannel,
    PortAllocator,
    PortsExhaustedError,
    TickDurations,
    TickStats,
    address_family,
    bind_rtp_pair,
    disconnect_udp,
    pool_limit,
)

__all__ = ["AnyEngine", "AnyMedia", "ChannelLost", "MediaWorkers", "RemoteEngine", "WorkerEvent", "usable_cores"]

BLOB_MIN_BYTES = 16 * 1024  # arrays this big (prompts, music) go to a worker once and are referred to after
BLOB_CACHE_BYTES = 64 << 20  # blobs kept referable at most; the oldest are dropped past this
START_TIMEOUT_S = 20.0
OPEN_WAIT_S = 5.0  # how long a new channel waits for a restarting worker before the call is refused
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ChannelLost:
    """The worker running ``channel`` is gone: the channel carries nothing any more (close it)."""

    channel: int
    reason: str


WorkerEvent = MediaEvent | ChannelLost


@dataclass(slots=True)
class _Chan:
    """What this process knows of a channel: where it runs, its sockets, and what to replay after a move."""

    worker: _Worker
    port: int
    sock: socket.socket
    rtcp_sock: socket.socket
    codec: Codec
    remote: Address | None
    te_pt: int | None
    codec_args: tuple[Codec, int | None, tuple[tuple[int, Codec], ...]] | None = None
    ptime: int | None = None
    direction: Direction | None = None
    detect: tuple[bool, bool] | None = None
    srtp: SrtpParameters | None = None
    player: tuple[int, bytes, bool, frozenset[int]] | None = None  # (player id, pickled source, mix, its blobs)
    groups: set[int] = field(default_factory=set)
    recorders: set[int] = field(default_factory=set)
    relaying: bool = False
    stats: ChannelStats | None = None


@dataclass(slots=True)
class _Group:
    worker: _Worker
    members: dict[int, Role]
    # a bridge's: told once whether its worker relays it, as the worker decided (RemoteEngine.bridge)
    decided: Callable[[bool], None] | None = None


@dataclass(slots=True)
class _Recorder:
    worker: _Worker
    channels: tuple[int, ...]  # every source: said, then heard
    monitor: Callable[[npt.NDArray[np.int16]], None] | None
    said: tuple[int, ...]
    heard: tuple[int, ...]
    path: str
    stereo: bool
    handing_over: _Worker | None = None  # moving: the worker closing the file, until it says so

    def command(self, rid: int, resume_at: float | None) -> tuple[Any, ...]:
        return ("record", rid, self.said, self.path, self.stereo, self.heard, self.monitor is not None, resume_at)


class _BlobPickler(pickle.Pickler):
    def __init__(self, buf: io.BytesIO, workers: MediaWorkers, worker: _Worker) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self.workers = workers
        self.worker = worker
        self.keys: set[int] = set()

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.nbytes >= BLOB_MIN_BYTES:
            key = self.workers._blob(obj, self.worker)
            self.keys.add(key)
            return key
        return None


_Parked = tuple[float, int, socket.socket, socket.socket]
"""A pooled socket pair: when it was parked, its port, its RTP and RTCP sockets (this process's copies)."""


class _Worker:
    """One worker process and its link."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.idle: collections.deque[_Parked] = collections.deque()  # pairs kept open in this worker, oldest first
        self.proc: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = False
        self.channels: set[int] = set()
        self.blobs: set[int] = set()
        self.pings: dict[int, asyncio.Future[None]] = {}
        self.tick_stats = TickStats(0, 0, 0, 0, 0.0)
        self.tick_counts: list[int] = []
        self.tick_total_s = 0.0
        self.srtp_errors = 0
        self.pid = 0

    def send(self, message: Any, fds: Iterable[int] = ()) -> None:
        if self.link is not None and self.alive:
            self.link.send(message, fds)

    def set(self, ch: int, name: str, value: Any = True) -> None:
        """Change one setting of channel ``ch``. Settings of one channel given one after another (a call's SDP
        sets its codec, remote, direction and detection at once) travel as one ``("set", ch, {name: value})``
        command, decided on once by the worker: the last one queued for the next frame takes this one in when
        it is that channel's, nothing having been queued after it."""
        link = self.link
        if link is None or not self.alive:
            return
        last = link.last_queued
        if last is not None and last[0] == "set" and last[1] == ch:
            last[2][name] = value
        else:
            link.send(("set", ch, {name: value}))


class RemoteEngine:
    """The engine calls of :class:`~ccpbx.media.engine.MediaEngine` that call control makes, carried out by the
    workers. Validation (open channel, known group) happens here, so errors are raised where they were."""

    def __init__(self, owner: MediaWorkers) -> None:
        self._w = owner
        self._rtp_timeout_ms = 30_000

    @property
    def rtp_timeout_ms(self) -> int:
        return self._rtp_timeout_ms

    @rtp_timeout_ms.setter
    def rtp_timeout_ms(self, value: int) -> None:
        self._rtp_timeout_ms = int(value)
        for worker in self._w.workers:
            worker.send(("config", self._rtp_timeout_ms))

    def _chan(self, ch: int) -> _Chan:
        c = self._w.chans.get(ch)
        if c is None:
            raise MediaConfigError(f"no open channel {ch}")
        return c

    def _group(self, gid: int) -> _Group:
        g = self._w.groups.get(gid)
        if g is None:
            raise MediaConfigError(f"no bridge/conference {gid}")
        return g

    # -- per channel ---------------------------------------------------------------------------------------
    def set_codec(self, ch: int, codec: Codec, telephone_event_pt: int | None = 101,
                  also: Iterable[tuple[int, Codec]] = ()) -> None:
        if not isinstance(codec, Codec):
            raise MediaConfigError(f"codec must be a Codec, got {codec!r}")
        if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
            raise MediaConfigError(f"telephone-event payload type must be dynamic (96-127), got {telephone_event_pt}")
        c = self._chan(ch)
        args = (codec, telephone_event_pt, tuple(also))
        # What the worker's channel already has (from its open, or the last change) is not sent again: a call's
        # SDP sets the codec, packet time, direction and detection of a fresh channel to what it opened with.
        unchanged = args == (c.codec_args or (c.codec, c.te_pt, ()))
        c.codec_args = args
        c.codec, c.te_pt = codec, telephone_event_pt
        if not unchanged:
            c.worker.set(ch, "codec", args)

    def set_send_ptime(self, ch: int, ptime_ms: int | None) -> None:
        c = self._chan(ch)
        unchanged = ptime_ms == c.ptime or (c.ptime is None and ptime_ms == FRAME_MS)  # None: the engine's 20 ms
        c.ptime = ptime_ms
        if not unchanged:
            c.worker.set(ch, "ptime", ptime_ms)

    def set_remote(self, ch: int, addr: Address | None) -> None:
        c = self._chan(ch)
        c.remote = addr
        c.worker.set(ch, "remote", addr)

    def set_direction(self, ch: int, direction: Direction) -> None:
        c = self._chan(ch)
        # Setting a direction restarts the RTP timeout, so only the first one, sendrecv as the channel opened, is
        # skipped: a caller's channel gets it right after its open, and a callee's silence is counted again from
        # the answer (restart_rtp_timeout) as it was from this.
        first = c.direction is None
        c.direction = direction
        if not (first and direction is Direction.SENDRECV):
            c.worker.set(ch, "direction", direction)

    def restart_rtp_timeout(self, ch: int) -> None:
        self._chan(ch).worker.set(ch, "restart_timeout")

    def enable_dtmf_detection(self, ch: int, enabled: bool = True, *, unpaired_only: bool = False) -> None:
        c = self._chan(ch)
        detect = (enabled, unpaired_only)
        unchanged = detect == (c.detect or (False, False))
        c.detect = detect
        if not unchanged:
            c.worker.set(ch, "detect", detect)

    def send_dtmf(self, ch: int, digit: str, duration_ms: int = 100) -> None:
        c = self._chan(ch)
        if c.te_pt is None:
            raise MediaConfigError(f"channel {ch} has no telephone-event payload type")
        c.worker.send(("send_dtmf", ch, digit, duration_ms))

    def relaying(self, ch: int) -> bool:
        """Whether ``ch`` is on the relay fast path, as its worker last reported."""
        return self._chan(ch).relaying

    def stats(self, ch: int) -> ChannelStats:
        """The channel's figures as of its worker's last report (at most a second old)."""
        c = self._chan(ch)
        return c.stats if c.stats is not None else ChannelStats(0, 0, 0, 0, 0, 0, 0.0, 0, 0)

    # -- players and recorders -----------------------------------------------------------------------------
    def play(self, ch: int, source: AudioSource, *, mix: bool = False) -> int:
        c = self._chan(ch)
        data, blobs = self._w._pickle_source(source, c.worker)
        pid = self._w._new_id()
        c.player = (pid, data, mix, blobs)
        c.worker.send(("play", pid, ch, data, mix))
        return pid

    def stop_play(self, ch: int) -> None:
        c = self._chan(ch)
        if c.player is None:  # nothing plays there (or it finished: the worker said so): no command to send
            return
        c.player = None
        c.worker.send(("stop_play", ch))

    def record(self, channels: Sequence[int], path: str | os.PathLike[str], stereo: bool = False,
               heard: Sequence[int] = (), monitor: Callable[[npt.NDArray[np.int16]], None] | None = None) -> int:
        sources = (*channels, *heard)
        for ch in sources:
            self._chan(ch)
        if not sources or (stereo and len(sources) != 2):
            raise MediaConfigError(f"stereo recording needs 2 sources, mono at least 1; got {list(sources)}")
        worker = self._w._colocate(list(sources))
        rid = self._w._new_id()
        rec = self._w.recorders[rid] = _Recorder(worker, tuple(sources), monitor, tuple(channels), tuple(heard),
                                                 os.fspath(path), stereo)
        for ch in sources:
            self._w.chans[ch].recorders.add(rid)
        worker.send(rec.command(rid, None))
        return rid

    def stop_record(self, rid: int) -> None:
        rec = self._w.recorders.pop(rid, None)
        if rec is None:
            raise MediaConfigError(f"no recorder {rid}")
        for ch in rec.channels:
            c = self._w.chans.get(ch)
            if c is not None:
                c.recorders.discard(rid)
        rec.worker.send(("stop_record", rid))

    # -- bridges and conferences ---------------------------------------------------------------------------
    def bridge(self, a: int, b: int, *, decided: Callable[[bool], None] | None = None) -> int:
        """Bridge two channels; ``decided`` (when given) is called once with whether the worker relays the
        bridge's packets, as soon as it has decided (what :meth:`relaying` says after a :meth:`MediaWorkers.sync`,
        without the round trip). Not called when the bridge is gone before (its channels closed)."""
        return self._make_group([a, b], decided)

    def conference(self, members: Sequence[int]) -> int:
        return self._make_group(members, None)

    def _make_group(self, members: Sequence[int], decided: Callable[[bool], None] | None) -> int:
        for ch in members:
            self._chan(ch)
        if len(set(members)) != len(members):
            raise MediaConfigError(f"duplicate members {members}")
        worker = self._w._colocate(list(members))
        gid = self._w._new_id()
        roles = {ch: Role.SPEAKER for ch in members}
        self._w.groups[gid] = _Group(worker, roles, decided)
        for ch in members:
            self._w.chans[ch].groups.add(gid)
        worker.send(("group", gid, dict(roles)) if decided is None else ("group", gid, dict(roles), True))
        return gid

    def add_to_conference(self, gid: int, ch: int, role: Role = Role.SPEAKER) -> None:
        self._chan(ch)
        g = self._group(gid)
        if role.kind is RoleKind.WHISPER and (role.target not in g.members or role.target == ch):
            raise MediaConfigError(f"whisper target {role.target} must be another member of {gid}")
        worker = self._w._colocate([*g.members, ch]) if g.members else self._w._colocate([ch])
        if worker is not g.worker:  # an emptied group on another worker: made anew where its member is
            g.worker.send(("destroy", gid))
            g.worker = worker
            worker.send(("group", gid, {}))
        g.members[ch] = role
        self._w.chans[ch].groups.add(gid)
        worker.send(("add", gid, ch, role))

    def remove_from_conference(self, gid: int, ch: int) -> None:
        c = self._chan(ch)
        g = self._group(gid)
        if g.members.pop(ch, None) is not None:
            _demote_whispers_to(g.members, ch)
        c.groups.discard(gid)
        g.worker.send(("remove", gid, ch))

    def destroy(self, gid: int) -> None:
        g = self._w.groups.pop(gid, None)
        if g is None:
            raise MediaConfigError(f"no bridge/conference {gid}")
        for ch in g.members:
            c = self._w.chans.get(ch)
            if c is not None:
                c.groups.discard(gid)
        g.worker.send(("destroy", gid))

    unbridge = destroy

    def members(self, gid: int) -> dict[int, Role]:
        return dict(self._group(gid).members)


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """How many cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota (v2 ``cpu.max``
    or v1 ``cpu.cfs_quota_us``: a container limited to 1.5 CPUs on a 64-core host gets 2), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root), Path(proc_cgroup))
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The CPUs a cgroup quota allows this process (``None``: no quota, or none found)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "max 100000" or "150000 100000"
            fields = _read_fields(root / path.lstrip("/") / "cpu.max")
            if len(fields) >= 2 and fields[0] != "max":
                return _ratio(fields[0], fields[1])
        elif "cpu" in controllers.split(","):  # v1: cpu.cfs_quota_us is -1 without a quota
            for where in (root / controllers / path.lstrip("/"), root / controllers):  # own cgroup, or a namespace's
                quota, period = _read_fields(where / "cpu.cfs_quota_us"), _read_fields(where / "cpu.cfs_period_us")
                if quota and period:
                    return None if quota[0].startswith("-") else _ratio(quota[0], period[0])
    return None


def _read_fields(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _demote_whispers_to(members: dict[int, Role], ch: int) -> None:
    for other, role in list(members.items()):
        if role.kind is RoleKind.WHISPER and role.target == ch:
            members[other] = Role.LISTEN_ONLY


class MediaWorkers:
    """Media in ``count`` worker processes, with :class:`MediaServer`'s interface (see the module docstring).

    Parameters
    ----------
    host : local address to bind RTP sockets on
    ports : the RTP port range
    count : worker processes (at least 1)
    on_event : called with each event (engine events and :class:`ChannelLost`); ``None``: they go to
        :attr:`events`
    on_notice : called with ``(kind, fields)`` for what an operator should see in the log
    """

    def __init__(self, host: str, ports: PortAllocator, count: int, *,
                 on_event: Callable[[WorkerEvent], None] | None = None, uvloop: bool = False,
                 on_notice: Callable[[str, dict[str, object]], None] | None = None) -> None:
        if count < 1:
            raise MediaConfigError(f"media workers must be at least 1, got {count}")
        self.host = host
        self.ports = ports
        self.count = count
        self.on_event = on_event
        self.events: asyncio.Queue[WorkerEvent] = asyncio.Queue()
        self.uvloop = uvloop
        # what the owner may log: ("worker.error", {...}) for a command a worker refused, ("worker.died", ...),
        # ("worker.started", ...) — this package does no logging of its own
        self.on_notice = on_notice
        self.engine = RemoteEngine(self)
        self.workers: list[_Worker] = []
        self.chans: dict[int, _Chan] = {}
        self.groups: dict[int, _Group] = {}
        self.recorders: dict[int, _Recorder] = {}
        self._family = address_family(host)
        self._next = 1
        # pairs in no worker (a worker that held them died): passed again with their descriptors
        self._idle: collections.deque[_Parked] = collections.deque()
        self._blobs: collections.OrderedDict[int, npt.NDArray[np.int16]] = collections.OrderedDict()
        self._blob_bytes = 0
        self._deaths: dict[int, collections.deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._dead_ticks = TickStats(0, 0, 0, 0, 0.0)
        self._dead_counts: list[int] = []
        self._dead_total_s = 0.0
        self.restarts = 0
        self.moves = 0
        self.pool_max = pool_limit()
        self.pool_reused = 0
        self.pool_early_reused = 0  # of pool_reused: taken before their quarantine was over (no port was left)
        self.recv_errors = 0

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and wait until each is ready."""
        if self.workers:
            return
        self.workers = [_Worker(slot) for slot in range(self.count)]
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def _spawn(self, worker: _Worker) -> None:
        worker.proc, parent = await spawn_worker_process("ccpbx.media.worker", ["--host", self.host], self.uvloop)
        # partial, not a lambda: called for every frame from the worker, and a partial's call stays in C
        worker.link = Link(parent, functools.partial(self._messages, worker), functools.partial(self._lost, worker),
                           min_gap_s=FRAME_GAP_S)
        worker.alive = True
        worker.send(("config", self.engine.rtp_timeout_ms))
        if not await wait_started(worker, START_TIMEOUT_S):
            raise MediaError(f"media worker {worker.slot} did not start in {START_TIMEOUT_S:.0f} s")

    async def stop(self) -> None:
        """Close every channel, stop the workers (killed if they do not stop in time), close the sockets."""
        self._stopping = True
        for ch in list(self.chans):
            self.close_channel(ch)
        await stop_worker_processes(self.workers, STOP_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        for worker in self.workers:
            while worker.idle:
                self._discard(worker.idle.popleft())
        while self._idle:
            self._discard(self._idle.popleft())

    async def __aenter__(self) -> MediaWorkers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def sync(self, channel: int | None = None) -> None:
        """Wait until every worker has carried out every command given so far (a recording's file is closed);
        with ``channel``, only the worker that runs it (one round trip, not one per worker)."""
        waits = []
        c = self.chans.get(channel) if channel is not None else None
        for worker in self.workers if c is None else (c.worker,):
            if worker.alive:
                token = self._new_id()
                fut = asyncio.get_running_loop().create_future()
                worker.pings[token] = fut
                worker.send(("ping", token))
                waits.append(fut)
        if waits:
            await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)

    # -- channels --------------------------------------------------------------------------------------------
    async def open_channel(self, codec: Codec, remote: Address | None, telephone_event_pt: int | None = 101,
                           ptime_ms: int = FRAME_MS, *, near: int | None = None) -> OpenedChannel:
        """Bind (or take from the pool) a socket pair and open a channel on a worker: ``near``'s, or the least
        loaded. Raises :class:`MediaError` when no worker is up within ``OPEN_WAIT_S``."""
        if not isinstance(codec, Codec):
            raise MediaConfigError(f"codec must be a Codec, got {codec!r}")
        if ptime_ms != FRAME_MS:
            raise MediaConfigError(f"only ptime {FRAME_MS} ms is supported, got {ptime_ms}")
        if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
            raise MediaConfigError(f"telephone-event payload type must be dynamic (96-127), got {telephone_event_pt}")
        worker = await self._pick(near)
        ch = self._new_id()
        idle = worker.idle
        taken: tuple[int, socket.socket, socket.socket] | None = None  # None: this worker's oldest kept pair
        if not idle or idle[0][0] > time.monotonic() - POOL_QUARANTINE_S:
            try:
                taken = self._take_sockets()
            except PortsExhaustedError:
                # every port is in a call or parked: a pair parked less than the quarantine, rather than no call
                # (this worker's own if it has one: reopened in place)
                taken = None if idle else self._take_sockets(early=True)
                self.pool_early_reused += 1
        if taken is None:
            _, port, sock, rtcp = idle.popleft()
            self.pool_reused += 1
        else:
            port, sock, rtcp = taken
        c = _Chan(worker, port, sock, rtcp, codec, remote, telephone_event_pt)
        self.chans[ch] = c
        if taken is None:
            worker.channels.add(ch)
            worker.send(("reopen", ch, port, codec, remote, telephone_event_pt, None))
        else:
            self._open_on(worker, ch, c)
        return OpenedChannel(ch, port)

    async def _pick(self, near: int | None) -> _Worker:
        if near is not None:
            c = self.chans.get(near)
            if c is not None and c.worker.alive:
                return c.worker
        alive = [w for w in self.workers if w.alive]
        if not alive:
            waiting = [asyncio.shield(w.ready) for w in self.workers]
            if waiting:
                await asyncio.wait(waiting, timeout=OPEN_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            alive = [w for w in self.workers if w.alive]
            if not alive:
                raise MediaError("no media worker is running")
        return min(alive, key=lambda w: len(w.channels))

    def _open_on(self, worker: _Worker, ch: int, c: _Chan) -> None:
        c.worker = worker
        worker.channels.add(ch)
        worker.send(("open", ch, c.codec, c.remote, c.te_pt, c.srtp), (c.sock.fileno(), c.rtcp_sock.fileno()))

    def _take_sockets(self, *, early: bool = False) -> tuple[int, socket.socket, socket.socket]:
        """A pair from the pool of no worker once out of quarantine (any, oldest first, when ``early``), else a
        new one; raises PortsExhaustedError when neither is to be had."""
        idle = self._idle
        now = math.inf if early else time.monotonic()
        while idle and idle[0][0] <= now - POOL_QUARANTINE_S:
            entry = idle.popleft()
            _, port, sock, rtcp = entry
            try:
                # A worker connects a channel's socket to its phone (strict source) and undoes that when it
                # keeps the pair after the channel; one that died first left it connected, hearing no one else.
                disconnect_udp(sock)
            except OSError:
                self._discard(entry)
                continue
            for s in (sock, rtcp):  # what arrived while parked was for the last call: dropped, not played
                with contextlib.suppress(OSError):
                    while s.recv(2048):
                        pass
            self.pool_reused += 1
            return port, sock, rtcp
        sock, rtcp = bind_rtp_pair(self.host, self._family, self.ports)
        return sock.getsockname()[1], sock, rtcp

    def _discard(self, entry: _Parked) -> None:
        _, port, sock, rtcp = entry
        sock.close()
        rtcp.close()
        self.ports.release(port)

    @property
    def pooled(self) -> int:
        """Socket pairs parked for reuse, in workers or not (their ports stay allocated)."""
        return len(self._idle) + sum(len(w.idle) for w in self.workers)

    def close_channel(self, ch: int) -> None:
        """Close the channel on its worker (which sends its RTCP BYE) and park the sockets for reuse: kept open
        in that worker when it runs (see the module docstring)."""
        c = self.chans.pop(ch, None)
        if c is None:
            return
        worker = c.worker
        worker.channels.discard(ch)
        keep = worker.alive and not self._stopping and self.pooled < self.pool_max
        worker.send(("close", ch, keep))
        for gid in list(c.groups):
            g = self.groups.get(gid)
            if g is not None and g.members.pop(ch, None) is not None:
                _demote_whispers_to(g.members, ch)
                if not g.members:
                    del self.groups[gid]
                    g.worker.send(("destroy", gid))
        entry = (time.monotonic(), c.port, c.sock, c.rtcp_sock)
        if keep:
            worker.idle.append(entry)
        else:  # stopping, a dead worker, or a full pool (which keeps its older pairs, reusable sooner)
            self._discard(entry)

    def set_srtp(self, ch: int, parameters: SrtpParameters | None) -> None:
        c = self.chans.get(ch)
        if c is None:
            raise MediaConfigError(f"channel {ch} is not open")
        if c.srtp == parameters:
            return  # the same keys again keep the running context
        c.srtp = parameters
        c.worker.set(ch, "srtp", parameters)

    def srtp_of(self, ch: int) -> SrtpParameters | None:
        c = self.chans.get(ch)
        return None if c is None else c.srtp

    def port(self, ch: int) -> int:
        return self.chans[ch].port

    def worker_of(self, ch: int) -> int:
        """The slot of the worker running ``ch`` (tests and the admin view)."""
        return self.chans[ch].worker.slot

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.alive]

    # -- statistics ------------------------------------------------------------------------------------------
    @property
    def tick_stats(self) -> TickStats:
        stats = [w.tick_stats for w in self.workers] + [self._dead_ticks]
        return TickStats(sum(s.ticks for s in stats), sum(s.late for s in stats), sum(s.skipped for s in stats),
                         sum(s.send_errors for s in stats), max(s.max_late_ms for s in stats))

    @property
    def ticks(self) -> int:
        return self.tick_stats.ticks

    @property
    def late_ticks(self) -> int:
        return self.tick_stats.late

    @property
    def skipped_ticks(self) -> int:
        return self.tick_stats.skipped

    @property
    def send_errors(self) -> int:
        return self.tick_stats.send_errors

    @property
    def srtp_errors(self) -> int:
        return sum(w.srtp_errors for w in self.workers)

    @property
    def tick_durations(self) -> TickDurations:
        """The workers' tick histograms, summed (a tick is a tick, whichever core ran it)."""
        total = TickDurations()
        for counts in [w.tick_counts for w in self.workers] + [self._dead_counts]:
            for i, n in enumerate(counts[: len(total.counts)]):
                total.counts[i] += n
                total.count += n
        total.total_s = sum(w.tick_total_s for w in self.workers) + self._dead_total_s
        return total

    # -- placement -------------------------------------------------------------------------------------------
    def _component(self, ch: int) -> set[int]:
        """``ch`` and every channel it shares a group or a recording with, transitively (what must stay on one
        worker)."""
        seen = {ch}
        todo = [ch]
        while todo:
            c = self.chans.get(todo.pop())
            if c is None:
                continue
            joined: list[Iterable[int]] = [g.members for gid in c.groups if (g := self.groups.get(gid)) is not None]
            joined += [r.channels for rid in c.recorders if (r := self.recorders.get(rid)) is not None]
            for others in joined:
                for other in others:
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
        return seen

    def _colocate(self, channels: list[int]) -> _Worker:
        """Bring ``channels`` (and what they are joined with) onto one worker and return it."""
        workers = {self.chans[ch].worker for ch in channels}
        if len(workers) == 1:
            return next(iter(workers))
        # the heaviest side stays: most channels, and recordings weigh (a moved recording has a short gap)
        parts: dict[_Worker, set[int]] = {}
        for ch in channels:
            parts.setdefault(self.chans[ch].worker, set()).update(self._component(ch))

        def weight(item: tuple[_Worker, set[int]]) -> tuple[int, int]:
            return (sum(100 if self.chans[c].recorders else 1 for c in item[1] if c in self.chans),
                    -item[0].slot)

        target = max(parts.items(), key=weight)[0]
        for worker, component in parts.items():
            if worker is not target:
                self._move(component, worker, target)
        return target

    def _move(self, component: set[int], source: _Worker, target: _Worker) -> None:
        """Close ``component`` on ``source`` and open it on ``target`` with the same sockets and settings."""
        gids = {gid for ch in component if ch in self.chans for gid in self.chans[ch].groups}
        for gid in gids:
            source.send(("destroy", gid))
        for rid in {rid for ch in component if ch in self.chans for rid in self.chans[ch].recorders}:
            rec = self.recorders.get(rid)
            if rec is None:
                continue
            if rec.handing_over is None:  # its file closes there first; "handed" starts it here (see _messages)
                rec.handing_over = source
                source.send(("handoff_record", rid))
            rec.worker = target
        for ch in component:
            c = self.chans.get(ch)
            if c is None:
                continue
            source.send(("close", ch, False))  # the pair goes with the channel
            source.channels.discard(ch)
            self._open_on(target, ch, c)
            for name, value in (("codec", c.codec_args), ("ptime", c.ptime), ("direction", c.direction),
                                ("detect", c.detect)):
                if value is not None:
                    target.set(ch, name, value)
            if c.player is not None:
                pid, data, mix, blobs = c.player
                for key in blobs:  # (one dropped from the cache since, past 64 MB of prompts: the play fails there)
                    self._send_blob(key, target)
                target.send(("play", pid, ch, data, mix))
            c.relaying = False
            self.moves += 1
        for gid in gids:
            g = self.groups.get(gid)
            if g is not None:
                g.worker = target
                target.send(("group", gid, dict(g.members)))

    # -- sources, pickled once -------------------------------------------------------------------------------
    def _pickle_source(self, source: AudioSource, worker: _Worker) -> tuple[bytes, frozenset[int]]:
        """The source pickled for ``worker``, and the keys of the blobs (big arrays) it refers to."""
        buf = io.BytesIO()
        pickler = _BlobPickler(buf, self, worker)
        try:
            pickler.dump(source)
        except Exception as exc:  # a lambda, a generator, an open file: it cannot cross to another process
            raise MediaConfigError(f"{type(source).__name__} cannot play in a media worker: {exc}") from exc
        return buf.getvalue(), frozenset(pickler.keys)

    def _send_blob(self, key: int, worker: _Worker) -> None:
        array = self._blobs.get(key)
        if array is not None and key not in worker.blobs:
            worker.send(("blob", key, array))
            worker.blobs.add(key)

    def _blob(self, array: npt.NDArray[np.int16], worker: _Worker) -> int:
        key = id(array)  # stable while the array is kept here (the cache holds it)
        if key in self._blobs:
            self._blobs.move_to_end(key)
        else:
            self._blobs[key] = array
            self._blob_bytes += array.nbytes
        self._send_blob(key, worker)
        while self._blob_bytes > BLOB_CACHE_BYTES and len(self._blobs) > 1:
            old, dropped = self._blobs.popitem(last=False)
            self._blob_bytes -= dropped.nbytes
            for w in self.workers:
                if old in w.blobs:
                    w.blobs.discard(old)
                    w.send(("drop_blob", old))
        return key

    # -- what the workers say --------------------------------------------------------------------------------
    def _messages(self, worker: _Worker, messages: list[Any]) -> None:
        for m in messages:
            op = m[0]
            if op == "event":
                self._event(worker, m[1])
            elif op == "relay":
                c = self.chans.get(m[1])
                if c is not None and c.worker is worker:
                    c.relaying = m[2]
            elif op == "bridged":  # ("bridged", group, relaying): a bridge whose decision was asked for
                g = self.groups.get(m[1])
                if g is not None and g.worker is worker and g.decided is not None:
                    decided, g.decided = g.decided, None
                    try:
                        decided(m[2])
                    except Exception as exc:  # the caller's bug must not stop the messages behind it
                        self._notice("worker.error", worker=worker.slot, command="bridged",
                                     error=f"{type(exc).__name__}: {exc}")
            elif op == "stats":
                _, channels, ticks, counts, total_s, srtp_errors = m
                for ch, stats in channels.items():
                    c = self.chans.get(ch)
                    if c is not None and c.worker is worker:
                        c.stats = stats
                worker.tick_stats, worker.tick_counts, worker.tick_total_s = ticks, counts, total_s
                worker.srtp_errors = srtp_errors
            elif op == "frames":
                rec = self.recorders.get(m[1])
                if rec is not None and rec.monitor is not None:
                    try:
                        rec.monitor(m[2])
                    except Exception:  # a monitor's bug must not stop the messages behind it
                        pass
            elif op == "handed":  # a moved recording's file is closed on its old worker: go on with it
                rec = self.recorders.get(m[1])
                if rec is not None and rec.handing_over is worker:
                    self._resume_recording(m[1], rec, m[2])
            elif op == "pong":
                fut = worker.pings.pop(m[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif op == "lost":
                c = self.chans.get(m[1])
                if c is not None and c.worker is worker:
                    self._emit(ChannelLost(m[1], str(m[2])))
            elif op == "ready":
                worker.pid = int(m[1])
                if not worker.ready.done():
                    worker.ready.set_result(None)
            elif op == "error":
                self.recv_errors += 1
                self._notice("worker.error", worker=worker.slot, command=m[1], error=m[2])

    def _resume_recording(self, rid: int, rec: _Recorder, stopped_at: float) -> None:
        rec.handing_over = None
        rec.worker.send(rec.command(rid, stopped_at))

    def _event(self, worker: _Worker, event: MediaEvent) -> None:
        c = self.chans.get(event.channel)
        if c is None or c.worker is not worker:
            return  # a channel that closed or moved meanwhile
        if isinstance(event, PlaybackFinished):
            if c.player is None or c.player[0] != event.player:
                return
            c.player = None
        elif isinstance(event, SourceChanged):
            c.remote = event.address
        self._emit(event)

    def _notice(self, kind: str, **fields: object) -> None:
        if self.on_notice is not None:
            try:
                self.on_notice(kind, fields)
            except Exception:  # the owner's logging must not break media control
                pass

    def _emit(self, event: WorkerEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        else:
            self.events.put_nowait(event)

    def _lost(self, worker: _Worker) -> None:
        """The worker's link closed: its channels are lost; a new worker takes the slot."""
        if not worker.alive:
            return
        worker.alive = False
        t = worker.tick_stats
        d = self._dead_ticks
        self._dead_ticks = TickStats(d.ticks + t.ticks, d.late + t.late, d.skipped + t.skipped,
                                     d.send_errors + t.send_errors, max(d.max_late_ms, t.max_late_ms))
        self._dead_counts = [a + b for a, b in itertools.zip_longest(self._dead_counts, worker.tick_counts,
                                                                      fillvalue=0)]
        self._dead_total_s += worker.tick_total_s
        for fut in worker.pings.values():
            if not fut.done():
                fut.set_result(None)
        worker.pings.clear()
        # its kept pairs died with it; this process's copies are passed again (drained first), oldest first
        self._idle = collections.deque(sorted((*self._idle, *worker.idle), key=lambda entry: entry[0]))
        worker.idle.clear()
        if self._stopping:
            return
        reason = "media_worker_lost"
        lost = sorted(worker.channels)
        code = worker.proc.returncode if worker.proc is not None else None
        self._notice("worker.died", worker=worker.slot, pid=worker.pid, channels=len(lost), returncode=code)
        worker.channels.clear()
        for g in self.groups.values():
            if g.worker is worker:
                g.members.clear()
        for rid, rec in self.recorders.items():  # moving away from it: what it wrote stays, the rest follows
            if rec.handing_over is worker:
                self._resume_recording(rid, rec, time.monotonic())
        for ch in lost:
            self._emit(ChannelLost(ch, reason))
        task = asyncio.get_running_loop().create_task(self._restart(worker.slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, slot: int) -> None:
        delay = restart_delay(self._deaths.setdefault(slot, collections.deque()), time.monotonic())
        await reap(self.workers[slot].proc)

        async def start() -> None:
            self.workers[slot] = _Worker(slot)
            await self._spawn(self.workers[slot])

        if await start_again(start, lambda: self._stopping, delay, (OSError, MediaError)):
            self.restarts += 1
            self._notice("worker.started", worker=slot, pid=self.workers[slot].pid, restarts=self.restarts)


AnyMedia = MediaServer | MediaWorkers
"""What call control drives: media in this process or in workers (the same calls)."""

AnyEngine = MediaEngine | RemoteEngine
