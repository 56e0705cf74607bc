"""SDP (RFC 8866, formerly RFC 4566) and the offer/answer model (RFC 3264) for a B2BUA that anchors G.711 media.

Two halves, both pure (no I/O, no clocks):

* :class:`SessionDescription` parses a body into frozen dataclasses and serialises them back. Serialising is the
  exact inverse of parsing for everything a description holds: ``parse(d.serialize()) == d``. Unknown ``a=`` lines
  are kept verbatim, in order, so nothing a peer said is lost. Malformed input raises :class:`SdpError`
  (``status_hint`` 400) naming the line number and the line; nothing else escapes :meth:`SessionDescription.parse`.
* :class:`SdpSession` is one call leg's side of the offer/answer exchange: it builds our offers (RFC 3264 §5),
  answers the peer's offers (§6), reads the peer's answers (§7) and keeps our ``o=`` line stable, bumping its
  version only when our SDP content changes (§8). Failing to agree raises :class:`SdpNegotiationError`
  (``status_hint`` 488, RFC 3261 §21.4.26).

SRTP with SDES keys (RFC 3711, RFC 4568): ``LocalMedia.srtp`` says what a leg does (:class:`SrtpUse`); an offer
of RTP/SAVP, or of RTP/AVP with ``a=crypto`` (best-effort SRTP, as baresip's ``mediaenc srtp`` sends), is
answered with ``a=crypto`` carrying the leg's own key, and :attr:`NegotiatedAudio.srtp` holds both keys for the
media edge. Offered both ways (an RTP/SAVP and an RTP/AVP stream), the secure one is taken.

Hold (RFC 3264 §8.4): we hold a peer by offering ``LocalMedia(direction=Direction.SENDONLY)``; a peer holds us by
offering ``a=sendonly``/``a=inactive`` or, in the old RFC 2543 style, ``c=IN IP4 0.0.0.0``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from ccpbx.media.g711 import Codec
from ccpbx.media.srtp import MASTER_KEY_SALT_BYTES, SrtpParameters
from ccpbx.pbx.sdes import OFFERED_SUITES, CryptoAttribute, CryptoError, choose_crypto
from ccpbx.pbx.sip.errors import SipLocalError, SipParseError

__all__ = [
    "DEFAULT_PTIME_MS",
    "SUPPORTED_EVENTS",
    "AudioFormat",
    "Connection",
    "Direction",
    "LocalMedia",
    "MediaDescription",
    "NegotiatedAudio",
    "Origin",
    "RtpMap",
    "SdpError",
    "SdpNegotiationError",
    "SdpSession",
    "SessionDescription",
    "SrtpUse",
    "find_audio_format",
]

#: The packetisation interval the media engine runs at (one 160-sample G.711 frame per 20 ms tick).
DEFAULT_PTIME_MS: Final = 20
#: RTP clock rate of G.711 and of telephone-event alongside it (RFC 3551 §4.5.14, RFC 4733).
G711_CLOCK_RATE_HZ: Final = 8000
#: RFC 4733 events we can send and receive: DTMF 0-9 * # A-D (0-15) and flash (16).
SUPPORTED_EVENTS: Final = frozenset(range(17))
#: What a peer is assumed to support when its telephone-event has no ``events`` fmtp: the DTMF events (RFC 4733).
_DEFAULT_OFFERED_EVENTS: Final = frozenset(range(16))
_SESSION_NAME: Final = "-"  # RFC 8866 §5.3: "s=-" when a session has no meaningful name
_INITIAL_VERSION: Final = 1
_MAX_PAYLOAD_TYPE: Final = 127  # RTP's PT field is 7 bits (RFC 3550 §5.1)
_DYNAMIC_PAYLOAD_TYPES: Final = range(96, 128)  # RFC 3551 §3
_MAX_SHOWN_CHARS: Final = 80


class SdpError(SipParseError):
    """A session description we received is malformed (``status_hint`` 400, RFC 3261 §21.4.1).

    The message says what is wrong and, where there is one, the line number and the line.
    """

    status_hint = 400


class SdpNegotiationError(SdpError):
    """The offer or answer is well formed but nothing in it is acceptable (``status_hint`` 488, RFC 3261 §21.4.26)."""

    status_hint = 488


class Direction(enum.Enum):
    """A stream's direction attribute (RFC 8866 §6.7, RFC 3264 §5.1); the value is the attribute's name."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        """Whether the side this direction describes sends media."""
        return self is Direction.SENDRECV or self is Direction.SENDONLY

    @property
    def receives(self) -> bool:
        """Whether the side this direction describes receives media."""
        return self is Direction.SENDRECV or self is Direction.RECVONLY

    def reverse(self) -> Direction:
        """The same stream seen from the other end: sendonly <-> recvonly, the others unchanged."""
        if self is Direction.SENDONLY:
            return Direction.RECVONLY
        if self is Direction.RECVONLY:
            return Direction.SENDONLY
        return self

    @classmethod
    def from_flags(cls, sends: bool, receives: bool) -> Direction:
        """The direction that sends and receives as told."""
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    def intersect(self, other: Direction) -> Direction:
        """What both directions allow (from the same side's point of view)."""
        return Direction.from_flags(self.sends and other.sends, self.receives and other.receives)


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`` (RFC 8866 §5.2)."""

    username: str
    session_id: str
    version: int
    nettype: str
    addrtype: str
    address: str

    def line(self) -> str:
        """The ``o=`` line, without its line end."""
        return (f"o={self.username} {self.session_id} {self.version} "
                f"{self.nettype} {self.addrtype} {self.address}")


_ZERO_ADDRESS_CHARS = frozenset("0.:")  # all an unspecified address (0.0.0.0, ::, 0:0::0) is made of

@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (RFC 8866 §5.7); ``addrtype`` is "IP4" or "IP6"."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP4`` or ``IN IP6`` for a literal address (a colon means IPv6)."""
        return cls("IN", "IP6" if ":" in address else "IP4", address)

    @property
    def host(self) -> str:
        """The address without a multicast ``/ttl`` or ``/count`` suffix."""
        return self.address.split("/", 1)[0]

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` or ``::``: the RFC 2543 way of putting a stream on hold (RFC 3264 §8.4)."""
        host = self.host
        if not _ZERO_ADDRESS_CHARS.issuperset(host):  # a digit other than 0 or a letter: no parsing needed
            return False
        try:
            return ipaddress.ip_address(host).is_unspecified
        except ValueError:
            return False

    def line(self) -> str:
        """The ``c=`` line, without its line end."""
        return f"c={self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` (RFC 8866 §6.6); ``channels`` None when not stated."""

    encoding: str
    clock_rate: int
    channels: int | None = None


# RFC 3551 §6 tables 4 and 5: the static payload types, known without an a=rtpmap line.
_STATIC_PAYLOAD_TYPES: Final[dict[int, RtpMap]] = {
    0: RtpMap("PCMU", 8000, 1),
    3: RtpMap("GSM", 8000, 1),
    4: RtpMap("G723", 8000, 1),
    5: RtpMap("DVI4", 8000, 1),
    6: RtpMap("DVI4", 16000, 1),
    7: RtpMap("LPC", 8000, 1),
    8: RtpMap("PCMA", 8000, 1),
    9: RtpMap("G722", 8000, 1),
    10: RtpMap("L16", 44100, 2),
    11: RtpMap("L16", 44100, 1),
    12: RtpMap("QCELP", 8000, 1),
    13: RtpMap("CN", 8000, 1),
    14: RtpMap("MPA", 90000),
    15: RtpMap("G728", 8000, 1),
    16: RtpMap("DVI4", 11025, 1),
    17: RtpMap("DVI4", 22050, 1),
    18: RtpMap("G729", 8000, 1),
    25: RtpMap("CelB", 90000),
    26: RtpMap("JPEG", 90000),
    28: RtpMap("nv", 90000),
    31: RtpMap("H261", 90000),
    32: RtpMap("MPV", 90000),
    33: RtpMap("MP2T", 90000),
    34: RtpMap("H263", 90000),
}

# RFC 8866 §9 grammar fragments.
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / ...
_TOKEN_RE: Final = re.compile(_TOKEN)
_PROTO_RE: Final = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")  # proto = token *("/" token)
_PORT_RE: Final = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")  # port ["/" integer]
_DIGITS_RE: Final = re.compile(r"[0-9]{1,20}")  # 64-bit values; the bound also keeps int() cheap
_PAYLOAD_TYPE_RE: Final = re.compile(r"[0-9]{1,3}")
_FIELD_SEP_RE: Final = re.compile(r"[ \t]+")  # SP, tolerating runs and tabs
_NON_WS_RE: Final = re.compile(r"[^ \t]+")
_FORBIDDEN_RE: Final = re.compile(r"[\r\n\x00]")  # byte-string excludes NUL, CR and LF
# §6.6 rtpmap-value = payload-type SP encoding-name "/" clock-rate ["/" encoding-params]
_RTPMAP_RE: Final = re.compile(r"([0-9]{1,3})[ \t]+([^/ \t]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?[ \t]*")
_FMTP_RE: Final = re.compile(r"([0-9]{1,3})(?:[ \t]+(.*))?", re.DOTALL)
_PTIME_RE: Final = re.compile(r"[ \t]*([0-9]{1,5})(?:\.[0-9]*)?[ \t]*")  # some phones write "20.0"
_EVENT_RANGE_RE: Final = re.compile(r"([0-9]{1,3})(?:-([0-9]{1,3}))?")  # RFC 4733 §2.4.1 events list

_DIRECTIONS: Final = {d.value: d for d in Direction}


_RTP_PROTOS: dict[str, bool] = {}  # proto -> _is_rtp, for the few protos phones name (bounded)


def _is_rtp(proto: str) -> bool:
    """RTP profiles (RTP/AVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF ...) carry payload-type numbers as formats."""
    known = _RTP_PROTOS.get(proto)
    if known is None:
        known = "RTP" in proto.upper().split("/")
        if len(_RTP_PROTOS) < 64:
            _RTP_PROTOS[proto] = known
    return known


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section (RFC 8866 §5.14) with its ``i=``, ``c=``, ``b=``, ``k=`` and ``a=`` lines.

    ``formats`` are kept as written (payload-type numbers for RTP profiles). ``attributes`` are
    ``(name, value)`` pairs in order; ``value`` is None for a property attribute (``a=sendrecv``) and the text
    after the first colon otherwise. ``port`` 0 marks a rejected or disabled stream (RFC 3264 §5.1).
    """

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    bandwidths: tuple[tuple[str, str], ...] = ()
    attributes: tuple[tuple[str, str | None], ...] = ()
    information: str | None = field(default=None, kw_only=True)
    key: str | None = field(default=None, kw_only=True)
    # the a=rtpmap lines by payload type, read once on first use (negotiation asks for each type in turn)
    _rtpmaps: dict[int, RtpMap] | None = field(default=None, init=False, repr=False, compare=False)
    _payload_types: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_rtp(self) -> bool:
        """Whether the transport is an RTP profile, so formats are payload types."""
        return _is_rtp(self.proto)

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats as RTP payload types, in offer order (empty for a non-RTP transport)."""
        types = self._payload_types
        if types is None:  # read once: negotiation asks several times
            types = tuple(map(int, self.formats)) if _is_rtp(self.proto) else ()
            object.__setattr__(self, "_payload_types", types)
        return types

    @property
    def explicit_direction(self) -> Direction | None:
        """The media-level direction attribute, None when the section has none."""
        return _direction_in(self.attributes)

    @property
    def direction(self) -> Direction:
        """The media-level direction, SENDRECV when absent (RFC 8866 §6.7; see ``SessionDescription.direction_of``
        for the session-level default)."""
        return self.explicit_direction or Direction.SENDRECV

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=<name>`` (None when absent or a property attribute)."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def has_attribute(self, name: str) -> bool:
        """Whether an ``a=<name>`` line is present (with or without a value)."""
        return any(key == name for key, _ in self.attributes)

    def attribute_values(self, name: str) -> tuple[str | None, ...]:
        """Every ``a=<name>`` value, in order."""
        return tuple(value for key, value in self.attributes if key == name)

    def rtpmap(self, pt: int) -> RtpMap | None:
        """The encoding of payload type ``pt``: its ``a=rtpmap`` line, else the RFC 3551 static assignment.

        A malformed ``a=rtpmap`` line is ignored, as if absent; a dynamic type without one is unknown (None).
        """
        maps = self._rtpmaps
        if maps is None:
            maps = {}
            for value in self._values("rtpmap"):
                match = _RTPMAP_RE.fullmatch(value)
                if match is not None:  # the first line for a type counts
                    maps.setdefault(int(match[1]), RtpMap(match[2], int(match[3]),
                                                          int(match[4]) if match[4] else None))
            object.__setattr__(self, "_rtpmaps", maps)
        found = maps.get(pt)
        return found if found is not None else _STATIC_PAYLOAD_TYPES.get(pt)

    def fmtp(self, pt: int) -> str | None:
        """The format parameters of payload type ``pt`` (``a=fmtp:<pt> <params>``, RFC 8866 §6.15)."""
        for value in self._values("fmtp"):
            match = _FMTP_RE.fullmatch(value)
            if match is not None and int(match[1]) == pt:
                return (match[2] or "").strip(" \t")
        return None

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in milliseconds (RFC 8866 §6.4), None when absent or unreadable."""
        value = self.attribute("ptime")
        if value is None:
            return None
        match = _PTIME_RE.fullmatch(value)
        return int(match[1]) if match is not None else None

    def _values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name and value is not None]  # one call, no resumes

    def lines(self) -> list[str]:
        """The section's lines in RFC 8866 §5 order, without line ends."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [" ".join((f"m={self.media}", port, self.proto, *self.formats))]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection is not None:
            out.append(self.connection.line())
        if self.bandwidths:
            out.extend(f"b={kind}:{value}" for kind, value in self.bandwidths)
        if self.key is not None:
            out.append(f"k={self.key}")
        out += _attribute_lines(self.attributes)
        return out


def _direction_in(attributes: tuple[tuple[str, str | None], ...]) -> Direction | None:
    for name, value in attributes:
        if value is None:
            found = _DIRECTIONS.get(name)
            if found is not None:
                return found
    return None


def _attribute_lines(attributes: tuple[tuple[str, str | None], ...]) -> list[str]:
    """``a=name`` or ``a=name:value`` lines (one call for a section's dozen, not one per line)."""
    return [f"a={name}" if value is None else f"a={name}:{value}" for name, value in attributes]


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole SDP body (RFC 8866 §5).

    ``times`` are the ``t=`` pairs (start, stop) in NTP seconds, 0 0 for an unbounded session. The rarely used
    fields are kept so nothing is lost on a round trip: ``information`` (i=), ``uri`` (u=), ``emails`` (e=),
    ``phones`` (p=), ``repeats`` (``r=`` values, each with the index in ``times`` of the ``t=`` it follows),
    ``time_zones`` (z=) and ``key`` (k=, obsolete since RFC 8866 but still accepted).
    """

    version: int = field(default=0, kw_only=True)
    origin: Origin
    session_name: str
    connection: Connection | None = None
    bandwidths: tuple[tuple[str, str], ...] = ()
    times: tuple[tuple[int, int], ...] = ((0, 0),)
    attributes: tuple[tuple[str, str | None], ...] = ()
    media: tuple[MediaDescription, ...] = ()
    information: str | None = field(default=None, kw_only=True)
    uri: str | None = field(default=None, kw_only=True)
    emails: tuple[str, ...] = field(default=(), kw_only=True)
    phones: tuple[str, ...] = field(default=(), kw_only=True)
    repeats: tuple[tuple[int, str], ...] = field(default=(), kw_only=True)
    time_zones: str | None = field(default=None, kw_only=True)
    key: str | None = field(default=None, kw_only=True)

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body (RFC 8866 §5 and §9).

        Liberal where it costs nothing: LF-only line ends, trailing blank lines, runs of spaces or tabs between
        fields, the optional session-level lines in any order after ``s=``, bodies that are not UTF-8 (read as
        ISO 8859-1, which RFC 8866 §6.10 ``a=charset`` allows). Strict where real phones comply: ``v=0``,
        ``o=`` and ``s=`` are the first three lines, at least one ``t=`` comes before the first ``m=``, every
        line is ``<letter>=<value>`` and an unknown type letter is rejected (RFC 8866 §5), every active stream
        has a ``c=`` at media or session level, ports are 0-65535 and RTP formats are payload types 0-127.

        Parameters
        ----------
        data : bytes or str
            The body of the SIP message.

        Raises
        ------
        SdpError
            With ``status_hint`` 400 and the offending line; nothing else is raised, whatever ``data`` holds.
        """
        return _Parser(_lines_of(data)).parse()

    def serialize(self) -> bytes:
        """The body as UTF-8 with CRLF line ends, in RFC 8866 §5 order; ``parse`` gives back an equal value.

        Raises
        ------
        SipLocalError
            When a hand-built field holds a CR, LF or NUL (which would smuggle lines in) or is not encodable.
        """
        out = [f"v={self.version}", self.origin.line(), f"s={self.session_name}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        if self.emails:
            out.extend(f"e={email}" for email in self.emails)
        if self.phones:
            out.extend(f"p={phone}" for phone in self.phones)
        if self.connection is not None:
            out.append(self.connection.line())
        if self.bandwidths:
            out.extend(f"b={kind}:{value}" for kind, value in self.bandwidths)
        repeats = self.repeats
        for index, (start, stop) in enumerate(self.times):
            out.append(f"t={start} {stop}")
            if repeats:
                out.extend(f"r={value}" for at, value in repeats if at == index)
        if repeats and any(not 0 <= at < len(self.times) for at, _ in repeats):
            raise SipLocalError("an r= line refers to a t= line that does not exist")
        if self.time_zones is not None:
            out.append(f"z={self.time_zones}")
        if self.key is not None:
            out.append(f"k={self.key}")
        if self.attributes:
            out += _attribute_lines(self.attributes)
        for media in self.media:
            out.extend(media.lines())
        if _FORBIDDEN_RE.search("".join(out)):  # one scan; the line is looked for only when one holds any
            line = next(line for line in out if _FORBIDDEN_RE.search(line))
            raise SipLocalError(f"SDP field holds CR, LF or NUL: {line[:_MAX_SHOWN_CHARS]!r}")
        try:
            return ("\r\n".join(out) + "\r\n").encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SipLocalError(f"SDP text is not encodable as UTF-8: {exc}") from None

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The stream's connection: its own ``c=``, else the session-level one (RFC 8866 §5.7)."""
        return media.connection if media.connection is not None else self.connection

    def direction_of(self, media: MediaDescription) -> Direction:
        """The stream's direction: media-level attribute, else session-level, else sendrecv (RFC 8866 §6.7)."""
        return media.explicit_direction or _direction_in(self.attributes) or Direction.SENDRECV

    def attribute(self, name: str) -> str | None:
        """The value of the first session-level ``a=<name>`` (None when absent or a property attribute)."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        try:
            data.encode("utf-8")  # lone surrogates could never be serialised back
        except UnicodeEncodeError:
            raise SdpError("SDP text holds characters that are not valid Unicode") from None
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SdpError(f"SDP body must be bytes or str, not {type(data).__name__}")
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _lines_of(data: bytes | str) -> list[str]:
    # split("\n"), not splitlines(): only LF ends a line; VT, FF, NEL, U+2028 are ordinary text in SDP.
    text = _decode(data)
    if text.count("\n") == text.count("\r\n") and not text.endswith("\r"):  # CRLF throughout: one split
        lines = text.split("\r\n")
    else:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise SdpError("empty session description")
    return lines


def _shown(line: str) -> str:
    return repr(line if len(line) <= _MAX_SHOWN_CHARS else line[: _MAX_SHOWN_CHARS - 3] + "...")


class _LineError(Exception):
    """What is wrong with a line, raised by the readers of its value; ``index`` (the line's, from 0) is set by
    whoever knows it, the parser's loops when the reader does not."""

    def __init__(self, what: str, index: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.index = index


# Attribute names phones send on every call, known to be tokens: a set look-up instead of a regex per a= line.
_COMMON_ATTRIBUTES: Final = frozenset({"rtpmap", "fmtp", "ptime", "maxptime", "sendrecv", "sendonly", "recvonly",
                                       "inactive", "crypto", "rtcp", "rtcp-mux", "silenceSupp", "label", "mid"})


class _MediaBuilder:
    __slots__ = ("attributes", "bandwidths", "connection", "information", "key", "position", "values")

    def __init__(self, position: int, values: tuple[str, int, int | None, str, tuple[str, ...]]) -> None:
        self.position = position
        self.values = values
        self.information: str | None = None
        self.connection: Connection | None = None
        self.key: str | None = None
        self.bandwidths: list[tuple[str, str]] = []
        self.attributes: list[tuple[str, str | None]] = []

    def build(self) -> MediaDescription:
        media, port, count, proto, formats = self.values
        return MediaDescription(media, port, count, proto, formats, self.connection, tuple(self.bandwidths),
                                tuple(self.attributes), information=self.information, key=self.key)


class _Parser:
    """One pass over the lines with RFC 8866 §5's order: session part, then media sections. The readers of a
    line's value raise :class:`_LineError`; the loops know the line (its index) and make the :class:`SdpError`."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def error_at(self, index: int, what: str) -> SdpError:
        return SdpError(f"SDP line {index + 1}: {what}: {_shown(self.lines[index])}")

    def parse(self) -> SessionDescription:
        entries: list[tuple[str, str]] = []
        for index, line in enumerate(self.lines):
            if not line:
                raise self.error_at(index, "blank line inside the description")
            if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
                raise self.error_at(index, "not a <type>=<value> line")
            if "\r" in line or "\x00" in line:
                raise self.error_at(index, "CR or NUL inside a line")
            entries.append((line[0], line[2:]))
        for index, expected in enumerate("vos"):
            if index >= len(entries):
                raise self.error_at(len(entries) - 1, f"description ends before its {expected}= line")
            if entries[index][0] != expected:
                raise self.error_at(index, f"expected the {expected}= line here (RFC 8866 §5)")
        if not _DIGITS_RE.fullmatch(entries[0][1]) or int(entries[0][1]) != 0:
            raise self.error_at(0, "unsupported SDP version (only v=0 exists)")
        try:
            origin = _origin(entries[1][1])
        except _LineError as exc:
            raise self.error_at(1, exc.what) from None
        try:
            return self._session(entries, origin)
        except _LineError as exc:
            assert exc.index is not None  # _session sets it for every line it reads
            raise self.error_at(exc.index, exc.what) from None

    def _session(self, entries: list[tuple[str, str]], origin: Origin) -> SessionDescription:
        """The lines after ``s=``; a :class:`_LineError` leaves with the index of its line."""
        single: dict[str, str] = {}
        emails: list[str] = []
        phones: list[str] = []
        bandwidths: list[tuple[str, str]] = []
        times: list[tuple[int, int]] = []
        repeats: list[tuple[int, str]] = []
        attributes: list[tuple[str, str | None]] = []
        connection: Connection | None = None
        count = len(entries)
        index = 3
        previous = "s"
        try:
            while index < count:
                kind, value = entries[index]
                if kind == "m":
                    break
                if kind == "a":
                    attributes.append(_attribute(value))
                elif kind == "t":
                    times.append(_time(value))
                elif kind == "c":
                    if connection is not None:
                        raise _LineError("more than one session-level c= line")
                    connection = _connection(value)
                elif kind in "iuzk":
                    if kind in single:
                        raise _LineError(f"more than one session-level {kind}= line")
                    single[kind] = value
                elif kind == "e":
                    emails.append(value)
                elif kind == "p":
                    phones.append(value)
                elif kind == "b":
                    bandwidths.append(_bandwidth(value))
                elif kind == "r":
                    if previous not in "tr":
                        raise _LineError("r= must follow a t= line")
                    repeats.append((len(times) - 1, value))
                else:
                    raise _LineError(_unexpected(kind, "the session part"))
                previous = kind
                index += 1
            if not times:
                index = index - 1 if index == count else index
                raise _LineError("no t= line before the media descriptions (RFC 8866 §5.9 requires one)")

            media: list[MediaDescription] = []
            builder: _MediaBuilder | None = None
            while index < count:
                kind, value = entries[index]
                if kind == "m":
                    if builder is not None:
                        media.append(_finish(builder, connection))
                    builder = _MediaBuilder(index, _media(value))
                    index += 1
                    continue
                assert builder is not None  # the session loop stops only at an m= line
                if kind == "a":
                    builder.attributes.append(_attribute(value))
                elif kind == "c":
                    if builder.connection is not None:
                        raise _LineError("more than one c= line in a media description")
                    builder.connection = _connection(value)
                elif kind == "i":
                    if builder.information is not None:
                        raise _LineError("more than one i= line in a media description")
                    builder.information = value
                elif kind == "k":
                    if builder.key is not None:
                        raise _LineError("more than one k= line in a media description")
                    builder.key = value
                elif kind == "b":
                    builder.bandwidths.append(_bandwidth(value))
                else:
                    raise _LineError(_unexpected(kind, "a media description"))
                index += 1
            if builder is not None:
                media.append(_finish(builder, connection))
        except _LineError as exc:
            if exc.index is None:
                exc.index = index
            raise

        return SessionDescription(
            origin=origin, session_name=entries[2][1], connection=connection, bandwidths=tuple(bandwidths),
            times=tuple(times), attributes=tuple(attributes), media=tuple(media),
            information=single.get("i"), uri=single.get("u"), emails=tuple(emails), phones=tuple(phones),
            repeats=tuple(repeats), time_zones=single.get("z"), key=single.get("k"),
        )


def _unexpected(kind: str, where: str) -> str:
    if kind in "vosiuepcbtrzkam":
        return f"{kind}= is not allowed here, in {where}"
    return f"unknown line type {kind}= (RFC 8866 §5: a parser must reject it)"


def _finish(builder: _MediaBuilder, session_connection: Connection | None) -> MediaDescription:
    media = builder.build()
    if media.port != 0 and media.connection is None and session_connection is None:
        raise _LineError("active stream without a c= line at media or session level (RFC 8866 §5.7)", builder.position)
    return media


def _fields(value: str) -> list[str]:
    stripped = value.strip(" \t")
    if not stripped:
        return []
    return stripped.split(" ") if "\t" not in stripped and "  " not in stripped else _FIELD_SEP_RE.split(stripped)


def _origin(value: str) -> Origin:
    parts = _fields(value)
    if len(parts) != 6:
        raise _LineError("o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>")
    username, session_id, version, nettype, addrtype, address = parts
    if not _DIGITS_RE.fullmatch(version):
        raise _LineError("o= session version is not a number")
    if not (_TOKEN_RE.fullmatch(nettype) and _TOKEN_RE.fullmatch(addrtype)):
        raise _LineError("o= network or address type is not a token")
    return Origin(username, session_id, int(version), nettype, addrtype, address)


def _connection(value: str) -> Connection:
    parts = _fields(value)
    if len(parts) != 3:
        raise _LineError("c= needs <nettype> <addrtype> <connection-address>")
    if not (_TOKEN_RE.fullmatch(parts[0]) and _TOKEN_RE.fullmatch(parts[1])):
        raise _LineError("c= network or address type is not a token")
    return Connection(parts[0], parts[1], parts[2])


def _bandwidth(value: str) -> tuple[str, str]:
    kind, colon, amount = value.partition(":")
    if not colon or not _TOKEN_RE.fullmatch(kind):
        raise _LineError("b= needs <bwtype>:<bandwidth>")
    return kind, amount


def _time(value: str) -> tuple[int, int]:
    parts = _fields(value)
    if len(parts) != 2 or not (_DIGITS_RE.fullmatch(parts[0]) and _DIGITS_RE.fullmatch(parts[1])):
        raise _LineError("t= needs <start-time> <stop-time> as numbers")
    return int(parts[0]), int(parts[1])


def _attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    if name not in _COMMON_ATTRIBUTES and not _TOKEN_RE.fullmatch(name):
        raise _LineError("attribute name is not a token")
    return name, rest if colon else None


def _media(value: str) -> tuple[str, int, int | None, str, tuple[str, ...]]:
    parts = _fields(value)
    if len(parts) < 3:
        raise _LineError("m= needs <media> <port> <proto> <fmt> ...")
    media, port_text, proto = parts[:3]
    formats = tuple(parts[3:])
    if not _TOKEN_RE.fullmatch(media):
        raise _LineError("media type is not a token")
    port_match = _PORT_RE.fullmatch(port_text)
    if port_match is None or int(port_match[1]) > 65535:
        raise _LineError("bad port in m= line")
    port = int(port_match[1])
    count = int(port_match[2]) if port_match[2] is not None else None
    if count is not None and count < 1:
        raise _LineError("bad number of ports in m= line")
    if not _PROTO_RE.fullmatch(proto):
        raise _LineError("bad transport protocol in m= line")
    if not formats and port != 0:
        raise _LineError("m= line lists no formats")
    if _is_rtp(proto):
        for fmt in formats:
            if not _PAYLOAD_TYPE_RE.fullmatch(fmt) or int(fmt) > _MAX_PAYLOAD_TYPE:
                raise _LineError(f"RTP format {_shown(fmt)} is not a payload type 0-127")
    else:
        for fmt in formats:
            if not _TOKEN_RE.fullmatch(fmt):
                raise _LineError(f"format {_shown(fmt)} is not a token")
    return media, port, count, proto, formats


# ---------------------------------------------------------------------------------------------------------------
# Offer/answer


class SrtpUse(enum.Enum):
    """What a leg does about SRTP (RFC 3711 with SDES keys, RFC 4568)."""

    OFF = "off"  # plain RTP only: RTP/SAVP streams are declined, a=crypto ignored
    ACCEPT = "accept"  # answer SRTP offers with SRTP; our offers are plain RTP/AVP
    OFFER = "offer"  # as ACCEPT, and our offers are best-effort SRTP: RTP/AVP with a=crypto
    REQUIRED = "required"  # SRTP or nothing: we offer RTP/SAVP, a plain offer gets 488


_SRTP_PROTOS: Final = ("RTP/SAVP",)
_ANSWERABLE_PROTOS: Final = ("RTP/AVP", *_SRTP_PROTOS)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The G.711 format one side picked from an audio ``m=`` line.

    ``payload_type`` is the number the stream uses for ``codec`` (static 0/8 or a dynamic one mapped by
    ``a=rtpmap``); ``telephone_event_pt`` the RFC 4733 payload type, None when events are not used;
    ``ptime_ms`` the packetisation interval we send with. ``also`` lists the other formats both sides can use
    (payload type, codec), in the offer's order: listed in our answer, so the peer may switch to them (RFC 3264
    §5.1) and we decode each packet by its payload type.
    """

    codec: Codec
    payload_type: int
    telephone_event_pt: int | None
    ptime_ms: int
    also: tuple[tuple[int, Codec], ...] = ()


@dataclass(frozen=True, slots=True)
class NegotiatedAudio:
    """The outcome of an offer/answer exchange for the one audio stream a leg anchors.

    ``remote`` is where to send RTP, None when the peer gave the unspecified address (RFC 2543 hold).
    ``direction`` is OUR direction: an offer saying sendonly makes us recvonly. ``held_by_remote`` is True when
    the peer does not want our media (it said sendonly or inactive, or ``c=0.0.0.0``) although we would send.
    ``stream_index`` is the position of the audio ``m=`` line in the description. ``receive_formats`` are the
    other (payload type, codec) pairs both sides listed: the peer may send any of them (RFC 3264 §5.1).
    ``remote_ptime_ms`` is the packet time the peer asked for (its ``a=ptime``), None when it gave none.
    ``srtp`` is the suite and the two master keys when the stream is SRTP, None for plain RTP.
    """

    codec: Codec
    payload_type: int
    telephone_event_pt: int | None
    ptime_ms: int
    remote: tuple[str, int] | None
    direction: Direction
    held_by_remote: bool
    stream_index: int
    receive_formats: tuple[tuple[int, Codec], ...] = ()
    remote_ptime_ms: int | None = None
    srtp: SrtpParameters | None = None

    @property
    def audio_format(self) -> AudioFormat:
        """The format part of the outcome."""
        return AudioFormat(self.codec, self.payload_type, self.telephone_event_pt, self.ptime_ms)


def _has_forbidden(text: str) -> bool:
    return not text or _NON_WS_RE.fullmatch(text) is None or _FORBIDDEN_RE.search(text) is not None


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """Our end of an audio stream: the RTP address and port the media engine listens on and what it can do.

    ``codecs`` are in preference order for our offers; an answer follows the offer's order among them.
    ``preferred`` is the codec to answer with when offered (what the other leg of a bridge uses: no
    transcoding). ``direction`` SENDONLY puts the peer on hold (RFC 3264 §8.4), INACTIVE stops media both ways.
    ``srtp`` is what the leg does about SRTP; unless OFF, ``srtp_key`` is its master key and salt (30 bytes),
    the same for the leg's life so a re-offer restates it.

    Raises
    ------
    SipLocalError
        When a field is unusable (no codecs, port out of 1-65535, telephone-event PT outside 96-127 ...).
    """

    address: str
    port: int
    codecs: tuple[Codec, ...] = (Codec.PCMU, Codec.PCMA)
    telephone_event: bool = True
    telephone_event_pt: int = 101
    ptime_ms: int = DEFAULT_PTIME_MS
    direction: Direction = Direction.SENDRECV
    preferred: Codec | None = None
    srtp: SrtpUse = SrtpUse.OFF
    srtp_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.srtp is not SrtpUse.OFF and len(self.srtp_key) != MASTER_KEY_SALT_BYTES:
            raise SipLocalError(f"an SRTP leg needs a {MASTER_KEY_SALT_BYTES}-byte master key and salt")
        if _has_forbidden(self.address):
            raise SipLocalError(f"bad local media address {self.address!r}")
        if not 1 <= self.port <= 65535:
            raise SipLocalError(f"local RTP port {self.port} is outside 1-65535")
        if not self.codecs or len(set(self.codecs)) != len(self.codecs):
            raise SipLocalError("local codecs must be non-empty and without repeats")
        if self.telephone_event_pt not in _DYNAMIC_PAYLOAD_TYPES:
            raise SipLocalError(f"telephone-event payload type {self.telephone_event_pt} is not dynamic (96-127)")
        if self.ptime_ms <= 0:
            raise SipLocalError(f"ptime {self.ptime_ms} ms is not positive")


def _codec_of(rtpmap: RtpMap | None) -> Codec | None:
    """PCMU/PCMA by encoding name, case-insensitively (RFC 8866 §6.6), at 8 kHz mono."""
    if rtpmap is None or rtpmap.clock_rate != G711_CLOCK_RATE_HZ or rtpmap.channels not in (None, 1):
        return None
    name = rtpmap.encoding.upper()
    if name == "PCMU":
        return Codec.PCMU
    if name == "PCMA":
        return Codec.PCMA
    return None


def _is_telephone_event(rtpmap: RtpMap | None) -> bool:
    return (rtpmap is not None and rtpmap.encoding.lower() == "telephone-event"
            and rtpmap.clock_rate == G711_CLOCK_RATE_HZ)


def _telephone_event_pt(media: MediaDescription) -> int | None:
    for pt in media.payload_types:
        if _is_telephone_event(media.rtpmap(pt)):
            return pt
    return None


def find_audio_format(media: MediaDescription, codecs: Sequence[Codec], *, telephone_event: bool = True,
                      ptime_ms: int = DEFAULT_PTIME_MS, prefer: Codec | None = None) -> AudioFormat | None:
    """Pick the G.711 format to use from an offered audio stream (RFC 3264 §6.1).

    The codec is the offerer's most preferred one among ``codecs`` (the offer's order: §6.1 recommends it,
    and it is what the caller will send), except that ``prefer`` wins when offered: a B2BUA whose other leg
    already uses it then relays packets instead of transcoding. For each codec the first payload type in the
    offer's order that carries it is used: static 0 (PCMU) or 8 (PCMA), or a dynamic type whose ``a=rtpmap``
    names it (case-insensitively) at 8000 Hz mono. ``telephone-event/8000`` is taken with the offerer's
    payload type. The other offered codecs among ``codecs`` are returned in ``also``.

    Returns
    -------
    AudioFormat or None
        None when the stream is not RTP or carries none of ``codecs``.
    """
    if not media.is_rtp:
        return None
    offered: dict[Codec, int] = {}
    for pt in media.payload_types:
        codec = _codec_of(media.rtpmap(pt))
        if codec is not None and codec in codecs and codec not in offered:
            offered[codec] = pt
    if not offered:
        return None
    chosen = prefer if prefer in offered else next(iter(offered))
    assert chosen is not None
    event_pt = _telephone_event_pt(media) if telephone_event else None
    also = tuple((pt, codec) for codec, pt in offered.items() if codec is not chosen)
    return AudioFormat(chosen, offered[chosen], event_pt, ptime_ms, also)


def _parse_events(text: str | None) -> frozenset[int] | None:
    """An RFC 4733 §2.4.1 events list ("0-15,66,70"), None when malformed."""
    if text is None:
        return _DEFAULT_OFFERED_EVENTS
    events: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _EVENT_RANGE_RE.fullmatch(part)
        if match is None:
            return None
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if low > high or high > 255:
            return None
        events.update(range(low, high + 1))
    return frozenset(events)


_FORMATTED_EVENTS: dict[frozenset[int], str] = {}  # the few event sets offered and answered (bounded)


def _format_events(events: frozenset[int]) -> str:
    """Compact ranges, ascending: {0..15, 16} -> "0-16"."""
    text = _FORMATTED_EVENTS.get(events)
    if text is None:
        text = _events_text(events)
        if len(_FORMATTED_EVENTS) < 64:
            _FORMATTED_EVENTS[events] = text
    return text


def _events_text(events: frozenset[int]) -> str:
    ranges: list[str] = []
    ordered = sorted(events)
    start = previous = ordered[0]
    for event in [*ordered[1:], None]:
        if event is not None and event == previous + 1:
            previous = event
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if event is not None:
            start = previous = event
    return ",".join(ranges)


def _remote_of(connection: Connection | None, port: int) -> tuple[str, int] | None:
    if connection is None or connection.is_unspecified:
        return None
    return connection.host, port


def _pick_stream(offer: SessionDescription, local: LocalMedia) -> tuple[int, AudioFormat, CryptoAttribute | None]:
    """The audio stream we accept: ``(index, format, the offer's a=crypto we take or None)``.

    Candidates are audio streams over RTP/AVP or RTP/SAVP with a non-zero port and a codec in common. An RTP/SAVP
    stream needs SRTP on this leg and a usable ``a=crypto``; an RTP/AVP stream with ``a=crypto`` is SRTP when a
    line is usable and SRTP is on, plain otherwise (best effort, the offerer allows both). With SRTP REQUIRED a
    plain stream is no candidate. The first secure candidate wins, else the first plain one (RFC 4568 §7.1.1:
    offered both ways, the answerer picks).

    Raises
    ------
    SdpNegotiationError
        (488) with the first reason a stream was refused when no stream is acceptable.
    """
    plain: tuple[int, AudioFormat, CryptoAttribute | None] | None = None
    problem = ""
    for index, media in enumerate(offer.media):
        if media.port == 0 or media.media != "audio" or media.proto not in _ANSWERABLE_PROTOS:
            continue
        chosen = find_audio_format(media, local.codecs, telephone_event=local.telephone_event, ptime_ms=local.ptime_ms,
                                   prefer=local.preferred)
        if chosen is None:
            continue
        secure = media.proto in _SRTP_PROTOS
        lines = media.attribute_values("crypto")
        crypto = None
        if local.srtp is SrtpUse.OFF:
            if secure:
                problem = problem or "SRTP (RTP/SAVP) is not enabled here"
                continue
        elif secure or lines:
            crypto, why = choose_crypto(lines)
            if crypto is None and secure:
                problem = problem or f"no usable a=crypto: {why}"
                continue
        if crypto is not None:
            return index, chosen, crypto
        if local.srtp is SrtpUse.REQUIRED:
            problem = problem or "SRTP (RTP/SAVP with a=crypto) is required here"
            continue
        if plain is None:
            plain = (index, chosen, None)
    if plain is not None:
        return plain
    raise SdpNegotiationError(f"no acceptable audio stream in the offer ({problem or 'we support PCMU/PCMA'})")


def _answered_srtp(ours: MediaDescription, theirs: MediaDescription) -> SrtpParameters | None:
    """SRTP of a stream we offered, from the answer's ``a=crypto`` (RFC 4568 §7.1.3): it must name one of our
    tags with that tag's suite; none in the answer is plain RTP, unless we offered only SRTP (RTP/SAVP)."""
    offered: dict[int, CryptoAttribute] = {}
    for value in ours.attribute_values("crypto"):
        with contextlib.suppress(CryptoError):  # a line of ours is always good
            attribute = CryptoAttribute.parse(value or "")
            offered[attribute.tag] = attribute
    if not offered:
        return None
    lines = theirs.attribute_values("crypto")
    if not lines:
        if ours.proto in _SRTP_PROTOS:
            raise SdpNegotiationError("the answer to our RTP/SAVP offer has no a=crypto (RFC 4568)")
        return None  # best effort declined: plain RTP
    try:
        answered = CryptoAttribute.parse(lines[0] or "")
    except CryptoError as exc:
        raise SdpNegotiationError(f"unusable a=crypto in the answer: {exc}") from None
    mine = offered.get(answered.tag)
    if mine is None or mine.suite is not answered.suite:
        raise SdpNegotiationError(f"the answer's a=crypto tag {answered.tag} matches none of ours")
    return SrtpParameters(answered.suite, local_key=mine.key, remote_key=answered.key)


class SdpSession:
    """Our side of the SDP offer/answer exchange on one call leg (RFC 3264).

    It owns our ``o=`` line: the session id is fixed for the leg's life and the version is incremented only
    when the SDP we send differs from the last one we sent (RFC 3264 §8; an unchanged re-offer keeps it, which
    tells the peer nothing changed). We anchor exactly one audio stream per leg.

    Parameters
    ----------
    username : str
        The ``o=`` username (RFC 8866 §5.2).
    session_id : str, optional
        The ``o=`` session id; random digits when not given.
    """

    def __init__(self, username: str = "ccpbx", session_id: str | None = None) -> None:
        if _has_forbidden(username):
            raise SipLocalError(f"bad o= username {username!r}")
        if session_id is None:  # 19 digits, fits a signed 64-bit integer; unique, not secret (RFC 8866 §5.2)
            session_id = str(random.randrange(10**18, 2 * 10**18))
        elif _has_forbidden(session_id):
            raise SipLocalError(f"bad o= session id {session_id!r}")
        self._username = username
        self._session_id = session_id
        self._last: SessionDescription | None = None

    @property
    def username(self) -> str:
        return self._username

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def version(self) -> int | None:
        """The ``o=`` version of the last description we produced, None before the first."""
        return None if self._last is None else self._last.origin.version

    @property
    def last_local(self) -> SessionDescription | None:
        """The last description we produced (offer or answer)."""
        return self._last

    def end(self) -> None:
        """The leg is over: the last description goes (nothing is offered on an ended leg)."""
        self._last = None

    def offer(self, local: LocalMedia) -> SessionDescription:
        """Build an offer (RFC 3264 §5): one audio ``m=`` line with our codecs in preference order.

        The stream lists ``a=rtpmap`` for every format (also the static ones, for peers that want them),
        ``telephone-event/8000`` with ``a=fmtp:<pt> 0-16`` when enabled (RFC 4733 §2.4.1), ``a=ptime`` and the
        direction attribute; SENDONLY is how we put the peer on hold (§8.4).
        """
        formats = [codec.payload_type for codec in local.codecs]
        attributes: list[tuple[str, str | None]] = [
            ("rtpmap", f"{codec.payload_type} {codec.encoding_name}/{G711_CLOCK_RATE_HZ}") for codec in local.codecs
        ]
        if local.telephone_event:
            formats.append(local.telephone_event_pt)
            attributes.append(("rtpmap", f"{local.telephone_event_pt} telephone-event/{G711_CLOCK_RATE_HZ}"))
            attributes.append(("fmtp", f"{local.telephone_event_pt} {_format_events(SUPPORTED_EVENTS)}"))
        proto = "RTP/AVP"
        if local.srtp in (SrtpUse.OFFER, SrtpUse.REQUIRED):  # RFC 4568 §5.1: one line per suite, tags 1, 2 ...
            if local.srtp is SrtpUse.REQUIRED:
                proto = "RTP/SAVP"
            attributes.extend(("crypto", CryptoAttribute(tag, suite, local.srtp_key).value())
                              for tag, suite in enumerate(OFFERED_SUITES, start=1))
        attributes.append(("ptime", str(local.ptime_ms)))
        attributes.append((local.direction.value, None))
        media = MediaDescription("audio", local.port, None, proto, tuple(str(pt) for pt in formats),
                                 attributes=tuple(attributes))
        return self._stamp(local.address, (media,), ((0, 0),))

    def answer(self, offer: SessionDescription, local: LocalMedia) -> tuple[SessionDescription, NegotiatedAudio]:
        """Answer a peer's offer (RFC 3264 §6).

        One ``m=`` line is answered per offered one, in the same order. The first audio stream over RTP/AVP with
        a non-zero port and a G.711 codec in common is accepted (see :func:`find_audio_format` for the choice:
        the offerer's most preferred codec we support, or ``local.preferred`` when offered; the offerer's payload
        types). Every other stream, and every stream offered with port 0, is declined with port 0, its formats
        kept (§6). The accepted stream lists the chosen codec first, then the other offered codecs we support
        (the offerer may switch among them, §5.1; we decode per packet) and, if offered and enabled,
        telephone-event with the offerer's payload type and the events both sides support.

        Direction (§6.1): the complement of the offer's (sendonly -> recvonly, recvonly -> sendonly, inactive ->
        inactive) narrowed by ``local.direction`` (so a sendrecv offer gets ``local.direction``). An offer with
        ``c=0.0.0.0`` (RFC 2543 hold, §8.4) is read as the offerer not receiving: held_by_remote, remote None.
        ``a=ptime`` is ``local.ptime_ms`` (20: the engine's only interval, which honours an offered 20).

        Raises
        ------
        SdpNegotiationError
            (488) when no audio stream is acceptable.
        """
        picked, chosen, crypto = _pick_stream(offer, local)
        answer_media, negotiated = self._accept(offer, offer.media[picked], picked, chosen, local, crypto)
        answered = [answer_media if index == picked else MediaDescription(media.media, 0, None, media.proto,
                                                                          media.formats)
                    for index, media in enumerate(offer.media)]
        # §6: the answer's t= line must equal the offer's.
        return self._stamp(local.address, tuple(answered), offer.times), negotiated

    def _accept(self, offer: SessionDescription, media: MediaDescription, index: int, chosen: AudioFormat,
                local: LocalMedia, crypto: CryptoAttribute | None) -> tuple[MediaDescription, NegotiatedAudio]:
        connection = offer.connection_for(media)
        on_hold_address = connection is not None and connection.is_unspecified
        offered = offer.direction_of(media)
        if on_hold_address:
            offered = Direction.from_flags(offered.sends, False)
        ours = Direction.from_flags(offered.receives and local.direction.sends,
                                    offered.sends and local.direction.receives)

        event_pt = chosen.telephone_event_pt
        events: frozenset[int] | None = None
        if event_pt is not None:
            offered_events = _parse_events(media.fmtp(event_pt))
            events = SUPPORTED_EVENTS & (offered_events if offered_events is not None else _DEFAULT_OFFERED_EVENTS)
            if not events:
                event_pt = None
        formats = [chosen.payload_type, *(pt for pt, _ in chosen.also)]
        attributes: list[tuple[str, str | None]] = [
            ("rtpmap", f"{pt} {codec.encoding_name}/{G711_CLOCK_RATE_HZ}")
            for pt, codec in ((chosen.payload_type, chosen.codec), *chosen.also)
        ]
        if event_pt is not None and events:
            formats.append(event_pt)
            attributes.append(("rtpmap", f"{event_pt} telephone-event/{G711_CLOCK_RATE_HZ}"))
            attributes.append(("fmtp", f"{event_pt} {_format_events(events)}"))
        srtp = None
        if crypto is not None:  # RFC 4568 §7.1.2: the offer's tag and suite, our own key
            attributes.append(("crypto", CryptoAttribute(crypto.tag, crypto.suite, local.srtp_key).value()))
            srtp = SrtpParameters(crypto.suite, local_key=local.srtp_key, remote_key=crypto.key)
        attributes.append(("ptime", str(local.ptime_ms)))
        attributes.append((ours.value, None))
        answer_media = MediaDescription(media.media, local.port, None, media.proto, tuple(str(f) for f in formats),
                                        attributes=tuple(attributes))
        negotiated = NegotiatedAudio(
            codec=chosen.codec, payload_type=chosen.payload_type, telephone_event_pt=event_pt,
            ptime_ms=local.ptime_ms, remote=_remote_of(connection, media.port), direction=ours,
            held_by_remote=not offered.receives, stream_index=index, receive_formats=chosen.also,
            remote_ptime_ms=media.ptime, srtp=srtp,
        )
        return answer_media, negotiated

    def process_answer(self, offer_we_sent: SessionDescription, answer: SessionDescription) -> NegotiatedAudio:
        """Read the peer's answer to our offer (RFC 3264 §7).

        The answer must have one ``m=`` line per offered one with the same media type (§6), and may accept only
        streams we offered with a non-zero port. The first accepted audio stream is used; its codec is the first
        format the answer lists that maps to a codec we offered (the answer's ``a=rtpmap``, else our offer's
        mapping for the same payload type, §6.1). ``ptime_ms`` is what we offered (default 20).
        Our direction is the reverse of the answer's narrowed by what we offered; ``held_by_remote`` is True when
        we offered to send and the answer refuses to receive (sendonly, inactive or ``c=0.0.0.0``).

        Raises
        ------
        SdpError
            (400) when the answer does not match the offer's streams.
        SdpNegotiationError
            (488) when every stream is rejected or no offered codec is in the answer.
        """
        if len(answer.media) != len(offer_we_sent.media):
            raise SdpError(f"answer has {len(answer.media)} m= lines, the offer had {len(offer_we_sent.media)}"
                           " (RFC 3264 §6)")
        for index, (ours, theirs) in enumerate(zip(offer_we_sent.media, answer.media, strict=True)):
            if ours.media != theirs.media:
                raise SdpError(f"answer stream {index} is {theirs.media!r}, the offer's is {ours.media!r}")
            if theirs.port != 0 and ours.port == 0:
                raise SdpError(f"answer accepts stream {index}, which the offer disabled with port 0")
        for index, (ours, theirs) in enumerate(zip(offer_we_sent.media, answer.media, strict=True)):
            if theirs.port == 0 or ours.media != "audio" or not ours.is_rtp or not theirs.is_rtp:
                continue
            return self._answered(offer_we_sent, ours, answer, theirs, index)
        raise SdpNegotiationError("the answer rejected every audio stream we offered")

    def _answered(self, offer: SessionDescription, ours: MediaDescription, answer: SessionDescription,
                  theirs: MediaDescription, index: int) -> NegotiatedAudio:
        offered_pts = set(ours.payload_types)
        offered_codecs = {_codec_of(ours.rtpmap(pt)) for pt in ours.payload_types} - {None}
        chosen: tuple[Codec, int] | None = None
        event_pt: int | None = None
        also: list[tuple[int, Codec]] = []
        for pt in theirs.payload_types:
            rtpmap = theirs.rtpmap(pt) or (ours.rtpmap(pt) if pt in offered_pts else None)
            codec = _codec_of(rtpmap)
            if chosen is None and codec is not None and codec in offered_codecs:
                chosen = (codec, pt)
            elif codec is not None and codec in offered_codecs:
                if chosen is not None and pt != chosen[1] and all(p != pt for p, _ in also):
                    also.append((pt, codec))  # §5.1: the answerer may switch to any format both listed
            elif event_pt is None and pt in offered_pts and _is_telephone_event(rtpmap):
                event_pt = pt
        if chosen is None:
            raise SdpNegotiationError("the answer lists none of the codecs we offered")
        connection = answer.connection_for(theirs)
        answered = answer.direction_of(theirs)
        if connection is not None and connection.is_unspecified:
            answered = Direction.from_flags(answered.sends, False)
        offered = offer.direction_of(ours)
        direction = Direction.from_flags(offered.sends and answered.receives, offered.receives and answered.sends)
        return NegotiatedAudio(
            codec=chosen[0], payload_type=chosen[1], telephone_event_pt=event_pt,
            ptime_ms=ours.ptime or DEFAULT_PTIME_MS, remote=_remote_of(connection, theirs.port),
            direction=direction, held_by_remote=offered.sends and not answered.receives, stream_index=index,
            receive_formats=tuple(also), remote_ptime_ms=theirs.ptime, srtp=_answered_srtp(ours, theirs),
        )

    def _stamp(self, address: str, media: tuple[MediaDescription, ...],
               times: tuple[tuple[int, int], ...]) -> SessionDescription:
        """Wrap ``media`` in our session part, keeping the o= version unless the content changed (RFC 3264 §8)."""
        connection = Connection.for_address(address)
        previous = self._last
        version = _INITIAL_VERSION if previous is None else previous.origin.version
        origin = Origin(self._username, self._session_id, version, "IN", connection.addrtype, address)
        draft = SessionDescription(origin=origin, session_name=_SESSION_NAME, connection=connection, times=times,
                                   media=media)
        if previous is not None and draft != previous:
            draft = replace(draft, origin=replace(origin, version=version + 1))
        self._last = draft
        return draft
