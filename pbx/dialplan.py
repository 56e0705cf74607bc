"""The dial plan's decisions: where a dialled string goes, and how a ring group hunts its members.

Pure: no I/O, no clocks. :mod:`ccpbx.pbx.calls` / the routing layer call :meth:`DialPlan.route` with the
dialled user part, the caller and the instant of the call (``now``, for rules with a ``schedule``), and carry
out the answer (ring an extension, run a hunt, perform a feature, or answer 404 with the configured treatment
when it is ``None``).

Order of :meth:`DialPlan.route` (the same order ``default_config.toml`` documents):

1. with ``extensions_first``, an existing extension's exact name (``"1001"``, ``"alice"``);
2. a ``[[group]]`` ``number``, then a ``[[conference]]`` room's ``number``;
3. a ``[features]`` code: the forward-on codes, ``voicemail`` and ``pickup_directed`` take the rest of the
   string as their argument (``*721003``, ``**1002``); the others match only exactly (``*78``);
4. the ``[[dialplan.rule]]`` tables in order, first match wins; a rule with a ``schedule`` matches only while
   that ``[[schedule]]`` is open at ``now`` (:mod:`ccpbx.pbx.schedules`), otherwise the next rule is tried; a
   rule with a ``feature:`` destination becomes a :class:`FeatureRequest` whose argument is the rule's number;
5. without ``extensions_first``, an existing extension's exact name;
6. otherwise ``None``: the number routes nowhere.

Patterns are Asterisk's extension patterns (``_NXXNXXXXXX``, see :func:`ccpbx.pbx.config.dial_pattern_regex`).
Presentation restriction is RFC 3323 §4.2 ``Privacy: id``. The value types configuration needs
(:class:`Destination`, :class:`DialPattern` and the enums) are defined in :mod:`ccpbx.pbx.config`, which
types the file with them, and re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Container
from dataclasses import dataclass, fields
from datetime import datetime

from ccpbx.pbx.config import (
    ConferenceConfig,
    Config,
    Destination,
    DestinationKind,
    DialPattern,
    DialPlanConfig,
    FeaturesConfig,
    GroupConfig,
    GroupStrategy,
    Presentation,
    QueueConfig,
    RuleConfig,
    ScheduleConfig,
    ToneRegion,
    UnknownNumberTreatment,
    conference_problems,
    dialplan_problems,
)
from ccpbx.pbx.schedules import Schedules

__all__ = [
    "MS_PER_S",
    "Destination",
    "DestinationKind",
    "DialPattern",
    "DialPlan",
    "DialPlanError",
    "FeatureCode",
    "FeatureRequest",
    "GroupStrategy",
    "HuntPlan",
    "InvalidDialPlanError",
    "Presentation",
    "RingStep",
    "Route",
    "ToneRegion",
    "UnknownGroupError",
    "UnknownNumberTreatment",
]

MS_PER_S = 1000


class DialPlanError(Exception):
    """Base of the dial plan's errors."""


class InvalidDialPlanError(DialPlanError, ValueError):
    """A :class:`DialPlan` built from sections that break a cross-section rule (an unknown ``group:X``...).

    :func:`ccpbx.pbx.config.load_config` reports the same problems with file and line; this guards plans built
    in code.
    """


class UnknownGroupError(DialPlanError, LookupError):
    """:meth:`DialPlan.hunt` or :meth:`DialPlan.group` was asked for a group that is not configured."""


