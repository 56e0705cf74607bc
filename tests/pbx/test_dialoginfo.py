"""The dialog event package (RFC 4235): documents parsed back with ElementTree, ids and tags where pickup needs them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

from ccpbx.pbx.calls import LegState, Party
from ccpbx.pbx.devicestate import DeviceStates
from ccpbx.pbx.dialoginfo import (
    CONTENT_TYPE,
    NAMESPACE,
    DialogEventPackage,
    DialogInfo,
    DialogPhase,
    dialog_info_xml,
    dialog_of,
)

NS = {"d": NAMESPACE}


def parse(body: bytes) -> ET.Element:
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(body)


def ringing_leg(ext: str = "1002", *, state: LegState = LegState.EARLY, caller: Party | None = None,
                leg_id: str = "legb") -> SimpleNamespace:
    """ccpbx's outbound leg ringing ``ext``'s phone (the attributes of ``calls.Leg`` the package reads)."""
    call = SimpleNamespace(caller=caller or Party("1001", "Front <Desk> & Co"), dialled=ext, b=None)
    return SimpleNamespace(id=leg_id, device=ext, inbound=False, state=state, held_by_remote=False, call=call,
                           dialog=SimpleNamespace(call_id="b2bua-call@pbx", remote_tag="phone-tag"),
                           sip_call_id="b2bua-call@pbx", local_tag="our-tag", invite=None)


def dialling_leg(ext: str = "1001", dialled: str = "1002") -> SimpleNamespace:
    """The phone of ``ext`` calling out: our inbound leg, no dialog yet (no 1xx sent)."""
    call = SimpleNamespace(caller=Party(ext), dialled=dialled, b=None)
    invite = SimpleNamespace(from_=SimpleNamespace(tag="caller-from-tag"), call_id="phone-call-id")
    return SimpleNamespace(id="lega", device=ext, inbound=True, state=LegState.PROCEEDING, held_by_remote=False,
                           call=call, dialog=None, sip_call_id="phone-call-id", local_tag="our-to-tag", invite=invite)


def test_idle_is_a_full_document_without_dialogs() -> None:
    root = parse(dialog_info_xml("sip:1002@pbx.example", 0, []))
    assert root.tag == f"{{{NAMESPACE}}}dialog-info"
    assert root.attrib == {"version": "0", "state": "full", "entity": "sip:1002@pbx.example"}
    assert root.findall("d:dialog", NS) == []


def test_a_ringing_leg_names_its_dialog_from_the_phones_side() -> None:
    info = dialog_of(ringing_leg(), "1002", "pbx.example")  # type: ignore[arg-type]
    assert (info.call_id, info.local_tag, info.remote_tag) == ("b2bua-call@pbx", "phone-tag", "our-tag")
    root = parse(dialog_info_xml("sip:1002@pbx.example", 3, [info]))
    assert root.get("version") == "3"
    (dialog,) = root.findall("d:dialog", NS)
    assert dialog.attrib == {"id": "legb", "call-id": "b2bua-call@pbx", "local-tag": "phone-tag",
                             "remote-tag": "our-tag", "direction": "recipient"}
    assert dialog.findtext("d:state", namespaces=NS) == "early"
    assert dialog.findtext("d:local/d:identity", namespaces=NS) == "sip:1002@pbx.example"
    identity = dialog.find("d:remote/d:identity", NS)
    assert identity is not None
    assert identity.text == "sip:1001@pbx.example"
    assert identity.get("display") == "Front <Desk> & Co"  # escaped on the way out, intact on the way back


def test_a_phone_dialling_out_is_the_initiator_with_its_from_tag() -> None:
    info = dialog_of(dialling_leg(), "1001", "pbx")  # type: ignore[arg-type]
    assert info == DialogInfo(id="lega", call_id="phone-call-id", local_tag="caller-from-tag",
                              remote_tag="our-to-tag", initiator=True, phase=DialogPhase.PROCEEDING,
                              local_identity="sip:1001@pbx", remote_identity="sip:1002@pbx")
    (dialog,) = parse(dialog_info_xml("sip:1001@pbx", 0, [info])).findall("d:dialog", NS)
    assert dialog.get("direction") == "initiator"


def test_a_withheld_caller_is_anonymous_and_an_untagged_leg_has_no_local_tag() -> None:
    leg = ringing_leg(state=LegState.CALLING, caller=Party("1001", "Secret", restricted=True))
    leg.dialog.remote_tag = ""
    info = dialog_of(leg, "1002", "pbx")  # type: ignore[arg-type]
    assert info.phase is DialogPhase.TRYING
    (dialog,) = parse(dialog_info_xml("sip:1002@pbx", 0, [info])).findall("d:dialog", NS)
    assert "local-tag" not in dialog.attrib
    assert dialog.findtext("d:remote/d:identity", namespaces=NS) == "sip:anonymous@anonymous.invalid"


def test_the_package_reports_an_ended_dialog_once_as_terminated() -> None:
    devices = DeviceStates(lambda ext: True)
    changed: list[str] = []
    package = DialogEventPackage(devices, "pbx", changed.append)
    assert (package.name, package.content_type) == ("dialog", CONTENT_TYPE)
    leg = ringing_leg()
    for listener in (devices.leg_changed, package.leg_changed):
        listener(leg)  # type: ignore[arg-type]
    assert changed == ["1002"]

    def states(body: bytes) -> list[str]:
        return [d.findtext("d:state", namespaces=NS) or "" for d in parse(body).findall("d:dialog", NS)]

    first = package.render("1002", 0, None)
    assert states(first.body) == ["early"]
    leg.state = LegState.CONFIRMED
    devices.leg_changed(leg)  # type: ignore[arg-type]
    second = package.render("1002", 1, first.memory)
    assert states(second.body) == ["confirmed"]
    assert parse(second.body).find("d:dialog/d:local/d:target", NS) is None
    leg.held_by_remote = True  # the phone holds the call: still confirmed, and not rendering
    held = package.render("1002", 1, first.memory)
    param = parse(held.body).find("d:dialog/d:local/d:target/d:param", NS)
    assert param is not None and param.attrib == {"pname": "+sip.rendering", "pvalue": "no"}
    assert states(held.body) == ["confirmed"]
    leg.state = LegState.ENDED
    devices.leg_changed(leg)  # type: ignore[arg-type]
    third = package.render("1002", 2, second.memory)
    assert states(third.body) == ["terminated"]
    (dialog,) = parse(third.body).findall("d:dialog", NS)
    assert dialog.get("call-id") == "b2bua-call@pbx"
    assert states(package.render("1002", 3, third.memory).body) == []  # then idle
    assert package.authorize("1001", "1002")
