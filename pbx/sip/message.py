"""SIP requests and responses (RFC 3261 §7, §20, §25): parsing and the exact inverse, serialising.

Headers are kept as received and typed lazily: a message that only passes through never has its Contact
parsed. ``parse_message`` returns a ``Request`` or ``Response`` or raises ``SipParseError``, whatever the bytes.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.grammar import DIGITS_RE, HEADER_NAME_RE, REQUEST_LINE_RE, STATUS_LINE_RE
from ccpbx.pbx.sip.headers import CSeq, Headers, Via, canonical_name
from ccpbx.pbx.sip.headers import split_values as split_values_of
from ccpbx.pbx.sip.uri import NameAddr, SipUri, Uri, format_params, parse_uri

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
MAX_MESSAGE_BYTES = 65_535  # one UDP datagram; also the cap on a stream message's headers
MAX_BODY_BYTES = 1_048_576

# RFC 3261 §21 and the extensions we answer with.
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

REQUIRED_REQUEST_HEADERS = ("via", "from", "to", "call-id", "cseq")
# Headers that may appear once only (§20; RFC 4475 §3.3.8 multi01, §3.3.9 mcl01): a second one is a 400.
SINGLE_HEADERS = frozenset({"from", "to", "call-id", "cseq", "max-forwards", "content-length"})
MAX_INT_HEADER = 2**32 - 1  # §20.19 delta-seconds and friends: larger values are malformed
# Bytes that are not UTF-8 survive decoding as lone surrogates (surrogateescape), so a message we only pass on
# goes back out byte for byte. The identifiers the core hashes, stores and compares (Call-ID, tags, branches,
# URIs) are ASCII in the §25 grammar; a non-UTF-8 byte there is a 400, never a value deeper code must encode.
_UNDECODABLE_RE = re.compile("[\udc80-\udcff]")
# Headers whose URI and parameters (not the display name, which may be any text) must be decodable.
_ADDRESS_HEADERS = ("from", "to", "contact", "route", "record-route")


RANDOM_POOL_BYTES = 4096  # what one read from the OS's random source serves: about 150 calls' identifiers


class _RandomPool(threading.local):
    """The OS's cryptographic random bytes (what ``secrets`` reads), read a few KB at a time, each byte used
    once: a call's eight tags, branches and Call-IDs were eight system calls. One pool per thread, and a forked
    child starts with an empty one (it must not hand out its parent's next bytes)."""

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0


_POOL = _RandomPool()


def _forget_pool() -> None:
    global _POOL
    _POOL = _RandomPool()


os.register_at_fork(after_in_child=_forget_pool)


def random_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes, as unpredictable as ``secrets.token_bytes(nbytes)`` (the same source, read ahead)."""
    pool = _POOL
    pos = pool.pos
    end = pos + nbytes
    if end > len(pool.data):
        pool.data = os.urandom(max(RANDOM_POOL_BYTES, nbytes))
        pos, end = 0, nbytes
    pool.pos = end
    return pool.data[pos:end]


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as hex, as unpredictable as ``secrets.token_hex(nbytes)``."""
    return random_bytes(nbytes).hex()


def new_branch() -> str:
    return MAGIC_COOKIE + random_hex(8)


def new_tag() -> str:
    return random_hex(6)


def new_call_id(host: str = "") -> str:
    token = random_hex(12)
    return f"{token}@{host}" if host else token


# The typed headers are frozen values, so one parse per distinct header text serves every access: a call's
# From, To, Via and CSeq are read many times on the way through the stack (calls per second is a headline).
# 2,048 and not more: most entries are one message's (each call's branches and tags are new), kept only to be
# walked by every full collection; 8,192 of each kind made a quarter of the objects tracked at 900
# registrations/s. Alternating runs: the same CPU per call, 0.68-0.79 ms per registration against 0.80-0.91.
PARSE_CACHE_ENTRIES = 2048
_name_addr_of = functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)(NameAddr.parse)
_cseq_of = functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)(CSeq.parse)
_VIAS: dict[str, Via] = {}  # not an lru_cache: the Via we stamp on a received request is put in parsed


def _via_of(value: str) -> Via:
    """The Via ``value`` holds; of a line of several, the top one."""
    via = _VIAS.get(value)
    if via is None:
        top = split_values_of("via", value)[0] if "," in value else value
        via = _remember_via(value, Via.parse(top))
    return via


# How each header the core reads typed is parsed from its first value, and what its absence is called (an empty
# value is as missing as an absent one): the typed accessors of Message and the parser's validation (which
# fills them for every message) share these.
_TYPED_PARSERS: dict[str, Callable[[str], object]] = {
    "call-id": str.strip, "cseq": _cseq_of, "via": _via_of, "from": _name_addr_of, "to": _name_addr_of,
}
_TYPED_SPELLING = {"call-id": "Call-ID", "cseq": "CSeq", "via": "Via", "from": "from", "to": "to"}


