"""Registrar decisions (RFC 3261 §10.3) over the in-memory location service."""

from __future__ import annotations

from ccpbx.pbx.location import LocationService
from ccpbx.pbx.registrar import Registrar, RegistrarPolicy
from ccpbx.pbx.sip.message import Request, parse_message

SOURCE = ("udp", "198.51.100.7", 40001)
NOW = 1_700_000_000.0


def register(*contacts: str, expires: int | None = None, call_id: str = "c1", cseq: int = 1,
             extra: tuple[str, ...] = ()) -> Request:
    lines = ["REGISTER sip:pbx.example SIP/2.0", "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
             "From: <sip:201@pbx.example>;tag=a", "To: <sip:201@pbx.example>", f"Call-ID: {call_id}",
             f"CSeq: {cseq} REGISTER", "User-Agent: test-phone/1.0", *extra]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def make() -> Registrar:
    return Registrar(LocationService(), RegistrarPolicy(min_expires=60, max_expires=3600, default_expires=1800,
                                                        max_contacts=3))


def test_binding_is_created_with_source_and_expiry() -> None:
    reg = make()
    result = reg.register(register("<sip:201@10.0.0.1:5060>", expires=120), "201", SOURCE, NOW)
    assert result.status == 200
    (binding,) = result.saved
    assert binding.contact == "sip:201@10.0.0.1:5060" and binding.expires_at == NOW + 120
    assert (binding.transport, binding.source_host, binding.source_port) == SOURCE
    assert binding.user_agent == "test-phone/1.0"
    assert ("Contact", "<sip:201@10.0.0.1:5060>;expires=120") in result.headers
    assert any(name == "Date" for name, _ in result.headers)


def test_expiry_comes_from_contact_param_then_header_then_default_and_is_capped() -> None:
    reg = make()
    result = reg.register(register("<sip:a@h1>;expires=300", "<sip:a@h2>", "<sip:a@h3>;expires=99999"),
                          "201", SOURCE, NOW)
    got = {b.contact: b.expires_at - NOW for b in result.saved}
    assert got == {"sip:a@h1": 300, "sip:a@h2": 1800, "sip:a@h3": 3600}


def test_too_brief_gets_423_with_min_expires_and_changes_nothing() -> None:
    reg = make()
    result = reg.register(register("<sip:a@h1>", expires=10), "201", SOURCE, NOW)
    assert result.status == 423 and ("Min-Expires", "60") in result.headers
    assert len(reg.location) == 0


def test_several_contacts_refresh_and_remove() -> None:
    reg = make()
    reg.register(register("<sip:a@h1>", "<sip:a@h2>", expires=600), "201", SOURCE, NOW)
    assert {b.contact for b in reg.location.lookup("201", NOW)} == {"sip:a@h1", "sip:a@h2"}
    result = reg.register(register("<sip:a@h1>", expires=0, cseq=2), "201", SOURCE, NOW + 1)
    assert [b.contact for b in result.removed] == ["sip:a@h1"]
    assert [b.contact for b in reg.location.lookup("201", NOW + 1)] == ["sip:a@h2"]
    assert [b for b in result.headers if b[0] == "Contact"] == [("Contact", "<sip:a@h2>;expires=599")]


def test_query_without_contact_lists_bindings() -> None:
    reg = make()
    reg.register(register("<sip:a@h1>", expires=600), "201", SOURCE, NOW)
    result = reg.register(register(cseq=2), "201", SOURCE, NOW + 100)
    assert result.status == 200 and not result.saved and not result.removed
    assert ("Contact", "<sip:a@h1>;expires=500") in result.headers


def test_wildcard_removes_all_and_needs_expires_zero() -> None:
    reg = make()
    reg.register(register("<sip:a@h1>", "<sip:a@h2>", expires=600), "201", SOURCE, NOW)
    assert reg.register(register("*", expires=5, cseq=2), "201", SOURCE, NOW).status == 400
    assert reg.register(register("*", "<sip:a@h3>", expires=0, cseq=2), "201", SOURCE, NOW).status == 400
    result = reg.register(register("*", expires=0, cseq=3), "201", SOURCE, NOW)
    assert result.status == 200 and len(result.removed) == 2 and len(reg.location) == 0


def test_same_call_id_with_old_cseq_is_refused() -> None:
    reg = make()
    reg.register(register("<sip:a@h1>", expires=600, cseq=5), "201", SOURCE, NOW)
    assert reg.register(register("<sip:a@h1>", expires=600, cseq=5), "201", SOURCE, NOW).status == 400
    assert reg.register(register("<sip:a@h1>", expires=600, cseq=4), "201", SOURCE, NOW).status == 400
    # another Call-ID (a rebooted phone) may replace the binding whatever its CSeq
    assert reg.register(register("<sip:a@h1>", expires=600, call_id="c2", cseq=1), "201", SOURCE, NOW).status == 200


def test_contact_limit() -> None:
    reg = make()
    assert reg.register(register("<sip:a@h1>", "<sip:a@h2>", "<sip:a@h3>"), "201", SOURCE, NOW).status == 200
    assert reg.register(register("<sip:a@h4>", cseq=2), "201", SOURCE, NOW).status == 403
    # replacing one in the same request stays within the limit
    result = reg.register(register("<sip:a@h1>;expires=0", "<sip:a@h4>", cseq=3), "201", SOURCE, NOW)
    assert result.status == 200


def test_instance_id_keys_the_binding_across_contact_changes() -> None:
    """RFC 5626: a phone that changed address replaces its old binding instead of adding one."""
    reg = make()
    inst = ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    reg.register(register(f"<sip:a@10.0.0.1>{inst}"), "201", SOURCE, NOW)
    reg.register(register(f"<sip:a@10.0.0.2>{inst}", cseq=2), "201", SOURCE, NOW)
    (binding,) = reg.location.lookup("201", NOW)
    assert binding.contact == "sip:a@10.0.0.2" and binding.reg_id == 1
    assert binding.instance_id == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"


def test_bad_values_get_400() -> None:
    reg = make()
    assert reg.register(register("<sip:a@h1>;expires=soon"), "201", SOURCE, NOW).status == 400
    assert reg.register(register("<sip:a@h1>;q=7"), "201", SOURCE, NOW).status == 400
    assert reg.register(register("<tel:+15551234>"), "201", SOURCE, NOW).status == 400


def test_lookup_orders_by_q_and_expiry_drops_bindings() -> None:
    reg = make()
    reg.register(register("<sip:a@low>;q=0.1", "<sip:a@high>;q=0.9", expires=100), "201", SOURCE, NOW)
    assert [b.contact for b in reg.location.lookup("201", NOW)] == ["sip:a@high", "sip:a@low"]
    assert reg.location.lookup("201", NOW + 101) == []
    assert len(reg.location.expire(NOW + 101)) == 2 and len(reg.location) == 0


def test_ok_echoes_instance_and_reg_id() -> None:
    reg = make()
    inst = ';+sip.instance="<urn:uuid:1>";reg-id=2'
    result = reg.register(register(f"<sip:a@10.0.0.1>{inst}", expires=100), "201", SOURCE, NOW)
    assert ("Contact", '<sip:a@10.0.0.1>;expires=100;+sip.instance="<urn:uuid:1>";reg-id=2') in result.headers
