"""Bounded state: hostile input cannot grow the server's tables without end, and what it grew goes away.

The unit tests check each cap (transactions, nonce counts, the expiring caches, subscriptions). The memory bound
test feeds the real ``SipServer`` (in-process, its SIP transports replaced by a sink) junk — unanswered INVITEs
with random Call-IDs, REGISTERs with bogus credentials, stray responses, OPTIONS, BYEs for no dialog, SUBSCRIBEs
— with its clock moved past every timer between rounds: the tables come back to zero, the transaction table
never passes its cap, and a second identical round leaves traced memory where the first left it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ccpbx.pbx import app
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.bounded import ExpiringCache
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.sip import message
from ccpbx.pbx.sip.auth import DigestAuthenticator, digest_response, ha1
from ccpbx.pbx.sip.message import Request, parse_message
from ccpbx.pbx.sip.transaction import TransactionLayer, TransactionState
from ccpbx.pbx.sip.transport import ListenAddress
from ccpbx.pbx.store import Store
from tests.pbx.junk import junk

ROUND = 4_000  # junk datagrams per round (CI scale; benchmarks/soak.py --hostile runs it for hours)
CAP = 1_500  # the transaction cap in the test, so it is reached


# ---- the caps, one by one --------------------------------------------------------------------------------------

def _options(i: int) -> bytes:
    return (f"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{i:x}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:a@x>;tag={i}\r\nTo: <sip:pbx>\r\nCall-ID: c{i}\r\nCSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def test_transaction_cap_evicts_the_oldest_quiet_transaction() -> None:
    layer = TransactionLayer(max_transactions=10)
    for i in range(10):
        layer.receive(parse_message(_options(i)), ("udp", "10.0.0.1", 5060), 0)
    requests = [e.request for e in layer.events() if hasattr(e, "request")]
    for req in requests[:5]:  # five answered (Completed: quiet), five still with their TU
        assert isinstance(req, Request)
        from ccpbx.pbx.sip.message import make_response
        layer.send_response(make_response(req, 200), 0)
    layer.outgoing()
    layer.receive(parse_message(_options(100)), ("udp", "10.0.0.1", 5060), 0)
    assert len(layer) == 10 and layer.evicted == 1 and layer.peak == 10
    # the evicted one is the oldest answered; the unanswered ones are all still there
    states = sorted(layer.state(k).value for k in layer)
    assert states.count(TransactionState.TRYING.value) == 6


def test_transaction_cap_refuses_with_503_when_every_transaction_is_live() -> None:
    layer = TransactionLayer(max_transactions=5)
    for i in range(5):
        layer.receive(parse_message(_options(i)), ("udp", "10.0.0.1", 5060), 0)
    layer.events()
    layer.outgoing()
    layer.receive(parse_message(_options(99)), ("udp", "10.0.0.1", 5060), 0)
    assert len(layer) == 5 and layer.refused == 1
    out = layer.outgoing()
    assert len(out) == 1 and out[0][0].startswith(b"SIP/2.0 503") and b"Retry-After: 5" in out[0][0]
    assert not [e for e in layer.events() if hasattr(e, "request")]  # the TU never sees it


def test_unanswered_non_invite_server_transaction_is_abandoned() -> None:
    layer = TransactionLayer()
    request = parse_message(_options(1))
    layer.receive(request, ("udp", "10.0.0.1", 5060), 0)
    assert layer.has_server(request)  # type: ignore[arg-type]
    layer.handle_timer(10**7)
    assert len(layer) == 0 and layer.abandoned == 1
    assert layer.next_deadline() is None
    assert not layer.has_server(request)  # type: ignore[arg-type]  # an answer now is too late: SipServer drops it


def test_nonce_count_table_is_capped_oldest_first() -> None:
    auth = DigestAuthenticator("r", algorithms=("MD5",), secret=b"k" * 32, nonce_ttl_ms=10**9)
    auth.max_nonce_counts = 80
    secret = ha1("MD5", "u", "r", "pw")
    for i in range(200):
        nonce = auth.make_nonce(i)
        resp = digest_response("MD5", secret, "REGISTER", "sip:r", nonce, "00000001", "c", "auth")
        req = parse_message(
            (f"REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{i}\r\nFrom: <sip:u@r>;tag=1\r\n"
             f"To: <sip:u@r>\r\nCall-ID: x\r\nCSeq: {i + 1} REGISTER\r\nMax-Forwards: 70\r\n"
             f'Authorization: Digest username="u", realm="r", nonce="{nonce}", uri="sip:r", response="{resp}", '
             f'algorithm=MD5, qop=auth, nc=00000001, cnonce="c"\r\nContent-Length: 0\r\n\r\n').encode())
        assert isinstance(req, Request)
        assert auth.verify(req, {"MD5": secret}, i).outcome.value == "ok"
    assert auth.nonce_count_entries <= 80 and auth.evicted >= 120


def test_expiring_cache_expires_and_caps_oldest_first() -> None:
    cache: ExpiringCache[int, str] = ExpiringCache(ttl=10.0, max_entries=16)
    for i in range(40):
        cache.put(i, str(i), now=float(i))
    assert len(cache) <= 16 and cache.evicted == 40 - len(cache)
    assert cache.get(39, 39.0) == "39" and cache.get(0, 39.0) is None
    assert cache.lookup(39, 49.0) == (False, None)  # expired
    cache.put(7, "again", 45.0)
    before = len(cache)
    assert cache.purge(50.0) == before - 1 and list(cache) == [7] and cache.expired == before - 1


# ---- the real server under junk ----------------------------------------------------------------------------------

class SinkTransports:
    """Stands in for ``SipTransports``: what the server sends goes nowhere (and is not kept)."""

    def __init__(self) -> None:
        self.listening: list[ListenAddress] = []
        self.sent = 0

    async def listen(self, host: str, port: int, transports: tuple[str, ...] = ("udp",), **_: object) -> int:
        self.listening = [ListenAddress("udp", host, 5999)]
        return 5999

    def send(self, data: bytes, destination: object) -> None:
        self.sent += 1

    async def close(self) -> None:
        pass


@asynccontextmanager
async def _server(tmp_path: Path) -> AsyncIterator[SipServer]:
    config = parse_config(f'[server]\ndata_dir = "{tmp_path}"\nlog_level = "warning"\n[admin]\nenabled = false\n'
                          '[rtp]\nworkers = 0\n',
                          base_dir=tmp_path)
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    await store.add_extensions([("1002", "pw-1002-bounded", "")], config.sip.realm)
    server = SipServer(config.with_overrides(sip_workers=0), store)  # SIP workers: test_sip_workers.py
    server.transports = SinkTransports()  # type: ignore[assignment]
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


@pytest.mark.timeout(120)
async def test_junk_leaves_nothing_behind_and_a_second_round_does_not_grow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every junk datagram is handled, however slow the machine: this test is about the tables' bounds (the
    # server's clock also jumps 10 minutes between rounds); shedding has its own tests (test_inbox.py)
    monkeypatch.setattr(app, "SHED_AFTER_MS", 10**12)
    async with _server(tmp_path) as server:
        layer = server.endpoint.transactions
        layer.max_transactions = CAP
        loop = asyncio.get_running_loop()
        clock = {"skew": 0}  # the server's clock runs ahead of the loop's by this (ms): timers fire without waiting
        server._now = lambda: int(loop.time() * 1000) + clock["skew"]  # type: ignore[method-assign]
        rnd = random.Random(7)
        traced: list[int] = []
        peaks: list[dict[str, int]] = []
        tracemalloc.start()
        try:
            for _ in range(2):
                peak: dict[str, int] = {}
                for i in range(ROUND):
                    data, source = junk(i, rnd)
                    server._on_datagram(data, source)
                    if i % 10 == 0:  # the loop turns, as between reads from a socket: REGISTER admission tasks
                        await asyncio.sleep(0)  # run, the inbox drains (a turn's share of datagram work)
                    if i % 100 == 0:
                        for name, size in server.table_sizes().items():
                            peak[name] = max(peak.get(name, 0), size)
                for _ in range(1000):  # until the inbox has drained (every datagram handled: no shedding here)
                    if not server._tasks and not server.table_sizes()["inbox"]:
                        break
                    await asyncio.sleep(0.01)
                peaks.append(peak)
                # past every timer: Timer H/J (64·T1), TU_WAIT, nonce and credential lifetimes
                clock["skew"] += 10 * 60 * 1000
                server._on_timer()
                server.expire(server._now(), time.time() + 3600)
                server._credentials.purge(time.monotonic() + 3600)
                server.router.features_cache.purge(time.monotonic() + 3600)
                await asyncio.sleep(0.3)  # the registrations flusher, the 503s' tasks
                for cache in (message._name_addr_of, message._cseq_of):
                    cache.cache_clear()  # bounded LRUs (PARSE_CACHE_ENTRIES) that fill over rounds: not growth
                message._VIAS.clear()  # the same, for the Vias
                gc.collect()
                sizes = server.table_sizes()
                assert {k: v for k, v in sizes.items() if v} == {}, sizes
                traced.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        assert peaks[0]["transactions"] <= CAP and peaks[1]["transactions"] <= CAP, peaks
        assert layer.peak <= CAP
        assert layer.evicted > 0  # the cap was reached and worked by eviction
        assert server.stats.requests > ROUND  # the junk did reach the handlers (not all refused)
        growth = traced[1] - traced[0]
        print(f"traced after round 1 {traced[0]} B, after round 2 {traced[1]} B, peaks {peaks}, "
              f"evicted {server.evictions()}")
        assert growth < 512 * 1024, f"traced memory grew {growth} bytes over a second identical round"
