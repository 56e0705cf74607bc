"""The SUBSCRIBE/NOTIFY notifier (RFC 6665) against a fake SIP port: no sockets, time passed in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.pbx.sip.message import Request, Response, make_response, parse_message
from ccpbx.pbx.sip.transaction import ClientKey, Destination
from ccpbx.pbx.subscriptions import (
    Notifier,
    NotifyFailed,
    Rendered,
    SubscriptionEnded,
    SubscriptionPolicy,
    SubscriptionRefused,
    SubscriptionStarted,
)

SOURCE: Destination = ("udp", "192.0.2.10", 5062)


@dataclass
class FakePort:
    """The SipPort the notifier drives: records what it answers and sends."""

    responses: list[Response] = field(default_factory=list)
    sent: list[tuple[Request, Destination, ClientKey]] = field(default_factory=list)
    unsendable: bool = False

    def now(self) -> int:
        return 0

    def respond(self, request: Request, status: int, *, reason: str | None = None,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                to_tag: str | None = None) -> Response:
        response = make_response(request, status, reason, to_tag=to_tag, body=body, content_type=content_type)
        for name, value in headers:
            response.headers.add(name, value)
        self.responses.append(response)
        return response

    def send_request(self, request: Request, destination: Destination) -> ClientKey:
        if self.unsendable:
            raise OSError("connection closed")
        key = ClientKey(request.via.branch or "", request.method)
        self.sent.append((request, destination, key))
        return key

    def send_stateless(self, message: Request, destination: Destination) -> None:
        raise AssertionError("the notifier sends nothing stateless")

    def local_address(self, destination: Destination) -> tuple[str, int]:
        return ("192.0.2.1", 5060)


class Counter:
    """A test event package: its state is a number per resource."""

    name = "dialog"
    content_type = "text/plain"

    def __init__(self) -> None:
        self.value: dict[str, int] = {}

    def authorize(self, subscriber: str, resource: str) -> bool:
        return subscriber != "intruder"

    def render(self, resource: str, version: int, memory: object) -> Rendered:
        return Rendered(f"{resource}={self.value.get(resource, 0)} v{version} after {memory}".encode(), version)


def subscribe_request(*, expires: int | None = 600, event: str = "dialog", to_tag: str | None = None,
                      cseq: int = 1, call_id: str = "sub-1@watcher", accept: str | None = None) -> Request:
    lines = [
        "SUBSCRIBE sip:1002@192.0.2.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-sub-" + str(cseq),
        "Max-Forwards: 70",
        "From: <sip:1001@192.0.2.1>;tag=watcher-tag",
        "To: <sip:1002@192.0.2.1>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} SUBSCRIBE",
        "Contact: <sip:1001@192.0.2.10:5062>",
        f"Event: {event}",
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if accept is not None:
        lines.append(f"Accept: {accept}")
    data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def setup() -> tuple[Notifier, FakePort, Counter]:
    port = FakePort()
    notifier = Notifier(port, policy=SubscriptionPolicy(default_expires_s=3600, min_expires_s=60,
                                                        max_expires_s=3600))
    package = Counter()
    notifier.register(package)
    return notifier, port, package


def answer(notifier: Notifier, port: FakePort, status: int = 200, *, now: int = 0, index: int = -1) -> None:
    request, _, key = port.sent[index]
    assert notifier.on_response(make_response(request, status), key, now)


def subscribed(notifier: Notifier, port: FakePort, **kwargs: object) -> str:
    request = subscribe_request(**kwargs)  # type: ignore[arg-type]
    assert notifier.screen(request)
    sub = notifier.subscribe(request, SOURCE, "1001", "1002", 0)
    assert sub is not None
    return port.responses[-1].to.tag or ""


def test_subscribe_gets_200_and_an_immediate_notify_with_the_full_state() -> None:
    notifier, port, _ = setup()
    tag = subscribed(notifier, port)
    (ok,) = port.responses
    assert ok.status == 200
    assert ok.headers.get("expires") == "600"
    assert ok.headers.get("contact") == "<sip:ccpbx@192.0.2.1:5060>"
    assert tag
    (notify, destination, _), = port.sent
    assert destination == ("udp", "192.0.2.10", 5062)
    assert notify.method == "NOTIFY"
    assert (notify.call_id, notify.from_.tag, notify.to.tag) == ("sub-1@watcher", tag, "watcher-tag")
    assert str(notify.uri) == "sip:1001@192.0.2.10:5062"
    assert notify.headers.get("event") == "dialog"
    assert notify.headers.get("subscription-state") == "active;expires=600"
    assert notify.content_type == "text/plain"
    assert notify.body == b"1002=0 v0 after None"
    (started,) = notifier.events()
    assert isinstance(started, SubscriptionStarted) and started.subscriber == "1001" and started.expires_s == 600


def test_changes_notify_one_at_a_time_with_the_latest_state() -> None:
    notifier, port, package = setup()
    subscribed(notifier, port)
    package.value["1002"] = 1
    assert notifier.changed("dialog", "1002")
    assert not notifier.changed("dialog", "1001")  # nobody watches 1001
    notifier.flush(1000)
    assert len(port.sent) == 1  # the first NOTIFY awaits its response: nothing new goes out (RFC 6665 §4.2.2)
    package.value["1002"] = 2
    notifier.changed("dialog", "1002")
    notifier.flush(2000)
    answer(notifier, port, now=3000)
    assert len(port.sent) == 2
    notify = port.sent[-1][0]
    assert notify.body == b"1002=2 v1 after 0"  # one NOTIFY with the latest state, version counted
    assert notify.headers.get("subscription-state") == "active;expires=597"
    assert notify.cseq.seq == port.sent[0][0].cseq.seq + 1
    answer(notifier, port)
    notifier.flush(4000)  # no change since: nothing to send
    assert len(port.sent) == 2


def test_refresh_in_the_dialog_extends_and_notifies() -> None:
    notifier, port, _ = setup()
    tag = subscribed(notifier, port)
    answer(notifier, port)
    refresh = subscribe_request(expires=120, to_tag=tag, cseq=2)
    assert notifier.on_request(refresh, SOURCE, 500_000)
    assert (port.responses[-1].status, port.responses[-1].headers.get("expires")) == (200, "120")
    assert port.sent[-1][0].headers.get("subscription-state") == "active;expires=120"
    answer(notifier, port)
    assert notifier.next_deadline() == 620_000
    notifier.handle_timer(600_000)  # the first expiry no longer counts
    assert len(notifier.subscriptions()) == 1
    # an out-of-order CSeq is refused, an unknown dialog is not ours
    assert notifier.on_request(subscribe_request(expires=120, to_tag=tag, cseq=2), SOURCE, 600_001)
    assert port.responses[-1].status == 500
    assert not notifier.on_request(subscribe_request(to_tag="other", cseq=3), SOURCE, 600_001)


def test_expires_zero_ends_with_a_final_notify() -> None:
    notifier, port, _ = setup()
    tag = subscribed(notifier, port)
    answer(notifier, port)
    assert notifier.on_request(subscribe_request(expires=0, to_tag=tag, cseq=2), SOURCE, 1000)
    assert port.responses[-1].status == 200
    assert port.sent[-1][0].headers.get("subscription-state") == "terminated;reason=timeout"
    assert notifier.subscriptions() == []
    assert notifier.next_deadline() is None


def test_a_subscription_expires_by_its_deadline() -> None:
    notifier, port, _ = setup()
    subscribed(notifier, port, expires=60)
    answer(notifier, port)
    assert notifier.next_deadline() == 60_000
    notifier.handle_timer(59_999)
    assert len(port.sent) == 1
    notifier.handle_timer(60_000)
    assert port.sent[-1][0].headers.get("subscription-state") == "terminated;reason=timeout"
    assert notifier.subscriptions() == [] and notifier.next_deadline() is None
    ended = [e for e in notifier.events() if isinstance(e, SubscriptionEnded)]
    assert [e.reason for e in ended] == ["timeout"]


@pytest.mark.parametrize("status", [481, 408])
def test_a_notify_refused_drops_the_subscription(status: int) -> None:
    notifier, port, package = setup()
    subscribed(notifier, port)
    answer(notifier, port, status)
    assert notifier.subscriptions() == []
    package.value["1002"] = 5
    notifier.changed("dialog", "1002")
    notifier.flush(1000)
    assert len(port.sent) == 1  # nothing more to a subscription that is gone
    events = notifier.events()
    assert NotifyFailed(events[0].subscription, status) in events  # type: ignore[union-attr]


def test_a_notify_that_times_out_drops_the_subscription() -> None:
    notifier, port, _ = setup()
    subscribed(notifier, port)
    key = port.sent[0][2]
    assert notifier.on_transaction_failed(key, 32_000)
    assert notifier.subscriptions() == []
    assert not notifier.on_transaction_failed(ClientKey("z9hG4bK-not-ours", "NOTIFY"), 32_000)
    assert not notifier.on_response(make_response(port.sent[0][0], 200), ClientKey("x", "BYE"), 0)


def test_unknown_package_gets_489_with_allow_events() -> None:
    notifier, port, _ = setup()
    assert not notifier.screen(subscribe_request(event="message-summary"))
    (refused,) = port.responses
    assert refused.status == 489
    assert refused.headers.get("allow-events") == "dialog"
    assert isinstance(notifier.events()[0], SubscriptionRefused)
    assert not notifier.screen(subscribe_request(event=""))  # RFC 6665: Event is mandatory
    assert port.responses[-1].status == 400


def test_too_brief_expires_gets_423_and_a_long_one_is_capped() -> None:
    notifier, port, _ = setup()
    assert not notifier.screen(subscribe_request(expires=30))
    assert (port.responses[-1].status, port.responses[-1].headers.get("min-expires")) == (423, "60")
    subscribed(notifier, port, expires=86_400)
    assert port.responses[-1].headers.get("expires") == "3600"
    subscribed(notifier, port, expires=None, call_id="sub-2@watcher")
    assert port.responses[-1].headers.get("expires") == "3600"  # the default


def test_unacceptable_body_type_and_unauthorized_watcher_are_refused() -> None:
    notifier, port, _ = setup()
    assert not notifier.screen(subscribe_request(accept="application/pidf+xml"))
    assert port.responses[-1].status == 406
    assert notifier.screen(subscribe_request(accept="text/plain"))
    assert notifier.subscribe(subscribe_request(), SOURCE, "intruder", "1002", 0) is None
    assert port.responses[-1].status == 403
    assert port.sent == []


def test_fetch_with_expires_zero_sends_one_final_notify() -> None:
    notifier, port, _ = setup()
    notifier.subscribe(subscribe_request(expires=0), SOURCE, "1001", "1002", 0)
    assert port.responses[-1].status == 200
    (notify, _, _), = port.sent
    assert notify.headers.get("subscription-state") == "terminated;reason=timeout"
    assert notify.body.startswith(b"1002=0")
    assert notifier.subscriptions() == []


def test_stop_deactivates_and_a_removed_resource_is_noresource() -> None:
    notifier, port, _ = setup()
    subscribed(notifier, port)  # its first NOTIFY is still in flight: the final one goes anyway
    notifier.stop(5000)
    assert port.sent[-1][0].headers.get("subscription-state") == "terminated;reason=deactivated"
    subscribed(notifier, port, call_id="sub-3@watcher")
    answer(notifier, port)
    notifier.resource_gone("dialog", "1002", 6000)
    assert port.sent[-1][0].headers.get("subscription-state") == "terminated;reason=noresource"
    assert notifier.subscriptions() == []


def test_an_unsendable_notify_drops_the_subscription() -> None:
    notifier, port, _ = setup()
    port.unsendable = True
    notifier.subscribe(subscribe_request(), SOURCE, "1001", "1002", 0)
    assert port.responses[-1].status == 200
    assert notifier.subscriptions() == []
    assert [e.reason for e in notifier.events() if isinstance(e, SubscriptionEnded)] == ["notify_unsendable"]


@given(st.lists(st.sampled_from(["change", "flush", "answer"]), max_size=40))
def test_one_notify_in_flight_and_the_last_state_always_arrives(ops: list[str]) -> None:
    notifier, port, package = setup()
    subscribed(notifier, port)
    answered = 0
    now = 0
    for op in ops:
        now += 10
        if op == "change":
            package.value["1002"] = package.value.get("1002", 0) + 1
            notifier.changed("dialog", "1002")
        elif op == "flush":
            notifier.flush(now)
        elif answered < len(port.sent):
            answer(notifier, port, now=now, index=answered)
            answered += 1
        assert len(port.sent) - answered <= 1  # never two NOTIFYs of one subscription in flight (§4.2.2)
    notifier.flush(now)
    while answered < len(port.sent):
        answer(notifier, port, now=now, index=answered)
        answered += 1
    bodies = [request.body.decode() for request, _, _ in port.sent]
    assert bodies[-1].startswith(f"1002={package.value.get('1002', 0)} ")
    assert [int(b.split(" v")[1].split()[0]) for b in bodies] == list(range(len(bodies)))
