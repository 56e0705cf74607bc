"""The ACD on the real server (in-memory SIP network, simulated phones): queue calls offered to agents,
ring timeouts and auto-pause, unregistered agents skipped, abandons, callbacks, feature codes, priorities,
and the queue log rows each of those writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.acd.stats import AgentState
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.queue_api import AgentAction, AgentCommandError
from tests.pbx.simnet import HOST, SimCall, SimPhone, registered, sim_pbx, until

USERS = {e: f"pw-{e}-sim" for e in ("1001", "1002", "1003", "1004", "2001")}

pytestmark = pytest.mark.timeout(40)

CONFIG = """
[admin]
enabled = false
[rtp]
port_min = 33000
port_max = 33400
[[queue]]
name = "support"
number = "500"
members = ["1002", "1003"]
agents = ["1004"]
strategy = "linear"
ring_timeout = 1
wrap_up = 1
announce_position = false
callback_key = "5"
[[queue]]
name = "vip"
number = "501"
agents = ["1004"]
announce_position = false
wrap_up = 0
callback_key = "5"
callback_order = "customer-first"
[[agent]]
extension = "1003"
auto_pause_after = 1
[[dialplan.rule]]
match = "510"
destination = "queue:support"
priority = 5
[[dialplan.rule]]
match = "520"
destination = "ivr:test:flow"
"""


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        yield server


async def phone(pbx: SipServer, user: str, **kw: bool) -> SimPhone:
    return await registered(pbx, user, USERS[user], **kw)


async def events(pbx: SipServer) -> list[tuple[str, str | None, str | None]]:
    return [(r.event, r.agent, r.queue) for r in await pbx.store.list_queue_log()]


async def kinds(pbx: SipServer) -> list[str]:
    return [e for e, _, _ in await events(pbx) if e not in ("login", "device-available", "device-unavailable")]


async def logged(pbx: SipServer, kind: str) -> list[str]:
    """The queue log's kinds once ``kind`` is among them (rows are written by the ACD's pump)."""
    for _ in range(200):
        got = await kinds(pbx)
        if kind in got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} row in {await kinds(pbx)}")


async def incoming(p: SimPhone, timeout: float = 5.0) -> SimCall:
    return await asyncio.wait_for(p.incoming.get(), timeout)


async def test_a_caller_is_offered_to_an_agent_bridged_and_logged(pbx: SipServer) -> None:
    caller = await phone(pbx, "1001")
    agent = await phone(pbx, "1002")
    call = await caller.call("500")  # the queue answers (music) at once
    offer = await incoming(agent)
    assert offer.invite.headers.get("x-ccpbx-queue") == "support"
    assert "1001" in str(offer.invite.from_)  # the agent's phone shows the customer
    agent.answer(offer)
    await until(lambda: pbx.queues.engine.agent_state("1002") is AgentState.ON_CONTACT)
    await caller.hangup(call)
    await asyncio.wait_for(offer.ended.wait(), 5)
    await until(lambda: pbx.queues.engine.agent_state("1002") is AgentState.WRAP_UP)
    await logged(pbx, "complete-caller")
    rows = await pbx.store.list_queue_log()
    got = [(r.event, r.agent) for r in rows if r.event not in ("login", "device-available", "device-unavailable")]
    assert got == [("enter", None), ("offer", "1002"), ("connect", "1002"), ("complete-caller", "1002")]
    connect = next(r for r in rows if r.event == "connect")
    assert connect.wait_ms is not None and connect.wait_ms >= 0
    # wrap-up (1 s) ends by itself
    await until(lambda: pbx.queues.engine.agent_state("1002") is AgentState.AVAILABLE, timeout=4)


async def test_an_unregistered_agent_is_never_rung_and_a_missed_offer_auto_pauses(pbx: SipServer) -> None:
    caller = await phone(pbx, "1001")
    lazy = await phone(pbx, "1003")  # registered, never answers; auto_pause_after = 1
    # 1002 (first in linear order) is not registered: skipped, with the reason logged
    assert ("device-unavailable", "1002", None) in await events(pbx)
    call = await caller.call("500")
    offer = await incoming(lazy)
    lazy.ring(offer)
    await asyncio.wait_for(offer.ended.wait(), 5)  # ring_timeout = 1 s, then CANCEL
    await until(lambda: pbx.queues.engine.agent_state("1003") is AgentState.PAUSED)
    agent = await phone(pbx, "1002")  # 1002 registers now: the caller goes to it
    offer2 = await incoming(agent)
    agent.answer(offer2)
    await until(lambda: pbx.queues.engine.agent_state("1002") is AgentState.ON_CONTACT)
    await agent.in_dialog(offer2, "BYE")
    await asyncio.wait_for(call.ended.wait(), 5)
    assert await logged(pbx, "complete-agent") == [
        "enter", "offer", "ring-no-answer", "pause", "offer", "connect", "complete-agent"]


async def test_a_caller_who_hangs_up_while_waiting_is_an_abandon_with_position_and_wait(pbx: SipServer) -> None:
    first, second = await phone(pbx, "1001"), await phone(pbx, "2001")
    c1 = await first.call("500")  # nobody registered: both wait
    c2 = await second.call("500")
    await asyncio.sleep(0.3)
    await second.hangup(c2)
    await until(lambda: len(pbx.queues.contacts) == 1)
    rows = [r for r in await pbx.store.list_queue_log() if r.event in ("enter", "abandon")]
    assert [(r.event, r.position) for r in rows] == [("enter", 1), ("enter", 2), ("abandon", 2)]
    assert rows[-1].wait_ms is not None and rows[-1].wait_ms >= 250
    await first.hangup(c1)


async def test_a_callback_keeps_the_place_and_rings_the_agent_then_the_customer(pbx: SipServer) -> None:
    customer = await phone(pbx, "1001", auto_answer=True)
    call = await customer.call("500")
    info = await customer.in_dialog(call, "INFO", body=b"Signal=5\r\nDuration=160\r\n",
                                    content_type="application/dtmf-relay")
    assert info.status == 200
    await asyncio.wait_for(call.ended.wait(), 8)  # thanked and hung up; the place is kept
    assert len(pbx.queues.engine.waiting_contacts("support")) == 1
    agent = await phone(pbx, "1002")  # the agent's phone comes up: the callback is offered to it
    offer = await incoming(agent)
    assert "1001" in str(offer.invite.from_)
    agent.answer(offer)
    back = await incoming(customer)  # then the customer is dialled (auto-answers)
    await asyncio.wait_for(back.answered.wait(), 5)
    await logged(pbx, "connect")  # bridged (the log row is written before the bridge is made)
    await asyncio.sleep(0.1)
    await agent.in_dialog(offer, "BYE")
    await asyncio.wait_for(back.ended.wait(), 5)
    got = await logged(pbx, "complete-agent")
    assert got[:2] == ["enter", "callback-requested"]
    assert "callback-attempted" in got and got[-1] == "complete-agent"


async def test_feature_codes_and_commands_log_in_pause_and_out(pbx: SipServer) -> None:
    dyn = await phone(pbx, "1004")
    assert pbx.queues.engine.agent_state("1004") is AgentState.LOGGED_OUT
    call = await dyn.call("*61501")  # into queue 501 (vip) only
    await asyncio.wait_for(call.ended.wait(), 8)
    assert pbx.queues.engine.agent_state("1004") is AgentState.AVAILABLE
    assert set(pbx.queues.profiles["1004"].queues) == {"vip"}
    call = await dyn.call("*632")
    await asyncio.wait_for(call.ended.wait(), 8)
    assert pbx.queues.engine.agent_state("1004") is AgentState.PAUSED
    await pbx.queues.agent_command("1004", AgentAction.UNPAUSE)
    assert pbx.queues.engine.agent_state("1004") is AgentState.AVAILABLE
    await pbx.queues.agent_command("1004", AgentAction.LOGOUT)
    assert pbx.queues.engine.agent_state("1004") is AgentState.LOGGED_OUT
    with pytest.raises(AgentCommandError):
        await pbx.queues.agent_command("1001", AgentAction.LOGIN)
    with pytest.raises(AgentCommandError):
        await pbx.queues.agent_command("1002", AgentAction.LOGIN, queue="vip")
    reasons = [(r.event, r.reason) for r in await pbx.store.list_queue_log() if r.agent == "1004"]
    assert ("pause", "code-2") in reasons and ("logout", "logout") in reasons
    snap = pbx.queues.snapshot()
    assert {q["name"] for q in snap["queues"]} == {"support", "vip"}


async def test_a_rules_priority_is_served_before_earlier_callers(pbx: SipServer) -> None:
    early, late = await phone(pbx, "1001"), await phone(pbx, "2001")
    c1 = await early.call("500")
    await asyncio.sleep(0.1)
    c2 = await late.call("510")  # the same queue with priority 5
    await until(lambda: len(pbx.queues.engine.waiting_contacts("support")) == 2)
    agent = await phone(pbx, "1002")
    offer = await incoming(agent)
    assert "2001" in str(offer.invite.from_)
    agent.refuse(offer, 486)
    await early.hangup(c1)
    await late.hangup(c2)


async def test_an_agents_transfer_into_another_queue_keeps_both_logs(pbx: SipServer) -> None:
    caller = await phone(pbx, "1001")
    agent = await phone(pbx, "1002")
    other = await phone(pbx, "1004")
    await pbx.queues.agent_command("1004", AgentAction.LOGIN, queue="vip")
    call = await caller.call("500")
    offer = await incoming(agent)
    agent.answer(offer)
    await logged(pbx, "connect")
    await asyncio.sleep(0.1)
    refer = await agent.in_dialog(offer, "REFER", headers=(("Refer-To", f"<sip:501@{HOST}>"),
                                                           ("Referred-By", agent.contact)))
    assert refer.status == 202
    offer2 = await incoming(other)  # the caller, now in queue vip, is offered to 1004
    other.answer(offer2)
    await until(lambda: pbx.queues.engine.agent_state("1002") in (AgentState.WRAP_UP, AgentState.AVAILABLE))
    await until(lambda: pbx.queues.engine.agent_state("1004") is AgentState.ON_CONTACT)
    await caller.hangup(call)
    got = [(r.event, r.queue, r.agent) for r in await pbx.store.list_queue_log()
           if r.event in ("enter", "connect", "transfer", "complete-caller")]
    for _ in range(100):
        if ("complete-caller", "vip", "1004") in got:
            break
        await asyncio.sleep(0.05)
        got = [(r.event, r.queue, r.agent) for r in await pbx.store.list_queue_log()
               if r.event in ("enter", "connect", "transfer", "complete-caller")]
    assert got == [("enter", "support", None), ("connect", "support", "1002"), ("transfer", "support", "1002"),
                   ("enter", "vip", None), ("connect", "vip", "1004"), ("complete-caller", "vip", "1004")]
    snap = {q["name"]: q for q in pbx.queues.snapshot()["queues"]}
    assert snap["support"]["answered"] == 1 and snap["vip"]["answered"] == 1


async def test_an_ivr_transfer_brings_priority_skills_and_data_into_the_queue(pbx: SipServer) -> None:
    from ccpbx.ivr.flow import FlowCall
    from ccpbx.pbx.calls import Call
    from ccpbx.pbx.config import DestinationKind
    from ccpbx.pbx.destinations import Outcome
    from ccpbx.pbx.flows import PbxFlowCall

    async def flow(call: Call, target: str, number: str) -> Outcome:  # what IvrFlows does with transfer()
        flow_call: FlowCall = PbxFlowCall(call, number, pbx.apps.flows)
        try:
            await flow_call.transfer("queue:support", priority=7, skills={"french": 3}, data={"account": "42"})
        except BaseException:
            pass
        return await pbx.apps.flows._outcome(call, number, _transferred(), flow_call)  # type: ignore[arg-type]

    pbx.control.register_destination(DestinationKind.IVR, flow, replace=True)
    caller = await phone(pbx, "1001")
    await phone(pbx, "1002")  # registered and free, but without the skill: never offered
    call = await caller.call("520")
    await until(lambda: bool(pbx.queues.engine.waiting_contacts("support")))
    contact = pbx.queues.engine.waiting_contacts("support")[0]
    assert pbx.queues.engine.effective_priority(contact, pbx.queues._now()) == 7
    await asyncio.sleep(0.3)
    assert "offer" not in await kinds(pbx)
    assert pbx.queues.contacts[contact].data["account"] == "42"
    await caller.hangup(call)


def _transferred() -> asyncio.Future[None]:
    from ccpbx.ivr.errors import CallTransferred

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_exception(CallTransferred("queue:support"))
    return done


async def test_a_customer_first_callback_dials_the_customer_then_offers_it(pbx: SipServer) -> None:
    customer = await phone(pbx, "1001", auto_answer=True)
    call = await customer.call("501")
    info = await customer.in_dialog(call, "INFO", body=b"Signal=5\r\nDuration=160\r\n",
                                    content_type="application/dtmf-relay")
    assert info.status == 200
    await asyncio.wait_for(call.ended.wait(), 8)
    agent = await phone(pbx, "1004")
    await pbx.queues.agent_command("1004", AgentAction.LOGIN, queue="vip")
    back = await incoming(customer)  # customer-first: the customer is dialled (and answers) before the agent rings
    await asyncio.wait_for(back.answered.wait(), 5)
    offer = await incoming(agent)
    assert "1001" in str(offer.invite.from_)
    agent.answer(offer)
    await logged(pbx, "connect")
    await asyncio.sleep(0.1)
    await customer.in_dialog(back, "BYE")
    await asyncio.wait_for(offer.ended.wait(), 5)
    got = await logged(pbx, "complete-caller")
    assert got[:2] == ["enter", "callback-requested"]
    assert got.index("callback-attempted") < got.index("offer") < got.index("connect")


async def test_dynamic_logins_survive_a_restart(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as first:
        await first.queues.agent_command("1004", AgentAction.LOGIN, queue="vip")
        assert first.queues.engine.agent_state("1004") is not AgentState.LOGGED_OUT
    async with sim_pbx(tmp_path, CONFIG, {}) as second:  # the same data directory: a restart
        await until(lambda: second.queues.engine.agent_state("1004") is not AgentState.LOGGED_OUT)
        assert set(second.queues.profiles["1004"].queues) == {"vip"}
        await second.queues.agent_command("1004", AgentAction.LOGOUT)
    async with sim_pbx(tmp_path, CONFIG, {}) as third:
        await asyncio.sleep(0.1)
        assert third.queues.engine.agent_state("1004") is AgentState.LOGGED_OUT
