"""Trunks on the in-memory network: the real server, a gateway and a provider played by simulated UAs.

Inbound: a gateway's INVITE (trusted by its address) reaches what the DID rule says, with the caller's number
normalised; the same INVITE from elsewhere is challenged; calls beyond the channel limit get 503. Outbound:
numbers leave through a route with the trunk's number format and caller ID; 503 and silence fail over to the
next trunk; toll classes and per-extension limits refuse calls before any trunk is tried.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ccpbx.pbx.sip.uri import SipUri
from tests.pbx.simnet import HOST, SimPhone, registered, sim_pbx, until

GW_PORT = 45060
BACKUP_PORT = 45070

CONFIG = f"""
[[conference]]
name = "lobby"

[[trunk]]
name = "gw"
host = "{HOST}"
port = {GW_PORT}
profile = "generic-gateway"
country_code = "49"
max_channels = 2
no_response_timeout = 1
caller_id = "+49301234000"

[[trunk]]
name = "backup"
host = "{HOST}"
port = {BACKUP_PORT}
profile = "generic"
username = "acct"
country_code = "49"
no_response_timeout = 1

[[route]]
name = "out"
trunks = ["gw", "backup"]

[outbound]
max_calls = 1
[[outbound.extension]]
extensions = ["1001"]
classes = ["internal", "emergency", "national", "mobile", "international"]
max_calls = 2
caller_id = "+49301234{{caller}}"

