"""Telephone number normalisation per trunk (ITU-T E.164, E.123): real plans, then properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ccpbx.pbx.numbers import (
    E164_MAX_DIGITS,
    MIN_NATIONAL_DIGITS,
    NumberError,
    NumberFormat,
    NumberPlan,
    clean,
    e164_digits,
    format_number,
    is_e164,
    to_e164,
    to_national,
)

NANP = NumberPlan("1", "1", "011")
GERMANY = NumberPlan("49", "0", "00")
UK = NumberPlan("44", "0", "00")
FRANCE = NumberPlan("33", "0", "00")
ITALY = NumberPlan("39", "", "00")  # no trunk prefix: the leading 0 of Rome's numbers is part of the number
RUSSIA = NumberPlan("7", "8", "810")
AUSTRALIA = NumberPlan("61", "0", "0011")
NO_COUNTRY = NumberPlan()
PLANS = (NANP, GERMANY, UK, FRANCE, ITALY, RUSSIA, AUSTRALIA, NO_COUNTRY)


# -- the plan ------------------------------------------------------------------------------------------------

def test_the_plan_defaults_and_validation() -> None:
    assert NumberPlan() == NumberPlan("", "0", "00")
    with pytest.raises(ValueError, match="country code '049'"):
        NumberPlan("049")
    with pytest.raises(ValueError, match="country code"):
        NumberPlan("1234")
    with pytest.raises(ValueError, match="national prefix 'O'"):
        NumberPlan("49", "O")
    with pytest.raises(ValueError, match="international prefix '00000'"):
        NumberPlan("49", "0", "00000")
    with pytest.raises(ValueError, match="must differ"):
        NumberPlan("49", "0", "0")
    with pytest.raises(ValueError, match="not begin it"):
        NumberPlan("49", "00", "0")
    assert NumberPlan("39", "", "00").national_prefix == ""
    assert NumberPlan("49", "0", "").international_prefix == ""


def test_the_plan_is_a_frozen_value() -> None:
    with pytest.raises(AttributeError):
        GERMANY.country_code = "33"  # type: ignore[misc]
    assert not hasattr(GERMANY, "__dict__")
    assert NumberPlan("49", "0", "00") == GERMANY and hash(NumberPlan("49", "0", "00")) == hash(GERMANY)


# -- clean ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "cleaned"), [
    ("+49 30 1234567", "+49301234567"),
    ("+1 (212) 555-0100", "+12125550100"),
    ("(0)30 / 123 45-67", "0301234567"),
    ("030/1234567", "0301234567"),
    ("212.555.0100", "2125550100"),
    ("  1001\t", "1001"),
    ("+44 (0)20 7946 0000", "+442079460000"),  # E.123 §2.5's "(0)" in an international number
    ("+44(0)2079460000", "+442079460000"),
    ("+33 (0) 1 23 45 67 89", "+33123456789"),
    ("+49\u00a030\u2009123456", "+4930123456"),  # no-break and thin spaces
    ("*31#", "*31#"),
    ("#31#0301234567", "#31#0301234567"),
    ("112", "112"),
    ("0", "0"),
])
def test_clean_strips_visual_separators(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


@pytest.mark.parametrize("raw", [
    "", "   ", "-", "()", "+", "+ ", "49+30", "++4930", "+0301234567", "alice", "1001a", "tel:+4930",
    "+49*30", "+4930#", "1,2", "1;ext=2", "١٢٣",  # Arabic-Indic digits are not ASCII digits
    "+1234567890123456",  # 16 digits
])
def test_clean_refuses_what_is_no_number(raw: str) -> None:
    with pytest.raises(NumberError):
        clean(raw)
    assert issubclass(NumberError, ValueError)


def test_clean_keeps_fifteen_digits() -> None:
    assert clean("+123 456 789 012 345") == "+123456789012345"


# -- to_e164 / to_national with real plans -------------------------------------------------------------------

@pytest.mark.parametrize(("plan", "raw", "e164", "national"), [
    # Germany
    (GERMANY, "030 1234567", "+49301234567", "0301234567"),
    (GERMANY, "0049 30 1234567", "+49301234567", "0301234567"),
    (GERMANY, "+49 30 1234567", "+49301234567", "0301234567"),
    (GERMANY, "49301234567", "+49301234567", "0301234567"),  # the country code without '+', as gateways send
    (GERMANY, "0171 1234567", "+491711234567", "01711234567"),
    (GERMANY, "0044 20 7946 0000", "+442079460000", "00442079460000"),
    (GERMANY, "+1 212 555 0100", "+12125550100", "0012125550100"),
    (GERMANY, "1234567", "1234567", "1234567"),  # a local subscriber number: no area code known
    (GERMANY, "112", "112", "112"),
    (GERMANY, "110", "110", "110"),
    (GERMANY, "0110", "0110", "0110"),  # too short for a national number
    (GERMANY, "00123", "00123", "00123"),  # too short for an international one: not "+49 0123"
    (GERMANY, "*31#030123456", "*31#030123456", "*31#030123456"),
    # NANP
    (NANP, "(212) 555-0100", "+12125550100", "12125550100"),
    (NANP, "1-212-555-0100", "+12125550100", "12125550100"),
    (NANP, "+1 212 555 0100", "+12125550100", "12125550100"),
    (NANP, "011 49 30 1234567", "+49301234567", "01149301234567"),
    (NANP, "011 44 20 7946 0000", "+442079460000", "011442079460000"),
    (NANP, "555-0100", "5550100", "5550100"),  # seven-digit local dialling
    (NANP, "911", "911", "911"),
    (NANP, "1025550100", "1025550100", "1025550100"),  # area codes never start with 0 or 1
    (NANP, "2125550100", "+12125550100", "12125550100"),  # ten digits without the 1
    (NANP, "2121550100", "2121550100", "2121550100"),  # nor exchange codes
    (NANP, "1010321 2125550100", "10103212125550100", "10103212125550100"),  # a dial-around code
    (NANP, "12125550100123", "12125550100123", "12125550100123"),  # an NSN has ten digits
    # United Kingdom
    (UK, "020 7946 0000", "+442079460000", "02079460000"),
    (UK, "+44 (0)20 7946 0000", "+442079460000", "02079460000"),
    (UK, "07700 900123", "+447700900123", "07700900123"),
    (UK, "0800 1111", "+448001111", "08001111"),
    (UK, "00 33 1 23 45 67 89", "+33123456789", "0033123456789"),
    (UK, "999", "999", "999"),
    # France
    (FRANCE, "01 23 45 67 89", "+33123456789", "0123456789"),
    (FRANCE, "06.12.34.56.78", "+33612345678", "0612345678"),
    (FRANCE, "+33 (0)1 23 45 67 89", "+33123456789", "0123456789"),
    (FRANCE, "0049 30 1234567", "+49301234567", "0049301234567"),
    (FRANCE, "15", "15", "15"),
    # Italy: no trunk prefix, the 0 belongs to the number
    (ITALY, "06 1234 5678", "+390612345678", "0612345678"),
    (ITALY, "333 123 4567", "+393331234567", "3331234567"),
    (ITALY, "+39 393 123 4567", "+393931234567", "3931234567"),  # starts with 39: still national
    (ITALY, "0049 30 1234567", "+49301234567", "0049301234567"),
    (ITALY, "1001", "1001", "1001"),
    # Russia: the trunk prefix 8 begins the international prefix 810
    (RUSSIA, "8 495 123-45-67", "+74951234567", "84951234567"),
    (RUSSIA, "810 49 30 1234567", "+49301234567", "81049301234567"),
    # Australia
    (AUSTRALIA, "(02) 9876 5432", "+61298765432", "0298765432"),
    (AUSTRALIA, "0011 1 212 555 0100", "+12125550100", "001112125550100"),
    # no country code: only '+' and the international prefix
    (NO_COUNTRY, "030 1234567", "0301234567", "0301234567"),
    (NO_COUNTRY, "0049301234567", "+49301234567", "0049301234567"),
    (NO_COUNTRY, "+49 30 1234567", "+49301234567", "0049301234567"),
])
def test_real_plans(plan: NumberPlan, raw: str, e164: str, national: str) -> None:
    assert to_e164(raw, plan) == e164
    assert to_national(raw, plan) == national
    assert format_number(raw, plan, NumberFormat.E164) == e164
    assert format_number(raw, plan, "national") == national
    assert format_number(raw, plan, NumberFormat.AS_IS) == clean(raw)
    assert to_e164(national, plan) == e164


def test_an_e164_number_without_a_national_form_keeps_its_plus() -> None:
    # "+49 0171..." would be written 00171..., which reads back as +171...: keep the '+'
    assert to_national("+4901711234567", GERMANY) == "+4901711234567"
    assert to_national("+491234", GERMANY) == "+491234"  # a national significant number too short
    assert to_national("+123456", GERMANY) == "+123456"  # shorter than any international number
    assert to_national("+74951234567", NumberPlan("", "8", "")) == "+74951234567"  # no international prefix
    assert to_national("+71012345678", RUSSIA) == "+71012345678"  # 8 10...: the international prefix
    assert to_national("+11234567890", NANP) == "+11234567890"  # no NANP number


def test_e164_digits_and_is_e164() -> None:
    assert e164_digits("030 1234567", GERMANY) == "49301234567"
    assert e164_digits("112", GERMANY) is None
    assert e164_digits("+12125550100", NO_COUNTRY) == "12125550100"
    assert is_e164("+49301234567")
    assert not is_e164("49301234567")
    assert not is_e164("+0301234567")
    assert not is_e164("+1234567890123456")


def test_number_format_values() -> None:
    assert [f.value for f in NumberFormat] == ["e164", "national", "as-is"]
    assert NumberFormat("as-is") is NumberFormat.AS_IS
    with pytest.raises(ValueError):
        format_number("030123456", GERMANY, "international")


# -- properties ----------------------------------------------------------------------------------------------

plans = st.sampled_from(PLANS)
country_plans = st.sampled_from([p for p in PLANS if p.country_code])
digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=18)
separators = st.sampled_from([" ", "-", ".", "  ", ""])


def digits(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=size, max_size=size)


@st.composite
def written(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with visual separators put between them (never brackets, which may hide a "(0)")."""
    return "".join(ch + draw(separators) for ch in digits)


