"""Bans (pbx/bans.py): failure thresholds, expiry, caps, the allow-list and the rate limit, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.bans import (
    AuthFailed,
    BanExpired,
    BanLifted,
    BanPolicy,
    Bans,
    BanStarted,
    FailureKind,
    RateLimited,
)

WRONG = FailureKind.WRONG_PASSWORD


def src(ip: str = "192.0.2.9", port: int = 5060) -> tuple[str, str, int]:
    return ("udp", ip, port)


def test_the_fifth_failure_within_the_window_bans_for_ban_time() -> None:
    bans = Bans(BanPolicy(ban_after=5, window_ms=60_000, ban_ms=600_000))
    for i in range(4):
        assert bans.failed(src(), WRONG, 1000 * i, user="2001") is None
    assert not bans.banned("192.0.2.9", 4000)
    ban = bans.failed(src(), WRONG, 4000, user="2001")
    assert ban is not None and (ban.ip, ban.reason, ban.failures, ban.until) == ("192.0.2.9", "auth-failures", 5,
                                                                                 604_000)
    assert bans.banned("192.0.2.9", 4001) and bans.banned("192.0.2.9", 603_999)
    events = bans.events()
    assert [e.failures for e in events if isinstance(e, AuthFailed)] == [1, 2, 3, 4, 5]
    assert events[-1] == BanStarted(ban)
    assert not bans.banned("192.0.2.9", 604_000)
    assert bans.events() == [BanExpired(ban)]
    assert bans.list(604_000) == ()


def test_failures_spread_wider_than_the_window_never_ban() -> None:
    bans = Bans(BanPolicy(ban_after=3, window_ms=10_000))
    for i in range(20):
        assert bans.failed(src(), WRONG, i * 5_000) is None  # at most 2 within any 10 s
    assert not bans.banned("192.0.2.9", 100_000)


def test_failures_count_per_address_across_ports_and_users() -> None:
    bans = Bans(BanPolicy(ban_after=3))
    bans.failed(src(port=1), WRONG, 0, user="a")
    bans.failed(src(port=2), FailureKind.UNKNOWN_USER, 1, user="b")
    assert bans.failed(src(port=3), WRONG, 2, user="c") is not None
    assert not bans.banned("192.0.2.10", 3)


def test_success_does_not_forgive_the_address() -> None:
    """Behind a NAT one guesser and many good phones share an address; the good logins do not reset it."""
    bans = Bans(BanPolicy(ban_after=3))
    bans.failed(src(port=1), WRONG, 0)
    bans.succeeded(src(port=2), 1)
    bans.failed(src(port=1), WRONG, 2)
    bans.succeeded(src(port=3), 3)
    assert bans.failed(src(port=1), WRONG, 4) is not None


def test_stale_nonces_are_free_once_per_endpoint_until_it_authenticates() -> None:
    bans = Bans(BanPolicy(ban_after=2))
    for port in range(100):  # a NAT full of phones, each presenting a nonce from before our restart
        assert bans.stale_nonce(src(port=port), 0) is None
    for port in range(100):
        bans.succeeded(src(port=port), 1)
    assert bans.failures("192.0.2.9", 2) == 0
    # one endpoint presenting forged nonces again and again
    assert bans.stale_nonce(src(port=7), 10) is None
    assert bans.stale_nonce(src(port=7), 11) is None and bans.failures("192.0.2.9", 11) == 1
    assert bans.stale_nonce(src(port=7), 12) is not None
    assert bans.banned("192.0.2.9", 13)


def test_allowed_networks_are_never_banned_nor_limited() -> None:
    bans = Bans(BanPolicy(ban_after=1, rate_per_s=1, burst=1, allow=("10.0.0.0/8", "2001:db8::/32")))
    assert bans.failed(src("10.1.2.3"), WRONG, 0) is None and not bans.banned("10.1.2.3", 1)
    assert bans.ban("10.1.2.3", "manual", 100, now=0) is None
    assert bans.ban("::ffff:10.1.2.3", "manual", 100, now=0) is None  # v4-mapped
    assert bans.allowed("2001:db8::1") and not bans.allowed("2001:db9::1") and not bans.allowed("not-an-ip")
    assert all(bans.admit_request(src("10.1.2.3"), 0) for _ in range(100))
    assert bans.admit_request(src("192.0.2.1"), 0) and not bans.admit_request(src("192.0.2.1"), 0)


def test_manual_ban_lift_and_list() -> None:
    bans = Bans()
    a = bans.ban("192.0.2.1", "manual", 5_000, now=0)
    b = bans.ban("192.0.2.2", "manual", 3_000, now=0)
    assert bans.ban("192.0.2.3", "manual", 0, now=0) is None  # already over
    assert bans.list(1) == (b, a)
    assert bans.lift("192.0.2.1") == a and bans.lift("192.0.2.1") is None
    assert not bans.banned("192.0.2.1", 2)
    assert [type(e) for e in bans.events()] == [BanStarted, BanStarted, BanLifted]
    assert bans.list(3_000) == () and bans.events() == [BanExpired(b)]


def test_lifting_forgets_the_failures_too() -> None:
    bans = Bans(BanPolicy(ban_after=2))
    bans.failed(src(), WRONG, 0)
    bans.failed(src(), WRONG, 1)
    bans.lift("192.0.2.9")
    assert bans.failed(src(), WRONG, 2) is None


def test_the_token_bucket_allows_the_burst_then_the_rate() -> None:
    bans = Bans(BanPolicy(rate_per_s=20, burst=40, window_ms=60_000, flood_ban_after=0))
    assert sum(bans.admit_request(src(port=p), 0) for p in range(200)) == 40
    assert bans.dropped_rate_limited == 160
    assert sum(bans.admit_request(src(), 1000) for _ in range(100)) == 20  # one second: 20 more
    notices = [e for e in bans.events() if isinstance(e, RateLimited)]
    assert notices == [RateLimited("192.0.2.9", 1)]  # once per address per window, not per drop
    for t in range(2000, 60_000, 1000):
        for _ in range(30):
            bans.admit_request(src(), t)
    assert bans.events() == []
    bans.admit_request(src(), 60_000)
    while bans.admit_request(src(), 60_000):
        pass
    (notice,) = bans.events()
    assert isinstance(notice, RateLimited) and notice.dropped > 500


def test_authenticated_endpoints_and_unlimited_networks_are_not_rate_limited() -> None:
    bans = Bans(BanPolicy(rate_per_s=1, burst=2, known_ms=10_000, unlimited=("198.51.100.7/32",)))
    bans.succeeded(src(port=1), 0)
    assert all(bans.admit_request(src(port=1), 5) for _ in range(1000))
    assert bans.admit_request(src(port=2), 5) and bans.admit_request(src(port=2), 5)
    assert not bans.admit_request(src(port=2), 5)  # the same address, another (unauthenticated) port
    assert bans.admit_request(src(port=1), 10_000) and bans.admit_request(src(port=1), 10_000)  # refilled
    assert not bans.admit_request(src(port=1), 10_000)  # its authentication grew old: charged like the rest
    assert all(bans.admit_request(src("198.51.100.7"), 0) for _ in range(100))
    for _ in range(10):  # ...but a gateway that guesses is banned like anyone
        bans.failed(src("198.51.100.7"), WRONG, 0)
    assert bans.banned("198.51.100.7", 1)


def test_a_flood_becomes_a_ban_unless_someone_logged_in_from_that_address() -> None:
    bans = Bans(BanPolicy(rate_per_s=20, burst=40, window_ms=60_000, ban_ms=600_000, flood_ban_after=100))
    admitted = [bans.admit_request(src(port=p), p // 10) for p in range(139)]  # 139 requests in 14 ms
    assert sum(admitted) == 40 and not bans.banned("192.0.2.9", 14)  # 99 dropped: limited, not yet banned
    assert not bans.admit_request(src(), 14)
    assert bans.banned("192.0.2.9", 15) and bans.banned("192.0.2.9", 600_013)
    (ban,) = bans.list(15)
    assert (ban.reason, ban.failures) == ("flood", 100)
    assert [type(e) for e in bans.events()] == [RateLimited, BanStarted]
    # drops spread thinner than flood_ban_after per window never ban
    slow = Bans(BanPolicy(rate_per_s=1, burst=1, window_ms=10_000, flood_ban_after=100))
    for t in range(0, 100_000, 100):  # 10 a second against 1 allowed: 9 drops a second, 90 a window
        slow.admit_request(src("198.51.100.1"), t)
    assert not slow.banned("198.51.100.1", 100_000) and slow.dropped_rate_limited > 800
    # an office behind one NAT: one phone logged in, the others boot at once — slowed, never banned
    office = Bans(BanPolicy(rate_per_s=20, burst=40, flood_ban_after=100))
    office.succeeded(src("203.0.113.5", 1), 0)
    for port in range(2, 1000):
        office.admit_request(src("203.0.113.5", port), 1)
    assert office.dropped_rate_limited > 900 and not office.banned("203.0.113.5", 2)
    # allowed and unlimited addresses are never limited, so never flood-banned
    trusted = Bans(BanPolicy(rate_per_s=1, burst=1, allow=("192.0.2.0/24",), flood_ban_after=1))
    assert all(trusted.admit_request(src(port=p), 0) for p in range(100)) and not trusted.list(0)


def test_no_rate_limit_when_the_rate_is_zero() -> None:
    bans = Bans(BanPolicy(rate_per_s=0))
    assert all(bans.admit_request(src(), 0) for _ in range(10_000))


def test_every_table_is_capped() -> None:
    bans = Bans(BanPolicy(ban_after=3, max_entries=50))
    for i in range(1000):
        ip = f"198.51.{i // 256}.{i % 256}"
        bans.failed(src(ip), WRONG, i)
        bans.stale_nonce(src(ip), i)
        bans.succeeded(src(ip, 1), i)
        bans.admit_request(src(ip, 2), i)
        bans.ban(ip, "manual", 10_000_000 + i, now=i)
    assert all(size <= 50 for size in bans.sizes().values()), bans.sizes()
    assert bans.banned("198.51.3.231", 2000)  # the newest (longest) bans are kept
    assert not bans.banned("198.51.0.0", 2000)
    assert bans.bans_evicted == 950 and bans.evicted >= 950 + 3 * 950


def test_purge_expires_everything() -> None:
    bans = Bans(BanPolicy(ban_after=2, window_ms=1000, ban_ms=5000, known_ms=2000, rate_per_s=10, burst=10))
    bans.failed(src("192.0.2.1"), WRONG, 0)
    bans.failed(src("192.0.2.2"), WRONG, 0)
    bans.failed(src("192.0.2.2"), WRONG, 0)
    bans.stale_nonce(src(), 0)
    bans.succeeded(src(port=9), 0)
    bans.admit_request(src(port=8), 0)
    bans.events()
    bans.purge(10_000)
    assert bans.sizes() == {"bans": 0, "failures": 0, "stale": 0, "known": 0, "vouched": 0, "buckets": 0}
    assert [type(e) for e in bans.events()] == [BanExpired]


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        BanPolicy(ban_after=0)
    with pytest.raises(ValueError):
        BanPolicy(rate_per_s=5, burst=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5_000)), max_size=80),
       st.integers(1, 6), st.integers(1, 3_000))
def test_banned_iff_ban_after_failures_fit_in_a_window(steps: list[tuple[int, int]], ban_after: int,
                                                       window: int) -> None:
    """Against a brute-force model: an address is banned exactly when ban_after of its failures (since its last
    ban) fell within one window; a ban lasts ban_ms."""
    ban_ms = 10_000
    bans = Bans(BanPolicy(ban_after=ban_after, window_ms=window, ban_ms=ban_ms))
    now = 0
    history: dict[str, list[int]] = {}
    until: dict[str, int] = {}
    for who, gap in steps:
        now += gap
        ip = f"192.0.2.{who}"
        if until.get(ip, -1) > now:
            assert bans.banned(ip, now)
            continue  # the edge drops a banned address's packets: nothing more is counted
        assert not bans.banned(ip, now)
        times = [t for t in history.get(ip, []) if now - t < window] + [now]
        history[ip] = times
        ban = bans.failed(src(ip), WRONG, now)
        if len(times) >= ban_after:
            assert ban is not None and ban.until == now + ban_ms
            until[ip] = now + ban_ms
            history[ip] = []
        else:
            assert ban is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200), st.integers(1, 50), st.integers(1, 100))
def test_the_bucket_never_admits_more_than_burst_plus_rate_times_time(gaps: list[int], rate: int,
                                                                      burst: int) -> None:
    bans = Bans(BanPolicy(rate_per_s=rate, burst=burst))
    now = 0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bans.admit_request(src(), now)
    assert admitted <= burst + rate * now / 1000 + 1e-9
    assert admitted >= min(len(gaps), burst)  # the burst is always available at first
