"""SIP over TLS (RFC 3261 §26) at the transport edge, over real loopback: the listener, outbound connections
with and without verifying the peer against ``tls_ca``, and the self-signed certificate of ``ccpbx tls
selfsigned``."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from ccpbx.pbx.config import ConfigError, Transport, parse_config
from ccpbx.pbx.sip.framing import StreamItem
from ccpbx.pbx.sip.message import Request, Response
from ccpbx.pbx.sip.transaction import Destination
from ccpbx.pbx.sip.transport import SipTransports, TlsSetupError, client_context, server_context
from ccpbx.pbx.tlscert import make_self_signed

pytestmark = pytest.mark.timeout(30)

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKtls1\r\n"
           b"Max-Forwards: 70\r\nFrom: <sips:probe@127.0.0.1>;tag=a\r\nTo: <sips:127.0.0.1>\r\n"
           b"Call-ID: tls-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
REPLY = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKtls1\r\n"
         b"From: <sips:probe@127.0.0.1>;tag=a\r\nTo: <sips:127.0.0.1>;tag=b\r\n"
         b"Call-ID: tls-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def _pair(folder: Path, name: str) -> tuple[Path, Path]:
    made = make_self_signed(("127.0.0.1", f"{name}.test"))
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(made.certificate_pem)
    key.write_bytes(made.private_key_pem)
    return cert, key


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[StreamItem, Destination]] = []
        self.failed: list[Destination] = []
        self.arrived = asyncio.Event()

    def stream(self, item: StreamItem, peer: Destination) -> None:
        self.items.append((item, peer))
        self.arrived.set()

    def transports(self, **kw: ssl.SSLContext) -> SipTransports:
        return SipTransports(lambda data, source: None, self.stream, self.failed.append, **kw)


async def test_listener_takes_a_tls_client_and_answers_over_its_connection(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path, "server")
    sink = Sink()
    transports = sink.transports(server_ssl=server_context(cert, key))
    await transports.listen("127.0.0.1", 0, ("udp", "tls"), tls_port=0)
    tls = next(a for a in transports.listening if a.transport == "tls")
    assert tls.port and tls.port != next(a for a in transports.listening if a.transport == "udp").port
    try:
        trust = ssl.create_default_context(cafile=str(cert))  # a phone that verifies us against our cert
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", tls.port, ssl=trust, server_hostname="server.test"), 5)
        writer.write(OPTIONS)
        await writer.drain()
        await asyncio.wait_for(sink.arrived.wait(), 5)
        message, peer = sink.items[0]
        assert isinstance(message, Request) and message.method == "OPTIONS"
        assert peer[0] == "tls" and peer[1] == "127.0.0.1"
        assert peer in transports.connections
        transports.send(REPLY, peer)  # the reply goes back over the phone's own connection
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"SIP/2.0 200 OK")
        writer.write(b"\r\n\r\n")  # RFC 5626 keep-alive ping gets its pong over TLS too
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.close()
    finally:
        await transports.close()


async def test_a_plain_tcp_client_on_the_tls_port_gets_nothing(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path, "server")
    sink = Sink()
    transports = sink.transports(server_ssl=server_context(cert, key))
    await transports.listen("127.0.0.1", 0, ("tls",), tls_port=0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", transports.listening[0].port)
        writer.write(OPTIONS)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # the handshake fails; the server hangs up
        assert not sink.items
        writer.close()
    finally:
        await transports.close()


@pytest.mark.parametrize("verify", ["none", "trusted", "untrusted"])
async def test_outbound_tls_connection_verifies_the_peer_only_with_a_ca(tmp_path: Path, verify: str) -> None:
    cert, key = _pair(tmp_path, "phone")
    other, _ = _pair(tmp_path, "other")
    phone = Sink()
    listener = phone.transports(server_ssl=server_context(cert, key))
    await listener.listen("127.0.0.1", 0, ("tls",), tls_port=0)
    ca = {"none": None, "trusted": cert, "untrusted": other}[verify]
    pbx = Sink()
    ours = pbx.transports(client_ssl=client_context(ca))
    destination: Destination = ("tls", "127.0.0.1", listener.listening[0].port)
    try:
        ours.send(OPTIONS, destination)
        ours.send(OPTIONS.replace(b"tls-1", b"tls-2"), destination)  # queued behind the handshake, same connection
        if verify == "untrusted":
            for _ in range(100):
                if pbx.failed:
                    break
                await asyncio.sleep(0.05)
            assert pbx.failed == [destination] and not phone.items
            return
        for _ in range(100):
            if len(phone.items) == 2:
                break
            await asyncio.sleep(0.05)
        assert [m.call_id for m, _ in phone.items] == ["tls-1", "tls-2"]  # type: ignore[union-attr]
        assert len({peer for _, peer in phone.items}) == 1
        listener.send(REPLY, phone.items[0][1])
        await asyncio.wait_for(pbx.arrived.wait(), 5)
        reply, peer = pbx.items[0]
        assert isinstance(reply, Response) and reply.status == 200 and peer == destination
    finally:
        await ours.close()
        await listener.close()


def test_certificate_problems_are_one_line(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path, "server")
    _, other_key = _pair(tmp_path, "other")
    with pytest.raises(TlsSetupError, match="cannot load TLS certificate"):
        server_context(cert, other_key)  # the key of another certificate
    with pytest.raises(TlsSetupError, match="cannot load TLS CA file"):
        client_context(tmp_path / "missing.pem")
    assert server_context(cert, key).minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_config_needs_certificate_and_key(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path, "server")
    config = parse_config(f'[sip]\ntransports = ["udp", "tls"]\ntls_port = 0\ntls_certificate = "{cert.name}"\n'
                          f'tls_private_key = "{key.name}"\nsrtp = "required"\n', base_dir=tmp_path)
    assert Transport.TLS in config.sip.transports and config.sip.tls_certificate == cert
    assert str(config.sip.srtp) == "required"
    with pytest.raises(ConfigError, match=r"tls_certificate.*is required"):
        parse_config('[sip]\ntransports = ["tls"]\n', base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        parse_config('[sip]\ntls_ca = "nope.pem"\n', base_dir=tmp_path)
    with pytest.raises(ConfigError, match="srtp"):
        parse_config('[sip]\nsrtp = "sometimes"\n', base_dir=tmp_path)


def test_self_signed_certificate_names_every_host() -> None:
    from cryptography import x509

    made = make_self_signed(("pbx.example.com", "192.0.2.7", "2001:db8::1"))
    cert = x509.load_pem_x509_certificate(made.certificate_pem)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["pbx.example.com"]
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["192.0.2.7", "2001:db8::1"]
    assert len(made.fingerprint_sha256.split(":")) == 32
    assert b"PRIVATE KEY" in made.private_key_pem
