"""SDES: SRTP keys in SDP (RFC 4568), the ``a=crypto`` lines of RTP/SAVP streams. Pure: no I/O.

``a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]`` (§9.1). We speak the two suites every SDES
phone has, AES_CM_128_HMAC_SHA1_80 and _32 (§6.2), each with one inline key (§6.1: ``inline:`` then base64 of
the 30-byte master key and salt, optionally ``|lifetime`` and ``|MKI:length``). A line we cannot use says why
(:class:`CryptoError`); the offer/answer code skips it and, when no line of a stream is usable, the stream.

What we do not take (the line is skipped, §6.3: "not supported"): more than one key per line, an MKI (libsrtp
through pylibsrtp has no MKI), a lifetime shorter than 2^20 packets (we never re-key within a call), any
session parameter (KDR, UNENCRYPTED_SRTP, UNAUTHENTICATED_SRTP, FEC_ORDER ...).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ccpbx.media.srtp import MASTER_KEY_SALT_BYTES, SrtpSuite
from ccpbx.pbx.sip.message import random_bytes

__all__ = ["OFFERED_SUITES", "CryptoAttribute", "CryptoError", "choose_crypto", "new_master_key"]

#: What we offer, preferred first (RFC 4568 §6.2.1: _80 is the default suite).
OFFERED_SUITES: Final = (SrtpSuite.AES_CM_128_HMAC_SHA1_80, SrtpSuite.AES_CM_128_HMAC_SHA1_32)
_MIN_LIFETIME: Final = 2**20  # a shorter key lifetime would need re-keying mid-call
_MAX_LIFETIME: Final = 2**48  # SRTP's own limit for these suites (RFC 3711 §9.2)
_TAG_RE: Final = re.compile(r"[0-9]{1,9}")
_LIFETIME_RE: Final = re.compile(r"(?:2\^([0-9]{1,2})|([0-9]{1,15}))")


class CryptoError(ValueError):
    """An ``a=crypto`` line we cannot use; the message says why (it ends up in a 488's reason)."""


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` line (RFC 4568 §9.1) with one inline master key and salt."""

    tag: int
    suite: SrtpSuite
    key: bytes  # master key + salt, 30 bytes

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute:
        """The value after ``a=crypto:``. Raises :class:`CryptoError` naming what is wrong or unsupported."""
        parts = value.split()
        if len(parts) < 3:
            raise CryptoError("a=crypto needs <tag> <suite> inline:<key>")
        tag_text, suite_name, key_params, *session_params = parts
        if not _TAG_RE.fullmatch(tag_text):
            raise CryptoError(f"bad a=crypto tag {tag_text[:12]!r}")
        try:
            suite = SrtpSuite(suite_name)
        except ValueError:
            raise CryptoError(f"unsupported crypto suite {suite_name[:40]}") from None
        if ";" in key_params:
            raise CryptoError("more than one key per a=crypto line is not supported")
        method, colon, info = key_params.partition(":")
        if not colon or method != "inline":
            raise CryptoError("a=crypto key method must be inline")
        key_text, *extras = info.split("|")
        try:
            key = base64.b64decode(key_text, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("a=crypto key is not base64") from None
        if len(key) != MASTER_KEY_SALT_BYTES:
            raise CryptoError(f"a=crypto key+salt must be {MASTER_KEY_SALT_BYTES} bytes, got {len(key)}")
        for extra in extras:
            if ":" in extra:
                raise CryptoError("a=crypto MKI is not supported")
            match = _LIFETIME_RE.fullmatch(extra)
            if match is None:
                raise CryptoError("bad a=crypto key lifetime")
            lifetime = 2 ** int(match[1]) if match[1] is not None else int(match[2])
            if not _MIN_LIFETIME <= lifetime <= _MAX_LIFETIME:
                raise CryptoError("a=crypto key lifetime below 2^20 packets is not supported")
        if session_params:
            raise CryptoError(f"a=crypto session parameter {session_params[0][:30]} is not supported")
        return cls(int(tag_text), suite, key)

    def value(self) -> str:
        """The text after ``a=crypto:``."""
        return f"{self.tag} {self.suite.value} inline:{base64.b64encode(self.key).decode('ascii')}"

    def __repr__(self) -> str:  # never log keys
        return f"CryptoAttribute({self.tag}, {self.suite.value})"


def new_master_key() -> bytes:
    """A fresh random master key and salt for one leg (RFC 4568 §6.1: from a cryptographic random source, the OS's,
    read ahead a few KB at a time: every leg answering or offering SRTP-capable SDP takes one)."""
    return random_bytes(MASTER_KEY_SALT_BYTES)


def choose_crypto(values: Sequence[str | None]) -> tuple[CryptoAttribute | None, str]:
    """The first usable ``a=crypto`` of a stream in the offerer's order (RFC 4568 §7.1.1: the offerer's
    preference), and why none was usable (the first line's problem) when none is."""
    problem = "no a=crypto line"
    for value in values:
        try:
            return CryptoAttribute.parse(value or ""), ""
        except CryptoError as exc:
            if problem == "no a=crypto line":
                problem = str(exc)
    return None, problem
