"""RFC 3262 §3 in the transaction layer: a reliable provisional response is re-sent at T1 doubling until the TU
reports its PRACK or a final response goes out; ``PrackTimedOut`` after 64·T1 without one."""

from __future__ import annotations

import pytest

from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import PrackTimedOut, ServerKey, TransactionLayer, TransactionState
from tests.pbx.test_transaction import UAC, UAC_TCP, drain, reply, request, run_timers, sent_times


def reliable(inv: Request, status: int = 183, rseq: int = 7) -> Response:
    response = reply(inv, status)
    response.headers.add("Require", "100rel")
    response.headers.add("RSeq", str(rseq))
    return response


def started(source: tuple[str, str, int] = UAC) -> tuple[TransactionLayer, ServerKey, Request]:
    layer = TransactionLayer()
    inv = request(transport=source[0].upper())
    layer.receive(inv, source, 0)
    key = layer.events()[0].key  # type: ignore[union-attr]
    assert isinstance(key, ServerKey)
    layer.outgoing()
    return layer, key, inv


def test_reliable_1xx_is_resent_at_t1_doubling_until_pracked() -> None:
    layer, key, inv = started()
    layer.send_reliable_provisional(reliable(inv), 0)
    _, out = drain(layer)
    assert [m.status for m, _ in out] == [183]  # type: ignore[union-attr]
    log = run_timers(layer, 3_600)
    assert sent_times(log, Response) == [500, 1500, 3500]  # no T2 cap: 500, 1000, 2000, ...
    layer.acknowledge_provisional(key, 3_600)
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == [] and all(not events for _, events, _ in log)
    assert layer.state(key) is TransactionState.PROCEEDING


def test_no_prack_reports_prack_timed_out_at_64_t1_and_the_transaction_stays_for_a_5xx() -> None:
    layer, key, inv = started()
    layer.send_reliable_provisional(reliable(inv), 0)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == [500, 1500, 3500, 7500, 15500, 31500]
    assert log[-1][0] == 32_000 and log[-1][1] == [PrackTimedOut(key, inv)]
    layer.send_response(reply(inv, 500), 32_000)  # the TU rejects the INVITE (§3: a 5xx)
    assert [m.status for m, _ in drain(layer)[1]] == [500]  # type: ignore[union-attr]


def test_a_final_response_stops_the_retransmissions_and_a_late_prack_is_harmless() -> None:
    layer, key, inv = started()
    layer.send_reliable_provisional(reliable(inv, 180), 0)
    layer.outgoing()
    layer.send_response(reply(inv, 200), 700)
    log = run_timers(layer, 2_000)
    assert 183 not in [m.status for _, _, out in log for m, _ in out]  # type: ignore[union-attr]
    layer.acknowledge_provisional(key, 2_000)
    assert not any(isinstance(e, PrackTimedOut) for _, events, _ in run_timers(layer, 100_000) for e in events)


def test_one_outstanding_reliable_1xx_at_a_time() -> None:
    layer, key, inv = started()
    layer.send_reliable_provisional(reliable(inv, 180, 1), 0)
    with pytest.raises(SipLocalError):
        layer.send_reliable_provisional(reliable(inv, 183, 2), 10)
    layer.acknowledge_provisional(key, 20)
    layer.send_reliable_provisional(reliable(inv, 183, 2), 30)
    assert [m.status for m, _ in drain(layer)[1]] == [180, 183]  # type: ignore[union-attr]


def test_over_tcp_it_is_sent_once_but_the_prack_wait_still_runs() -> None:
    layer, key, inv = started(UAC_TCP)
    layer.send_reliable_provisional(reliable(inv), 0)
    layer.outgoing()
    log = run_timers(layer, 100_000)
    assert sent_times(log, Response) == []
    assert [(t, ev) for t, ev, _ in log] == [(32_000, [PrackTimedOut(key, inv)])]


def test_only_a_1xx_to_an_invite_can_be_reliable() -> None:
    layer, _, inv = started()
    with pytest.raises(SipLocalError):
        layer.send_reliable_provisional(reply(inv, 200), 0)
    with pytest.raises(SipLocalError):
        layer.send_reliable_provisional(reply(inv, 100), 0)
