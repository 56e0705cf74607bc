"""The control link between the signalling process and a media worker: framed, batched messages over a Unix
stream socket, with file descriptors (a channel's RTP and RTCP sockets) passed alongside (``SCM_RIGHTS``).

Each end queues messages with :meth:`Link.send`; the queue leaves as one frame (a 4-byte big-endian length, then
a pickled list) at the end of the event-loop iteration, or, when a frame left less than ``min_gap_s`` ago, once
that gap is over: a burst of calls costs one ``sendmsg`` (and one wake-up of the other end), not one per
command, and under load frames carry the commands of several iterations. Descriptors given with a message
travel with the first bytes of its frame and are read into :attr:`Link.fds` (first in, first out) by the
receiver before the frame's messages are handed over. The link sends its own duplicates of them, taken at
:meth:`Link.send`: the frame leaves later, and a channel that ends before it does (its sockets closed, their
numbers perhaps already another socket's) must not make the frame fail or carry the wrong socket.

Both ends are this package's own processes on a private socket pair, so pickle is safe here: nothing else can
write to the socket.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

__all__ = ["FRAME_GAP_S", "MAX_FDS_PER_FRAME", "RESTART_BACKOFF_S", "RESTART_WINDOW_S", "Link", "reap", "restart_delay",
           "run_worker_process", "spawn_worker_process", "start_again", "stop_worker_processes", "wait_started"]

HEADER = 4
MAX_FDS_PER_FRAME = 128  # a frame carrying more descriptors is split: the receiver's ancillary buffer is bounded
RECV_BYTES = 1 << 18
_ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
SOCKET_BUFFER_BYTES = 4 << 20
# Both ends' min_gap_s: a command reaches a worker at most this much later than at the end of its loop iteration
# (a quarter of the 20 ms tick); at 150 calls/s frames to a worker fell from 3.4 to 1.4 a call, back from 2.1 to 1.4.
FRAME_GAP_S = 0.005
RESTART_BACKOFF_S = (0.0, 0.5, 2.0, 5.0)  # the delays before restarting a worker that died 1, 2, 3, 4+ times
RESTART_WINDOW_S = 60.0  # deaths further apart than this do not add up


class Link:
    """One end of a control socket (see the module docstring).

    ``on_messages(list)`` gets each frame's messages in order; ``on_closed()`` runs once when the other end is
    gone (end of file or a socket error) or :meth:`close` was called.
    """

    def __init__(self, sock: socket.socket, on_messages: Callable[[list[Any]], None],
                 on_closed: Callable[[], None], *, min_gap_s: float = 0.0) -> None:
        self.sock = sock
        self.min_gap_s = min_gap_s
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            except OSError:
                pass  # capped by the kernel: the write queue absorbs the rest
        self.on_messages = on_messages
        self.on_closed = on_closed
        self.fds: collections.deque[int] = collections.deque()
        self.closed = False
        self.frames_out = 0
        self.frames_in = 0
        self._loop = asyncio.get_running_loop()
        self._out: list[Any] = []
        self._out_fds: list[int] = []
        self._flush_scheduled = False
        self._last_flush = -1e9  # loop time of the last frame sent
        self._writes: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self.pending_bytes = 0  # framed but not yet written to the socket (the other end is behind)
        self._writing = False
        self._buf = bytearray()
        self._recv_view = memoryview(bytearray(RECV_BYTES))
        self._loop.add_reader(sock.fileno(), self._readable)

    # -- sending -------------------------------------------------------------------------------------------
    def send(self, message: Any, fds: Iterable[int] = ()) -> None:
        """Queue ``message`` for this loop iteration's frame; ``fds`` go with it (the link's own duplicates, so
        the caller may close its descriptors at once)."""
        if self.closed:
            return
        if fds:  # most commands carry none: no list built for them
            dups = [os.dup(fd) for fd in fds]
            if len(self._out_fds) + len(dups) > MAX_FDS_PER_FRAME:
                self.flush()
            self._out_fds.extend(dups)
        self._out.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            wait = self._last_flush + self.min_gap_s - self._loop.time()
            if wait > 0:
                self._loop.call_later(wait, self.flush)
            else:
                self._loop.call_soon(self.flush)

    @property
    def last_queued(self) -> Any:
        """The message queued last for the next frame (None when the queue is empty): until the frame leaves, a
        sender may still add to a message it owns."""
        return self._out[-1] if self._out else None

    def flush(self) -> None:
        """Send the queued messages now, as one frame."""
        self._flush_scheduled = False
        if not self._out or self.closed:
            return
        self._last_flush = self._loop.time()
        body = pickle.dumps(self._out, protocol=pickle.HIGHEST_PROTOCOL)
        self._writes.append((memoryview(len(body).to_bytes(HEADER, "big") + body), self._out_fds))
        self.pending_bytes += HEADER + len(body)
        self._out = []
        self._out_fds = []
        self.frames_out += 1
        if not self._writing:
            self._write()

    def _write(self) -> None:
        writes = self._writes
        while writes:
            data, fds = writes[0]
            try:
                if fds:
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.pending_bytes -= sent
            if fds and sent:
                _close_all(fds)  # the receiver has its own now
            if sent < len(data):
                writes[0] = (data[sent:], [])  # the descriptors left with the first bytes
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self.sock.fileno(), self._write)
                return
            writes.popleft()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.sock.fileno())

    # -- receiving -----------------------------------------------------------------------------------------
    def _readable(self) -> None:
        # Into one buffer kept for the link's life: recvmsg(RECV_BYTES) made a 256 KB bytes object per read and
        # shrank it to the frame's size, ~13 us a read against ~1 us here (a read or two per call, each side).
        view = self._recv_view
        recvmsg_into = self.sock.recvmsg_into
        while not self.closed:
            try:
                size, ancillary, _flags, _addr = recvmsg_into([view], _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self.fds.extend(fds)
            if not size:
                self.close()
                return
            self._buf += view[:size]
            if size < RECV_BYTES:
                break
        self._frames()

    def _frames(self) -> None:
        buf = self._buf
        start = 0
        while len(buf) - start >= HEADER and not self.closed:
            size = int.from_bytes(buf[start:start + HEADER], "big")
            end = start + HEADER + size
            if len(buf) < end:
                break
            messages = pickle.loads(buf[start + HEADER:end])
            start = end
            self.frames_in += 1
            self.on_messages(messages)
        del buf[:start]

    def take_fds(self, count: int) -> list[int]:
        """The next ``count`` descriptors received (they arrive no later than the frame that names them)."""
        if len(self.fds) < count:
            raise RuntimeError(f"expected {count} descriptors, {len(self.fds)} received")
        return [self.fds.popleft() for _ in range(count)]

    # -- the end -------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            if self._writing:
                self._loop.remove_writer(fileno)
        self.sock.close()
        _close_all(self.fds)
        self.fds.clear()
        _close_all(self._out_fds)
        self._out_fds = []
        for _, fds in self._writes:
            _close_all(fds)
        self._writes.clear()
        self.on_closed()


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the processes at the other end of links (media workers, SIP workers) ------------------------------------------
def restart_delay(deaths: collections.deque[float], now: float) -> float:
    """A worker died at ``now`` (recorded in ``deaths``, its slot's recent deaths): how long to wait before
    starting the next (:data:`RESTART_BACKOFF_S`, by the deaths within :data:`RESTART_WINDOW_S`)."""
    deaths.append(now)
    while deaths and deaths[0] < now - RESTART_WINDOW_S:
        deaths.popleft()
    return RESTART_BACKOFF_S[min(len(deaths), len(RESTART_BACKOFF_S)) - 1]


async def start_again(start: Callable[[], Coroutine[Any, Any, None]], stopping: Callable[[], bool], delay: float,
                      errors: tuple[type[Exception], ...],
                      on_error: Callable[[Exception], None] | None = None) -> bool:
    """Run ``start()`` after ``delay``, and again after the longest back-off while it raises one of ``errors``:
    True once it worked, False if ``stopping()`` came first."""
    while not stopping():
        if delay:
            await asyncio.sleep(delay)
        try:
            await start()
        except errors as exc:
            if on_error is not None:
                on_error(exc)
            delay = RESTART_BACKOFF_S[-1]
            continue
        return True
    return False


async def reap(proc: asyncio.subprocess.Process | None) -> None:
    """Kill ``proc`` if it still runs and wait for it (a worker whose link closed may be alive but stuck)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await proc.wait()


class WorkerProcess(Protocol):
    """What :func:`wait_started` and :func:`stop_worker_processes` need of the parent's record of a worker."""

    link: Link | None
    proc: asyncio.subprocess.Process | None
    ready: asyncio.Future[None]
    alive: bool

    def send(self, message: Any) -> None: ...


async def spawn_worker_process(module: str, args: Sequence[str],
                               use_uvloop: bool) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """Start ``python -m module --fd N [args] [--uvloop]`` holding one end of a new control socket pair (its
    descriptor N); returns the process and the other end, for a :class:`Link`."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = [sys.executable, "-m", module, "--fd", str(child.fileno()), *args]
        if use_uvloop:
            argv.append("--uvloop")
        proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(child.fileno(),),
                                                    stdin=asyncio.subprocess.DEVNULL)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return proc, parent


async def wait_started(worker: WorkerProcess, timeout_s: float) -> bool:
    """Wait for ``worker.ready``; past ``timeout_s`` the worker is killed (not taken for a death to restart
    from: its link closes with ``alive`` already False) and False returned."""
    try:
        await asyncio.wait_for(asyncio.shield(worker.ready), timeout_s)
        return True
    except TimeoutError:
        worker.alive = False
        if worker.link is not None:
            worker.link.close()
        await reap(worker.proc)
        return False


async def stop_worker_processes(workers: Sequence[WorkerProcess], timeout_s: float) -> None:
    """Tell each worker to stop, wait for each to exit (killed past ``timeout_s``), close the links."""
    for worker in workers:
        worker.send(("stop",))
        if worker.link is not None:
            worker.link.flush()
    for worker in workers:
        proc = worker.proc
        if proc is None:
            continue
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if worker.link is not None:
            worker.link.close()


def run_worker_process(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    """Run a worker process's ``main()``, under uvloop when asked for and installed.

    SIGINT and SIGTERM are ignored: Ctrl-C reaches the whole process group and a service manager may SIGTERM
    every process of the service, but the parent decides when its workers stop (its "stop", or its end closing
    the control socket)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main())
            return
    asyncio.run(main())
