"""A quick, strict reading of the REGISTERs and new INVITEs phones send most, for a SIP worker's hot path.

:func:`read_request` accepts only a narrow, common shape (ASCII, CRLF line ends, no folding, a body only with
its exact Content-Length, each header once, one Via over UDP, name-addresses in angle brackets, tokens
without escapes) and returns its fields as text, without building a message, URIs or header objects. Whatever it
accepts, :func:`~ccpbx.pbx.sip.message.parse_message` parses too and reads the same way (a test compares the two
readers' answers byte for byte); anything else gives None, and the caller takes the full parser's way. So the
quick reading changes how fast a request is answered, never what the answer is.

:func:`read_credentials` reads an ``Authorization`` value of the same strict shape into
:class:`~ccpbx.pbx.sip.auth.Credentials`, and :func:`answer_head` writes the start of a response (status line,
Via stamped as :func:`~ccpbx.pbx.sip.endpoint.stamp_received` stamps it, From, To with its tag, Call-ID, CSeq)
in the order and spelling :func:`~ccpbx.pbx.sip.message.make_response` gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccpbx.pbx.sip.auth import Credentials
from ccpbx.pbx.sip.headers import canonical_name

__all__ = ["QuickRequest", "answer_head", "read_credentials", "read_request"]

_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
_PORT = r"(?::([1-9][0-9]{0,4}))?"
_TOKEN = r"[A-Za-z0-9._~+!%*`'-]+"
_URI_PARAMS = r"(?:;[a-z0-9-]+(?:=[A-Za-z0-9._-]+)?)*"
# the Request-URI (group 1) and its user (group 2), after the method and a space
REQUEST_URI_RE = re.compile(rf"(sips?:(?:([A-Za-z0-9._~+-]+)@)?{_HOST}{_PORT}{_URI_PARAMS}) SIP/2\.0")
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
# a display name in quotes (no escapes), then <sip: or sips: user@host[:port][;params]>, then ;tag= only
NAME_ADDR_RE = re.compile(rf'(?:"[A-Za-z0-9 ._-]*" ?)?<sips?:([A-Za-z0-9._~+-]+)@{_HOST}{_PORT}{_URI_PARAMS}>'
                          rf"(?:;tag=({_TOKEN}))?")
VIA_RE = re.compile(rf"SIP/2\.0/UDP ({_HOST}){_PORT}((?:;[a-z-]+(?:=[A-Za-z0-9._~+!%*`'-]+)?)*)")
CALL_ID_RE = re.compile(r"[A-Za-z0-9._~+!%*-]+(?:@[A-Za-z0-9._~+!%*:-]+)?")
CSEQ_RE = re.compile(r"([1-9][0-9]{0,8}) ([A-Z]+)")
DIGITS_RE = re.compile(r"0|[1-9][0-9]{0,8}")
# a credential's parameter: a lower-case name, a quoted value without escapes or commas, or a token
AUTH_PARAM_RE = re.compile(r'[ \t]*([a-z]+)=(?:"([^"\\,]*)"|([A-Za-z0-9._~+/=-]+))[ \t]*')
_VIA_PARAMS_DECLINED = frozenset({"received", "maddr"})


@dataclass(frozen=True, slots=True)
class QuickRequest:
    """A request read quickly: each header's value as received (stripped), keyed by lower-case full name."""

    uri: str  # the Request-URI as received
    uri_user: str | None
    to_user: str
    from_tag: str
    cseq: int
    via_host: str
    via_port: int | None
    via_params: tuple[str, ...]  # the top Via's ";name[=value]" parameters, as received
    wants_rport: bool
    fields: dict[str, str]

    @property
    def via(self) -> str:
        return self.fields["via"]

    @property
    def max_forwards(self) -> int | None:
        value = self.fields.get("max-forwards")
        return None if value is None else int(value)

    @property
    def branch(self) -> str | None:
        for param in self.via_params:
            name, _, value = param[1:].partition("=")
            if name == "branch":
                return value
        return None


def read_request(data: bytes, method: str, names: frozenset[str] | None = None,
                 declined: frozenset[str] = frozenset()) -> QuickRequest | None:
    """``data`` read as a ``method`` request of the strict shape (module docstring), carrying only headers in
    ``names`` (lower-case full names; None: any, but for those in ``declined``); None for anything else, the
    full parser's to read. A REGISTER has no body; another request's body is what its Content-Length says."""
    if not data.isascii():
        return None
    end = data.find(b"\r\n\r\n")
    if end == -1:
        return None
    body = len(data) - end - 4
    if body and method == "REGISTER":
        return None
    text = data[:end].decode("ascii")
    if "\r\n " in text or "\r\n\t" in text or text.count("\n") != text.count("\r\n") \
            or text.count("\r") != text.count("\n"):
        return None  # folded lines, bare line ends
    lines = text.split("\r\n")
    start = lines[0]
    if not start.startswith(method) or start[len(method):len(method) + 1] != " ":
        return None
    uri = REQUEST_URI_RE.fullmatch(start, len(method) + 1)
    if uri is None:
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = canonical_name(name)  # lower-case, compact forms expanded
        if not colon or key in fields:
            return None
        if names is not None:
            if key not in names:
                return None
        elif key in declined or HEADER_NAME_RE.fullmatch(name) is None:
            return None
        fields[key] = value.strip()
    if fields.get("content-length", "0") != str(body):
        return None  # a body only with its exact length (and none longer than it says)
    return _checked(uri.group(1), uri.group(2), method, fields)


