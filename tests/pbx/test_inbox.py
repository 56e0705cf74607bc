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


def _fake_clock(server: SipServer) -> dict[str, int]:
    """The server's loop clock (ms) as a dict the test moves: ``clock["ms"] += ...``."""
    clock = {"ms": 1_000_000}
    server._now = lambda: clock["ms"]  # type: ignore[method-assign]
    return clock


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
        clock = _fake_clock(server)
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


def _answers(server: SipServer) -> list[tuple[str, str]]:
    """(Call-ID, status line) of every response the server sent toward SOURCE, in order."""
    out = []
    for _, destination, data in server.net.trace:  # type: ignore[attr-defined]
        if destination[1:] == SOURCE[1:] and data.startswith(b"SIP/2.0 "):
            call_id = data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
            out.append((call_id, data.split(b"\r\n", 1)[0].decode()))
    return out


def _retry_after(server: SipServer, call_id: str) -> int:
    for _, _, data in server.net.trace:  # type: ignore[attr-defined]
        if data.startswith(b"SIP/2.0 503") and f"Call-ID: {call_id}\r\n".encode() in data:
            return int(data.split(b"Retry-After: ", 1)[1].split(b"\r\n", 1)[0])
    raise AssertionError(f"no 503 for {call_id}")


async def test_a_sustained_backlog_answers_new_requests_503_and_serves_calls_in_progress_and_emergencies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "[sip]\noverload_reject_ms = 40\n", {"1001": "pw-1001-inbox"}) as server:
        clock = _fake_clock(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)  # handled at once: the inbox is empty
        server._on_datagram(_request("OPTIONS", 2), SOURCE)  # the backlog starts here
        clock["ms"] += app.OVERLOAD_SUSTAINED_MS  # the server has been behind for half a second
        server._on_datagram(_request("INVITE", 3), SOURCE)  # fresh: served (407, the digest challenge)
        clock["ms"] += 40
        server._on_datagram(_request("BYE", 4, to_tag="t4"), SOURCE)  # in a dialog: never refused
        server._on_datagram(_request("REGISTER", 5), SOURCE)
        emergency = _request("INVITE", 6).replace(b"INVITE sip:1001@", b"INVITE sip:112@")
        server._on_datagram(emergency, SOURCE)
        answering = _request("INVITE", 7).replace(b"Max-Forwards", b'Proxy-Authorization: Digest username="1001", '
                                                  b'realm="ccpbx", nonce="n", uri="sip:1001@127.0.0.1", '
                                                  b'response="00"\r\nMax-Forwards')
        server._on_datagram(answering, SOURCE)
        clock["ms"] += 40  # 2 waited 580 ms (past SHED_AFTER_MS), 3 80 ms, 5 and 6 40 ms: in a sustained backlog
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        answers = dict(_answers(server))
        assert answers["inbox-1"].startswith("SIP/2.0 200")
        assert "inbox-2" not in answers and server.stats.shed == 1  # dropped unread: it waited too long for that
        assert answers["inbox-3"].startswith("SIP/2.0 503")
        assert answers["inbox-4"].startswith("SIP/2.0 481")  # served: no such dialog here
        assert answers["inbox-5"].startswith("SIP/2.0 503")
        assert not answers["inbox-6"].startswith("SIP/2.0 503")  # the emergency call went on (challenged)
        assert not answers["inbox-7"].startswith("SIP/2.0 503")  # it answers a challenge: work in progress
        assert server.stats.overload_rejected == 2 and server.evictions()["overload_rejected"] == 2
        assert app.OVERLOAD_RETRY_AFTER_S[0] <= _retry_after(server, "inbox-3") <= app.OVERLOAD_RETRY_AFTER_S[1]
        # the refusal is the transaction's answer: a retransmission gets it again, unread by the handlers
        before = len(_answers(server))
        await asyncio.sleep(0)
        server._on_datagram(_request("INVITE", 3), SOURCE)
        await until(lambda: len(_answers(server)) > before, timeout=5)
        assert _answers(server)[-1] == ("inbox-3", answers["inbox-3"])
        assert server.stats.overload_rejected == 2


