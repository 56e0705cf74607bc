"""RFC 3263 server location (pbx/sip/resolve.py): the pure orderings, then real resolution against a small
authoritative DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import dns.asyncresolver
import pytest

from ccpbx.pbx.sip.resolve import NaptrRecord, ResolveError, SipResolver, SrvRecord, Target, naptr_services, srv_order
from tests.dns_server import DnsServer, start_dns


def test_naptr_filters_sip_services_in_order() -> None:
    records = [
        NaptrRecord(20, 10, "S", "SIP+D2T", "_sip._tcp.p.test."),
        NaptrRecord(10, 10, "S", "SIP+D2U", "_sip._udp.p.test."),
        NaptrRecord(10, 5, "S", "SIPS+D2T", "_sips._tcp.p.test."),
        NaptrRecord(5, 5, "U", "E2U+sip", "!^.*$!sip:info@p.test!"),  # ENUM, not a SIP service
        NaptrRecord(5, 5, "S", "SIP+D2S", "_sip._sctp.p.test."),  # SCTP: not ours
    ]
    assert naptr_services(records, None) == [("tls", "_sips._tcp.p.test"), ("udp", "_sip._udp.p.test"),
                                             ("tcp", "_sip._tcp.p.test")]
    assert naptr_services(records, "udp") == [("udp", "_sip._udp.p.test")]


def test_srv_priority_first_then_weight() -> None:
    records = [SrvRecord(20, 0, 5060, "c.test."), SrvRecord(10, 90, 5060, "a.test."),
               SrvRecord(10, 10, 5060, "b.test."), SrvRecord(30, 0, 5060, ".")]
    firsts: Counter[str] = Counter()
    rng = random.Random(7)
    for _ in range(2000):
        order = srv_order(records, rng)
        assert [r.target for r in order][-1] == "c.test." and len(order) == 3  # "." is no service
        firsts[order[0].target] += 1
    assert 0.85 < firsts["a.test."] / 2000 < 0.95  # weight 90 of 100


ZONE = {
    ("provider.test", "NAPTR"): (300, ['10 50 "s" "SIP+D2U" "" _sip._udp.provider.test.',
                                       '20 50 "s" "SIP+D2T" "" _sip._tcp.provider.test.']),
    ("_sip._udp.provider.test", "SRV"): (120, ["10 100 5070 sip1.provider.test.", "20 100 5080 sip2.provider.test."]),
    ("_sip._tcp.provider.test", "SRV"): (120, ["10 100 5090 sip1.provider.test."]),
    ("sip1.provider.test", "A"): (60, ["192.0.2.1"]),
    ("sip1.provider.test", "AAAA"): (60, ["2001:db8::1"]),
    ("sip2.provider.test", "A"): (60, ["192.0.2.2"]),
    ("_sip._udp.srvonly.test", "SRV"): (300, ["10 100 5999 sip1.provider.test."]),
    ("plain.test", "A"): (300, ["198.51.100.5"]),
}


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[DnsServer, SipResolver]]:
    server, transport, port = await start_dns(ZONE)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 2.0
    try:
        yield server, SipResolver(resolver, rng=random.Random(1))
    finally:
        transport.close()


async def test_naptr_srv_then_addresses(dns_server: tuple[DnsServer, SipResolver]) -> None:
    _, resolver = dns_server
    targets = await resolver.resolve("provider.test")
    assert [(t.transport, t.address, t.port) for t in targets] == [
        ("udp", "192.0.2.1", 5070), ("udp", "2001:db8::1", 5070), ("udp", "192.0.2.2", 5080)]
    assert min(t.ttl or 0 for t in targets) == 60
    tcp = await resolver.resolve("provider.test", transport="tcp")
    assert [(t.transport, t.address, t.port) for t in tcp] == [("tcp", "192.0.2.1", 5090),
                                                                ("tcp", "2001:db8::1", 5090)]


async def test_srv_without_naptr_and_a_only(dns_server: tuple[DnsServer, SipResolver]) -> None:
    _, resolver = dns_server
    first = (await resolver.resolve("srvonly.test", transport="udp"))[0]
    assert (first.address, first.port) == ("192.0.2.1", 5999)
    assert [(t.address, t.port) for t in await resolver.resolve("plain.test")] == [("198.51.100.5", 5060)]


async def test_an_explicit_port_asks_only_for_addresses(dns_server: tuple[DnsServer, SipResolver]) -> None:
    server, resolver = dns_server
    targets = await resolver.resolve("sip2.provider.test", 5062, "udp")
    assert [(t.address, t.port) for t in targets] == [("192.0.2.2", 5062)]
    assert {rdtype for _, rdtype in server.queries} <= {"A", "AAAA"}


async def test_literals_need_no_dns(dns_server: tuple[DnsServer, SipResolver]) -> None:
    server, resolver = dns_server
    assert await resolver.resolve("192.0.2.9") == [Target("udp", "192.0.2.9", 5060)]
    assert await resolver.resolve("[2001:db8::9]", 5070, "tcp") == [Target("tcp", "2001:db8::9", 5070)]
    assert server.queries == []


async def test_nxdomain_is_a_resolve_error(dns_server: tuple[DnsServer, SipResolver]) -> None:
    _, resolver = dns_server
    with pytest.raises(ResolveError) as info:
        await resolver.resolve("nowhere.test")
    assert info.value.status_hint == 503 and "nowhere.test" in str(info.value)


async def test_answers_are_cached_for_their_ttl(dns_server: tuple[DnsServer, SipResolver]) -> None:
    server, resolver = dns_server
    first = await resolver.resolve("provider.test")
    asked = len(server.queries)
    assert await resolver.resolve("provider.test") == first
    assert len(server.queries) == asked