[dialplan]
rule = [
  {{ match = "_9X.", destination = "route:out", strip = 1 }},
  {{ match = "301234200", destination = "extension:1001", from_trunk = "gw" }},
  {{ match = "301234300", destination = "conference:lobby", from_trunk = "gw" }},
]
"""
USERS = {"1001": "pw1001", "1002": "pw1002"}


def _gateway(server: object, user: str = "0301234567", port: int = GW_PORT, **kw: bool) -> SimPhone:
    return SimPhone(server.net, (HOST, server.listening[0].port), user, "", port=port, **kw)  # type: ignore[attr-defined]


async def test_a_gateway_call_reaches_the_did_with_the_caller_normalised(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        phone = await registered(server, "1001", "pw1001", auto_answer=True)
        gateway = _gateway(server)
        call = await gateway.call("301234200", challenged=False)
        assert call.final is not None and call.final.status == 200
        incoming = phone.incoming.get_nowait()
        caller = incoming.invite.from_.uri
        assert isinstance(caller, SipUri) and caller.user == "+49301234567"
        status = {t.name: t for t in server.trunks.statuses()}
        assert status["gw"].inbound == 1
        await gateway.hangup(call)
        await until(lambda: server.trunks.trunks["gw"].inbound == set())
        await gateway.close()
        await phone.close()


async def test_the_same_invite_from_another_address_is_challenged(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        stranger = _gateway(server, port=45999)
        call = await stranger.call("301234200", challenged=False)
        assert call.final is not None and call.final.status == 407
        await stranger.close()


async def test_a_trunks_address_is_never_one_whose_new_calls_a_sip_worker_may_challenge(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        await until(lambda: bool(server.trunks.trunks["gw"].addresses))
        trunks = server.trunks
        assert trunks.may_send_from(("udp", HOST, GW_PORT)) and trunks.may_send_from(("udp", HOST, BACKUP_PORT))
        assert not trunks.may_send_from(("udp", "192.0.2.7", GW_PORT))


async def test_an_outside_caller_cannot_reach_an_outbound_route_or_a_feature(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        backup = _gateway(server, user="provider", port=BACKUP_PORT, auto_answer=True)
        gateway = _gateway(server)
        for number in ("900441234567", "*97", "1001"):
            call = await gateway.call(number, challenged=False)
            assert call.final is not None and call.final.status == 404, number
        assert backup.incoming.empty()
        await gateway.close()
        await backup.close()


async def test_calls_beyond_the_channel_limit_get_503_and_the_others_stay_up(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        gateways = [_gateway(server, user=f"030123456{i}", port=GW_PORT) for i in range(1)]
        gateway = gateways[0]
        up = [await gateway.call("301234300", challenged=False) for _ in range(2)]
        assert all(c.final is not None and c.final.status == 200 for c in up)
        third = await gateway.call("301234300", challenged=False)
        assert third.final is not None and third.final.status == 503
        assert len(server.trunks.trunks["gw"].inbound) == 2
        assert not any(c.ended.is_set() for c in up)
        for c in up:
            assert (await gateway.hangup(c)).status == 200
        await gateway.close()


async def test_a_number_leaves_through_the_route_with_the_trunk_format_and_caller_id(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        gateway = _gateway(server, user="gw", auto_answer=True)
        phone = await registered(server, "1001", "pw1001")
        call = await phone.call("90301234567")
        assert call.final is not None and call.final.status == 200
        invite = gateway.incoming.get_nowait().invite
        assert invite.sip_uri.user == "0301234567"  # national, as the gateway profile wants
        from_uri = invite.from_.uri
        assert isinstance(from_uri, SipUri) and from_uri.user == "03012341001"  # +49301234{caller}, national
        assert server.trunks.outside_calls("1001") == 1
        await phone.hangup(call)
        await until(lambda: server.trunks.outside_calls("1001") == 0)
        await gateway.close()
        await phone.close()


async def test_503_fails_over_to_the_next_trunk(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        gateway = _gateway(server, user="gw")
        gateway.auto_refuse = 503
        backup = _gateway(server, user="provider", port=BACKUP_PORT, auto_answer=True)
        phone = await registered(server, "1001", "pw1001")
        call = await phone.call("90301234567")
        assert call.final is not None and call.final.status == 200
        assert not gateway.incoming.empty()
        invite = backup.incoming.get_nowait().invite
        assert invite.sip_uri.user == "+49301234567"  # e164 for the generic provider profile
        assert invite.headers.get("p-asserted-identity") == "<sip:+493012341001@127.0.0.1>"
        from_uri = invite.from_.uri
        assert isinstance(from_uri, SipUri) and from_uri.user == "acct"  # the account: identity is in PAI
        await phone.hangup(call)
        for ua in (gateway, backup, phone):
            await ua.close()


async def test_a_silent_trunk_fails_over_in_seconds(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:  # nobody listens at GW_PORT
        backup = _gateway(server, user="provider", port=BACKUP_PORT, auto_answer=True)
        phone = await registered(server, "1001", "pw1001")
        started = asyncio.get_running_loop().time()
        call = await phone.call("90301234567", timeout=10)
        assert call.final is not None and call.final.status == 200
        assert asyncio.get_running_loop().time() - started < 5.0  # not Timer B's 32 s
        assert not backup.incoming.empty()
        await phone.hangup(call)
        await backup.close()
        await phone.close()


@pytest.mark.parametrize(("ext", "number", "status"), [
    ("1002", "90044207946000", 403),  # 1002 has no international class
    ("1001", "90900123456", 403),  # premium: nobody has it
])
async def test_toll_classes_refuse_before_any_trunk_is_tried(tmp_path: Path, ext: str, number: str,
                                                             status: int) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        gateway = _gateway(server, user="gw", auto_answer=True)
        phone = await registered(server, ext, USERS[ext])
        call = await phone.call(number)
        assert call.final is not None and call.final.status == status
        assert gateway.incoming.empty()
        await gateway.close()
        await phone.close()


async def test_the_per_extension_limit_of_outside_calls(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, CONFIG, USERS) as server:
        gateway = _gateway(server, user="gw", auto_answer=True)
        phone = await registered(server, "1002", "pw1002")
        first = await phone.call("90301234567")
        assert first.final is not None and first.final.status == 200
        second = await phone.call("90301234568")
        assert second.final is not None and second.final.status == 403
        emergency = await phone.call("9112")  # never limited
        assert emergency.final is not None and emergency.final.status == 200
        await phone.hangup(first)
        await phone.hangup(emergency)
        await until(lambda: server.trunks.outside_calls("1002") == 0)
        third = await phone.call("90301234568")
        assert third.final is not None and third.final.status == 200
        await phone.hangup(third)
        await gateway.close()
        await phone.close()


async def test_diversion_in_and_out(tmp_path: Path) -> None:
    """A forwarded call from the gateway keeps its Diversion; an extension forwarding to an outside number
    sends a Diversion naming itself, is charged for the call, and the original caller is shown."""
    from ccpbx.pbx.store import ExtensionFeatures, Store

    async def forward_1002(store: Store) -> None:
        await store.set_features(ExtensionFeatures("1002", forward_always="90301234567"))

    async with sim_pbx(tmp_path, CONFIG, USERS, prepare=forward_1002) as server:
        phone = await registered(server, "1001", "pw1001", auto_answer=True)
        gateway = _gateway(server, auto_answer=True)
        call = await gateway.call("301234200", challenged=False,
                                  headers=(("Diversion", "<sip:0301234999@gw.example>;reason=user-busy;counter=1"),))
        assert call.final is not None and call.final.status == 200
        live = next(c for c in server.calls.calls.values() if c.trunk == "gw")
        assert live.diversion == ("user-busy", "+49301234999")
        await gateway.hangup(call)

        out = await phone.call("1002")  # 1002 forwards everything to an outside number
        assert out.final is not None and out.final.status == 200
        invite = next(c.invite for c in list(gateway.calls.values()) if c.invite.sip_uri.user == "0301234567")
        # 1002 has no outside number of its own: the trunk's (the company's) names the diverting party
        assert invite.headers.get("diversion") == "<sip:0301234000@127.0.0.1>;reason=unconditional;counter=1"
        from_uri = invite.from_.uri
        assert isinstance(from_uri, SipUri) and from_uri.user == "03012341001"  # the caller, 1001's own number
        assert server.trunks.outside_calls("1002") == 1 and server.trunks.outside_calls("1001") == 0
        await phone.hangup(out)
        await gateway.close()
        await phone.close()


class _Workers:
    """What the server tells its SIP workers, recorded (no processes)."""

    def __init__(self) -> None:
        self.callers: list[tuple[str, int]] = []

    def caller_admitted(self, source: tuple[str, str, int], now: int) -> None:
        self.callers.append((source[1], source[2]))

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None

    async def stop(self) -> None:
        pass


async def test_a_sip_worker_challenges_the_calls_of_phones_not_of_a_registered_providers_host(
        tmp_path: Path) -> None:
    """A call admitted with digest tells the workers to challenge that endpoint's next calls, unless a trunk's
    INVITE could come from there: here the provider we register with shares the first phone's host."""
    config = (f'[[trunk]]\nname = "prov"\nhost = "{HOST}"\nport = {BACKUP_PORT}\nprofile = "generic"\n'
              'username = "acct"\npassword = "pw-acct"\nregister = true\n')
    async with sim_pbx(tmp_path, config, USERS) as server:
        workers = _Workers()
        server.sip_workers = workers  # type: ignore[assignment]
        try:
            callee = await registered(server, "1002", "pw1002", auto_answer=True)
            same_host = await registered(server, "1001", "pw1001")
            call = await same_host.call("1002")
            assert call.final is not None and call.final.status == 200
            assert workers.callers == []  # a provider's other server could send from there: not a caller
            elsewhere = SimPhone(server.net, (HOST, server.listening[0].port), "1001", "pw1001", host="127.0.0.2")
            call = await elsewhere.call("1002")
            assert call.final is not None and call.final.status == 200
            assert workers.callers == [("127.0.0.2", elsewhere.port)]
            await same_host.close()
            await elsewhere.close()
            await callee.close()
        finally:
            server.sip_workers = None
