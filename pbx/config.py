"""Configuration: a TOML file read with :mod:`tomllib` into frozen, typed dataclasses, validated on load.

Every error names the file, the line and the key (``ccpbx.toml:12: [sip] port: must be an integer between 1
and 65535, got "abc"``). :mod:`tomllib` reports no positions for values, so :class:`_KeyLines` walks the source
text once (it is already known to be valid TOML) and records the line of every table header, key and array
element.

The schema *is* the dataclasses: each section is a frozen dataclass whose fields are declared with
:func:`setting`, and one generic loader converts and checks values from the type hints (``int``, ``float``,
``bool``, ``str``, ``Path``, enums, ``X | None``, ``tuple[X, ...]``, nested dataclasses and
``tuple[Section, ...]`` for arrays of tables, also nested as ``[[dialplan.rule]]``, and :class:`TextValue`
types written as one string such as :class:`Destination`), with constraints in ``field(metadata=spec(...))``. A later
section is added by writing its dataclass and adding one field to :class:`Config`; cross-field rules go in the
section's ``problems()`` method, which yields ``(key, message)`` pairs.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import dataclasses
import difflib
import enum
import ipaddress
import json
import re
import string
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from ccpbx.pbx.numbers import NumberFormat, NumberPlan
from ccpbx.pbx.schedules import DEFAULT_TIMEZONE, DateRange, SpecialHours, WeeklyHours, check_timezone

__all__ = [
    "AdminConfig",
    "AgentConfig",
    "AuthConfig",
    "CallbackOrder",
    "ConferenceConfig",
    "Config",
    "ConfigError",
    "Destination",
    "DestinationKind",
    "DialPattern",
    "DialPlanConfig",
    "DidSource",
    "DigestAlgorithm",
    "DtmfMode",
    "ExtensionPolicyConfig",
    "FeaturesConfig",
    "GroupConfig",
    "GroupStrategy",
    "IdentityHeader",
    "IvrConfig",
    "LogFormat",
    "LogLevel",
    "NumberFormat",
    "OutboundClass",
    "OutboundConfig",
    "Presentation",
    "ProfileConfig",
    "Qop",
    "QueueConfig",
    "QueueStrategy",
    "RegistrarConfig",
    "ReliableProvisional",
    "RouteConfig",
    "RtpConfig",
    "RuleConfig",
    "ScheduleConfig",
    "SecurityConfig",
    "ServerConfig",
    "SipConfig",
    "SrtpPolicy",
    "TextValue",
    "ToneRegion",
    "Transport",
    "TrunkConfig",
    "UnknownNumberTreatment",
    "VoicemailConfig",
    "conference_problems",
    "dial_pattern_regex",
    "dialplan_problems",
    "load_config",
    "parse_source",
    "shipped_profiles",
    "spec",
]

PORT_MIN = 1
PORT_MAX = 65535
MAX_EXPIRES_S = 2**31 - 1  # RFC 3261 §20.19 allows up to 2**32-1; stay within a signed 32-bit field
RING_TIME_MIN_S = 1
RING_TIME_MAX_S = 600
CONFERENCE_MIN_MEMBERS = 2
CONFERENCE_MAX_MEMBERS = 500
PIN_MAX_DIGITS = 16
QUEUE_MAX_PENALTY = 100
MAX_SIP_WORKERS = 8  # [sip] workers
AUTO_MEDIA_WORKERS_MAX = 8  # [rtp] workers = "auto": one per usable core, at most this many

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration problem, located by file, line and key.

    ``str()`` reads ``file:line: key: message``; ``line`` is ``None`` when unknown (a value given on the
    command line, a missing file) and ``key`` is ``""`` for file-level problems (syntax, unreadable file).
    ``errors`` lists every problem found in one load, this one first (the earliest in the file).
    """

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        super().__init__(file, line, key, message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.errors: tuple[ConfigError, ...] = (self,)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)


# -- enums -----------------------------------------------------------------------------------------------


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(enum.StrEnum):
    CONSOLE = "console"
    JSON = "json"


