"""A media worker process: one :class:`~ccpbx.media.transport.MediaServer` (engine, sockets, its own 20 ms tick)
run on behalf of the signalling process, which commands it over a :class:`~ccpbx.media.link.Link`.

Started by :class:`~ccpbx.media.workers.MediaWorkers` as ``python -m ccpbx.media.worker --fd N``. The
signalling process binds each channel's RTP/RTCP sockets and passes them here (a closed channel's pair is kept
here when asked, and reopened by port for a later channel: no descriptor passing, no new transports); it names
channels, groups, players and recorders with its own ids, which this process maps to its engine's. What happens
here goes back as messages: engine events (with those ids), relay changes, whether a bridge is relayed (when
asked, once decided), per-channel statistics once a second,
the frames of monitored recordings, and the acknowledgement that a recording's file is closed.

The worker ignores SIGINT and SIGTERM (a Ctrl-C or a service stop reaches every process; the signalling process
decides) and exits when its control socket closes: a signalling process that dies takes its workers with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import pickle
import socket
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import DtmfReceived, MediaEngine, MediaEvent, PlaybackFinished, RtpTimeout, SourceChanged
from .errors import MediaError
from .link import FRAME_GAP_S, Link, run_worker_process
from .mixer import Role, RoleKind
from .recorder import WavRecorder
from .source import FRAME_SAMPLES, SAMPLE_RATE
from .srtp import SrtpParameters
from .transport import MediaServer, PortAllocator

STATS_INTERVAL_S = 1.0
MAX_HANDOVER_GAP_S = 5.0  # silence written at most for a recording's hand-over (a worker that hung meanwhile)


class BlobUnpickler(pickle.Unpickler):
    """Loads a player's source whose large arrays (a prompt, music on hold) came once as blobs."""

    def __init__(self, data: bytes, blobs: dict[int, npt.NDArray[np.int16]]) -> None:
        super().__init__(io.BytesIO(data))
        self.blobs = blobs

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self.blobs[int(pid)]
        except (KeyError, TypeError, ValueError):
            raise pickle.UnpicklingError(f"unknown blob {pid!r}") from None