def via_text(via: Via) -> str:
    """``via`` as a header value, kept parsed: a request built with it does not parse its own Via again (the
    transaction layer reads the branch of every request it sends)."""
    text = str(via)
    _remember_via(text, via)
    return text


def _remember_via(text: str, via: Via) -> Via:
    if len(_VIAS) >= PARSE_CACHE_ENTRIES:
        del _VIAS[next(iter(_VIAS))]  # the oldest: each transaction's branch makes its Via one of a kind
    _VIAS[text] = via
    return via


@dataclass(eq=False, slots=True)
class Message:
    """What requests and responses share. ``headers`` is mutable; a typed accessor parses once until they change."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # ---- typed accessors for the headers the core uses --------------------------------------------------
    # Each parses on first access and keeps the value in ``headers.typed`` until the headers change: a call's
    # Call-ID, CSeq, Via, From and To are read ~150 times on their way through the stack.
    @property
    def call_id(self) -> str:
        value = self.headers.typed.get("call-id")
        return value if value is not None else self._typed("call-id")  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        value = self.headers.typed.get("cseq")
        return value if value is not None else self._typed("cseq")  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        return [_via_of(v) for v in self.headers.get_all("via")]

    @property
    def via(self) -> Via:
        value = self.headers.typed.get("via")
        return value if value is not None else self._typed("via")  # type: ignore[return-value]

    def set_top_via(self, via: Via) -> None:
        """Replace the top Via by ``via``, kept parsed: the next :attr:`via` does not parse it again."""
        text = via_text(via)
        headers = self.headers
        if not headers.replace_first("via", text):
            headers.add("Via", text, first=True)
        headers.typed["via"] = via

    @property
    def from_(self) -> NameAddr:
        value = self.headers.typed.get("from")
        return value if value is not None else self._typed("from")  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        value = self.headers.typed.get("to")
        return value if value is not None else self._typed("to")  # type: ignore[return-value]

    def _typed(self, name: str) -> object:
        """Header ``name`` parsed, kept in ``headers.typed`` until the headers change (the accessors look there
        first themselves, which saves a Python call a read)."""
        raw = self.headers.get(name)
        if not raw:
            raise SipParseError(f"missing {_TYPED_SPELLING[name]}")
        value = self.headers.typed[name] = _TYPED_PARSERS[name](raw)
        return value

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; ``Contact: *`` is reported by ``is_wildcard_contact`` instead."""
        return [_name_addr_of(v) for v in self.headers.get_all("contact") if v.strip() != "*"]

    @property
    def is_wildcard_contact(self) -> bool:
        return any(v.strip() == "*" for v in self.headers.get_all("contact"))

    @property
    def routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("route")]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("record-route")]

    @property
    def max_forwards(self) -> int | None:
        return self._int_header("max-forwards")

    @property
    def expires(self) -> int | None:
        return self._int_header("expires")

    @property
    def content_length(self) -> int | None:
        return self._int_header("content-length")

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";")[0].strip().lower() if value else None

    def _int_header(self, name: str) -> int | None:
        value = self.headers.get(name)
        if value is None:
            return None
        value = value.strip()
        if not DIGITS_RE.fullmatch(value):
            raise SipParseError(f"bad {name}: {value[:40]!r}")
        digits = value.lstrip("0")
        # Compared on length first: int() of thousands of digits is slow and raises ValueError.
        number = int(digits) if 0 < len(digits) <= 10 else (0 if not digits else MAX_INT_HEADER + 1)
        if number > MAX_INT_HEADER:
            raise SipParseError(f"{name} out of range: {value[:40]!r}")
        return number

    def header_tokens(self, name: str) -> set[str]:
        """Lower-cased option tags / methods of a list header (Supported, Require, Allow)."""
        return {v.strip().lower() for v in self.headers.get_all(name) if v.strip()}

    # ---- serialising -------------------------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The message on the wire; Content-Length always states the body's real length."""
        self.headers.set("Content-Length", str(len(self.body)))
        lines = [self.start_line(), *self.headers.encode_lines(), "", ""]
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.serialize()


