"""Media in worker processes: real workers, real RTP over loopback, a worker killed mid-call."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ccpbx.media import workers as workers_module
from ccpbx.media.engine import Direction, DtmfReceived, PlaybackFinished
from ccpbx.media.errors import MediaConfigError
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.prompts import MusicOnHold, PromptPlayer
from ccpbx.media.telephone_event import TelephoneEvent
from ccpbx.media.transport import PortAllocator
from ccpbx.media.workers import ChannelLost, MediaWorkers, OpenedChannel, WorkerEvent

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


def record_sends(worker: Any) -> list[str]:
    """The kinds of the commands sent to ``worker`` from now on (they still go to it)."""
    sent: list[str] = []
    original = worker.send

    def recording_send(message: tuple[object, ...], fds: object = ()) -> None:
        sent.append(str(message[0]))
        original(message, fds)

    worker.send = recording_send
    return sent


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


async def bridge_and_talk(workers: MediaWorkers, a: Phone, a_ch: OpenedChannel, b: Phone, b_ch: OpenedChannel) -> None:
    """Bridge two opened channels and check that each phone hears the other (at least 20 of 25 packets)."""
    workers.engine.bridge(a_ch.channel, b_ch.channel)
    got_a, got_b = await talk(a, a_ch.port, b, b_ch.port)
    assert got_a >= 20 and got_b >= 20


async def test_a_bridge_on_a_worker_carries_audio_both_ways(media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    workers, _ = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMU, b.addr, near=ca.channel)
        assert workers.worker_of(ca.channel) == workers.worker_of(cb.channel)  # a call's legs on one worker
        await bridge_and_talk(workers, a, ca, b, cb)
        await until(lambda: workers.engine.relaying(ca.channel), "the relay state from the worker")
        await until(lambda: workers.engine.stats(ca.channel).packets_in >= 20, "per-channel statistics")
        assert workers.tick_stats.ticks > 0 and workers.tick_durations.count > 0
    finally:
        a.close()
        b.close()


async def test_a_bridge_reports_whether_its_worker_relays_it(media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    """``bridge(..., decided=)``: the worker says what it decided, without a round trip of its own; the report of a
    bridge whose channels closed before it came is not passed on."""
    workers, _ = media
    phones = [Phone() for _ in range(6)]
    try:
        heard: dict[str, list[bool]] = {"same": [], "transcoded": [], "gone": []}
        ca = await workers.open_channel(Codec.PCMU, phones[0].addr)
        cb = await workers.open_channel(Codec.PCMU, phones[1].addr, near=ca.channel)
        workers.engine.bridge(ca.channel, cb.channel, decided=heard["same"].append)
        cc = await workers.open_channel(Codec.PCMU, phones[2].addr)
        cd = await workers.open_channel(Codec.PCMA, phones[3].addr, near=cc.channel)
        workers.engine.bridge(cc.channel, cd.channel, decided=heard["transcoded"].append)
        ce = await workers.open_channel(Codec.PCMU, phones[4].addr)
        cf = await workers.open_channel(Codec.PCMU, phones[5].addr, near=ce.channel)
        workers.engine.bridge(ce.channel, cf.channel, decided=heard["gone"].append)
        workers.close_channel(ce.channel)  # the same loop iteration: one batch for the worker
        workers.close_channel(cf.channel)
        await until(lambda: heard["same"] and heard["transcoded"], "the workers' reports")
        await workers.sync()
        assert heard == {"same": [True], "transcoded": [False], "gone": []}
        assert workers.engine.relaying(ca.channel) and not workers.engine.relaying(cc.channel)
    finally:
        for phone in phones:
            phone.close()


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


async def test_stop_play_stops_what_plays_and_sends_nothing_when_nothing_plays(
        media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    # Every call asks to stop a player when it bridges; most have none: that must cost no command to the worker.
    workers, events = media
    a = Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        worker = workers.workers[workers.worker_of(ca.channel)]
        sent = record_sends(worker)
        workers.engine.stop_play(ca.channel)  # nothing plays
        assert sent == []
        music = (np.sin(np.arange(8000) * 0.2) * 6000).astype(np.int16)
        workers.engine.play(ca.channel, MusicOnHold(music))
        await until(lambda: len(a.drain()) > 0, "music on hold")
        workers.engine.stop_play(ca.channel)
        assert sent[-1] == "stop_play"
        await workers.sync()
        await asyncio.sleep(0.06)
        a.drain()  # what left before the stop
        await asyncio.sleep(0.2)
        assert a.drain() == []  # stopped: the phone sends nothing, so nothing goes to it
        pid = workers.engine.play(ca.channel, PromptPlayer(music[:800]))  # 100 ms
        await until(lambda: any(isinstance(e, PlaybackFinished) and e.player == pid for e in events),
                    "the prompt to finish")
        before = len(sent)
        workers.engine.stop_play(ca.channel)  # it finished: the worker has nothing to stop
        assert len(sent) == before
    finally:
        a.close()


async def test_setting_what_a_channel_already_has_sends_the_worker_nothing(
        media: tuple[MediaWorkers, list[WorkerEvent]]) -> None:
    # A call's SDP sets a fresh channel's codec, packet time, direction and detection to what it opened with: no
    # command for those; a real change is still sent, and a bridge still carries audio with the defaults kept.
    workers, _events = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMU, b.addr, near=ca.channel)
        worker = workers.workers[workers.worker_of(ca.channel)]
        sent = record_sends(worker)
        frame = worker.link._out  # this loop iteration's frame (cb's open may be in it): no await until the bridge
        before = len(frame)
        eng = workers.engine
        for ch in (ca.channel, cb.channel):
            eng.set_codec(ch, Codec.PCMU, 101)
            eng.set_send_ptime(ch, None)
            eng.set_send_ptime(ch, 20)
            eng.set_direction(ch, Direction.SENDRECV)
            eng.enable_dtmf_detection(ch, False)
        assert sent == [] and frame[before:] == []
        eng.set_remote(ca.channel, a.addr)  # re-arms latching: always sent
        eng.set_direction(ca.channel, Direction.SENDRECV)  # restarts the RTP timeout: sent after the first
        eng.set_codec(cb.channel, Codec.PCMU, 101, also=((8, Codec.PCMA),))
        eng.set_send_ptime(cb.channel, 30)
        eng.enable_dtmf_detection(cb.channel, True, unpaired_only=True)
        eng.set_codec(cb.channel, Codec.PCMU, 101, also=((8, Codec.PCMA),))  # the same again: nothing
        eng.set_send_ptime(cb.channel, None)  # a change again: the queued command takes the newer value
        # one command per channel, with every setting given in a row (sent through the link, not worker.send)
        assert sent == [] and frame[before:] == [
            ("set", ca.channel, {"remote": a.addr, "direction": Direction.SENDRECV}),
            ("set", cb.channel, {"codec": (Codec.PCMU, 101, ((8, Codec.PCMA),)), "ptime": None,
                                 "detect": (True, True)}),
        ]
        await bridge_and_talk(workers, a, ca, b, cb)
        other_sent = record_sends(next(w for w in workers.workers if w is not worker))
        await workers.sync(ca.channel)  # one round trip, to the worker running the channel
        assert sent[-1] == "ping" and "ping" not in other_sent
        await workers.sync()
        assert other_sent == ["ping"]
    finally:
        a.close()
        b.close()


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
        await bridge_and_talk(workers, a, c1, b, c2)
    finally:
        a.close()
        b.close()


async def test_a_closed_channels_pair_stays_in_its_worker_and_a_later_channel_reopens_it(
        media: tuple[MediaWorkers, list[WorkerEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "POOL_QUARANTINE_S", 0.0)
    workers, events = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMU, b.addr, near=ca.channel)
        slot = workers.worker_of(ca.channel)
        workers.close_channel(ca.channel)
        workers.close_channel(cb.channel)
        assert workers.pooled == 2 and len(workers.workers[slot].idle) == 2 and workers.ports.in_use == 2
        c1 = await workers.open_channel(Codec.PCMU, a.addr)  # least loaded: a tie, so the first worker again
        c2 = await workers.open_channel(Codec.PCMU, b.addr, near=c1.channel)
        assert workers.worker_of(c1.channel) == slot and workers.worker_of(c2.channel) == slot
        assert {c1.port, c2.port} == {ca.port, cb.port} and workers.pool_reused == 2 and workers.pooled == 0
        await bridge_and_talk(workers, a, c1, b, c2)
        await workers.sync()
        assert workers.recv_errors == 0 and not [e for e in events if isinstance(e, ChannelLost)]
    finally:
        a.close()
        b.close()


async def test_with_every_port_taken_a_worker_reopens_a_pair_before_its_quarantine_is_over() -> None:
    """As in one process: a full range takes a parked pair early (the worker's own, reopened in place) instead of
    failing the call; with none parked the call still gets PortsExhaustedError."""
    from ccpbx.media.transport import PortsExhaustedError

    workers = MediaWorkers(HOST, PortAllocator(31000, 31003), 1)  # two pairs
    await workers.start()
    a, b = Phone(), Phone()
    try:
        first = await workers.open_channel(Codec.PCMU, (HOST, 9))
        second = await workers.open_channel(Codec.PCMU, b.addr, near=first.channel)
        workers.close_channel(first.channel)
        assert workers.pooled == 1 and workers.ports.available == 0
        early = await workers.open_channel(Codec.PCMU, a.addr, near=second.channel)
        assert early.port == first.port and workers.pool_reused == workers.pool_early_reused == 1
        with pytest.raises(PortsExhaustedError):
            await workers.open_channel(Codec.PCMU, (HOST, 9))
        # the reopened pair carries the new channel's audio (the worker took it back from its kept pairs)
        await bridge_and_talk(workers, a, early, b, second)
    finally:
        a.close()
        b.close()
        await workers.stop()


async def test_the_pairs_a_dead_worker_kept_are_passed_again_to_a_live_one(
        media: tuple[MediaWorkers, list[WorkerEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "POOL_QUARANTINE_S", 0.0)
    workers, _ = media
    ca = await workers.open_channel(Codec.PCMU, (HOST, 9))
    cb = await workers.open_channel(Codec.PCMU, (HOST, 9), near=ca.channel)
    slot = workers.worker_of(ca.channel)
    workers.close_channel(ca.channel)
    workers.close_channel(cb.channel)
    await workers.sync()
    os.kill(workers.workers[slot].pid, signal.SIGKILL)
    await until(lambda: workers.restarts == 1 and workers.workers[slot].alive, "a new worker")
    assert workers.pooled == 2 and not workers.workers[slot].idle  # this process's copies are still bound
    a, b = Phone(), Phone()
    try:
        c1 = await workers.open_channel(Codec.PCMU, a.addr)
        c2 = await workers.open_channel(Codec.PCMU, b.addr, near=c1.channel)
        assert {c1.port, c2.port} == {ca.port, cb.port} and workers.pool_reused == 2
        await bridge_and_talk(workers, a, c1, b, c2)
    finally:
        a.close()
        b.close()
    await workers.stop()
    assert workers.pooled == 0 and workers.ports.in_use == 0


async def test_a_recording_moves_with_its_channel_and_goes_on_in_the_same_file(
        media: tuple[MediaWorkers, list[WorkerEvent]], tmp_path: Path) -> None:
    workers, _ = media
    a, b = Phone(), Phone()
    try:
        ca = await workers.open_channel(Codec.PCMU, a.addr)
        cb = await workers.open_channel(Codec.PCMU, b.addr)
        assert (workers.worker_of(ca.channel), workers.worker_of(cb.channel)) == (0, 1)
        workers.engine.record([ca.channel], tmp_path / "a.wav")
        frames: list[np.ndarray] = []
        rid = workers.engine.record([cb.channel], tmp_path / "b.wav", monitor=frames.append)
        quiet, loud = (ulaw_encode(np.full(160, level, dtype=np.int16)).tobytes() for level in (1000, 6000))
        for _ in range(15):
            b.send(cb.port, quiet)
            await asyncio.sleep(0.02)
        await until(lambda: len(frames) >= 10, "frames recorded on the first worker")
        workers.engine.bridge(ca.channel, cb.channel)  # as heavy as each other: the second worker's side moves
        assert workers.worker_of(cb.channel) == 0 and workers.moves == 1
        for _ in range(15):
            b.send(cb.port, loud)
            await asyncio.sleep(0.02)
        await until(lambda: sum(1 for f in frames if f.max() > 4000) >= 10, "frames recorded on the new worker")
        workers.engine.stop_record(rid)
        await workers.sync()
        assert workers.recv_errors == 0
        with wave.open(str(tmp_path / "b.wav")) as w:
            said = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        quiet_at = np.flatnonzero((said > 500) & (said < 1500))
        loud_at = np.flatnonzero(said > 4000)
        # both workers' audio in one file, in order: what was said before the move, then after it
        assert quiet_at.size >= 10 * 160 and loud_at.size >= 10 * 160 and quiet_at[-1] < loud_at[0]
    finally:
        a.close()
        b.close()


async def test_a_recording_taken_over_gets_silence_for_the_hand_over(tmp_path: Path) -> None:
    from ccpbx.media.recorder import WavRecorder
    from ccpbx.media.worker import MAX_HANDOVER_GAP_S, Worker

    ours, theirs = socket.socketpair()
    try:
        worker = Worker(ours, HOST)
        path = tmp_path / "moved.wav"
        with WavRecorder(path, 2) as first:
            first.write(np.full((320, 2), 99, dtype=np.int16))
        worker.resuming[str(path)] = time.monotonic() - 0.1  # the old worker closed it 100 ms ago
        rec = worker._recorder(path, 2)
        assert 320 + 800 <= rec.frames_written <= 320 + 800 + 2 * 160  # 100 ms (and a frame or two) of silence
        rec.close()
        worker.resuming[str(path)] = time.monotonic() - 3600  # a worker that hung: the silence is bounded
        rec = worker._recorder(path, 2)
        assert rec.frames_written - 320 <= int((0.1 + MAX_HANDOVER_GAP_S) * 8000) + 2 * 160
        rec.close()
        with wave.open(str(path)) as w:
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        assert (data[:320] == 99).all() and not data[320:].any()
        fresh = worker._recorder(tmp_path / "new.wav", 1)  # not resuming: a new file
        assert fresh.frames_written == 0
        fresh.close()
    finally:
        ours.close()
        theirs.close()


# -- how many workers "auto" means -----------------------------------------------------------------------------

def _cgroups(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[str, str]:
    """A fake cgroup mount under ``tmp_path`` with ``files`` (path below the mount -> text) and a
    ``/proc/self/cgroup`` reading ``proc``."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc-cgroup").write_text(proc)
    return str(root), str(tmp_path / "proc-cgroup")


