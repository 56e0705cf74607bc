"""Media in worker processes: real workers, real RTP over loopback, a worker killed mid-call."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.engine import DtmfReceived, PlaybackFinished
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.telephone_event import TelephoneEvent
from ccpbx.media.transport import PortAllocator
from ccpbx.media.workers import ChannelLost, MediaWorkers, WorkerEvent

HOST = "127.0.0.1"
WAIT_S = 10.0


class Phone:
    """A UDP socket that sends and receives RTP, as a phone would."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.seq = 0
        self.ssrc = 0x1234 + self.addr[1]

    def send(self, port: int, payload: bytes, pt: int = 0, marker: bool = False) -> None:
        self.seq += 1
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, self.seq & 0xFFFF, self.seq * 160,
                             self.ssrc)
        self.sock.sendto(header + payload, (HOST, port))

    def drain(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(2048))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()


async def until(predicate, what: str, timeout: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def media() -> AsyncIterator[tuple[MediaWorkers, list[WorkerEvent]]]:
    events: list[WorkerEvent] = []
    workers = MediaWorkers(HOST, PortAllocator(30000, 39998), 2, on_event=events.append)
    await workers.start()
    try:
        yield workers, events
    finally:
        await workers.stop()


async def talk(a: Phone, a_port: int, b: Phone, b_port: int, frames: int = 25) -> tuple[int, int]:
    """Send ``frames`` packets each way, 20 ms apart; count what each phone received."""
    got_a = got_b = 0
    tone = ulaw_encode((np.sin(np.arange(160) * 0.3) * 8000).astype(np.int16)).tobytes()
    for _ in range(frames):
        a.send(a_port, tone)
        b.send(b_port, tone)
        await asyncio.sleep(0.02)
        got_a += len(a.drain())
        got_b += len(b.drain())
    await asyncio.sleep(0.1)
    return got_a + len(a.drain()), got_b + len(b.drain())


async def test_a_bridge_on_a_worker_carries_audio_both_ways(media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    workers, _ = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMU, b.addr, near=ca.channel)
        assert workers.worker_of(ca.channel) == workers.worker_of(cb.channel)  # a call's legs on one worker
        workers.engine.bridge(ca.channel, cb.channel)
        got_a, got_b = await talk(a, ca.port, b, cb.port)
        assert got_a >= 20 and got_b >= 20
        await until(lambda: workers.engine.relaying(ca.channel), "the relay state from the worker")
        await until(lambda: workers.engine.stats(ca.channel).packets_in >= 20, "per-channel statistics")
        assert workers.tick_stats.ticks > 0 and workers.tick_durations.count > 0
    finally:
        a.close()
        b.close()


async def test_bridging_channels_of_two_workers_moves_one_and_keeps_its_ports(
        media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    workers, _ = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMA, b.addr)
        assert workers.worker_of(ca.channel) != workers.worker_of(cb.channel)  # least loaded: the other worker
        workers.engine.set_codec(cb.channel, Codec.PCMA, 101)
        gid = workers.engine.bridge(ca.channel, cb.channel)
        assert workers.worker_of(ca.channel) == workers.worker_of(cb.channel)
        assert workers.moves == 1 and workers.engine.members(gid).keys() == {ca.channel, cb.channel}
        tone_a = ulaw_encode(np.full(160, 3000, dtype=np.int16)).tobytes()
        for _ in range(25):  # transcoded PCMU <-> PCMA through the mix, on the ports the phones already know
            a.send(ca.port, tone_a)
            b.send(cb.port, bytes(160), pt=8)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        to_b = b.drain()
        assert len(to_b) >= 15 and all(p[1] & 0x7F == 8 for p in to_b)  # B hears A, in PCMA
        assert len(a.drain()) >= 15
    finally:
        a.close()
        b.close()


async def test_players_events_and_monitored_recordings(media: tuple[MediaWorkers, list[WorkerEvent]],
                                                       tmp_path: Path) -> None:
    workers, events = media
    a = Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        prompt = (np.sin(np.arange(16000) * 0.2) * 6000).astype(np.int16)  # 2 s: big enough to go as a blob
        pid = workers.engine.play(ca.channel, PromptPlayer(prompt))
        await until(lambda: any(isinstance(e, PlaybackFinished) and e.player == pid for e in events),
                    "the prompt to finish")
        assert len(a.drain()) >= 80  # most of the 100 frames of prompt reached the phone (a busy box skips ticks)
        frames: list[np.ndarray] = []
        path = tmp_path / "said.wav"
        rid = workers.engine.record([ca.channel], path, monitor=frames.append)
        for _ in range(10):
            a.send(ca.port, ulaw_encode(np.full(160, 1000, dtype=np.int16)).tobytes())
            await asyncio.sleep(0.02)
        await until(lambda: len(frames) >= 5, "monitored frames")
        workers.engine.stop_record(rid)
        await workers.sync()  # the worker has closed the file
        with wave.open(str(path)) as w:
            assert w.getnframes() >= 5 * 160
        for digit_ts in range(3):  # RFC 4733 "5": start, continuation, end
            event = TelephoneEvent(5, end=digit_ts == 2, volume=10, duration=160 * (digit_ts + 1))
            a.send(ca.port, event.serialize(), pt=101, marker=digit_ts == 0)
        await until(lambda: any(isinstance(e, DtmfReceived) and e.digit == "5" for e in events), "a DTMF event")
        with pytest.raises(MediaConfigError, match="cannot play in a media worker"):
            workers.engine.play(ca.channel, LambdaSource())
        moh = MusicOnHold(prompt)
        workers.engine.play(ca.channel, moh)
        workers.engine.play(ca.channel, MusicOnHold(prompt))  # the same array: sent to the worker once
        assert sum(1 for w in workers.workers for _ in w.blobs) == 1
    finally:
        a.close()


class LambdaSource:
    def __init__(self) -> None:
        self.next = lambda: None

    def read_frame(self) -> None:
        return None


async def test_a_killed_worker_loses_only_its_channels_and_is_replaced(
        media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    workers, events = media
    ca = await workers.open_channel(Codec.PCMU, (HOST, 9))
    cb = await workers.open_channel(Codec.PCMU, (HOST, 9))
    victim = workers.worker_of(ca.channel)
    assert workers.worker_of(cb.channel) != victim
    pid = workers.workers[victim].pid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: any(isinstance(e, ChannelLost) for e in events), "the lost channel")
    lost = [e for e in events if isinstance(e, ChannelLost)]
    assert [e.channel for e in lost] == [ca.channel] and lost[0].reason == "media_worker_lost"
    await until(lambda: workers.restarts == 1 and workers.workers[victim].alive, "a new worker")
    assert workers.workers[victim].pid != pid
    workers.close_channel(ca.channel)
    a, b = Phone(), Phone()
    try:  # the new worker carries calls
        c1 = await workers.open_channel(Codec.PCMU, a.addr)
        c2 = await workers.open_channel(Codec.PCMU, b.addr, near=c1.channel)
        workers.engine.bridge(c1.channel, c2.channel)
        got_a, got_b = await talk(a, c1.port, b, c2.port)
        assert got_a >= 20 and got_b >= 20
    finally:
        a.close()
        b.close()
