"""SIP and SIPS URIs (RFC 3261 §19.1) and name-addr / addr-spec (§20.10, §25.1).

Values are immutable; ``with_*`` methods return changed copies. Serialising is the inverse of parsing:
``SipUri.parse(str(uri)) == uri``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.grammar import DISPLAY_TOKENS_RE, HOSTPORT_RE, PASSWORD_RE, QUOTED_STRING, TOKEN_RE, USER_RE

Params = tuple[tuple[str, str | None], ...]

DEFAULT_PORTS = {"sip": 5060, "sips": 5061}


# Parameter names (tag, branch, rport, transport...) shared by every parsed value: kept messages hold no copies.
# Bounded: names past the cap are checked and kept as parsed.
UNSET = object()  # a lazily computed value not computed yet (None is a value: no such parameter)

PARAM_NAME_CACHE_ENTRIES = 1_024
_PARAM_NAMES: dict[str, str] = {}


def parse_params(text: str, sep: str = ";") -> Params:
    """Parse ``;name=value;flag`` (one leading separator optional) into ordered pairs; quoted values kept quoted.

    An empty parameter (``;;``, a trailing ``;``) is a syntax error (RFC 4475 §3.1.2.1).
    """
    parts = split_quoted(text, sep)
    if not parts[0].strip():
        del parts[0]
    out: list[tuple[str, str | None]] = []
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip()
        shared = _PARAM_NAMES.get(name)
        if shared is None:
            if not name or not TOKEN_RE.match(name):
                raise SipParseError(f"bad parameter {part!r}")
            shared = name
            if len(_PARAM_NAMES) < PARAM_NAME_CACHE_ENTRIES:
                _PARAM_NAMES[name] = name
        out.append((shared, value.strip() if eq else None))
    return tuple(out)


def format_params(params: Params, sep: str = ";") -> str:
    if not params:
        return ""
    return "".join([f"{sep}{k}" if v is None else f"{sep}{k}={v}" for k, v in params])


def get_param(params: Params, name: str) -> str | None:
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v
    return None


def has_param(params: Params, name: str) -> bool:
    lname = name.lower()
    return any(k.lower() == lname for k, _ in params)


def set_param(params: Params, name: str, value: str | None) -> Params:
    lname = name.lower()
    out = [(k, v) for k, v in params if k.lower() != lname]
    out.append((name, value))
    return tuple(out)


def remove_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple((k, v) for k, v in params if k.lower() != lname)


def split_quoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (with backslash escapes) and angle brackets."""
    if '"' not in text and "<" not in text:
        return text.split(sep)  # the common case needs no scan
    parts: list[str] = []
    depth = 0
    start = 0
    # A token at a time (a quoted string, a bracket, the separator, or a run of anything else), not a character
    # at a time: a Digest header is a dozen tokens but 300 characters.
    for m in _split_tokens(sep).finditer(text):
        token = m.group()
        c = token[0]
        if c == '"':
            if len(token) == 1:  # a quote with no closing quote after it (escapes counted)
                raise SipParseError(f"unterminated quoted string in {text!r}")
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif token == sep and depth == 0:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return parts


_SPLIT_TOKENS: dict[str, re.Pattern[str]] = {}


def _split_tokens(sep: str) -> re.Pattern[str]:
    """Quoted string (escapes included) | a quote left open | < | > | the separator | a run of anything else."""
    pattern = _SPLIT_TOKENS.get(sep)
    if pattern is None:
        if len(sep) != 1 or sep in '"<>\\':
            raise ValueError(f"split_quoted splits on one plain character, not {sep!r}")
        s = re.escape(sep)
        # the quoted string's loop unrolled (a run of plain characters, then escapes each followed by a run): the same
        # strings, without a trip round the alternation per character of a 40-character nonce
        pattern = _SPLIT_TOKENS[sep] = re.compile(rf'"[^"\\]*(?:\\.[^"\\]*)*"|"|<|>|{s}|[^"<>{s}]+', re.DOTALL)
    return pattern


_ESCAPE_RE = re.compile(r"\\(.)")


