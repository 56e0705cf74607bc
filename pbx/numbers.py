"""Telephone numbers as trunks send and expect them: E.164, national, or as they are (ITU-T E.164, E.123).

A provider sends ``+4930123456``, a German ISDN gateway ``030123456`` for the same caller, an American one
``12125550100`` or ``2125550100``. Routing, CDRs, callbacks and the CTI want one form, so each trunk has a
:class:`NumberPlan` (its country calling code, national and international prefixes) and a format.

Pure; every function raises only :class:`NumberError` (a :class:`ValueError`) for text that is no number.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["E164_MAX_DIGITS", "NumberError", "NumberFormat", "NumberPlan", "clean", "format_number", "to_e164",
           "to_national"]

E164_MAX_DIGITS = 15  # ITU-T E.164 §6: a full international number has at most 15 digits
# A number shorter than this is a short/service/extension number (112, 1001): never given a country code.
MIN_NATIONAL_DIGITS = 7
_SEPARATORS = str.maketrans("", "", " -.()/\t")
_DIGITS = re.compile(r"\+?[0-9]+")


class NumberError(ValueError):
    """Text that is not a telephone number (letters, an empty string, a '+' in the middle)."""


class NumberFormat(enum.StrEnum):
    """How a trunk writes numbers: ``+CC...`` (E.164), national (trunk prefix) or untouched."""

    E164 = "e164"
    NATIONAL = "national"
    AS_IS = "as-is"


@dataclass(frozen=True, slots=True)
class NumberPlan:
    """A trunk's numbering plan: Germany ``("49", "0", "00")``, NANP ``("1", "1", "011")``, UK ``("44", "0",
    "00")``. Without a ``country_code`` only ``+`` and international-prefix numbers can be made E.164."""

    country_code: str = ""
    national_prefix: str = "0"
    international_prefix: str = "00"

    def __post_init__(self) -> None:
        if self.country_code and not re.fullmatch(r"[1-9][0-9]{0,2}", self.country_code):
            raise ValueError(f"country code {self.country_code!r} must be 1-3 digits, not starting with 0")
        for name in ("national_prefix", "international_prefix"):
            value = getattr(self, name)
            if not re.fullmatch(r"[0-9]{0,4}", value):
                raise ValueError(f"{name} {value!r} must be 0-4 digits")


def clean(raw: str) -> str:
    """``raw`` without visual separators (spaces, ``-``, ``.``, brackets, ``/``), keeping a leading ``+``.

    Raises :class:`NumberError` for anything else that is not a digit.
    """
    text = raw.strip().translate(_SEPARATORS)
    if not _DIGITS.fullmatch(text):
        raise NumberError(f"{raw!r} is not a telephone number")
    if text.startswith("+") and len(text) - 1 > E164_MAX_DIGITS:
        raise NumberError(f"{raw!r} has more than {E164_MAX_DIGITS} digits")
    return text


def to_e164(number: str, plan: NumberPlan) -> str:
    """``+CC...``: ``+`` numbers stay; the international prefix becomes ``+``; the national prefix becomes
    ``+`` and the country code; a long number starting with the country code (sent without ``+``) gets the
    ``+``. Short and local numbers stay as they are."""
    number = clean(number)
    if number.startswith("+"):
        return number
    ip, np_, cc = plan.international_prefix, plan.national_prefix, plan.country_code
    if ip and number.startswith(ip) and len(number) > len(ip) + 2:
        return "+" + number[len(ip):]
    if cc and np_ and number.startswith(np_) and len(number) - len(np_) >= MIN_NATIONAL_DIGITS:
        return "+" + cc + number[len(np_):]
    if cc and not np_ and len(number) >= MIN_NATIONAL_DIGITS and not number.startswith(cc):
        return "+" + cc + number  # a plan without a trunk prefix (Italy, ...): every national number
    if cc == np_ == "1" and len(number) == 10 and number[0] in "23456789":
        return "+1" + number  # NANP: ten digits dialled without the 1 (NPA-NXX-XXXX)
    if cc and number.startswith(cc) and len(number) - len(cc) >= MIN_NATIONAL_DIGITS + 1 \
            and len(number) <= E164_MAX_DIGITS:
        return "+" + number
    return number


def to_national(number: str, plan: NumberPlan) -> str:
    """The national form: a number of the plan's country gets the national prefix, a foreign one the
    international prefix; short numbers stay as they are."""
    e164 = to_e164(number, plan)
    if not e164.startswith("+"):
        return e164
    digits = e164[1:]
    cc = plan.country_code
    if cc and digits.startswith(cc):
        return plan.national_prefix + digits[len(cc):]
    return plan.international_prefix + digits


def format_number(number: str, plan: NumberPlan, fmt: NumberFormat | str) -> str:
    """``number`` in ``fmt``; ``as-is`` only cleans it."""
    fmt = NumberFormat(fmt)
    if fmt is NumberFormat.E164:
        return to_e164(number, plan)
    if fmt is NumberFormat.NATIONAL:
        return to_national(number, plan)
    return clean(number)
