"""Locating SIP servers: a host name to the addresses, ports and transports to try, in order (RFC 3263 §4).

An edge: it asks DNS (dnspython's asyncio resolver), so it is I/O, ranked with :mod:`ccpbx.pbx.sip.transport`
and importing nothing of ours but :mod:`ccpbx.pbx.sip.errors`. The decisions are pure functions over plain
records (:func:`select_naptr`, :func:`order_srv`, :func:`srv_name`) that take a :class:`random.Random`, so
they are tested without a network; :class:`SipResolver` runs them over DNS answers and caches each answer
for its TTL (negative answers for their SOA minimum, RFC 2308 §5), at most ``cache_size`` of them.

The steps, for ``resolve(host, port, transport)``:

1. ``host`` is an IP literal (``192.0.2.1``, ``[2001:db8::1]``): that address, ``port`` or 5060 (5061 for
   TLS), the transport given or UDP (§4.1, §4.2).
2. A ``port`` is given: the host's A and AAAA records, with that port (§4.2).
3. NAPTR records of the host (§4.1, RFC 3403) whose service is ``SIP+D2U`` (UDP), ``SIP+D2T`` (TCP) or
   ``SIPS+D2T`` (TLS) with the ``s`` flag, the lowest order and then preference first, only the given
   transport's when one is given (RFC 3263 skips NAPTR when the transport is known; trunks always know theirs,
   and a provider's NAPTR may name SRV records elsewhere than ``_sip._udp.<host>``, so they are read anyway).
   Each one names an SRV record set.
4. No usable NAPTR: the SRV records ``_sip._udp.<host>``, ``_sip._tcp.<host>``, ``_sips._tcp.<host>`` (only
   the given transport's when one is given, §4.1).
5. SRV records (RFC 2782) are ordered by priority, then by weighted random choice within a priority; each
   target's A and AAAA records give the addresses, with the SRV port. A target ``.`` means the service is
   decidedly not offered there.
6. No SRV records at all (after NAPTR, or for any transport): the host's A and AAAA records, port 5060 (5061
   for TLS), the transport given or UDP. A host with SRV records whose targets have no address is not
   looked up under its own name.

IPv4 addresses come before IPv6 ones for the same name. Nothing found raises :class:`ResolveError`, naming
the host and why (no such domain, no records, the DNS server's failure). Not done: the additional section
of answers is not used (a second lookup comes from the cache anyway), nor SCTP or WebSocket services.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver

from ccpbx.pbx.sip.errors import SipError

__all__ = [
    "DEFAULT_PORTS",
    "TRANSPORTS",
    "NaptrRecord",
    "ResolveError",
    "SipResolver",
    "SrvRecord",
    "Target",
    "ip_literal",
    "order_srv",
    "resolve_sip_server",
    "select_naptr",
    "srv_name",
]

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}  # RFC 3261 §19.1.2
# RFC 3263 §4.1: the NAPTR services SIP understands, and the transport each names (RFC 3263 §4.1, RFC 3403)
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}  # RFC 3263 §4.2
MAX_CACHE_TTL_S = 86400  # an answer is kept at most a day, whatever its TTL says
NEGATIVE_TTL_S = 30  # a name error without an SOA to say how long (RFC 2308 §5 leaves it to us)


class ResolveError(SipError):
    """No address to send to: ``host`` did not resolve, and ``reason`` says why. 503 when a request fails on it."""

    status_hint = 503

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host}: {reason}")
        self.host = host
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: ``transport`` ("udp", "tcp", "tls"), an IP literal ``address`` and ``port``.

    ``host`` is the DNS name the address belongs to (the SRV target or the host itself; a TLS client verifies
    that name); ``priority`` and ``weight`` come from the SRV record (0 without one); ``ttl`` is the shortest
    TTL of the answers that led here, in seconds (None for an IP literal, which never expires).
    """

    transport: str
    address: str
    port: int
    host: str = ""
    priority: int = 0
    weight: int = 0
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    """A NAPTR record's fields (RFC 3403 §4.1); ``replacement`` without the trailing dot."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str
    regexp: str = ""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record's fields (RFC 2782); ``target`` without the trailing dot, "." for no service."""

    priority: int
    weight: int
    port: int
    target: str


