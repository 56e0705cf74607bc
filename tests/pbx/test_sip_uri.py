"""SIP/SIPS URIs (RFC 3261 §19.1) and name-addr / addr-spec (§20.10, §25.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.uri import AbsoluteUri, NameAddr, SipUri, parse_params, parse_uri, split_quoted


def test_full_sip_uri() -> None:
    uri = SipUri.parse("sip:alice:secret@atlanta.example.com:5070;transport=tcp;lr?subject=project&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "alice", "secret", "atlanta.example.com", 5070)
    assert uri.params == (("transport", "tcp"), ("lr", None))
    assert uri.headers == (("subject", "project"), ("priority", "urgent"))
    assert uri.transport == "tcp" and uri.hostport == ("atlanta.example.com", 5070)
    assert str(uri) == "sip:alice:secret@atlanta.example.com:5070;transport=tcp;lr?subject=project&priority=urgent"


@pytest.mark.parametrize(("text", "host", "port", "default"), [
    ("sip:192.0.2.4", "192.0.2.4", None, 5060),
    ("sip:bob@[2001:db8::10]:5070", "2001:db8::10", 5070, 5070),
    ("sips:[::1]", "::1", None, 5061),
    ("SIP:Bob@Biloxi.Example.COM", "Biloxi.Example.COM", None, 5060),
])
def test_hosts_and_default_ports(text: str, host: str, port: int | None, default: int) -> None:
    uri = SipUri.parse(text)
    assert uri.host == host and uri.port == port and uri.hostport[1] == default
    assert SipUri.parse(str(uri)) == uri


def test_ipv6_serialises_with_brackets() -> None:
    assert str(SipUri(user="bob", host="2001:db8::10", port=5070)) == "sip:bob@[2001:db8::10]:5070"


def test_sips_scheme_is_lower_cased() -> None:
    uri = SipUri.parse("SIPS:alice@example.com")
    assert uri.scheme == "sips" and uri.hostport == ("example.com", 5061)


def test_escaped_user_and_user_with_reserved_characters() -> None:
    uri = SipUri.parse("sip:%61lice%20smith@example.com")
    assert uri.user == "%61lice%20smith" and uri.user_unescaped == "alice smith"
    # user-unreserved ; ? / may appear in the user part (RFC 4475 §3.1.1.9): the last '@' ends userinfo.
    uri = SipUri.parse("sip:user;par=u%40example.net@example.com;maddr=192.0.2.1")
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com"
    assert uri.params == (("maddr", "192.0.2.1"),)
    uri = SipUri.parse("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert uri.user == "+1-212-555-1212" and uri.password == "1234" and uri.param("user") == "phone"


def test_param_helpers_are_case_insensitive_and_immutable() -> None:
    uri = SipUri.parse("sip:example.com;Transport=UDP")
    assert uri.param("transport") == "UDP" and uri.transport == "udp"
    changed = uri.with_param("lr").without_param("TRANSPORT")
    assert str(changed) == "sip:example.com;lr" and str(uri) == "sip:example.com;Transport=UDP"
    assert str(uri.with_host("192.0.2.1", 5080)) == "sip:192.0.2.1:5080;Transport=UDP"
    assert SipUri.parse("sip:Alice@Example.COM:5070;lr").address_of_record() == SipUri(user="Alice",
                                                                                      host="example.com")


@pytest.mark.parametrize("text", [
    "sip:", "sip:@example.com", "sip:alice@", "sip:alice@exa mple.com", "sip:alice@example.com:0",
    "sip:alice@example.com:65536", "sip:alice@example.com:port", "sip:alice@example.com;;lr",
    "sip:alice@example.com;", "sip:alice@example.com?", "sip:al ice@example.com", "sip:alice@[::1",
    "sip:alice@example.com;=x", "sip:a\"b@example.com",
])
def test_bad_sip_uris(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        SipUri.parse(text)
    assert info.value.status_hint == 400


@pytest.mark.parametrize("text", ["tel:+1-201-555-0123", "http://example.com/", "mailto:a@example.com", "urn:x"])
def test_other_schemes_are_not_sip_uris_416(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        SipUri.parse(text)
    assert info.value.status_hint == 416


def test_tel_uri_is_an_absolute_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri == AbsoluteUri("tel", "+1-201-555-0123;phone-context=example.com")
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"
    for bad in ("tel", "1tel:x", "tel:", "tel:a b"):
        with pytest.raises(SipParseError):
            parse_uri(bad)


# ---- name-addr / addr-spec ----------------------------------------------------------------------------------
def test_name_addr_parameter_ownership() -> None:
    # §20.10: inside <> the URI keeps its parameters; outside, they are the header's.
    bracketed = NameAddr.parse("<sip:alice@example.com;transport=tcp>;tag=1234;expires=60")
    assert bracketed.sip_uri.params == (("transport", "tcp"),)
    assert bracketed.params == (("tag", "1234"), ("expires", "60")) and bracketed.tag == "1234"
    bare = NameAddr.parse("sip:alice@example.com;transport=tcp;tag=1234")
    assert bare.sip_uri.params == ()
    assert bare.params == (("transport", "tcp"), ("tag", "1234"))
    assert str(bare) == "<sip:alice@example.com>;transport=tcp;tag=1234"


@pytest.mark.parametrize(("text", "display"), [
    ('"Alice" <sip:alice@example.com>', "Alice"),
    ('"Smith, John" <sip:j@example.com>', "Smith, John"),
    ('"say \\"hi\\" \\\\ back"<sip:j@example.com>', 'say "hi" \\ back'),
    ('"" <sip:j@example.com>', ""),
    ("Alice Smith <sip:alice@example.com>", "Alice Smith"),
    ("<sip:alice@example.com>", None),
    ('"<sip:not@this>" <sip:real@example.com>', "<sip:not@this>"),
])
def test_display_names(text: str, display: str | None) -> None:
    addr = NameAddr.parse(text)
    assert addr.display_name == display
    assert NameAddr.parse(str(addr)) == addr


@pytest.mark.parametrize("text", [
    '"unterminated <sip:a@example.com>', "Smith, John <sip:j@example.com>", '"a" sip:a@example.com',
    "<sip:a@example.com", "<sip:a@example.com> junk", "sip:a@example.com?Route=x", "sip:a b@example.com",
    "", "<sip:a@example.com>;;tag=1", "<sip:a@example.com>;tag=1;",
])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


def test_name_addr_with_tel_uri_and_helpers() -> None:
    addr = NameAddr.parse("<tel:+15551234>;tag=9")
    assert addr.uri == AbsoluteUri("tel", "+15551234")
    with pytest.raises(SipParseError) as info:
        addr.sip_uri  # noqa: B018
    assert info.value.status_hint == 416
    tagged = NameAddr.parse("<sip:b@example.com>").with_tag("abc")
    assert str(tagged) == "<sip:b@example.com>;tag=abc" and tagged.param("TAG") == "abc"


def test_quoted_param_value_with_brackets() -> None:
    addr = NameAddr.parse('<sip:a@127.0.0.1:5060;transport=UDP>;+sip.instance="<urn:uuid:1-2>";expires=60')
    assert addr.param("+sip.instance") == '"<urn:uuid:1-2>"' and addr.param("expires") == "60"


def test_parse_params_and_split_quoted() -> None:
    assert parse_params(";a=1; b ;c = \"x;y\"") == (("a", "1"), ("b", None), ("c", '"x;y"'))
    assert parse_params("") == ()
    with pytest.raises(SipParseError):
        parse_params(";a;;b")
    assert split_quoted('a, "b,c", <d,e>, f', ",") == ["a", ' "b,c"', " <d,e>", " f"]
    with pytest.raises(SipParseError):
        split_quoted('"open, ended', ",")


def _split_quoted_by_characters(text: str, sep: str) -> list[str]:
    """The first implementation, a character at a time: the model the token scanner must agree with."""
    parts: list[str] = []
    depth, quoted, start, i = 0, False, 0, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError("unterminated")
    parts.append(text[start:])
    return parts


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(['"', "\\", "<", ">", ",", ";", "a", " ", "\n", "="]), max_size=30).map("".join),
       st.sampled_from([",", ";"]))
def test_split_quoted_agrees_with_a_character_scan(text: str, sep: str) -> None:
    try:
        expected = _split_quoted_by_characters(text, sep)
    except SipParseError:
        with pytest.raises(SipParseError):
            split_quoted(text, sep)
        return
    assert split_quoted(text, sep) == expected


def test_parsed_uris_are_shared_per_text_and_bad_text_raises_every_time() -> None:
    from ccpbx.pbx.sip import uri as uri_module

    first = uri_module.parse_uri("sip:1001@pbx.example.com:5060;transport=udp")
    assert uri_module.parse_uri("sip:1001@pbx.example.com:5060;transport=udp") is first  # one parse per text
    assert first == uri_module._parse_uri("sip:1001@pbx.example.com:5060;transport=udp")
    for _ in range(2):  # a failure is not kept: the second call parses (and fails) again
        with pytest.raises(SipParseError):
            uri_module.parse_uri("sip:")
    assert uri_module.parse_uri.cache_info().maxsize == 2048  # bounded: peers' one-off URIs cannot grow it
