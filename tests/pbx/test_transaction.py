"""The SIP transaction layer (RFC 3261 §17, RFC 6026) driven with an explicit clock and no sockets."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field

import pytest

from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.message import Request, Response, make_response, new_branch, parse_message
from ccpbx.pbx.sip.transaction import (
    LIVE_STATES,
    NETWORK_INPUTS,
    TABLES,
    TRYING_DELAY_MS,
    AckTimedOut,
    ClientKey,
    Destination,
    RequestReceived,
    ResponseReceived,
    ServerKey,
    StrayResponseReceived,
    TransactionEvent,
    TransactionKind,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
)

UAC: Destination = ("udp", "10.0.0.1", 5070)  # where the client sits
UAS_UDP: Destination = ("udp", "10.0.0.2", 5060)
UAS_TCP: Destination = ("tcp", "10.0.0.2", 5060)
UAC_TCP: Destination = ("tcp", "10.0.0.1", 40001)  # the client's ephemeral TCP port, as the server sees it

# ---- builders -----------------------------------------------------------------------------------------------


def request(method: str = "INVITE", *, branch: str | None = "new", transport: str = "UDP", cseq: int = 1,
            call_id: str = "call-1", to_tag: str | None = None, routes: tuple[str, ...] = (),
            via_host: str = "10.0.0.1:5070", rport: bool = False, cseq_method: str | None = None) -> Request:
    if branch == "new":
        branch = new_branch()
    via = f"SIP/2.0/{transport} {via_host}" + (f";branch={branch}" if branch is not None else "")
    if rport:
        via += ";rport"
    lines = [
        f"{method} sip:bob@10.0.0.2 SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKupstream",
        *(f"Route: {r}" for r in routes),
        "Max-Forwards: 70",
        "From: <sip:alice@10.0.0.1>;tag=from-tag",
        "To: <sip:bob@10.0.0.2>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@10.0.0.1:5070>",
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def reply(req: Request, status: int, to_tag: str | None = "to-tag") -> Response:
    return make_response(req, status, to_tag=to_tag)


def over_wire(message: Request | Response) -> Request | Response:
    """What the peer would parse: a copy through bytes, so nothing is shared between layers."""
    return parse_message(message.serialize())


def drain(layer: TransactionLayer) -> tuple[list[TransactionEvent], list[tuple[Request | Response, Destination]]]:
    out = [(parse_message(data), dest) for data, dest in layer.outgoing()]
    return layer.events(), out


def run_timers(layer: TransactionLayer, until: int) -> list[tuple[int, list[TransactionEvent], list[tuple[
        Request | Response, Destination]]]]:
    """Fire every deadline up to ``until`` one at a time; what each firing produced, stamped with its time."""
    log = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        events, out = drain(layer)
        log.append((deadline, events, out))
    return log


def sent_times(log: list, kind: type = Request) -> list[int]:
    return [t for t, _, out in log for m, _ in out if isinstance(m, kind)]


def event_types(events: list[TransactionEvent]) -> list[type]:
    return [type(e) for e in events]


# ---- the tables ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TransactionKind))
def test_every_live_state_absorbs_or_handles_every_network_input(kind: TransactionKind) -> None:
    # h2-style exhaustiveness: a message from the network can never be a programming error
    table = TABLES[kind]
    for state in LIVE_STATES[kind]:
        for event in NETWORK_INPUTS:
            assert (state, event) in table, (kind, state, event)


@pytest.mark.parametrize("kind", list(TransactionKind))
def test_tables_never_leave_terminated_and_only_use_live_states(kind: TransactionKind) -> None:
    for (state, _), (_, nxt) in TABLES[kind].items():
        assert state in LIVE_STATES[kind]
        assert nxt in (*LIVE_STATES[kind], TransactionState.TERMINATED)


def test_undefined_tu_transition_is_a_local_error_and_changes_nothing() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(inv, 486), 10)
    assert layer.state(key) is TransactionState.COMPLETED
    layer.outgoing()
    with pytest.raises(SipLocalError):
        layer.send_response(reply(inv, 180), 20)
    with pytest.raises(SipLocalError):
        layer.send_response(reply(inv, 200), 20)
    assert layer.state(key) is TransactionState.COMPLETED
    assert layer.outgoing() == []


# ---- client INVITE ------------------------------------------------------------------------------------------


def test_client_invite_udp_retransmits_with_timer_a_and_times_out_with_timer_b() -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    assert key == ClientKey(inv.via.branch or "", "INVITE")
    assert layer.state(key) is TransactionState.CALLING
    first = layer.outgoing()
    assert [d for _, d in first] == [UAS_UDP]
    assert first[0][0] == inv.serialize()
    log = run_timers(layer, 100_000)
    assert sent_times(log) == [500, 1500, 3500, 7500, 15500, 31500]
    for _, _, out in log:
        for msg, dest in out:
            assert dest == UAS_UDP and msg.serialize() == first[0][0]
    assert log[-1][0] == 32_000
    assert event_types(log[-1][1]) == [TransactionTimedOut, TransactionTerminated]
    assert log[-1][1][0] == TransactionTimedOut(key, inv)
    assert len(layer) == 0 and layer.next_deadline() is None


def test_client_invite_timers_scale_with_t1() -> None:
    layer = TransactionLayer(t1_ms=100, t2_ms=400)
    layer.send_request(request(), UAS_UDP, 1000)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log) == [1100, 1300, 1700, 2500, 4100, 7300]
    assert log[-1][0] == 1000 + 6400


def test_client_invite_tcp_sends_once_and_times_out_at_64_t1() -> None:
    layer = TransactionLayer()
    key = layer.send_request(request(transport="TCP"), UAS_TCP, 0)
    assert len(layer.outgoing()) == 1
    assert layer.next_deadline() == 32_000
    log = run_timers(layer, 100_000)
    assert sent_times(log) == []
    assert [(t, event_types(ev)) for t, ev, _ in log] == [(32_000, [TransactionTimedOut, TransactionTerminated])]
    assert layer.state(key) is TransactionState.TERMINATED


def test_client_invite_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    layer.outgoing()
    layer.handle_timer(500)
    assert len(layer.outgoing()) == 1
    ringing = reply(inv, 180)
    layer.receive(over_wire(ringing), UAS_UDP, 600)
    events = layer.events()
    assert len(events) == 1 and isinstance(events[0], ResponseReceived) and events[0].key == key
    assert events[0].response.status == 180
    assert layer.state(key) is TransactionState.PROCEEDING
    assert layer.next_deadline() is None  # the TU owns Timer C now
    layer.handle_timer(60_000)
    assert layer.outgoing() == [] and layer.events() == []
    layer.receive(over_wire(reply(inv, 183)), UAS_UDP, 61_000)
    assert [e.response.status for e in layer.events()] == [183]  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [300, 404, 486, 603])
def test_client_invite_non_2xx_is_acked_per_17_1_1_3(status: int) -> None:
    layer = TransactionLayer()
    inv = request(routes=("<sip:proxy1.example;lr>", "<sip:proxy2.example;lr>"), cseq=42)
    key = layer.send_request(inv, UAS_UDP, 0)
    layer.outgoing()
    final = reply(inv, status, to_tag="uas-tag")
    layer.receive(over_wire(final), UAS_UDP, 100)
    events, out = drain(layer)
    assert event_types(events) == [ResponseReceived]
    assert layer.state(key) is TransactionState.COMPLETED
    assert len(out) == 1
    ack, dest = out[0]
    assert dest == UAS_UDP
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == inv.uri
    assert [str(v) for v in ack.vias] == [str(inv.via)]  # the top Via only, same branch
    assert ack.call_id == inv.call_id
    assert ack.headers.get("from") == inv.headers.get("from")
    assert ack.to.tag == "uas-tag"
    assert (ack.cseq.seq, ack.cseq.method) == (42, "ACK")
    assert ack.headers.get_all("route") == ["<sip:proxy1.example;lr>", "<sip:proxy2.example;lr>"]
    assert ack.max_forwards == 70
    assert ack.body == b"" and ack.content_length == 0
    assert "contact" not in ack.headers


def test_client_invite_completed_re_acks_retransmitted_finals_then_timer_d() -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    layer.outgoing()
    busy = over_wire(reply(inv, 486))
    layer.receive(busy, UAS_UDP, 100)
    _, out = drain(layer)
    ack_bytes = out[0][0].serialize()
    assert layer.next_deadline() == 100 + 32_000
    for t in (600, 1600):
        layer.receive(over_wire(busy), UAS_UDP, t)
        events, again = drain(layer)
        assert events == []  # absorbed
        assert [m.serialize() for m, _ in again] == [ack_bytes]
    layer.receive(over_wire(reply(inv, 180)), UAS_UDP, 1700)
    layer.receive(over_wire(reply(inv, 200)), UAS_UDP, 1800)
    assert layer.events() == [] and layer.outgoing() == []
    layer.handle_timer(32_099)
    assert layer.state(key) is TransactionState.COMPLETED
    layer.handle_timer(32_100)
    assert layer.events() == [TransactionTerminated(key)]
    assert len(layer) == 0


def test_client_invite_over_tcp_leaves_completed_at_once() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key = layer.send_request(inv, UAS_TCP, 0)
    layer.outgoing()
    layer.receive(over_wire(reply(inv, 404)), UAS_TCP, 50)
    _, out = drain(layer)
    assert [m.method for m, _ in out] == ["ACK"]  # type: ignore[union-attr]
    assert layer.next_deadline() == 50  # Timer D = 0
    layer.handle_timer(50)
    assert layer.events() == [TransactionTerminated(key)] and len(layer) == 0


def test_client_invite_accepted_passes_every_2xx_until_timer_m() -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    layer.outgoing()
    ok = over_wire(reply(inv, 200, to_tag="fork-a"))
    layer.receive(ok, UAS_UDP, 200)
    events, out = drain(layer)
    assert events == [ResponseReceived(ok, key)] and out == []  # the TU ACKs a 2xx, not the transaction
    assert layer.state(key) is TransactionState.ACCEPTED
    assert layer.next_deadline() == 200 + 32_000  # Timer M
    layer.receive(over_wire(ok), UAS_UDP, 700)  # retransmission
    fork = over_wire(reply(inv, 200, to_tag="fork-b"))
    layer.receive(fork, UAS_UDP, 800)
    layer.receive(over_wire(reply(inv, 180)), UAS_UDP, 900)  # absorbed
    layer.receive(over_wire(reply(inv, 486)), UAS_UDP, 950)  # absorbed
    events, out = drain(layer)
    assert [(type(e), e.response.to.tag) for e in events] == [  # type: ignore[union-attr]
        (ResponseReceived, "fork-a"), (ResponseReceived, "fork-b")]
    assert out == []
    layer.transport_error(UAS_UDP, 1000)  # nothing of ours is in flight in Accepted
    assert layer.events() == [] and layer.state(key) is TransactionState.ACCEPTED
    layer.handle_timer(32_200)
    assert layer.events() == [TransactionTerminated(key)]
    # a 2xx retransmitted after Timer M is a stray, for the dialog layer to re-ACK
    late = over_wire(ok)
    layer.receive(late, UAS_UDP, 40_000)
    assert layer.events() == [StrayResponseReceived(late, UAS_UDP)]


def test_client_invite_2xx_straight_from_calling_over_tcp() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key = layer.send_request(inv, UAS_TCP, 0)
    layer.receive(over_wire(reply(inv, 200)), UAS_TCP, 10)
    assert layer.state(key) is TransactionState.ACCEPTED
    assert layer.next_deadline() == 32_010  # Timer M is 64*T1 on every transport
    run_timers(layer, 40_000)
    assert len(layer) == 0


@pytest.mark.parametrize("state_after", ["calling", "proceeding", "completed"])
def test_client_invite_transport_error(state_after: str) -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    if state_after == "proceeding":
        layer.receive(over_wire(reply(inv, 100)), UAS_UDP, 10)
    elif state_after == "completed":
        layer.receive(over_wire(reply(inv, 500)), UAS_UDP, 10)
    layer.events()
    layer.outgoing()
    layer.transport_error(("udp", "10.9.9.9", 5060), 20)  # another destination: untouched
    assert layer.events() == [] and key in layer
    layer.transport_error(UAS_UDP, 20)
    failed, terminated = layer.events()
    assert terminated == TransactionTerminated(key) and isinstance(failed, TransportFailed) and failed.key == key
    if state_after == "completed":  # answered: the request was let go, the event has its stand-in
        _assert_stands_in(failed.request, inv)
    else:
        assert failed.request is inv
    assert len(layer) == 0 and layer.next_deadline() is None


def _assert_stands_in(stand_in: Request, original: Request) -> None:
    """A let-go transaction's event request: the original's method, Request-URI, Call-ID and CSeq, nothing more."""
    assert stand_in is not original
    assert (stand_in.method, stand_in.uri, stand_in.call_id, stand_in.cseq) == (
        original.method, original.uri, original.call_id, original.cseq)


def test_an_answered_transaction_lets_its_request_go() -> None:
    """Waiting out Timer J/K/I/D/M, a transaction keeps bytes (what it re-sends), not the parsed request: kept,
    requests lived 32 s after every REGISTER and BYE for the cyclic collector to walk at every collection."""
    layer = TransactionLayer()
    reg = request("REGISTER")
    layer.receive(reg, UAC, 0)
    server_key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(reg, 200), 10)
    opt = request("OPTIONS")
    client_key = layer.send_request(opt, UAS_UDP, 0)
    layer.receive(over_wire(reply(opt, 200)), UAS_UDP, 10)
    for key in (server_key, client_key):
        assert layer.state(key) is TransactionState.COMPLETED
        assert layer._transactions[key].request is None and layer._transactions[key].request_bytes == b""
    layer.outgoing()
    layer.receive(over_wire(reg), UAC, 20)  # a retransmission still gets the same final response
    assert [data.split(b"\r\n", 1)[0] for data, _ in layer.outgoing()] == [b"SIP/2.0 200 OK"]
    # and what it keeps for those 32 s is mostly out of the cyclic collector's walks: its timers in a dict the
    # collector untracks (strs and ints), no list of dialogs awaiting an ACK (made for an INVITE's 2xx only),
    # timer heap entries of ints and strs (the cancelled TU wait's included)
    gc.collect()
    for key in (server_key, client_key):
        txn = layer._transactions[key]
        assert txn.timers and not gc.is_tracked(txn.timers) and txn.ack_waits is None
    assert len(layer._heap) >= 3 and not any(gc.is_tracked(entry) for entry in layer._heap)


# ---- client non-INVITE --------------------------------------------------------------------------------------


def test_client_non_invite_udp_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    layer = TransactionLayer()
    opt = request("OPTIONS")
    key = layer.send_request(opt, UAS_UDP, 0)
    assert layer.state(key) is TransactionState.TRYING
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log) == [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    assert log[-1][0] == 32_000
    assert log[-1][1] == [TransactionTimedOut(key, opt), TransactionTerminated(key)]
    assert len(layer) == 0


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    reg = request("REGISTER")
    key = layer.send_request(reg, UAS_UDP, 0)
    layer.outgoing()
    layer.handle_timer(500)  # E: next at 1500
    layer.outgoing()
    layer.receive(over_wire(reply(reg, 100, to_tag=None)), UAS_UDP, 600)
    assert event_types(layer.events()) == [ResponseReceived]
    assert layer.state(key) is TransactionState.PROCEEDING
    log = run_timers(layer, 100_000)
    assert sent_times(log) == [1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500]
    assert log[-1][0] == 32_000 and event_types(log[-1][1]) == [TransactionTimedOut, TransactionTerminated]


@pytest.mark.parametrize(("dest", "transport", "k_ms"), [(UAS_UDP, "UDP", 5000), (UAS_TCP, "TCP", 0)])
def test_client_non_invite_final_then_timer_k(dest: Destination, transport: str, k_ms: int) -> None:
    layer = TransactionLayer()
    bye = request("BYE", transport=transport, to_tag="remote")
    key = layer.send_request(bye, dest, 0)
    layer.outgoing()
    ok = over_wire(reply(bye, 200, to_tag="remote"))
    layer.receive(ok, dest, 300)
    assert layer.events() == [ResponseReceived(ok, key)]
    assert layer.state(key) is TransactionState.COMPLETED
    assert layer.next_deadline() == 300 + k_ms
    layer.receive(over_wire(ok), dest, 300 + k_ms // 2)  # retransmitted final: absorbed
    layer.receive(over_wire(reply(bye, 100)), dest, 300 + k_ms // 2)
    layer.transport_error(dest, 300 + k_ms // 2)
    assert layer.events() == [] and layer.outgoing() == []
    layer.handle_timer(300 + k_ms)
    assert layer.events() == [TransactionTerminated(key)] and len(layer) == 0


def test_client_non_invite_tcp_never_retransmits() -> None:
    layer = TransactionLayer()
    key = layer.send_request(request("OPTIONS", transport="TCP"), UAS_TCP, 0)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log) == [] and log[-1][0] == 32_000
    assert layer.state(key) is TransactionState.TERMINATED


def test_client_non_invite_transport_error() -> None:
    layer = TransactionLayer()
    opt = request("OPTIONS", transport="TCP")
    key = layer.send_request(opt, UAS_TCP, 0)
    layer.transport_error(UAS_TCP, 5)
    assert layer.events() == [TransportFailed(key, opt), TransactionTerminated(key)]


def test_send_request_validates_its_input() -> None:
    layer = TransactionLayer()
    with pytest.raises(SipLocalError):
        layer.send_request(request(branch="rfc2543-branch"), UAS_UDP, 0)
    with pytest.raises(SipLocalError):
        layer.send_request(request(branch=None), UAS_UDP, 0)
    with pytest.raises(SipLocalError):
        layer.send_request(request("ACK"), UAS_UDP, 0)
    with pytest.raises(SipLocalError):
        layer.send_request(request(), ("sctp", "10.0.0.2", 5060), 0)  # type: ignore[arg-type]
    inv = request()
    layer.send_request(inv, UAS_UDP, 0)
    with pytest.raises(SipLocalError):
        layer.send_request(inv, UAS_UDP, 0)
    assert len(layer) == 1
    with pytest.raises(SipLocalError):
        TransactionLayer(t1_ms=5000, t2_ms=4000)


def test_response_matching_uses_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    inv = request()
    key = layer.send_request(inv, UAS_UDP, 0)
    cancel = request("CANCEL", branch=inv.via.branch)
    cancel_key = layer.send_request(cancel, UAS_UDP, 100)
    assert cancel_key == ClientKey(key.branch, "CANCEL") and len(layer) == 2
    layer.receive(over_wire(reply(cancel, 200)), UAS_UDP, 200)
    layer.receive(over_wire(reply(inv, 487)), UAS_UDP, 210)
    events = layer.events()
    assert [(e.key, e.response.status) for e in events if isinstance(e, ResponseReceived)] == [
        (cancel_key, 200), (key, 487)]
    other = over_wire(reply(request(), 200))  # an unknown branch
    layer.receive(other, UAS_UDP, 300)
    assert layer.events() == [StrayResponseReceived(other, UAS_UDP)]


# ---- server INVITE ------------------------------------------------------------------------------------------


def test_server_invite_sends_100_after_200_ms_without_a_response_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    inv = request(rport=True)
    layer.receive(inv, ("udp", "203.0.113.5", 7777), 0)  # behind a NAT: rport sends it back to the source
    events, out = drain(layer)
    key = ServerKey(inv.via.branch or "", ("10.0.0.1", 5070), "INVITE")
    assert events == [RequestReceived(inv, ("udp", "203.0.113.5", 7777), key)]
    assert out == []  # §17.2.1: the TU may answer within 200 ms, which makes a 100 Trying unnecessary
    assert layer.state(key) is TransactionState.PROCEEDING
    assert layer.next_deadline() == TRYING_DELAY_MS == 200
    layer.handle_timer(199)
    assert layer.outgoing() == []
    layer.handle_timer(200)
    events, out = drain(layer)
    assert events == [] and [(m.status, d) for m, d in out] == [(100, ("udp", "203.0.113.5", 7777))]  # type: ignore[union-attr]
    trying = out[0][0]
    assert trying.to.tag is None and trying.serialize().count(b"Via:") == 2
    assert layer.next_deadline() is None
    layer.receive(over_wire(inv), ("udp", "203.0.113.5", 7777), 500)
    events, out = drain(layer)
    assert events == [] and [m.status for m, _ in out] == [100]  # type: ignore[union-attr]
    layer.send_response(reply(inv, 180), 600)
    layer.receive(over_wire(inv), ("udp", "203.0.113.5", 7777), 1500)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [180, 180]  # type: ignore[union-attr]
    assert layer.events() == []


def test_server_invite_answered_within_200_ms_sends_no_100() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    assert layer.outgoing() == []
    layer.send_response(reply(inv, 180, to_tag="uas"), 40)
    layer.send_response(reply(inv, 200, to_tag="uas"), 60)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [180, 200]  # type: ignore[union-attr]
    assert layer.state(key) is TransactionState.ACCEPTED
    assert layer.next_deadline() == 60 + 500  # the 2xx's retransmission; no Trying timer left
    layer.handle_timer(200)
    assert layer.outgoing() == []


def test_server_invite_retransmitted_before_200_ms_gets_100_at_once_and_only_once() -> None:
    layer = TransactionLayer(t1_ms=100, t2_ms=400)  # a client whose T1 is shorter than the 200 ms
    inv = request()
    layer.receive(inv, UAC, 0)
    layer.events()
    assert layer.outgoing() == []
    layer.receive(over_wire(inv), UAC, 100)
    _, out = drain(layer)
    assert [(m.status, d) for m, d in out] == [(100, UAC)]  # type: ignore[union-attr]
    layer.handle_timer(200)
    assert layer.outgoing() == []  # the 100 went: the timer went with it
    layer.receive(over_wire(inv), UAC, 300)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [100]  # type: ignore[union-attr]


def test_the_100_trying_timers_of_invites_within_a_grain_fall_due_together() -> None:
    layer = TransactionLayer()
    first, second = request(call_id="call-1"), request(call_id="call-2")
    layer.receive(first, UAC, 1_010)
    layer.receive(second, UAC, 1_040)
    assert layer.next_deadline() == 1_200  # both: 1,210 and 1,240 rounded down to the 50 ms grain
    layer.send_response(reply(first, 180, to_tag="uas"), 1_050)
    layer.outgoing()
    assert layer.next_deadline() == 1_200  # the second's, the same instant: the loop's timer stays put
    layer.handle_timer(1_200)
    _, out = drain(layer)
    assert [(m.status, m.call_id) for m, _ in out] == [(100, second.call_id)]  # type: ignore[union-attr]


def test_server_invite_with_no_trying_delay_answers_100_at_once() -> None:
    layer = TransactionLayer(trying_delay_ms=0)
    inv = request()
    layer.receive(inv, UAC, 0)
    _, out = drain(layer)
    assert [(m.status, d) for m, d in out] == [(100, UAC)]  # type: ignore[union-attr]
    assert layer.next_deadline() is None
    with pytest.raises(SipLocalError):
        TransactionLayer(trying_delay_ms=-1)


def test_server_udp_response_without_rport_goes_to_source_ip_and_sent_by_port() -> None:
    layer = TransactionLayer()
    layer.receive(request("OPTIONS", via_host="pc.example:5072"), ("udp", "198.51.100.3", 6000), 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    assert key.sent_by == ("pc.example", 5072)
    layer.send_response(reply(layer_request(key, "OPTIONS"), 200), 10)
    assert [d for _, d in layer.outgoing()] == [("udp", "198.51.100.3", 5072)]


def layer_request(key: ServerKey, method: str) -> Request:
    return request(method, branch=key.branch, via_host=f"{key.sent_by[0]}:{key.sent_by[1]}")


def test_server_invite_non_2xx_timer_g_then_timer_h_times_out() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    layer.send_response(reply(inv, 486), 1000)
    _, out = drain(layer)
    assert [(m.status, d) for m, d in out] == [(486, UAC)]  # type: ignore[union-attr]
    assert layer.state(key) is TransactionState.COMPLETED
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == [1500, 2500, 4500, 8500, 12500, 16500, 20500, 24500, 28500, 32500]
    assert all(m.status == 486 for _, _, out in log for m, _ in out)  # type: ignore[union-attr]
    assert log[-1][0] == 33_000
    assert log[-1][1] == [TransactionTimedOut(key, inv), TransactionTerminated(key)]
    assert len(layer) == 0


def test_server_invite_ack_confirms_then_timer_i() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(inv, 603), 100)
    layer.outgoing()
    layer.handle_timer(600)  # one Timer G retransmission
    assert len(layer.outgoing()) == 1
    ack = request("ACK", branch=inv.via.branch, to_tag="to-tag")  # §17.1.1.3: the INVITE's branch
    layer.receive(ack, UAC, 700)
    assert layer.events() == []  # the ACK of a non-2xx stays inside the transaction
    assert layer.state(key) is TransactionState.CONFIRMED
    assert layer.next_deadline() == 700 + 5000  # Timer I = T4; G and H are gone
    layer.receive(over_wire(ack), UAC, 800)
    layer.receive(over_wire(inv), UAC, 900)
    assert layer.events() == [] and layer.outgoing() == []
    layer.handle_timer(5700)
    assert layer.events() == [TransactionTerminated(key)] and len(layer) == 0


def test_server_invite_tcp_non_2xx_no_timer_g_and_timer_i_zero() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    layer.receive(inv, UAC_TCP, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(inv, 404), 10)
    assert [d for _, d in layer.outgoing()] == [UAC_TCP]  # back over the connection, not to the Via
    assert layer.next_deadline() == 32_010  # Timer H only (no Trying timer: the 404 went within 200 ms)
    layer.receive(request("ACK", branch=inv.via.branch, transport="TCP", to_tag="to-tag"), UAC_TCP, 20)
    assert layer.state(key) is TransactionState.CONFIRMED
    assert layer.next_deadline() == 20
    layer.handle_timer(20)
    assert layer.events() == [TransactionTerminated(key)] and len(layer) == 0


def test_server_invite_tcp_timer_h() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    layer.receive(inv, UAC_TCP, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(inv, 404), 10)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert [(t, ev) for t, ev, _ in log] == [(32_010, [TransactionTimedOut(key, inv), TransactionTerminated(key)])]
    assert sent_times(log, Response) == []


def test_server_invite_2xx_is_retransmitted_until_the_ack_of_the_dialog() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    ok = reply(inv, 200, to_tag="dialog-tag")
    layer.send_response(ok, 1000)
    assert layer.state(key) is TransactionState.ACCEPTED
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [200]  # type: ignore[union-attr]
    log = run_timers(layer, 13_000)
    assert sent_times(log, Response) == [1500, 2500, 4500, 8500, 12500]
    layer.receive(over_wire(inv), UAC, 12_600)  # RFC 6026: a retransmitted INVITE in Accepted is absorbed
    assert layer.outgoing() == [] and layer.events() == []
    ack = request("ACK", to_tag="dialog-tag")  # a new branch, matched by Call-ID, CSeq number and To tag
    layer.receive(ack, UAC, 13_000)
    assert layer.events() == [RequestReceived(ack, UAC, None)]
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == []  # retransmission stopped
    assert [(t, ev) for t, ev, _ in log] == [(33_000, [TransactionTerminated(key)])]  # Timer L, no AckTimedOut


def test_server_invite_2xx_without_ack_reports_ack_timed_out() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    layer.send_response(reply(inv, 200), 0)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    assert log[-1][0] == 32_000
    assert log[-1][1] == [AckTimedOut(key, inv), TransactionTerminated(key)]
    assert len(layer) == 0


def test_server_invite_2xx_over_tcp_is_not_retransmitted_but_ack_timeout_still_reported() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    layer.receive(inv, UAC_TCP, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    layer.send_response(reply(inv, 200), 0)
    assert len(layer.outgoing()) == 1
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == []
    assert [(t, ev) for t, ev, _ in log] == [(32_000, [AckTimedOut(key, inv), TransactionTerminated(key)])]


def test_server_invite_accepted_passes_tu_2xx_through_and_ack_wrong_dialog_is_not_matched() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    ok = reply(inv, 200, to_tag="t1")
    layer.send_response(ok, 0)
    layer.outgoing()
    layer.send_response(ok, 100)  # the TU retransmitting by itself: passed through (RFC 6026 §8.6)
    assert [parse_message(b).status for b, _ in layer.outgoing()] == [200]  # type: ignore[union-attr]
    with pytest.raises(SipLocalError):
        layer.send_response(reply(inv, 180), 150)  # a provisional after a 2xx is a TU bug
    stranger = request("ACK", to_tag="other-tag")
    layer.receive(stranger, UAC, 200)
    assert layer.events() == [RequestReceived(stranger, UAC, None)]
    layer.handle_timer(500)
    assert len(layer.outgoing()) == 1  # still retransmitting: that ACK was for another dialog
    # an ACK reusing the INVITE's branch also matches the Accepted transaction (RFC 6026 §8.7)
    same_branch_ack = request("ACK", branch=inv.via.branch, to_tag="t1")
    layer.receive(same_branch_ack, UAC, 600)
    assert layer.events() == [RequestReceived(same_branch_ack, UAC, None)]
    layer.handle_timer(1500)
    assert layer.outgoing() == []
    assert layer.state(key) is TransactionState.ACCEPTED


@pytest.mark.parametrize("stage", ["proceeding", "completed", "accepted", "confirmed"])
def test_server_invite_transport_error(stage: str) -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    layer.receive(inv, UAC_TCP, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    if stage in ("completed", "confirmed"):
        layer.send_response(reply(inv, 480), 10)
    if stage == "confirmed":
        layer.receive(request("ACK", branch=inv.via.branch, transport="TCP", to_tag="to-tag"), UAC_TCP, 20)
    if stage == "accepted":
        layer.send_response(reply(inv, 200), 10)
    layer.outgoing()
    layer.transport_error(UAC_TCP, 30)
    events = layer.events()
    if stage == "confirmed":
        assert events == [TransactionTerminated(key)]
    else:
        assert events == [TransportFailed(key, inv), TransactionTerminated(key)]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_send_response_without_transaction_is_a_local_error() -> None:
    layer = TransactionLayer()
    with pytest.raises(SipLocalError):
        layer.send_response(reply(request(), 200), 0)
    with pytest.raises(SipLocalError):
        layer.send_response(reply(request(branch="old-style"), 200), 0)


# ---- server non-INVITE --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "transport", "j_ms"), [(UAC, "UDP", 32_000), (UAC_TCP, "TCP", 0)])
def test_server_non_invite_full_path(source: Destination, transport: str, j_ms: int) -> None:
    layer = TransactionLayer()
    opt = request("OPTIONS", transport=transport)
    layer.receive(opt, source, 0)
    events, out = drain(layer)
    key = ServerKey(opt.via.branch or "", ("10.0.0.1", 5070), "OPTIONS")
    assert events == [RequestReceived(opt, source, key)] and out == []  # no automatic 100 for non-INVITE
    assert layer.state(key) is TransactionState.TRYING
    layer.receive(over_wire(opt), source, 100)  # Trying: nothing to re-send
    assert layer.outgoing() == [] and layer.events() == []
    layer.send_response(reply(opt, 100, to_tag=None), 200)
    assert layer.state(key) is TransactionState.PROCEEDING
    layer.receive(over_wire(opt), source, 300)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [100, 100]  # type: ignore[union-attr]
    layer.send_response(reply(opt, 200), 400)
    assert layer.state(key) is TransactionState.COMPLETED
    layer.send_response(reply(opt, 500), 450)  # §17.2.2: later finals are discarded
    layer.receive(over_wire(opt), source, 500)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [200, 200]  # type: ignore[union-attr]
    assert layer.next_deadline() == 400 + j_ms
    log = run_timers(layer, 100_000)
    assert [(t, ev) for t, ev, _ in log] == [(400 + j_ms, [TransactionTerminated(key)])]
    assert sent_times(log, Response) == []  # a non-INVITE server never retransmits on its own


def test_server_non_invite_final_from_trying_and_transport_error() -> None:
    layer = TransactionLayer()
    reg = request("REGISTER")
    layer.receive(reg, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(reg, 401), 10)
    assert layer.state(key) is TransactionState.COMPLETED
    layer.transport_error(UAC, 20)
    failed, terminated = layer.events()
    assert terminated == TransactionTerminated(key) and isinstance(failed, TransportFailed) and failed.key == key
    _assert_stands_in(failed.request, reg)


# ---- matching -----------------------------------------------------------------------------------------------


def test_same_branch_from_another_sent_by_is_another_transaction() -> None:
    layer = TransactionLayer()
    a = request("OPTIONS", branch="z9hG4bKsame")
    b = request("OPTIONS", branch="z9hG4bKsame", via_host="10.0.0.99:5060")
    layer.receive(a, UAC, 0)
    layer.receive(b, ("udp", "10.0.0.99", 5060), 0)
    assert event_types(layer.events()) == [RequestReceived, RequestReceived]
    assert len(layer) == 2


def test_cancel_is_its_own_transaction_and_finds_its_invite() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, UAC, 0)
    inv_key = layer.events()[0].key  # type: ignore[union-attr]
    layer.outgoing()
    cancel = request("CANCEL", branch=inv.via.branch)
    layer.receive(cancel, UAC, 100)
    (event,) = layer.events()
    assert isinstance(event, RequestReceived) and event.key is not None
    assert event.key == ServerKey(inv_key.branch, inv_key.sent_by, "CANCEL") != inv_key
    assert layer.matching_invite(cancel) == inv_key
    assert layer.matching_invite(request("CANCEL")) is None  # another branch
    layer.send_response(reply(cancel, 200), 110)
    layer.send_response(reply(inv, 487), 110)
    _, out = drain(layer)
    assert [(m.status, m.cseq.method) for m, _ in out] == [(200, "CANCEL"), (487, "INVITE")]  # type: ignore[union-attr]
    assert layer.state(event.key) is TransactionState.COMPLETED
    assert layer.state(inv_key) is TransactionState.COMPLETED


@pytest.mark.parametrize("branch", [None, "1234-rfc2543"])
def test_rfc2543_fallback_matching(branch: str | None) -> None:
    layer = TransactionLayer()
    inv = request(branch=branch)
    layer.receive(inv, UAC, 0)
    (event,) = layer.events()
    assert isinstance(event, RequestReceived) and event.key is not None
    key = event.key
    assert key.legacy and key.method == "INVITE"
    layer.outgoing()
    layer.receive(over_wire(inv), UAC, 100)  # same Request-URI, tags, Call-ID, CSeq, top Via
    assert layer.events() == [] and len(layer.outgoing()) == 1
    other = request(branch=branch, cseq=2)
    layer.receive(other, UAC, 150)
    assert event_types(layer.events()) == [RequestReceived] and len(layer) == 2
    layer.outgoing()
    cancel = request("CANCEL", branch=branch)
    assert layer.matching_invite(cancel) == key
    layer.send_response(reply(inv, 486, to_tag="legacy-tag"), 200)  # matched without the magic cookie
    assert [parse_message(b).status for b, _ in layer.outgoing()] == [486]  # type: ignore[union-attr]
    wrong_tag_ack = request("ACK", branch=branch, to_tag="nope")
    layer.receive(wrong_tag_ack, UAC, 300)
    assert layer.events() == [RequestReceived(wrong_tag_ack, UAC, None)]
    assert layer.state(key) is TransactionState.COMPLETED
    layer.receive(request("ACK", branch=branch, to_tag="legacy-tag"), UAC, 300)
    assert layer.events() == [] and layer.state(key) is TransactionState.CONFIRMED
    run_timers(layer, 40_000)
    layer.send_response(reply(other, 500), 40_000)
    run_timers(layer, 100_000)
    assert len(layer) == 0


def test_ack_without_transaction_goes_to_the_tu() -> None:
    layer = TransactionLayer()
    ack = request("ACK", to_tag="x")
    layer.receive(ack, UAC, 0)
    assert layer.events() == [RequestReceived(ack, UAC, None)] and len(layer) == 0


def test_send_stateless_outputs_once_without_a_transaction() -> None:
    layer = TransactionLayer()
    ack = request("ACK", to_tag="x")
    layer.send_stateless(ack, UAS_UDP)
    assert layer.outgoing() == [(ack.serialize(), UAS_UDP)]
    assert len(layer) == 0 and layer.next_deadline() is None and layer.events() == []


def test_heap_stays_bounded_under_churn() -> None:
    layer = TransactionLayer()
    now = 0
    for _ in range(2000):
        inv = request()
        key = layer.send_request(inv, UAS_UDP, now)
        layer.receive(over_wire(reply(inv, 180)), UAS_UDP, now + 1)  # cancels A and B: two dead heap entries
        layer.receive(over_wire(reply(inv, 486)), UAS_UDP, now + 2)
        layer.transport_error(UAS_UDP, now + 3)
        assert key not in layer
        now += 5
    assert len(layer) == 0
    assert len(layer._heap) <= 64 + 4  # compacted, not 8000 dead entries
    layer.events()
    assert layer.next_deadline() is None


# ---- two layers over a lossy network ------------------------------------------------------------------------


@dataclass
class LossyNetwork:
    """Delivers outgoing datagrams after ``latency_ms``, dropping the first copies of chosen messages."""

    latency_ms: int = 20
    drops: dict[str, int] = field(default_factory=dict)  # start-line prefix -> copies still to drop
    duplicate: frozenset[str] = frozenset()
    in_flight: list[tuple[int, int, bytes, Destination, Destination]] = field(default_factory=list)
    seq: int = 0
    dropped: int = 0

    def send(self, data: bytes, src: Destination, dst: Destination, now: int) -> None:
        first_line = data.split(b"\r\n", 1)[0].decode()
        for prefix, left in self.drops.items():
            if first_line.startswith(prefix) and left > 0:
                self.drops[prefix] = left - 1
                self.dropped += 1
                return
        copies = 2 if any(first_line.startswith(p) for p in self.duplicate) else 1
        for _ in range(copies):
            self.seq += 1
            self.in_flight.append((now + self.latency_ms, self.seq, data, src, dst))


SERVER_ADDR: Destination = ("udp", "10.0.0.2", 5060)
CLIENT_ADDR: Destination = ("udp", "10.0.0.1", 5070)


def simulate(net: LossyNetwork, client: TransactionLayer, server: TransactionLayer,
             client_tu, server_tu, until: int = 200_000) -> list[tuple[str, TransactionEvent]]:
    """Run both layers and the network in time order; TU callbacks react to events."""
    log: list[tuple[str, TransactionEvent]] = []
    now = 0
    for _ in range(100_000):  # bounded
        for name, layer, me, tu in (("client", client, CLIENT_ADDR, client_tu),
                                    ("server", server, SERVER_ADDR, server_tu)):
            for _i in range(100):
                events = layer.events()
                out = layer.outgoing()
                if not events and not out:
                    break
                for data, dst in out:
                    net.send(data, me, dst, now)
                for ev in events:
                    log.append((name, ev))
                    tu(layer, ev, now)
        candidates = [t for t in (client.next_deadline(), server.next_deadline()) if t is not None]
        if net.in_flight:
            candidates.append(min(net.in_flight)[0])
        if not candidates:
            return log
        now = min(candidates)
        assert now <= until, "simulation did not settle"
        if net.in_flight and min(net.in_flight)[0] == now:
            net.in_flight.sort()
            _, _, data, src, dst = net.in_flight.pop(0)
            target = server if dst == SERVER_ADDR else client
            target.receive(parse_message(data), src, now)
        else:
            client.handle_timer(now)
            server.handle_timer(now)
    raise AssertionError("simulation loop bound reached")


def test_invite_2xx_call_setup_over_a_lossy_network() -> None:
    client, server = TransactionLayer(), TransactionLayer()
    # no 100 Trying: the TU rings and answers as the INVITE arrives (§17.2.1), so only the 180 and 200 go back
    net = LossyNetwork(drops={"INVITE": 2, "SIP/2.0 200": 3, "ACK": 1},
                       duplicate=frozenset({"SIP/2.0 180", "INVITE"}))
    inv = request()
    acks_sent: list[int] = []

    def client_tu(layer: TransactionLayer, ev: TransactionEvent, now: int) -> None:
        if isinstance(ev, ResponseReceived | StrayResponseReceived) and ev.response.status == 200:
            ack = request("ACK", to_tag=ev.response.to.tag)  # a new branch: the ACK of a 2xx (§13.2.2.4)
            layer.send_stateless(ack, SERVER_ADDR)
            acks_sent.append(now)

    def server_tu(layer: TransactionLayer, ev: TransactionEvent, now: int) -> None:
        if isinstance(ev, RequestReceived) and ev.request.method == "INVITE":
            layer.send_response(reply(ev.request, 180, to_tag="uas"), now)
            layer.send_response(reply(ev.request, 200, to_tag="uas"), now)

    client.send_request(inv, SERVER_ADDR, 0)
    log = simulate(net, client, server, client_tu, server_tu)
    kinds = [(who, type(ev).__name__) for who, ev in log]
    assert kinds.count(("server", "RequestReceived")) >= 2  # the INVITE once, the ACK at least once
    assert next(ev.request.method for who, ev in log if who == "server" and isinstance(ev, RequestReceived)) == (
        "INVITE")
    assert ("server", "AckTimedOut") not in kinds and ("client", "TransactionTimedOut") not in kinds
    assert any(isinstance(ev, RequestReceived) and ev.request.method == "ACK" for who, ev in log if who == "server")
    statuses = [ev.response.status for who, ev in log if who == "client" and isinstance(ev, ResponseReceived)]
    assert 200 in statuses
    assert len(acks_sent) >= 2  # the first ACK was lost, the retransmitted 2xx was ACKed again
    assert net.dropped == 6
    assert len(client) == 0 and len(server) == 0


def test_invite_rejected_over_a_lossy_network_absorbs_retransmissions() -> None:
    client, server = TransactionLayer(), TransactionLayer()
    net = LossyNetwork(drops={"SIP/2.0 486": 2, "ACK": 1}, duplicate=frozenset({"SIP/2.0 486", "INVITE"}))
    inv = request()

    def server_tu(layer: TransactionLayer, ev: TransactionEvent, now: int) -> None:
        if isinstance(ev, RequestReceived) and ev.request.method == "INVITE":
            layer.send_response(reply(ev.request, 486, to_tag="uas"), now)

    client.send_request(inv, SERVER_ADDR, 0)
    log = simulate(net, client, server, lambda *a: None, server_tu)
    client_finals = [ev for who, ev in log if who == "client" and isinstance(ev, ResponseReceived)
                     and ev.response.status >= 200]
    assert [ev.response.status for ev in client_finals] == [486]  # retransmissions absorbed
    server_requests = [ev for who, ev in log if who == "server" and isinstance(ev, RequestReceived)]
    assert [ev.request.method for ev in server_requests] == ["INVITE"]  # the ACK stays in the transaction
    assert not any(isinstance(ev, TransactionTimedOut) for _, ev in log)
    assert net.dropped == 3
    assert len(client) == 0 and len(server) == 0


def test_non_invite_over_a_lossy_network() -> None:
    client, server = TransactionLayer(), TransactionLayer()
    net = LossyNetwork(drops={"OPTIONS": 3, "SIP/2.0 200": 2}, duplicate=frozenset({"SIP/2.0 200"}))
    opt = request("OPTIONS")

    def server_tu(layer: TransactionLayer, ev: TransactionEvent, now: int) -> None:
        if isinstance(ev, RequestReceived):
            layer.send_response(reply(ev.request, 200), now)

    key = client.send_request(opt, SERVER_ADDR, 0)
    log = simulate(net, client, server, lambda *a: None, server_tu)
    assert net.dropped == 5
    assert [(who, type(ev).__name__) for who, ev in log if not isinstance(ev, TransactionTerminated)] == [
        ("server", "RequestReceived"), ("client", "ResponseReceived")]
    assert ("client", TransactionTerminated(key)) in log
    assert len(client) == 0 and len(server) == 0


@pytest.mark.parametrize("seed", range(8))
def test_random_loss_never_breaks_an_options_exchange(seed: int) -> None:
    rng = random.Random(seed)
    client, server = TransactionLayer(), TransactionLayer()
    net = LossyNetwork(drops={"OPTIONS": rng.randrange(6), "SIP/2.0 200": rng.randrange(6)})

    def server_tu(layer: TransactionLayer, ev: TransactionEvent, now: int) -> None:
        if isinstance(ev, RequestReceived):
            layer.send_response(reply(ev.request, 200), now)

    client.send_request(request("OPTIONS"), SERVER_ADDR, 0)
    log = simulate(net, client, server, lambda *a: None, server_tu)
    got = [ev for who, ev in log if who == "client" and isinstance(ev, ResponseReceived | TransactionTimedOut)]
    assert len(got) == 1 and isinstance(got[0], ResponseReceived)
    assert len(client) == 0 and len(server) == 0


# ---- the linger grain: transactions that only wait out a timer end together --------------------------------


def test_lingering_transactions_end_on_the_grain_and_together_while_the_rest_keeps_its_time() -> None:
    layer = TransactionLayer(linger_grain_ms=250)
    keys = []
    for now in (1_010, 1_120, 1_240):  # three OPTIONS answered within one grain: Timer J due 33,010..33,240
        opt = request("OPTIONS")
        layer.receive(opt, UAC, now)
        keys.append(layer.events()[0].key)  # type: ignore[union-attr]
        layer.send_response(reply(opt, 200), now)
    inv = request("INVITE")  # an INVITE answered 486 over UDP: Timer G and H keep their exact times
    layer.receive(inv, UAC, 1_240)
    inv_key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(inv, 486), 1_240)
    drain(layer)
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response)[:2] == [1_740, 2_740]  # Timer G: T1, 2·T1 after the 486, to the millisecond
    ends = {t: ev for t, ev, _ in log if any(isinstance(e, (TransactionTerminated, TransactionTimedOut)) for e in ev)}
    assert ends[33_250] == [TransactionTerminated(k) for k in keys]  # one callback for the three, on the grain
    assert ends[33_240] == [TransactionTimedOut(inv_key, inv), TransactionTerminated(inv_key)]  # Timer H: exact


def test_the_linger_grain_delays_no_transaction_over_a_reliable_transport_and_no_grain_is_exact() -> None:
    layer = TransactionLayer(linger_grain_ms=250)
    opt = request("OPTIONS", transport="TCP")
    layer.receive(opt, UAC_TCP, 1_010)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(opt, 200), 1_010)
    assert layer.next_deadline() == 1_010  # Timer J is 0 over TCP: due at once, not on the grain
    layer.handle_timer(1_010)
    assert layer.events() == [TransactionTerminated(key)] and len(layer) == 0
    exact = TransactionLayer()
    opt = request("OPTIONS")
    exact.receive(opt, UAC, 1_010)
    exact.send_response(reply(opt, 200), 1_010)
    assert exact.next_deadline() == 33_010
    with pytest.raises(SipLocalError):
        TransactionLayer(linger_grain_ms=-1)


def test_a_layer_asked_not_to_report_terminations_ends_its_transactions_silently() -> None:
    layer = TransactionLayer(report_terminations=False)
    opt = request("OPTIONS")
    layer.receive(opt, UAC, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    layer.send_response(reply(opt, 200), 0)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert [t for t, _, _ in log] == [32_000] and all(ev == [] for _, ev, _ in log)  # ended, nothing said
    assert key not in layer and len(layer) == 0
    inv = request("INVITE")  # a timeout is still reported, only the termination after it is not
    layer.send_request(inv, UAS_UDP, 0)
    log = run_timers(layer, 100_000)
    assert [type(e) for _, ev, _ in log for e in ev] == [TransactionTimedOut]
