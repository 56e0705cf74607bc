"""Time conditions: named opening hours a dial-plan rule or a flow asks "open now?".

Pure: no I/O and no clock of its own; every question takes the instant as an aware :class:`~datetime.datetime`.
The model is Asterisk's ``GotoIfTime`` / FreeSWITCH's time-of-day conditions, in the words of a config file:

- ``hours``: weekly ranges, ``"mon-fri 08:00-18:00"``, ``"sat 09:00-13:00"``, ``"mon,wed 14:00-16:00"``,
  ``"sun"`` (the whole day). Days wrap (``"fri-mon"``); an end at or before the start runs past midnight into
  the next day (``"fri 22:00-02:00"`` is Friday 22:00 to Saturday 02:00); ``24:00`` ends at midnight.
- ``closed_dates``: whole days closed (holidays), ``"2026-12-25"`` or ``"2026-12-24..2026-12-26"``; they win over
  the weekly hours, including a previous day's range running past midnight into them.
- ``open_dates``: special openings, ``"2026-12-31 09:00-12:00"`` (or a date alone: the whole day). On such a date
  these hours *replace* the weekly hours, and they win over a closed date (the more specific statement).
- ``timezone``: an IANA zone name (``"Europe/Berlin"``); times are wall-clock times there, default ``UTC`` (not
  the server's zone, so a schedule means the same on every machine: set it). On a daylight-saving change the
  wall clock rules: a range starting in the skipped hour opens when the clock jumps past its start, and the
  repeated hour is inside a range both times.

An instant is open when its local date is not closed and it falls within that date's hours, or within the part
of the previous date's hours that runs past midnight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_TIMEZONE",
    "WEEKDAYS",
    "DateRange",
    "Schedule",
    "ScheduleError",
    "ScheduleTable",
    "Schedules",
    "SpecialHours",
    "UnknownScheduleError",
    "WeeklyHours",
    "check_timezone",
]

DEFAULT_TIMEZONE = "UTC"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_LIST = ", ".join(WEEKDAYS)
MINUTES_PER_DAY = 24 * 60
NEXT_CHANGE_HORIZON_DAYS = 2 * 366  # next_change() looks this far ahead before answering "never"
_CHUNK_DAYS = 7

_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class ScheduleError(ValueError):
    """A schedule built in code from bad values (an unknown zone, duplicate names)."""


class UnknownScheduleError(KeyError):
    """A schedule name nobody defined: ``Schedules[name]``, ``in_schedule(name, at)``."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = tuple(known)

    def __str__(self) -> str:
        defined = ", ".join(f'"{n}"' for n in self.known) or "none"
        return f'no schedule named "{self.name}" (schedules: {defined})'


