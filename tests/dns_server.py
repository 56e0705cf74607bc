"""A tiny authoritative DNS server over UDP on loopback, for resolver tests (dnspython builds the messages).

``records`` maps (name, type) to (ttl, [rdata text]); every other question gets NXDOMAIN (or an empty answer
when the name exists with other types). ``queries`` counts what was asked, to see caching.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, records: Mapping[tuple[str, str], tuple[int, list[str]]]) -> None:
        self.records = {(name.lower().rstrip(".") + ".", rdtype.upper()): value for (name, rdtype), value
                        in records.items()}
        self.names = {name for name, _ in self.records}
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # a test server ignores garbage
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text().lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            found = self.records.get((name, rdtype))
            if found is not None:
                ttl, values = found
                response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, values))
            elif name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def start_dns(records: Mapping[tuple[str, str], tuple[int, list[str]]]
                    ) -> tuple[DnsServer, asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: DnsServer(records), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    return server, transport, port  # type: ignore[return-value]
