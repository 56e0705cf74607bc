"""Telephone numbers as trunks send and expect them: E.164, national, or as they are (ITU-T E.164, E.123).

A provider sends ``+4930123456``, a German ISDN gateway ``030123456`` for the same caller, an American one
``12125550100`` or ``2125550100``. Routing, CDRs, callbacks and the CTI want one form, so each trunk has a
:class:`NumberPlan` (its country calling code, national and international prefixes) and a
:class:`NumberFormat`.

The rules, for a number without ``+`` (after :func:`clean`), first match wins:

1. ``*`` or ``#`` in it: a service code (``*31#``), never rewritten.
2. It starts with the international prefix: ``+`` and the rest, when the rest can be an international number
   (7 to 15 digits, E.164 §6; the country code does not start with 0); otherwise it stays as it is.
3. No country code in the plan: nothing else can be made E.164.
4. It starts with the national (trunk) prefix: ``+``, the country code and the national significant number
   that follows, if it can be one: :data:`MIN_NATIONAL_DIGITS` digits or more (E.164 §6 allows 15 digits with
   the country code); in the North American Numbering Plan (country code 1) exactly ten, NPA-NXX-XXXX, whose
   area and exchange codes start with 2-9 (so ``1010321`` dial-around codes and ``1 800`` typos stay).
5. The plan has no national prefix (Italy, Spain, Denmark, Norway), or it is the NANP (ten digits dialled
   without the 1): a number that can be a national significant number (as in 4) is one.
6. It starts with the country code and has 10 to 15 digits (a full international number sent without ``+``,
   as some gateways do): ``+`` is put in front.
7. Anything else (extensions, local subscriber numbers, short and service numbers such as 112) stays.

:func:`to_national` turns the E.164 form back into the national one (national prefix for the plan's own
country, international prefix for others) only when rules 2-6 read the result back as the same number, so
``to_e164(to_national(x)) == x`` for every E.164 number ``x``; an E.164 number with no such form (too short,
not NANP-shaped, or one whose national form would begin with the international prefix) keeps its ``+``.

Pure; the functions raise only :class:`NumberError` (a :class:`ValueError`) for text that is no number.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "E164_MAX_DIGITS",
    "E164_MIN_DIGITS",
    "MIN_NATIONAL_DIGITS",
    "NumberError",
    "NumberFormat",
    "NumberPlan",
    "clean",
    "e164_digits",
    "format_number",
    "is_e164",
    "to_e164",
    "to_national",
]

E164_MAX_DIGITS = 15  # ITU-T E.164 §6: an international number has at most 15 digits, country code included
# The shortest international numbers in service have 7 digits (Niue +683 XXXX, Tokelau +690 XXXX); anything
# shorter after an international prefix is a dialling mistake, not a number to rewrite.
E164_MIN_DIGITS = 7
# A national significant number (E.164 §3.6) has at least this many digits; shorter numbers are extensions,
# local subscriber numbers or short codes (112, 1001) and never get a country code.
MIN_NATIONAL_DIGITS = 6
# A number starting with the country code but sent without '+' is taken as international from this length.
CC_WITHOUT_PLUS_MIN_DIGITS = 10
NANP_COUNTRY_CODE = "1"
NANP_NATIONAL_DIGITS = 10  # NPA-NXX-XXXX

_VISUAL = str.maketrans("", "", "-.()/")  # E.123 §7 spaces; '-', '.', '/' and brackets as people write them
_INTERNATIONAL = re.compile(r"\+[1-9][0-9]*")  # E.164: a country code never starts with 0
_BRACKETED_TRUNK_PREFIX = re.compile(r"^\+([0-9]{1,3})\(0\)")  # "+44(0)20...": the (0) right after the country code
_DIALLED = re.compile(r"[0-9*#]+")
_PLAN_PREFIX = re.compile(r"[0-9]{0,4}")
_COUNTRY_CODE = re.compile(r"[1-9][0-9]{0,2}")


class NumberError(ValueError):
    """Text that is not a telephone number (letters, an empty string, a '+' in the middle, 16 digits after '+')."""


class NumberFormat(enum.StrEnum):
    """How a trunk writes numbers: ``+CC...`` (E.164), national (trunk and international prefixes) or as-is."""

    E164 = "e164"
    NATIONAL = "national"
    AS_IS = "as-is"


@dataclass(frozen=True, slots=True)
class NumberPlan:
    """A trunk's numbering plan: its country calling code (E.164 §3.3) and the prefixes dialled in that country
    before a national number (trunk prefix) and before an international one.

    Germany ``NumberPlan("49", "0", "00")``, UK ``("44", "0", "00")``, France ``("33", "0", "00")``, NANP
    ``("1", "1", "011")``, Italy ``("39", "", "00")``. Without a ``country_code`` only ``+`` and
    international-prefix numbers can be made E.164. Raises :class:`ValueError` for prefixes that are not 0-4
    digits, a country code that is not 1-3 digits starting with 1-9, or an international prefix that is (or
    begins) the national prefix, which would make every national number ambiguous.
    """

    country_code: str = ""
    national_prefix: str = "0"
    international_prefix: str = "00"

    def __post_init__(self) -> None:
        if self.country_code and not _COUNTRY_CODE.fullmatch(self.country_code):
            raise ValueError(f"country code {self.country_code!r} must be 1-3 digits not starting with 0 "
                             "(ITU-T E.164 §6), or empty")
        for name, value in (("national prefix", self.national_prefix),
                            ("international prefix", self.international_prefix)):
            if not _PLAN_PREFIX.fullmatch(value):
                raise ValueError(f"{name} {value!r} must be 0-4 digits")
        if self.international_prefix and self.national_prefix.startswith(self.international_prefix):
            raise ValueError(f"international prefix {self.international_prefix!r} must differ from the national "
                             f"prefix {self.national_prefix!r} and not begin it")


def clean(raw: str) -> str:
    """``raw`` without visual separators (ITU-T E.123 §7): white space, ``-``, ``.``, ``/`` and brackets.

    Keeps a leading ``+``; a bracketed national prefix ``(0)`` right after the country code is dropped
    (``+44 (0)20 7946 0000`` is ``+442079460000``; E.123 §2.5 forbids writing it, people do anyway). ``*`` and
    ``#`` are kept in numbers without ``+``, for service codes (``*31#``) a gateway or provider may be sent.

    Raises :class:`NumberError` for an empty result, any other character, a ``+`` that is not the first
    character or is followed by 0 (no country code starts with 0), and more than 15 digits after ``+``.
    """
    text = "".join(ch for ch in raw if not ch.isspace())
    text = _BRACKETED_TRUNK_PREFIX.sub(r"+\1", text, count=1)
    text = text.translate(_VISUAL)
    if text.startswith("+"):
        if not _INTERNATIONAL.fullmatch(text):
            raise NumberError(f"{raw!r} is not an international number (+ and a country code, digits only)")
        if len(text) - 1 > E164_MAX_DIGITS:
            raise NumberError(f"{raw!r} has more than {E164_MAX_DIGITS} digits (ITU-T E.164 §6)")
        return text
    if not _DIALLED.fullmatch(text):
        raise NumberError(f"{raw!r} is not a telephone number")
    return text


def is_e164(number: str) -> bool:
    """Whether ``number`` (cleaned) is in E.164 form, ``+`` and 1-15 digits."""
    return bool(_INTERNATIONAL.fullmatch(number)) and len(number) <= E164_MAX_DIGITS + 1


def _international(digits: str) -> bool:
    return E164_MIN_DIGITS <= len(digits) <= E164_MAX_DIGITS and digits.isdigit() and digits[0] != "0"


def _national(nsn: str, cc: str) -> bool:
    """Whether ``nsn`` can be a national significant number in the country ``cc`` (E.164 §3.6)."""
    if cc == NANP_COUNTRY_CODE:  # NPA-NXX-XXXX: area and exchange codes start with 2-9
        return len(nsn) == NANP_NATIONAL_DIGITS and nsn[0] not in "01" and nsn[3] not in "01"
    return MIN_NATIONAL_DIGITS <= len(nsn) <= E164_MAX_DIGITS - len(cc)


def to_e164(number: str, plan: NumberPlan) -> str:
    """``number`` as ``+CC...`` when the plan's rules (module docstring) make it an international number, else
    cleaned but otherwise unchanged (extensions, short and service numbers). Idempotent.

    Raises :class:`NumberError` when ``number`` is not a telephone number (see :func:`clean`).
    """
    number = clean(number)
    if number.startswith("+") or "*" in number or "#" in number:
        return number
    ip, np_, cc = plan.international_prefix, plan.national_prefix, plan.country_code
    if ip and number.startswith(ip):
        rest = number[len(ip):]
        return "+" + rest if _international(rest) else number
    if not cc:
        return number
    if np_ and number.startswith(np_):
        nsn = number[len(np_):]
        return "+" + cc + nsn if _national(nsn, cc) else number
    if not np_ or cc == NANP_COUNTRY_CODE:
        return "+" + cc + number if _national(number, cc) else number
    if number.startswith(cc) and CC_WITHOUT_PLUS_MIN_DIGITS <= len(number) <= E164_MAX_DIGITS:
        return "+" + number
    return number


def to_national(number: str, plan: NumberPlan) -> str:
    """``number`` as dialled in the plan's country: national prefix and national significant number for a
    number of that country, international prefix and all digits for a foreign one; short and service numbers
    cleaned but otherwise unchanged. Idempotent.

    An E.164 number with no national form that :func:`to_e164` reads back as the same number (too short, or a
    plan without the prefix needed) keeps its ``+``. Raises :class:`NumberError` like :func:`clean`.
    """
    e164 = to_e164(number, plan)
    if not e164.startswith("+"):
        return e164
    digits = e164[1:]
    cc = plan.country_code
    if cc and digits.startswith(cc):
        candidate = plan.national_prefix + digits[len(cc):]
    elif plan.international_prefix:
        candidate = plan.international_prefix + digits
    else:
        return e164
    if not candidate:  # the country code alone, in a plan without a national prefix: nothing to dial nationally
        return e164
    return candidate if to_e164(candidate, plan) == e164 else e164


def e164_digits(number: str, plan: NumberPlan) -> str | None:
    """The digits of ``number``'s E.164 form without ``+`` (``4930123456``: what ENUM, RFC 6116, and
    digit-only stores want), or None when it has none (an extension, a short or service number)."""
    e164 = to_e164(number, plan)
    return e164[1:] if e164.startswith("+") else None


def format_number(number: str, plan: NumberPlan, fmt: NumberFormat | str) -> str:
    """``number`` in ``fmt`` (a :class:`NumberFormat` or its value); ``as-is`` only cleans it.

    Raises :class:`NumberError` for text that is no number, :class:`ValueError` for an unknown ``fmt``.
    """
    fmt = NumberFormat(fmt)
    if fmt is NumberFormat.E164:
        return to_e164(number, plan)
    if fmt is NumberFormat.NATIONAL:
        return to_national(number, plan)
    return clean(number)
