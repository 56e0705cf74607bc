"""SIP header fields (RFC 3261 §7.3, §20): an ordered, case-insensitive collection kept as received.

Every header keeps its raw name (casing, compact form) and value, so a B2BUA passes unknown headers through
untouched. The few headers the core uses are typed on demand (``Via``, ``CSeq``, digest parameters).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ccpbx.pbx.sip.errors import SipLocalError, SipParseError
from ccpbx.pbx.sip.grammar import DIGITS_RE, TOKEN, TOKEN_RE, VIA_RE
from ccpbx.pbx.sip.uri import (
    UNSET,
    HostPort,
    Params,
    format_params,
    get_param,
    has_param,
    parse_params,
    quote_string,
    remove_param,
    set_param,
    split_quoted,
    unquote_string,
)

# RFC 3261 §7.3.3 and the registries that followed (RFC 3265, 3515, 3841, 4028, 4474).
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
    "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "o": "event", "u": "allow-events",
    "r": "refer-to", "b": "referred-by", "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

# Canonical spellings used when we create a header ourselves.
CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
    "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag", "sip-if-match": "SIP-If-Match",
}

# Headers whose grammar is a comma-separated list (§7.3.1); the others may contain bare commas
# (Date, WWW-Authenticate, Authorization, …) and are never split.
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "content-encoding", "allow-events",
    "path", "service-route", "in-reply-to", "alert-info", "call-info", "error-info", "warning",
    "reply-to", "accept-contact", "reject-contact", "request-disposition", "p-asserted-identity",
})


CANONICAL_NAME_CACHE_ENTRIES = 1_024  # names asked for (ours are a few dozen); peers' odd ones are not kept beyond


def canonical_name(name: str) -> str:
    """The lower-case long form of a header name: ``v`` and ``VIA`` both give ``via``."""
    cached = _CANONICAL_NAMES.get(name)
    if cached is not None:
        return cached
    lname = name.lower()
    lname = COMPACT_FORMS.get(lname, lname)
    if len(_CANONICAL_NAMES) < CANONICAL_NAME_CACHE_ENTRIES:
        _CANONICAL_NAMES[name] = lname
    return lname


_CANONICAL_NAMES: dict[str, str] = {}  # "Call-ID" -> "call-id", "v" -> "via": every header look-up asks


def display_name(lname: str) -> str:
    """The spelling we use for a header we create (``call-id`` -> ``Call-ID``, ``via`` -> ``Via``)."""
    return CANONICAL.get(lname) or "-".join(p.capitalize() for p in lname.split("-"))


def split_values(lname: str, value: str) -> list[str]:
    if lname not in LIST_HEADERS or "," not in value:
        return [value]
    return [v.strip() for v in split_quoted(value, ",") if v.strip()]


class Headers:
    """Ordered header fields. Lookups are by name, case-insensitive, compact forms included.

    ``get_all`` returns the values with comma lists split (so three Via lines and one line of three Vias
    look the same); the stored lines are what serialising writes back. ``typed`` holds what a message's typed
    accessors parsed (its Call-ID, CSeq, top Via, From, To) and is emptied by every change.
    """

    __slots__ = ("_fields", "_first", "typed")

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        self._fields: list[tuple[str, str, str]] = [
            (canonical_name(n), n, v) for n, v in (fields or [])
        ]
        # Position of each name's first field, built on the first lookup and dropped by every change, so a
        # lookup on the hot path (``in``, ``get``) is one dict probe rather than a scan of every line.
        self._first: dict[str, int] | None = None
        self.typed: dict[str, object] = {}

    @classmethod
    def _from_parsed(cls, fields: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._fields = fields
        h._first = None
        h.typed = {}
        return h

    def _changed(self) -> None:
        """The fields changed: what was derived from them (the look-up index, the typed values) goes."""
        self._first = None
        if self.typed:
            self.typed = {}

    def _index(self) -> dict[str, int]:
        first = self._first
        if first is None:
            first = {}
            for i, f in enumerate(self._fields):
                if f[0] not in first:
                    first[f[0]] = i
            self._first = first
        return first

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._fields))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, raw, value in self._fields:
            yield raw, value

    def __len__(self) -> int:
        return len(self._fields)

    def names(self) -> set[str]:
        """The canonical (lower-case, compact forms expanded) names of the fields present."""
        return set((self._first if self._first is not None else self._index()).keys())

    def __contains__(self, name: str) -> bool:
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        return lname in (self._first if self._first is not None else self._index())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(a, c) for a, _, c in self._fields] == [(a, c) for a, _, c in other._fields]

    def __repr__(self) -> str:
        return f"Headers({[(r, v) for _, r, v in self._fields]!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (the whole line for list headers is split: its first element)."""
        # the look-ups on every message's way through: the cached name and index first, no call when they hit
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        i = (self._first if self._first is not None else self._index()).get(lname)
        if i is None:
            return default
        value = self._fields[i][2]
        if lname in LIST_HEADERS and "," in value:
            return split_values(lname, value)[0]
        return value

    def firsts(self, lnames: tuple[str, ...]) -> list[str | None]:
        """The first value of each canonical name (lower-case long form) that is not a list header, None where
        absent: what ``get`` gives for each, in one call (a response copies four of its request's)."""
        first = self._first if self._first is not None else self._index()
        fields = self._fields
        out: list[str | None] = []
        for lname in lnames:
            i = first.get(lname)
            out.append(None if i is None else fields[i][2])
        return out

    def get_all(self, name: str) -> list[str]:
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        out: list[str] = []
        start = (self._first if self._first is not None else self._index()).get(lname)
        if start is None:
            return out
        listed = lname in LIST_HEADERS
        for key, _, value in self._fields[start:]:
            if key == lname:
                if listed and "," in value:  # split_values' test, here: most values are one item
                    out.extend(split_values(lname, value))
                else:
                    out.append(value)
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        self._first = None  # what _changed() does, inline: a message being built adds a dozen fields
        if self.typed:
            self.typed = {}
        entry = (lname, display_name(lname) if name == lname else name, value)
        if first:
            self._fields.insert(0, entry)
        else:
            self._fields.append(entry)

    def set(self, name: str, value: str) -> None:
        """Replace every field of ``name`` by one, kept at the position of the first."""
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        self._changed()
        for i, (key, raw, _) in enumerate(self._fields):
            if key == lname:
                self._fields[i] = (key, raw, value)
                self._fields[i + 1:] = [f for f in self._fields[i + 1:] if f[0] != lname]
                return
        self.add(name, value)

    def set_all(self, name: str, values: list[str]) -> None:
        """Replace every field of ``name`` by one line per value, at the position of the first."""
        lname = canonical_name(name)
        self._changed()
        pos = next((i for i, f in enumerate(self._fields) if f[0] == lname), len(self._fields))
        raw = display_name(lname)
        rest = [f for f in self._fields if f[0] != lname]
        pos = min(pos, len(rest))
        rest[pos:pos] = [(lname, raw, v) for v in values]
        self._fields = rest

    def remove(self, name: str) -> None:
        lname = canonical_name(name)
        self._changed()
        self._fields = [f for f in self._fields if f[0] != lname]

    def replace_first(self, name: str, value: str) -> bool:
        """Replace the first value of ``name`` (one element of a comma list) in place; False when absent.
        Field positions do not move, so the look-up index stays valid (a received request's top Via is
        stamped this way)."""
        lname = _CANONICAL_NAMES.get(name) or canonical_name(name)
        i = (self._first if self._first is not None else self._index()).get(lname)
        if i is None:
            return False
        key, raw, current = self._fields[i]
        values = split_values(lname, current)
        self._fields[i] = (key, raw, value if len(values) == 1 else ", ".join([value, *values[1:]]))
        # positions did not move: the index stays; of the typed values only this header's goes (a received
        # request's Call-ID, CSeq, From and To, parsed when it was validated, stay parsed past its Via stamp)
        self.typed.pop(lname, None)
        return True

    def pop_first(self, name: str) -> str | None:
        """Remove the first value of ``name`` (one element of a comma list) and return it."""
        lname = canonical_name(name)
        self._changed()
        for i, (key, raw, value) in enumerate(self._fields):
            if key == lname:
                values = split_values(lname, value)
                if len(values) > 1:
                    self._fields[i] = (key, raw, ", ".join(values[1:]))
                else:
                    del self._fields[i]
                return values[0]
        return None

    def encode_lines(self) -> list[str]:
        # An empty value is written "Name:" (baresip sends "Supported:"), so such a line round-trips exactly.
        return [f"{raw}: {value}" if value else f"{raw}:" for _, raw, value in self._fields]


