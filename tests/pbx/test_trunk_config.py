"""[[trunk]], [[route]], [[profile]], [outbound] and from_trunk: loading, cross-checks, and the decisions the
dial plan and the toll-fraud policy make with them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccpbx.pbx.config import (
    ConfigError,
    DestinationKind,
    OutboundClass,
    ReliableProvisional,
    parse_config,
    parse_source,
    shipped_profiles,
)
from ccpbx.pbx.dialplan import DialPlan, FeatureRequest, Route
from ccpbx.pbx.outbound_policy import OutboundPolicy

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

TRUNKS = """
[[trunk]]
name = "main"
host = "sip.provider.example"
username = "4930123456"
password = "pw"
register = true

[[trunk]]
name = "gw"
host = "192.0.2.7"
profile = "patton-smartnode"
allowed_sources = ["192.0.2.7", "198.51.100.0/24"]
max_channels = 30

[[route]]
name = "out"
trunks = ["main", "gw"]

[dialplan]
rule = [
  { match = "_9X.", destination = "route:out", strip = 1 },
  { match = "+4930123456", destination = "extension:1001", from_trunk = "main" },
  { match = "_2XX", destination = "extension:1{number}", from_trunk = "gw", strip = 0 },
  { match = "_X.", destination = "hangup:404", from_trunk = "*" },
]
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ccpbx.toml")
    return info.value


def test_trunks_routes_and_rules_load() -> None:
    config = parse_config(TRUNKS)
    assert [t.name for t in config.trunk] == ["main", "gw"]
    assert config.trunk[0].register and config.trunk[0].profile == "generic"
    assert config.trunk[1].max_channels == 30
    assert config.route[0].trunks == ("main", "gw")
    assert config.profiles()["patton-smartnode"].prack is ReliableProvisional.REQUIRED


def test_shipped_profiles_are_valid_and_named_after_their_file() -> None:
    profiles = shipped_profiles()
    assert {"generic", "generic-gateway", "audiocodes-mediant", "patton-smartnode", "grandstream-gxw",
            "cisco-isr", "sangoma-vega"} <= set(profiles)
    for name, profile in profiles.items():
        assert profile.name == name and profile.description


def test_a_user_profile_replaces_a_shipped_one() -> None:
    config = parse_config('[[profile]]\nname = "generic"\ndtmf = "info"\n')
    assert config.profiles()["generic"].dtmf.value == "info"


@pytest.mark.parametrize(("text", "where", "message"), [
    ('[[route]]\nname = "r"\ntrunks = ["nope"]\n', "[[route]] #1 trunks", 'names trunk "nope"'),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\nprofile = "nope"\n', "[[trunk]] #1 profile", "is not a profile"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\nregister = true\n', "[[trunk]] #1 username", "is required"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\nallowed_sources = ["10.0.0.0/8:5060"]\n', "allowed_sources",
     "a port goes with one address"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\nallowed_sources = ["example.com"]\n', "allowed_sources",
     "is not an address"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\ncountry_code = "0049"\n', "country_code", "country calling code"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\n[[trunk]]\nname = "t"\nhost = "h2.example"\n', "[[trunk]] #2 name",
     "already the name"),
    ('[dialplan]\nrule = [{ match = "1", destination = "extension:1001", from_trunk = "zz" }]\n', "from_trunk",
     'names trunk "zz"'),
    ('[[profile]]\nname = "p"\ncodecs = ["G729"]\n', "codecs", "not a codec"),
    ('[[trunk]]\nname = "t"\nhost = "h.example"\nnational_prefix = "0"\ninternational_prefix = "0"\n',
     "international_prefix", "prefix"),
    ('[outbound]\nclasses = ["gold"]\n', "classes", ""),
])
def test_bad_trunk_configuration_is_named(text: str, where: str, message: str) -> None:
    error = _error(text)
    assert where in str(error) and message in str(error)


def test_sources_parse_networks_and_address_ports() -> None:
    network, port = parse_source("[::1]:5070")
    assert str(network) == "::1/128" and port == 5070
    network, port = parse_source("10.1.2.0/24")
    assert network.num_addresses == 256 and port is None
    assert parse_source("127.0.0.2:5080")[1] == 5080


# ---- the dial plan: calls from trunks reach only their rules ----------------------------------------------

def _plan() -> DialPlan:
    return DialPlan.from_config(parse_config(TRUNKS))


