"""SRTP and SRTCP (RFC 3711) for one media channel, at the socket edge, through libsrtp (``pylibsrtp``).

The engine works on plain RTP: :class:`SrtpContext` protects what the engine built just before it leaves the
channel's socket and unprotects what arrives before the engine parses it. Keys come from the signalling
(SDES, RFC 4568): each direction has its own master key and salt, ours for what we send, the peer's for what
we receive. The SSRC is whatever each side uses (libsrtp's "any inbound/outbound" policies), so the relay fast
path and a far end that changes SSRC keep working.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pylibsrtp

from .errors import MediaConfigError

__all__ = ["MASTER_KEY_SALT_BYTES", "SrtpContext", "SrtpParameters", "SrtpSuite"]

MASTER_KEY_SALT_BYTES = 30  # AES-128 master key (16) + master salt (14), RFC 3711 §8.2, RFC 4568 §6.2.1


class SrtpSuite(enum.Enum):
    """The crypto suites we speak, by their SDES names (RFC 4568 §6.2)."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"

    @property
    def profile(self) -> int:
        """libsrtp's profile number for the suite."""
        if self is SrtpSuite.AES_CM_128_HMAC_SHA1_80:
            return int(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        return int(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32)


@dataclass(frozen=True, slots=True)
class SrtpParameters:
    """What one channel needs to protect and unprotect: the suite and both master key+salt (30 bytes each)."""

    suite: SrtpSuite
    local_key: bytes = b""  # protects what we send
    remote_key: bytes = b""  # unprotects what the peer sends

    def __post_init__(self) -> None:
        for name, key in (("local", self.local_key), ("remote", self.remote_key)):
            if len(key) != MASTER_KEY_SALT_BYTES:
                raise MediaConfigError(f"SRTP {name} key+salt must be {MASTER_KEY_SALT_BYTES} bytes, got {len(key)}")

    def __repr__(self) -> str:  # never log keys
        return f"SrtpParameters({self.suite.value})"


class SrtpContext:
    """Protect/unprotect for one channel; bad packets raise :class:`pylibsrtp.Error` and are counted by the caller.

    RTCP is protected too (SRTCP, RFC 3711 §3.4): the suites above derive its keys from the same master key.
    """

    __slots__ = ("_rx", "_tx", "parameters")

    def __init__(self, parameters: SrtpParameters) -> None:
        self.parameters = parameters
        tx = pylibsrtp.Policy(key=parameters.local_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=parameters.suite.profile)
        tx.allow_repeat_tx = True  # a packet re-sent as is (relay of a duplicate) is not an error
        rx = pylibsrtp.Policy(key=parameters.remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=parameters.suite.profile)
        self._tx = pylibsrtp.Session(tx)
        self._rx = pylibsrtp.Session(rx)

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        return self._rx.unprotect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._rx.unprotect_rtcp(packet)
