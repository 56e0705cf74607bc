"""Placeholder replaced by the numbers branch (NumberFormat only)."""

from __future__ import annotations

import enum

__all__ = ["NumberFormat"]


class NumberFormat(enum.StrEnum):
    E164 = "e164"
    NATIONAL = "national"
    AS_IS = "as-is"