@dataclass(eq=False, slots=True)
class Request(Message):
    method: str = "OPTIONS"
    uri: Uri = field(default_factory=lambda: SipUri(host="invalid"))
    version: str = SIP_VERSION

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.uri, self.version, self.headers, self.body) == (
            other.method, other.uri, other.version, other.headers, other.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise SipParseError(f"unsupported URI scheme {self.uri}", 416)
        return self.uri


@dataclass(eq=False, slots=True)
class Response(Message):
    status: int = 200
    reason: str = "OK"
    version: str = SIP_VERSION

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, self.version, self.headers, self.body) == (
            other.status, other.reason, other.version, other.headers, other.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_final(self) -> bool:
        return self.status >= 200


SipMessage = Request | Response


# Header names as received -> (canonical, raw), shared by every message: a kept message then holds no copies of
# its header names (memory per live transaction), and the name is checked once. Bounded: names past the cap are
# checked and copied each time.
HEADER_NAME_CACHE_ENTRIES = 1_024
_HEADER_NAMES: dict[str, tuple[str, str]] = {}


def _split_head(head: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The start line and the header fields, folded continuation lines joined (§7.3.1)."""
    lines = head.split("\n")
    start = lines[0].rstrip("\r")
    fields: list[tuple[str, str, str]] = []
    for raw_line in lines[1:]:
        line = raw_line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t":
            if not fields:
                raise SipParseError("continuation line before any header")
            # §7.3.1: folded LWS is equivalent to one SP; a value that began on the next line gets no leading SP.
            folded = line.strip(" \t")
            if folded:
                lname, raw, value = fields[-1]
                fields[-1] = (lname, raw, f"{value} {folded}" if value else folded)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"bad header line {line[:80]!r}")
        names = _HEADER_NAMES.get(name)
        if names is None:
            name = name.rstrip(" \t")
            if not HEADER_NAME_RE.match(name):
                raise SipParseError(f"bad header line {line[:80]!r}")
            names = (canonical_name(name), name)
            if len(_HEADER_NAMES) < HEADER_NAME_CACHE_ENTRIES:
                _HEADER_NAMES[line.partition(":")[0]] = names
        fields.append((names[0], names[1], value.strip()))
    return start, fields


def _find_head_end(data: bytes) -> tuple[int, int]:
    """Index where the header block ends and where the body starts; (-1, -1) if not complete yet.

    CRLF CRLF per §7; bare LF line ends (and a mix) are accepted.
    """
    # The first "\n" followed by an empty line ends the head: found with two C-speed scans (what the regex
    # ``\r?\n\r?\n`` finds, without trying it at every byte).
    lf_lf = data.find(b"\n\n")
    lf_crlf = data.find(b"\n\r\n")
    if lf_lf == -1 and lf_crlf == -1:
        return -1, -1
    if lf_crlf == -1 or (lf_lf != -1 and lf_lf < lf_crlf):
        at, end = lf_lf, lf_lf + 2
    else:
        at, end = lf_crlf, lf_crlf + 3
    return (at - 1 if at > 0 and data[at - 1] == 13 else at), end


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one whole message (one datagram, or one framed message of a stream).

    Over datagrams a missing Content-Length means "the rest of the datagram" (§18.3); bytes beyond it are
    discarded (RFC 4475 §3.1.1.8); fewer bytes than it announces is an error (§3.1.2.2). The empty line that
    ends the headers is required: without it the message is truncated. ``stream=True`` requires Content-Length.

    Raises
    ------
    SipParseError
        Whatever is wrong with the bytes; never any other exception. ``status_hint`` is the response to send
        (400, 413 body too large, 505 version, 513 header block too large).
    """
    try:
        return _parse(data, stream)
    except SipParseError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defence in depth: only SipParseError escapes
        raise SipParseError(f"malformed message: {exc}") from exc


def _parse(data: bytes, stream: bool) -> SipMessage:
    if len(data) > MAX_MESSAGE_BYTES + MAX_BODY_BYTES:
        raise SipParseError("message too large", 513)
    data = data.lstrip(b"\r\n")
    head_end, body_start = _find_head_end(data)
    if head_end == -1:
        raise SipParseError("truncated message: no empty line after the headers")
    if head_end > MAX_MESSAGE_BYTES:
        raise SipParseError("header block too large", 513)
    head = data[:head_end].decode("utf-8", "surrogateescape")
    start, fields = _split_head(head)
    headers = Headers._from_parsed(fields)
    body = data[body_start:]
    length_text = headers.get("content-length")
    if length_text is not None:
        length_text = length_text.strip()
        if not DIGITS_RE.fullmatch(length_text):
            raise SipParseError(f"bad Content-Length {length_text[:40]!r}")
        length = int(length_text) if len(length_text.lstrip("0")) <= 10 else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            raise SipParseError("body too large", 413)
        if length > len(body):
            raise SipParseError(f"truncated body: Content-Length {length}, {len(body)} bytes present")
        body = body[:length]
    elif stream:
        raise SipParseError("Content-Length is required over a stream transport")

    m = REQUEST_LINE_RE.match(start)
    if m:
        method, uri_text, version = m.groups()
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported version {version}", 505)
        uri = parse_uri(uri_text)
        if _undecodable(uri_text):
            raise SipParseError("bytes that are not UTF-8 in the Request-URI")
        if isinstance(uri, SipUri) and uri.headers:
            # §19.1.1 table: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11 escruri).
            raise SipParseError(f"headers in the Request-URI {uri_text[:80]!r}")
        request = Request(headers=headers, body=body, method=method, uri=uri, version=version)
        _validate_request(request)
        return request
    m = STATUS_LINE_RE.match(start)
    if m:
        version, status, reason_or_none = m.groups()
        reason = reason_or_none or ""
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported version {version}", 505)
        code = int(status)
        if not 100 <= code <= 699:
            raise SipParseError(f"bad status code {status}")
        response = Response(headers=headers, body=body, status=code, reason=reason, version=version)
        _validate_common(response)
        return response
    raise SipParseError(f"bad start line {start[:80]!r}")


_VALIDATION_ORDER = tuple(
    (name, REQUIRED_REQUEST_HEADERS.index(name)) for name in ("cseq", "via", "from", "to", "call-id")
)


def _validate_common(message: Message) -> None:
    seen: set[str] = set()
    for key, _, _ in message.headers._fields:
        if key in SINGLE_HEADERS:
            if key in seen:
                raise SipParseError(f"more than one {key} header")
            seen.add(key)
    headers = message.headers
    values = headers.firsts(REQUIRED_REQUEST_HEADERS)
    for name, value in zip(REQUIRED_REQUEST_HEADERS, values, strict=True):
        if not value:
            raise SipParseError(f"missing {name} header")
    # What the typed accessors would parse on first use, parsed here, in the order validation has always read
    # them (so a message with two bad headers gets the same error): every message is read through them, and
    # this saves a look-up and a call each.
    typed = headers.typed
    for name, index in _VALIDATION_ORDER:
        typed[name] = _TYPED_PARSERS[name](values[index])  # type: ignore[arg-type]
    _check_decodable(message)


def _undecodable(text: str) -> bool:
    return not text.isascii() and _UNDECODABLE_RE.search(text) is not None


def _check_decodable(message: Message) -> None:
    """Refuse bytes that are not UTF-8 where the grammar allows ASCII only (see ``_UNDECODABLE_RE``)."""
    for key, _, value in message.headers._fields:
        if value.isascii():
            continue
        if key in ("call-id", "cseq", "via") and _undecodable(value):
            raise SipParseError(f"bytes that are not UTF-8 in {key}")
        if key in _ADDRESS_HEADERS:
            for item in split_values_of(key, value):
                address = item if key != "contact" or item.strip() != "*" else ""
                if address and _undecodable(address):
                    parsed = _name_addr_of(address)
                    if _undecodable(str(parsed.uri)) or _undecodable(format_params(parsed.params)):
                        raise SipParseError(f"bytes that are not UTF-8 in a {key} URI or parameter")


def _validate_request(request: Request) -> None:
    _validate_common(request)
    if request.cseq.method != request.method:
        raise SipParseError(f"CSeq method {request.cseq.method} does not match {request.method}")
    max_forwards = request.max_forwards  # raises on garbage
    if max_forwards is not None and max_forwards > 255:
        raise SipParseError("Max-Forwards above 255")


_COPIED_HEADERS = ("from", "to", "call-id", "cseq")  # besides Via (a list), what every response copies


def make_response(request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None,
                  body: bytes = b"", content_type: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: Via, From, To, Call-ID, CSeq copied, To tag added.

    A 100 Trying never gets a To tag (§8.2.6.2); callers pass the dialog's tag for the others.
    """
    source = request.headers
    # built as the parser builds headers (canonical name, spelling, value): no per-header name look-ups
    fields = [("via", "Via", value) for value in source.get_all("via")]
    from_, to, call_id, cseq = source.firsts(_COPIED_HEADERS)
    fields.append(("from", "From", from_ or ""))
    to = to or ""
    if to_tag and status > 100 and _name_addr_of(to).tag is None:
        to = f"{to.rstrip()};tag={to_tag}"  # header parameters follow the address in both To forms (§20.39)
    fields.append(("to", "To", to))
    fields.append(("call-id", "Call-ID", call_id or ""))
    fields.append(("cseq", "CSeq", cseq or ""))
    if 100 < status < 300:
        fields.extend(("record-route", "Record-Route", value) for value in source.get_all("record-route"))
    if status == 100 and "timestamp" in source:
        fields.append(("timestamp", "Timestamp", source.get("timestamp") or ""))  # §8.2.6.1
    if content_type:
        fields.append(("content-type", "Content-Type", content_type))
    headers = Headers._from_parsed(fields)
    return Response(headers=headers, body=body, status=status, reason=reason or REASONS.get(status, "Unknown"))


def reason_for(status: int) -> str:
    return REASONS.get(status, "Unknown")