def test_a_trunk_call_is_routed_by_its_rules_only() -> None:
    plan = _plan()
    extensions = {"1001", "1201"}
    route = plan.route("+4930123456", "+15550001", extensions, now=NOW, trunk="main")
    assert isinstance(route, Route) and route.destination.target == "1001"
    # an outside caller dialling an outside number, an extension, a feature code: only the catch-all "*" rule
    for dialled in ("90049301234", "1001", "*97", "*72004930"):
        route = plan.route(dialled, "+15550001", extensions, now=NOW, trunk="main")
        assert route is None or (isinstance(route, Route) and str(route.destination) == "hangup:404"), dialled
    route = plan.route("201", "0301234", extensions, now=NOW, trunk="gw")
    assert isinstance(route, Route) and str(route.destination) == "extension:1201"
    # another trunk's DID rule does not apply to this trunk
    assert plan.route("+4930123456", "0301234", extensions, now=NOW, trunk="gw") is None


def test_internal_calls_never_use_from_trunk_rules() -> None:
    plan = _plan()
    route = plan.route("+4930123456", "1002", {"1001", "1002"}, now=NOW)
    assert route is None
    route = plan.route("90301234", "1002", {"1001"}, now=NOW)
    assert isinstance(route, Route) and route.destination.kind is DestinationKind.ROUTE and route.number == "0301234"
    assert isinstance(plan.route("*97", "1002", {"1002"}, now=NOW), FeatureRequest)


@given(st.text(alphabet="0123456789*#+", min_size=1, max_size=12))
def test_no_trunk_call_reaches_a_route_or_feature(dialled: str) -> None:
    route = _plan().route(dialled, "+15550001", {"1001", "1002"}, now=NOW, trunk="main")
    assert not isinstance(route, FeatureRequest)
    assert route is None or route.destination.kind in (DestinationKind.EXTENSION, DestinationKind.HANGUP)


# ---- toll-fraud classes and limits ------------------------------------------------------------------------

POLICY = """
[outbound]
mobile = ["_01[5-7]."]
max_calls = 1
[[outbound.extension]]
extensions = ["1001"]
classes = ["internal", "national", "mobile", "international"]
max_calls = 3
caller_id = "+49301234{caller}"
"""


@pytest.mark.parametrize(("number", "number_class"), [
    ("112", OutboundClass.EMERGENCY), ("0900123456", OutboundClass.PREMIUM),
    ("0044207946000", OutboundClass.INTERNATIONAL), ("+442079460000", OutboundClass.INTERNATIONAL),
    ("01701234567", OutboundClass.MOBILE), ("0301234567", OutboundClass.NATIONAL), ("1234", OutboundClass.NATIONAL),
])
def test_numbers_are_classified(number: str, number_class: OutboundClass) -> None:
    policy = OutboundPolicy(parse_config(POLICY).outbound)
    assert policy.classify(number) is number_class


def test_extensions_get_their_classes_and_limits() -> None:
    policy = OutboundPolicy(parse_config(POLICY).outbound)
    assert policy.check("1001", "0044207946000", 0)[1] is None
    refused = policy.check("1002", "0044207946000", 0)[1]
    assert refused is not None and refused.kind == "class" and refused.status == 403
    assert policy.check("1002", "0301234567", 0)[1] is None
    limit = policy.check("1002", "0301234567", 1)[1]
    assert limit is not None and limit.kind == "limit"
    assert policy.check("1001", "0301234567", 2)[1] is None
    assert policy.check("1002", "112", 5)[1] is None  # emergency: always, never limited
    premium = policy.check("1001", "0900123456", 0)[1]
    assert premium is not None and premium.number_class is OutboundClass.PREMIUM
    # a route that fixes the class wins over the patterns
    assert policy.check("1002", "0301234567", 0, OutboundClass.INTERNATIONAL)[1] is not None
    assert policy.permission("1001").caller_id == "+49301234{caller}"


@pytest.mark.parametrize(("destination", "message"), [("route:nope", "names route 'nope'"),
                                                      ("trunk:nope", "names trunk 'nope'")])
def test_config_check_refuses_unknown_routes_and_trunks(destination: str, message: str) -> None:
    from ccpbx.pbx.wiring import check_destinations

    config = parse_config(TRUNKS.replace('destination = "route:out"', f'destination = "{destination}"'),
                          "ccpbx.toml")
    with pytest.raises(ConfigError) as info:
        check_destinations(config)
    assert message in str(info.value) and "[[dialplan.rule]] #1 destination" in str(info.value)
