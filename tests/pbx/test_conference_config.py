"""``[[conference]]`` rooms in the configuration and the dial plan: keys, cross-section rules, routing."""

from __future__ import annotations

import pytest

from ccpbx.pbx.config import ConferenceConfig, ConfigError, Destination, DestinationKind, load_config, parse_config
from ccpbx.pbx.dialplan import DialPlan, InvalidDialPlanError, Route

ROOMS = '[[conference]]\nname = "standup"\nnumber = "800"\n\n[[conference]]\nname = "board"\npin = "4321"\n'


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ccpbx.toml")
    return info.value


def test_rooms_load_with_their_defaults() -> None:
    config = parse_config(ROOMS + 'max_members = 3\nmusic_when_alone = false\ntones = false\n')
    standup, board = config.conference
    assert standup == ConferenceConfig(name="standup", number="800")
    assert (standup.pin, standup.max_members, standup.music_when_alone, standup.tones) == (None, 10, True, True)
    assert (board.name, board.number, board.pin, board.max_members) == ("board", None, "4321", 3)
    assert (board.music_when_alone, board.tones) == (False, False)
    assert load_config(None).conference == ()


def test_rooms_survive_a_round_trip_through_toml() -> None:
    config = parse_config(ROOMS)
    assert parse_config(config.to_toml()) == config


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (ROOMS + '\n[[conference]]\nname = "standup"\n', 10, "[[conference]] #3 name",
         '"standup" is already the name of conference #1'),
        (ROOMS + 'number = "800"\n', 8, "[[conference]] #2 number", '"800" is already the number of conference #1'),
        ('[[group]]\nname = "sales"\nnumber = "800"\nmembers = ["1001"]\n' + ROOMS, 7, "[[conference]] #1 number",
         '"800" is already the number of group "sales"'),
        ('[[conference]]\nname = "x"\nnumber = "*78"\n', 3, "[[conference]] #1 number",
         '"*78" is already the code of dnd_on'),
        ('[[conference]]\nname = "x"\nmax_members = 1\n', 3, "[[conference]] #1 max_members",
         "must be an integer between 2 and 500, got 1"),
        ('[[conference]]\nname = "x"\nmax_members = 501\n', 3, "[[conference]] #1 max_members",
         "must be an integer between 2 and 500"),
        ('[[conference]]\nname = "x"\npin = "12a4"\n', 3, "[[conference]] #1 pin", "must be 1-16 digits"),
        ('[[conference]]\nname = "x"\npin = ""\n', 3, "[[conference]] #1 pin", "must be 1-16 digits"),
        ('[[conference]]\nname = "a room"\n', 2, "[[conference]] #1 name", "must be letters, digits"),
        ('[[conference]]\nnumber = "800"\n', 1, "[[conference]] #1 name", "is required"),
        ('[[conference]]\nname = "x"\nmax_member = 3\n', 3, "[[conference]] #1 max_member",
         'unknown key; did you mean "max_members"?'),
    ],
)
def test_room_errors_name_file_line_and_key(text: str, line: int, key: str, message: str) -> None:
    err = error_of(text)
    assert (err.file, err.line, err.key) == ("ccpbx.toml", line, key), str(err)
    assert message in err.message, str(err)


def test_a_room_number_routes_to_the_room() -> None:
    plan = DialPlan.from_config(parse_config(ROOMS))
    route = plan.route("800", "1001", {"1001"})
    assert isinstance(route, Route)
    assert route.destination == Destination(DestinationKind.CONFERENCE, "standup")
    assert (route.number, route.dialled) == ("800", "800")
    assert plan.route("board", "1001", {"1001"}) is None  # a room's name is not a number


def test_an_extension_named_like_a_room_number_wins_with_extensions_first() -> None:
    plan = DialPlan.from_config(parse_config(ROOMS))
    route = plan.route("800", "1001", {"800"})
    assert isinstance(route, Route) and route.destination == Destination.parse("extension:800")


def test_rules_reach_rooms_by_name() -> None:
    config = parse_config(ROOMS + '[dialplan]\n[[dialplan.rule]]\nmatch = "_8X"\ndestination = "conference:board"\n')
    route = DialPlan.from_config(config).route("81", "1001", set())
    assert isinstance(route, Route) and route.destination == Destination.parse("conference:board")


def test_a_plan_built_in_code_refuses_clashing_numbers() -> None:
    config = parse_config(ROOMS)
    clash = (*config.conference, ConferenceConfig(name="other", number="800"))
    with pytest.raises(InvalidDialPlanError, match="already the number of conference #1"):
        DialPlan(config.dialplan, config.group, config.features, clash)