def _checked(uri: str, uri_user: str | None, method: str, fields: dict[str, str]) -> QuickRequest | None:
    """The fields as a QuickRequest if each is of the strict shape, else None."""
    via_text, from_text, to_text = fields.get("via"), fields.get("from"), fields.get("to")
    call_id, cseq_text = fields.get("call-id"), fields.get("cseq")
    if via_text is None or from_text is None or to_text is None or call_id is None or cseq_text is None:
        return None
    via = VIA_RE.fullmatch(via_text)
    from_ = NAME_ADDR_RE.fullmatch(from_text)
    to = NAME_ADDR_RE.fullmatch(to_text)
    cseq = CSEQ_RE.fullmatch(cseq_text)
    if (via is None or from_ is None or to is None or cseq is None or cseq.group(2) != method
            or CALL_ID_RE.fullmatch(call_id) is None or from_.group(3) is None or to.group(3) is not None):
        return None  # the From needs its tag, the To has none yet
    if any(_bad_port(m.group(2)) for m in (from_, to)) or _bad_port(via.group(2)):
        return None
    for name in ("max-forwards", "expires", "content-length"):
        value = fields.get(name)
        if value is not None and DIGITS_RE.fullmatch(value) is None:
            return None
    max_forwards = fields.get("max-forwards")
    if max_forwards is not None and int(max_forwards) > 255:
        return None
    params = tuple(f";{p}" for p in via.group(3).split(";")[1:])
    wants_rport = False
    for param in params:
        name, _, value = param[1:].partition("=")
        if name in _VIA_PARAMS_DECLINED or (name == "rport" and value):
            return None
        wants_rport = wants_rport or name == "rport"
    port = via.group(2)
    return QuickRequest(uri, uri_user, to.group(1), from_.group(3), int(cseq.group(1)), via.group(1),
                        int(port) if port else None, params, wants_rport, fields)


def _bad_port(port: str | None) -> bool:
    return port is not None and int(port) > 65535


def read_credentials(value: str, realm: str) -> Credentials | None:
    """A Digest ``Authorization`` value of the strict shape for ``realm`` (each parameter once, lower-case
    names, quoted values without escapes), read as the full reader reads it; None for anything else."""
    if not value.startswith("Digest "):
        return None
    params: dict[str, str] = {}
    for piece in value[7:].split(","):
        m = AUTH_PARAM_RE.fullmatch(piece)
        if m is None or m.group(1) in params:
            return None
        quoted = m.group(2)
        params[m.group(1)] = quoted if quoted is not None else m.group(3)
    if params.get("realm") != realm:
        return None
    username, nonce, uri, response = (params.get(k) for k in ("username", "nonce", "uri", "response"))
    qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
    if not (username and nonce and uri and response) or (qop and not (nc and cnonce)):
        return None
    return Credentials(username, realm, nonce, uri, response.lower(), params.get("algorithm", "MD5").upper(), qop,
                       nc, cnonce, params.get("opaque"))


def answer_head(request: QuickRequest, status_line: str, to_tag: str, source: tuple[str, str, int]
                ) -> tuple[str, tuple[str, int]]:
    """The response's text up to and including its CSeq line (CRLF-ended), with the Via stamped for
    ``source`` (transport, host, port), and the address it goes to (RFC 3261 §18.2.2, RFC 3581 §4)."""
    host, port = source[1], source[2]
    fields = request.fields
    if request.wants_rport:
        kept = "".join(p for p in request.via_params if p[1:].partition("=")[0] not in ("rport", "received"))
        via = f"SIP/2.0/UDP {request.via_host}{_port_text(request.via_port)}{kept};rport={port};received={host}"
        destination = (host, port)
    else:
        via = fields["via"]
        if request.via_host != host:
            via = f"{via};received={host}"
        destination = (host, request.via_port or 5060)
    head = (f"{status_line}\r\nVia: {via}\r\nFrom: {fields['from']}\r\nTo: {fields['to']};tag={to_tag}\r\n"
            f"Call-ID: {fields['call-id']}\r\nCSeq: {fields['cseq']}\r\n")
    return head, destination


def _port_text(port: int | None) -> str:
    return "" if port is None else f":{port}"
