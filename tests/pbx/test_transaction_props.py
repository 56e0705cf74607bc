"""Hypothesis: a client and a server transaction layer under arbitrary loss, duplication, reordering, TU
responses, transport errors and timer firings never raise, never output for a terminated transaction, and
never keep a transaction past its timers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.message import Request, Response, make_response, parse_message
from ccpbx.pbx.sip.transaction import (
    ClientKey,
    Destination,
    RequestReceived,
    ResponseReceived,
    ServerKey,
    StrayResponseReceived,
    TransactionEvent,
    TransactionKey,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
)

CLIENT_HOST = "10.0.0.1"
SERVER: dict[str, Destination] = {"udp": ("udp", "10.0.0.2", 5060), "tcp": ("tcp", "10.0.0.2", 5060)}
CLIENT_SEEN_AS: dict[str, Destination] = {"udp": ("udp", CLIENT_HOST, 5070), "tcp": ("tcp", CLIENT_HOST, 40001)}

# What the TU may send in each server state without a SipLocalError (the rest must raise).
ALLOWED = {
    ("INVITE", TransactionState.PROCEEDING): (100, 180, 200, 404, 486),
    ("INVITE", TransactionState.ACCEPTED): (200,),
    ("OTHER", TransactionState.TRYING): (100, 180, 200, 404, 486),
    ("OTHER", TransactionState.PROCEEDING): (100, 180, 200, 404, 486),
    ("OTHER", TransactionState.COMPLETED): (200, 404, 486),  # discarded, §17.2.2
}
WAITING_FOREVER = {  # states that have no timer: they wait for the TU (server) or for Timer C of the TU (client)
    TransactionState.TRYING, TransactionState.PROCEEDING,
}


def build(method: str, transport: str, branch: str, seq: int, to_tag: str | None = None) -> Request:
    lines = [
        f"{method} sip:bob@10.0.0.2 SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {CLIENT_HOST}:5070;branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:alice@10.0.0.1>;tag=ft",
        "To: <sip:bob@10.0.0.2>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: prop-{seq}",
        f"CSeq: {seq} {method}",
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def attribute(message: Request | Response, from_client: bool) -> TransactionKey | None:
    """The transaction a message on the wire belongs to (None for the ACK of a 2xx)."""
    via = message.via
    branch = via.branch or ""
    if from_client:
        assert isinstance(message, Request)
        return ClientKey(branch, "INVITE" if message.method == "ACK" else message.method)
    host, port = via.sent_by
    return ServerKey(branch, (host.lower(), port), message.cseq.method)


class TwoLayers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = TransactionLayer()
        self.server = TransactionLayer()
        self.now = 0
        self.seq = 0
        self.wire: list[tuple[bytes, bool]] = []  # (datagram, sent by the client)
        self.transport_of: dict[str, str] = {}  # branch -> transport
        self.stateless_acks: set[str] = set()  # branches of 2xx ACKs the client TU sent
        self.live: dict[bool, set[TransactionKey]] = {True: set(), False: set()}
        self.terminated: dict[bool, set[TransactionKey]] = {True: set(), False: set()}
        self.server_requests: dict[ServerKey, Request] = {}
        self.branches = 0

    @initialize()
    def nothing(self) -> None:
        pass

    def new_branch(self) -> str:
        # deterministic, so hypothesis replays the same run (new_branch() is random)
        self.branches += 1
        return f"z9hG4bKprop{self.branches}"

    # ---- bookkeeping after every input --------------------------------------------------------------------
    def settle(self) -> None:
        for _ in range(20):
            busy = self.drain(self.client, True) | self.drain(self.server, False)
            if not busy:
                return
        raise AssertionError("TU reactions did not settle")

    def drain(self, layer: TransactionLayer, is_client: bool) -> bool:
        events = layer.events()
        out = layer.outgoing()
        terminated_before = set(self.terminated[is_client])
        recreated: set[TransactionKey] = set()
        for ev in events:
            self.check_event(ev, is_client, terminated_before, recreated)
        for data, dest in out:
            msg = parse_message(data)
            key = attribute(msg, is_client)
            if is_client and isinstance(msg, Request) and msg.method == "ACK" and key is not None \
                    and key.branch in self.stateless_acks:
                key = None
            if key is not None:
                assert key not in terminated_before - recreated, f"{msg!r} sent for terminated {key}"
            if is_client:
                expected = SERVER[self.transport_of[msg.via.branch or ""]]
                assert dest == expected
            self.wire.append((data, is_client))
        for ev in events:
            self.react(layer, ev, is_client)
        assert set(layer.keys()) == self.live[is_client]
        return bool(events or out)

    def check_event(self, ev: TransactionEvent, is_client: bool, terminated_before: set[TransactionKey],
                    recreated: set[TransactionKey]) -> None:
        if isinstance(ev, RequestReceived):
            assert not is_client
            if ev.key is not None:
                assert ev.key not in self.live[False], "a retransmission was not absorbed"
                self.live[False].add(ev.key)
                self.terminated[False].discard(ev.key)
                recreated.add(ev.key)
                self.server_requests[ev.key] = ev.request
            else:
                assert ev.request.method == "ACK"
        elif isinstance(ev, TransactionTerminated):
            assert ev.key in self.live[is_client], "terminated twice or never started"
            self.live[is_client].discard(ev.key)
            self.terminated[is_client].add(ev.key)
        elif isinstance(ev, StrayResponseReceived):
            assert is_client
        else:
            key = ev.key
            assert key in self.live[is_client], f"{ev} for a transaction not alive"

    def react(self, layer: TransactionLayer, ev: TransactionEvent, is_client: bool) -> None:
        """The client TU ACKs every 2xx; the server TU answers CANCEL with 200 and its INVITE with 487."""
        if is_client and isinstance(ev, ResponseReceived | StrayResponseReceived):
            resp = ev.response
            if 200 <= resp.status < 300 and resp.cseq.method == "INVITE":
                branch = self.new_branch()
                transport = self.transport_of[resp.via.branch or ""]
                self.transport_of[branch] = transport
                self.stateless_acks.add(branch)
                ack = build("ACK", transport, branch, resp.cseq.seq, resp.to.tag)
                layer.send_stateless(ack, SERVER[transport])
        if not is_client and isinstance(ev, RequestReceived) and ev.key is not None and ev.request.method == "CANCEL":
            invite = layer.matching_invite(ev.request)
            layer.send_response(make_response(ev.request, 200, to_tag="uas"), self.now)
            if invite is not None and layer.state(invite) is TransactionState.PROCEEDING:
                layer.send_response(make_response(self.server_requests[invite], 487, to_tag="uas"), self.now)

    # ---- rules -------------------------------------------------------------------------------------------
    @rule(method=st.sampled_from(["INVITE", "INVITE", "OPTIONS", "BYE"]), transport=st.sampled_from(["udp", "tcp"]))
    def start(self, method: str, transport: str) -> None:
        self.seq += 1
        branch = self.new_branch()
        self.transport_of[branch] = transport
        key = self.client.send_request(build(method, transport, branch, self.seq), SERVER[transport], self.now)
        self.live[True].add(key)
        self.settle()

    @precondition(lambda self: any(k.method == "INVITE" for k in self.live[True]))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        invites = sorted((k for k in self.live[True] if k.method == "INVITE"), key=lambda k: k.branch)
        key = data.draw(st.sampled_from(invites))
        assert isinstance(key, ClientKey)
        cancel_key = ClientKey(key.branch, "CANCEL")
        if cancel_key in self.live[True] or cancel_key in self.terminated[True]:
            return  # one CANCEL per INVITE: a new one would reuse the key of the first
        seq = int(next(s for s in range(self.seq + 1) if f"prop-{s}" in self.call_id_of(key)))
        cancel = build("CANCEL", self.transport_of[key.branch], key.branch, seq)
        self.live[True].add(self.client.send_request(cancel, SERVER[self.transport_of[key.branch]], self.now))
        self.settle()

    def call_id_of(self, key: ClientKey) -> str:
        txn = self.client._transactions[key]
        if txn.request is not None:
            return txn.request.call_id
        assert txn.summary is not None  # answered: only its summary is kept (the call ID third)
        return txn.summary[2]

    @precondition(lambda self: self.wire)
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver(self, data: st.DataObject, duplicate: bool) -> None:
        index = data.draw(st.integers(0, len(self.wire) - 1))
        raw, from_client = self.wire[index] if duplicate else self.wire.pop(index)
        msg = parse_message(raw)
        transport = self.transport_of[msg.via.branch or ""]
        if from_client:
            self.server.receive(msg, CLIENT_SEEN_AS[transport], self.now)
        else:
            self.client.receive(msg, SERVER[transport], self.now)
        self.settle()

    @precondition(lambda self: self.wire)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @precondition(lambda self: self.live[False])
    @rule(data=st.data(), status=st.sampled_from([100, 180, 200, 404, 486]))
    def respond(self, data: st.DataObject, status: int) -> None:
        keys = sorted(self.live[False], key=lambda k: (k.branch, k.method))
        key = data.draw(st.sampled_from(keys))
        assert isinstance(key, ServerKey)
        state = self.server.state(key)
        kind = "INVITE" if key.method == "INVITE" else "OTHER"
        response = make_response(self.server_requests[key], status, to_tag="uas")
        if status in ALLOWED.get((kind, state), ()):
            self.server.send_response(response, self.now)
        else:
            with pytest.raises(SipLocalError):
                self.server.send_response(response, self.now)
            assert self.server.state(key) is state
            assert self.server.outgoing() == []
        self.settle()

    @rule(ms=st.sampled_from([0, 1, 250, 500, 1000, 4000, 5000, 16_000, 32_000, 40_000]))
    def advance(self, ms: int) -> None:
        self.now += ms
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.settle()
        for layer in (self.client, self.server):
            deadline = layer.next_deadline()
            assert deadline is None or deadline > self.now, "a due timer was left unfired"

    @rule(on_client=st.booleans(), transport=st.sampled_from(["udp", "tcp"]))
    def transport_error(self, on_client: bool, transport: str) -> None:
        if on_client:
            self.client.transport_error(SERVER[transport], self.now)
        else:
            self.server.transport_error(CLIENT_SEEN_AS[transport], self.now)
        self.settle()

    @invariant()
    def timers_belong_to_live_transactions(self) -> None:
        for layer in (self.client, self.server):
            assert len(layer) == len(layer.keys())
            deadline = layer.next_deadline()
            assert (deadline is None) == (not any(t.timers for t in layer._transactions.values()))

    def teardown(self) -> None:
        # Far in the future every timer has fired: only transactions waiting on a TU remain, with no deadline.
        self.now += 10**7
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.settle()
        for layer in (self.client, self.server):
            assert layer.next_deadline() is None
            assert all(layer.state(k) in WAITING_FOREVER for k in layer)
        for key in list(self.live[False]):
            if key in self.server:
                self.server.send_response(make_response(self.server_requests[key], 500, to_tag="uas"), self.now)
        for transport in ("udp", "tcp"):
            self.client.transport_error(SERVER[transport], self.now)
        self.settle()
        self.now += 10**7
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.settle()
        assert len(self.client) == 0 and len(self.server) == 0
        assert self.client.next_deadline() is None and self.server.next_deadline() is None


TwoLayers.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_two_layers = TwoLayers.TestCase
