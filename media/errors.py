"""The exception hierarchy of :mod:`ccpbx.media`.

Every exception the media package raises on purpose derives from :class:`MediaError`, so an edge can catch
the whole family in one clause and map it to a counter, a log line or a SIP response.
"""

from __future__ import annotations

__all__ = ["MediaConfigError", "MediaError", "RtpParseError"]


class MediaError(Exception):
    """Base class of all exceptions raised by :mod:`ccpbx.media`."""


class RtpParseError(MediaError):
    """A received RTP, RTCP or RFC 4733 payload is malformed (a remote error: the peer broke the format)."""


class MediaConfigError(MediaError):
    """A public media API was called with a bad parameter (a local error: our caller misused the API)."""
