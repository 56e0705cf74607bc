"""The ACD's one exception."""

from __future__ import annotations


class AcdStateError(Exception):
    """A programming error of the engine's caller: an unknown contact or agent id, an event that makes no
    sense in the current state (an answer for an offer that was never made), an invalid configuration."""
