"""The server's side of its SIP worker processes (``[sip] workers``): start, feed, restart, stop.

Each worker (:mod:`ccpbx.pbx.sip_worker`) gets, for every UDP address the server listens on, a socket bound to
the same address and port in its reuse-port group, made here and passed over the control link, so the group's
order is the server's socket first, then the workers' (:mod:`ccpbx.pbx.sip.steering`). The server tells the
workers which endpoints authenticated (:meth:`SipWorkers.authenticated`) and which had an INVITE admitted
(:meth:`SipWorkers.caller_admitted`, :meth:`SipWorkers.caller_failed`), which addresses are banned and which
bindings they may refresh (:meth:`SipWorkers.lease`, :meth:`SipWorkers.unlease`); the workers send back what
they do not answer themselves (``on_datagram``: the bytes, the sender, when the worker read them, on the
loop's clock, and the worker's own nonce it vouches for, if any; handled as if the server had read them),
each refresh they answered (``on_refreshed``: the address-of-record, binding key, Call-ID, CSeq, new wall-clock
expiry and sender) and, every second, what they did (``on_counts``: the worker's pid and its
:class:`~ccpbx.pbx.sip_worker.Counts`). Each worker process gets its own nonce issuer, so a restarted worker never
accepts the nonces (and replays) of the one before. A worker that dies is restarted with a back-off; meanwhile the
kernel gives its requests to the server.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ccpbx.media.link import (
    Link,
    reap,
    restart_delay,
    spawn_worker_process,
    start_again,
    stop_worker_processes,
    wait_started,
)
from ccpbx.pbx.sip.steering import reuse_port_socket
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip_worker import MAX_KNOWN, Counts, Lease, WorkerSetup

__all__ = ["SipWorkers"]

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class _Worker:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = False
        self.pid = 0

    def send(self, message: Any) -> None:
        if self.link is not None and self.alive:
            self.link.send(message)


class SipWorkers:
    """``count`` worker processes sharing the UDP ``addresses`` (host, port) the server listens on.

    ``known()`` lists the endpoints authenticated so far with when (ms, the loop's clock), and ``bans()`` the
    addresses banned with until when: what a (re)started worker is told first.
    """

    def __init__(self, count: int, addresses: Sequence[tuple[str, int]], setup: WorkerSetup, *,
                 on_datagram: Callable[[bytes, Destination, int, str | None], None],
                 on_counts: Callable[[int, Counts], None],
                 known: Callable[[], Sequence[tuple[Destination, int]]],
                 bans: Callable[[], list[tuple[str, int]]],
                 leases: Callable[[], list[Lease]] = list,
                 on_refreshed: Callable[[str, str, str, int, float, Destination], None] | None = None,
                 on_notice: Callable[[str, dict[str, object]], None] | None = None,
                 uvloop: bool = False) -> None:
        self.count = count
        self.addresses = list(addresses)
        self.setup = replace(setup, sockets=len(self.addresses))
        self.on_datagram = on_datagram
        self.on_counts = on_counts
        self.known = known
        self.bans = bans
        self.leases = leases
        self.on_refreshed = on_refreshed
        self.on_notice = on_notice
        self.uvloop = uvloop
        self.workers: list[_Worker] = []
        self.restarts = 0
        # endpoint -> when the workers were last told it authenticated / had an INVITE admitted (oldest first)
        self._told: collections.OrderedDict[Destination, int] = collections.OrderedDict()
        self._callers: collections.OrderedDict[Destination, int] = collections.OrderedDict()
        self._overloaded = False  # what the workers were last told of the server's backlog
        self._deaths: dict[int, collections.deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.workers = [_Worker(slot) for slot in range(self.count)]
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def _spawn(self, worker: _Worker) -> None:
        sockets = [reuse_port_socket(host, port, socket.AF_INET6 if ":" in host else socket.AF_INET)
                   for host, port in self.addresses]
        try:
            worker.proc, parent = await spawn_worker_process("ccpbx.pbx.sip_worker", [], self.uvloop)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        # partial, not a lambda: called for every frame the worker passes on, and a partial's call stays in C
        worker.link = Link(parent, functools.partial(self._messages, worker), functools.partial(self._lost, worker))
        worker.alive = True
        worker.send(("setup", replace(self.setup, issuer=secrets.token_hex(4))))
        worker.link.send(("sockets",), [s.fileno() for s in sockets])  # the link sends its own copies
        for sock in sockets:
            sock.close()
        worker.send(("known", list(self.known())))
        worker.send(("callers", list(self._callers.items())))
        worker.send(("overloaded", self._overloaded))
        for ip, until in self.bans():
            worker.send(("ban", ip, until))
        worker.send(("lease", self.leases()))
        if not await wait_started(worker, START_TIMEOUT_S):
            raise OSError(f"SIP worker {worker.slot} did not start in {START_TIMEOUT_S:.0f} s")

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await stop_worker_processes(self.workers, STOP_TIMEOUT_S)

    # -- what the workers are told ---------------------------------------------------------------------------
    def authenticated(self, source: Destination, now: int) -> None:
        """``source`` authenticated (digest) at ``now``: told to the workers when new or half its hour old."""
        self._tell(self._told, "known", source, now)

    def caller_admitted(self, source: Destination, now: int) -> None:
        """An INVITE from ``source`` was admitted (digest) at ``now`` and ``source`` is not a trunk's: the
        workers challenge its new calls from now on (told when new or half its hour old)."""
        self._tell(self._callers, "callers", source, now)

    def _tell(self, told: collections.OrderedDict[Destination, int], kind: str, source: Destination,
              now: int) -> None:
        """Tell the workers ``(kind, [(source, now)])`` unless they heard it of ``source`` within half the hour
        they keep it; ``told`` remembers when, as many endpoints as a worker keeps (MAX_KNOWN), oldest first."""
        if source[0] != "udp":
            return
        last = told.pop(source, None)
        if last is not None and now - last < self.setup.known_ms // 2:
            told[source] = last
            return
        told[source] = now
        while len(told) > MAX_KNOWN:
            told.popitem(last=False)
        for worker in self.workers:
            worker.send((kind, [(source, now)]))

    def overloaded(self, overloaded: bool) -> None:
        """The server is (no longer) in a sustained backlog: the workers stop (start again) challenging new
        calls. Told on a change only."""
        if overloaded == self._overloaded:
            return
        self._overloaded = overloaded
        for worker in self.workers:
            worker.send(("overloaded", overloaded))

    def caller_failed(self, source: Destination) -> None:
        """A credential from ``source`` failed: its new calls come to the server again (lock-out, counting)."""
        if self._callers.pop(source, None) is not None:
            for worker in self.workers:
                worker.send(("forget_caller", source))

    def lease(self, lease: Lease) -> None:
        """The workers may refresh ``lease``'s binding themselves (it replaces the address-of-record's lease)."""
        for worker in self.workers:
            worker.send(("lease", [lease]))

    def unlease(self, aors: list[str] | None) -> None:
        """The leases of ``aors`` (None: all) end: their refreshes come here again."""
        for worker in self.workers:
            worker.send(("unlease", aors))

    def banned(self, ip: str, until: int) -> None:
        for worker in self.workers:
            worker.send(("ban", ip, until))

    def unbanned(self, ip: str) -> None:
        for worker in self.workers:
            worker.send(("unban", ip))

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.alive]

    # -- from the workers ------------------------------------------------------------------------------------
    def _messages(self, worker: _Worker, messages: list[Any]) -> None:
        for message in messages:
            kind = message[0]
            if kind == "fwd":
                self.on_datagram(message[1], message[2], message[3], message[4])
            elif kind == "refreshed":
                if self.on_refreshed is not None:
                    self.on_refreshed(message[1], message[2], message[3], message[4], message[5], message[6])
            elif kind == "counts":
                self.on_counts(worker.pid, Counts(*message[1]))
            elif kind == "ready":
                worker.pid = message[1]
                if not worker.ready.done():
                    worker.ready.set_result(None)

    def _lost(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        if self._stopping:
            return
        code = worker.proc.returncode if worker.proc is not None else None
        self._notice("sip.worker.died", worker=worker.slot, pid=worker.pid, returncode=code)
        task = asyncio.get_running_loop().create_task(self._restart(worker.slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, slot: int) -> None:
        delay = restart_delay(self._deaths.setdefault(slot, collections.deque()), time.monotonic())
        await reap(self.workers[slot].proc)

        async def start() -> None:
            self.workers[slot] = _Worker(slot)
            await self._spawn(self.workers[slot])

        def failed(exc: Exception) -> None:
            self._notice("sip.worker.start_failed", worker=slot, error=str(exc))

        if await start_again(start, lambda: self._stopping, delay, (OSError,), failed):
            self.restarts += 1
            self._notice("sip.worker.started", worker=slot, pid=self.workers[slot].pid, restarts=self.restarts)

    def _notice(self, kind: str, **fields: object) -> None:
        if self.on_notice is not None:
            self.on_notice(kind, fields)
