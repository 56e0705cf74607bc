"""Content-Length framing over stream transports (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §4.4.1)."""

from __future__ import annotations

from ccpbx.pbx.sip.framing import PING, PONG, BadMessage, FramingError, KeepAlive, StreamFramer
from ccpbx.pbx.sip.message import MAX_MESSAGE_BYTES, Request, Response, parse_message


def message(n: int, body: bytes = b"") -> bytes:
    return (f"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{n}\r\nTo: <sip:b@x>\r\n"
            f"From: <sip:a@x>;tag={n}\r\nCall-ID: c{n}\r\nCSeq: {n} MESSAGE\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_several_messages_in_one_read() -> None:
    data = message(1, b"one") + message(2) + message(3, b"\r\n\r\nthree")
    items = StreamFramer().feed(data)
    assert [i.cseq.seq for i in items if isinstance(i, Request)] == [1, 2, 3]
    assert [i.body for i in items if isinstance(i, Request)] == [b"one", b"", b"\r\n\r\nthree"]


def test_one_message_across_many_reads() -> None:
    data = message(7, b"x" * 300)
    framer = StreamFramer()
    items = []
    for i in range(len(data)):
        got = framer.feed(data[i:i + 1])
        if i < len(data) - 1:
            assert got == []
        items.extend(got)
    assert items == [parse_message(data)]


def test_keepalive_ping_and_pong() -> None:
    framer = StreamFramer()
    assert framer.feed(PING) == [KeepAlive()]
    assert framer.feed(PONG) == []  # might be the start of a ping: nothing yet
    items = framer.feed(message(1))  # a lone CRLF then a message: the CRLF was a pong
    assert len(items) == 1 and isinstance(items[0], Request)
    items = framer.feed(b"\r\n\r" + b"\n" + message(2))
    assert isinstance(items[0], KeepAlive) and isinstance(items[1], Request)


def test_lf_only_and_compact_content_length_on_a_stream() -> None:
    data = message(1, b"body").replace(b"\r\n", b"\n").replace(b"Content-Length", b"l")
    items = StreamFramer().feed(data + message(2))
    assert [type(i) for i in items] == [Request, Request] and items[0].body == b"body"  # type: ignore[union-attr]


def test_folded_content_length() -> None:
    data = message(1, b"abc").replace(b"Content-Length: 3", b"Content-Length:\r\n 3")
    (item,) = StreamFramer().feed(data)
    assert isinstance(item, Request) and item.body == b"abc"


def test_missing_content_length_breaks_the_stream() -> None:
    framer = StreamFramer()
    bad = message(1).replace(b"Content-Length: 0\r\n", b"")
    items = framer.feed(message(0) + bad + message(2))
    assert isinstance(items[0], Request) and isinstance(items[1], FramingError)
    assert framer.broken and framer.feed(message(3)) == []


def test_oversized_body_and_header_block() -> None:
    framer = StreamFramer()
    (item,) = framer.feed(message(1).replace(b"Content-Length: 0", b"Content-Length: 99999999"))
    assert isinstance(item, FramingError) and item.error.status_hint == 413
    framer = StreamFramer()
    (item,) = framer.feed(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * MAX_MESSAGE_BYTES)
    assert isinstance(item, FramingError) and item.error.status_hint == 513


def test_bad_message_keeps_the_stream() -> None:
    framer = StreamFramer()
    broken = message(1).replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE")
    items = framer.feed(broken + message(2))
    assert isinstance(items[0], BadMessage) and items[0].data == broken
    assert isinstance(items[1], Request) and not framer.broken


def test_responses_are_framed_too() -> None:
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\n"
            b"Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\nok")
    (item,) = StreamFramer().feed(data)
    assert isinstance(item, Response) and item.body == b"ok"
