"""IPv6 transports and SHA-256 digest against a real ``ccpbx serve``.

No installed third-party client speaks SHA-256 digest (SIPp 3.6, baresip 1.0 and pyVoIP are MD5-only), so the
SHA-256 registration here is driven by a raw UDP client; the digest maths is checked against RFC 7616's own
example in tests/pbx/test_auth.py.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.server import RunningServer, build_options, send_udp_request, start_server

PASSWORD = "sha-256-secret"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def server6(tmp_path: Path) -> Iterator[RunningServer]:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    srv = start_server(tmp_path / "data", host="::1", extensions={"3001": PASSWORD})
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def test_udp_and_tcp_over_ipv6(server6: RunningServer) -> None:
    reply = send_udp_request("::1", server6.port, build_options("::1", server6.port))
    assert reply.startswith("SIP/2.0 200 "), reply
    assert "received=::1" in reply or "rport=" in reply
    with socket.create_connection(("::1", server6.port), timeout=3) as conn:
        conn.sendall(build_options("::1", server6.port, "tcp6"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65535)
            assert chunk
            data += chunk
        assert data.startswith(b"SIP/2.0 200 ") and b"Call-ID: tcp6" in data


def _register(host: str, port: int, sock: socket.socket, cseq: int, auth: str | None) -> str:
    target = f"[{host}]" if ":" in host else host
    local = sock.getsockname()
    lines = [f"REGISTER sip:{target}:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP {target}:{local[1]};branch=z9hG4bKsha{cseq};rport",
             "Max-Forwards: 70", f"From: <sip:3001@{target}>;tag=sha", f"To: <sip:3001@{target}>",
             "Call-ID: sha256-test", f"CSeq: {cseq} REGISTER", f"Contact: <sip:3001@{target}:{local[1]}>",
             "Expires: 120"]
    if auth:
        lines.append(f"Authorization: {auth}")
    sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), (host, port))
    return sock.recv(65535).decode()


def test_sha256_digest_registration(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", config_text='[auth]\nalgorithms = ["SHA-256"]\n',
                       extensions={"3001": PASSWORD})
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.bind(("127.0.0.1", 0))
            challenge = _register(srv.host, srv.port, sock, 1, None)
            assert challenge.startswith("SIP/2.0 401 ")
            params = dict(re.findall(r'(\w+)="?([^",\r]+)"?', challenge.split("WWW-Authenticate: Digest ")[1]
                                     .split("\r\n")[0]))
            assert params["algorithm"] == "SHA-256" and params["qop"] == "auth"

            def h(text: str) -> str:
                return hashlib.sha256(text.encode()).hexdigest()

            uri = f"sip:{srv.host}:{srv.port}"
            ha1 = h(f"3001:{params['realm']}:{PASSWORD}")
            response = h(f"{ha1}:{params['nonce']}:00000001:c0ffee:auth:{h('REGISTER:' + uri)}")
            auth = (f'Digest username="3001", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}", '
                    f'response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c0ffee", '
                    f'opaque="{params["opaque"]}"')
            ok = _register(srv.host, srv.port, sock, 2, auth)
            assert ok.startswith("SIP/2.0 200 "), ok
            assert ";expires=120" in ok
            replay = _register(srv.host, srv.port, sock, 3, auth)  # same nonce-count again
            assert replay.startswith("SIP/2.0 401 ") and "stale=true" in replay
    finally:
        assert srv.stop() == 0
