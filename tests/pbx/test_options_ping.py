"""OPTIONS keep-alive probing (RFC 3261 §11), pure: explicit ``now``, responses built by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipLocalError
from ccpbx.pbx.sip.message import Request, Response, make_response, parse_message
from ccpbx.pbx.sip.options_ping import OptionsPinger, PeerState, PeerStateChanged
from ccpbx.pbx.sip.uri import SipUri

TARGET = SipUri(host="sip.provider.example", port=5070, params=(("transport", "tcp"),))


def make(**kwargs: object) -> OptionsPinger:
    options: dict[str, object] = {"via_host": "192.0.2.10", "via_port": 5060, "transport": "tcp"}
    options.update(kwargs)
    interval = options.pop("interval_s", 30)
    return OptionsPinger(TARGET, interval, **options)  # type: ignore[arg-type]


def sent(pinger: OptionsPinger) -> Request:
    (request,) = pinger.outgoing()
    parsed = parse_message(request.serialize())
    assert isinstance(parsed, Request)
    return parsed


def reply(request: Request, status: int) -> Response:
    parsed = parse_message(make_response(request, status, to_tag="peer").serialize())
    assert isinstance(parsed, Response)
    return parsed


def test_probe_is_a_complete_options_request() -> None:
    pinger = make(user_agent="ccpbx-test", contact="<sip:ccpbx@192.0.2.10:5060;transport=tcp>")
    pinger.start(1_000)
    request = sent(pinger)
    assert request.method == "OPTIONS" and request.uri == TARGET and request.to.uri == TARGET
    assert request.max_forwards == 70 and request.headers.get("accept") == "application/sdp"
    assert (request.cseq.seq, request.cseq.method) == (1, "OPTIONS")
    assert request.via.transport == "TCP" and request.via.branch and request.via.branch.startswith("z9hG4bK")
    assert request.from_.tag and str(request.from_.uri) == "sip:ccpbx@192.0.2.10:5060"
    assert request.headers.get("contact") == "<sip:ccpbx@192.0.2.10:5060;transport=tcp>"
    assert request.headers.get("user-agent") == "ccpbx-test"
    assert pinger.destination == ("tcp", "sip.provider.example", 5070)
    assert pinger.status.state is PeerState.UNKNOWN and pinger.status.outstanding


@pytest.mark.parametrize("status", [200, 404, 405, 501, 503])
def test_any_final_response_means_up(status: int) -> None:
    pinger = make()
    pinger.start(1_000)
    request = sent(pinger)
    pinger.receive_response(reply(request, 100), 1_010)
    assert pinger.status.state is PeerState.UNKNOWN
    pinger.receive_response(reply(request, status), 1_045)
    s = pinger.status
    assert (s.state, s.last_rtt_ms, s.last_change_ms, s.last_status, s.misses) == (PeerState.UP, 45, 1_045, status, 0)
    assert pinger.events() == [PeerStateChanged(PeerState.UP, PeerState.UNKNOWN, 1_045, 45, 0)]
    assert pinger.next_deadline() == 31_000


def test_each_probe_has_a_fresh_call_id_and_goes_every_interval() -> None:
    pinger = make(interval_s=30)
    pinger.start(0)
    call_ids = set()
    now = 0
    for _ in range(3):
        request = sent(pinger)
        call_ids.add(request.call_id)
        pinger.receive_response(reply(request, 200), now + 20)
        assert pinger.next_deadline() == now + 30_000
        pinger.handle_timer(now + 29_999)
        assert pinger.outgoing() == []
        now += 30_000
        pinger.handle_timer(now)
    assert len(call_ids) == 3


def test_down_after_consecutive_misses_and_up_again() -> None:
    pinger = make(interval_s=60, down_after=2)
    pinger.start(0)
    pinger.receive_response(reply(sent(pinger), 200), 10)
    pinger.events()
    pinger.handle_timer(60_000)
    pinger.transaction_failed(92_000, sent(pinger))
    assert pinger.status.state is PeerState.UP and pinger.status.misses == 1
    pinger.handle_timer(120_000)
    pinger.transaction_failed(152_000, sent(pinger))
    s = pinger.status
    assert s.state is PeerState.DOWN and s.last_change_ms == 152_000 and s.misses == 2
    assert pinger.events() == [PeerStateChanged(PeerState.DOWN, PeerState.UP, 152_000, None, 2)]
    pinger.handle_timer(180_000)
    pinger.receive_response(reply(sent(pinger), 404), 180_030)
    assert pinger.status.state is PeerState.UP and pinger.status.misses == 0 and pinger.status.last_rtt_ms == 30


def test_a_probe_outlasting_the_interval_is_followed_at_once() -> None:
    pinger = make(interval_s=10, down_after=3)
    pinger.start(0)
    pinger.transaction_failed(32_000, sent(pinger))  # Timer F is longer than the interval
    assert pinger.status.misses == 1 and pinger.status.state is PeerState.UNKNOWN
    second = sent(pinger)
    assert pinger.next_deadline() == 32_000 + 32_000
    pinger.transaction_failed(64_000, second)
    pinger.transaction_failed(96_000, sent(pinger))
    assert pinger.status.state is PeerState.DOWN and pinger.status.misses == 3


def test_our_own_timeout_counts_a_miss_and_a_late_answer_is_ignored() -> None:
    pinger = make(interval_s=30, timeout_ms=3_000, down_after=1)
    pinger.start(0)
    request = sent(pinger)
    assert pinger.next_deadline() == 3_000
    pinger.handle_timer(2_999)
    assert pinger.status.outstanding
    pinger.handle_timer(3_000)
    assert pinger.status.state is PeerState.DOWN and pinger.next_deadline() == 30_000
    pinger.receive_response(reply(request, 200), 3_500)
    pinger.transaction_failed(32_000, request)
    assert pinger.status.state is PeerState.DOWN and pinger.status.misses == 1


def test_responses_to_other_requests_are_ignored() -> None:
    pinger = make()
    pinger.start(0)
    request = sent(pinger)
    other = reply(request, 200)
    other.headers.set("Call-ID", "not-ours")
    pinger.receive_response(other, 5)
    assert pinger.status.state is PeerState.UNKNOWN and pinger.status.outstanding


def test_stop_ends_probing() -> None:
    pinger = make()
    pinger.start(0)
    request = sent(pinger)
    pinger.stop(10)
    assert pinger.next_deadline() is None
    pinger.receive_response(reply(request, 200), 20)
    pinger.handle_timer(100_000)
    assert pinger.outgoing() == [] and pinger.status.state is PeerState.UNKNOWN
    pinger.start(200_000)
    assert len(pinger.outgoing()) == 1


def test_misuse_is_refused() -> None:
    with pytest.raises(SipLocalError):
        make(interval_s=0)
    with pytest.raises(SipLocalError):
        make(down_after=0)
    with pytest.raises(SipLocalError):
        make(headers=[("Call-ID", "x")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["respond", "timeout", "advance", "timer", "stop", "start"]),
                          st.integers(0, 100_000)), max_size=50))
def test_one_probe_at_a_time_and_deadlines_are_never_past(actions: list[tuple[str, int]]) -> None:
    pinger = make(interval_s=20, timeout_ms=5_000)
    now = 0
    pinger.start(now)
    outstanding: Request | None = None
    call_ids: set[str] = set()

    def collect() -> None:
        nonlocal outstanding
        requests = pinger.outgoing()
        assert len(requests) <= 1
        if not pinger.status.outstanding:
            outstanding = None
        if requests:
            (outstanding,) = requests
            assert outstanding.call_id not in call_ids
            call_ids.add(outstanding.call_id)
        assert pinger.status.outstanding == (outstanding is not None)

    collect()
    for action, arg in actions:
        if action == "respond" and outstanding is not None:
            pinger.receive_response(reply(outstanding, 200 + arg % 500), now)
        elif action == "timeout" and outstanding is not None:
            pinger.transaction_failed(now, outstanding)
        elif action == "advance":
            now += arg
        elif action == "timer":
            deadline = pinger.next_deadline()
            now = max(now, deadline or now)
            pinger.handle_timer(now)
            collect()
            deadline = pinger.next_deadline()
            assert deadline is None or deadline > now
            continue
        elif action == "stop":
            pinger.stop(now)
        else:
            pinger.start(now)
        collect()
