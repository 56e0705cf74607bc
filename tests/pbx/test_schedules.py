"""Time conditions: schedules at fixed instants (holidays, zones, midnight, daylight saving), their
configuration errors, dial-plan rules that apply only while a schedule is open, and ``ccpbx schedule show``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.cli.main import main
from ccpbx.pbx.config import ConfigError, parse_config
from ccpbx.pbx.dialplan import DialPlan, InvalidDialPlanError, Route
from ccpbx.pbx.location import LocationService
from ccpbx.pbx.routing import CallRouter
from ccpbx.pbx.schedules import (
    DateRange,
    Schedule,
    ScheduleError,
    Schedules,
    SpecialHours,
    UnknownScheduleError,
    WeeklyHours,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


BERLIN_OFFICE = Schedule.parse(
    "office", timezone="Europe/Berlin", hours=["mon-fri 08:00-18:00", "sat 09:00-13:00"],
    closed_dates=["2026-12-25", "2026-12-31..2027-01-01"], open_dates=["2026-12-31 09:00-12:00"])


# -- the values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "days", "start", "end", "shown"), [
    ("mon-fri 08:00-18:00", (0, 1, 2, 3, 4), 480, 1080, "mon-fri 08:00-18:00"),
    ("Sat 9:00-13:30", (5,), 540, 810, "sat 09:00-13:30"),
    ("mon,wed,fri 14:00-16:00", (0, 2, 4), 840, 960, "mon,wed,fri 14:00-16:00"),
    ("fri-mon 10:00-11:00", (0, 4, 5, 6), 600, 660, "mon,fri-sun 10:00-11:00"),
    ("sunday", (6,), 0, 1440, "sun 00:00-24:00"),
    ("mon-sun 00:00-24:00", tuple(range(7)), 0, 1440, "mon-sun 00:00-24:00"),
    ("fri 22:00-02:00", (4,), 1320, 120, "fri 22:00-02:00"),
    ("tue 20:00-00:00", (1,), 1200, 1440, "tue 20:00-24:00"),  # ending at midnight is 24:00
])
def test_weekly_hours_parse_and_render(text: str, days: tuple[int, ...], start: int, end: int, shown: str) -> None:
    hours = WeeklyHours.parse(text)
    assert (hours.days, hours.start, hours.end) == (days, start, end)
    assert str(hours) == shown
    assert WeeklyHours.parse(str(hours)) == hours


@pytest.mark.parametrize(("text", "message"), [
    ("fry 08:00-18:00", 'unknown weekday "fry"'),
    ("mon-fri 8-18", 'bad time "8"'),
    ("mon 25:00-26:00", 'bad time "25:00"'),
    ("mon 08:00-24:01", 'bad time "24:01"'),
    ("mon 24:00-02:00", 'bad time "24:00" (must be 00:00 to 23:59)'),
    ("mon 08:60-09:00", 'bad time "08:60"'),
    ("mon 08:00-08:00", "ends where it starts"),
    ("mon 08:00", "bad time range"),
    ("", "must be"),
    ("mon 08:00-09:00 extra", "must be"),
])
def test_weekly_hours_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WeeklyHours.parse(text)


def test_dates_and_special_hours() -> None:
    assert DateRange.parse("2026-12-25") == DateRange(date(2026, 12, 25), date(2026, 12, 25))
    span = DateRange.parse("2026-12-24..2026-12-26")
    assert date(2026, 12, 26) in span and date(2026, 12, 27) not in span
    assert str(span) == "2026-12-24..2026-12-26"
    assert str(SpecialHours.parse("2026-12-31 09:00-12:00")) == "2026-12-31 09:00-12:00"
    assert SpecialHours.parse("2026-12-31") == SpecialHours(date(2026, 12, 31), 0, 1440)
    for bad, message in [("2026-13-01", "no such day"), ("26-12-01", "YYYY-MM-DD"),
                         ("2026-12-26..2026-12-24", "before it starts"), ("2026-02-29", "no such day")]:
        with pytest.raises(ValueError, match=message):
            DateRange.parse(bad)


# -- one schedule at fixed instants --------------------------------------------------------------------------


def test_office_hours_in_berlin() -> None:
    # Friday 2026-03-27, CET (UTC+1): 08:00-18:00 local is 07:00-17:00 UTC.
    assert not BERLIN_OFFICE.is_open(utc(2026, 3, 27, 6, 59))
    assert BERLIN_OFFICE.is_open(utc(2026, 3, 27, 7, 0))
    assert BERLIN_OFFICE.is_open(utc(2026, 3, 27, 16, 59, 59))
    assert not BERLIN_OFFICE.is_open(utc(2026, 3, 27, 17, 0))
    # Saturday 09:00-13:00; Sunday closed.
    assert BERLIN_OFFICE.is_open(utc(2026, 3, 28, 8, 0)) and not BERLIN_OFFICE.is_open(utc(2026, 3, 28, 12, 0))
    assert not BERLIN_OFFICE.is_open(utc(2026, 3, 29, 10, 0))
    # The instant's own zone does not matter, only the instant.
    assert BERLIN_OFFICE.is_open(datetime(2026, 3, 27, 3, 0, tzinfo=ZoneInfo("America/New_York")))


def test_a_holiday_is_closed_all_day_and_a_special_opening_wins() -> None:
    # Christmas 2026 is a Friday: closed although Friday has hours.
    assert not BERLIN_OFFICE.is_open(utc(2026, 12, 25, 10, 0))
    assert BERLIN_OFFICE.is_open(utc(2026, 12, 24, 10, 0))
    # New Year's Eve is in a closed range but has special hours 09:00-12:00, which replace Thursday's.
    assert not BERLIN_OFFICE.is_open(utc(2026, 12, 31, 7, 59))  # 08:59 CET
    assert BERLIN_OFFICE.is_open(utc(2026, 12, 31, 8, 0))  # 09:00 CET
    assert not BERLIN_OFFICE.is_open(utc(2026, 12, 31, 11, 0))  # 12:00 CET: the weekday's 18:00 does not apply
    assert not BERLIN_OFFICE.is_open(utc(2027, 1, 1, 10, 0))  # the range's other day: closed
    assert BERLIN_OFFICE.is_closed_date(date(2027, 1, 1)) and not BERLIN_OFFICE.is_closed_date(date(2026, 12, 31))


def test_a_time_zone_boundary_in_new_york() -> None:
    ny = Schedule.parse("ny", timezone="America/New_York", hours=["mon-fri 09:00-18:00"])
    # Monday 2026-03-02, EST (UTC-5): 17:59 local is 22:59 UTC, 18:00 is 23:00 UTC.
    assert ny.is_open(utc(2026, 3, 2, 22, 59))
    assert not ny.is_open(utc(2026, 3, 2, 23, 0))
    # Monday 2026-07-06, EDT (UTC-4): the same wall clock, an hour earlier in UTC.
    assert ny.is_open(utc(2026, 7, 6, 21, 59))
    assert not ny.is_open(utc(2026, 7, 6, 22, 0))
    assert ny.next_change(utc(2026, 3, 2, 22, 59)) == utc(2026, 3, 2, 23, 0)


def test_a_sunday_night_in_utc_is_monday_morning_in_tokyo() -> None:
    at = utc(2026, 3, 1, 23, 30)  # Sunday 23:30 UTC = Monday 08:30 JST
    tokyo = Schedule.parse("tokyo", timezone="Asia/Tokyo", hours=["mon 08:00-12:00"])
    same_in_utc = Schedule.parse("utc", hours=["mon 08:00-12:00"])
    assert tokyo.is_open(at)
    assert not same_in_utc.is_open(at)
    assert tokyo.next_change(at) == utc(2026, 3, 2, 3, 0)  # Monday 12:00 JST


def test_a_range_crossing_midnight() -> None:
    late = Schedule.parse("late", hours=["fri 22:00-02:00"])
    assert not late.is_open(utc(2026, 3, 27, 21, 59))  # Friday
    assert late.is_open(utc(2026, 3, 27, 22, 0))
    assert late.is_open(utc(2026, 3, 28, 1, 59))  # Saturday, still Friday's range
    assert not late.is_open(utc(2026, 3, 28, 2, 0))
    assert not late.is_open(utc(2026, 3, 28, 23, 0))  # Saturday night has no range
    assert not late.is_open(utc(2026, 3, 27, 1, 0))  # Friday early: Thursday's night has none
    assert late.next_change(utc(2026, 3, 27, 23, 0)) == utc(2026, 3, 28, 2, 0)
    # A closed Saturday closes the spill-over; a closed Friday has no range to spill.
    sat_closed = Schedule.parse("l", hours=["fri 22:00-02:00"], closed_dates=["2026-03-28"])
    assert sat_closed.is_open(utc(2026, 3, 27, 23, 59)) and not sat_closed.is_open(utc(2026, 3, 28, 0, 0))
    fri_closed = Schedule.parse("l", hours=["fri 22:00-02:00"], closed_dates=["2026-03-27"])
    assert not fri_closed.is_open(utc(2026, 3, 27, 23, 0)) and not fri_closed.is_open(utc(2026, 3, 28, 1, 0))


def test_24_00_ends_at_midnight() -> None:
    evening = Schedule.parse("e", hours=["mon 20:00-24:00"])
    assert evening.is_open(utc(2026, 3, 2, 23, 59, 59))
    assert not evening.is_open(utc(2026, 3, 3, 0, 0))
    assert evening.next_change(utc(2026, 3, 2, 21, 0)) == utc(2026, 3, 3, 0, 0)


def test_daylight_saving_days_follow_the_wall_clock() -> None:
    # Berlin springs forward on Sunday 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST).
    spring = Schedule.parse("s", timezone="Europe/Berlin", hours=["sun 02:30-05:00"])
    assert not spring.is_open(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert spring.is_open(utc(2026, 3, 29, 1, 0))  # 03:00 CEST: 02:30 never happened, the range is open
    assert not spring.is_open(utc(2026, 3, 29, 3, 0))  # 05:00 CEST
    assert spring.next_change(utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)
    assert spring.next_change(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 3, 0)
    # The Monday after: 08:00 local is 06:00 UTC now, not 07:00.
    assert BERLIN_OFFICE.is_open(utc(2026, 3, 30, 6, 0)) and not BERLIN_OFFICE.is_open(utc(2026, 3, 30, 5, 59))
    assert BERLIN_OFFICE.next_change(utc(2026, 3, 29, 12, 0)) == utc(2026, 3, 30, 6, 0)
    # Autumn, Sunday 2026-10-25 at 01:00 UTC (03:00 CEST -> 02:00 CET): 02:00-02:30 happens twice.
    autumn = Schedule.parse("a", timezone="Europe/Berlin", hours=["sun 02:00-02:30"])
    opened = [m for m in range(-60, 180, 15) if autumn.is_open(utc(2026, 10, 25, 0, 0) + timedelta(minutes=m))]
    assert opened == [0, 15, 60, 75]  # 00:00-00:30 UTC (CEST) and 01:00-01:30 UTC (CET)
    assert autumn.next_change(utc(2026, 10, 25, 0, 10)) == utc(2026, 10, 25, 0, 30)
    assert autumn.next_change(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 1, 0)
    assert autumn.next_change(utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 25, 1, 30)


def test_next_change_skips_holidays_and_says_never() -> None:
    # Thursday 2026-12-24 after hours: Friday is Christmas, Saturday opens 09:00 CET.
    assert BERLIN_OFFICE.next_change(utc(2026, 12, 24, 18, 0)) == utc(2026, 12, 26, 8, 0)
    assert Schedule.parse("always", hours=["mon-sun"]).next_change(utc(2026, 1, 1)) is None
    assert Schedule.parse("never").next_change(utc(2026, 1, 1)) is None
    assert Schedule.parse("once", open_dates=["2026-06-01 10:00-11:00"]).next_change(utc(2026, 1, 1)) == \
        utc(2026, 6, 1, 10, 0)


def test_schedules_by_name() -> None:
    schedules = Schedules([BERLIN_OFFICE, Schedule.parse("night", hours=["mon-sun 20:00-08:00"])])
    assert list(schedules) == ["office", "night"] and len(schedules) == 2
    assert schedules.in_schedule("office", utc(2026, 3, 27, 10, 0))
    assert not schedules.in_schedule("night", utc(2026, 3, 27, 10, 0))
    assert schedules.next_change("night", utc(2026, 3, 27, 10, 0)) == utc(2026, 3, 27, 20, 0)
    with pytest.raises(UnknownScheduleError) as info:
        schedules.in_schedule("ofice", utc(2026, 3, 27, 10, 0))
    assert isinstance(info.value, KeyError)
    assert str(info.value) == 'no schedule named "ofice" (schedules: "office", "night")'
    assert "ofice" not in schedules and schedules.get("ofice") is None
    with pytest.raises(ScheduleError, match="two schedules"):
        Schedules([BERLIN_OFFICE, BERLIN_OFFICE])
    with pytest.raises(ScheduleError, match="IANA"):
        Schedule("x", "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="aware"):
        BERLIN_OFFICE.is_open(datetime(2026, 3, 27, 10, 0))  # naive: refused


# -- properties ----------------------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe", "Asia/Kolkata"]
instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31),
                        timezones=st.just(UTC))
days = st.dates(min_value=date(2024, 12, 25), max_value=date(2029, 1, 5))


@settings(max_examples=150, deadline=None)
@given(zone=st.sampled_from(ZONES), at=instants,
       closed=st.lists(st.tuples(days, st.integers(0, 4)), max_size=5))
def test_always_open_minus_closed_dates_is_open_exactly_on_open_dates(
        zone: str, at: datetime, closed: list[tuple[date, int]]) -> None:
    ranges = [f"{first}..{first + timedelta(days=length)}" for first, length in closed]
    schedule = Schedule.parse("p", timezone=zone, hours=["mon-sun 00:00-24:00"], closed_dates=ranges)
    local_day = at.astimezone(ZoneInfo(zone)).date()
    is_closed = any(first <= local_day <= first + timedelta(days=length) for first, length in closed)
    assert schedule.is_open(at) is not is_closed


hours_text = st.builds(lambda d1, d2, s, e: f"{d1}-{d2} {s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}",
                       st.sampled_from(["mon", "wed", "sat"]), st.sampled_from(["tue", "fri", "sun"]),
                       st.integers(0, 1439).map(lambda m: m - m % 15), st.integers(1, 1440).map(lambda m: m - m % 15))


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), at=instants, hours=st.lists(hours_text, min_size=1, max_size=3),
       closed=st.lists(days, max_size=3))
def test_next_change_is_the_first_flip(zone: str, at: datetime, hours: list[str], closed: list[date]) -> None:
    try:
        schedule = Schedule.parse("p", timezone=zone, hours=hours, closed_dates=[str(d) for d in closed])
    except ValueError:
        return  # start == end drawn
    change = schedule.next_change(at, horizon_days=40)
    if change is None:
        return
    state = schedule.is_open(at)
    assert change > at
    assert schedule.is_open(change) is not state
    assert schedule.is_open(change - timedelta(seconds=1)) is state or change - timedelta(seconds=1) < at
    # nothing flips in between (sampled every 10 minutes)
    probe = at
    while probe < change - timedelta(seconds=1):
        assert schedule.is_open(probe) is state
        probe += timedelta(minutes=10)


# -- configuration -------------------------------------------------------------------------------------------

SCHEDULE_TOML = """\
[[schedule]]
name = "office"
timezone = "America/New_York"
hours = [
  "mon-fri 09:00-18:00",
  "sat 10:00-24:00",
]
closed_dates = ["2026-12-25"]
open_dates = ["2026-12-27 10:00-14:00"]
"""


def _config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ccpbx.toml")
    return info.value


def test_schedule_config_loads_and_round_trips() -> None:
    config = parse_config(SCHEDULE_TOML, "ccpbx.toml")
    (office,) = config.schedule
    assert office.name == "office" and office.timezone == "America/New_York"
    assert [str(h) for h in office.hours] == ["mon-fri 09:00-18:00", "sat 10:00-24:00"]
    assert office.closed_dates == (DateRange(date(2026, 12, 25), date(2026, 12, 25)),)
    assert parse_config(config.to_toml()) == config
    assert parse_config('[[schedule]]\nname = "x"\n').schedule[0].timezone == "UTC"


@pytest.mark.parametrize(("replace", "by", "line", "key", "message"), [
    ('"sat 10:00-24:00"', '"sat 10:00-25:00"', 6, "[[schedule]] #1 hours[1]", 'bad time "25:00"'),
    ('"mon-fri 09:00-18:00"', '"mon-fry 09:00-18:00"', 5, "[[schedule]] #1 hours[0]", 'unknown weekday "fry"'),
    ('"mon-fri 09:00-18:00"', '"mon-fri 9h-18h"', 5, "[[schedule]] #1 hours[0]", 'bad time "9h"'),
    ('"mon-fri 09:00-18:00"', '"mon-fri 09:00-09:00"', 5, "[[schedule]] #1 hours[0]", "ends where it starts"),
    ('"America/New_York"', '"America/Gotham"', 3, "[[schedule]] #1 timezone", "IANA time zone"),
    ('"2026-12-25"', '"2026-12-32"', 8, "[[schedule]] #1 closed_dates[0]", 'bad date "2026-12-32"'),
    ('"2026-12-25"', '"2026-12-25..2026-12-01"', 8, "[[schedule]] #1 closed_dates[0]", "before it starts"),
    ('"2026-12-27 10:00-14:00"', '"2026-12-27 14:00"', 9, "[[schedule]] #1 open_dates[0]", "bad time range"),
    ('name = "office"', 'name = "the office"', 2, "[[schedule]] #1 name", "letters, digits"),
    ('hours = [', 'hour = [', 4, "[[schedule]] #1 hour", 'unknown key; did you mean "hours"?'),
])
def test_schedule_config_errors_name_file_line_and_key(replace: str, by: str, line: int, key: str,
                                                       message: str) -> None:
    error = _config_error(SCHEDULE_TOML.replace(replace, by))
    assert (error.file, error.line, error.key) == ("ccpbx.toml", line, key)
    assert message in error.message


def test_schedule_names_are_unique_and_rules_must_name_one() -> None:
    error = _config_error(SCHEDULE_TOML + '\n[[schedule]]\nname = "office"\n')
    assert (error.line, error.key) == (12, "[[schedule]] #2 name")
    assert 'already the name of schedule #1' in error.message
    error = _config_error('[[dialplan.rule]]\nmatch = "0"\ndestination = "extension:1001"\nschedule = "ofice"\n\n'
                          + SCHEDULE_TOML)
    assert (error.line, error.key) == (4, "[[dialplan.rule]] #1 schedule")
    assert error.message == 'names schedule "ofice", which is not defined (schedules: "office")'


# -- the dial plan and the router ----------------------------------------------------------------------------

ROUTED = """\
[[dialplan.rule]]
match = "0"
destination = "group:reception"
schedule = "office"

