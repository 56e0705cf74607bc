"""Garbage sent raw gets 400 where it reads as a request, and the server keeps serving everyone else."""

from __future__ import annotations

import socket
import time

from tests.interop.server import RunningServer, build_options, send_udp_request

GOOD_HEADERS = ("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad{n};rport\r\nFrom: <sip:x@h>;tag=1\r\n"
                "To: <sip:y@h>\r\nCall-ID: bad{n}\r\n")

MALFORMED_REQUESTS = [
    # (bytes, expected status)
    ("OPTIONS sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: notanumber OPTIONS\r\nContent-Length: 0\r\n\r\n", 400),
    ("OPTIONS sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", 400),
    ("OPTIONS sip:h SIP/7.0\r\n" + GOOD_HEADERS + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", 505),
    ("OPTIONS sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 OPTIONS\r\nContent-Length: 500\r\n\r\nshort", 400),
    ("OPTIONS sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 OPTIONS\r\nMax-Forwards: lots\r\n\r\n", 400),
    ("OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKnofrom{n}\r\nCSeq: 1 OPTIONS\r\n\r\n", 400),
    ("FOO sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 FOO\r\nContent-Length: 0\r\n\r\n", 501),
    ("PUBLISH sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 PUBLISH\r\nContent-Length: 0\r\n\r\n", 405),
    # SUBSCRIBE (RFC 6665): Event is mandatory; a package this server does not have is 489 Bad Event
    ("SUBSCRIBE sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n", 400),
    ("SUBSCRIBE sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 SUBSCRIBE\r\nEvent: presence\r\n"
     "Content-Length: 0\r\n\r\n", 489),
    ("OPTIONS sip:h SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 OPTIONS\r\nRequire: frobnicate\r\n\r\n", 420),
    ("OPTIONS tel:+1555 SIP/2.0\r\n" + GOOD_HEADERS + "CSeq: 1 OPTIONS\r\n\r\n", 416),
]


def test_malformed_requests_get_the_right_status(server: RunningServer) -> None:
    for n, (text, status) in enumerate(MALFORMED_REQUESTS):
        reply = send_udp_request(server.host, server.port, text.replace("{n}", str(n)).encode())
        assert reply.startswith(f"SIP/2.0 {status} "), (text, reply)
        assert server.options_ok()


def test_garbage_never_stops_the_server(server: RunningServer) -> None:
    junk = [b"", b"\x00" * 100, b"garbage\r\n\r\n", b"\xff\xfe" * 300, b"SIP/2.0 200 OK\r\n\r\n",
            b"INVITE\r\n\r\n", b"OPTIONS sip:h SIP/2.0\r\nVia: \r\n\r\n", bytes(range(256)) * 20]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(20):
            for data in junk:
                sock.sendto(data, (server.host, server.port))
    assert server.options_ok(timeout=3)


def test_tcp_framing_and_keepalive(server: RunningServer) -> None:
    options = build_options(server.host, server.port, "tcp-1")
    with socket.create_connection((server.host, server.port), timeout=3) as conn:
        conn.sendall(b"\r\n\r\n")  # RFC 5626 ping
        assert conn.recv(2) == b"\r\n"  # pong
        # two requests in one write, the second split across writes
        second = build_options(server.host, server.port, "tcp-2")
        conn.sendall(options + second[:30])
        conn.sendall(second[30:])
        received = b""
        while received.count(b"SIP/2.0 200 OK") < 2:
            chunk = conn.recv(65535)
            assert chunk, received
            received += chunk
        assert b"Call-ID: tcp-1" in received and b"Call-ID: tcp-2" in received


# Bytes that are not UTF-8 (a lone continuation byte, an invalid lead, a truncated sequence) where the grammar
# allows ASCII only: the request must still get a final response, and the server must log no traceback.
NOT_UTF8 = b"\xff\xfe\xc3("
PLACES = ("call_id", "from_tag", "to_tag", "ruri_user", "branch")


def _non_utf8_request(method: str, place: str, n: int) -> bytes:
    parts = {"ruri_user": b"1001", "call_id": b"nonutf8-%d" % n, "from_tag": b"ft%d" % n, "to_tag": b"",
             "branch": b"z9hG4bKnonutf8%d" % n}
    parts[place] += NOT_UTF8
    to_tag = b";tag=" + parts["to_tag"] if parts["to_tag"] else b""
    m = method.encode()
    return (m + b" sip:" + parts["ruri_user"] + b"@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=" + parts["branch"] + b";rport\r\nMax-Forwards: 70\r\n"
            b"From: <sip:1002@127.0.0.1>;tag=" + parts["from_tag"] + b"\r\nTo: <sip:1001@127.0.0.1>" + to_tag +
            b"\r\nCall-ID: " + parts["call_id"] + b"\r\nCSeq: 1 " + m + b"\r\n"
            b"Contact: <sip:1002@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n")


def _final_reply(host: str, port: int, data: bytes, timeout: float = 3.0) -> str:
    """The first final (>= 200) response to ``data``, skipping provisionals; '' if none came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.sendto(data, (host, port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = sock.recv(65535).decode("utf-8", "replace")
            except TimeoutError:
                break
            if not reply.startswith("SIP/2.0 1"):
                return reply
    return ""


def test_bytes_that_are_not_utf8_get_a_final_response(server: RunningServer) -> None:
    n = 0
    for method in ("INVITE", "REGISTER", "OPTIONS"):
        for place in PLACES:
            n += 1
            reply = _final_reply(server.host, server.port, _non_utf8_request(method, place, n))
            assert reply.startswith("SIP/2.0 400 "), (method, place, reply)
    # a display name is free text: Latin-1 from an old phone is kept, and the request is served normally
    latin1 = _non_utf8_request("INVITE", "call_id", 99).replace(NOT_UTF8, b"").replace(
        b"From: <", b'From: "M\xfcller" <')
    assert _final_reply(server.host, server.port, latin1).startswith("SIP/2.0 407 ")
    assert server.options_ok()
    log = server.log
    assert "Traceback" not in log and "sip.handler.failed" not in log, log[-4000:]
