"""The shipped example flows, tested the way users test theirs: with ivr.testing's scripted call."""

from __future__ import annotations

from ccpbx.ivr.examples import after_hours, bank
from ccpbx.ivr.flow import QueueRequest
from ccpbx.ivr.testing import run_flow


async def test_a_known_account_hears_its_balance_then_leaves() -> None:
    result = await run_flow(bank.main, caller="5550100", presses=["12345678#", "1"], hangup_when_done=True)
    assert result.played[:4] == ["bank-welcome", "bank-enter-account", "bank-menu", "bank-balance-is"]
    assert result.played[4:8] == ["1", "thousand", "8", "hundred"]  # 1843
    assert result.data == {"account": "12345678", "holder": "Ada Lovelace"}
    assert result.played[-1] == "bank-menu"  # offered again, then the caller hung up
    assert result.transferred_to is None and result.caller_hung_up


async def test_three_silent_menus_reach_an_adviser() -> None:
    result = await run_flow(bank.main, caller="5550100", presses=["12345678", None, None, None])
    assert result.played.count("no-input") == 3 and result.transferred_to == bank.ADVISERS


async def test_an_unknown_account_is_asked_again_and_option_2_reaches_an_adviser() -> None:
    result = await run_flow(bank.main, caller="5550100", presses=["99999999#", "12345678#", "2"])
    assert result.played.count("bank-unknown-account") == 1
    assert result.transferred_to == bank.ADVISERS
    assert result.queue_request == QueueRequest(priority=bank.NORMAL_PRIORITY)
    assert result.data["account"] == "12345678"


async def test_a_vip_caller_skips_the_menu_with_a_higher_priority() -> None:
    result = await run_flow(bank.main, caller="1002")
    assert result.played == ["bank-vip-welcome"]
    assert result.transferred_to == bank.ADVISERS
    assert result.queue_request is not None and result.queue_request.priority == bank.VIP_PRIORITY
    assert result.data == {"vip": True}


async def test_a_silent_caller_without_an_account_reaches_a_person() -> None:
    result = await run_flow(bank.main, caller="5550100")  # presses nothing at all
    assert result.played.count("bank-enter-account") == 3
    assert result.transferred_to == bank.ADVISERS


async def test_after_hours_takes_a_message_and_office_hours_reach_the_team() -> None:
    closed = await run_flow(after_hours.main, schedules={"office": False})
    assert closed.played == ["closed"] and closed.transferred_to == after_hours.MAILBOX
    assert closed.data == {"after_hours": True}
    open_ = await run_flow(after_hours.main, schedules={"office": True})
    assert open_.played == [] and open_.transferred_to == after_hours.TEAM
