"""SIP exceptions, split as h11 splits them: the peer broke the protocol, or our API was misused.

Each carries ``status_hint``, the SIP response the edge should answer with (RFC 3261 §21).
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every SIP error raised by ccpbx."""

    status_hint: int = 500

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class SipParseError(SipError):
    """The bytes we received are not a SIP message we can accept (a remote protocol error).

    ``status_hint`` is 400 unless a more precise answer exists (413 too large, 416 unsupported URI scheme,
    505 version not supported, 513 message too large).
    """

    status_hint = 400


class SipLocalError(SipError):
    """Our own API was used wrongly (a programming error, never the peer's fault)."""

    status_hint = 500


def reason_text(exc: Exception) -> str:
    """A reason phrase from an error's message: one line, at most 100 characters (RFC 3261 §25.1 Reason-Phrase)."""
    return str(exc).replace("\r", " ").replace("\n", " ")[:100]