def check_timezone(name: str) -> str | None:
    """An error message when ``name`` is not an IANA time zone this machine knows, else ``None``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return 'must be an IANA time zone name such as "Europe/Berlin", "America/New_York" or "UTC"'
    return None


# -- the values a schedule is written with ------------------------------------------------------------------


def _parse_time(text: str, *, end: bool) -> int:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f'has a bad time "{text}" (expected HH:MM)')
    hours, minutes = int(match.group(1)), int(match.group(2))
    limit = 24 if end else 23
    if minutes > 59 or hours > limit or (hours == 24 and minutes):
        allowed = "00:00 to 24:00" if end else "00:00 to 23:59"
        raise ValueError(f'has a bad time "{text}" (must be {allowed})')
    return hours * 60 + minutes


def _parse_range(text: str) -> tuple[int, int]:
    """``"08:00-18:00"`` -> minutes ``(480, 1080)``; an end at or before the start means the next day."""
    start_text, sep, end_text = text.partition("-")
    if not sep:
        raise ValueError(f'has a bad time range "{text}" (expected "HH:MM-HH:MM")')
    start = _parse_time(start_text, end=False)
    end = _parse_time(end_text, end=True)
    if start == end:
        raise ValueError(f'has a time range "{text}" that ends where it starts (use 00:00-24:00 for all day)')
    return start, MINUTES_PER_DAY if end == 0 else end


def _show_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _show_range(start: int, end: int) -> str:
    return f"{_show_minutes(start)}-{_show_minutes(end)}"


def _weekday(text: str) -> int:
    word = text.lower()
    if word in WEEKDAYS:
        return WEEKDAYS.index(word)
    if word in _FULL_NAMES:
        return _FULL_NAMES.index(word)
    raise ValueError(f'has an unknown weekday "{text}" (expected {_WEEKDAY_LIST})')


def _parse_days(text: str) -> tuple[int, ...]:
    days: set[int] = set()
    for part in text.split(","):
        first_text, sep, last_text = part.partition("-")
        first = _weekday(first_text)
        last = _weekday(last_text) if sep else first
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))  # "fri-mon" wraps the week
    return tuple(sorted(days))


def _show_days(days: tuple[int, ...]) -> str:
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(WEEKDAYS[r[0]] if len(r) == 1 else f"{WEEKDAYS[r[0]]}-{WEEKDAYS[r[-1]]}" for r in runs)


def _parse_date(text: str) -> date:
    if _DATE.fullmatch(text) is None:
        raise ValueError(f'has a bad date "{text}" (expected YYYY-MM-DD)')
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f'has a bad date "{text}" (no such day)') from None


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """One weekly range, ``"mon-fri 08:00-18:00"``: ``days`` (0 = Monday) from ``start`` to ``end`` minutes.

    ``end`` is 1-1440; ``end <= start`` runs past midnight into the day after each listed day.
    """

    days: tuple[int, ...]
    start: int = 0
    end: int = MINUTES_PER_DAY

    @classmethod
    def parse(cls, text: str) -> WeeklyHours:
        parts = text.split()
        if not parts or len(parts) > 2:
            raise ValueError('must be "DAYS HH:MM-HH:MM" such as "mon-fri 08:00-18:00" (or "DAYS" for all day)')
        days = _parse_days(parts[0])
        start, end = _parse_range(parts[1]) if len(parts) == 2 else (0, MINUTES_PER_DAY)
        return cls(days, start, end)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        return f"{_show_days(self.days)} {_show_range(self.start, self.end)}"


@dataclass(frozen=True, slots=True)
class DateRange:
    """Whole days from ``first`` to ``last`` inclusive: ``"2026-12-25"``, ``"2026-12-24..2026-12-26"``."""

    first: date
    last: date

    @classmethod
    def parse(cls, text: str) -> DateRange:
        first_text, sep, last_text = text.strip().partition("..")
        first = _parse_date(first_text)
        last = _parse_date(last_text) if sep else first
        if last < first:
            raise ValueError(f"ends ({last}) before it starts ({first})")
        return cls(first, last)

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.first <= day <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}..{self.last}"


@dataclass(frozen=True, slots=True)
class SpecialHours:
    """A special opening on one date, ``"2026-12-31 09:00-12:00"`` (a date alone: the whole day)."""

    day: date
    start: int = 0
    end: int = MINUTES_PER_DAY

    @classmethod
    def parse(cls, text: str) -> SpecialHours:
        parts = text.split()
        if not parts or len(parts) > 2:
            raise ValueError('must be "YYYY-MM-DD HH:MM-HH:MM" such as "2026-12-31 09:00-12:00" (or a date alone)')
        day = _parse_date(parts[0])
        start, end = _parse_range(parts[1]) if len(parts) == 2 else (0, MINUTES_PER_DAY)
        return cls(day, start, end)

    def __str__(self) -> str:
        return f"{self.day} {_show_range(self.start, self.end)}"


# -- one schedule -----------------------------------------------------------------------------------------

_Span = tuple[int, int]  # minutes after the local midnight of a date; the end may pass 1440 (the next day)


def _span(start: int, end: int) -> _Span:
    return (start, end + MINUTES_PER_DAY if end <= start else end)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Named opening hours in a time zone; see the module docstring for the rules.

    Raises :class:`ScheduleError` for an unknown ``timezone``.
    """

    name: str
    timezone: str = DEFAULT_TIMEZONE
    hours: tuple[WeeklyHours, ...] = ()
    closed_dates: tuple[DateRange, ...] = ()
    open_dates: tuple[SpecialHours, ...] = ()
    zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _weekly: tuple[tuple[_Span, ...], ...] = field(init=False, repr=False, compare=False)
    _special: dict[date, tuple[_Span, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        message = check_timezone(self.timezone)
        if message is not None:
            raise ScheduleError(f"schedule {self.name!r}: timezone {message}, got {self.timezone!r}")
        object.__setattr__(self, "zone", ZoneInfo(self.timezone))
        weekly: list[list[_Span]] = [[] for _ in WEEKDAYS]
        for hours in self.hours:
            for day in hours.days:
                weekly[day].append(_span(hours.start, hours.end))
        object.__setattr__(self, "_weekly", tuple(tuple(spans) for spans in weekly))
        special: dict[date, list[_Span]] = {}
        for opening in self.open_dates:
            special.setdefault(opening.day, []).append(_span(opening.start, opening.end))
        object.__setattr__(self, "_special", {day: tuple(spans) for day, spans in special.items()})

    @classmethod
    def parse(cls, name: str, *, timezone: str = DEFAULT_TIMEZONE, hours: Iterable[str] = (),
              closed_dates: Iterable[str] = (), open_dates: Iterable[str] = ()) -> Schedule:
        """A schedule from the strings a config file holds (``ValueError`` for a bad one)."""
        return cls(name, timezone, tuple(WeeklyHours.parse(h) for h in hours),
                   tuple(DateRange.parse(d) for d in closed_dates), tuple(SpecialHours.parse(o) for o in open_dates))

    def is_closed_date(self, day: date) -> bool:
        """Whether ``day`` (a local date) is closed all day: a closed date without special hours."""
        return day not in self._special and any(day in closed for closed in self.closed_dates)

    def _spans(self, day: date) -> tuple[_Span, ...]:
        special = self._special.get(day)
        if special is not None:
            return special
        if self.is_closed_date(day):
            return ()
        return self._weekly[day.weekday()]

    def is_open(self, at: datetime) -> bool:
        """Whether the schedule is open at the instant ``at`` (aware; any zone, UTC by convention)."""
        if at.tzinfo is None:
            raise ValueError("is_open() needs an aware datetime (e.g. datetime.now(UTC))")
        local = at.astimezone(self.zone)
        day = local.date()
        if self.is_closed_date(day):
            return False
        minute = local.hour * 60 + local.minute
        if any(start <= minute < end for start, end in self._spans(day)):
            return True
        return any(minute < end - MINUTES_PER_DAY for _, end in self._spans(day - timedelta(days=1)))

    def next_change(self, at: datetime, *, horizon_days: int = NEXT_CHANGE_HORIZON_DAYS) -> datetime | None:
        """The first instant after ``at`` (UTC) when :meth:`is_open` answers otherwise than at ``at``.

        ``None`` when nothing changes within ``horizon_days`` (always open, never open, ...).
        """
        state = self.is_open(at)
        previous = at.astimezone(UTC)
        first = previous.astimezone(self.zone).date()
        for offset in range(-1, horizon_days, _CHUNK_DAYS):
            cutoff = self._instants(first + timedelta(days=offset + _CHUNK_DAYS), 0)[0]
            days = (first + timedelta(days=offset + i) for i in range(-1, _CHUNK_DAYS + 1))
            candidates = sorted({c for d in days for c in self._boundaries(d) if previous < c <= cutoff})
            for candidate in candidates:
                if self.is_open(candidate) != state:
                    return self._flip(previous, candidate, state)
                previous = candidate
        return None

    def _boundaries(self, day: date) -> Iterator[datetime]:
        """Every instant where the state may change because of ``day``: its midnight, its spans' ends."""
        yield from self._instants(day, 0)
        for start, end in self._spans(day):
            yield from self._instants(day, start)
            yield from self._instants(day, end)

    def _instants(self, day: date, minute: int) -> tuple[datetime, datetime]:
        """The UTC instants of a wall-clock time: two in a repeated hour, none real in a skipped one."""
        wall = datetime.combine(day, time()) + timedelta(minutes=minute)
        return (wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC),
                wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC))

    def _flip(self, low: datetime, high: datetime, state: bool) -> datetime:
        # The state is open at ``low`` and not at ``high``; changes fall on whole seconds (zone offsets are whole
        # seconds), so bisect over seconds. Usually the change is at ``high``; a daylight-saving jump moves it.
        lo = math.floor(low.timestamp())
        hi = math.floor(high.timestamp())
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.is_open(datetime.fromtimestamp(mid, UTC)) == state:
                lo = mid
            else:
                hi = mid
        return datetime.fromtimestamp(hi, UTC)