@st.composite
def e164_numbers(draw: st.DrawFn) -> str:
    """Any well-formed E.164 number: '+', a first digit 1-9, at most 15 digits."""
    first = draw(st.sampled_from("123456789"))
    rest = draw(st.text(alphabet="0123456789", max_size=E164_MAX_DIGITS - 1))
    return "+" + first + rest


@st.composite
def own_numbers(draw: st.DrawFn, plan: NumberPlan) -> tuple[str, str]:
    """An E.164 number of ``plan``'s country and its national significant number."""
    if plan.country_code == "1":  # NPA-NXX-XXXX
        n = st.sampled_from("23456789")
        nsn = draw(n) + draw(digits(2)) + draw(n) + draw(digits(6))
        return "+1" + nsn, nsn
    size = draw(st.integers(MIN_NATIONAL_DIGITS, E164_MAX_DIGITS - len(plan.country_code)))
    first = draw(st.sampled_from("0123456789" if not plan.national_prefix else "123456789"))
    nsn = first + draw(st.text(alphabet="0123456789", min_size=size - 1, max_size=size - 1))
    return "+" + plan.country_code + nsn, nsn


@st.composite
def number_like(draw: st.DrawFn) -> str:
    """Text near telephone numbers: digits, '+', '*', '#', separators, sometimes a stray letter."""
    return draw(st.text(alphabet="0123456789+*# -.()/x", max_size=24))


