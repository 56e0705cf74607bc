"""The flow API's shared half (collect, menu, transfer) on the scripted call users test their own flows with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.ivr.errors import CallHangup, CallTransferred, FlowError
from ccpbx.ivr.flow import Call, QueueRequest
from ccpbx.ivr.testing import ScriptedCall, run_flow


async def test_collect_reads_digits_until_the_terminator() -> None:
    call = ScriptedCall(presses=["1234#9"])
    assert await call.collect(10) == "1234"
    assert await call.collect(1) == "9"


async def test_collect_stops_at_max_digits_and_on_silence() -> None:
    call = ScriptedCall(presses=["12345", None, "7", None])
    assert await call.collect(3) == "123"
    assert await call.collect(5) == "45"  # the silence after 5 ends it (inter-digit timeout)
    assert await call.collect(5) == "7"
    assert await call.collect(5) == ""  # nothing at all: ""


async def test_a_key_pressed_during_the_prompt_is_the_first_digit() -> None:
    call = ScriptedCall(presses=["42#"])
    assert await call.collect(4, prompt="enter-account") == "42"
    assert call.played == ["enter-account"]


async def test_collect_refuses_nonsense() -> None:
    with pytest.raises(FlowError):
        await ScriptedCall().collect(0)


async def test_menu_returns_a_valid_choice_at_once() -> None:
    call = ScriptedCall(presses=["2"])
    assert await call.menu("main", {"1", "2"}) == "2"
    assert call.played == ["main"]


async def test_menu_reprompts_after_an_invalid_key_and_after_silence() -> None:
    call = ScriptedCall(presses=["5", None, "1"])
    assert await call.menu("main", ["1", "2"]) == "1"
    assert call.played == ["main", "invalid", "main", "no-input", "main"]


async def test_menu_gives_up_after_its_retries() -> None:
    call = ScriptedCall(presses=[None, "9", None])
    assert await call.menu("main", ["1"], retries=3) is None
    assert call.played == ["main", "no-input", "main", "invalid", "main", "no-input"]


async def test_menu_with_choices_of_different_lengths() -> None:
    assert await ScriptedCall(presses=["1", None]).menu("m", ["1", "10"]) == "1"
    assert await ScriptedCall(presses=["10"]).menu("m", ["1", "10"]) == "10"
    assert await ScriptedCall(presses=["2"]).menu("m", ["1", "10", "2"]) == "2"  # no longer choice: at once
    assert await ScriptedCall(presses=["1#"]).menu("m", ["1", "10"]) == "1"  # "#" ends the entry


async def test_menu_refuses_choices_that_are_not_keys() -> None:
    with pytest.raises(FlowError):
        await ScriptedCall().menu("m", ["1", "x"])
    with pytest.raises(FlowError):
        await ScriptedCall().menu("m", [])


async def test_transfer_does_not_return_and_carries_priority_skills_and_data() -> None:
    reached: list[str] = []

    async def flow(call: Call) -> None:
        try:
            await call.transfer("queue:support", priority=5, skills=["french"], data={"account": "42"})
            reached.append("after transfer")
        except Exception:
            reached.append("swallowed")

    result = await run_flow(flow)
    assert reached == []
    assert result.transferred_to == "queue:support" and not result.hung_up
    assert result.queue_request == QueueRequest(priority=5, skills={"french": 1})
    assert result.data == {"account": "42"}


async def test_transfer_checks_skill_levels_and_destinations() -> None:
    with pytest.raises(FlowError):
        await ScriptedCall().transfer("queue:x", skills={"french": 11})
    call = ScriptedCall(destinations=lambda d: None if d.startswith("queue:") else f"nothing serves {d}")
    with pytest.raises(FlowError, match="nothing serves"):
        await call.transfer("queue2:x")
    with pytest.raises(CallTransferred):
        await call.transfer("queue:x")


async def test_a_hang_up_reaches_the_flow_at_its_next_await_and_finally_runs() -> None:
    cleaned: list[str] = []

    async def flow(call: Call) -> None:
        try:
            await call.play("welcome")
            await call.play("menu")
            cleaned.append("not reached")
        finally:
            cleaned.append("finally")

    result = await run_flow(flow, hangup_after_prompts=1)
    assert result.caller_hung_up and cleaned == ["finally"]
    with pytest.raises(CallHangup):
        await result.call.play("again")


async def test_schedules_and_identity_are_scripted() -> None:
    async def flow(call: Call) -> None:
        await call.answer()
        if call.in_schedule("office"):
            await call.play("welcome")
        else:
            await call.play("closed")
        await call.say_digits(call.caller[-2:])

    result = await run_flow(flow, caller="5551234", schedules={"office": False})
    assert result.played == ["closed", "3", "4"]
    assert result.call.answered and result.hung_up
    with pytest.raises(FlowError):
        ScriptedCall().in_schedule("nosuch")


def test_the_scripted_call_is_a_call() -> None:
    assert isinstance(ScriptedCall(), Call)


@given(st.lists(st.sampled_from(list("0123456789*#")) | st.none(), max_size=12), st.integers(1, 8))
async def test_collect_returns_the_pressed_prefix(presses: list[str | None], max_digits: int) -> None:
    call = ScriptedCall(presses=presses)
    got = await call.collect(max_digits)
    expected = ""
    for p in presses:
        if p is None or p == "#" or len(expected) == max_digits:
            break
        expected += p
    assert got == expected and len(got) <= max_digits and "#" not in got


def test_numbers_are_read_in_words_from_shipped_prompts() -> None:
    from ccpbx.ivr.flow import number_prompts
    from ccpbx.ivr.prompt_library import PromptLibrary

    assert number_prompts(0) == ["0"]
    assert number_prompts(17) == ["17"]
    assert number_prompts(40) == ["40"]
    assert number_prompts(45) == ["40", "5"]
    assert number_prompts(2045) == ["2", "thousand", "40", "5"]
    assert number_prompts(1_300_019) == ["1", "million", "3", "hundred", "thousand", "19"]
    assert number_prompts(-7) == ["minus", "7"]
    library = PromptLibrary()
    for n in (0, 13, 99, 100, 1234, 987_654_321, -5):
        for name in number_prompts(n):
            library.resolve(name)  # every word is a shipped prompt
    with pytest.raises(FlowError):
        number_prompts(1.5)  # type: ignore[arg-type]
