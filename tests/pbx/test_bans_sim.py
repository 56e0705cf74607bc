"""Bans at the edge of the real SipServer on the in-memory network: a guesser is banned and hears nothing more,
phones that know their passwords — one each, or many behind one NAT address — are never touched, and a flood of
unauthenticated requests is cut off while another address's phone goes on working."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from structlog.testing import capture_logs

from ccpbx.pbx.app import SipServer
from ccpbx.pbx.sip.message import Request
from ccpbx.pbx.sip.uri import SipUri
from tests.pbx.simnet import HOST, SimPhone, registered, sim_pbx

USERS = {str(n): f"pw-{n}" for n in range(1001, 1041)}
GUESSER = "198.51.100.66"
NAT = "192.0.2.50"
DIALPLAN = '[dialplan]\nrule = [{ match = "_1XXX", destination = "extension:{number}" }]\n'


def server_address(server: SipServer) -> tuple[str, int]:
    return (HOST, server.listening[0].port)


async def guess(phone: SimPhone, timeout: float) -> int | None:
    """One REGISTER with a wrong password: the final status, or None when nothing answered."""
    try:
        return (await phone.register(timeout=timeout)).status
    except TimeoutError:
        return None


async def a_call_works(caller: SimPhone, callee: SimPhone, number: str) -> None:
    call = await caller.call(number)
    assert call.final is not None and call.final.status == 200, call.final
    assert (await caller.hangup(call)).status == 200
    await asyncio.sleep(0)
    callee.calls.clear()


async def test_a_guesser_is_banned_before_its_tenth_guess_and_a_good_phone_goes_on(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        good = await registered(server, "1001", "pw-1001")
        callee = await registered(server, "1002", "pw-1002", auto_answer=True)
        guesser = SimPhone(server.net, server_address(server), "1003", "wrong", host=GUESSER)  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers: list[int | None] = []
        with capture_logs() as logs:
            for n in range(12):
                guesser.password = f"guess-{n}"
                answers.append(await guess(guesser, timeout=0.6))
                if answers[-1] is None:
                    break
                if n % 2 == 0:  # the good phone registers and calls between the guesses
                    assert (await good.register()).status == 200
                    await a_call_works(good, callee, "1002")
        banned_after = answers.index(None)
        assert banned_after <= 9 and answers[:banned_after] == [403] * banned_after, answers
        assert banned_after == 5  # the default: ban_after = 5
        assert server.bans.banned(GUESSER, server.now())
        ban_line = next(e for e in logs if e["event"] == "security.ban")
        assert ban_line["ip"] == GUESSER and ban_line["reason"] == "auth-failures" and ban_line["failures"] == 5
        assert ban_line["log_level"] == "warning"
        failed = [e for e in logs if e["event"] == "security.auth.failed"]
        assert [e["reason"] for e in failed] == ["wrong-password"] * 5 and failed[0]["user"] == "1003"
        assert server.bans.dropped_banned >= 1
        # the ban is on the address: another port there gets nothing either, and the good phone still works
        other = SimPhone(server.net, server_address(server), "1004", "pw-1004", host=GUESSER)  # type: ignore[attr-defined]
        assert await guess(other, timeout=0.6) is None
        assert (await good.register()).status == 200
        await a_call_works(good, callee, "1002")
        assert [b["ip"] for b in server.ban_list()["bans"]] == [GUESSER]  # type: ignore[index]
        print(f"guesses answered before the ban: {banned_after}; ban after {loop.time() - started:.3f} s "
              "(including the good phone's registrations and calls)")
        # an operator lifts it: the right password works again from there
        assert server.unban(GUESSER)
        assert (await other.register()).status == 200
        for phone in (good, callee, guesser, other):
            await phone.close()


async def test_many_good_phones_behind_one_nat_are_never_banned_nor_limited(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        users = sorted(USERS)[:30]
        phones = [SimPhone(server.net, server_address(server), u, f"pw-{u}", host=NAT, auto_answer=True)  # type: ignore[attr-defined]
                  for u in users]
        # a whole site boots at once: 60 requests (a challenge and an answer each) against a burst of 40; the
        # dropped ones are retransmitted (Timer E) and get through as the bucket refills
        results = await asyncio.gather(*(p.register(timeout=15) for p in phones))
        assert [r.status for r in results] == [200] * 30
        # then they call each other, re-register and call again: all from one address, never limited
        for round_ in range(3):
            pairs = list(itertools.pairwise(phones))[round_::3]
            calls = await asyncio.gather(*(a.call(b.user) for a, b in pairs))
            assert all(c.final is not None and c.final.status == 200 for c in calls)
            await asyncio.gather(*(a.hangup(c) for (a, _), c in zip(pairs, calls, strict=True)))
            assert all(r.status == 200 for r in await asyncio.gather(*(p.register() for p in phones)))
        assert not server.bans.banned(NAT, server.now())
        assert server.bans.failures(NAT, server.now()) == 0
        dropped = server.bans.dropped_rate_limited
        # once authenticated, nothing of theirs is dropped any more
        for _ in range(3):
            assert all(r.status == 200 for r in await asyncio.gather(*(p.register() for p in phones)))
        assert server.bans.dropped_rate_limited == dropped
        for phone in phones:
            await phone.close()


def _options(phone: SimPhone, n: int) -> Request:
    dialog = phone._dialog("probe", call_id=f"flood-{n}")
    request = phone._request(dialog, "OPTIONS")
    request.uri = SipUri(host=phone.server[1], port=phone.server[2])
    return request


async def test_a_flood_of_unauthenticated_requests_is_cut_off_while_another_address_works(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        flooder = SimPhone(server.net, server_address(server), "1010", "x", host="203.0.113.9")  # type: ignore[attr-defined]
        good = await registered(server, "1001", "pw-1001")
        callee = await registered(server, "1002", "pw-1002", auto_answer=True)
        with capture_logs() as logs:
            # 200 requests a second for a second: OPTIONS and unauthenticated INVITEs
            queues = []
            for n in range(200):
                if n % 2:
                    queues.append(flooder.send(_options(flooder, n)))
                else:
                    invite = flooder._request(flooder._dialog("1002", call_id=f"flood-inv-{n}"), "INVITE")
                    queues.append(flooder.send(invite))
                if n % 20 == 19:
                    await asyncio.sleep(0.1)
                if n == 100:
                    await a_call_works(good, callee, "1002")  # in the middle of the flood
            await asyncio.sleep(0.3)
        answered = sum(1 for q in queues if not q.empty())
        # the burst (40) and 20/s for the ~1 s the flood lasted, give or take the timing of the sleeps
        assert 40 <= answered <= 70, answered
        assert server.bans.dropped_rate_limited >= 100
        assert server.bans.dropped_rate_limited + server.bans.dropped_banned >= 120
        limited = [e for e in logs if e["event"] == "security.rate_limited"]
        assert len(limited) == 1 and limited[0]["ip"] == "203.0.113.9"  # once per window, not per packet
        # the 100th dropped request made it a ban (reason flood), so the firewall can take over
        bans = [e for e in logs if e["event"] == "security.ban"]
        assert [(e["ip"], e["reason"]) for e in bans] == [("203.0.113.9", "flood")]
        assert server.bans.banned("203.0.113.9", server.now())
        print(f"flood: {answered} of 200 requests answered")
        await a_call_works(good, callee, "1002")
        for phone in (flooder, good, callee):
            await phone.close()


async def test_bans_survive_a_restart_until_their_time_is_up(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        guesser = SimPhone(server.net, server_address(server), "1003", "wrong", host=GUESSER)  # type: ignore[attr-defined]
        for n in range(6):
            guesser.password = f"guess-{n}"
            if await guess(guesser, timeout=0.6) is None:
                break
        assert server.bans.banned(GUESSER, server.now())
        server.ban_address("203.0.113.20", 0.5, "manual")  # ends before the restart is over
        server.ban_address("203.0.113.21", 3600, "manual")
        await guesser.close()
    await asyncio.sleep(0.6)
    with capture_logs() as logs:
        async with sim_pbx(tmp_path, DIALPLAN, {}) as server:
            now = server.now()
            assert server.bans.banned(GUESSER, now) and server.bans.banned("203.0.113.21", now)
            assert not server.bans.banned("203.0.113.20", now)
            (ban,) = [b for b in server.bans.list(now) if b.ip == GUESSER]
            assert ban.reason == "auth-failures" and 590_000 < ban.remaining_ms(now) <= 600_000
            guesser = SimPhone(server.net, server_address(server), "1003", "guess-9", host=GUESSER)  # type: ignore[attr-defined]
            assert await guess(guesser, timeout=0.5) is None  # still dropped unanswered
            good = await registered(server, "1001", "pw-1001")
            assert server.unban(GUESSER)
            await good.close()
            await guesser.close()
        async with sim_pbx(tmp_path, DIALPLAN, {}) as server:  # a lifted ban stays lifted
            assert {b.ip for b in server.bans.list(server.now())} == {"203.0.113.21"}
    assert any(e["event"] == "security.bans.restored" and e["count"] == 2 for e in logs)
    assert {e["ip"] for e in logs if e["event"] == "security.ban"} == {GUESSER, "203.0.113.21"}


async def test_saved_bans_that_are_garbage_are_ignored_not_fatal(tmp_path: Path) -> None:
    async def garbage(store: object) -> None:
        await store.set_meta("security.bans", '[{"ip": "192.0.2.1"}, "x"]')  # type: ignore[attr-defined]

    with capture_logs() as logs:
        async with sim_pbx(tmp_path, DIALPLAN, USERS, prepare=garbage) as server:
            assert server.bans.list(server.now()) == ()
            assert (await registered(server, "1001", "pw-1001")) is not None
    assert any(e["event"] == "security.bans.restore_failed" for e in logs)
