"""Media engine throughput (one core) and an end-to-end loopback run.

(a) ``engine.tick`` with N channels in N/2 bridged pairs, relay fast path disabled so every frame is
    jitter-popped, decoded, mixed, encoded and packetised. Each tick is preceded by one inbound packet per
    channel through ``engine.receive`` (timed separately, per packet). value = median tick time in ms; the
    reference is a plain per-channel Python loop doing the same work (the same jitter buffer pop, ``audioop``
    decode and encode, ``struct`` header), timed at a small N and scaled linearly per channel; ratio = reference / ours
    (> 1: ours is faster). The row "max channels < 50% of 20 ms" is the largest N of the sweep whose tick
    stays under 10 ms, and an estimate from the per-channel slope of the largest N.
(b) Loopback: a server process (``MediaServer``, uvloop when installed) bridges N pairs; this process plays
    2N phones on plain non-blocking sockets, each sending a 20 ms-paced G.711 stream, and measures what comes
    back: packet loss (sequence gaps at the phones) and the RFC 3550 §A.8 interarrival jitter of the received
    streams (reference: the same estimator over our own send times, i.e. the generator's jitter).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import selectors
import statistics
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_seconds_per_call, main_for, row
from measure import bound_udp_sockets, stop_forked

from ccpbx.media.engine import MediaEngine
from ccpbx.media.g711 import Codec, ulaw_encode
from ccpbx.media.jitter import JitterBuffer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

F = 160
HDR = struct.Struct("!BBHII")
BUDGET_MS = 20.0


def _payloads(n_frames: int) -> list[bytes]:
    t = np.arange(n_frames * F)
    pcm = (5000 * np.sin(2 * np.pi * 1000 * t / 8000)).astype(np.int16).reshape(n_frames, F)
    return [row.tobytes() for row in ulaw_encode(pcm)]


def _engine_tick_ms(n: int, ticks: int) -> tuple[float, float]:
    """Median tick time (ms) and receive time per packet (us) for n channels in n/2 bridges."""
    eng = MediaEngine(relay=False, rng=random.Random(1), capacity=n)
    chans = [eng.open_channel(Codec.PCMU, ("127.0.0.1", 20000 + 2 * i)) for i in range(n)]
    for i in range(0, n, 2):
        eng.bridge(chans[i], chans[i + 1])
    frames = _payloads(50)
    srcs = [("127.0.0.1", 20000 + 2 * i) for i in range(n)]
    tick_times: list[float] = []
    recv_times: list[float] = []
    warm = 5
    for k in range(ticks + warm):
        head = HDR.pack(0x80, 0, k & 0xFFFF, k * F, 0)
        pkt = head + frames[k % 50]
        now = k * 20
        t0 = time.perf_counter()
        for ch in chans:
            eng.receive(ch, pkt, srcs[ch], now)
        t1 = time.perf_counter()
        eng.tick(now)
        t2 = time.perf_counter()
        out = list(eng.outgoing_by_channel())
        if k >= warm:
            assert len(out) == n, len(out)
            tick_times.append((t2 - t1) * 1e3)
            recv_times.append((t1 - t0) / n * 1e6)
    return statistics.median(tick_times), statistics.median(recv_times)


def _reference_tick_ms(n: int, ticks: int) -> float:
    """The same work per channel in plain Python: the same jitter buffer pop, audioop decode, bridge,
    audioop encode, struct header, one (channel, packet, address) tuple per packet."""
    frames = _payloads(50)
    buffers = [JitterBuffer() for _ in range(n)]
    addrs = [("127.0.0.1", 20000 + 2 * i) for i in range(n)]
    seq = [0] * n
    ts = [0] * n
    times: list[float] = []
    silence = bytes(2 * F)
    for k in range(ticks + 5):
        for b in buffers:
            b.push(k & 0xFFFF, k * F, 1, frames[k % 50], k * 20)
        t0 = time.perf_counter()
        pcm: list[bytes] = []
        for b in buffers:
            p = b.pop()
            pcm.append(audioop.ulaw2lin(p, 2) if p is not None else silence)
        out: list[tuple[int, bytes, tuple[str, int]]] = []
        for i in range(n):
            heard = pcm[i ^ 1]  # the other leg of the pair
            payload = audioop.lin2ulaw(heard, 2)
            out.append((i, HDR.pack(0x80, 0, seq[i], ts[i], 1234 + i) + payload, addrs[i]))
            seq[i] = (seq[i] + 1) & 0xFFFF
            ts[i] = (ts[i] + F) & 0xFFFFFFFF
        if k >= 5:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_tick(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sizes = (500, 1000, 2000) if quick else (500, 1000, 2000, 4000)
    ticks = 15 if quick else 50
    ref_n = 200
    ref_ms = _reference_tick_ms(ref_n, ticks)
    ref_per_ch = ref_ms / ref_n
    best_n = 0
    last: tuple[int, float] = (0, 0.0)
    for n in sizes:
        tick_ms, recv_us = _engine_tick_ms(n, ticks)
        ref_scaled = ref_per_ch * n
        rows.append(row(f"engine.tick {n} ch (decode+mix+encode)", tick_ms, "ms/tick",
                        f"per-channel python+audioop (N={ref_n}, scaled)", ref_scaled, ref_scaled / tick_ms))
        rows.append(row(f"engine.receive {n} ch", recv_us, "us/packet"))
        if tick_ms < BUDGET_MS / 2:
            best_n = max(best_n, n)
        last = (n, tick_ms)
    rows.append(row("engine max channels measured < 50% of 20 ms", best_n, "channels"))
    n, ms = last
    est = int(n * (BUDGET_MS / 2) / ms)
    rows.append(row("engine est. channels at 50% of 20 ms (tick only)", est, "channels",
                    "per-channel python+audioop estimate", int((BUDGET_MS / 2) / ref_per_ch),
                    est / max(1, (BUDGET_MS / 2) / ref_per_ch)))
    return rows


# -- (b) loopback ---------------------------------------------------------------------------------------------


def _server_main(conn: Any, phone_addrs: list[tuple[str, int]], relay: bool) -> None:
    import asyncio

    from ccpbx.media.transport import MediaServer, PortAllocator

    async def main() -> None:
        lo = random.randrange(20000, 40000, 2)
        server = MediaServer("127.0.0.1", PortAllocator(lo, lo + 4 * len(phone_addrs) + 200),
                             engine=MediaEngine(relay=relay))
        async with server:
            opened = [await server.open_channel(Codec.PCMU, addr) for addr in phone_addrs]
            for i in range(0, len(opened), 2):
                server.engine.bridge(opened[i].channel, opened[i + 1].channel)
            conn.send([o.port for o in opened])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, conn.recv)  # wait for "stop"
            lost = sum(server.engine.stats(o.channel).lost for o in opened)
            late = sum(server.engine.stats(o.channel).late for o in opened)
            conn.send({"ticks": server.ticks, "late_ticks": server.late_ticks, "skipped": server.skipped_ticks,
                       "send_errors": server.send_errors, "engine_lost": lost, "engine_late": late})

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _loopback(pairs: int, seconds: float, relay: bool) -> dict[str, float]:
    n = 2 * pairs
    socks = bound_udp_sockets(n, 1 << 20)
    addrs = [s.getsockname() for s in socks]
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(child, addrs, relay), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("media server did not start")
        ports: list[int] = parent.recv()
        frames = _payloads(50)
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        recv: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        send_jitter = 0.0
        t0 = time.monotonic() + 0.1
        k = 0
        total_ticks = int(seconds * 50)
        deadline = t0 + seconds + 0.5
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            due = t0 + k * 0.02
            if k < total_ticks and now >= due:
                pkt_head = HDR.pack(0x80, 0, k & 0xFFFF, (k * F) & 0xFFFFFFFF, 0)
                body = pkt_head + frames[k % 50]
                for i, s in enumerate(socks):
                    try:
                        s.sendto(body, ("127.0.0.1", ports[i]))
                    except BlockingIOError:
                        pass
                lag = (time.monotonic() - due) * 1000.0
                send_jitter += (abs(lag) - send_jitter) / 16.0
                k += 1
                continue
            timeout = max(0.0, min(due, deadline) - now) if k < total_ticks else max(0.0, deadline - now)
            for key, _ in sel.select(timeout):
                s = key.fileobj
                i = key.data
                while True:
                    try:
                        data = s.recv(2048)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    if len(data) < 12 or 192 <= data[1] <= 223:
                        # RTCP (RFC 5761 §4 packet-type range): the server's reports go to RTP port + 1, which
                        # may be another phone's ephemeral RTP socket here; they are not media.
                        continue
                    _, _, seq, ts, _ = HDR.unpack_from(data)
                    recv[i].append((time.monotonic(), seq, ts))
        sel.close()
    finally:
        server_stats = stop_forked(parent, proc)
        for s in socks:
            s.close()
    lost = 0
    expected = 0
    jitters = []
    for stream in recv:
        if len(stream) < 10:
            lost += total_ticks
            expected += total_ticks
            continue
        seqs = np.unwrap(np.array([q for _, q, _ in stream], dtype=np.float64), period=65536)
        exp = int(seqs.max() - seqs.min() + 1)
        expected += exp
        lost += exp - len(stream)
        j = 0.0
        prev = None
        for arrival, _, ts in stream:
            transit = arrival * 8000.0 - ts
            if prev is not None:
                d = transit - prev
                if abs(d) < 8000:
                    j += (abs(d) - j) / 16.0
            prev = transit
        jitters.append(j / 8.0)
    return {"loss_pct": 100.0 * lost / max(1, expected), "jitter_ms": statistics.mean(jitters) if jitters else -1.0,
            "send_jitter_ms": send_jitter, **{k: float(v) for k, v in server_stats.items()}}


def bench_loopback(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sizes = (10, 100) if quick else (10, 50, 100, 200)
    seconds = 1.5 if quick else 3.0
    for relay in (False, True):
        mode = "relay" if relay else "mixed"
        for pairs in sizes if not relay else sizes[-1:]:
            r = _loopback(pairs, seconds, relay)
            rows.append(row(f"loopback {mode} {pairs} pairs: packet loss", r["loss_pct"], "%"))
            rows.append(row(f"loopback {mode} {pairs} pairs: received jitter", r["jitter_ms"], "ms",
                            "generator send jitter", r["send_jitter_ms"], None))
            rows.append(row(f"loopback {mode} {pairs} pairs: late/skipped ticks",
                            r.get("late_ticks", -1), f"of {int(r.get('ticks', 0))} ticks",
                            "skipped", r.get("skipped", -1), None))
    return rows


def bench_call_cycle(quick: bool) -> list[dict[str, Any]]:
    """What one call asks of the engine when no audio flows (as in the calls benchmarks): two channels opened,
    bridged, one tick, both closed and their output drained; microseconds per call, best of five."""
    eng = MediaEngine(rng=random.Random(1))

    def call() -> None:
        a = eng.open_channel(Codec.PCMU, ("127.0.0.1", 6000))
        b = eng.open_channel(Codec.PCMU, ("127.0.0.1", 6002))
        eng.bridge(a, b)
        eng.tick(0)
        eng.close_channel(a)
        eng.close_channel(b)
        eng.outgoing_rtcp()
        eng.outgoing_by_channel()

    seconds = best_seconds_per_call(call, 5, 0.035 if quick else 0.35)  # ~300 or ~3,000 calls a run
    return [row("engine call cycle (open 2, bridge, tick, close 2; no RTP)", 1e6 * seconds, "us per call")]


def run(quick: bool = False) -> list[dict[str, Any]]:
    return bench_tick(quick) + bench_call_cycle(quick) + bench_loopback(quick)


if __name__ == "__main__":
    main_for(run, str(Path(__file__).resolve().parent / "results" / "engine.json"))