@given(country_plans, st.data())
def test_national_round_trip_for_the_plans_own_numbers(plan: NumberPlan, data: st.DataObject) -> None:
    e164, nsn = data.draw(own_numbers(plan))
    national = to_national(e164, plan)
    assert to_e164(national, plan) == e164
    if not (plan.national_prefix + nsn).startswith(plan.international_prefix or "+"):
        assert national == plan.national_prefix + nsn  # a real national number, not the '+' form kept


@given(plans, e164_numbers())
def test_every_e164_number_round_trips(plan: NumberPlan, e164: str) -> None:
    national = to_national(e164, plan)
    assert to_e164(national, plan) == e164
    assert to_e164(e164, plan) == e164
    assert format_number(national, plan, "e164") == e164


@given(plans, e164_numbers())
def test_foreign_numbers_get_the_international_prefix(plan: NumberPlan, e164: str) -> None:
    assume(not plan.country_code or not e164[1:].startswith(plan.country_code))
    assume(len(e164) - 1 >= 7 and plan.international_prefix)
    assert to_national(e164, plan) == plan.international_prefix + e164[1:]


@given(plans, number_like())
def test_both_forms_are_idempotent(plan: NumberPlan, raw: str) -> None:
    try:
        e164 = to_e164(raw, plan)
    except NumberError:
        return
    assert to_e164(e164, plan) == e164
    national = to_national(raw, plan)
    assert to_national(national, plan) == national
    assert to_e164(national, plan) == e164  # both forms name the same number
    assert to_national(e164, plan) == national
    assert clean(clean(raw)) == clean(raw)


