"""Locating SIP servers (RFC 3263 §4): the pure ordering rules, then real DNS against a server on loopback."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipError
from ccpbx.pbx.sip.resolve import (
    NaptrRecord,
    ResolveError,
    SipResolver,
    SrvRecord,
    Target,
    ip_literal,
    order_srv,
    resolve_sip_server,
    select_naptr,
    srv_name,
)
from tests.dns_server import DnsServer, Records

# -- SRV ordering (RFC 2782) ---------------------------------------------------------------------------------


def srv(priority: int, weight: int, target: str, port: int = 5060) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def test_srv_lowest_priority_first() -> None:
    records = [srv(20, 0, "c"), srv(10, 50, "a"), srv(30, 100, "d"), srv(10, 50, "b")]
    ordered = order_srv(records, random.Random(1))
    assert [r.priority for r in ordered] == [10, 10, 20, 30]
    assert {r.target for r in ordered[:2]} == {"a", "b"}


def test_srv_weights_share_the_first_place() -> None:
    rng = random.Random(2782)
    records = [srv(10, 60, "heavy"), srv(10, 30, "middle"), srv(10, 10, "light")]
    first = Counter(order_srv(records, rng)[0].target for _ in range(20000))
    # the chance of going first is weight / total (an extra 1/(total+1) goes to the first record, pick = 0)
    assert first["heavy"] / 20000 == pytest.approx(0.6, abs=0.02)
    assert first["middle"] / 20000 == pytest.approx(0.3, abs=0.02)
    assert first["light"] / 20000 == pytest.approx(0.1, abs=0.02)


def test_srv_zero_weight_is_rarely_first_and_equal_zero_weights_keep_their_order() -> None:
    rng = random.Random(7)
    records = [srv(0, 100, "weighted"), srv(0, 0, "zero")]
    first = Counter(order_srv(records, rng)[0].target for _ in range(10000))
    assert first["zero"] / 10000 == pytest.approx(1 / 101, abs=0.005)  # RFC 2782: "a very small chance"
    assert [r.target for r in order_srv([srv(0, 0, "x"), srv(0, 0, "y")], rng)] == ["x", "y"]


def test_srv_dot_target_means_no_service() -> None:
    assert order_srv([srv(0, 0, ".", 0)], random.Random(1)) == []
    assert [r.target for r in order_srv([srv(0, 0, "."), srv(1, 0, "a")], random.Random(1))] == ["a"]


def test_srv_order_is_reproducible_with_a_seed() -> None:
    records = [srv(10, w, f"h{w}") for w in (5, 10, 20, 40)]
    assert order_srv(records, random.Random(42)) == order_srv(records, random.Random(42))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100), st.sampled_from("abcdefgh")), max_size=12),
       st.integers())
def test_srv_ordering_is_a_permutation_sorted_by_priority(rows: list[tuple[int, int, str]], seed: int) -> None:
    records = [srv(p, w, t) for p, w, t in rows]
    ordered = order_srv(records, random.Random(seed))
    assert sorted(ordered, key=repr) == sorted(records, key=repr)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


# -- NAPTR selection (RFC 3263 §4.1, RFC 3403) -----------------------------------------------------------------

def naptr(order: int, pref: int, service: str, replacement: str, flags: str = "s", regexp: str = "") -> NaptrRecord:
    return NaptrRecord(order, pref, flags, service, replacement, regexp)


def test_naptr_keeps_sip_services_by_preference() -> None:
    records = [
        naptr(10, 60, "SIP+D2T", "_sip._tcp.example.com"),
        naptr(10, 50, "SIP+D2U", "_sip._udp.example.com"),
        naptr(10, 40, "E2U+sip", "!^.*$!sip:info@example.com!", flags="u"),  # ENUM, not for us
        naptr(10, 30, "SIP+D2S", "_sip._sctp.example.com"),  # SCTP: not supported
        naptr(10, 20, "SIP+D2W", "_sip._ws.example.com"),  # WebSocket (RFC 7118): not supported
        naptr(10, 70, "sips+d2t", "_sips._tcp.example.com"),  # services are case-insensitive
    ]
    assert [(proto, r.replacement) for proto, r in select_naptr(records)] == [
        ("udp", "_sip._udp.example.com"), ("tcp", "_sip._tcp.example.com"), ("tls", "_sips._tcp.example.com")]


def test_naptr_filters_to_the_transport() -> None:
    records = [naptr(10, 50, "SIP+D2U", "_sip._udp.a"), naptr(10, 60, "SIP+D2T", "_sip._tcp.a"),
               naptr(20, 10, "SIPS+D2T", "_sips._tcp.a")]
    assert [p for p, _ in select_naptr(records, "tcp")] == ["tcp"]
    assert [r.replacement for _, r in select_naptr(records, "tls")] == ["_sips._tcp.a"]
    assert select_naptr(records[:2], "tls") == []


def test_naptr_only_the_lowest_order_counts() -> None:
    records = [naptr(20, 10, "SIP+D2U", "_sip._udp.b"), naptr(10, 90, "SIP+D2T", "_sip._tcp.a")]
    assert [r.replacement for _, r in select_naptr(records)] == ["_sip._tcp.a"]


def test_naptr_needs_the_s_flag_and_no_regexp() -> None:
    assert select_naptr([naptr(10, 10, "SIP+D2U", "x.example.com", flags="a")]) == []
    assert select_naptr([naptr(10, 10, "SIP+D2U", "", regexp="!^.*$!sip:a@b!")]) == []
    assert len(select_naptr([naptr(10, 10, "SIP+D2U", "_sip._udp.x", flags="S")])) == 1


def test_srv_names_and_ip_literals() -> None:
    assert srv_name("udp", "example.com") == "_sip._udp.example.com"
    assert srv_name("tcp", "example.com") == "_sip._tcp.example.com"
    assert srv_name("tls", "example.com") == "_sips._tcp.example.com"
    assert ip_literal("192.0.2.1") == "192.0.2.1"
    assert ip_literal("[2001:DB8::1]") == "2001:db8::1"
    assert ip_literal("2001:db8::1") == "2001:db8::1"
    assert ip_literal("example.com") is None
    assert ip_literal("1.2.3") is None


# -- real DNS ------------------------------------------------------------------------------------------------

ZONE: Records = {
    ("provider.test", "NAPTR"): (3600, [
        '10 50 "s" "SIP+D2U" "" _sip._udp.provider.test.',
        '10 60 "s" "SIP+D2T" "" _sip._tcp.provider.test.',
        '10 70 "u" "E2U+sip" "!^.*$!sip:info@provider.test!" .',
        '20 50 "s" "SIPS+D2T" "" _sips._tcp.provider.test.',
    ]),
    ("provider.test", "A"): (300, ["192.0.2.10"]),
    ("_sip._udp.provider.test", "SRV"): (600, ["10 100 5060 sip1.provider.test.", "20 0 5062 sip2.provider.test."]),
    ("_sip._tcp.provider.test", "SRV"): (600, ["10 0 5060 sip1.provider.test."]),
    ("_sips._tcp.provider.test", "SRV"): (600, ["10 0 5061 sip1.provider.test."]),
    ("sip1.provider.test", "A"): (120, ["192.0.2.11"]),
    ("sip1.provider.test", "AAAA"): (120, ["2001:db8::11"]),
    ("sip2.provider.test", "A"): (300, ["192.0.2.12"]),
    # NAPTR naming SRV records elsewhere than under the host
    ("trunk.provider.test", "NAPTR"): (3600, ['10 10 "s" "SIP+D2U" "" _sip._udp.edge.provider.test.']),
    ("_sip._udp.edge.provider.test", "SRV"): (600, ["0 0 5080 sip2.provider.test."]),
    # SRV without NAPTR
    ("srvonly.provider.test", "A"): (300, ["192.0.2.99"]),  # never used: SRV wins
    ("_sip._udp.srvonly.provider.test", "SRV"): (600, ["10 0 5070 sip2.provider.test."]),
    ("_sip._tcp.srvonly.provider.test", "SRV"): (600, ["10 0 5071 sip1.provider.test."]),
    # A only
    ("aonly.provider.test", "A"): (300, ["192.0.2.20"]),
    ("aonly.provider.test", "AAAA"): (300, ["2001:db8::20"]),
    # the service decidedly not offered (RFC 2782 target ".")
    ("closed.provider.test", "A"): (300, ["192.0.2.30"]),
    ("_sip._udp.closed.provider.test", "SRV"): (600, ["0 0 0 ."]),
    # SRV to a target without an address
    ("dangling.provider.test", "NAPTR"): (3600, ['10 10 "s" "SIP+D2U" "" _sip._udp.dangling.provider.test.']),
    ("_sip._udp.dangling.provider.test", "SRV"): (600, ["0 0 5060 nowhere.provider.test."]),
    # a name with records, none of them for SIP
    ("txtonly.provider.test", "TXT"): (300, ['"v=spf1 -all"']),
}


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    async with DnsServer("provider.test", ZONE, soa_minimum=300) as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(server: DnsServer, clock: Clock | None = None, cache_size: int = 512) -> SipResolver:
    return SipResolver(server.resolver(), rng=random.Random(1), clock=clock or Clock(), cache_size=cache_size)


async def test_naptr_then_srv_then_addresses(dns_server: DnsServer) -> None:
    targets = await make(dns_server).resolve("provider.test", None, None)
    assert targets == [
        Target("udp", "192.0.2.11", 5060, "sip1.provider.test", 10, 100, 120),
        Target("udp", "2001:db8::11", 5060, "sip1.provider.test", 10, 100, 120),
        Target("udp", "192.0.2.12", 5062, "sip2.provider.test", 20, 0, 300),
        Target("tcp", "192.0.2.11", 5060, "sip1.provider.test", 10, 0, 120),
        Target("tcp", "2001:db8::11", 5060, "sip1.provider.test", 10, 0, 120),
    ]  # SIPS+D2T has a higher NAPTR order: not used (RFC 3403 §4.1)
    assert dns_server.queries[("provider.test", "NAPTR")] == 1
    assert dns_server.queries[("provider.test", "A")] == 0  # SRV found: the host's own address is not asked
    assert dns_server.queries[("_sips._tcp.provider.test", "SRV")] == 0


async def test_naptr_filtered_to_the_transport(dns_server: DnsServer) -> None:
    resolver = make(dns_server)
    tcp = await resolver.resolve("provider.test", None, "tcp")
    assert [(t.transport, t.address, t.port) for t in tcp] == [("tcp", "192.0.2.11", 5060), ("tcp", "2001:db8::11",
                                                                                              5060)]
    tls = await resolver.resolve("provider.test", None, "TLS")
    assert [(t.transport, t.address, t.port) for t in tls] == [("tls", "192.0.2.11", 5061), ("tls", "2001:db8::11",
                                                                                              5061)]


async def test_naptr_may_name_srv_records_anywhere(dns_server: DnsServer) -> None:
    targets = await make(dns_server).resolve("trunk.provider.test", None, "udp")
    assert [(t.transport, t.address, t.port, t.host) for t in targets] == [
        ("udp", "192.0.2.12", 5080, "sip2.provider.test")]
    assert targets[0].ttl == 300
    assert dns_server.queries[("_sip._udp.trunk.provider.test", "SRV")] == 0


async def test_srv_without_naptr(dns_server: DnsServer) -> None:
    resolver = make(dns_server)
    targets = await resolver.resolve("srvonly.provider.test", None, None)
    assert [(t.transport, t.address, t.port) for t in targets] == [
        ("udp", "192.0.2.12", 5070), ("tcp", "192.0.2.11", 5071), ("tcp", "2001:db8::11", 5071)]
    assert dns_server.queries[("srvonly.provider.test", "NAPTR")] == 1
    assert dns_server.queries[("_sips._tcp.srvonly.provider.test", "SRV")] == 1
    assert dns_server.queries[("srvonly.provider.test", "A")] == 0
    only_tcp = await resolver.resolve("srvonly.provider.test", None, "tcp")
    assert [t.port for t in only_tcp] == [5071, 5071]


async def test_a_records_only(dns_server: DnsServer) -> None:
    targets = await make(dns_server).resolve("aonly.provider.test", None, None)
    assert targets == [Target("udp", "192.0.2.20", 5060, "aonly.provider.test", ttl=300),
                       Target("udp", "2001:db8::20", 5060, "aonly.provider.test", ttl=300)]
    tls = await make(dns_server).resolve("aonly.provider.test", None, "tls")
    assert {(t.transport, t.port) for t in tls} == {("tls", 5061)}


async def test_an_explicit_port_asks_only_for_addresses(dns_server: DnsServer) -> None:
    targets = await make(dns_server).resolve("provider.test", 5080, "tcp")
    assert targets == [Target("tcp", "192.0.2.10", 5080, "provider.test", ttl=300)]
    assert set(dns_server.queries) == {("provider.test", "A"), ("provider.test", "AAAA")}
    default = await make(dns_server).resolve("Provider.Test.", 5070, None)
    assert [(t.transport, t.port) for t in default] == [("udp", 5070)]


async def test_ip_literals_ask_nothing(dns_server: DnsServer) -> None:
    resolver = make(dns_server)
    assert await resolver.resolve("192.0.2.1", None, None) == [Target("udp", "192.0.2.1", 5060, "192.0.2.1")]
    assert await resolver.resolve("[2001:db8::1]", None, "tls") == [Target("tls", "2001:db8::1", 5061, "2001:db8::1")]
    assert await resolver.resolve("192.0.2.1", 5080, "tcp") == [Target("tcp", "192.0.2.1", 5080, "192.0.2.1")]
    assert dns_server.total() == 0 and resolver.queries == 0


async def test_no_such_domain(dns_server: DnsServer) -> None:
    with pytest.raises(ResolveError) as caught:
        await make(dns_server).resolve("nosuch.provider.test", None, None)
    assert caught.value.host == "nosuch.provider.test"
    assert caught.value.reason == "no such domain (NXDOMAIN)"
    assert str(caught.value) == "cannot resolve nosuch.provider.test: no such domain (NXDOMAIN)"
    assert isinstance(caught.value, SipError) and caught.value.status_hint == 503
    with pytest.raises(ResolveError, match="no such domain"):
        await make(dns_server).resolve("nosuch.provider.test", 5060, "udp")


async def test_a_name_without_sip_records_or_addresses(dns_server: DnsServer) -> None:
    with pytest.raises(ResolveError, match=r"no records: NAPTR txtonly.provider.test, .*A txtonly\.provider\.test"):
        await make(dns_server).resolve("txtonly.provider.test", None, None)


async def test_the_service_decidedly_not_offered(dns_server: DnsServer) -> None:
    with pytest.raises(ResolveError):
        await make(dns_server).resolve("closed.provider.test", None, "udp")
    assert dns_server.queries[("closed.provider.test", "A")] == 0


async def test_srv_target_without_an_address(dns_server: DnsServer) -> None:
    with pytest.raises(ResolveError, match=r"nowhere\.provider\.test"):
        await make(dns_server).resolve("dangling.provider.test", None, None)


async def test_answers_are_cached_for_their_ttl(dns_server: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns_server, clock)
    first = await resolver.resolve("provider.test", None, "udp")
    asked = dns_server.total()
    assert asked == resolver.queries == 6  # NAPTR, SRV, A and AAAA of sip1 and of sip2
    clock.now += 100
    again = await resolver.resolve("provider.test", None, "udp")
    assert dns_server.total() == asked  # every answer from the cache
    assert [t.address for t in again] == [t.address for t in first]
    assert again[0].ttl == 20  # sip1's A has 20 s left of its 120
    clock.now += 21  # sip1's answers expired, nothing else did (negative answers live 300 s)
    await resolver.resolve("provider.test", None, "udp")
    assert dns_server.total() == asked + 2
    assert dns_server.queries[("sip1.provider.test", "A")] == 2
    assert dns_server.queries[("provider.test", "NAPTR")] == 1


async def test_negative_answers_are_cached_for_the_soa_minimum(dns_server: DnsServer) -> None:
    clock = Clock()
    resolver = make(dns_server, clock)
    for _ in range(2):
        with pytest.raises(ResolveError):
            await resolver.resolve("nosuch.provider.test", None, None)
    assert dns_server.queries[("nosuch.provider.test", "NAPTR")] == 1
    clock.now += 301  # the SOA minimum
    with pytest.raises(ResolveError):
        await resolver.resolve("nosuch.provider.test", None, None)
    assert dns_server.queries[("nosuch.provider.test", "NAPTR")] == 2


async def test_the_cache_has_a_size_cap(dns_server: DnsServer) -> None:
    resolver = make(dns_server, cache_size=1)
    await resolver.resolve("aonly.provider.test", 5060, None)  # A, then AAAA pushes it out
    await resolver.resolve("aonly.provider.test", 5060, None)
    assert dns_server.queries[("aonly.provider.test", "A")] == 2
    uncached = make(dns_server, cache_size=0)
    await uncached.resolve("aonly.provider.test", 5060, None)
    await uncached.resolve("aonly.provider.test", 5060, None)
    assert dns_server.queries[("aonly.provider.test", "A")] == 4


async def test_a_silent_server_is_a_resolve_error_and_not_cached(dns_server: DnsServer) -> None:
    dns_server.silent = True
    resolver = SipResolver(dns_server.resolver(lifetime=0.2), clock=Clock())
    with pytest.raises(ResolveError, match="DNS timeout"):
        await resolver.resolve("aonly.provider.test", None, None)
    dns_server.silent = False
    targets = await resolver.resolve("aonly.provider.test", None, None)
    assert targets[0].address == "192.0.2.20"


async def test_a_server_refusing_the_zone(dns_server: DnsServer) -> None:
    with pytest.raises(ResolveError, match="no DNS server answered"):
        await make(dns_server).resolve("elsewhere.example", 5060, "udp")


async def test_bad_arguments() -> None:
    resolver = SipResolver()
    with pytest.raises(ValueError, match="transport 'sctp'"):
        await resolver.resolve("provider.test", None, "sctp")
    with pytest.raises(ValueError, match="port 0"):
        await resolver.resolve("provider.test", 0, None)
    with pytest.raises(ResolveError, match="empty host name"):
        await resolver.resolve("", None, None)
    with pytest.raises(ResolveError, match="not a host name"):
        await resolver.resolve("a..b", None, None)
    assert resolver.queries == 0


async def test_resolve_sip_server_takes_either_resolver(dns_server: DnsServer) -> None:
    plain = await resolve_sip_server("aonly.provider.test", None, "tcp", resolver=dns_server.resolver())
    assert [(t.transport, t.address) for t in plain] == [("tcp", "192.0.2.20"), ("tcp", "2001:db8::20")]
    ours = make(dns_server)
    await resolve_sip_server("aonly.provider.test", 5060, None, resolver=ours)
    await resolve_sip_server("aonly.provider.test", 5060, None, resolver=ours)
    assert ours.queries == 2
    assert await resolve_sip_server("127.0.0.1", None, None) == [Target("udp", "127.0.0.1", 5060, "127.0.0.1")]