class Worker:
    def __init__(self, ctl: socket.socket, host: str) -> None:
        self.server = MediaServer(host, PortAllocator(10000, 10002), on_event=self._event,
                                  engine=MediaEngine(recorder_factory=self._recorder))
        self.engine = self.server.engine
        self.engine.on_relay_change = self._relay_changed
        self.link = Link(ctl, self._messages, self._closed, min_gap_s=FRAME_GAP_S)
        self.stopping = False
        self.queue: asyncio.Queue[list[Any] | None] = asyncio.Queue()  # None: the control socket closed
        self.lch: dict[int, int] = {}  # signalling's channel id -> engine channel
        self.gch: dict[int, int] = {}  # engine channel -> signalling's id
        self.groups: dict[int, int] = {}  # signalling's group id -> engine group
        self.players: dict[int, tuple[int, int]] = {}  # engine channel -> (engine player, signalling's player)
        self.recorders: dict[int, int] = {}  # signalling's recorder id -> engine recorder
        self.blobs: dict[int, npt.NDArray[np.int16]] = {}
        self.resuming: dict[str, float] = {}  # path -> when another worker closed it (a recording moved here)

    # -- commands ------------------------------------------------------------------------------------------
    def _messages(self, messages: list[Any]) -> None:
        self.queue.put_nowait(messages)

    async def run(self) -> None:
        await self.server.start()
        stats = asyncio.get_running_loop().create_task(self._stats())
        self.link.send(("ready", os.getpid()))
        try:
            while not self.stopping:
                batch = await self.queue.get()
                if batch is None:
                    break
                for message in batch:
                    try:
                        if message[0] == "open":  # the one command that waits (a new transport)
                            await self._open(message)
                        else:
                            self._command(message)
                    except Exception as exc:  # a stale id (the channel closed meanwhile) or a bad source
                        self.link.send(("error", str(message[0]), f"{type(exc).__name__}: {exc}"))
        finally:
            stats.cancel()
            await self.server.stop()

    async def _open(self, m: tuple[Any, ...]) -> None:
        _, gch, codec, remote, te_pt, srtp = m
        fds = self.link.take_fds(2)
        sock = socket.socket(fileno=fds[0])
        rtcp = socket.socket(fileno=fds[1])
        try:
            ch = await self.server.adopt_channel(sock, rtcp, codec, remote, te_pt)
        except Exception as exc:
            self.link.send(("lost", gch, f"{type(exc).__name__}: {exc}"))
            return
        self._opened(gch, ch, srtp)

    def _command(self, m: tuple[Any, ...]) -> None:
        """Carry out every command but "open" (:meth:`_open`), the most frequent first."""
        op = m[0]
        eng = self.engine
        if op == "set":
            self._set(self.lch[m[1]], m[2])
        elif op == "reopen":  # a pair this worker kept (see "close"): no descriptors, no new transports
            _, gch, port, codec, remote, te_pt, srtp = m
            stale = self.server.stale_locks
            try:
                ch = self.server.reopen_kept(port, codec, remote, te_pt)
            except Exception as exc:
                self.link.send(("lost", gch, f"{type(exc).__name__}: {exc}"))
                return
            if self.server.stale_locks != stale:  # a bug to find, made harmless: say so where it is read
                self.link.send(("error", "reopen", f"the kept pair on port {port} was still connected to "
                                f"{self.server.last_stale_lock}: disconnected before reuse"))
            self._opened(gch, ch, srtp)
        elif op == "close":  # ("close", channel, keep): keep the pair for a "reopen", or close it
            closing = self.lch.pop(m[1], None)
            if closing is not None:
                self.gch.pop(closing, None)
                self.players.pop(closing, None)
                self.server.close_channel(closing, keep=m[2])
        elif op == "send_dtmf":
            eng.send_dtmf(self.lch[m[1]], m[2], m[3])
        elif op == "group":  # ("group", group, members[, report]): report: say whether a bridge is relayed
            ggid, members = m[1], m[2]
            speakers = [self.lch[ch] for ch, role in members.items() if role.kind is RoleKind.SPEAKER]
            gid = eng.conference(speakers)
            self.groups[ggid] = gid
            for ch, role in members.items():
                if role.kind is not RoleKind.SPEAKER:
                    eng.add_to_conference(gid, self.lch[ch], self._role(role))
            if len(m) > 3 and m[3]:  # decided as the group was made: said at once
                self.link.send(("bridged", ggid, any(eng.relaying(ch) for ch in eng.members(gid))))
        elif op == "add":
            eng.add_to_conference(self.groups[m[1]], self.lch[m[2]], self._role(m[3]))
        elif op == "remove":
            eng.remove_from_conference(self.groups[m[1]], self.lch[m[2]])
        elif op == "destroy":
            dissolved = self.groups.pop(m[1], None)
            if dissolved is not None:
                with contextlib.suppress(MediaError):  # emptied by closed channels already
                    eng.destroy(dissolved)
        elif op == "play":
            _, gpid, gch, data, mix = m
            ch = self.lch[gch]
            source = BlobUnpickler(data, self.blobs).load()
            self.players[ch] = (eng.play(ch, source, mix=mix), gpid)
        elif op == "stop_play":
            ch = self.lch[m[1]]
            self.players.pop(ch, None)
            eng.stop_play(ch)
        elif op == "record":
            _, grid, channels, path, stereo, heard, monitored, resume_at = m
            if resume_at is not None:
                self.resuming[path] = resume_at
            monitor = None
            if monitored:
                def monitor(frame: npt.NDArray[np.int16], grid: int = grid) -> None:
                    self.link.send(("frames", grid, frame.copy()))
            try:
                self.recorders[grid] = eng.record([self.lch[c] for c in channels], path, stereo=stereo,
                                                  heard=[self.lch[c] for c in heard], monitor=monitor)
            finally:
                self.resuming.pop(path, None)
        elif op == "stop_record":
            rid = self.recorders.pop(m[1], None)
            if rid is not None:  # the file is closed here; MediaWorkers.sync() waits for this point
                eng.stop_record(rid)
        elif op == "handoff_record":  # the recording moves to another worker: close its file here, say when
            rid = self.recorders.pop(m[1], None)
            if rid is not None:
                eng.stop_record(rid)
            self.link.send(("handed", m[1], time.monotonic()))
        elif op == "blob":
            self.blobs[m[1]] = m[2]
        elif op == "drop_blob":
            self.blobs.pop(m[1], None)
        elif op == "config":
            eng.rtp_timeout_ms = m[1]
        elif op == "ping":
            self.link.send(("pong", m[1]))
        elif op == "stop":
            self.stopping = True
        else:
            raise MediaError(f"unknown command {op!r}")

    def _set(self, ch: int, settings: dict[str, Any]) -> None:
        """A channel's settings given together (see :meth:`MediaWorkers.set`), decided on once."""
        eng = self.engine
        eng.hold_topology()
        try:
            for name, value in settings.items():
                if name == "codec":
                    eng.set_codec(ch, value[0], value[1], also=value[2])
                elif name == "remote":
                    eng.set_remote(ch, value)
                elif name == "detect":
                    eng.enable_dtmf_detection(ch, value[0], unpaired_only=value[1])
                elif name == "restart_timeout":
                    eng.restart_rtp_timeout(ch)
                elif name == "direction":
                    eng.set_direction(ch, value)
                elif name == "ptime":
                    eng.set_send_ptime(ch, value)
                elif name == "srtp":
                    self.server.set_srtp(ch, value)
                else:
                    raise MediaError(f"unknown setting {name!r}")
        finally:
            eng.release_topology()

    def _opened(self, gch: int, ch: int, srtp: SrtpParameters | None) -> None:
        self.lch[gch] = ch
        self.gch[ch] = gch
        if srtp is not None:
            self.server.set_srtp(ch, srtp)

    def _recorder(self, path: str | os.PathLike[str], channels: int) -> WavRecorder:
        """A recording's file: new, or one another worker wrote, gone on with after silence for the hand-over."""
        stopped_at = self.resuming.get(os.fspath(path))
        if stopped_at is None:
            return WavRecorder(path, channels)
        rec = WavRecorder(path, channels, append=True)
        gap = min(max(time.monotonic() - stopped_at, 0.0), MAX_HANDOVER_GAP_S)
        samples = int(gap * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
        if samples:
            rec.write(np.zeros((samples, channels) if channels == 2 else samples, dtype=np.int16))
        return rec

    def _role(self, role: Role) -> Role:
        if role.kind is RoleKind.WHISPER and role.target is not None:
            return Role.WHISPER_TO(self.lch[role.target])
        return role

    # -- what goes back ------------------------------------------------------------------------------------
    def _event(self, event: MediaEvent) -> None:
        gch = self.gch.get(event.channel)
        if gch is None:
            return
        out: MediaEvent
        if isinstance(event, PlaybackFinished):
            entry = self.players.get(event.channel)
            if entry is None or entry[0] != event.player:
                return
            del self.players[event.channel]
            out = PlaybackFinished(gch, entry[1])
        elif isinstance(event, DtmfReceived):
            out = DtmfReceived(gch, event.digit, event.source)
        elif isinstance(event, RtpTimeout):
            out = RtpTimeout(gch)
        elif isinstance(event, SourceChanged):
            out = SourceChanged(gch, event.address)
        else:
            return
        self.link.send(("event", out))

    def _relay_changed(self, ch: int, relaying: bool) -> None:
        gch = self.gch.get(ch)
        if gch is not None:
            self.link.send(("relay", gch, relaying))

    async def _stats(self) -> None:
        server = self.server
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            channels = {}
            for ch, gch in self.gch.items():
                with contextlib.suppress(MediaError):
                    channels[gch] = self.engine.stats(ch)
            durations = server.tick_durations
            self.link.send(("stats", channels, server.tick_stats, list(durations.counts), durations.total_s,
                            server.srtp_errors))

    def _closed(self) -> None:
        self.queue.put_nowait(None)


async def _main(fd: int, host: str) -> None:
    ctl = socket.socket(fileno=fd)
    worker = Worker(ctl, host)
    await worker.run()
    worker.link.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccpbx.media.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the control socket's descriptor (inherited)")
    parser.add_argument("--host", default="0.0.0.0", help="the RTP address (for the socket family only)")
    parser.add_argument("--uvloop", action="store_true", help="run under uvloop")
    args = parser.parse_args(argv)
    run_worker_process(lambda: _main(args.fd, args.host), args.uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