@given(plans, st.data())
def test_plus_numbers_never_lose_digits(plan: NumberPlan, data: st.DataObject) -> None:
    e164 = data.draw(e164_numbers())
    raw = "+" + data.draw(written(e164[1:]))
    assert clean(raw) == e164
    assert to_e164(raw, plan) == e164
    national = to_national(raw, plan)
    assert national == e164 or national.endswith(e164[1 + len(plan.country_code):])
    assert re.sub(r"\D", "", national).endswith(e164[1 + len(plan.country_code):])


@given(plans, digit_strings)
def test_digits_only_never_raise_and_stay_digits(plan: NumberPlan, digits: str) -> None:
    for fmt in NumberFormat:
        out = format_number(digits, plan, fmt)
        assert re.fullmatch(r"\+?[0-9]+", out)
        assert len(out.lstrip("+")) <= max(len(digits), E164_MAX_DIGITS)


@settings(max_examples=300)
@given(plans, st.one_of(st.text(), number_like()), st.sampled_from(list(NumberFormat)))
def test_arbitrary_text_raises_only_number_error(plan: NumberPlan, raw: str, fmt: NumberFormat) -> None:
    for function in (clean, lambda r: to_e164(r, plan), lambda r: to_national(r, plan),
                     lambda r: format_number(r, plan, fmt), lambda r: e164_digits(r, plan) or "0"):
        try:
            out = function(raw)
        except NumberError:
            continue
        assert re.fullmatch(r"\+?[0-9]+|[0-9*#]+", out), (raw, out)


@given(st.text(max_size=5), st.text(max_size=5), st.text(max_size=5))
def test_a_plan_is_made_or_refused_with_value_error(cc: str, np_: str, ip: str) -> None:
    try:
        plan = NumberPlan(cc, np_, ip)
    except ValueError:
        return
    assert to_e164("+4930123456", plan) == "+4930123456"


def test_the_country_code_alone_keeps_its_plus() -> None:
    # found by the round-trip property: "+39" in a plan without a national prefix has no national form
    plan = NumberPlan(country_code="39", national_prefix="", international_prefix="00")
    assert to_national("+39", plan) == "+39"
    assert to_e164(to_national("+39", plan), plan) == "+39"
