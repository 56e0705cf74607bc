"""Content-Length framing of SIP over stream transports (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626).

``StreamFramer`` is fed whatever a TCP read returned and hands back whole messages: several in one read, or
one across many. A double CRLF between messages is a keep-alive ping, answered by a single CRLF pong
(RFC 5626 §4.4.1). After a framing error the stream cannot be resynchronised and must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.grammar import CONTENT_LENGTH_RE, HEAD_END_RE
from ccpbx.pbx.sip.message import MAX_BODY_BYTES, MAX_MESSAGE_BYTES, SipMessage, parse_message

# What a datagram is, read off its bytes before parsing (the server's inbox ranks by it, a SIP worker sheds by it).
# Requests that start new work; every other request (ACK, BYE, CANCEL, PRACK, ...) and every response finishes
# work in progress and goes first (RFC 6357 §5: favour what completes calls already accepted).
NEW_WORK_METHODS = (b"INVITE ", b"REGISTER ", b"SUBSCRIBE ", b"OPTIONS ", b"MESSAGE ", b"PUBLISH ", b"REFER ")
# A new request carrying credentials answers our challenge (the second half of work begun). Looked for in the
# first MAX_HEAD_SCAN bytes; Authorization has no compact form.
CREDENTIALS_RE = re.compile(rb"\n(?:proxy-)?authorization[ \t]*:", re.IGNORECASE)
MAX_HEAD_SCAN = 4096

PING = b"\r\n\r\n"
PONG = b"\r\n"


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLFCRLF ping arrived; the transport answers ``PONG``."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream broke framing; ``error.status_hint`` says what to answer before closing."""

    error: SipParseError


@dataclass(frozen=True, slots=True)
class BadMessage:
    """One framed message that did not parse; the stream itself is intact and may go on."""

    error: SipParseError
    data: bytes


StreamItem = SipMessage | KeepAlive | BadMessage | FramingError


class StreamFramer:
    __slots__ = ("_broken", "_buffer")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    @property
    def broken(self) -> bool:
        return self._broken

    def feed(self, data: bytes) -> list[StreamItem]:
        if self._broken:
            return []
        self._buffer += data
        out: list[StreamItem] = []
        buf = self._buffer
        while buf:
            # Leading CRLFs: a CRLFCRLF is a ping; a lone CRLF (a pong or stray line end) is skipped.
            if buf[0] in (13, 10):  # CR or LF
                if buf.startswith(PING):
                    out.append(KeepAlive())
                    del buf[:4]
                    continue
                if buf.startswith(b"\r\n") and len(buf) >= 3 and buf[2] != 13:
                    del buf[:2]
                    continue
                if len(buf) < 4 and PING.startswith(bytes(buf)):
                    break  # maybe the start of a ping: wait for more
                del buf[:1]
                continue
            m = HEAD_END_RE.search(buf)
            if m is None:
                if len(buf) > MAX_MESSAGE_BYTES:
                    return self._fail(out, SipParseError("header block too large", 513))
                break
            end, body_start = m.start(), m.end()
            length = _content_length(bytes(buf[:end]))
            if length is None:
                return self._fail(out, SipParseError("Content-Length is required over a stream transport"))
            if length > MAX_BODY_BYTES:
                return self._fail(out, SipParseError("body too large", 413))
            total = body_start + length
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            del buf[:total]
            try:
                out.append(parse_message(raw, stream=True))
            except SipParseError as exc:
                out.append(BadMessage(exc, raw))
        return out

    def _fail(self, out: list[StreamItem], error: SipParseError) -> list[StreamItem]:
        self._broken = True
        self._buffer.clear()
        out.append(FramingError(error))
        return out


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a raw header block, None when absent or not a number (either breaks framing)."""
    m = CONTENT_LENGTH_RE.search(head)
    if m is None:
        return None
    digits = m.group(1).lstrip(b"0")
    return int(m.group(1)) if len(digits) <= 10 else MAX_BODY_BYTES + 1