_STAMPED_PARAMS = frozenset({"rport", "received"})


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 ``rport``)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    version: str = "2.0"
    _branch: str | object | None = field(default=UNSET, init=False, repr=False, compare=False)  # on first use

    @classmethod
    def parse(cls, text: str) -> Via:
        m = VIA_RE.match(text.strip())
        if not m:
            raise SipParseError(f"bad Via {text!r}")
        version, transport, host, port, rest = m.groups()
        if host.startswith("["):
            host = host[1:-1]
        rest = rest.strip()
        if rest and not rest.startswith(";"):
            raise SipParseError(f"bad Via parameters {text!r}")
        port_n = int(port) if port else None
        if port_n is not None and not 0 < port_n < 65536:
            raise SipParseError(f"bad Via port {text!r}")
        return cls(transport.upper(), host, port_n, parse_params(rest) if rest else (), version)

    def __str__(self) -> str:
        return f"SIP/{self.version}/{self.transport} {HostPort(self.host, self.port)}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        branch = self._branch
        if branch is UNSET:
            branch = get_param(self.params, "branch")
            object.__setattr__(self, "_branch", branch)
        return branch  # type: ignore[return-value]

    @property
    def received(self) -> str | None:
        return get_param(self.params, "received")

    @property
    def rport(self) -> int | None:
        value = get_param(self.params, "rport")
        if value and len(value) <= 5 and DIGITS_RE.fullmatch(value):
            port = int(value)
            return port if 0 < port < 65536 else None
        return None

    @property
    def wants_rport(self) -> bool:
        return has_param(self.params, "rport")

    @property
    def sent_by(self) -> tuple[str, int]:
        default = 5061 if self.transport in ("TLS", "WSS") else 5060
        return self.host, self.port or default

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        # the constructor, not dataclasses.replace (several times slower): every received request is stamped
        return Via(self.transport, self.host, self.port, set_param(self.params, name, value), self.version)

    def stamped(self, host: str, port: int) -> Via:
        """This Via with ``rport`` filled with ``port`` and ``received`` set to ``host`` (RFC 3581 §4), in one
        pass: what ``with_param("rport", ...)`` then ``with_param("received", ...)`` give."""
        kept = [(k, v) for k, v in self.params if k.lower() not in _STAMPED_PARAMS]
        kept += (("rport", str(port)), ("received", host))
        return Via(self.transport, self.host, self.port, tuple(kept), self.version)

    def without_param(self, name: str) -> Via:
        return Via(self.transport, self.host, self.port, remove_param(self.params, name), self.version)

    def response_address(self, source: tuple[str, int] | None) -> tuple[str, int]:
        """Where a response to this Via goes over an unreliable transport (RFC 3261 §18.2.2, RFC 3581 §4)."""
        maddr = self.param("maddr")
        if maddr:
            return maddr, self.port or 5060
        if self.received or source is not None:
            host = self.received or (source[0] if source else self.host)
            rport = self.rport
            if rport is None and self.wants_rport and source is not None:
                rport = source[1]
            return host, rport or self.port or 5060
        return self.sent_by


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: 314159 INVITE`` (RFC 3261 §20.16); the number is below 2**31."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not DIGITS_RE.fullmatch(parts[0]) or not TOKEN_RE.match(parts[1]):
            raise SipParseError(f"bad CSeq {text!r}")
        # Checked on the digit count first: int() of thousands of digits is slow, and raises ValueError.
        seq = int(parts[0]) if len(parts[0].lstrip("0")) <= 10 else 2**31
        if seq >= 2**31:
            raise SipParseError(f"CSeq number too large {text!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class AuthParams:
    """A challenge or credentials: ``Digest realm="x", nonce="y", …`` (RFC 3261 §25, RFC 7616 §3.3-3.4).

    ``params`` maps lower-cased names to unquoted values; ``quoted`` records which were quoted on the wire.
    """

    scheme: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> AuthParams:
        text = text.strip()
        scheme, _, rest = text.partition(" ")
        if not scheme or not TOKEN_RE.match(scheme):
            raise SipParseError(f"bad auth header {text!r}")
        params = _auth_params_fast(rest)
        if params is None:  # anything unusual (escapes, brackets, empty items, errors): the general way
            params = _auth_params_general(rest)
        return cls(scheme, tuple(params))

    def get(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    def as_dict(self) -> dict[str, str]:
        return dict(self.params)


# One ``name = value`` of a challenge or credentials, then a comma or the end: what every phone sends. Values are
# a quoted string or a run of anything but white space, commas, quotes and angle brackets.
_AUTH_PARAM_RE = re.compile(rf'\s*({TOKEN})\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"<>]*)\s*(?:,|$)', re.DOTALL)


def _auth_params_fast(rest: str) -> list[tuple[str, str]] | None:
    """The parameters of the common form in one regex pass, or None for anything else (then
    :func:`_auth_params_general`, which gives the same answer or the error): Digest credentials on every
    REGISTER and INVITE, parsed a token at a time, were a tenth of a registration's CPU."""
    params: list[tuple[str, str]] = []
    pos, end = 0, len(rest)
    match = _AUTH_PARAM_RE.match
    while pos < end:
        m = match(rest, pos)  # never empty: a name and "=" at least
        if m is None:
            return None if rest[pos:].strip() else params
        params.append((m.group(1).lower(), unquote_string(m.group(2))))
        pos = m.end()
    return params


def _auth_params_general(rest: str) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for part in split_quoted(rest, ","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not TOKEN_RE.match(name):
            raise SipParseError(f"bad auth parameter {part!r}")
        params.append((name, unquote_string(value.strip())))
    return params


# Parameters sent as tokens, not quoted strings (RFC 7616 §3.3, §3.4).
UNQUOTED_AUTH_PARAMS = frozenset({"algorithm", "stale", "nc", "qop_response"})


def format_auth(scheme: str, params: list[tuple[str, str]], quoted: frozenset[str] | None = None) -> str:
    """``Digest realm="x", algorithm=MD5`` with everything but the token-valued parameters quoted."""
    parts = []
    for name, value in params:
        as_token = name in UNQUOTED_AUTH_PARAMS if quoted is None else name not in quoted
        parts.append(f"{name}={value}" if as_token else f"{name}={quote_string(value)}")
    return f"{scheme} " + ", ".join(parts)


def extra_headers(headers: Iterable[tuple[str, str]], own: frozenset[str]) -> list[tuple[str, str]]:
    """Headers a caller adds to requests a core builds: token names, none of the core's ``own`` (canonical
    names), no line breaks in values. Raises :class:`SipLocalError` (our API misused)."""
    extra = list(headers)
    for name, value in extra:
        if not TOKEN_RE.match(name) or canonical_name(name) in own:
            raise SipLocalError(f"header {name!r} is not an extra header")
        if "\r" in value or "\n" in value:
            raise SipLocalError(f"line break in header {name!r}")
    return extra