def ip_literal(host: str) -> str | None:
    """``host`` as an IP address (IPv6 without brackets), or None when it is a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def srv_name(transport: str, host: str) -> str:
    """The SRV owner name for ``transport`` at ``host``: ``_sip._udp.host``, ``_sip._tcp.host``,
    ``_sips._tcp.host`` (RFC 3263 §4.2: TLS uses the ``_sips`` service over ``_tcp``)."""
    return f"{SRV_PREFIXES[transport]}.{host}"


def select_naptr(records: Iterable[NaptrRecord], transport: str | None = None) -> list[tuple[str, NaptrRecord]]:
    """The NAPTR records a SIP client follows, with each one's transport, in the order to try (RFC 3263 §4.1).

    Only terminal SRV records (flag ``s``, no regexp) of a service in :data:`NAPTR_SERVICES` (of
    ``transport``'s when given) count; the services and flags are case-insensitive (RFC 3403 §4.1). Of those,
    only the lowest ``order`` is kept (RFC 3403 §4.1: "once a match is found the client MUST NOT consider
    records with a different value of Order"), sorted by ``preference``.
    """
    usable: list[tuple[str, NaptrRecord]] = []
    for record in records:
        proto = NAPTR_SERVICES.get(record.service.upper())
        if proto is None or record.flags.lower() != "s" or record.regexp or not record.replacement:
            continue
        if transport is not None and proto != transport:
            continue
        usable.append((proto, record))
    if not usable:
        return []
    lowest = min(record.order for _, record in usable)
    kept = [(proto, record) for proto, record in usable if record.order == lowest]
    kept.sort(key=lambda item: item[1].preference)
    return kept


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """SRV records in the order to try them (RFC 2782, "Usage rules"): lowest priority first; within one
    priority, a weighted random order: repeatedly, with the unordered records listed weight-0 first and their
    running sums of weight, pick a uniform random number in [0, total] and take the first record whose running
    sum reaches it. Records naming the target ``.`` are dropped ("decidedly not available")."""
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        group = [r for r in records if r.priority == priority and r.target not in ("", ".")]
        group.sort(key=lambda r: r.weight != 0)  # stable: weight-0 records at the beginning
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


_Record = NaptrRecord | SrvRecord | str  # an A or AAAA record is its address text

# Why a lookup gave no records: the name does not exist, it has none of the type, or DNS failed (not cached).
_NXDOMAIN, _EMPTY, _FAILED = "no such domain", "no records", "failed"


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What one DNS question gave: its records (none for a negative answer or a failure) and their TTL."""

    label: str  # "SRV _sip._udp.example.com"
    records: tuple[_Record, ...]
    ttl: int
    outcome: str = ""  # "" with records, else _NXDOMAIN, _EMPTY or _FAILED
    detail: str = ""  # what failed


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float  # on the resolver's clock
    lookup: _Lookup


class SipResolver:
    """Resolves SIP hosts (see the module docstring) with a dnspython asyncio resolver, caching each DNS answer
    for its TTL, at most ``cache_size`` answers (the least recently used go first).

    ``resolver`` defaults to one configured from the system (``/etc/resolv.conf``), made at the first lookup;
    ``rng`` orders SRV records of equal priority; ``clock`` (monotonic seconds) dates the cache entries.
    ``queries`` counts the DNS questions sent.
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, *, cache_size: int = 512,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be 0 or more")
        self._resolver = resolver
        self.cache_size = cache_size
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self.queries = 0

    def clear_cache(self) -> None:
        self._cache.clear()

    async def resolve(self, host: str, port: int | None = None, transport: str | None = None) -> list[Target]:
        """The targets for ``host`` in the order to try them; raises :class:`ResolveError` when there are none,
        :class:`ValueError` for a transport not in :data:`TRANSPORTS` or a port out of range."""
        if transport is not None:
            transport = transport.lower()
            if transport not in TRANSPORTS:
                raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        literal = ip_literal(host)
        if literal is not None:
            proto = transport or "udp"
            return [Target(proto, literal, port or DEFAULT_PORTS[proto], host=literal)]
        name = host.strip().rstrip(".").lower()
        if not name:
            raise ResolveError(host, "empty host name")
        try:
            dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ResolveError(host, f"not a host name ({exc})") from None
        misses: list[_Lookup] = []
        if port is not None:
            targets = await self._addresses(name, transport or "udp", port, None, 0, 0, misses)
            return _unique(targets) or _fail(host, name, misses)

        targets = []
        naptr = await self._lookup(name, dns.rdatatype.NAPTR, misses)
        chosen = select_naptr((r for r in naptr.records if isinstance(r, NaptrRecord)), transport)
        found_srv = False
        for proto, record in chosen:
            found, had = await self._srv(record.replacement, proto, naptr.ttl, misses)
            targets += found
            found_srv |= had
        if not found_srv:
            for proto in ([transport] if transport else TRANSPORTS):
                found, had = await self._srv(srv_name(proto, name), proto, None, misses)
                targets += found
                found_srv |= had
        if found_srv:  # a server that publishes SRV records is not looked for under its own name
            return _unique(targets) or _fail(host, name, misses)
        for proto in ([transport] if transport else ["udp"]):
            targets += await self._addresses(name, proto, DEFAULT_PORTS[proto], None, 0, 0, misses)
        return _unique(targets) or _fail(host, name, misses)

    # ---- internals ----------------------------------------------------------------------------------------
    async def _srv(self, owner: str, transport: str, ttl: int | None,
                   misses: list[_Lookup]) -> tuple[list[Target], bool]:
        """The targets of one SRV record set, and whether it had records at all (even only ".")."""
        lookup = await self._lookup(owner, dns.rdatatype.SRV, misses)
        records = [r for r in lookup.records if isinstance(r, SrvRecord)]
        ttl = lookup.ttl if ttl is None else min(ttl, lookup.ttl)
        ordered = order_srv(records, self._rng)
        found = await asyncio.gather(*(
            self._addresses(r.target, transport, r.port, ttl, r.priority, r.weight, misses) for r in ordered))
        return [target for targets in found for target in targets], bool(records)

    async def _addresses(self, name: str, transport: str, port: int, ttl: int | None, priority: int, weight: int,
                         misses: list[_Lookup]) -> list[Target]:
        v4, v6 = await asyncio.gather(self._lookup(name, dns.rdatatype.A, misses),
                                      self._lookup(name, dns.rdatatype.AAAA, misses))
        targets: list[Target] = []
        for lookup in (v4, v6):
            life = lookup.ttl if ttl is None else min(ttl, lookup.ttl)
            targets += [Target(transport, address, port, name, priority, weight, life)
                        for address in lookup.records if isinstance(address, str)]
        return targets

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType, misses: list[_Lookup]) -> _Lookup:
        """One DNS question, from the cache while its answer lives; a lookup without records joins ``misses``."""
        key = (name, int(rdtype))
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and entry.expires > now:
            self._cache.move_to_end(key)
            lookup = entry.lookup
            remaining = min(lookup.ttl, max(0, int(entry.expires - now)))
            lookup = _Lookup(lookup.label, lookup.records, remaining, lookup.outcome, lookup.detail)
        else:
            self._cache.pop(key, None)
            lookup = await self._query(name, rdtype)
            if lookup.outcome != _FAILED and lookup.ttl > 0 and self.cache_size:
                self._cache[key] = _Entry(now + lookup.ttl, lookup)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not lookup.records:
            misses.append(lookup)
        return lookup

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        label = f"{dns.rdatatype.to_text(rdtype)} {name}"
        try:
            if self._resolver is None:
                self._resolver = dns.asyncresolver.Resolver()
            self.queries += 1
            answer = await self._resolver.resolve(dns.name.from_text(name), rdtype, search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return _Lookup(label, (), _negative_ttl(exc), _NXDOMAIN)
        except dns.resolver.NoResolverConfiguration:
            return _Lookup(label, (), 0, _FAILED, "no DNS server configured")
        except dns.exception.Timeout:
            return _Lookup(label, (), 0, _FAILED, "DNS timeout")
        except dns.resolver.NoNameservers:
            return _Lookup(label, (), 0, _FAILED, "no DNS server answered (SERVFAIL or refused)")
        except dns.exception.DNSException as exc:
            return _Lookup(label, (), 0, _FAILED, str(exc) or type(exc).__name__)
        ttl = min(max(int(answer.chaining_result.minimum_ttl), 0), MAX_CACHE_TTL_S)
        records = tuple(r for r in (_record(rdata) for rdata in answer.rrset or ()) if r is not None)
        return _Lookup(label, records, ttl, "" if records else _EMPTY)


def _record(rdata: object) -> _Record | None:
    """A dnspython rdata as our record: NaptrRecord, SrvRecord, or the address text of A and AAAA."""
    if isinstance(rdata, dns.rdtypes.IN.NAPTR.NAPTR):
        return NaptrRecord(order=rdata.order, preference=rdata.preference, flags=_text(rdata.flags),
                           service=_text(rdata.service), replacement=_name(rdata.replacement),
                           regexp=_text(rdata.regexp))
    if isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
        return SrvRecord(priority=rdata.priority, weight=rdata.weight, port=rdata.port,
                         target=_name(rdata.target) or ".")
    if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(rdata.address)
    return None


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _name(value: dns.name.Name) -> str:
    return value.to_text(omit_final_dot=True).lower()


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> int:
    """How long a name error may be cached: the SOA minimum in the response (RFC 2308 §5)."""
    try:
        responses = exc.kwargs.get("responses") or {}  # exc.responses(), which is untyped
        ttls = [response.resolve_chaining().minimum_ttl for response in responses.values()]
    except Exception:  # a malformed response: fall back to the default
        ttls = []
    return min(max(min(ttls, default=NEGATIVE_TTL_S), 0), MAX_CACHE_TTL_S)


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[tuple[str, str, int]] = set()
    kept: list[Target] = []
    for target in targets:
        key = (target.transport, target.address, target.port)
        if key not in seen:
            seen.add(key)
            kept.append(target)
    return kept


def _fail(host: str, name: str, misses: list[_Lookup]) -> list[Target]:
    """Raise the ResolveError that says best why nothing was found: DNS failures first, then a host that does
    not exist, else the questions that had no answer."""
    failed = list(dict.fromkeys(f"{m.label}: {m.detail}" for m in misses if m.outcome == _FAILED))
    if failed:
        raise ResolveError(host, "; ".join(failed))
    if any(m.outcome == _NXDOMAIN and m.label.endswith(f" {name}") for m in misses):
        raise ResolveError(host, "no such domain (NXDOMAIN)")
    asked = list(dict.fromkeys(m.label for m in misses))
    raise ResolveError(host, "no records: " + ", ".join(asked))


async def resolve_sip_server(host: str, port: int | None, transport: str | None, *,
                             resolver: SipResolver | dns.asyncresolver.Resolver | None = None) -> list[Target]:
    """The targets for a SIP URI's host, port and transport (RFC 3263 §4), in the order to try them.

    ``resolver`` is a :class:`SipResolver` (whose cache is reused), a dnspython asyncio resolver (wrapped in a
    new :class:`SipResolver`), or None (the system's DNS, no cache kept). Raises :class:`ResolveError`.
    """
    if not isinstance(resolver, SipResolver):
        resolver = SipResolver(resolver)
    return await resolver.resolve(host, port, transport)
