"""The dial plan: patterns, rule order and rewriting, groups, feature codes, hunting, and its configuration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.config import Config, ConfigError, DialPlanConfig, GroupConfig, RuleConfig, load_config, parse_config
from ccpbx.pbx.dialplan import (
    Destination,
    DestinationKind,
    DialPattern,
    DialPlan,
    FeatureCode,
    FeatureRequest,
    GroupStrategy,
    HuntPlan,
    InvalidDialPlanError,
    Presentation,
    RingStep,
    Route,
    ToneRegion,
    UnknownGroupError,
    UnknownNumberTreatment,
)

SHIPPED = Path(__file__).resolve().parents[2] / "pbx" / "default_config.toml"
EXTENSIONS = frozenset({"1001", "1002", "1003", "alice"})


def plan(toml: str) -> DialPlan:
    return DialPlan.from_config(parse_config(toml, "ccpbx.toml"))


def rules(*tables: str, head: str = "") -> str:
    """A config with no demo group and the given [[dialplan.rule]] bodies."""
    return "group = []\n[dialplan]\n" + head + "".join(f"[[dialplan.rule]]\n{t}\n" for t in tables)


def routed(dp: DialPlan, dialled: str, caller: str = "1003") -> Route:
    result = dp.route(dialled, caller, EXTENSIONS)
    assert isinstance(result, Route), result
    return result


# -- patterns --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "dialled", "expected"),
    [
        ("_X", "0", True), ("_X", "9", True), ("_X", "a", False), ("_X", "12", False), ("_X", "", False),
        ("_Z", "1", True), ("_Z", "0", False), ("_N", "2", True), ("_N", "1", False), ("_N", "9", True),
        ("_NXX", "200", True), ("_NXX", "199", False),
        ("_[1-5a]", "3", True), ("_[1-5a]", "a", True), ("_[1-5a]", "6", False), ("_[1-5a]", "b", False),
        ("_[15]", "1", True), ("_[15]", "3", False), ("_[*#]X", "#5", True), ("_[-1]", "-", True),
        ("_9.", "9", False), ("_9.", "91", True), ("_9.", "9abc+#", True),
        ("_9!", "9", True), ("_9!", "9123", True), ("_9!", "8", False),
        ("_0X.", "00", False), ("_0X.", "001", True),
        ("_x", "x", True), ("_x", "5", False),  # lower case letters are literals
        ("_+X.", "+4930", True), ("_+X.", "4930", False), ("_*98", "*98", True), ("_a.b", "axyb", True),
        ("600", "600", True), ("600", "6000", False), ("operator", "operator", True), ("XX", "12", False),
        ("XX", "XX", True), ("Alice", "alice", False),  # exact strings: case-sensitive, no wildcards
    ],
)
def test_pattern_semantics(pattern: str, dialled: str, expected: bool) -> None:
    assert DialPattern(pattern).matches(dialled) is expected


@pytest.mark.parametrize("pattern", ["", "_", "_[12", "_1]", "_[]", "_[9-1]"])
def test_invalid_patterns_raise(pattern: str) -> None:
    with pytest.raises(ValueError):
        DialPattern(pattern)


def _reference_regex(pattern: str) -> str:
    """An independent translation: every class expanded to an alternation of its characters."""
    if not pattern.startswith("_"):
        return re.escape(pattern)
    out = []
    tokens = re.findall(r"\[[^\]]+\]|.", pattern[1:], flags=re.DOTALL)
    for token in tokens:
        if token.startswith("[") and len(token) > 1:
            inner, chars = token[1:-1], set()
            for m in re.finditer(r"(.)-(.)|(.)", inner, flags=re.DOTALL):
                if m.group(3) is not None:
                    chars.add(m.group(3))
                else:
                    chars.update(chr(c) for c in range(ord(m.group(1)), ord(m.group(2)) + 1))
            out.append("(?:" + "|".join(re.escape(c) for c in sorted(chars)) + ")")
        else:
            wild = {"X": "(?:0|1|2|3|4|5|6|7|8|9)", "Z": "(?:1|2|3|4|5|6|7|8|9)", "N": "(?:2|3|4|5|6|7|8|9)",
                    ".": "(?:.)+", "!": "(?:.)*"}
            out.append(wild.get(token, re.escape(token)))
    return "".join(out)


_TOKENS = st.sampled_from(["X", "Z", "N", ".", "!", "0", "1", "5", "9", "*", "#", "+", "a", "x", "[1-5a]",
                           "[*#]", "[0]", "[2-4]"])
_PATTERNS = st.one_of(
    st.lists(_TOKENS, min_size=1, max_size=6).map(lambda ts: "_" + "".join(ts)),
    st.text(alphabet="019*#+aX_", min_size=1, max_size=5).filter(lambda p: not p.startswith("_")),
)
_DIALLED = st.text(alphabet="0123456789*#+axX", max_size=8)


@settings(max_examples=200, deadline=None)
@given(_PATTERNS, _DIALLED, st.data())
def test_pattern_matcher_equals_a_reference_translation(pattern: str, dialled: str, data: st.DataObject) -> None:
    reference = re.compile(_reference_regex(pattern), flags=re.DOTALL)
    compiled = DialPattern(pattern)
    assert compiled.matches(dialled) is (reference.fullmatch(dialled) is not None)
    # Random strings rarely match long patterns: also try one drawn from the reference language.
    positive = data.draw(st.from_regex(reference, fullmatch=True).filter(lambda s: len(s) < 40))
    assert compiled.matches(positive)
    # Near misses probe the edges of each class: every character of a matching string replaced in turn.
    for at in range(min(len(positive), 12)):
        for c in "0123456789*#+axX-":
            near = positive[:at] + c + positive[at + 1:]
            assert compiled.matches(near) is (reference.fullmatch(near) is not None), near


# -- destinations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("extension:1001", DestinationKind.EXTENSION, "1001"), ("group:sales", DestinationKind.GROUP, "sales"),
        ("ivr:main", DestinationKind.IVR, "main"), ("queue:support", DestinationKind.QUEUE, "support"),
        ("voicemail:{number}", DestinationKind.VOICEMAIL, "{number}"), ("trunk:main", DestinationKind.TRUNK, "main"),
        ("hangup:403", DestinationKind.HANGUP, "403"), ("feature:echo_test", DestinationKind.FEATURE, "echo_test"),
        ("trunk:a:b", DestinationKind.TRUNK, "a:b"),
    ],
)
def test_destinations_parse_and_print_back(text: str, kind: DestinationKind, target: str) -> None:
    destination = Destination.parse(text)
    assert (destination.kind, destination.target) == (kind, target)
    assert str(destination) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1001", 'must be "kind:target"'), ("phone:1001", "unknown destination kind 'phone'"),
        ("extension:", "needs a target"), ("hangup:200", "between 400 and 699"), ("hangup:busy", "SIP status"),
        ("feature:coffee", "must be one of forward_always_on"), ("extension:a b", "spaces"),
        ("voicemail:{who}", "may use only"), ("voicemail:{number", "not a valid template"),
        ("Extension:1001", "unknown destination kind"),
    ],
)
def test_bad_destinations_raise(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Destination.parse(text)


# -- routing ---------------------------------------------------------------------------------------------


def test_first_matching_rule_wins_in_order() -> None:
    dp = plan(rules(
        'match = "_1XX"\ndestination = "trunk:first"',
        'match = "_1!"\ndestination = "trunk:second"',
        'prefix = "1"\ndestination = "trunk:third"',
    ))
    assert (routed(dp, "123").destination, routed(dp, "123").rule) == (Destination.parse("trunk:first"), 0)
    assert (routed(dp, "1").destination, routed(dp, "1").rule) == (Destination.parse("trunk:second"), 1)
    assert routed(dp, "1234").rule == 1
    assert dp.route("2", "1003", EXTENSIONS) is None


def test_prefix_needs_more_than_the_prefix() -> None:
    dp = plan(rules('prefix = "+49"\ndestination = "trunk:de"'))
    assert routed(dp, "+4930123").destination == Destination.parse("trunk:de")
    assert dp.route("+49", "1003", EXTENSIONS) is None
    assert dp.route("+3349", "1003", EXTENSIONS) is None


def test_strip_prepend_and_templates() -> None:
    dp = plan(rules(
        'match = "_9X."\ndestination = "trunk:main"\nstrip = 1\nprepend = "0049"\n'
        'number = "{number}"\ncaller_id_number = "+49301234{caller}"\ncaller_id_name = "Office {caller}"\n'
        'presentation = "restricted"',
        'match = "_8XXXX"\ndestination = "voicemail:{number}"\nstrip = 1\nnumber = "vm-{dialled}-{{x}}"',
        'match = "_7."\ndestination = "extension:{caller}"\nstrip = 5',
    ))
    route = routed(dp, "930555", caller="1001")
    assert route == Route(
        destination=Destination(DestinationKind.TRUNK, "main"), number="004930555", dialled="930555",
        caller_id_number="+493012341001", caller_id_name="Office 1001", presentation=Presentation.RESTRICTED,
        rule=0,
    )
    route = routed(dp, "81002")
    assert (route.destination, route.number) == (Destination(DestinationKind.VOICEMAIL, "1002"), "vm-81002-{x}")
    assert (route.caller_id_number, route.caller_id_name, route.presentation) == (None, None, Presentation.ALLOWED)
    # Stripping past the end leaves an empty number rather than failing.
    route = routed(dp, "71", caller="alice")
    assert (route.destination, route.number) == (Destination(DestinationKind.EXTENSION, "alice"), "")


def test_extensions_first_routes_an_existing_extension_before_rules() -> None:
    body = 'match = "_1XXX"\ndestination = "trunk:main"'
    first = plan(rules(body))
    assert routed(first, "1001") == Route(Destination(DestinationKind.EXTENSION, "1001"), "1001", "1001")
    assert routed(first, "1999").destination == Destination.parse("trunk:main")  # not an extension
    assert routed(first, "alice").destination == Destination.parse("extension:alice")
    assert first.route("Alice", "1003", EXTENSIONS) is None  # names are case-sensitive
    last = plan(rules(body, head="extensions_first = false\n"))
    assert not last.extensions_first
    assert routed(last, "1001").destination == Destination.parse("trunk:main")
    assert routed(last, "alice") == Route(Destination(DestinationKind.EXTENSION, "alice"), "alice", "alice")


def test_group_numbers_route_to_the_group() -> None:
    dp = plan('[dialplan]\nrule = []\n[[group]]\nname = "sales"\nnumber = "600"\nmembers = ["1001"]\n'
              '[[group]]\nname = "support"\nmembers = ["1002"]\n')
    assert routed(dp, "600") == Route(Destination(DestinationKind.GROUP, "sales"), "600", "600")
    assert dp.group_by_number("600") == dp.group("sales")
    assert dp.group_by_number("601") is None
    assert dp.route("support", "1003", EXTENSIONS) is None  # a group's name is not a number
    assert [g.name for g in dp.groups] == ["sales", "support"]


def test_an_extension_named_like_a_group_number_wins_only_with_extensions_first() -> None:
    toml = '[[group]]\nname = "g"\nnumber = "1001"\nmembers = ["1002"]\n'
    assert routed(plan(toml), "1001").destination.kind is DestinationKind.EXTENSION
    late = plan(toml + "[dialplan]\nextensions_first = false\n")
    assert routed(late, "1001").destination == Destination.parse("group:g")


def test_a_rule_can_reach_a_group() -> None:
    dp = plan('[[group]]\nname = "sales"\nmembers = ["1001"]\n[dialplan]\n'
              '[[dialplan.rule]]\nmatch = "0"\ndestination = "group:sales"\n')
    assert routed(dp, "0").destination == Destination(DestinationKind.GROUP, "sales")


def test_nothing_routes_an_empty_string() -> None:
    assert DialPlan.from_config(Config()).route("", "1001", EXTENSIONS | {""}) is None


# -- feature codes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialled", "expected"),
    [
        ("*721003", FeatureRequest(FeatureCode.FORWARD_ALWAYS_ON, "1003")),
        ("*72+4930123", FeatureRequest(FeatureCode.FORWARD_ALWAYS_ON, "+4930123")),
        ("*72", FeatureRequest(FeatureCode.FORWARD_ALWAYS_ON, "")),  # argument missing: the executor's error
        ("*73", FeatureRequest(FeatureCode.FORWARD_ALWAYS_OFF)),
        ("*90alice", FeatureRequest(FeatureCode.FORWARD_BUSY_ON, "alice")),
        ("*91", FeatureRequest(FeatureCode.FORWARD_BUSY_OFF)),
        ("*921002", FeatureRequest(FeatureCode.FORWARD_NOANSWER_ON, "1002")),
        ("*93", FeatureRequest(FeatureCode.FORWARD_NOANSWER_OFF)),
        ("*78", FeatureRequest(FeatureCode.DND_ON)),
        ("*79", FeatureRequest(FeatureCode.DND_OFF)),
        ("*43", FeatureRequest(FeatureCode.ECHO_TEST)),
        ("*97", FeatureRequest(FeatureCode.VOICEMAIL, "")),  # one's own box
        ("*971002", FeatureRequest(FeatureCode.VOICEMAIL, "1002")),
        ("*781", None),  # codes without an argument match only exactly
        ("*431", None),
        ("*7", None),
        ("*99", None),
    ],
)
def test_default_feature_codes(dialled: str, expected: FeatureRequest | None) -> None:
    dp = DialPlan(DialPlanConfig(rule=()))
    assert dp.route(dialled, "1001", EXTENSIONS) == expected


def test_feature_codes_disabled_renamed_and_longest_first() -> None:
    dp = plan('group = []\n[dialplan]\nrule = []\n[features]\ndnd_on = ""\nforward_always_on = "*7"\n'
              'voicemail = "*72"\necho_test = "*#1"\n')
    assert dp.route("*78", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.FORWARD_ALWAYS_ON, "8")
    assert dp.route("*721", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.VOICEMAIL, "1")
    assert dp.route("*#1", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.ECHO_TEST)
    assert dp.feature_code(FeatureCode.DND_ON) is None
    assert dp.feature_code(FeatureCode.VOICEMAIL) == "*72"


def test_a_rule_can_lead_to_a_feature() -> None:
    dp = plan(rules('match = "_#7X."\ndestination = "feature:forward_always_on"\nstrip = 2',
                    'match = "echo"\ndestination = "feature:echo_test"'))
    assert dp.route("#71003", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.FORWARD_ALWAYS_ON, "1003", rule=0)
    assert dp.route("echo", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.ECHO_TEST, "", rule=1)


def test_pickup_codes() -> None:
    dp = DialPlan(DialPlanConfig(rule=()))
    assert dp.route("*8", "1003", EXTENSIONS) == FeatureRequest(FeatureCode.PICKUP_GROUP)
    assert dp.route("**1002", "1003", EXTENSIONS) == FeatureRequest(FeatureCode.PICKUP_DIRECTED, "1002")
    assert dp.route("**", "1003", EXTENSIONS) == FeatureRequest(FeatureCode.PICKUP_DIRECTED, "")
    assert dp.route("*81", "1003", EXTENSIONS) is None  # group pickup takes no argument
    renamed = plan('[features]\npickup_group = "*#8"\npickup_directed = "*#9"\n')
    assert renamed.route("*#91002", "1003", EXTENSIONS) == FeatureRequest(FeatureCode.PICKUP_DIRECTED, "1002")
    assert renamed.route("**1002", "1003", EXTENSIONS) is None


def test_feature_codes_and_takes_argument() -> None:
    assert {c for c in FeatureCode if c.takes_argument} == {
        FeatureCode.FORWARD_ALWAYS_ON, FeatureCode.FORWARD_BUSY_ON, FeatureCode.FORWARD_NOANSWER_ON,
        FeatureCode.VOICEMAIL, FeatureCode.PICKUP_DIRECTED, FeatureCode.AGENT_LOGIN, FeatureCode.AGENT_LOGOUT,
        FeatureCode.AGENT_PAUSE,
    }
    from ccpbx.pbx.config import FeaturesConfig

    assert {c.value for c in FeatureCode} == {f.name for f in dataclasses.fields(FeaturesConfig)}


# -- hunting ---------------------------------------------------------------------------------------------


def _group_plan(strategy: str, members: str = '["a", "b", "c"]', ring_time: int = 15) -> DialPlan:
    return plan(f'[[group]]\nname = "g"\nstrategy = "{strategy}"\nmembers = {members}\nring_time = {ring_time}\n'
                '[[group]]\nname = "h"\nstrategy = "roundrobin"\nmembers = ["x", "y"]\nfinal = "voicemail:x"\n')


def test_ringall_rings_everyone_in_one_step() -> None:
    dp = _group_plan("ringall")
    assert dp.hunt("g") == HuntPlan("g", (RingStep(("a", "b", "c"), 15_000),), Destination.parse("hangup:480"))
    assert dp.hunt("g") == dp.hunt("g")


def test_linear_rings_one_at_a_time_in_order_every_call() -> None:
    dp = _group_plan("linear", ring_time=1)
    expected = tuple(RingStep((m,), 1000) for m in "abc")
    assert dp.hunt("g").steps == expected
    assert dp.hunt("g").steps == expected


def test_roundrobin_starts_after_the_previous_starter() -> None:
    dp = _group_plan("roundrobin")
    starts = []
    for _ in range(7):
        hunt = dp.hunt("g")
        members = [step.members for step in hunt.steps]
        assert sorted(members) == [("a",), ("b",), ("c",)]
        assert all(step.ring_ms == 15_000 for step in hunt.steps)
        starts.append(members[0][0])
    assert "".join(starts) == "abcabca"
    assert [s.members[0] for s in DialPlan.from_config(parse_config('[[group]]\nname = "g"\nstrategy = '
                                                                    '"roundrobin"\nmembers = ["a", "b", "c"]\n'))
            .hunt("g").steps] == ["a", "b", "c"]
    # Each group keeps its own rotation.
    assert [dp.hunt("h").steps[0].members for _ in range(3)] == [("x",), ("y",), ("x",)]
    assert dp.hunt("h").final == Destination(DestinationKind.VOICEMAIL, "x")


def test_round_robin_rotation_wraps_with_one_member() -> None:
    dp = _group_plan("roundrobin", members='["solo"]')
    assert [dp.hunt("g").steps for _ in range(3)] == [(RingStep(("solo",), 15_000),)] * 3


def test_hunting_an_unknown_group_raises() -> None:
    dp = _group_plan("ringall")
    with pytest.raises(UnknownGroupError):
        dp.hunt("nope")
    with pytest.raises(LookupError):
        dp.group("nope")


def test_group_strategy_values() -> None:
    assert [s.value for s in GroupStrategy] == ["ringall", "linear", "roundrobin"]


# -- the default configuration ---------------------------------------------------------------------------


def test_the_default_config_is_a_working_demo() -> None:
    for config in (Config(), load_config(SHIPPED)):
        dp = DialPlan.from_config(config)
        assert dp.region is ToneRegion.EU and dp.region == "eu"
        assert dp.unknown_number is UnknownNumberTreatment.ANNOUNCEMENT
        assert routed(dp, "1001").destination == Destination(DestinationKind.EXTENSION, "1001")
        assert routed(dp, "alice").destination == Destination(DestinationKind.EXTENSION, "alice")
        assert routed(dp, "600").destination == Destination(DestinationKind.GROUP, "sales")
        assert dp.hunt("sales") == HuntPlan("sales", (RingStep(("1001", "1002"), 20_000),),
                                            Destination(DestinationKind.HANGUP, "480"))
        assert dp.route("*78", "1001", EXTENSIONS) == FeatureRequest(FeatureCode.DND_ON)
        assert dp.route("555", "1001", EXTENSIONS) is None
        route = routed(dp, "0")  # the operator
        assert (route.destination, route.number, route.rule) == (Destination.parse("extension:1001"), "0", 0)
        assert dp.route("81002", "1001", EXTENSIONS) is None


def test_region_and_treatment_are_configurable() -> None:
    dp = plan('[dialplan]\ndefault_region = "us"\nunknown_number = "tone"\n')
    assert (dp.region, dp.unknown_number) == (ToneRegion.US, UnknownNumberTreatment.TONE)


def test_a_full_dial_plan_round_trips_through_to_toml() -> None:
    config = parse_config(
        'group = []\n[dialplan]\nextensions_first = false\n'
        '[[dialplan.rule]]\nprefix = "9"\ndestination = "trunk:main"\nstrip = 1\ncaller_id_name = "A {caller}"\n'
        '[[dialplan.rule]]\nmatch = "_[2-4]XX"\ndestination = "hangup:403"\npresentation = "restricted"\n'
        '[features]\necho_test = ""\n'
    )
    assert config.group == ()
    assert config.dialplan.rule[0].prefix == "9"
    assert parse_config(config.to_toml()) == config
    with_groups = dataclasses.replace(config, group=(GroupConfig(name="q", members=("1",), number="7"),))
    assert parse_config(with_groups.to_toml()) == with_groups


def test_an_override_keeps_the_rules() -> None:
    config = Config().with_overrides(dialplan_unknown_number="tone")
    assert config.dialplan.unknown_number is UnknownNumberTreatment.TONE
    assert config.dialplan.rule == Config().dialplan.rule


def test_a_plan_built_in_code_is_validated() -> None:
    bad_rule = RuleConfig(match=DialPattern("0"), destination=Destination(DestinationKind.GROUP, "nope"))
    with pytest.raises(InvalidDialPlanError, match="nope"):
        DialPlan(DialPlanConfig(rule=(bad_rule,)))
    group = GroupConfig(name="a", members=("1",))
    with pytest.raises(InvalidDialPlanError, match="already the name"):
        DialPlan(DialPlanConfig(rule=()), (group, group))


# -- configuration errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        # rules
        ('[dialplan]\n[[dialplan.rule]]\nmatch = "1"\n\ndestination = "phone:1"\n', 5,
         "[[dialplan.rule]] #1 destination",
         "unknown destination kind 'phone'; expected one of extension, group, ivr, queue, voicemail, trunk, route, "
         'hangup, feature, conference, got "phone:1"'),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\n[[dialplan.rule]]\nmatch = "_[12"\n'
         'destination = "trunk:a"\n', 5, "[[dialplan.rule]] #2 match", 'unclosed "["'),
        ('[[dialplan.rule]]\ndestination = "trunk:a"\n', 1, "[[dialplan.rule]] #1 match", "is required (or prefix)"),
        ('[[dialplan.rule]]\nmatch = "1"\nprefix = "1"\ndestination = "trunk:a"\n', 3, "[[dialplan.rule]] #1 prefix",
         "cannot be combined with match"),
        ('[[dialplan.rule]]\nmatch = "1"\n', 1, "[[dialplan.rule]] #1 destination", "is required"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "group:nobody"\n', 3, "[[dialplan.rule]] #1 destination",
         'names group "nobody", which is not defined (groups: "sales")'),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "hangup:99"\n', 3, "[[dialplan.rule]] #1 destination",
         "between 400 and 699"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\nstrip = -1\n', 4, "[[dialplan.rule]] #1 strip",
         "between 0 and 64"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\nnumber = "{nmber}"\n', 4,
         "[[dialplan.rule]] #1 number", "may use only {caller}, {dialled}, {number}"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\ncaller_id_name = "a\\"b"\n', 4,
         "[[dialplan.rule]] #1 caller_id_name", "must not contain quotes"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\nprepend = "0 0"\n', 4,
         "[[dialplan.rule]] #1 prepend", "SIP user part"),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\npresentation = "hidden"\n', 4,
         "[[dialplan.rule]] #1 presentation", '"allowed", "restricted"'),
        ('[[dialplan.rule]]\nmatch = "1"\ndestination = "trunk:a"\nstirp = 1\n', 4, "[[dialplan.rule]] #1 stirp",
         'unknown key; did you mean "strip"?'),
        ('[dialplan]\nrule = [{ match = "1", destination = 5 }]\n', 2, "[[dialplan.rule]] #1 destination",
         "must be a string, got 5"),
        ('[dialplan]\ndefault_region = "uk"\n', 2, "[dialplan] default_region", 'one of "eu", "us"'),
        ('[dialplan]\nunknown_number = "silence"\n', 2, "[dialplan] unknown_number", '"tone", "announcement"'),
        # groups
        ('[[group]]\nname = "a"\nmembers = []\n', 3, "[[group]] #1 members", "at least one"),
        ('[[group]]\nname = "a"\n', 1, "[[group]] #1 members", "is required"),
        ('[[group]]\nname = "a"\nmembers = ["1", "1"]\n', 3, "[[group]] #1 members[1]", 'lists "1" more than once'),
        ('[[group]]\nname = "a"\nmembers = ["1", "b c"]\n', 3, "[[group]] #1 members", "members[1] must be a SIP"),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nring_time = 0\n', 4, "[[group]] #1 ring_time",
         "between 1 and 600, got 0"),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nring_time = 601\n', 4, "[[group]] #1 ring_time", "got 601"),
        ('[[group]]\nname = "a b"\nmembers = ["1"]\n', 2, "[[group]] #1 name", "letters, digits"),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nstrategy = "random"\n', 4, "[[group]] #1 strategy",
         '"ringall", "linear", "roundrobin"'),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nnumber = ""\n', 4, "[[group]] #1 number", "must not be empty"),
        ('[[group]]\nname = "a"\nmembers = ["1"]\n\n[[group]]\nname = "a"\nmembers = ["2"]\n', 6,
         "[[group]] #2 name", '"a" is already the name of group #1'),
        ('[[group]]\nname = "a"\nnumber = "6"\nmembers = ["1"]\n[[group]]\nname = "b"\nnumber = "6"\n'
         'members = ["2"]\n', 7, "[[group]] #2 number", '"6" is already the number of group #1'),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nfinal = "group:b"\n', 4, "[[group]] #1 final",
         'names group "b", which is not defined (groups: "a")'),
        ('[[group]]\nname = "a"\nmembers = ["1"]\nfinal = "busy"\n', 4, "[[group]] #1 final", 'kind:target'),
        ('group = [{ name = "a", members = ["1"], final = "ivr" }]\n', 1, "[[group]] #1 final", "kind:target"),
        # features
        ('[features]\ndnd_on = "78"\n', 2, "[features] dnd_on", 'must be "" (disabled) or "*"'),
        ('[features]\necho_test = "*4 3"\n', 2, "[features] echo_test", "must be"),
        ('[features]\ndnd_off = "*78"\n', 2, "[features] dnd_off", '"*78" is already the code of dnd_on'),
        ('[features]\ncall_pickup = "*8"\n', 2, "[features] call_pickup", "unknown key"),
    ],
)
def test_config_errors_name_file_line_and_key(text: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ccpbx.toml")
    err = info.value
    assert (err.file, err.line, err.key) == ("ccpbx.toml", line, key), str(err)
    assert message in err.message
    assert str(err).startswith(f"ccpbx.toml:{line}: {key}: ")


def test_a_rule_may_name_a_group_defined_later_in_the_file() -> None:
    config = parse_config('[[dialplan.rule]]\nmatch = "0"\ndestination = "group:late"\n'
                          '[[group]]\nname = "late"\nmembers = ["1001"]\nfinal = "group:late"\n')
    assert config.group[0].final == Destination.parse("group:late")


def test_templated_group_targets_are_checked_per_call_not_at_load() -> None:
    dp = plan(rules('match = "_6XX"\ndestination = "group:g{number}"'))
    assert routed(dp, "601").destination == Destination(DestinationKind.GROUP, "g601")
