"""Locating SIP servers (RFC 3263 §4) with dnspython: NAPTR, then SRV, then A/AAAA.

An edge (it does DNS I/O); the decisions — which NAPTR records apply, the RFC 2782 order of SRV records — are
plain functions over records and a ``random.Random``, tested without a network.

- an IP address: that address, the port given or 5060 (5061 for TLS);
- a host name with a port: its A/AAAA records (RFC 3263 §4.2);
- a host name without: NAPTR records for SIP services (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``) name SRV
  records, filtered to the transport asked for; without NAPTR, ``_sip._udp`` / ``_sip._tcp`` / ``_sips._tcp``
  SRV records are asked directly; each SRV target's A/AAAA records follow, in RFC 2782 order (priority, then
  weighted random); without SRV, the name's A/AAAA records with the default port.

Answers are cached for their TTL (bounded), so a busy trunk does not ask per call.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from ccpbx.pbx.sip.errors import SipError

__all__ = ["NaptrRecord", "ResolveError", "SipResolver", "SrvRecord", "Target", "naptr_services", "srv_order"]

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
CACHE_MAX = 256
DEFAULT_TTL_S = 300


class ResolveError(SipError):
    """Nothing could be found for a host; ``status_hint`` 503 (RFC 3263 §4.3: try later)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host}: {reason}", 503)
        self.host = host
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send to: transport, an address literal, a port; ``ttl`` the smallest TTL on the way."""

    transport: str
    address: str
    port: int
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def naptr_services(records: Sequence[NaptrRecord], transport: str | None) -> list[tuple[str, str]]:
    """RFC 3263 §4.1: the SIP NAPTR records with the "S" flag, by order then preference, as (transport,
    SRV name); only ``transport`` when one is asked for."""
    chosen = []
    for record in sorted(records, key=lambda r: (r.order, r.preference)):
        proto = NAPTR_SERVICES.get(record.service.upper())
        if proto is None or record.flags.upper() != "S" or (transport is not None and proto != transport):
            continue
        chosen.append((proto, record.replacement.rstrip(".")))
    return chosen


def srv_order(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782: lowest priority first; within a priority, weighted random selection (weight 0 records
    first among equals, chosen only when their running sum is hit). A "." target means no service."""
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority and r.target not in (".", "")),
                       key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class SipResolver:
    """RFC 3263 resolution with a TTL cache; pass a configured ``dns.asyncresolver.Resolver`` in tests."""

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, *, rng: random.Random | None = None,
                 clock: object = time.monotonic) -> None:
        self._resolver = resolver
        self.rng = rng or random.Random()
        self._clock = clock
        self._cache: dict[tuple[str, int | None, str | None], tuple[float, list[Target]]] = {}
        self.queries = 0

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = dns.asyncresolver.Resolver()
            self._resolver.lifetime = 5.0
        return self._resolver

    async def resolve(self, host: str, port: int | None = None, transport: str | None = None) -> list[Target]:
        """Where to send requests for ``host``, in the order to try; :class:`ResolveError` when nowhere."""
        literal = _literal(host)
        if literal is not None:
            proto = transport or "udp"
            return [Target(proto, literal, port or DEFAULT_PORTS[proto])]
        key = (host.lower(), port, transport)
        now = self._clock()  # type: ignore[operator]
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return list(cached[1])
        targets = await self._lookup(host, port, transport)
        if not targets:
            raise ResolveError(host, "no NAPTR, SRV or A/AAAA records")
        ttl = min((t.ttl for t in targets if t.ttl is not None), default=DEFAULT_TTL_S)
        if len(self._cache) >= CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + ttl, targets)
        return list(targets)

    async def _lookup(self, host: str, port: int | None, transport: str | None) -> list[Target]:
        if port is not None:
            return await self._addresses(host, port, transport or "udp", None)
        services = naptr_services(await self._naptr(host), transport)
        if not services:
            services = [(proto, SRV_PREFIXES[proto] + host) for proto in ((transport,) if transport else
                                                                         ("udp", "tcp"))]
        for proto, name in services:
            records, ttl = await self._srv(name)
            targets: list[Target] = []
            for record in srv_order(records, self.rng):
                targets += await self._addresses(record.target.rstrip("."), record.port, proto, ttl)
            if targets:
                return targets
        proto = transport or "udp"
        return await self._addresses(host, DEFAULT_PORTS[proto], proto, None)

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        self.queries += 1
        try:
            return await self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout as exc:
            raise ResolveError(name, "DNS timeout") from exc
        except dns.exception.DNSException as exc:
            raise ResolveError(name, str(exc) or type(exc).__name__) from exc

    async def _naptr(self, host: str) -> list[NaptrRecord]:
        answer = await self._query(host, "NAPTR")
        if answer is None or answer.rrset is None:
            return []
        return [NaptrRecord(r.order, r.preference, r.flags.decode(errors="replace"),
                            r.service.decode(errors="replace"), r.replacement.to_text()) for r in answer]

    async def _srv(self, name: str) -> tuple[list[SrvRecord], int | None]:
        answer = await self._query(name, "SRV")
        if answer is None or answer.rrset is None:
            return [], None
        return [SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in answer], answer.rrset.ttl

    async def _addresses(self, host: str, port: int, proto: str, ttl: int | None) -> list[Target]:
        literal = _literal(host)
        if literal is not None:
            return [Target(proto, literal, port, ttl)]
        out: list[Target] = []
        for rdtype in ("A", "AAAA"):
            answer = await self._query(host, rdtype)
            if answer is None or answer.rrset is None:
                continue
            rr_ttl = answer.rrset.ttl if ttl is None else min(ttl, answer.rrset.ttl)
            out += [Target(proto, r.address, port, rr_ttl) for r in answer]
        return out