class FeatureCode(enum.Enum):
    """A feature a phone invokes by dialling its code; values are the ``[features]`` key names."""

    FORWARD_ALWAYS_ON = "forward_always_on"
    FORWARD_ALWAYS_OFF = "forward_always_off"
    FORWARD_BUSY_ON = "forward_busy_on"
    FORWARD_BUSY_OFF = "forward_busy_off"
    FORWARD_NOANSWER_ON = "forward_noanswer_on"
    FORWARD_NOANSWER_OFF = "forward_noanswer_off"
    DND_ON = "dnd_on"
    DND_OFF = "dnd_off"
    ECHO_TEST = "echo_test"
    VOICEMAIL = "voicemail"
    PICKUP_GROUP = "pickup_group"
    PICKUP_DIRECTED = "pickup_directed"
    AGENT_LOGIN = "agent_login"
    AGENT_LOGOUT = "agent_logout"
    AGENT_PAUSE = "agent_pause"
    AGENT_UNPAUSE = "agent_unpause"

    @property
    def takes_argument(self) -> bool:
        """Whether digits after the code are its argument (a forward target, a mailbox).

        Codes that take none match only when dialled exactly.
        """
        return self in _ARGUMENT_CODES


_ARGUMENT_CODES = frozenset(
    {FeatureCode.FORWARD_ALWAYS_ON, FeatureCode.FORWARD_BUSY_ON, FeatureCode.FORWARD_NOANSWER_ON,
     FeatureCode.VOICEMAIL, FeatureCode.PICKUP_DIRECTED, FeatureCode.AGENT_LOGIN, FeatureCode.AGENT_LOGOUT,
     FeatureCode.AGENT_PAUSE}
)


@dataclass(frozen=True, slots=True)
class Route:
    """A dialled string resolved to a destination.

    Attributes
    ----------
    destination : Destination
        Where the call goes, templates in its target already filled in.
    number : str
        The number handed to the destination: after the rule's strip, prepend and ``number`` template; the
        dialled string itself for extensions and group numbers.
    dialled : str
        The string as dialled.
    caller_id_number, caller_id_name : str or None
        Replacement caller identity; ``None`` keeps the caller's own.
    presentation : Presentation
        ``RESTRICTED`` asks the outgoing leg to send ``Privacy: id`` (RFC 3323 §4.2).
    rule : int or None
        Index of the matching ``[[dialplan.rule]]``; ``None`` for an extension, a group number.
    """

    destination: Destination
    number: str
    dialled: str
    caller_id_number: str | None = None
    caller_id_name: str | None = None
    presentation: Presentation = Presentation.ALLOWED
    rule: int | None = None
    priority: int | None = None  # the rule's queue priority for the caller (None: the queue's default)


@dataclass(frozen=True, slots=True)
class FeatureRequest:
    """A feature code dialled by a phone: ``*721003`` is ``FORWARD_ALWAYS_ON`` with argument ``"1003"``.

    ``argument`` is ``""`` when nothing followed the code. For codes that take an argument that is a request
    missing it (``*72`` alone: the executor answers it as an error, e.g. a 484 Address Incomplete or a prompt);
    for ``VOICEMAIL`` it means the caller's own box. ``rule`` is the index of the rule that produced it
    (a ``feature:`` destination), ``None`` for a code from ``[features]``.
    """

    code: FeatureCode
    argument: str = ""
    rule: int | None = None


@dataclass(frozen=True, slots=True)
class RingStep:
    """Members that ring in parallel for ``ring_ms`` milliseconds before the hunt moves on."""

    members: tuple[str, ...]
    ring_ms: int


@dataclass(frozen=True, slots=True)
class HuntPlan:
    """How one call hunts a group: the steps in order, then ``final`` when nobody answered."""

    group: str
    steps: tuple[RingStep, ...]
    final: Destination