[[dialplan.rule]]
match = "0"
destination = "voicemail:reception"

[[group]]
name = "reception"
members = ["1001"]

""" + SCHEDULE_TOML

MONDAY_NOON_NY = utc(2026, 3, 2, 17, 0)
MONDAY_NIGHT_NY = utc(2026, 3, 2, 23, 30)


def test_a_rule_applies_only_while_its_schedule_is_open() -> None:
    dp = DialPlan.from_config(parse_config(ROUTED))
    day = dp.route("0", "1002", set(), now=MONDAY_NOON_NY)
    night = dp.route("0", "1002", set(), now=MONDAY_NIGHT_NY)
    christmas = dp.route("0", "1002", set(), now=utc(2026, 12, 25, 17, 0))
    assert isinstance(day, Route) and str(day.destination) == "group:reception" and day.rule == 0
    assert isinstance(night, Route) and str(night.destination) == "voicemail:reception" and night.rule == 1
    assert isinstance(christmas, Route) and christmas.rule == 1
    assert dp.schedules.in_schedule("office", MONDAY_NOON_NY)


def test_after_hours_with_no_further_rule_routes_nowhere_and_now_is_required() -> None:
    dp = DialPlan.from_config(parse_config(ROUTED.replace('match = "0"\ndestination = "voicemail', 'match = "9"\n'
                                                          'destination = "voicemail')))
    assert dp.route("0", "1002", set(), now=MONDAY_NIGHT_NY) is None
    assert dp.route("0", "1002", {"0"}, now=MONDAY_NIGHT_NY) is not None  # an extension "0" still answers
    with pytest.raises(ValueError, match="needs route"):
        dp.route("0", "1002", set())
    assert isinstance(dp.route("9", "1002", set()), Route)  # rules without a schedule need no time


def test_a_plan_built_in_code_checks_schedule_references() -> None:
    config = parse_config(ROUTED)
    with pytest.raises(InvalidDialPlanError, match="schedule"):
        DialPlan(config.dialplan, config.group, config.features)


def test_the_router_routes_and_answers_at_its_clock() -> None:
    now = [MONDAY_NOON_NY]
    router = CallRouter(DialPlan.from_config(parse_config(ROUTED)), LocationService(), None,  # type: ignore[arg-type]
                        extensions=set, clock=lambda: now[0])
    assert router.in_schedule("office")
    assert str(router.resolve("0", "1002")[0]) == "group:reception"
    now[0] = MONDAY_NIGHT_NY
    assert not router.in_schedule("office")
    assert router.in_schedule("office", at=MONDAY_NOON_NY)
    assert str(router.resolve("0", "1002")[0]) == "voicemail:reception"
    assert router.schedules["office"].timezone == "America/New_York"
    with pytest.raises(KeyError):
        router.in_schedule("nosuch")
    real = CallRouter(DialPlan.from_config(parse_config(ROUTED)), LocationService(), None,  # type: ignore[arg-type]
                      extensions=set)
    assert abs(real.clock() - datetime.now(UTC)) < timedelta(seconds=5)


# -- the command line ----------------------------------------------------------------------------------------


def test_ccpbx_schedule_show(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.toml"
    path.write_text(ROUTED)
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path), "--config", str(path), "schedule", "show"]
    result = runner.invoke(main, [*args, "--at", "2026-03-02T12:00-05:00"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "TIMEZONE", "NOW", "NEXT", "CHANGE"]
    assert lines[1].split() == ["office", "America/New_York", "open", "closes", "2026-03-02", "18:00", "EST"]
    result = runner.invoke(main, [*args, "office", "--at", "2026-12-24T23:30Z"])
    assert result.output.splitlines()[1].split()[2:] == ["closed", "opens", "2026-12-26", "10:00", "EST"]
    result = runner.invoke(main, [*args, "ofice"])
    assert result.exit_code == 1 and "no schedule named 'ofice'" in result.output
    path.write_text(SCHEDULE_TOML.replace("18:00", "18:60"))
    result = runner.invoke(main, ["--data-dir", str(tmp_path), "--config", str(path), "config", "check"])
    assert result.exit_code == 3 and 'ccpbx.toml:5: [[schedule]] #1 hours[0]: has a bad time "18:60"' in result.output