def test_usable_cores_follow_the_affinity_without_a_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    root, proc = _cgroups(tmp_path, "0::/box\n", {"box/cpu.max": "max 100000\n"})
    assert workers_module.usable_cores(root, proc) == affinity
    root, proc = _cgroups(tmp_path, "4:cpu,cpuacct:/box\n", {"cpu,cpuacct/box/cpu.cfs_quota_us": "-1\n",
                                                             "cpu,cpuacct/box/cpu.cfs_period_us": "100000\n"})
    assert workers_module.usable_cores(root, proc) == affinity
    assert workers_module.usable_cores(str(tmp_path / "none"), str(tmp_path / "none")) == affinity


def test_usable_cores_obey_a_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    # cgroup v2: 1.5 CPUs of quota round up to 2
    root, proc = _cgroups(tmp_path / "v2", "0::/system.slice/pbx.service\n",
                          {"system.slice/pbx.service/cpu.max": "150000 100000\n"})
    assert workers_module.usable_cores(root, proc) == 2
    # cgroup v1, the container's own cgroup seen at the controller's root (a cgroup namespace)
    root, proc = _cgroups(tmp_path / "v1", "5:cpu,cpuacct:/docker/abc\n",
                          {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert workers_module.usable_cores(root, proc) == 3
    # nonsense in the files is no quota; never fewer than one core
    root, proc = _cgroups(tmp_path / "bad", "0::/\n", {"cpu.max": "lots 100000\n"})
    assert workers_module.usable_cores(root, proc) == 64
    root, proc = _cgroups(tmp_path / "tiny", "0::/\n", {"cpu.max": "1000 100000\n"})
    assert workers_module.usable_cores(root, proc) == 1