class DialPlan:
    """Routing decisions over the ``[dialplan]``, ``[[group]]`` and ``[features]`` configuration.

    The only state is each round-robin group's rotation, advanced by :meth:`hunt`.

    Raises
    ------
    InvalidDialPlanError
        When the sections break a cross-section rule (duplicate group names or numbers, ``group:X`` naming
        no group).
    """

    __slots__ = (
        "_config",
        "_features",
        "_features_config",
        "_groups",
        "_groups_by_number",
        "_last_start",
        "_queues_by_number",
        "_rooms_by_number",
        "schedules",
    )

    def __init__(
        self,
        config: DialPlanConfig,
        groups: tuple[GroupConfig, ...] = (),
        features: FeaturesConfig | None = None,
        conferences: tuple[ConferenceConfig, ...] = (),
        schedules: tuple[ScheduleConfig, ...] = (),
        queues: tuple[QueueConfig, ...] = (),
    ) -> None:
        features = FeaturesConfig() if features is None else features
        problems = [f"{'.'.join(map(str, path))}: {message}"
                    for path, message in [*dialplan_problems(config, groups, features, schedules),
                                          *conference_problems(conferences, groups, features)]]
        if problems:
            raise InvalidDialPlanError("; ".join(problems))
        self._config = config
        self._features_config = features
        self._groups = {g.name: g for g in groups}
        self._groups_by_number = {g.number: g for g in groups if g.number is not None}
        self._rooms_by_number = {r.number: r.name for r in conferences if r.number is not None}
        self._queues_by_number = {q.number: q.name for q in queues if q.number is not None}
        # Longest code first, so "*721" wins over "*72" when both are configured.
        codes = [(getattr(features, f.name), FeatureCode(f.name)) for f in fields(features)]
        self._features = sorted(((c, f) for c, f in codes if c), key=lambda cf: -len(cf[0]))
        self._last_start: dict[str, int] = {}
        self.schedules = Schedules.from_tables(schedules)  # the [[schedule]] tables by name, for rules and flows

    @classmethod
    def from_config(cls, config: Config) -> DialPlan:
        """The dial plan of a loaded :class:`~ccpbx.pbx.config.Config`."""
        return cls(config.dialplan, config.group, config.features, config.conference, config.schedule, config.queue)

    # -- configuration views -----------------------------------------------------------------------------

    @property
    def region(self) -> ToneRegion:
        """Call-progress tone region (a ``str`` enum: ``"eu"`` or ``"us"``)."""
        return self._config.default_region

    @property
    def unknown_number(self) -> UnknownNumberTreatment:
        """What a caller hears for a number that routes nowhere, before 404."""
        return self._config.unknown_number

    @property
    def extensions_first(self) -> bool:
        return self._config.extensions_first

    @property
    def groups(self) -> tuple[GroupConfig, ...]:
        return tuple(self._groups.values())

    def group(self, name: str) -> GroupConfig:
        """The group called ``name``; raises :class:`UnknownGroupError`."""
        try:
            return self._groups[name]
        except KeyError:
            raise UnknownGroupError(name) from None

    def group_by_number(self, number: str) -> GroupConfig | None:
        """The group whose ``number`` is ``number``, if any."""
        return self._groups_by_number.get(number)

    def feature_code(self, code: FeatureCode) -> str | None:
        """The dialled code of a feature, ``None`` when disabled."""
        return getattr(self._features_config, code.value) or None

    # -- routing -----------------------------------------------------------------------------------------

    def route(self, dialled: str, caller: str, extensions: Container[str], *,
              now: datetime | None = None, trunk: str | None = None) -> Route | FeatureRequest | None:
        """Where ``dialled`` (a Request-URI user part) from ``caller`` goes; ``None`` when nowhere.

        ``extensions`` answers whether a name is an existing extension (a set, or a view of the store). ``now``
        (aware) is the instant the rules' schedules are evaluated at; a rule with a ``schedule`` reached without
        it raises :class:`ValueError` (the dial plan reads no clock: the router passes its own).

        ``trunk``: the call came in from that ``[[trunk]]`` (its ``dialled`` is the DID). Such a call is routed
        only by the rules whose ``from_trunk`` admits it (the trunk's name or ``"*"``), never by extension
        names, groups, rooms, queues, feature codes or the internal rules: a caller from outside cannot dial
        back out or reach a feature. Rules with ``from_trunk`` never route internal calls.
        """
        if not dialled:
            return None
        if trunk is not None:
            for index, rule in enumerate(self._config.rule):
                if (rule.from_trunk in (trunk, "*") and _rule_matches(rule, dialled)
                        and self._rule_open(rule, now)):
                    return _apply_rule(rule, index, dialled, caller)
            return None
        if self._config.extensions_first and dialled in extensions:
            return _extension_route(dialled)
        group = self._groups_by_number.get(dialled)
        if group is not None:
            return Route(Destination(DestinationKind.GROUP, group.name), number=dialled, dialled=dialled)
        room = self._rooms_by_number.get(dialled)
        if room is not None:
            return Route(Destination(DestinationKind.CONFERENCE, room), number=dialled, dialled=dialled)
        queue = self._queues_by_number.get(dialled)
        if queue is not None:
            return Route(Destination(DestinationKind.QUEUE, queue), number=dialled, dialled=dialled)
        feature = self._match_feature(dialled)
        if feature is not None:
            return feature
        for index, rule in enumerate(self._config.rule):
            if rule.from_trunk is None and _rule_matches(rule, dialled) and self._rule_open(rule, now):
                return _apply_rule(rule, index, dialled, caller)
        if not self._config.extensions_first and dialled in extensions:
            return _extension_route(dialled)
        return None

    def _rule_open(self, rule: RuleConfig, now: datetime | None) -> bool:
        if rule.schedule is None:
            return True
        if now is None:
            raise ValueError(f"rule with schedule {rule.schedule!r} needs route(..., now=<aware datetime>)")
        return self.schedules.in_schedule(rule.schedule, now)

    def _match_feature(self, dialled: str) -> FeatureRequest | None:
        for code, feature in self._features:
            if dialled == code:
                return FeatureRequest(feature, "")
            if feature.takes_argument and dialled.startswith(code):
                return FeatureRequest(feature, dialled[len(code):])
        return None

    # -- ring groups -------------------------------------------------------------------------------------

    def hunt(self, group: str) -> HuntPlan:
        """The ring steps of one call to ``group``.

        ``RINGALL``: one step, every member, ``ring_time``. ``LINEAR``: one step per member in the listed
        order. ``ROUNDROBIN``: one step per member, starting with the member after the one who started the
        previous hunt of this group (the first hunt starts with the first member); each call advances it.
        Raises :class:`UnknownGroupError`.
        """
        config = self.group(group)
        ring_ms = config.ring_time * MS_PER_S
        members = config.members
        if config.strategy is GroupStrategy.RINGALL:
            steps: tuple[RingStep, ...] = (RingStep(members, ring_ms),)
        else:
            start = 0
            if config.strategy is GroupStrategy.ROUNDROBIN:
                start = (self._last_start.get(group, -1) + 1) % len(members)
                self._last_start[group] = start
            order = members[start:] + members[:start]
            steps = tuple(RingStep((member,), ring_ms) for member in order)
        return HuntPlan(group=config.name, steps=steps, final=config.final)