async def test_the_sip_workers_are_told_when_a_sustained_backlog_starts_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the server refuses new work, SIP workers pass new calls on unchallenged (else every INVITE reaching
    it would answer a challenge, never refused): told once when the backlog has lasted, once when it is gone."""
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "[sip]\noverload_reject_ms = 40\n", {"1001": "pw-1001-inbox"}) as server:
        told: list[bool] = []

        class Workers:
            def overloaded(self, overloaded: bool) -> None:
                if not told or told[-1] != overloaded:
                    told.append(overloaded)

        server.sip_workers = Workers()  # type: ignore[assignment]
        clock = _fake_clock(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)
        server._on_datagram(_request("OPTIONS", 2), SOURCE)  # the backlog starts
        server._on_datagram(_request("OPTIONS", 3), SOURCE)
        await asyncio.sleep(0)  # one turn: still behind, but not for long
        assert told in ([], [False])
        clock["ms"] += app.OVERLOAD_SUSTAINED_MS
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert told[-2:] == [True, False]  # sustained while the last waited; gone once the inbox emptied
        server.sip_workers = None


async def test_a_short_backlog_is_served_late_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pause (a full collection, a burst of registrations) that the server catches up within
    OVERLOAD_SUSTAINED_MS is not overload: every request waiting is served, however long it waited."""
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "[sip]\noverload_reject_ms = 40\n", {"1001": "pw-1001-inbox"}) as server:
        clock = _fake_clock(server)
        for round_ in range(8):  # 800 ms behind in all, but the backlog counts from when the inbox last emptied
            server._on_datagram(_request("OPTIONS", 10 * round_ + 1), SOURCE)
            server._on_datagram(_request("OPTIONS", 10 * round_ + 2), SOURCE)
            clock["ms"] += 100  # the second waits 100 ms: past overload_reject_ms
            await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
            await asyncio.sleep(0)
        statuses = [status for _, status in _answers(server)]
        assert statuses == ["SIP/2.0 200 OK"] * 16 and server.stats.overload_rejected == 0


async def test_refusing_for_overload_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "[sip]\noverload_reject_ms = 0\n", {"1001": "pw-1001-inbox"}) as server:
        clock = _fake_clock(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)
        server._on_datagram(_request("OPTIONS", 2), SOURCE)
        clock["ms"] += app.SHED_AFTER_MS  # waited as long as may be and still be served
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert [status for _, status in _answers(server)] == ["SIP/2.0 200 OK"] * 2


def _with_credentials(data: bytes, header: str = "Authorization") -> bytes:
    return data.replace(b"Max-Forwards", f'{header}: Digest username="1001", realm="ccpbx", nonce="n", '
                                         'uri="sip:1001@127.0.0.1", response="00"\r\nMax-Forwards'.encode())


async def test_new_requests_answering_a_challenge_go_before_the_other_new_ones_and_are_shed_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "INBOX_TURN_BUDGET_S", 0.0)
    async with sim_pbx(tmp_path, "", {"1001": "pw-1001-inbox"}) as server:
        clock = _fake_clock(server)
        order = _record_order(server)
        server._on_datagram(_request("OPTIONS", 1), SOURCE)  # the turn's first: handled at once
        server._on_datagram(_request("REGISTER", 2), SOURCE)  # a first REGISTER: new work
        server._on_datagram(_with_credentials(_request("REGISTER", 3)), SOURCE)  # the second half of one
        server._on_datagram(_request("INVITE", 4), SOURCE)
        server._on_datagram(_with_credentials(_request("INVITE", 5), "proxy-authorization"), SOURCE)
        server._on_datagram(_request("BYE", 6, to_tag="t6"), SOURCE)  # finishes a call: first of all
        assert server.table_sizes()["inbox"] == 5
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert order == ["inbox-1", "inbox-6", "inbox-3", "inbox-5", "inbox-2", "inbox-4"]
        await asyncio.sleep(0)
        server._on_datagram(_request("OPTIONS", 7), SOURCE)
        server._on_datagram(_with_credentials(_request("REGISTER", 8)), SOURCE)
        clock["ms"] += app.SHED_AFTER_MS + 1  # held up: the credentials waited too long as well
        server._on_datagram(_request("OPTIONS", 9), SOURCE)
        await until(lambda: server.table_sizes()["inbox"] == 0, timeout=5)
        assert order[-2:] == ["inbox-7", "inbox-9"] and server.stats.shed == 1
