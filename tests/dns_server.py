"""A tiny authoritative DNS server for tests: one zone in a dict, UDP on 127.0.0.1, every question counted.

    async with DnsServer("provider.test", {("provider.test", "A"): (300, ["192.0.2.10"])}) as server:
        resolver = server.resolver()  # a dns.asyncresolver.Resolver pointed at it

Names in the zone that have no record of the asked type get an empty answer with the SOA (NOERROR, NODATA);
names under the zone with no records at or below them get NXDOMAIN with the SOA (RFC 2308); names outside the
zone get REFUSED. ``silent`` makes it drop every question (a server that does not answer).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import TracebackType
from typing import cast

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# (owner name, type) -> (ttl, [rdata in zone-file text])
Records = dict[tuple[str, str], tuple[int, list[str]]]


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, zone: str, records: Records, *, soa_minimum: int = 60) -> None:
        self.zone = dns.name.from_text(zone)
        self.records = {(dns.name.from_text(name), rdtype.upper()): value for (name, rdtype), value in records.items()}
        self.soa_minimum = soa_minimum
        self.queries: Counter[tuple[str, str]] = Counter()  # (name without dot, type) -> questions asked
        self.silent = False
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    # ---- lifetime ---------------------------------------------------------------------------------------------
    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._transport is not None:
            self._transport.close()

    def resolver(self, *, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    def total(self) -> int:
        return sum(self.queries.values())

    # ---- the protocol -----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        if not query.question:
            return
        question = query.question[0]
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(question.name.to_text(omit_final_dot=True), rdtype)] += 1
        if self.silent or self._transport is None:
            return
        self._transport.sendto(self.answer(query).to_wire(), addr)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name, dns.rdatatype.to_text(question.rdtype)
        if not name.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        found = self.records.get((name, rdtype))
        if found is not None:
            ttl, rdatas = found
            response.answer.append(dns.rrset.from_text_list(name, ttl, dns.rdataclass.IN, rdtype, rdatas))
            return response
        if not any(owner.is_subdomain(name) for owner, _ in self.records) and name != self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text(
            self.zone, self.soa_minimum, dns.rdataclass.IN, "SOA",
            f"ns.{self.zone} hostmaster.{self.zone} 1 3600 600 86400 {self.soa_minimum}"))
        return response