def _extension_route(dialled: str) -> Route:
    return Route(Destination(DestinationKind.EXTENSION, dialled), number=dialled, dialled=dialled)


def _rule_matches(rule: RuleConfig, dialled: str) -> bool:
    if rule.match is not None:
        return rule.match.matches(dialled)
    assert rule.prefix is not None  # the config guarantees one of match/prefix
    return len(dialled) > len(rule.prefix) and dialled.startswith(rule.prefix)


def _apply_rule(rule: RuleConfig, index: int, dialled: str, caller: str) -> Route | FeatureRequest:
    stripped = rule.prepend + dialled[rule.strip:]
    values = {"number": stripped, "dialled": dialled, "caller": caller}
    number = rule.number.format_map(values)
    destination = rule.destination
    if destination.kind is DestinationKind.FEATURE:
        code = FeatureCode(destination.target)
        return FeatureRequest(code, number if code.takes_argument else "", rule=index)
    if destination.is_template:
        destination = Destination(destination.kind, destination.target.format_map(values))
    return Route(
        destination=destination,
        number=number,
        dialled=dialled,
        caller_id_number=rule.caller_id_number.format_map(values) or None,
        caller_id_name=rule.caller_id_name.format_map(values) or None,
        presentation=rule.presentation,
        rule=index,
        priority=rule.priority,
    )
