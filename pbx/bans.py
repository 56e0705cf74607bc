"""Bans: who keeps guessing or flooding, and is shut out — fail2ban and Kamailio's pike in-process.

:mod:`ccpbx.pbx.admission`'s lockout stops one address guessing one user's password; this stops the guesser.
Per source IP address, pure (``now`` is monotonic milliseconds, passed in), every table capped:

- **Failures**: :meth:`Bans.failed` counts a wrong digest response, credentials for a user that does not exist,
  credentials sent again while locked out, and nonce abuse (:meth:`Bans.stale_nonce`: a forged, foreign or
  replayed nonce from one endpoint, a second time without a successful authentication in between — the first
  is free, because a phone presents its old nonce once after a restart of the server). The 401/407 challenge
  every phone gets for a request without credentials, a ``stale=true`` re-challenge for an expired nonce and
  a correct authentication never count. ``ban_after`` failures from one address within ``window_ms`` ban it
  for ``ban_ms``. A success does not reset the address's count: many phones share an address behind a NAT,
  and one of them guessing must not be forgiven because the others log in.
- **Bans**: :meth:`Bans.banned` is one dict lookup, asked for every packet before it is parsed; a banned
  address's packets are dropped unanswered. Bans expire; :meth:`Bans.ban` and :meth:`Bans.lift` are the
  operator's.
- **Rate limit** of requests that cannot yet be trusted (:meth:`Bans.admit_request`): a token bucket per
  address (``rate_per_s`` refill, ``burst`` deep). Not limited: requests from an *endpoint* — transport,
  address and port — that authenticated successfully within ``known_ms`` (:meth:`Bans.succeeded`): a phone's
  registrations, calls and everything in their dialogs, each phone behind a NAT on its own port; requests
  from the ``allow`` networks (never banned either) and the ``unlimited`` ones (trunk gateways: not limited,
  but banned if they guess). A phone's first two requests (without and with credentials) are charged, so the
  bucket must hold a site's phones booting at once; what is dropped is retransmitted by the phone.
- **Floods become bans**: an address whose requests are dropped by the rate limit ``flood_ban_after`` times
  within ``window_ms`` is banned for ``ban_ms`` (reason ``flood``), as Kamailio's pike and a fail2ban jail do,
  so the firewall can take over and a flood costs one dict lookup per packet. Never an address from which
  anyone authenticated within ``known_ms`` (a busy office behind one NAT, phones booting at once, is slowed
  by the limit but not shut out) and never an ``allow`` or ``unlimited`` one.
- **Events** for the edge to log (:meth:`Bans.events`): :class:`AuthFailed`, :class:`BanStarted`,
  :class:`BanLifted`, :class:`BanExpired` and :class:`RateLimited` (at most once per address per window).
"""

from __future__ import annotations

import builtins
import enum
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "AuthFailed",
    "Ban",
    "BanEvent",
    "BanExpired",
    "BanLifted",
    "BanPolicy",
    "BanStarted",
    "Bans",
    "FailureKind",
    "RateLimited",
]

K = TypeVar("K")
V = TypeVar("V")
Endpoint = tuple[str, str, int]  # (transport, address, port), as transactions name a source
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailureKind(enum.StrEnum):
    """What counted against an address (the ``reason=`` of ``security.auth.failed``)."""

    WRONG_PASSWORD = "wrong-password"
    UNKNOWN_USER = "unknown-user"
    LOCKED_OUT = "locked-out"  # credentials again while admission's lockout answers 403
    NONCE_ABUSE = "nonce-abuse"  # forged, foreign or replayed nonces, again and again from one endpoint


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """The thresholds; times in milliseconds, the rate in requests per second."""

    ban_after: int = 5
    window_ms: int = 60_000
    ban_ms: int = 600_000
    rate_per_s: float = 20.0  # 0: no rate limit
    burst: float = 40.0
    allow: tuple[str, ...] = ()  # networks never banned nor limited
    unlimited: tuple[str, ...] = ()  # networks not rate limited (but banned if they guess)
    known_ms: int = 3_600_000  # how long an authenticated endpoint's requests go unlimited
    flood_ban_after: int = 100  # requests dropped by the rate limit within window_ms that ban (0: never)
    max_entries: int = 100_000  # the cap of every table (least recently used out first)

    def __post_init__(self) -> None:
        if self.ban_after < 1 or self.window_ms < 1 or self.ban_ms < 1 or self.max_entries < 1:
            raise ValueError("ban_after, window_ms, ban_ms and max_entries must be positive")
        if self.flood_ban_after < 0:
            raise ValueError("flood_ban_after must be >= 0")
        if self.rate_per_s < 0 or (self.rate_per_s > 0 and self.burst < 1):
            raise ValueError("rate_per_s must be >= 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class Ban:
    """``ip`` is banned from ``since`` until ``until`` (monotonic ms) for ``reason`` after ``failures``."""

    ip: str
    reason: str
    since: int
    until: int
    failures: int = 0

    def remaining_ms(self, now: int) -> int:
        return max(0, self.until - now)


@dataclass(frozen=True, slots=True)
class AuthFailed:
    ip: str
    user: str
    kind: FailureKind
    failures: int  # within the window, this one included


@dataclass(frozen=True, slots=True)
class BanStarted:
    ban: Ban


@dataclass(frozen=True, slots=True)
class BanLifted:
    ban: Ban


@dataclass(frozen=True, slots=True)
class BanExpired:
    ban: Ban


@dataclass(frozen=True, slots=True)
class RateLimited:
    """``ip`` sent more than its bucket allows; ``dropped`` requests since the last notice."""

    ip: str
    dropped: int


BanEvent = AuthFailed | BanStarted | BanLifted | BanExpired | RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: int
    exempt: bool
    dropped: int = 0
    noticed: int | None = None  # when the last RateLimited went out
    flood: int = 0  # drops since flood_since (the flood ban's count)
    flood_since: int = 0


class _Lru(Generic[K, V]):
    """A dict that forgets its least recently touched entry beyond ``cap``."""

    __slots__ = ("cap", "evicted", "items")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.evicted = 0
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.cap:
            self.items.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K) -> V | None:
        return self.items.pop(key, None)

    def __len__(self) -> int:
        return len(self.items)


