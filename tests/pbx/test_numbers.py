"""Number forms per trunk (pbx/numbers.py): real plans, and properties over generated numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.pbx.numbers import NumberError, NumberFormat, NumberPlan, clean, format_number, to_e164, to_national

GERMANY = NumberPlan("49", "0", "00")
NANP = NumberPlan("1", "1", "011")
UK = NumberPlan("44", "0", "00")
FRANCE = NumberPlan("33", "0", "00")
PLANS = (GERMANY, NANP, UK, FRANCE)


@pytest.mark.parametrize(("plan", "raw", "e164", "national"), [
    (GERMANY, "030 1234-567", "+49301234567", "0301234567"),
    (GERMANY, "0049 30 1234567", "+49301234567", "0301234567"),
    (GERMANY, "49301234567", "+49301234567", "0301234567"),  # sent without "+"
    (GERMANY, "+44 20 7946 0000", "+442079460000", "00442079460000"),
    (GERMANY, "112", "112", "112"),  # a service number stays short
    (GERMANY, "1001", "1001", "1001"),
    (NANP, "1 (212) 555-0100", "+12125550100", "12125550100"),
    (NANP, "212.555.0100", "+12125550100", "12125550100"),  # ten digits without the 1
    (NANP, "011 49 30 1234567", "+49301234567", "01149301234567"),
    (NANP, "911", "911", "911"),
    (UK, "020 7946 0000", "+442079460000", "02079460000"),
    (FRANCE, "01 23 45 67 89", "+33123456789", "0123456789"),
])
def test_real_plans(plan: NumberPlan, raw: str, e164: str, national: str) -> None:
    assert to_e164(raw, plan) == e164
    assert to_national(raw, plan) == national
    assert format_number(raw, plan, NumberFormat.E164) == e164
    assert format_number(raw, plan, "national") == national
    assert format_number(raw, plan, NumberFormat.AS_IS) == clean(raw)


def test_without_a_country_code_only_international_forms_become_e164() -> None:
    plan = NumberPlan()
    assert to_e164("0301234567", plan) == "0301234567"
    assert to_e164("0049301234567", plan) == "+49301234567"


@pytest.mark.parametrize("raw", ["", "anonymous", "12a3", "+", "1+2", "++49", "+1234567890123456", "*97"])
def test_what_is_no_number_is_refused(raw: str) -> None:
    with pytest.raises(NumberError):
        clean(raw)


@pytest.mark.parametrize("plan", [("049", "0", "00"), ("1", "x", "011"), ("1", "1", "00000")])
def test_bad_plans_are_refused(plan: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        NumberPlan(*plan)


national_numbers = st.text(alphabet="0123456789", min_size=7, max_size=11).filter(lambda s: s[0] != "0")


@given(st.sampled_from(PLANS), national_numbers)
def test_e164_of_the_plans_country_round_trips(plan: NumberPlan, nsn: str) -> None:
    if plan is NANP:
        nsn = ("2" + nsn)[:10].ljust(10, "5")  # NANP: ten digits, NPA starting 2-9
    e164 = "+" + plan.country_code + nsn
    national = to_national(e164, plan)
    assert national == plan.national_prefix + nsn
    assert to_e164(national, plan) == e164
    assert to_e164(e164, plan) == e164 and to_national(national, plan) == national  # idempotent


@given(st.sampled_from(PLANS), st.text(alphabet="0123456789", min_size=1, max_size=14))
def test_plus_numbers_never_lose_digits(plan: NumberPlan, digits: str) -> None:
    number = "+" + digits
    assert to_e164(number, plan) == number
    assert to_national(number, plan).endswith(digits[len(plan.country_code):] if digits.startswith(
        plan.country_code) else digits)


@given(st.sampled_from(PLANS), st.text(max_size=30))
def test_any_text_gives_a_number_or_number_error(plan: NumberPlan, text: str) -> None:
    for fmt in NumberFormat:
        try:
            out = format_number(text, plan, fmt)
        except NumberError:
            continue
        assert out and out.lstrip("+").isdigit()
