"""Mixer: every listener hears exactly the parties it should, with int16 saturation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.media.mixer import EMPTY_PLAN, Mixer, Role, compile_plan, mix

W = 160
# Distinct powers of two: any sum of a subset is unique, so the output names exactly who was heard.
LEVELS = [1 << i for i in range(12)]


def _signals(n: int) -> np.ndarray:
    pcm = np.zeros((n, W), dtype=np.int16)
    for i in range(n):
        pcm[i] = LEVELS[i]
    return pcm


def _heard(out_row: np.ndarray) -> set[int]:
    value = int(out_row[0])
    assert np.all(out_row == value), "a constant mix of constants must stay constant"
    return {i for i, lv in enumerate(LEVELS) if value & lv}


def _run(groups, n=8, **players):
    plan = compile_plan(groups)
    out = np.full((n, W), -7, dtype=np.int16)  # sentinel: rows the mixer must not touch
    mix(plan, _signals(n), out, **players)
    return out


def test_two_party_bridge_each_hears_the_other() -> None:
    out = _run([{0: Role.SPEAKER, 1: Role.SPEAKER}])
    assert _heard(out[0]) == {1}
    assert _heard(out[1]) == {0}
    assert np.all(out[2:] == -7)


def test_many_bridges_are_independent() -> None:
    groups = [{2 * k: Role.SPEAKER, 2 * k + 1: Role.SPEAKER} for k in range(4)]
    out = _run(groups)
    for k in range(4):
        assert _heard(out[2 * k]) == {2 * k + 1}
        assert _heard(out[2 * k + 1]) == {2 * k}


@pytest.mark.parametrize("n", [3, 4, 7])
def test_conference_mix_minus(n: int) -> None:
    out = _run([{i: Role.SPEAKER for i in range(n)}], n=8)
    for i in range(n):
        assert _heard(out[i]) == set(range(n)) - {i}


def test_listen_only_monitor_hears_all_and_is_not_heard() -> None:
    # Bridge 0<->1 with a silent monitor 2; conference 3,4,5 with monitor 6.
    out = _run(
        [
            {0: Role.SPEAKER, 1: Role.SPEAKER, 2: Role.LISTEN_ONLY},
            {3: Role.SPEAKER, 4: Role.SPEAKER, 5: Role.SPEAKER, 6: Role.LISTEN_ONLY},
        ]
    )
    assert _heard(out[0]) == {1} and _heard(out[1]) == {0}
    assert _heard(out[2]) == {0, 1}
    assert _heard(out[3]) == {4, 5} and _heard(out[4]) == {3, 5} and _heard(out[5]) == {3, 4}
    assert _heard(out[6]) == {3, 4, 5}


def test_whisper_coach_heard_by_agent_only() -> None:
    # 0 = customer, 1 = agent, 2 = coach whispering to the agent.
    out = _run([{0: Role.SPEAKER, 1: Role.SPEAKER, 2: Role.WHISPER_TO(1)}])
    assert _heard(out[0]) == {1}
    assert _heard(out[1]) == {0, 2}
    assert _heard(out[2]) == {0, 1}


def test_whisper_in_a_summed_conference() -> None:
    out = _run([{0: Role.SPEAKER, 1: Role.SPEAKER, 3: Role.SPEAKER, 2: Role.WHISPER_TO(1)}])
    assert _heard(out[0]) == {1, 3}
    assert _heard(out[1]) == {0, 2, 3}
    assert _heard(out[3]) == {0, 1}
    assert _heard(out[2]) == {0, 1, 3}


def test_barge_supervisor_joins_as_a_party() -> None:
    out = _run([{0: Role.SPEAKER, 1: Role.SPEAKER, 2: Role.SPEAKER}])
    assert _heard(out[0]) == {1, 2} and _heard(out[1]) == {0, 2} and _heard(out[2]) == {0, 1}


def test_clipping_saturates_both_ways() -> None:
    plan = compile_plan([{i: Role.SPEAKER for i in range(4)}])
    pcm = np.zeros((4, W), dtype=np.int16)
    pcm[:3, :80] = 30000
    pcm[:3, 80:] = -30000
    out = np.zeros_like(pcm)
    mix(plan, pcm, out)
    assert np.all(out[3, :80] == 32767) and np.all(out[3, 80:] == -32768)
    # Listener 0 hears 1 and 2: 60000 -> 32767 ; listener of two -32768 rows: exactly -32768 (no wrap).
    assert np.all(out[0, :80] == 32767)
    pcm2 = np.full((4, W), -32768, dtype=np.int16)
    out2 = np.zeros_like(pcm2)
    mix(plan, pcm2, out2)
    assert np.all(out2 == -32768)


def test_two_party_bridge_is_exact_copy_at_extremes() -> None:
    plan = compile_plan([{0: Role.SPEAKER, 1: Role.SPEAKER}])
    pcm = np.zeros((2, W), dtype=np.int16)
    pcm[0] = np.linspace(-32768, 32767, W).astype(np.int16)
    out = np.zeros_like(pcm)
    mix(plan, pcm, out)
    np.testing.assert_array_equal(out[1], pcm[0])


def test_players_replace_or_mix() -> None:
    plan = compile_plan([{0: Role.SPEAKER, 1: Role.SPEAKER}])
    pcm = _signals(4)
    out = np.zeros((4, W), dtype=np.int16)
    frames = np.full((3, W), 1 << 10, dtype=np.int16)
    rows = np.array([0, 1, 3], dtype=np.intp)
    mix(plan, pcm, out, rows, frames, np.array([False, True, True]))
    assert _heard(out[0]) == {10}  # replaced: music on hold instead of the other party
    assert _heard(out[1]) == {0, 10}  # prompt mixed over the bridge audio
    assert _heard(out[3]) == {10}  # a lone channel with a prompt
    assert np.all(out[2] == 0)


def test_player_mix_clips() -> None:
    plan = compile_plan([{0: Role.SPEAKER, 1: Role.SPEAKER}])
    pcm = np.full((2, W), 30000, dtype=np.int16)
    out = np.zeros_like(pcm)
    mix(plan, pcm, out, np.array([0]), np.full((1, W), 30000, dtype=np.int16), np.array([True]))
    assert np.all(out[0] == 32767)


def test_empty_plan_touches_nothing() -> None:
    out = np.full((3, W), 5, dtype=np.int16)
    mix(EMPTY_PLAN, _signals(3), out)
    assert np.all(out == 5)


def test_mixer_rebuilds_only_on_change() -> None:
    m = Mixer()
    m.set_group(1, {0: Role.SPEAKER, 1: Role.SPEAKER})
    p1 = m.plan
    assert m.plan is p1
    m.add_member(1, 2, Role.WHISPER_TO(0))
    p2 = m.plan
    assert p2 is not p1 and p2.hears[0] == frozenset({1, 2})
    m.remove_channel(0)
    assert m.group(1)[2] == Role.LISTEN_ONLY
    m.remove_group(1)
    assert m.plan.empty



def test_relayed_groups_stay_out_of_the_plan_and_do_not_recompile_it() -> None:
    m = Mixer()
    m.set_group(1, {0: Role.SPEAKER, 1: Role.SPEAKER})
    m.set_group(2, {2: Role.SPEAKER, 3: Role.SPEAKER})
    m.set_relayed(1, True)
    plan = m.plan
    assert sorted(plan.listener_rows.tolist()) == [2, 3]
    m.remove_member(1, 0)  # a change inside a relayed group: the plan stays as it is
    m.set_relayed(1, True)
    assert m.plan is plan
    m.set_relayed(1, False)  # mixed again: back in the plan
    assert sorted(m.plan.listener_rows.tolist()) == [1, 2, 3]
    m.set_group(3, {4: Role.SPEAKER, 5: Role.SPEAKER})  # a new group is mixed until said otherwise
    assert 4 in m.plan.listener_rows.tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["s", "l", "w"]), min_size=1, max_size=5),
        min_size=1,
        max_size=3,
    )
)
def test_random_topologies_match_reference(spec: list[list[str]]) -> None:
    """Compare against a direct definition: a listener hears every other speaker of each group + whisperers."""
    groups = []
    row = 0
    for g in spec:
        members: dict[int, Role] = {}
        first = row
        for kind in g:
            if kind == "s":
                members[row] = Role.SPEAKER
            elif kind == "l":
                members[row] = Role.LISTEN_ONLY
            else:
                members[row] = Role.WHISPER_TO(first) if row != first else Role.SPEAKER
            row += 1
        groups.append(members)
    n = row
    rng = np.random.default_rng(n)
    pcm = rng.integers(-20000, 20000, size=(n, W)).astype(np.int16)
    expected = np.zeros((n, W), dtype=np.int64)
    for members in groups:
        for lis in members:
            for src, role in members.items():
                if role.kind.value == "speaker" and src != lis:
                    expected[lis] += pcm[src]
        for src, role in members.items():
            if role.target is not None:
                expected[role.target] += pcm[src]
    out = np.zeros((n, W), dtype=np.int16)
    mix(compile_plan(groups), pcm, out)
    np.testing.assert_array_equal(out, np.clip(expected, -32768, 32767))


def test_remove_member_demotes_whispers_to_it_and_keeps_the_others() -> None:
    m = Mixer()
    m.set_group(1, {0: Role.SPEAKER, 1: Role.SPEAKER, 2: Role.WHISPER_TO(0), 3: Role.WHISPER_TO(1)})
    m.remove_member(1, 0)
    assert dict(m.group(1)) == {1: Role.SPEAKER, 2: Role.LISTEN_ONLY, 3: Role.WHISPER_TO(1)}
    m.remove_member(1, 9)  # not a member: nothing changes
    assert len(m.group(1)) == 3