def unquote_string(value: str) -> str:
    """The content of a quoted-string with its escapes resolved; unquoted tokens come back as they are."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        # Escapes are rare (digest parameters never have them): skip the regex on the common path.
        return _ESCAPE_RE.sub(r"\1", inner) if "\\" in inner else inner
    return value


def quote_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class SipUri:
    """``sip:`` / ``sips:`` URI. ``host`` keeps brackets off IPv6 (``::1``); ``port`` None means default."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: Params = ()

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise SipParseError(f"not a SIP URI: {text!r}", 416)
        # userinfo may itself contain ';' '?' '/' (§25.1 user-unreserved) but never '@', which appears in no
        # other part of a SIP-URI: so the last '@' ends it (RFC 4475 §3.1.1.2, §3.1.1.9).
        at = rest.rfind("@")
        user = password = None
        if at != -1:
            userinfo, hostpart = rest[:at], rest[at + 1:]
            user, pcolon, pw = userinfo.partition(":")
            if not user or not USER_RE.match(user):
                raise SipParseError(f"bad user in URI {text!r}")
            if pcolon:
                if not PASSWORD_RE.match(pw):
                    raise SipParseError(f"bad password in URI {text!r}")
                password = pw
        else:
            hostpart = rest
        hostpart, qmark, hdrs = hostpart.partition("?")
        if qmark and not hdrs:
            raise SipParseError(f"empty headers in URI {text!r}")
        headers = parse_params(hdrs, "&") if qmark else ()
        hostport, semi, params_text = hostpart.partition(";")
        m = HOSTPORT_RE.match(hostport)
        if not m:
            raise SipParseError(f"bad host in URI {text!r}")
        host = m.group(1)
        if host.startswith("["):
            host = host[1:-1]
        port = int(m.group(2)) if m.group(2) else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError(f"bad port in URI {text!r}")
        params = parse_params(";" + params_text) if semi else ()
        return cls(scheme, user, password, host, port, params, headers)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + format_params(self.headers, "&")[1:])
        return "".join(out)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def hostport(self) -> tuple[str, int]:
        return self.host, self.port or DEFAULT_PORTS.get(self.scheme, 5060)

    @property
    def transport(self) -> str | None:
        value = get_param(self.params, "transport")
        return value.lower() if value else None

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        return replace(self, params=set_param(self.params, name, value))

    def without_param(self, name: str) -> SipUri:
        return replace(self, params=remove_param(self.params, name))

    def with_host(self, host: str, port: int | None) -> SipUri:
        return replace(self, host=host, port=port)

    def with_user(self, user: str | None) -> SipUri:
        return replace(self, user=user, password=None)

    def address_of_record(self) -> SipUri:
        """The URI reduced to scheme, user and host (RFC 3261 §10.3 step 5 canonical AOR)."""
        return SipUri(self.scheme, self.user, None, self.host.lower(), None)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of another scheme (``tel:``, ``mailto:``, ``urn:``), carried opaquely (RFC 3261 §19.1.6)."""

    scheme: str
    opaque: str

    @classmethod
    def parse(cls, text: str) -> AbsoluteUri:
        scheme, colon, rest = text.strip().partition(":")
        if not colon or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", scheme) or not rest or " " in rest:
            raise SipParseError(f"bad URI {text!r}")
        return cls(scheme.lower(), rest)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | AbsoluteUri


def _parse_uri(text: str) -> Uri:
    scheme = text.strip().partition(":")[0].lower()
    if scheme in ("sip", "sips"):
        return SipUri.parse(text)
    return AbsoluteUri.parse(text)


# URIs are frozen values and the ones a PBX reads repeat: every in-dialog request's Request-URI is our own Contact,
# a new call's names an extension, each phone's Contact and From URI stay the same (only the tags around them
# change): one parse per distinct text serves them all (ten parses a call before). Bounded like the header caches
# (``message.PARSE_CACHE_ENTRIES``); a text that does not parse raises every time.
parse_uri = functools.lru_cache(maxsize=2048)(_parse_uri)


_QUOTED_RE = re.compile(QUOTED_STRING, re.DOTALL)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact, Route, Refer-To …, RFC 3261 §20).

    Header parameters (``tag``, ``expires``, ``q``) are in ``params``; URI parameters stay in ``uri``. In the
    addr-spec form (no angle brackets) every parameter belongs to the header (§20.10). ``display_name`` is stored
    unquoted; an unquoted display name must be tokens separated by LWS (§25.1, RFC 4475 §3.1.2.15).
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()
    # the tag parameter, looked up on first use: a From or To is parsed once (cached) and its tag read a dozen
    # times a call (dialog and transaction matching)
    _tag: str | object | None = field(default=UNSET, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        # A hand scan rather than one regular expression: a backtracking pattern over "display <uri>" is
        # quadratic on hostile input (long runs of spaces with no '<').
        text = text.strip()
        display: str | None = None
        if text.startswith('"'):
            m = _QUOTED_RE.match(text)
            if not m:
                raise SipParseError(f"unterminated quoted display name {text!r}")
            display = unquote_string(m.group(0))
            rest = text[m.end():].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipParseError(f"quoted display name without <uri> {text!r}")
            lt = 0
            text = rest
        else:
            lt = text.find("<")
            # A token display name never contains ':' or '"'; a '<' after them is inside an addr-spec parameter.
            if lt != -1 and (":" in text[:lt] or '"' in text[:lt]):
                lt = -1
        if lt != -1:
            if display is None:
                name = text[:lt].strip(" \t")
                if name:
                    if not DISPLAY_TOKENS_RE.match(name):
                        raise SipParseError(f"display name must be tokens or a quoted string: {name!r}")
                    display = name
            gt = text.find(">", lt)
            if gt == -1:
                raise SipParseError(f"missing '>' in {text!r}")
            # Spaces inside the brackets are tolerated (RFC 4475 §3.1.2.14 allows a liberal element to ignore them).
            uri = parse_uri(text[lt + 1:gt])
            after = text[gt + 1:].strip()
            if after and not after.startswith(";"):
                raise SipParseError(f"bad name-addr {text!r}")
            return cls(uri, display, parse_params(after) if after else ())
        # addr-spec: everything after the first ';' is a header parameter (§20.10); a URI containing ',' '?' or
        # ';' must be bracketed (§20), so those characters here are errors (RFC 4475 §3.1.2.13).
        uri_text, semi, rest = text.partition(";")
        uri_text = uri_text.rstrip(" \t")
        if not uri_text or any(c in uri_text for c in ' \t,?"<>'):
            raise SipParseError(f"bad address {text!r}")
        return cls(parse_uri(uri_text), None, parse_params(";" + rest) if semi else ())

    def __str__(self) -> str:
        name = f"{quote_string(self.display_name)} " if self.display_name is not None else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        tag = self._tag
        if tag is UNSET:
            tag = get_param(self.params, "tag")
            object.__setattr__(self, "_tag", tag)
        return tag  # type: ignore[return-value]

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        return NameAddr(self.uri, self.display_name, set_param(self.params, name, value))  # (not replace: slower)

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise SipParseError(f"expected a SIP URI, got {self.uri}", 416)
        return self.uri


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

