"""The SIP inbox: past a turn's share of work, datagrams wait their turn; what finishes calls in progress goes
first, new requests that waited too long are dropped unread (their senders retransmit), and the wait is bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ccpbx.pbx import app
from ccpbx.pbx.app import SipServer
from tests.pbx.simnet import sim_pbx, until

SOURCE = ("udp", "127.0.0.9", 5090)


def _request(method: str, n: int, *, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (f"{method} sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5090;branch=z9hG4bK-inbox-{n}\r\n"
            f"From: <sip:9999@127.0.0.9>;tag=f{n}\r\nTo: <sip:1001@127.0.0.1>{tag}\r\nCall-ID: inbox-{n}\r\n"
            f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def _record_order(server: SipServer) -> list[str]:
    """Call-IDs in the order the endpoint was handed their datagrams."""
    order: list[str] = []
    receive = server.endpoint.receive_datagram

    def recording(data: bytes, source: tuple[str, str, int], now: int) -> None:
        order.append(data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0].decode())
        receive(data, source, now)

    server.endpoint.receive_datagram = recording  # type: ignore[method-assign]
    return order


async def test_past_a_turns_share_urgent_datagrams_go_before_new_requests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)  # one datagram a turn; the rest wait in the inbox
    async with sim_pbx(tmp_path, "", {"1001": "pw-1001-inbox"}) as server:
        order = _record_order(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)  # the turn's first: handled at once
        server._on_datagram(_request("OPTIONS", 2), SOURCE)  # new work: waits
        server._on_datagram(_request("BYE", 3, to_tag="t3"), SOURCE)  # finishes a call: goes first
        server._on_datagram(_request("INVITE", 4), SOURCE)
        server._on_datagram(_request("CANCEL", 5), SOURCE)
        assert order == ["inbox-1"] and server.table_sizes()["inbox"] == 4
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert order == ["inbox-1", "inbox-3", "inbox-5", "inbox-2", "inbox-4"]
        assert server.stats.deferred == 4 and server.stats.shed == 0
        # the next turn starts afresh: its first datagram is handled at once again
        await asyncio.sleep(0)
        server._on_datagram(_request("OPTIONS", 6), SOURCE)
        assert order[-1] == "inbox-6"


async def test_new_requests_that_waited_too_long_are_dropped_unread_urgent_ones_never(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "", {"1001": "pw-1001-inbox"}) as server:
        clock = {"ms": 1_000_000}
        server._now = lambda: clock["ms"]  # type: ignore[method-assign]
        order = _record_order(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)
        server._on_datagram(_request("INVITE", 2), SOURCE)  # waits from t
        server._on_datagram(_request("BYE", 3, to_tag="t3"), SOURCE)
        clock["ms"] += app.SHED_AFTER_MS + 1  # the loop was held up: both waited past the limit
        server._on_datagram(_request("REGISTER", 4), SOURCE)  # arrives now: fresh
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert order == ["inbox-1", "inbox-3", "inbox-4"]  # the stale INVITE was shed, the BYE kept
        assert server.stats.shed == 1 and server.evictions()["inbox_shed"] == 1


async def test_the_inbox_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    monkeypatch.setattr(app, "INBOX_MAX", 3)
    async with sim_pbx(tmp_path, "", {"1001": "pw-1001-inbox"}) as server:
        order = _record_order(server)
        for n in range(1, 8):
            server._on_datagram(_request("OPTIONS", n), SOURCE)
        assert server.table_sizes()["inbox"] == 3 and server.stats.inbox_full == 3
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert order == ["inbox-1", "inbox-2", "inbox-3", "inbox-4"]
