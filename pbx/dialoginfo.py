"""The ``dialog`` event package (RFC 4235): busy lamp fields on phones, over the SUBSCRIBE/NOTIFY notifier.

A watcher subscribes to an extension (``SUBSCRIBE sip:1002@pbx``, ``Event: dialog``) and gets
``application/dialog-info+xml`` documents, always ``state="full"``, ``version`` counting that subscription's
NOTIFYs from 0, ``entity="sip:1002@domain"``, one ``<dialog>`` per leg reaching that extension's phone. An idle
extension is a ``<dialog-info>`` with no ``<dialog>``; a dialog that ended since the subscription's previous
NOTIFY is reported once as ``terminated`` and then left out.

The identifiers are those of ccpbx's own leg to the phone, written from the watched phone's point of view
as RFC 4235 §4.1.2 wants: ``call-id`` is that leg's Call-ID, ``local-tag`` the phone's tag on it and
``remote-tag`` ccpbx's tag. So a BLF key that picks the call up sends ``Replaces: <call-id>;to-tag=<remote-tag>;
from-tag=<local-tag>`` (RFC 3891 §3: to-tag is the tag of the UA receiving the Replaces, here ccpbx), which
names exactly that leg of ours. ``direction`` is ``initiator`` for a call the phone placed, ``recipient`` for
one ringing it; ``<state>`` follows the leg (trying, proceeding, early, confirmed, terminated); ``<remote>``
carries the other party's identity (``sip:anonymous@anonymous.invalid`` for a withheld number). A call the
phone holds has ``<local><target>`` with ``+sip.rendering="no"`` (RFC 4235 §4.1.6.2), which phones show as held.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ccpbx.pbx.calls import Leg, LegState, Party
from ccpbx.pbx.devicestate import DeviceStates
from ccpbx.pbx.subscriptions import Rendered

__all__ = ["CONTENT_TYPE", "NAMESPACE", "DialogEventPackage", "DialogInfo", "DialogPhase", "dialog_info_xml",
           "dialog_of"]

NAMESPACE = "urn:ietf:params:xml:ns:dialog-info"
CONTENT_TYPE = "application/dialog-info+xml"
PACKAGE = "dialog"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
ANONYMOUS = "sip:anonymous@anonymous.invalid"  # RFC 3323 §4.1.1.3


class DialogPhase(enum.StrEnum):
    """The ``<state>`` of a dialog (RFC 4235 §3.7.1)."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


_PHASE_OF = {
    LegState.CALLING: DialogPhase.TRYING,
    LegState.PROCEEDING: DialogPhase.PROCEEDING,
    LegState.EARLY: DialogPhase.EARLY,
    LegState.ANSWERED: DialogPhase.CONFIRMED,
    LegState.CONFIRMED: DialogPhase.CONFIRMED,
    LegState.ENDED: DialogPhase.TERMINATED,
}


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """One ``<dialog>`` element: see the module docstring for whose tag is which."""

    id: str
    call_id: str
    local_tag: str  # the watched phone's tag ("" while it has not answered anything yet)
    remote_tag: str  # ccpbx's tag on its leg to the phone
    initiator: bool  # the phone placed this call
    phase: DialogPhase
    local_identity: str
    remote_identity: str
    remote_display: str = ""
    held: bool = False  # the watched phone put this call on hold


def dialog_info_xml(entity: str, version: int, dialogs: Sequence[DialogInfo]) -> bytes:
    """A full ``dialog-info`` document (RFC 4235 §4.1) for ``entity`` (a SIP URI string)."""
    root = ET.Element("dialog-info", {"xmlns": NAMESPACE, "version": str(version), "state": "full",
                                      "entity": entity})
    for info in dialogs:
        attrs = {"id": info.id, "call-id": info.call_id,
                 "direction": "initiator" if info.initiator else "recipient"}
        if info.local_tag:
            attrs["local-tag"] = info.local_tag
        if info.remote_tag:
            attrs["remote-tag"] = info.remote_tag
        dialog = ET.SubElement(root, "dialog", attrs)
        ET.SubElement(dialog, "state").text = info.phase.value
        local = ET.SubElement(dialog, "local")
        ET.SubElement(local, "identity").text = info.local_identity
        if info.held:
            target = ET.SubElement(local, "target", {"uri": info.local_identity})
            ET.SubElement(target, "param", {"pname": "+sip.rendering", "pvalue": "no"})
        remote = ET.SubElement(dialog, "remote")
        identity = ET.SubElement(remote, "identity", {"display": info.remote_display} if info.remote_display
                                 else {})
        identity.text = info.remote_identity
    return XML_DECLARATION + ET.tostring(root, encoding="unicode").encode()


def _identity(party: Party, domain: str) -> tuple[str, str]:
    if party.restricted:
        return ANONYMOUS, "Anonymous"
    return f"sip:{party.number or 'anonymous'}@{domain}", party.name


def dialog_of(leg: Leg, ext: str, domain: str) -> DialogInfo:
    """The ``<dialog>`` of ccpbx's ``leg`` to the phone of ``ext``."""
    dialog = leg.dialog
    call_id = dialog.call_id if dialog is not None else leg.sip_call_id
    phone_tag = dialog.remote_tag if dialog is not None else ""
    if not phone_tag and leg.inbound and leg.invite is not None:
        phone_tag = leg.invite.from_.tag or ""
    call = leg.call
    if leg.inbound:  # the phone placed the call: the other party is the number it dialled
        remote, display = f"sip:{call.dialled}@{domain}", ""
    else:
        remote, display = _identity(call.caller, domain)
    return DialogInfo(id=leg.id, call_id=call_id, local_tag=phone_tag, remote_tag=leg.local_tag,
                      initiator=leg.inbound, phase=_PHASE_OF[leg.state], local_identity=f"sip:{ext}@{domain}",
                      remote_identity=remote, remote_display=display, held=leg.held_by_remote)


class DialogEventPackage:
    """The ``dialog`` event package for the :class:`~ccpbx.pbx.subscriptions.Notifier`.

    Reads the legs of each extension from :class:`DeviceStates`; feed :meth:`leg_changed` to
    ``CallManager.add_leg_listener`` and it calls ``on_change(ext)`` for the extension whose dialogs changed.
    """

    name = PACKAGE
    content_type = CONTENT_TYPE

    def __init__(self, devices: DeviceStates, domain: str, on_change: Callable[[str], None]) -> None:
        self.devices = devices
        self.domain = domain
        self.on_change = on_change

    def authorize(self, subscriber: str, resource: str) -> bool:
        return True  # every extension may watch every other one's lamp (the office BLF panel)

    def leg_changed(self, leg: Leg) -> None:
        if leg.device is not None:
            self.on_change(leg.device)

    def render(self, resource: str, version: int, memory: object) -> Rendered:
        """The full state; dialogs in ``memory`` (the previous NOTIFY's) that are gone now come out terminated."""
        current = [dialog_of(leg, resource, self.domain) for leg in self.devices.legs(resource)]
        current = [d for d in current if d.phase is not DialogPhase.TERMINATED]
        shown = {d.id for d in current}
        before: Mapping[str, DialogInfo] = memory if isinstance(memory, dict) else {}
        ended = [replace(d, phase=DialogPhase.TERMINATED) for key, d in before.items() if key not in shown]
        body = dialog_info_xml(f"sip:{resource}@{self.domain}", version, [*current, *ended])
        return Rendered(body, {d.id: d for d in current})