def _networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def _in(ip: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Bans:
    """Failure counts, bans and rate limits per source address; see the module docstring."""

    def __init__(self, policy: BanPolicy | None = None) -> None:
        self.policy = policy or BanPolicy()
        cap = self.policy.max_entries
        self._allow = _networks(self.policy.allow)
        self._unlimited = _networks(self.policy.unlimited)
        self._bans: dict[str, Ban] = {}  # small and hot: asked for every packet
        self._failures: _Lru[str, deque[int]] = _Lru(cap)
        self._stale: _Lru[Endpoint, int] = _Lru(cap)  # endpoint -> when its free stale nonce was used
        self._known: _Lru[Endpoint, int] = _Lru(cap)  # endpoint -> last successful authentication
        self._vouched: _Lru[str, int] = _Lru(cap)  # address -> last successful authentication from it
        self._buckets: _Lru[str, _Bucket] = _Lru(cap)
        self._events: builtins.list[BanEvent] = []
        self.dropped_banned = 0
        self.dropped_rate_limited = 0
        self.bans_evicted = 0  # bans dropped by the cap before their time

    # ---- the allow-list -------------------------------------------------------------------------------------
    def allowed(self, ip: str) -> bool:
        """Never banned nor rate limited (``allow``)."""
        return _in(ip, self._allow)

    # ---- bans -----------------------------------------------------------------------------------------------
    def banned(self, ip: str, now: int) -> bool:
        """Is ``ip`` banned now? (One lookup; an expired ban is forgotten here, with a :class:`BanExpired`.)"""
        ban = self._bans.get(ip)
        if ban is None:
            return False
        if now < ban.until:
            return True
        del self._bans[ip]
        self._events.append(BanExpired(ban))
        return False

    def ban(self, ip: str, reason: str, until: int, *, now: int, failures: int = 0) -> Ban | None:
        """Ban ``ip`` until ``until`` (monotonic ms); None (and no ban) for an allowed address or a past time."""
        if until <= now or self.allowed(ip):
            return None
        ban = Ban(ip, reason, now, until, failures)
        if ip in self._bans:
            del self._bans[ip]  # re-inserted at the end: dict order stays the order bans began
        elif len(self._bans) >= self.policy.max_entries:
            # Full (an attack from very many addresses): the oldest ban goes, in O(1) — with one ban time for
            # all, the oldest is also the one ending soonest.
            del self._bans[next(iter(self._bans))]
            self.bans_evicted += 1
        self._bans[ip] = ban
        self._failures.pop(ip)
        self._events.append(BanStarted(ban))
        return ban

    def lift(self, ip: str) -> Ban | None:
        """End ``ip``'s ban (and forget its failures); the ban that was, or None."""
        ban = self._bans.pop(ip, None)
        self._failures.pop(ip)
        if ban is not None:
            self._events.append(BanLifted(ban))
        return ban

    def list(self, now: int) -> tuple[Ban, ...]:
        """The bans in force, soonest to end first."""
        self.purge(now)
        return tuple(sorted(self._bans.values(), key=lambda b: (b.until, b.ip)))

    # ---- failures -------------------------------------------------------------------------------------------
    def failed(self, source: Endpoint, kind: FailureKind, now: int, *, user: str = "") -> Ban | None:
        """One failure from ``source``'s address; the ban it caused, if it was the ``ban_after``-th within the
        window."""
        ip = source[1]
        times = self._failures.get(ip)
        if times is None:
            times = deque(maxlen=self.policy.ban_after)
            self._failures.put(ip, times)
        while times and now - times[0] >= self.policy.window_ms:
            times.popleft()
        times.append(now)
        self._events.append(AuthFailed(ip, user, kind, len(times)))
        if len(times) < self.policy.ban_after or ip in self._bans:
            return None
        return self.ban(ip, "auth-failures", now + self.policy.ban_ms, now=now, failures=len(times))

    def stale_nonce(self, source: Endpoint, now: int, *, user: str = "") -> Ban | None:
        """A nonce we did not issue (or from before a restart), or one replayed: free once per endpoint until it
        authenticates, then a failure (:attr:`FailureKind.NONCE_ABUSE`)."""
        first = self._stale.get(source)
        if first is None or now - first >= self.policy.window_ms:
            self._stale.put(source, now)
            return None
        return self.failed(source, FailureKind.NONCE_ABUSE, now, user=user)

    def succeeded(self, source: Endpoint, now: int) -> None:
        """``source`` authenticated: its requests go unlimited for ``known_ms``; its free stale nonce is back."""
        self._known.put(source, now)
        self._vouched.put(source[1], now)
        self._stale.pop(source)

    def known_endpoints(self, now: int) -> tuple[tuple[Endpoint, int], ...]:
        """The endpoints that authenticated within ``known_ms``, with when (oldest first)."""
        known_ms = self.policy.known_ms
        return tuple((source, last) for source, last in self._known.items.items() if now - last < known_ms)

    def failures(self, ip: str, now: int) -> int:
        times = self._failures.items.get(ip)
        return 0 if times is None else sum(1 for t in times if now - t < self.policy.window_ms)

    # ---- the rate limit -------------------------------------------------------------------------------------
    def add_unlimited(self, ip: str) -> None:
        """Exempt ``ip`` from the rate limit from now on (a trunk's address, learnt when its name resolves:
        a provider or gateway sends many unauthenticated requests by design)."""
        if _in(ip, self._unlimited):
            return
        self._unlimited = (*self._unlimited, *_networks((ip,)))
        bucket = self._buckets.get(ip)
        if bucket is not None:
            bucket.exempt = True

    def admit_request(self, source: Endpoint, now: int) -> bool:
        """May a request from ``source`` be parsed and answered? False: drop it (counted)."""
        policy = self.policy
        if policy.rate_per_s <= 0:
            return True
        known = self._known.items.get(source)
        if known is not None and now - known < policy.known_ms:
            return True
        ip = source[1]
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = _Bucket(policy.burst, now, self.allowed(ip) or _in(ip, self._unlimited))
            self._buckets.put(ip, bucket)
        if bucket.exempt:
            return True
        if now > bucket.last:
            bucket.tokens = min(policy.burst, bucket.tokens + (now - bucket.last) * policy.rate_per_s / 1000)
            bucket.last = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        bucket.dropped += 1
        self.dropped_rate_limited += 1
        if bucket.noticed is None or now - bucket.noticed >= policy.window_ms:
            self._events.append(RateLimited(ip, bucket.dropped))
            bucket.noticed = now
            bucket.dropped = 0
        if policy.flood_ban_after:
            if now - bucket.flood_since >= policy.window_ms:
                bucket.flood, bucket.flood_since = 0, now
            bucket.flood += 1
            if bucket.flood >= policy.flood_ban_after and ip not in self._bans and not self._vouched_for(ip, now):
                self.ban(ip, "flood", now + policy.ban_ms, now=now, failures=bucket.flood)
                bucket.flood = 0
        return False

    def _vouched_for(self, ip: str, now: int) -> bool:
        last = self._vouched.items.get(ip)
        return last is not None and now - last < self.policy.known_ms

    # ---- upkeep ---------------------------------------------------------------------------------------------
    def purge(self, now: int) -> None:
        """Forget what expired: bans (with :class:`BanExpired`), old failures, endpoints, full buckets."""
        policy = self.policy
        for ip in [ip for ip, ban in self._bans.items() if now >= ban.until]:
            self._events.append(BanExpired(self._bans.pop(ip)))
        _drop(self._failures, lambda times: not times or now - times[-1] >= policy.window_ms)
        _drop(self._stale, lambda first: now - first >= policy.window_ms)
        _drop(self._known, lambda last: now - last >= policy.known_ms)
        _drop(self._vouched, lambda last: now - last >= policy.known_ms)
        refill_ms = policy.burst * 1000 / policy.rate_per_s if policy.rate_per_s > 0 else 0.0
        _drop(self._buckets, lambda b: now - b.last >= max(refill_ms, policy.window_ms))

    def sizes(self) -> dict[str, int]:
        return {"bans": len(self._bans), "failures": len(self._failures), "stale": len(self._stale),
                "known": len(self._known), "vouched": len(self._vouched), "buckets": len(self._buckets)}

    @property
    def evicted(self) -> int:
        """Entries every capped table here dropped before their time, since the start."""
        tables = (self._failures, self._stale, self._known, self._vouched, self._buckets)
        return self.bans_evicted + sum(t.evicted for t in tables)

    def events(self) -> builtins.list[BanEvent]:
        """What happened since the last call, oldest first."""
        out, self._events = self._events, []
        return out


def _drop(table: _Lru[K, V], expired: Callable[[V], bool]) -> None:
    for key in [k for k, v in table.items.items() if expired(v)]:
        del table.items[key]