class Transport(enum.StrEnum):
    """SIP transports the server listens on (RFC 3261 §18)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class SrtpPolicy(enum.StrEnum):
    """When calls use SRTP with SDES keys (RFC 3711, RFC 4568)."""

    OFF = "off"  # never: an RTP/SAVP offer is declined (488), our offers are plain RTP/AVP
    OPTIONAL = "optional"  # answer SRTP offers; offer it (RTP/AVP + a=crypto, best effort) on legs over TLS
    REQUIRED = "required"  # legs over TLS must use SRTP: RTP/SAVP offered, a plain offer from one gets 488


class DigestAlgorithm(enum.StrEnum):
    """HTTP digest algorithms by their IANA names (RFC 7616 §6.1, RFC 8760 §2 for SIP)."""

    MD5 = "MD5"
    SHA_256 = "SHA-256"

    @property
    def hashlib_name(self) -> str:
        return {DigestAlgorithm.MD5: "md5", DigestAlgorithm.SHA_256: "sha256"}[self]


class Qop(enum.StrEnum):
    """Digest quality of protection offered in challenges (RFC 7616 §3.3)."""

    AUTH = "auth"


class ToneRegion(enum.StrEnum):
    """Call-progress tone plan heard by callers (ETSI ES 201 970 / ITU-T E.180 Suppl. 2; ANSI T1.401)."""

    EU = "eu"
    US = "us"


class UnknownNumberTreatment(enum.StrEnum):
    """What a caller hears for a number that routes nowhere, before the final 404 (RFC 3261 §21.4.5)."""

    TONE = "tone"  # congestion tone in 183 Session Progress early media (RFC 3960)
    ANNOUNCEMENT = "announcement"  # a spoken "number not in service" prompt in early media


class Presentation(enum.StrEnum):
    """Calling-number presentation: RESTRICTED sends ``Privacy: id`` (RFC 3323 §4.2, RFC 3325 §9.3)."""

    ALLOWED = "allowed"
    RESTRICTED = "restricted"


class GroupStrategy(enum.StrEnum):
    """How a ring group hunts its members."""

    RINGALL = "ringall"  # everyone at once
    LINEAR = "linear"  # one at a time, in the listed order, every call
    ROUNDROBIN = "roundrobin"  # one at a time, starting after the member who started the previous call


class QueueStrategy(enum.StrEnum):
    """How a ``[[queue]]`` picks among its free, qualified agents (the ACD's strategies)."""

    RINGALL = "ring-all"
    LINEAR = "linear"
    ROUNDROBIN = "round-robin"
    LONGEST_IDLE = "longest-idle"
    FEWEST_CALLS = "fewest-calls"
    RANDOM = "random"
    WEIGHTED_RANDOM = "weighted-random"
    SKILLS_BASED = "skills-based"


class CallbackOrder(enum.StrEnum):
    """Who a queue calls first when a kept callback place comes up."""

    AGENT_FIRST = "agent-first"
    CUSTOMER_FIRST = "customer-first"


class DtmfMode(enum.StrEnum):
    RFC4733 = "rfc4733"  # telephone-event in RTP (RFC 4733)
    INFO = "info"  # SIP INFO (application/dtmf-relay)
    INBAND = "inband"  # tones in the audio


class ReliableProvisional(enum.StrEnum):
    """RFC 3262 100rel on calls we place: off, offered (Supported) or demanded (Require)."""

    OFF = "off"
    SUPPORTED = "supported"
    REQUIRED = "required"


class IdentityHeader(enum.StrEnum):
    """Where the caller's number goes on a call to a trunk (RFC 3325 P-Asserted-Identity, Remote-Party-ID)."""

    FROM = "from"
    PAI = "pai"
    RPID = "rpid"


class DidSource(enum.StrEnum):
    """Where an inbound trunk call's dialled number (DID) is read."""

    REQUEST_URI = "request-uri"
    TO = "to"


class OutboundClass(enum.StrEnum):
    """Toll-fraud classes of outside numbers; an extension may call only the classes it is given."""

    INTERNAL = "internal"
    EMERGENCY = "emergency"  # always allowed
    NATIONAL = "national"
    MOBILE = "mobile"
    INTERNATIONAL = "international"
    PREMIUM = "premium"


class DestinationKind(enum.StrEnum):
    """Where a dialled number can lead; the ``kind`` of a ``kind:target`` destination string."""

    EXTENSION = "extension"
    GROUP = "group"
    IVR = "ivr"
    QUEUE = "queue"
    VOICEMAIL = "voicemail"
    TRUNK = "trunk"  # target: a [[trunk]] name; the number leaves through that trunk only
    ROUTE = "route"  # target: a [[route]] name: its trunks in order, with failover
    HANGUP = "hangup"  # target: the SIP final status to reject with (400-699)
    FEATURE = "feature"  # target: a [features] key name, e.g. "echo_test"
    CONFERENCE = "conference"  # target: a [[conference]] room's name


# -- the field-spec helper -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices_hint: str = ""
    check: Callable[[Any], str | None] | None = None
    non_empty: bool = False
    unique: bool = False


def spec(
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    non_empty: bool = False,
    unique: bool = False,
) -> dict[str, Any]:
    """Field metadata for one config key: ``field(default=..., metadata=spec("what it does", ...))``.

    ``minimum``/``maximum`` bound numbers; ``non_empty`` and ``unique`` apply to strings and arrays; ``check``
    returns an error message (without the offending value) or ``None``. A field without a default is a
    required key.
    """
    return {"spec": _Spec(doc=doc, minimum=minimum, maximum=maximum, check=check, non_empty=non_empty,
                          unique=unique)}


# -- value checks ----------------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOSTNAME.match(value))
    return True


def _check_host(value: str) -> str | None:
    return None if _is_host(value) else "must be an IP address or a host name"


def _check_quotable(value: str) -> str | None:
    # The realm and User-Agent go into header values; a quote or a line break would corrupt the message.
    if any(c in value for c in "\"\\\r\n") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain quotes, backslashes or control characters"
    return None


def _check_networks(value: tuple[str, ...]) -> str | None:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not a network such as \"192.168.1.0/24\" or \"127.0.0.1/32\""
    return None


def _check_loopback(value: str) -> str | None:
    # The admin API hands out live call data to whoever holds the token: it never listens beyond this machine.
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return "must be a loopback IP address such as \"127.0.0.1\" or \"::1\" (not a host name)"
    return None if address.is_loopback else "must be a loopback address (127.0.0.0/8 or ::1)"


def _check_even(value: int) -> str | None:
    return None if value % 2 == 0 else "must be even (RTP takes the even port, RTCP the odd one above it)"


def _default_user_agent() -> str:
    try:
        version = metadata.version("ccpbx")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"ccpbx/{version}"

# -- typed values written as strings ---------------------------------------------------------------------

DIAL_STRING_MAX_CHARS = 64
# RFC 3261 §25.1 user-part characters that need no escaping: what a phone puts before the "@" of a dialled URI.
DIAL_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + "-_.!~*'()" + "&=+$,;?/"
)
# Names a template may use in rules: {number} (after strip/prepend), {dialled} (as dialled), {caller}.
TEMPLATE_FIELDS = frozenset({"number", "dialled", "caller"})
HANGUP_STATUS_MIN = 400
HANGUP_STATUS_MAX = 699
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_dial_string(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > DIAL_STRING_MAX_CHARS:
        return f"must be at most {DIAL_STRING_MAX_CHARS} characters"
    bad = next((c for c in value if c not in DIAL_CHARS), None)
    if bad is not None:
        return f"must be a SIP user part (letters, digits, -_.!~*'()&=+$,;?/), not {bad!r}"
    return None


def _check_template(value: str) -> str | None:
    """A ``str.format`` template using only :data:`TEMPLATE_FIELDS`, without conversions or format specs."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"is not a valid template ({exc}; write {{{{ and }}}} for literal braces)"
    for _literal, name, format_spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or format_spec or conversion:
            allowed = ", ".join("{" + n + "}" for n in sorted(TEMPLATE_FIELDS))
            return f"may use only {allowed} in templates, not {{{name}}}"
    return None


def _check_caller_name(value: str) -> str | None:
    return _check_template(value) or _check_quotable(value)


def _check_group_name(value: str) -> str | None:
    return None if _GROUP_NAME.fullmatch(value) else "must be letters, digits, '_', '.' or '-'"


def _check_members(value: tuple[str, ...]) -> str | None:
    for i, member in enumerate(value):
        message = _check_dial_string(member)
        if message is not None:
            return f"members[{i}] {message}"
    return None


def _check_agents(value: tuple[str, ...]) -> str | None:
    """Queue members: "EXT" or "EXT:PENALTY" (lower penalties are offered first)."""
    for i, member in enumerate(value):
        ext, sep, penalty = member.partition(":")
        message = _check_dial_string(ext)
        if message is not None:
            return f"[{i}] {message}"
        if sep and not (penalty.isdigit() and int(penalty) <= QUEUE_MAX_PENALTY):
            return f'[{i}] must be "EXT" or "EXT:PENALTY" with a penalty 0-{QUEUE_MAX_PENALTY}'
    return None


def _check_skills(value: tuple[str, ...]) -> str | None:
    """Skills: "NAME" (level 1) or "NAME:LEVEL" with a level 1-10."""
    for i, item in enumerate(value):
        name, sep, level = item.partition(":")
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            return f'[{i}] must be "NAME" or "NAME:LEVEL" (letters, digits, "_", "-", ".")'
        if sep and not (level.isdigit() and 1 <= int(level) <= 10):
            return f"[{i}] needs a level from 1 to 10"
    return None


def _check_key(value: str) -> str | None:
    if value and (len(value) != 1 or value not in "0123456789*#"):
        return 'must be one key, 0-9, * or # ("" for none)'
    return None


def _check_pin(value: str) -> str | None:
    # Digits only: phones send a PIN as DTMF, and "#" ends the entry.
    if not re.fullmatch(rf"[0-9]{{1,{PIN_MAX_DIGITS}}}", value):
        return f"must be 1-{PIN_MAX_DIGITS} digits (0-9)"
    return None


def _check_feature_code(value: str) -> str | None:
    # "" disables the feature; otherwise "*" then keypad characters, as a phone's keypad can dial them.
    if value and not re.fullmatch(r"\*[0-9*#]{1,15}", value):
        return 'must be "" (disabled) or "*" followed by 1-15 of 0-9, * and #'
    return None


class TextValue(abc.ABC):
    """A config value written as one TOML string and parsed into a typed object (``Destination``...).

    Subclasses implement ``parse(text)`` (raising :class:`ValueError` with a message that does not repeat the
    value) and ``__str__`` (its exact inverse), which is how the loader converts and ``to_toml`` renders them.
    Value types defined below config (the schedules' ``WeeklyHours``...) are registered as virtual subclasses.
    """

    __slots__ = ()

    @classmethod
    @abc.abstractmethod
    def parse(cls, text: str) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Destination(TextValue):
    """Where a call goes: ``kind:target`` (``extension:1001``, ``group:sales``, ``hangup:403``, ...).

    ``target`` may be a template using ``{number}``, ``{dialled}`` and ``{caller}`` (``voicemail:{number}``)
    except for ``hangup`` (a SIP status, 400-699) and ``feature`` (a ``[features]`` key name).
    """

    kind: DestinationKind
    target: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        kind_text, sep, target = text.partition(":")
        kinds = ", ".join(k.value for k in DestinationKind)
        if not sep:
            raise ValueError(f'must be "kind:target" with kind one of {kinds}')
        try:
            kind = DestinationKind(kind_text)
        except ValueError:
            raise ValueError(f"has unknown destination kind {kind_text!r}; expected one of {kinds}") from None
        destination = cls(kind, target)
        message = destination.problem()
        if message is not None:
            raise ValueError(message)
        return destination

    def problem(self) -> str | None:
        """What is wrong with this destination, or ``None``."""
        if not self.target:
            return f"needs a target after {self.kind.value}:"
        if self.kind is DestinationKind.HANGUP:
            if not self.target.isdigit() or not HANGUP_STATUS_MIN <= int(self.target) <= HANGUP_STATUS_MAX:
                return f"hangup target must be a SIP status between {HANGUP_STATUS_MIN} and {HANGUP_STATUS_MAX}"
            return None
        if self.kind is DestinationKind.FEATURE:
            names = [f.name for f in dataclasses.fields(FeaturesConfig)]
            if self.target not in names:
                return "feature target must be one of " + ", ".join(names)
            return None
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in self.target):
            return "target must not contain spaces or control characters"
        return _check_template(self.target)

    @property
    def is_template(self) -> bool:
        """Whether the target contains ``{...}`` fields filled in per call."""
        return any(name is not None for _, name, _, _ in string.Formatter().parse(self.target))

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.target}"


def dial_pattern_regex(pattern: str) -> str:
    """The regular expression (for :func:`re.fullmatch`) equivalent to an Asterisk-style dial pattern.

    Without a leading ``_`` the pattern is an exact string. After ``_``: ``X`` = 0-9, ``Z`` = 1-9, ``N`` = 2-9
    (upper case only: lower-case letters are literals, so names can appear in patterns), ``[15-7a]`` = one of
    the listed characters and ranges, ``.`` = one or more of anything, ``!`` = zero or more of anything; every
    other character matches itself. Raises :class:`ValueError` for an empty pattern or a bad class.
    """
    if not pattern:
        raise ValueError("must not be empty")
    if not pattern.startswith("_"):
        return re.escape(pattern)
    body = pattern[1:]
    if not body:
        raise ValueError('needs something after "_"')
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "[":
            end = body.find("]", i + 1)
            if end < 0:
                raise ValueError(f'has an unclosed "[" at position {i + 1}')
            out.append(_char_class(body[i + 1:end]))
            i = end + 1
            continue
        if c == "]":
            raise ValueError(f'has a "]" without "[" at position {i + 1}')
        out.append({"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": "(?s:.+)", "!": "(?s:.*)"}.get(c) or re.escape(c))
        i += 1
    return "".join(out)


def _char_class(inner: str) -> str:
    if not inner:
        raise ValueError('has an empty class "[]"')
    parts: list[str] = []
    i = 0
    while i < len(inner):
        if i + 2 < len(inner) and inner[i + 1] == "-":
            lo, hi = inner[i], inner[i + 2]
            if lo > hi:
                raise ValueError(f'has a backwards range "{lo}-{hi}"')
            parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            parts.append(re.escape(inner[i]))
            i += 1
    return "[" + "".join(parts) + "]"


@dataclass(frozen=True, slots=True)
class DialPattern(TextValue):
    """An Asterisk-style dial pattern (``_9NXXXXXX``, ``_[1-3]XX``, ``_00.``) or an exact string.

    See :func:`dial_pattern_regex` for the syntax. Raises :class:`ValueError` when the pattern is invalid.
    """

    text: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(dial_pattern_regex(self.text)))

    @classmethod
    def parse(cls, text: str) -> DialPattern:
        return cls(text)

    @property
    def is_exact(self) -> bool:
        return not self.text.startswith("_")

    def matches(self, dialled: str) -> bool:
        """Whether the whole of ``dialled`` matches."""
        if self.is_exact:
            return dialled == self.text
        return self.regex.fullmatch(dialled) is not None

    def __str__(self) -> str:
        return self.text


# -- sections --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: process-wide settings."""

    data_dir: Path | None = field(
        default=None, metadata=spec("Database and recordings; --data-dir / CCPBX_DATA_DIR win over this.")
    )
    log_level: LogLevel = field(default=LogLevel.INFO, metadata=spec("Lowest level written to the log."))
    log_format: LogFormat = field(
        default=LogFormat.CONSOLE, metadata=spec("console: key=value lines; json: one object per line.")
    )


@dataclass(frozen=True, slots=True)
class SipConfig:
    """``[sip]``: the SIP listener and identity (RFC 3261)."""

    host: str = field(default="0.0.0.0", metadata=spec("Address to listen on.", check=_check_host))
    port: int = field(default=5060, metadata=spec("SIP port (0: any free port).", minimum=0, maximum=PORT_MAX))
    transports: tuple[Transport, ...] = field(
        default=(Transport.UDP, Transport.TCP),
        metadata=spec("Transports to listen on.", non_empty=True, unique=True),
    )
    domain: str | None = field(
        default=None,
        metadata=spec("Domain of our AORs; unset: the host's name/IP as phones see it.", check=_check_host),
    )
    realm: str = field(
        default="ccpbx", metadata=spec("Digest realm (RFC 7616 §3.3).", non_empty=True, check=_check_quotable)
    )
    user_agent: str = field(
        default_factory=_default_user_agent,
        metadata=spec("User-Agent/Server header value.", non_empty=True, check=_check_quotable),
    )
    ipv6: bool = field(default=False, metadata=spec("Also listen on IPv6."))
    tls_port: int = field(
        default=5061, metadata=spec("SIP over TLS port (0: any free port).", minimum=0, maximum=PORT_MAX)
    )
    tls_certificate: Path | None = field(
        default=None, metadata=spec("PEM certificate (chain) presented by the TLS listener.")
    )
    tls_private_key: Path | None = field(default=None, metadata=spec("PEM private key of tls_certificate."))
    tls_ca: Path | None = field(
        default=None, metadata=spec("PEM CA bundle: outbound TLS peers must present a certificate it signs.")
    )
    srtp: SrtpPolicy = field(
        default=SrtpPolicy.OPTIONAL, metadata=spec("SRTP (SDES): off, optional or required (on legs over TLS).")
    )
    workers: int | Literal["auto"] = field(
        default="auto",
        metadata=spec("SIP worker processes sharing the UDP port (Linux): the kernel gives them the requests, and "
                      "they answer the digest challenges (REGISTER 401, a new call's 407) of phones that have "
                      "authenticated before and the refreshes of the bindings the server leased them, on other "
                      "cores; everything else (calls with credentials, wrong passwords) is passed to the server. "
                      '"auto" (the default): one when this process may use two cores or more, none on one. 0: '
                      "none. With workers the port is opened with SO_REUSEPORT (only processes of the same user "
                      "can join it).",
                      minimum=0, maximum=MAX_SIP_WORKERS),
    )
    overload_reject_ms: int = field(
        default=0,
        metadata=spec("Once the server has been behind for half a second, a new request (INVITE, REGISTER, ...) "
                      "that waited this long in its inbox is answered 503 with Retry-After instead of being served "
                      "(RFC 6357: a fast refusal, not a slow call, so a trunk can fail over; requests answering our "
                      "challenge and emergency numbers are always served). 0 (the default): never refuse.",
                      minimum=0, maximum=10_000),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if Transport.TLS in self.transports:
            if self.tls_certificate is None:
                yield "tls_certificate", 'is required when transports include "tls" (ccpbx tls selfsigned makes one)'
            if self.tls_private_key is None:
                yield "tls_private_key", 'is required when transports include "tls"'
        for key in ("tls_certificate", "tls_private_key", "tls_ca"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                yield key, f"no such file: {path}"


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """``[registrar]``: registration lifetimes in seconds (RFC 3261 §10.3)."""

    min_expires: int = field(
        default=60, metadata=spec("Shorter requests get 423.", minimum=1, maximum=MAX_EXPIRES_S)
    )
    max_expires: int = field(
        default=3600, metadata=spec("Longer requests are cut to this.", minimum=1, maximum=MAX_EXPIRES_S)
    )
    default_expires: int = field(
        default=3600, metadata=spec("When a REGISTER gives no expiry.", minimum=1, maximum=MAX_EXPIRES_S)
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.min_expires > self.max_expires:
            yield "min_expires", f"must not exceed max_expires ({self.max_expires}), got {self.min_expires}"
        elif not self.min_expires <= self.default_expires <= self.max_expires:
            yield "default_expires", (
                f"must be between min_expires ({self.min_expires}) and max_expires ({self.max_expires}), "
                f"got {self.default_expires}"
            )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: digest authentication (RFC 7616, RFC 8760)."""

    algorithms: tuple[DigestAlgorithm, ...] = field(
        default=(DigestAlgorithm.MD5,),
        metadata=spec("Algorithms offered, one challenge each, preferred first.", non_empty=True, unique=True),
    )
    nonce_ttl: int = field(default=300, metadata=spec("Seconds a nonce stays valid.", minimum=1, maximum=86400))
    qop: Qop = field(default=Qop.AUTH, metadata=spec("Quality of protection offered."))
    max_failures: int = field(
        default=5, metadata=spec("Wrong-password attempts before 403 Forbidden.", minimum=1, maximum=1000)
    )
    trusted_networks: tuple[str, ...] = field(
        default=(),
        metadata=spec("Networks (CIDR) whose registered phones may call without answering a challenge.",
                      check=_check_networks, unique=True),
    )


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``: banning addresses that guess passwords, limiting requests that flood (pbx/bans.py)."""

    ban_after: int = field(
        default=5, metadata=spec("Authentication failures from one address within ban_window that ban it.",
                                 minimum=1, maximum=1000)
    )
    ban_window: int = field(
        default=60, metadata=spec("Seconds the failures are counted over.", minimum=1, maximum=86400)
    )
    ban_time: int = field(
        default=600, metadata=spec("Seconds a ban lasts.", minimum=1, maximum=365 * 86400)
    )
    rate_limit: int = field(
        default=20, metadata=spec("Requests per second one address may send before it has authenticated "
                                  "(0: no limit).", minimum=0, maximum=100_000)
    )
    rate_burst: int = field(
        default=40, metadata=spec("Requests one address may send at once above rate_limit.", minimum=1,
                                  maximum=1_000_000)
    )
    flood_ban_after: int = field(
        default=100, metadata=spec("Requests from one address dropped by the rate limit within ban_window that "
                                   "ban it for ban_time, unless someone authenticated from that address (0: never).",
                                   minimum=0, maximum=1_000_000)
    )
    allow: tuple[str, ...] = field(
        default=(), metadata=spec("Networks (CIDR) never banned nor rate limited.", check=_check_networks,
                                  unique=True)
    )


@dataclass(frozen=True, slots=True)
class RtpConfig:
    """``[rtp]``: the UDP port range for media (RFC 3550 §11: RTP even, RTCP the next odd port)."""

    port_min: int = field(
        default=10000,
        metadata=spec("Lowest RTP port (even).", minimum=PORT_MIN, maximum=PORT_MAX, check=_check_even),
    )
    port_max: int = field(
        default=20000, metadata=spec("Highest port of the range.", minimum=PORT_MIN, maximum=PORT_MAX)
    )
    timeout: int = field(
        default=30, metadata=spec("Seconds without RTP from an answered, unheld party before the call is "
                                  "hung up (0: never).", minimum=0, maximum=3600)
    )
    workers: int | Literal["auto"] = field(
        default="auto", metadata=spec('Media worker processes (each its own core: RTP, mixing, recording); "auto" '
                                      "runs one per core this process may use (at most "
                                      f"{AUTO_MEDIA_WORKERS_MAX}), 0 runs media in the server's process.",
                                      minimum=0, maximum=64)
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.port_min >= self.port_max:
            yield "port_max", f"must be greater than port_min ({self.port_min}), got {self.port_max}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleConfig:
    """``[[dialplan.rule]]``: one dial-plan rule; rules are tried in order and the first match wins."""

    match: DialPattern | None = field(
        default=None,
        metadata=spec('Asterisk-style pattern ("_9X.") or an exact string; set this or prefix.'),
    )
    prefix: str | None = field(
        default=None,
        metadata=spec("Matches numbers that start with this and are longer; set this or match.",
                      check=_check_dial_string),
    )
    destination: Destination = field(metadata=spec("kind:target where the call goes."))
    strip: int = field(
        default=0, metadata=spec("Characters removed from the front.", minimum=0, maximum=DIAL_STRING_MAX_CHARS)
    )
    prepend: str = field(default="", metadata=spec("Prepended after strip."))
    number: str = field(
        default="{number}", metadata=spec("Number passed to the destination (template).", check=_check_template)
    )
    caller_id_number: str = field(
        default="", metadata=spec('Presented caller number (template); "" keeps it.', check=_check_template)
    )
    caller_id_name: str = field(
        default="", metadata=spec('Presented caller name (template); "" keeps it.', check=_check_caller_name)
    )
    presentation: Presentation = field(
        default=Presentation.ALLOWED, metadata=spec("restricted: Privacy: id (RFC 3323).")
    )
    priority: int | None = field(
        default=None, metadata=spec("For a queue: the callers' priority there (higher is served first).",
                                    minimum=-1000, maximum=1000)
    )
    schedule: str | None = field(
        default=None, metadata=spec("A [[schedule]] name: the rule applies only while it is open (else the next "
                                    "rule is tried).")
    )
    from_trunk: str | None = field(
        default=None, metadata=spec('Calls from this [[trunk]] ("*": any trunk) use this rule, and only they: '
                                    "calls from outside reach no rule without it.")
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.match is None and self.prefix is None:
            yield "match", 'is required (or prefix): say which numbers this rule takes'
        elif self.match is not None and self.prefix is not None:
            yield "prefix", "cannot be combined with match: use one or the other"
        if self.prepend and _check_dial_string(self.prepend) is not None:
            yield "prepend", f"{_check_dial_string(self.prepend)}, got {_show(self.prepend)}"


# The demo rules: 0 reaches the operator (1001); 700 and 701 the example IVR flows (ivr/examples).
DEMO_RULES: tuple[RuleConfig, ...] = (
    RuleConfig(match=DialPattern("0"), destination=Destination(DestinationKind.EXTENSION, "1001")),
    RuleConfig(match=DialPattern("700"), destination=Destination(DestinationKind.IVR, "ccpbx.ivr.examples.bank:main")),
    RuleConfig(match=DialPattern("701"),
               destination=Destination(DestinationKind.IVR, "ccpbx.ivr.examples.after_hours:main")),
)


@dataclass(frozen=True, slots=True)
class DialPlanConfig:
    """``[dialplan]``: how dialled numbers are routed, with its ``[[dialplan.rule]]`` tables."""

    default_region: ToneRegion = field(
        default=ToneRegion.EU, metadata=spec("Call-progress tones: eu (ETSI) or us (North America).")
    )
    unknown_number: UnknownNumberTreatment = field(
        default=UnknownNumberTreatment.ANNOUNCEMENT,
        metadata=spec("What a caller hears before 404 for a number that routes nowhere."),
    )
    extensions_first: bool = field(
        default=True, metadata=spec("An extension's own name routes to it before the rules (else after).")
    )
    rule: tuple[RuleConfig, ...] = field(default=DEMO_RULES, metadata=spec("Rules, first match wins."))


for _value_type in (WeeklyHours, DateRange, SpecialHours):
    TextValue.register(_value_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleConfig:
    """``[[schedule]]``: named opening hours (:mod:`ccpbx.pbx.schedules`); rules and flows ask whether it is open."""

    name: str = field(metadata=spec("Unique name; a rule's schedule key names it.", check=_check_group_name))
    timezone: str = field(
        default=DEFAULT_TIMEZONE, metadata=spec('IANA zone of the times ("Europe/Berlin").', check=check_timezone)
    )
    hours: tuple[WeeklyHours, ...] = field(
        default=(), metadata=spec('Weekly ranges: "mon-fri 08:00-18:00"; an end before the start runs past midnight.')
    )
    closed_dates: tuple[DateRange, ...] = field(
        default=(), metadata=spec('Whole days closed: "2026-12-25", "2026-12-24..2026-12-26".')
    )
    open_dates: tuple[SpecialHours, ...] = field(
        default=(), metadata=spec('Special openings replacing that day\'s hours: "2026-12-31 09:00-12:00".')
    )


# The demo's opening hours, asked by the after-hours example flow (dial 701).
DEMO_SCHEDULES: tuple[ScheduleConfig, ...] = (
    ScheduleConfig(name="office", hours=(WeeklyHours.parse("mon-fri 08:00-18:00"),)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """``[[group]]``: a ring group (hunt group) of extensions."""

    name: str = field(metadata=spec("Unique name; destination group:<name>.", check=_check_group_name))
    number: str | None = field(
        default=None, metadata=spec("Dialling this reaches the group.", check=_check_dial_string)
    )
    strategy: GroupStrategy = field(default=GroupStrategy.RINGALL, metadata=spec("ringall, linear or roundrobin."))
    members: tuple[str, ...] = field(
        metadata=spec("Extensions, in hunting order.", non_empty=True, unique=True, check=_check_members)
    )
    ring_time: int = field(
        default=20, metadata=spec("Seconds each step rings.", minimum=RING_TIME_MIN_S, maximum=RING_TIME_MAX_S)
    )
    final: Destination = field(
        default=Destination(DestinationKind.HANGUP, "480"), metadata=spec("Where the call goes when nobody answers.")
    )
    ring_busy: bool = field(
        default=False, metadata=spec("Ring members already on a call (in use or holding); false skips them.")
    )


DEMO_GROUPS: tuple[GroupConfig, ...] = (
    GroupConfig(name="sales", number="600", members=("1001", "1002")),
)


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """``[features]``: feature codes dialled from a phone; "" disables one."""

    forward_always_on: str = field(default="*72", metadata=spec("Forward all calls: code + number.",
                                                                 check=_check_feature_code))
    forward_always_off: str = field(default="*73", metadata=spec("Cancel forward-all.", check=_check_feature_code))
    forward_busy_on: str = field(default="*90", metadata=spec("Forward when busy: code + number.",
                                                               check=_check_feature_code))
    forward_busy_off: str = field(default="*91", metadata=spec("Cancel forward-busy.", check=_check_feature_code))
    forward_noanswer_on: str = field(default="*92", metadata=spec("Forward on no answer: code + number.",
                                                                   check=_check_feature_code))
    forward_noanswer_off: str = field(default="*93", metadata=spec("Cancel forward-no-answer.",
                                                                    check=_check_feature_code))
    dnd_on: str = field(default="*78", metadata=spec("Do not disturb on.", check=_check_feature_code))
    dnd_off: str = field(default="*79", metadata=spec("Do not disturb off.", check=_check_feature_code))
    echo_test: str = field(default="*43", metadata=spec("Echo test.", check=_check_feature_code))
    voicemail: str = field(default="*97", metadata=spec("Voicemail box: code alone for one's own, code + box.",
                                                         check=_check_feature_code))
    pickup_group: str = field(default="*8", metadata=spec("Pick up a call ringing a member of one's groups.",
                                                           check=_check_feature_code))
    pickup_directed: str = field(default="**", metadata=spec("Pick up the call ringing an extension: code + "
                                                              "extension.", check=_check_feature_code))
    agent_login: str = field(default="*61", metadata=spec("Agent login to its queues (code + queue number: one).",
                                                           check=_check_feature_code))
    agent_logout: str = field(default="*62", metadata=spec("Agent logout (code + queue number: one).",
                                                            check=_check_feature_code))
    agent_pause: str = field(default="*63", metadata=spec("Agent pause (code + digits: a reason code).",
                                                           check=_check_feature_code))
    agent_unpause: str = field(default="*64", metadata=spec("Agent unpause.", check=_check_feature_code))

    def problems(self) -> Iterator[tuple[str, str]]:
        seen: dict[str, str] = {}
        for f in dataclasses.fields(self):
            code = getattr(self, f.name)
            if not code:
                continue
            if code in seen:
                yield f.name, f"{_show(code)} is already the code of {seen[code]}"
            else:
                seen[code] = f.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ConferenceConfig:
    """``[[conference]]``: a conference room (an audio bridge callers dial into)."""

    name: str = field(metadata=spec("Unique name; destination conference:<name>.", check=_check_group_name))
    number: str | None = field(
        default=None, metadata=spec("Dialling this reaches the room.", check=_check_dial_string)
    )
    pin: str | None = field(default=None, metadata=spec("Digits callers must enter (then #).", check=_check_pin))
    max_members: int = field(
        default=10, metadata=spec("Callers beyond this get busy (486).", minimum=CONFERENCE_MIN_MEMBERS,
                                  maximum=CONFERENCE_MAX_MEMBERS)
    )
    music_when_alone: bool = field(default=True, metadata=spec("Music on hold to a member who is alone."))
    tones: bool = field(default=True, metadata=spec("Beep to the others when someone joins or leaves."))


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """``[[queue]]``: an ACD queue; callers wait with music and announcements until an agent answers."""

    name: str = field(metadata=spec("Unique name; destination queue:<name>.", check=_check_group_name))
    number: str | None = field(
        default=None, metadata=spec("Dialling this reaches the queue.", check=_check_dial_string)
    )
    strategy: QueueStrategy = field(
        default=QueueStrategy.LONGEST_IDLE,
        metadata=spec("ring-all, linear, round-robin, longest-idle, fewest-calls, random, weighted-random or "
                      "skills-based."),
    )
    members: tuple[str, ...] = field(
        default=(), metadata=spec('Static agents, logged in at start: "EXT" or "EXT:PENALTY".', unique=True,
                                  check=_check_agents)
    )
    agents: tuple[str, ...] = field(
        default=(), metadata=spec('Dynamic agents, who log in and out (feature code, ccpbx agent login).',
                                  unique=True, check=_check_agents)
    )
    skills: tuple[str, ...] = field(
        default=(), metadata=spec('Skills every caller of this queue needs: "NAME" or "NAME:LEVEL".',
                                  unique=True, check=_check_skills)
    )
    ring_timeout: int = field(default=15, metadata=spec("Seconds an agent rings before the next.",
                                                         minimum=RING_TIME_MIN_S, maximum=RING_TIME_MAX_S))
    wrap_up: int = field(default=10, metadata=spec("Seconds after each call before an agent's next offer.",
                                                    minimum=0, maximum=3600))
    max_wait: int | None = field(default=None, metadata=spec("Seconds before a caller overflows.", minimum=1))
    max_length: int | None = field(default=None, metadata=spec("Callers waiting beyond this overflow.",
                                                               minimum=1))
    join_empty: bool = field(default=True, metadata=spec("Callers may join with no agent logged in."))
    leave_when_empty: bool = field(default=False, metadata=spec("Waiting callers overflow when the last agent "
                                                                "logs out or pauses."))
    schedule: str | None = field(default=None, metadata=spec("A [[schedule]]: closed outside it (overflow)."))
    overflow: Destination | None = field(
        default=None, metadata=spec("Where overflowing callers go (max_wait, max_length, empty, closed).")
    )
    overflow_to_callback: bool = field(
        default=False, metadata=spec("Overflow turns callers into callbacks that keep their place instead.")
    )
    callback_key: str = field(default="", metadata=spec("Key a waiting caller presses to be called back.",
                                                        check=_check_key))
    callback_order: CallbackOrder = field(default=CallbackOrder.AGENT_FIRST,
                                          metadata=spec("agent-first or customer-first."))
    callback_attempts: int = field(default=3, metadata=spec("Tries to reach a callback customer.", minimum=1,
                                                            maximum=20))
    callback_retry: int = field(default=60, metadata=spec("Seconds between callback tries.", minimum=1))
    announce_position: bool = field(default=True, metadata=spec("Tell callers their position and wait."))
    announce_interval: int = field(default=60, metadata=spec("Seconds between announcements (0: at join only).",
                                                             minimum=0))
    music: str = field(default="", metadata=spec('Prompt played while waiting, looped; "" is music on hold.'))
    aging: int = field(default=0, metadata=spec("Seconds of waiting that add one priority point (0: none).",
                                                minimum=0))
    escalate_after: int | None = field(default=None, metadata=spec("Seconds before moving to escalate_to.",
                                                                   minimum=1))
    escalate_to: str | None = field(default=None, metadata=spec("A queue waiting callers escalate into."))
    relax_after: int | None = field(default=None, metadata=spec("Seconds before skill levels are relaxed.",
                                                                minimum=1))
    relax_levels: int = field(default=2, metadata=spec("Levels relax_after takes off the requirement.",
                                                       minimum=0, maximum=9))
    service_level: int = field(default=20, metadata=spec("Answered within this many seconds counts as served.",
                                                         minimum=1))

    def problems(self) -> Iterator[tuple[str, str]]:
        if (self.escalate_after is None) != (self.escalate_to is None):
            yield "escalate_to", "escalate_after and escalate_to go together"
        if self.escalate_to == self.name:
            yield "escalate_to", "names the queue itself"
        overflows = (self.max_wait, self.max_length, self.schedule) != (None, None, None) or self.leave_when_empty \
            or not self.join_empty
        if overflows and self.overflow is None and not self.overflow_to_callback:
            yield "overflow", "is required by max_wait, max_length, schedule, join_empty or leave_when_empty"
        if self.overflow_to_callback and self.overflow is not None:
            yield "overflow_to_callback", "cannot be combined with overflow: choose one"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """``[[agent]]``: an agent's skills and wrap-up (membership is the queues' members/agents lists)."""

    extension: str = field(metadata=spec("The agent's extension.", check=_check_dial_string))
    skills: tuple[str, ...] = field(
        default=(), metadata=spec('"NAME" (level 1) or "NAME:LEVEL" (1-10).', unique=True, check=_check_skills)
    )
    wrap_up: int | None = field(default=None, metadata=spec("Seconds of wrap-up; unset: its queues' longest.",
                                                            minimum=0, maximum=3600))
    auto_pause_after: int | None = field(default=None, metadata=spec("Missed offers in a row that pause it.",
                                                                     minimum=0, maximum=100))


# The demo queue (dial 500, or the bank example's advisers): the demo extensions log in with *61.
DEMO_QUEUES: tuple[QueueConfig, ...] = (
    QueueConfig(name="support", number="500", agents=("1001", "1002", "1003"), callback_key="5"),
)


def queue_problems(queues: tuple[QueueConfig, ...], agents: tuple[AgentConfig, ...],
                   taken: Mapping[str, str], schedules: Iterable[str]) -> Iterator[tuple[KeyPath, str]]:
    """Unique queue names and numbers (``taken``: numbers of groups, rooms and codes), known queues and
    schedules, one [[agent]] per extension."""
    names = {q.name: i for i, q in reversed(list(enumerate(queues)))}
    numbers: dict[str, int] = {}
    schedule_names = set(schedules)
    for i, queue in enumerate(queues):
        if names[queue.name] != i:
            yield ("queue", i, "name"), f"{_show(queue.name)} is already the name of queue #{names[queue.name] + 1}"
        if queue.number is not None:
            if queue.number in numbers:
                other = numbers[queue.number] + 1
                yield ("queue", i, "number"), f"{_show(queue.number)} is already the number of queue #{other}"
            elif queue.number in taken:
                yield ("queue", i, "number"), f"{_show(queue.number)} is already {taken[queue.number]}"
            else:
                numbers[queue.number] = i
        if queue.escalate_to is not None and queue.escalate_to not in names:
            yield ("queue", i, "escalate_to"), f"names queue {_show(queue.escalate_to)}, which is not defined"
        if queue.schedule is not None and queue.schedule not in schedule_names:
            yield ("queue", i, "schedule"), f"names schedule {_show(queue.schedule)}, which is not defined"
        both = {m.partition(":")[0] for m in queue.members} & {a.partition(":")[0] for a in queue.agents}
        if both:
            yield ("queue", i, "agents"), f"lists {', '.join(sorted(both))} among the members too"
    seen: dict[str, int] = {}
    for i, agent in enumerate(agents):
        if agent.extension in seen:
            other = seen[agent.extension] + 1
            yield ("agent", i, "extension"), f"{_show(agent.extension)} already has [[agent]] #{other}"
        else:
            seen[agent.extension] = i


@dataclass(frozen=True, slots=True)
class VoicemailConfig:
    """``[voicemail]``: mailboxes (destination voicemail:EXT, the forwarding target), MWI and e-mail."""

    max_message: int = field(default=180, metadata=spec("Longest message, seconds.", minimum=5, maximum=3600))
    min_message: float = field(default=1.0, metadata=spec("Shorter messages are not kept, seconds.", minimum=0,
                                                          maximum=60))
    silence_stop: int = field(default=10, metadata=spec("Seconds of silence that end a message.", minimum=1,
                                                        maximum=300))
    max_messages: int = field(default=100, metadata=spec("Messages a box holds; then callers hear it is full.",
                                                         minimum=1, maximum=10000))
    min_pin_digits: int = field(default=4, metadata=spec("Shortest PIN an owner may choose.", minimum=1,
                                                         maximum=PIN_MAX_DIGITS))
    unsolicited_mwi: bool = field(default=False, metadata=spec(
        "Also send message-summary NOTIFYs to the owner's registered phones that did not subscribe."))
    smtp_host: str = field(default="", metadata=spec('Mail server for new-message e-mails; "" sends none.'))
    smtp_port: int = field(default=25, metadata=spec("Its port.", minimum=1, maximum=PORT_MAX))
    smtp_starttls: bool = field(default=False, metadata=spec("Upgrade the connection with STARTTLS."))
    smtp_username: str = field(default="", metadata=spec('Log in as this user ("": no login).'))
    smtp_password: str = field(default="", metadata=spec("Its password."))
    smtp_from: str = field(default="ccpbx@localhost", metadata=spec("The From address of the e-mails."))


@dataclass(frozen=True, slots=True)
class IvrConfig:
    """``[ivr]``: where IVR flows (``ivr:MODULE:FUNCTION`` destinations) and their prompts come from."""

    paths: tuple[Path, ...] = field(
        default=(), metadata=spec("Directories flow modules are imported from (relative to this file), before "
                                  "installed packages; a changed file is reloaded for the next call.")
    )
    prompt_paths: tuple[Path, ...] = field(
        default=(), metadata=spec("Directories searched for NAME.wav before the shipped prompts.")
    )
    language: str = field(default="en", metadata=spec("Shipped prompt set (ivr/prompts/<language>).",
                                                      non_empty=True))
    voice: str = field(default="en-us", metadata=spec("espeak-ng voice for call.say().", non_empty=True))
    fallback: Destination = field(
        default=Destination(DestinationKind.HANGUP, "503"),
        metadata=spec("Where a caller goes when a flow fails (raises, or cannot be imported)."),
    )


def conference_problems(
    conferences: tuple[ConferenceConfig, ...], groups: tuple[GroupConfig, ...], features: FeaturesConfig
) -> Iterator[tuple[KeyPath, str]]:
    """Rules across sections: unique room names and numbers, numbers no group or feature code already has."""
    names: dict[str, int] = {}
    numbers: dict[str, int] = {}
    group_numbers = {g.number: g.name for g in groups if g.number is not None}
    codes = {getattr(features, f.name): f.name for f in dataclasses.fields(features) if getattr(features, f.name)}
    for i, room in enumerate(conferences):
        if room.name in names:
            yield ("conference", i, "name"), (
                f"{_show(room.name)} is already the name of conference #{names[room.name] + 1}"
            )
        else:
            names[room.name] = i
        if room.number is None:
            continue
        if room.number in numbers:
            yield ("conference", i, "number"), (
                f"{_show(room.number)} is already the number of conference #{numbers[room.number] + 1}"
            )
        elif room.number in group_numbers:
            yield ("conference", i, "number"), (
                f"{_show(room.number)} is already the number of group {_show(group_numbers[room.number])}"
            )
        elif room.number in codes:
            yield ("conference", i, "number"), f"{_show(room.number)} is already the code of {codes[room.number]}"
        else:
            numbers[room.number] = i


def dialplan_problems(
    dialplan: DialPlanConfig, groups: tuple[GroupConfig, ...], features: FeaturesConfig,
    schedules: tuple[ScheduleConfig, ...] = (),
) -> Iterator[tuple[KeyPath, str]]:
    """Rules across sections: unique group and schedule names, unique group numbers, ``group:X`` naming a
    defined group, a rule's ``schedule`` naming a defined schedule."""
    del features  # feature codes are checked within [features]; kept for a stable signature
    names: dict[str, int] = {}
    numbers: dict[str, int] = {}
    for i, group in enumerate(groups):
        if group.name in names:
            yield ("group", i, "name"), f"{_show(group.name)} is already the name of group #{names[group.name] + 1}"
        else:
            names[group.name] = i
        if group.number is not None:
            if group.number in numbers:
                yield ("group", i, "number"), (
                    f"{_show(group.number)} is already the number of group #{numbers[group.number] + 1}"
                )
            else:
                numbers[group.number] = i

    def unknown(destination: Destination) -> bool:
        return (destination.kind is DestinationKind.GROUP and not destination.is_template
                and destination.target not in names)

    defined = ", ".join(_show(n) for n in names) or "none"
    for i, rule in enumerate(dialplan.rule):
        if unknown(rule.destination):
            yield ("dialplan", "rule", i, "destination"), (
                f"names group {_show(rule.destination.target)}, which is not defined (groups: {defined})"
            )
    for i, group in enumerate(groups):
        if unknown(group.final):
            yield ("group", i, "final"), (
                f"names group {_show(group.final.target)}, which is not defined (groups: {defined})"
            )
    schedule_names: dict[str, int] = {}
    for i, schedule in enumerate(schedules):
        if schedule.name in schedule_names:
            yield ("schedule", i, "name"), (
                f"{_show(schedule.name)} is already the name of schedule #{schedule_names[schedule.name] + 1}"
            )
        schedule_names.setdefault(schedule.name, i)
    for i, rule in enumerate(dialplan.rule):
        if rule.schedule is not None and rule.schedule not in schedule_names:
            known = ", ".join(_show(n) for n in schedule_names) or "none"
            yield ("dialplan", "rule", i, "schedule"), (
                f"names schedule {_show(rule.schedule)}, which is not defined (schedules: {known})"
            )


def _check_sources(value: tuple[str, ...]) -> str | None:
    """Trunk sources: a network in CIDR ("192.0.2.0/24", "2001:db8::1") or one address and port
    ("192.0.2.7:5060", "[2001:db8::7]:5060")."""
    for i, item in enumerate(value):
        try:
            parse_source(item)
        except ValueError as exc:
            return f"[{i}] {exc}"
    return None


def parse_source(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]:
    """An ``allowed_sources`` entry as (network, port or None); raises ValueError with a clear message."""
    port: int | None = None
    host = text.strip()
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError('must be "NETWORK/BITS", "ADDRESS" or "ADDRESS:PORT" ("[v6]:PORT")')
        host, port_text = inner, rest[1:]
        if rest:
            port = _source_port(port_text)
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = _source_port(port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ValueError(f"{_show(text)} is not an address or network (CIDR)") from None
    if port is not None and network.num_addresses != 1:
        raise ValueError(f"{_show(text)}: a port goes with one address, not a network")
    return network, port


def _source_port(text: str) -> int:
    if not text.isdigit() or not PORT_MIN <= int(text) <= PORT_MAX:
        raise ValueError(f"has a bad port {_show(text)}")
    return int(text)


def _check_country_code(value: str) -> str | None:
    if value and not re.fullmatch(r"[1-9][0-9]{0,2}", value):
        return 'must be "" or a country calling code of 1-3 digits (E.164), such as "1" or "49"'
    return None


def _check_prefix(value: str) -> str | None:
    if not re.fullmatch(r"[0-9]{0,4}", value):
        return "must be 0-4 digits"
    return None


def _check_codecs(value: tuple[str, ...]) -> str | None:
    known = {"PCMU", "PCMA"}
    for i, codec in enumerate(value):
        if codec.upper() not in known:
            return f"[{i}] {_show(codec)} is not a codec ccpbx carries (PCMU, PCMA)"
    return None


def _check_caller_number(value: str) -> str | None:
    if not value:
        return None
    problem = _check_template(value)
    if problem is not None:
        return problem
    if not re.fullmatch(r"\+?[0-9{}a-z]*", value):
        return 'must be digits, optionally after "+" (templates: {caller})'
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileConfig:
    """``[[profile]]``: how one kind of provider or gateway wants its calls (ccpbx ships several; see
    ``ccpbx trunk profiles``); a trunk names one with ``profile``."""

    name: str = field(metadata=spec("Unique name, used by [[trunk]] profile.", check=_check_group_name))
    description: str = field(default="", metadata=spec("What it is for."))
    dtmf: DtmfMode = field(default=DtmfMode.RFC4733, metadata=spec("How keys are sent: rfc4733, info or inband."))
    early_media: bool = field(default=True, metadata=spec("Pass the trunk's early media (183 with SDP) to the "
                                                         "caller; false rings instead."))
    prack: ReliableProvisional = field(
        default=ReliableProvisional.SUPPORTED,
        metadata=spec("100rel on calls to the trunk (RFC 3262): off, supported or required."),
    )
    session_expires: int = field(default=0, metadata=spec(
        "Session-Expires asked on calls to the trunk, seconds (RFC 4028; 0: none).", minimum=0, maximum=86400))
    codecs: tuple[str, ...] = field(default=("PCMA", "PCMU"), metadata=spec(
        "Codecs offered to the trunk, preferred first.", non_empty=True, unique=True, check=_check_codecs))
    caller_id_header: IdentityHeader = field(
        default=IdentityHeader.FROM,
        metadata=spec("Where the caller's number goes: from, pai (P-Asserted-Identity) or rpid (Remote-Party-ID)."),
    )
    did_from: DidSource = field(default=DidSource.REQUEST_URI,
                                metadata=spec("Where inbound calls carry the dialled number: request-uri or to."))
    number_format: NumberFormat = field(default=NumberFormat.E164, metadata=spec(
        "Numbers as the trunk sends and expects them: e164 (+CC...), national or as-is."))
    keepalive: int = field(default=60, metadata=spec("Seconds between OPTIONS pings (0: none).", minimum=0,
                                                     maximum=3600))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkConfig:
    """``[[trunk]]``: a SIP provider account or a VoIP/TDM gateway; destination trunk:<name>, or a [[route]]."""

    name: str = field(metadata=spec("Unique name.", check=_check_group_name))
    host: str = field(metadata=spec("The provider's or gateway's host name or address (DNS NAPTR/SRV/A, RFC 3263).",
                                    check=_check_host))
    port: int | None = field(default=None, metadata=spec("Its port; unset: from DNS SRV, else 5060.", minimum=1,
                                                         maximum=PORT_MAX))
    transport: Transport = field(default=Transport.UDP, metadata=spec("udp or tcp."))
    username: str = field(default="", metadata=spec("Account name: registration and digest answers.",
                                                    check=_check_quotable))
    password: str = field(default="", metadata=spec("Account password.", check=_check_quotable))
    auth_username: str = field(default="", metadata=spec('Digest user when it differs from username ("": same).',
                                                         check=_check_quotable))
    from_domain: str = field(default="", metadata=spec('Domain in From on calls out ("": host).'))
    register: bool = field(default=False, metadata=spec("Register with the provider (outbound REGISTER)."))
    register_expires: int = field(default=600, metadata=spec("Registration lifetime asked, seconds.", minimum=60,
                                                             maximum=86400))
    max_channels: int | None = field(default=None, metadata=spec("Simultaneous calls, both directions (unset: no "
                                                                 "limit).", minimum=1, maximum=100000))
    max_inbound: int | None = field(default=None, metadata=spec("Simultaneous inbound calls.", minimum=0,
                                                                maximum=100000))
    max_outbound: int | None = field(default=None, metadata=spec("Simultaneous outbound calls.", minimum=0,
                                                                 maximum=100000))
    profile: str = field(default="generic", metadata=spec("A shipped profile or a [[profile]] name."))
    allowed_sources: tuple[str, ...] = field(default=(), metadata=spec(
        'Addresses whose calls are this trunk\'s without a password: "CIDR" or "ADDRESS:PORT".',
        unique=True, check=_check_sources))
    country_code: str = field(default="", metadata=spec('The trunk\'s country calling code, e.g. "1", "49".',
                                                        check=_check_country_code))
    national_prefix: str = field(default="0", metadata=spec('Trunk prefix of national numbers ("0"; NANP "1").',
                                                            check=_check_prefix))
    international_prefix: str = field(default="00", metadata=spec('International prefix ("00"; NANP "011").',
                                                                  check=_check_prefix))
    caller_format: NumberFormat = field(default=NumberFormat.E164, metadata=spec(
        "Inbound callers' numbers are shown, routed and stored as e164, national or as-is."))
    caller_id: str = field(default="", metadata=spec('Number shown on calls out when no route or extension sets one '
                                                     '("": the caller\'s own).', check=_check_caller_number))
    ring_timeout: int = field(default=120, metadata=spec("Seconds a call out may ring before it is given up.",
                                                         minimum=RING_TIME_MIN_S, maximum=RING_TIME_MAX_S))
    no_response_timeout: int = field(default=4, metadata=spec(
        "Seconds without any answer (not even 100 Trying) before the next trunk is tried.", minimum=1, maximum=32))

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.register and not self.username:
            yield "username", "is required when register = true"
        try:
            NumberPlan(self.country_code, self.national_prefix, self.international_prefix)
        except ValueError as exc:
            yield "international_prefix", str(exc)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """``[[route]]``: an outbound route (destination route:<name>): its trunks in order, the next one taken on
    5xx, 408, no response, a full trunk or one marked down."""

    name: str = field(metadata=spec("Unique name.", check=_check_group_name))
    trunks: tuple[str, ...] = field(metadata=spec("[[trunk]] names, in order of preference.", non_empty=True,
                                                  unique=True))
    strip: int = field(default=0, metadata=spec("Digits removed from the front of the number.", minimum=0,
                                                maximum=DIAL_STRING_MAX_CHARS))
    prepend: str = field(default="", metadata=spec("Digits put in front after strip."))
    caller_id: str = field(default="", metadata=spec('Number shown on calls by this route ("": the extension\'s '
                                                     'or the trunk\'s).', check=_check_caller_number))
    number_class: OutboundClass | None = field(default=None, metadata=spec(
        "The toll class of every number of this route; unset: by [outbound] patterns."))

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.prepend and _check_dial_string(self.prepend) is not None:
            yield "prepend", f"{_check_dial_string(self.prepend)}, got {_show(self.prepend)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtensionPolicyConfig:
    """``[[outbound.extension]]``: outside-call rights of some extensions (the rest get [outbound]'s)."""

    extensions: tuple[str, ...] = field(metadata=spec("Extensions this applies to.", non_empty=True, unique=True,
                                                      check=_check_members))
    classes: tuple[OutboundClass, ...] | None = field(default=None, metadata=spec(
        "Classes they may call; unset: [outbound] classes.", unique=True))
    max_calls: int | None = field(default=None, metadata=spec(
        "Simultaneous outside calls each; unset: [outbound] max_calls.", minimum=0, maximum=1000))
    caller_id: str = field(default="", metadata=spec('Number they show outside ({caller}: the extension).',
                                                     check=_check_caller_number))


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """``[outbound]``: toll-fraud limits on calls that leave through trunks.

    A number is put in the first class whose patterns match it as routed (after the route's strip and prepend):
    emergency, premium, international, mobile, national; a number no pattern matches is national.
    """

    emergency: tuple[DialPattern, ...] = field(default=(DialPattern("112"), DialPattern("911"), DialPattern("999")),
                                               metadata=spec("Emergency numbers: always allowed, never limited."))
    premium: tuple[DialPattern, ...] = field(default=(DialPattern("_0900."), DialPattern("_1900NXXXXXX")),
                                             metadata=spec("Premium-rate numbers."))
    international: tuple[DialPattern, ...] = field(default=(DialPattern("_00."), DialPattern("_011."),
                                                            DialPattern("_+.")),
                                                   metadata=spec("International numbers."))
    mobile: tuple[DialPattern, ...] = field(default=(), metadata=spec("Mobile numbers (country-specific)."))
    national: tuple[DialPattern, ...] = field(default=(), metadata=spec("National numbers (the rest are too)."))
    classes: tuple[OutboundClass, ...] = field(
        default=(OutboundClass.INTERNAL, OutboundClass.EMERGENCY, OutboundClass.NATIONAL, OutboundClass.MOBILE),
        metadata=spec("Classes every extension may call unless an [[outbound.extension]] says otherwise.",
                      unique=True),
    )
    max_calls: int = field(default=2, metadata=spec("Simultaneous outside calls per extension (0: none).",
                                                    minimum=0, maximum=1000))
    extension: tuple[ExtensionPolicyConfig, ...] = field(default=(), metadata=spec("Per-extension rights."))


def trunk_problems(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Unique trunk, route and profile names; what trunks, routes and rules name exists."""
    profiles = {p.name for p in config.profile} | set(shipped_profiles())
    seen: dict[str, int] = {}
    for i, profile in enumerate(config.profile):
        if profile.name in seen:
            other = seen[profile.name] + 1
            yield ("profile", i, "name"), f"{_show(profile.name)} is already the name of profile #{other}"
        seen.setdefault(profile.name, i)
    trunks: dict[str, int] = {}
    for i, trunk in enumerate(config.trunk):
        if trunk.name in trunks:
            yield ("trunk", i, "name"), f"{_show(trunk.name)} is already the name of trunk #{trunks[trunk.name] + 1}"
        trunks.setdefault(trunk.name, i)
        if trunk.profile not in profiles:
            known = ", ".join(sorted(profiles))
            yield ("trunk", i, "profile"), f"{_show(trunk.profile)} is not a profile (profiles: {known})"
    routes: dict[str, int] = {}
    for i, route in enumerate(config.route):
        if route.name in routes:
            yield ("route", i, "name"), f"{_show(route.name)} is already the name of route #{routes[route.name] + 1}"
        routes.setdefault(route.name, i)
        for name in route.trunks:
            if name not in trunks:
                known = ", ".join(_show(n) for n in trunks) or "none"
                yield ("route", i, "trunks"), f"names trunk {_show(name)}, which is not defined (trunks: {known})"
    for i, rule in enumerate(config.dialplan.rule):
        if rule.from_trunk is not None and rule.from_trunk != "*" and rule.from_trunk not in trunks:
            known = ", ".join(_show(n) for n in trunks) or "none"
            yield ("dialplan", "rule", i, "from_trunk"), (
                f"names trunk {_show(rule.from_trunk)}, which is not defined (trunks: {known})")


PROFILES_DIR = Path(__file__).with_name("profiles")
_shipped: dict[str, ProfileConfig] | None = None


def shipped_profiles() -> dict[str, ProfileConfig]:
    """The gateway and provider profiles shipped in ``pbx/profiles/*.toml`` (one profile per file), by name.

    A broken shipped file is a packaging bug: it raises :class:`ConfigError` naming the file."""
    global _shipped
    if _shipped is None:
        found: dict[str, ProfileConfig] = {}
        for path in sorted(PROFILES_DIR.glob("*.toml")):
            text = path.read_text(encoding="utf-8")
            errors = _Errors(str(path), _KeyLines(text))
            profile = _build(ProfileConfig, tomllib.loads(text), (), errors)
            errors.raise_if_any()
            found[profile.name] = profile
        _shipped = found
    return _shipped


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the local admin API (live calls, registrations, devices, Prometheus ``/metrics``)."""

    enabled: bool = field(default=True, metadata=spec("Serve the admin API (ccpbx show ... reads it)."))
    host: str = field(
        default="127.0.0.1", metadata=spec("Loopback address the admin API listens on.", check=_check_loopback)
    )
    port: int = field(default=0, metadata=spec("Admin API port (0: any free port).", minimum=0, maximum=PORT_MAX))
    metrics_public: bool = field(
        default=False, metadata=spec("Serve /metrics without the token (the JSON API always needs it).")
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; each field is a ``[section]`` of the file (or ``[[section]]`` for a tuple)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    dialplan: DialPlanConfig = field(default_factory=DialPlanConfig)
    group: tuple[GroupConfig, ...] = DEMO_GROUPS
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    conference: tuple[ConferenceConfig, ...] = ()
    ivr: IvrConfig = field(default_factory=IvrConfig)
    voicemail: VoicemailConfig = field(default_factory=VoicemailConfig)
    schedule: tuple[ScheduleConfig, ...] = DEMO_SCHEDULES
    queue: tuple[QueueConfig, ...] = DEMO_QUEUES
    agent: tuple[AgentConfig, ...] = ()
    profile: tuple[ProfileConfig, ...] = ()
    trunk: tuple[TrunkConfig, ...] = ()
    route: tuple[RouteConfig, ...] = ()
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with ``section_key=value`` replaced (``sip_port=5070``, ``rtp_port_min=...``).

        Values go through the same checks as the file; ``None`` means "not given" and is skipped. Raises
        :class:`ConfigError` (file ``"command line"``) for a bad value, :class:`TypeError` for an unknown name.
        """
        sections: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            if value is None:
                continue
            section, key = _split_override(name)
            sections.setdefault(section, {})[key] = value
        if not sections:
            return self
        errors = _Errors("command line", None)
        changes: dict[str, Any] = {}
        for section, values in sections.items():
            current = getattr(self, section)
            raw = {f.name: getattr(current, f.name) for f in _fields(type(current))}
            raw.update(values)
            changes[section] = _build(type(current), raw, (section,), errors)
        errors.raise_if_any()
        config = dataclasses.replace(self, **changes)
        for path, message in config.problems():
            errors.add(path, message)
        errors.raise_if_any()
        return config

    def problems(self) -> Iterator[tuple[KeyPath, str]]:
        """Rules that span sections (the dial plan's references to groups), as ``(key path, message)``."""
        yield from dialplan_problems(self.dialplan, self.group, self.features, self.schedule)
        yield from conference_problems(self.conference, self.group, self.features)
        taken = {g.number: f"the number of group {_show(g.name)}" for g in self.group if g.number is not None}
        taken |= {r.number: f"the number of conference {_show(r.name)}" for r in self.conference
                  if r.number is not None}
        taken |= {getattr(self.features, f.name): f"the code of {f.name}" for f in dataclasses.fields(self.features)
                  if getattr(self.features, f.name)}
        yield from queue_problems(self.queue, self.agent, taken, (s.name for s in self.schedule))
        yield from trunk_problems(self)

    def profiles(self) -> dict[str, ProfileConfig]:
        """Shipped profiles, then this file's [[profile]] tables (which replace shipped ones of the same name)."""
        return {**shipped_profiles(), **{p.name: p for p in self.profile}}

    def to_toml(self) -> str:
        """The effective configuration as TOML that :func:`load_config` reads back to an equal Config."""
        head: list[str] = []  # top-level keys (an empty array of tables) must precede every table
        lines: list[str] = []
        for f in _fields(Config):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if not value:
                    head.append(f"{f.name} = []")
                for item in value:
                    lines += _toml_table(f"[[{f.name}]]", f.name, item)
            else:
                lines += _toml_table(f"[{f.name}]", f.name, value)
        return "\n".join([*head, *([""] if head else []), *lines])


def destination_references(config: Config) -> Iterator[tuple[KeyPath, Destination]]:
    """Every destination the configuration names, with its key path (for errors naming file and line).

    The destination registry (:mod:`ccpbx.pbx.destinations`) checks these against the kinds and targets that
    exist when the server is wired; a section that adds destinations adds them here.
    """
    for i, rule in enumerate(config.dialplan.rule):
        yield ("dialplan", "rule", i, "destination"), rule.destination
    for i, group in enumerate(config.group):
        yield ("group", i, "final"), group.final
    yield ("ivr", "fallback"), config.ivr.fallback
    for i, queue in enumerate(config.queue):
        if queue.overflow is not None:
            yield ("queue", i, "overflow"), queue.overflow


def config_problems_error(config: Config, problems: Iterable[tuple[KeyPath, str]]) -> ConfigError | None:
    """``problems`` found outside this module, located in the file ``config`` came from (None if none)."""
    found = list(problems)
    if not found:
        return None
    lines = None
    if config.source is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = _KeyLines(config.source.read_text(encoding="utf-8"))
    errors = _Errors(str(config.source) if config.source is not None else "built-in defaults", lines)
    for path, message in found:
        errors.add(path, message)
    try:
        errors.raise_if_any()
    except ConfigError as exc:
        return exc
    return None


# -- loading ---------------------------------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; ``None`` gives the built-in defaults.

    Raises :class:`ConfigError` naming file, line and key; when several problems exist the earliest one is
    raised and ``.errors`` lists them all.
    """
    if path is None:
        return Config()
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(name, line, "", "not valid UTF-8") from None
    return parse_config(text, name, base_dir=path.parent, source=path)


def parse_config(text: str, file: str = "<string>", *, base_dir: Path | None = None,
                 source: Path | None = None) -> Config:
    """Validate TOML source text; ``file`` names it in errors, relative paths resolve against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(file, text, exc) from None
    except RecursionError:  # tomllib recurses per nesting level: "a = [[[[…" thousands deep
        raise ConfigError(file, None, "", "invalid TOML: arrays or tables nested too deeply") from None
    errors = _Errors(file, _KeyLines(text), base_dir)
    built: dict[str, Any] = {}
    sections = {f.name: f for f in _fields(Config)}
    for name, value in data.items():
        if name in sections:
            continue
        owners = [s for s, f in sections.items() if name in {g.name for g in _fields(_section_type(f))}]
        if not isinstance(value, dict):
            hint = f"; did you mean [{owners[0]}] {name}?" if owners else "; settings belong in a [section]"
            errors.add((name,), f"unknown top-level key{hint}", display=name)
        else:
            errors.add((name,), "unknown section" + _suggest(name, sections), display=f"[{name}]")
    for name, f in sections.items():
        if name in data:
            built[name] = _convert(_hints(Config)[name], data[name], (name,), errors, f)
    errors.raise_if_any()
    config = Config(**built)
    for path, message in config.problems():
        errors.add(path, message)
    errors.raise_if_any()
    return dataclasses.replace(config, source=source)


def _syntax_error(file: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
    if match:
        return ConfigError(file, int(match.group(1)), "", f"invalid TOML: {message[: match.start()]}")
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        return ConfigError(file, max(line, 1), "", f"invalid TOML: {message[: match.start()]} at end of file")
    return ConfigError(file, None, "", f"invalid TOML: {message}")


def _split_override(name: str) -> tuple[str, str]:
    for f in _fields(Config):
        prefix = f.name + "_"
        if name.startswith(prefix) and not _is_array_of_tables(f):
            key = name[len(prefix):]
            if key in {g.name for g in _fields(_section_type(f))}:
                return f.name, key
    raise TypeError(f"unknown config override {name!r} (expected section_key, e.g. sip_port)")


class _Errors:
    """Collects problems during one load, each located by its key path."""

    def __init__(self, file: str, lines: _KeyLines | None, base_dir: Path | None = None) -> None:
        self.file = file
        self.lines = lines
        self.base_dir = base_dir
        self.found: list[ConfigError] = []

    def add(self, path: KeyPath, message: str, *, display: str | None = None) -> None:
        line = self.lines.line_of(path) if self.lines is not None else None
        self.found.append(ConfigError(self.file, line, display or _display_key(path), message))

    def raise_if_any(self) -> None:
        if not self.found:
            return
        ordered = sorted(self.found, key=lambda e: (e.line is None, e.line or 0))
        first = ordered[0]
        first.errors = tuple(ordered)
        raise first


def _display_key(path: KeyPath) -> str:
    """``("sip", "port")`` -> ``[sip] port``; ``("queues", 1, "name")`` -> ``[[queues]] #2 name``.

    An array element followed by a key is a table of an array of tables, named by its header:
    ``("dialplan", "rule", 0, "match")`` -> ``[[dialplan.rule]] #1 match``.
    """
    if not path:
        return ""
    head = f"[{path[0]}]"
    rest = path[1:]
    if rest and isinstance(rest[0], int):
        head = f"[[{path[0]}]] #{rest[0] + 1}"
        rest = rest[1:]
    elif len(rest) >= 3 and isinstance(rest[0], str) and isinstance(rest[1], int) and isinstance(rest[2], str):
        head = f"[[{path[0]}.{rest[0]}]] #{rest[1] + 1}"
        rest = rest[2:]
    tail = ""
    for part in rest:
        tail += f"[{part}]" if isinstance(part, int) else (f".{part}" if tail else str(part))
    return f"{head} {tail}" if tail else head


def _suggest(name: str, candidates: Mapping[str, object] | set[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if close:
        return f'; did you mean "{close[0]}"?'
    return "; expected one of " + ", ".join(f'"{c}"' for c in candidates)


def _show(value: Any) -> str:
    """A value as the user wrote it, TOML-style (strings in double quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, enum.Enum):
        return _show(value.value)
    if isinstance(value, TextValue):
        return json.dumps(str(value), ensure_ascii=False)
    return str(value)


_T = TypeVar("_T")


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _section_type(f: dataclasses.Field[Any]) -> type:
    hint = _hints(Config)[f.name]
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return typing.cast(type, hint)


def _is_array_of_tables(f: dataclasses.Field[Any]) -> bool:
    return typing.get_origin(_hints(Config)[f.name]) is tuple


def _build(cls: type[_T], raw: Mapping[str, Any], path: KeyPath, errors: _Errors) -> _T:
    """Make one section dataclass from a table, recording every problem; returns defaults where bad."""
    fields = {f.name: f for f in _fields(cls)}
    hints = _hints(cls)
    values: dict[str, Any] = {}
    bad = False
    before = len(errors.found)
    for key in raw:
        if key not in fields:
            errors.add((*path, key), "unknown key" + _suggest(key, fields))
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], (*path, name), errors, f)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.add((*path, name), "is required")
            bad = True
    if bad or len(errors.found) > before:
        # Keep collecting errors elsewhere: substitute defaults (a required field gets a placeholder).
        try:
            return cls(**{k: v for k, v in values.items() if v is not _BAD})
        except TypeError:
            return typing.cast(_T, _BAD)
    instance = cls(**values)
    check = getattr(instance, "problems", None)
    if check is not None:
        for key, message in check():
            errors.add((*path, key), message)
    return instance


class _Bad:
    """Placeholder for a value that failed its check (the load fails anyway)."""


_BAD: Any = _Bad()


def _convert(hint: Any, value: Any, path: KeyPath, errors: _Errors, f: dataclasses.Field[Any] | None) -> Any:
    spec: _Spec | None = f.metadata.get("spec") if f is not None else None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        # a number or a keyword (``workers = "auto"``): the keyword's spelling, else the number's checks
        words = [w for a in inner if typing.get_origin(a) is typing.Literal for w in typing.get_args(a)]
        inner = [a for a in inner if typing.get_origin(a) is not typing.Literal]
        if words and isinstance(value, str):
            if value.lower() in words:
                return value.lower()
            alternatives = [_describe(a, spec) for a in inner] + [_show(w) for w in words]
            errors.add(path, f"must be {' or '.join(alternatives)}, got {_show(value)}")
            return _BAD
        return _convert(inner[0], value, path, errors, f)
    if origin is tuple:
        item_hint = args[0]
        what = _describe(item_hint, spec, plural=True)
        if not isinstance(value, list | tuple):
            errors.add(path, f"must be an array of {what}, got {_show(value)}")
            return _BAD
        items = [_convert(item_hint, v, (*path, i), errors, None) for i, v in enumerate(value)]
        if any(item is _BAD for item in items):
            return _BAD
        if spec is not None and spec.non_empty and not items:
            errors.add(path, f"must list at least one of {what}")
            return _BAD
        if spec is not None and spec.unique and len(set(items)) != len(items):
            index = next(i for i, item in enumerate(items) if item in items[:i])
            errors.add((*path, index), f"lists {_show(items[index])} more than once")
            return _BAD
        return _finish(tuple(items), path, errors, spec)
    if isinstance(hint, type) and issubclass(hint, TextValue):
        if isinstance(value, hint):
            return value
        if not isinstance(value, str):
            errors.add(path, f"must be a string, got {_show(value)}")
            return _BAD
        try:
            parsed = hint.parse(value)
        except ValueError as exc:
            errors.add(path, f"{exc}, got {_show(value)}")
            return _BAD
        return _finish(parsed, path, errors, spec)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # already built (with_overrides passes the current sections back in)
            return value
        if not isinstance(value, dict):
            errors.add(path, f"must be a table, got {_show(value)}")
            return _BAD
        return _build(hint, value, path, errors)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        members = {str(m.value).lower(): m for m in hint}
        if isinstance(value, str) and value.lower() in members:
            return members[value.lower()]
        errors.add(path, f"must be {_describe(hint, spec)}, got {_show(value)}")
        return _BAD
    if hint is bool:
        if not isinstance(value, bool):
            errors.add(path, f"must be true or false, got {_show(value)}")
            return _BAD
        return value
    if hint is int or hint is float:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if hint is float:
            ok = ok or isinstance(value, float)
        if ok and spec is not None:
            ok = (spec.minimum is None or value >= spec.minimum) and (spec.maximum is None or value <= spec.maximum)
        if not ok:
            errors.add(path, f"must be {_describe(hint, spec)}, got {_show(value)}")
            return _BAD
        return _finish(float(value) if hint is float else value, path, errors, spec)
    if hint is str:
        if not isinstance(value, str):
            errors.add(path, f"must be a string, got {_show(value)}")
            return _BAD
        if spec is not None and spec.non_empty and not value:
            errors.add(path, "must not be empty")
            return _BAD
        return _finish(value, path, errors, spec)
    if hint is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            errors.add(path, f"must be a path (a non-empty string), got {_show(value)}")
            return _BAD
        resolved = Path(value).expanduser()
        if not resolved.is_absolute() and errors.base_dir is not None:
            resolved = errors.base_dir / resolved
        return resolved
    raise TypeError(f"config schema: unsupported type {hint!r} at {_display_key(path)}")  # a schema bug


def _finish(value: Any, path: KeyPath, errors: _Errors, spec: _Spec | None) -> Any:
    if spec is not None and spec.check is not None:
        message = spec.check(value)
        if message is not None:
            errors.add(path, f"{message}, got {_show(value)}")
            return _BAD
    return value


def _describe(hint: Any, spec: _Spec | None, *, plural: bool = False) -> str:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return ("" if plural else "one of ") + ", ".join(_show(m.value) for m in hint)
    noun = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(hint, "value")
    if isinstance(hint, type) and issubclass(hint, TextValue):
        noun = "string"
    if plural:
        return noun + "s"
    article = "an" if noun[0] in "aeiou" else "a"
    lo = spec.minimum if spec is not None else None
    hi = spec.maximum if spec is not None else None
    if lo is not None and hi is not None:
        return f"{article} {noun} between {lo:g} and {hi:g}"
    if lo is not None:
        return f"{article} {noun} >= {lo:g}"
    if hi is not None:
        return f"{article} {noun} <= {hi:g}"
    return f"{article} {noun}"


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    return _show(value)


def _toml_table(header: str, name: str, section: Any) -> list[str]:
    """``header`` and the keys of one section, then its arrays of tables as ``[[name.key]]``, and a blank."""
    lines: list[str] = [header]
    nested: list[str] = []
    hints = _hints(type(section))
    for f in _fields(type(section)):
        value = getattr(section, f.name)
        if value is None:
            lines.append(f"# {f.name} = (not set)")
        elif _is_table_array(hints[f.name]) and value:
            for item in value:
                nested += _toml_table(f"[[{name}.{f.name}]]", f"{name}.{f.name}", item)
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return [*lines, "", *nested]


def _is_table_array(hint: Any) -> bool:
    if typing.get_origin(hint) is not tuple:
        return False
    item = typing.get_args(hint)[0]
    return isinstance(item, type) and dataclasses.is_dataclass(item) and not issubclass(item, TextValue)


# -- line numbers ----------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]\}\n#]*")


class _KeyLines:
    """Line numbers of the tables, keys and array elements of a valid TOML document (TOML v1.0.0).

    Paths are tuples like ``("sip", "port")``, ``("auth", "algorithms", 1)`` or ``("queues", 0, "name")`` —
    the same paths the loader builds while walking the parsed data. Inline tables are followed too. Best
    effort: an unexpected construct stops the scan and the keys found so far are kept.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self._arrays: dict[KeyPath, int] = {}
        self.lines: dict[KeyPath, int] = {}
        try:
            self._document()
        except (IndexError, ValueError):
            pass

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest enclosing table or key."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def _line(self) -> int:
        return bisect.bisect_left(self._newlines, self._pos) + 1

    def _record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def _peek(self, s: str) -> bool:
        return self._text.startswith(s, self._pos)

    def _expect(self, s: str) -> None:
        if not self._peek(s):
            raise ValueError(f"expected {s!r} at {self._pos}")
        self._pos += len(s)

    def _skip_ws(self) -> None:
        while self._pos < len(self._text) and self._text[self._pos] in " \t":
            self._pos += 1

    def _skip_blank(self) -> None:
        text = self._text
        while self._pos < len(text):
            c = text[self._pos]
            if c in " \t\r\n":
                self._pos += 1
            elif c == "#":
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                break

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._text[self._pos]
            if c in "\"'":
                start = self._pos
                self._string()
                parts.append(str(tomllib.loads("k = " + self._text[start:self._pos])["k"]))
            else:
                match = _BARE_KEY.match(self._text, self._pos)
                if match is None:
                    raise ValueError(f"bad key at {self._pos}")
                parts.append(match.group())
                self._pos = match.end()
            self._skip_ws()
            if not self._peek("."):
                return parts
            self._pos += 1

    def _resolve(self, keys: list[str]) -> KeyPath:
        # A header path walks through arrays of tables into their latest element.
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self._arrays:
                path = (*path, self._arrays[path])
        return path

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank()
            if self._pos >= len(self._text):
                return
            line = self._line()
            if self._peek("[["):
                self._pos += 2
                keys = self._key()
                self._expect("]]")
                base = (*self._resolve(keys[:-1]), keys[-1])
                index = self._arrays.get(base, -1) + 1
                self._arrays[base] = index
                self._record(base, line)
                table = (*base, index)
                self._record(table, line)
            elif self._peek("["):
                self._pos += 1
                keys = self._key()
                self._expect("]")
                table = self._resolve(keys)
                self._record(table, line)
            else:
                self._pair(table, line)

    def _pair(self, table: KeyPath, line: int) -> None:
        keys = self._key()
        self._expect("=")
        for i in range(1, len(keys) + 1):
            self._record((*table, *keys[:i]), line)
        self._skip_ws()
        self._value((*table, *keys))

    def _string(self) -> None:
        text = self._text
        for quote in ('"""', "'''"):
            if self._peek(quote):
                self._pos += 3
                while not self._peek(quote):
                    self._pos += 2 if quote == '"""' and text[self._pos] == "\\" else 1
                    if self._pos >= len(text):
                        raise ValueError("unterminated string")
                self._pos += 3
                # Up to two quotes may end the content right before the delimiter (TOML v1.0.0).
                for _ in range(2):
                    if self._peek(quote[0]):
                        self._pos += 1
                return
        quote = text[self._pos]
        self._pos += 1
        while text[self._pos] != quote:
            self._pos += 2 if quote == '"' and text[self._pos] == "\\" else 1
        self._pos += 1

    def _value(self, path: KeyPath) -> None:
        c = self._text[self._pos]
        if c in "\"'":
            self._string()
        elif c == "[":
            self._pos += 1
            index = 0
            while True:
                self._skip_blank()
                if self._peek("]"):
                    self._pos += 1
                    return
                self._record((*path, index), self._line())
                self._value((*path, index))
                self._skip_blank()
                if self._peek(","):
                    self._pos += 1
                    index += 1
        elif c == "{":
            self._pos += 1
            while True:
                self._skip_ws()
                if self._peek("}"):
                    self._pos += 1
                    return
                self._pair(path, self._line())
                self._skip_ws()
                if self._peek(","):
                    self._pos += 1
        else:
            match = _SCALAR.match(self._text, self._pos)
            assert match is not None  # the pattern matches the empty string
            self._pos = match.end()