# -- the collection by name -------------------------------------------------------------------------------


class ScheduleTable(Protocol):
    """What a ``[[schedule]]`` table (:class:`ccpbx.pbx.config.ScheduleConfig`) provides."""

    @property
    def name(self) -> str: ...
    @property
    def timezone(self) -> str: ...
    @property
    def hours(self) -> tuple[WeeklyHours, ...]: ...
    @property
    def closed_dates(self) -> tuple[DateRange, ...]: ...
    @property
    def open_dates(self) -> tuple[SpecialHours, ...]: ...


class Schedules(Mapping[str, Schedule]):
    """Schedules by name: what the dial plan and flows ask (``in_schedule("office", at)``).

    Raises :class:`ScheduleError` for two schedules of one name; looking up an unknown name raises
    :class:`UnknownScheduleError` (a :class:`KeyError`).
    """

    __slots__ = ("_by_name",)

    def __init__(self, schedules: Iterable[Schedule] = ()) -> None:
        self._by_name: dict[str, Schedule] = {}
        for schedule in schedules:
            if schedule.name in self._by_name:
                raise ScheduleError(f"two schedules are named {schedule.name!r}")
            self._by_name[schedule.name] = schedule

    @classmethod
    def from_tables(cls, tables: Iterable[ScheduleTable]) -> Schedules:
        """The schedules of ``[[schedule]]`` tables."""
        return cls(Schedule(t.name, t.timezone, t.hours, t.closed_dates, t.open_dates) for t in tables)

    def __getitem__(self, name: str) -> Schedule:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownScheduleError(name, self._by_name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def in_schedule(self, name: str, at: datetime) -> bool:
        """Whether schedule ``name`` is open at ``at``; :class:`UnknownScheduleError` for an unknown name."""
        return self[name].is_open(at)

    def next_change(self, name: str, at: datetime) -> datetime | None:
        """When schedule ``name`` next opens or closes after ``at`` (see :meth:`Schedule.next_change`)."""
        return self[name].next_change(at)
