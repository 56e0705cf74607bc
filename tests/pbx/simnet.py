"""Call control without SIP sockets: the real ``SipServer`` on an in-memory network, phones built on our pure cores.

aioquic tests two pure connections against each other; this does the same for call control. The server is the
one ``ccpbx serve`` runs, with its SIP transports swapped for :class:`InMemoryTransports`; each
:class:`SimPhone` is a small UA made of the sans-IO ``SipEndpoint`` (transactions) and ``Dialog`` — registering
with digest, calling (answering the 407), ringing, answering, hanging up, REFER, INFO, re-INVITE. Messages are
delivered through the event loop (``call_soon``), in order, and may be dropped to test retransmissions.

RTP still uses the media engine's loopback sockets (phones announce the discard port and send none).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ccpbx.pbx.sip.auth import AuthOutcome, DigestAuthenticator, digest_response, ha1
from ccpbx.pbx.sip.dialog import Dialog
from ccpbx.pbx.sip.endpoint import SipEndpoint
from ccpbx.pbx.sip.headers import AuthParams
from ccpbx.pbx.sip.message import Request, Response, new_tag
from ccpbx.pbx.sip.transaction import (
    ClientKey,
    Destination,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
)
from ccpbx.pbx.sip.transport import ListenAddress
from ccpbx.pbx.sip.uri import NameAddr, SipUri

if TYPE_CHECKING:
    from ccpbx.pbx.app import SipServer
    from ccpbx.pbx.calls import Call
    from ccpbx.pbx.store import Store

HOST = "127.0.0.1"
Deliver = Callable[[bytes, Destination], None]


class InMemoryNetwork:
    """UDP-like delivery between attached nodes: in order, through the loop, with optional loss."""

    def __init__(self, *, loss: float = 0.0, seed: int = 1) -> None:
        self.nodes: dict[tuple[str, int], Deliver] = {}
        self.loss = loss
        self.random = random.Random(seed)
        self.sent = 0
        self.dropped = 0
        self._ports = itertools.count(40000)
        self.trace: list[tuple[tuple[str, int], Destination, bytes]] = []

    def port(self) -> int:
        return next(self._ports)

    def attach(self, host: str, port: int, deliver: Deliver) -> None:
        self.nodes[(host, port)] = deliver

    def detach(self, host: str, port: int) -> None:
        self.nodes.pop((host, port), None)

    def send(self, data: bytes, source: tuple[str, int], destination: Destination) -> None:
        self.sent += 1
        self.trace.append((source, destination, data))
        if self.loss and self.random.random() < self.loss:
            self.dropped += 1
            return
        node = self.nodes.get((destination[1], destination[2]))
        if node is not None:
            asyncio.get_running_loop().call_soon(node, data, ("udp", source[0], source[1]))


class InMemoryTransports:
    """Stands in for ``SipTransports`` in a ``SipServer``: same methods, the in-memory network behind them."""

    def __init__(self, network: InMemoryNetwork, on_datagram: Deliver) -> None:
        self.network = network
        self.on_datagram = on_datagram
        self.listening: list[ListenAddress] = []

    async def listen(self, host: str, port: int, transports: tuple[str, ...] = ("udp",), tls_port: int = 0,
                     udp_workers: int = 0) -> int:
        assert not udp_workers, "SIP workers need real sockets: tests/interop/test_sip_workers.py"
        port = port or self.network.port()
        self.listening = [ListenAddress("udp", host, port)]
        self.network.attach(host, port, self.on_datagram)
        return port

    def send(self, data: bytes, destination: Destination) -> None:
        local = self.listening[0]
        self.network.send(data, (local.host, local.port), destination)

    async def close(self) -> None:
        for addr in self.listening:
            self.network.detach(addr.host, addr.port)


def sdp(port: int = 9, direction: str = "sendrecv", codecs: str = "0 8 101") -> bytes:
    lines = ["v=0", f"o=sim {port} 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0",
             f"m=audio {port} RTP/AVP {codecs}", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"]
    if "101" in codecs.split():
        lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
    lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class SimCall:
    """One dialog of a phone: the INVITE that made it, the dialog, what arrived in it."""

    invite: Request
    dialog: Dialog | None = None
    final: Response | None = None
    provisional: list[int] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Request] = field(default_factory=list)


class SimPhone:
    """A SIP phone on the in-memory network; see the module docstring. Times are the loop's."""

    def __init__(self, network: InMemoryNetwork, server: tuple[str, int], user: str, password: str, *,
                 realm: str = "ccpbx", auto_answer: bool = False, port: int | None = None,
                 host: str = HOST) -> None:
        self.host = host  # another loopback address: another source as the server sees it
        self.network = network
        self.server: Destination = ("udp", server[0], server[1])
        self.user = user
        self.password = password
        self.realm = realm
        self.auto_answer = auto_answer
        self.auto_refuse: int | None = None  # set: refuse every new INVITE with this status (a failing trunk)
        self.challenger: DigestAuthenticator | None = None  # set: BYE must carry its credentials (a provider)
        self.challenge_secrets: dict[str, str] = {}
        self.port = port if port is not None else network.port()
        self.endpoint = SipEndpoint(TransactionLayer(), server_header=f"sim-{user}")
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.responses: dict[ClientKey, asyncio.Queue[Response]] = {}
        self.requests: list[Request] = []
        self.incoming: asyncio.Queue[SimCall] = asyncio.Queue()
        self.calls: dict[str, SimCall] = {}  # by Call-ID
        network.attach(host, self.port, self._receive)

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host}:{self.port}>"

    def _now(self) -> int:
        return int(self.loop.time() * 1000)

    # ---- the edge ------------------------------------------------------------------------------------------
    def _receive(self, data: bytes, source: Destination) -> None:
        self.endpoint.receive_datagram(data, source, self._now())
        self._pump()

    def _pump(self) -> None:
        for _ in range(50):
            out = self.endpoint.outgoing()
            events = self.endpoint.events()
            for data, destination in out:
                self.network.send(data, (self.host, self.port), destination)
            for event in events:
                if isinstance(event, ResponseReceived):
                    queue = self.responses.get(event.key)  # type: ignore[arg-type]
                    if queue is not None:
                        queue.put_nowait(event.response)
                elif isinstance(event, RequestReceived):
                    self._on_request(event.request)
            if not out and not events:
                break
        deadline = self.endpoint.next_deadline()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = self.loop.call_at(deadline / 1000, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.endpoint.handle_timer(self._now())
        self._pump()

    def respond(self, request: Request, status: int, *, body: bytes = b"", to_tag: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        extra = list(headers)
        if request.method == "INVITE" and status < 300:
            extra.append(("Contact", self.contact))
        self.endpoint.respond(request, status, self._now(), body=body, to_tag=to_tag, headers=extra,
                              content_type="application/sdp" if body else None)
        self._pump()

    def send(self, request: Request) -> asyncio.Queue[Response]:
        key = self.endpoint.send_request(request, self.server, self._now())
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self.responses[key] = queue  # type: ignore[index]
        self._pump()
        return queue

    async def final(self, queue: asyncio.Queue[Response], call: SimCall | None = None,
                    timeout: float = 5.0) -> Response:
        while True:
            response = await asyncio.wait_for(queue.get(), timeout)
            if response.status >= 200:
                return response
            if call is not None:
                call.provisional.append(response.status)

    # ---- requests to us ------------------------------------------------------------------------------------
    def _on_request(self, request: Request) -> None:
        self.requests.append(request)
        call = self.calls.get(request.call_id)
        method = request.method
        if method == "INVITE" and request.to.tag is None:
            incoming = SimCall(invite=request)
            self.calls[request.call_id] = incoming
            self.incoming.put_nowait(incoming)
            if self.auto_refuse is not None:
                self.refuse(incoming, self.auto_refuse)
            elif self.auto_answer:
                self.answer(incoming)
            return
        if call is not None:
            call.received.append(request)
        if method == "ACK":
            return
        if method == "CANCEL":
            self.respond(request, 200)
            if call is not None and call.final is None:
                self.respond(call.invite, 487, to_tag=call.dialog.local_tag if call.dialog else new_tag())
                call.ended.set()
            return
        if method == "INVITE":  # a re-INVITE: accept whatever was offered
            self.respond(request, 200, body=sdp())
            return
        if method == "BYE" and self.challenger is not None:
            verdict = self.challenger.verify(request, self.challenge_secrets, self._now(),
                                             header="proxy-authorization")
            if verdict.outcome is not AuthOutcome.OK:
                self.respond(request, 407, headers=tuple(("Proxy-Authenticate", c)
                                                         for c in self.challenger.challenges(self._now())))
                return
        self.respond(request, 200)
        if method == "BYE" and call is not None:
            call.ended.set()

    def ring(self, call: SimCall) -> None:
        if call.dialog is None:
            call.dialog = Dialog.from_uas(call.invite, new_tag(), self.contact, early=True)
        self.respond(call.invite, 180, to_tag=call.dialog.local_tag)

    def answer(self, call: SimCall, body: bytes | None = None) -> None:
        if call.dialog is None:
            call.dialog = Dialog.from_uas(call.invite, new_tag(), self.contact, early=True)
        call.dialog.confirm()
        self.respond(call.invite, 200, body=sdp() if body is None else body, to_tag=call.dialog.local_tag)
        call.final = Response(200, "OK")
        call.answered.set()

    def refuse(self, call: SimCall, status: int) -> None:
        tag = call.dialog.local_tag if call.dialog else new_tag()
        self.respond(call.invite, status, to_tag=tag)
        call.ended.set()

    # ---- our requests --------------------------------------------------------------------------------------
    def _authorization(self, challenge: Response, request: Request, header: str) -> str:
        name = "www-authenticate" if challenge.status == 401 else "proxy-authenticate"
        params = AuthParams.parse(challenge.headers.get(name) or "").as_dict()
        algorithm = params.get("algorithm", "MD5")
        secret = ha1(algorithm, self.user, params["realm"], self.password)
        uri = str(request.uri)
        response = digest_response(algorithm, secret, request.method, uri, params["nonce"], "00000001", "sim",
                                   "auth")
        return (f'Digest username="{self.user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, '
                f'cnonce="sim", opaque="{params.get("opaque", "")}"')

    def _dialog(self, target: str, *, call_id: str | None = None, tag: str | None = None, seq: int | None = None
                ) -> Dialog:
        host, port = self.server[1], self.server[2]
        me = NameAddr(SipUri(user=self.user, host=host))
        return Dialog.new_uac(local_uri=me, remote_uri=NameAddr(SipUri(user=target, host=host)),
                              remote_target=SipUri(user=target, host=host, port=port), local_contact=self.contact,
                              call_id=call_id, local_tag=tag, local_seq=seq)

    def _request(self, dialog: Dialog, method: str, body: bytes = b"", headers: tuple[tuple[str, str], ...] = (),
                 content_type: str | None = None) -> Request:
        return dialog.create_request(method, via_host=self.host, via_port=self.port, transport="udp", body=body,
                                     content_type=content_type or ("application/sdp" if body else None),
                                     headers=headers)

    async def register(self, expires: int = 300, timeout: float = 5.0) -> Response:
        dialog = self._dialog(self.user)
        request = self._request(dialog, "REGISTER", headers=(("Contact", self.contact), ("Expires", str(expires))))
        request.uri = SipUri(host=self.server[1], port=self.server[2])
        response = await self.final(self.send(request), timeout=timeout)
        if response.status == 401:
            again = self._request(dialog, "REGISTER", headers=(("Contact", self.contact), ("Expires", str(expires))))
            again.uri = request.uri
            again.headers.add("Authorization", self._authorization(response, again, "authorization"))
            response = await self.final(self.send(again), timeout=timeout)
        return response

    async def call(self, number: str, *, body: bytes | None = None, wait_answer: bool = True,
                   timeout: float = 5.0, challenged: bool = True,
                   headers: tuple[tuple[str, str], ...] = ()) -> SimCall:
        """INVITE ``number`` (answering the 407); returns once a final response came (or at once).

        ``challenged=False``: a trusted peer (a gateway, a trunk): the first INVITE is the call."""
        offer = sdp() if body is None else body
        dialog = self._dialog(number)
        invite = self._request(dialog, "INVITE", body=offer, headers=(("Contact", self.contact), *headers))
        if not challenged:
            call = SimCall(invite=invite, dialog=dialog)
            self.calls[invite.call_id] = call
            waiter = asyncio.ensure_future(self._await_final(call, self.send(invite), timeout))
            if wait_answer:
                await waiter
            return call
        response = await self.final(self.send(invite), timeout=timeout)
        assert response.status == 407, f"expected the INVITE challenged, got {response.status}"
        dialog = self._dialog(number, call_id=invite.call_id, tag=dialog.local_tag, seq=invite.cseq.seq)
        invite = self._request(dialog, "INVITE", body=offer, headers=(("Contact", self.contact),))
        invite.headers.add("Proxy-Authorization", self._authorization(response, invite, "proxy-authorization"))
        call = SimCall(invite=invite, dialog=dialog)
        self.calls[invite.call_id] = call
        queue = self.send(invite)
        waiter = asyncio.ensure_future(self._await_final(call, queue, timeout))
        if wait_answer:
            await waiter
        return call

    async def _await_final(self, call: SimCall, queue: asyncio.Queue[Response], timeout: float) -> None:
        while True:
            response = await asyncio.wait_for(queue.get(), timeout)
            assert call.dialog is not None
            if response.status < 200:
                call.provisional.append(response.status)
                if response.to.tag:
                    call.dialog.receive_response(call.invite, response)
                continue
            call.final = response
            if response.status < 300:
                call.dialog.receive_response(call.invite, response)
                ack = call.dialog.create_ack(call.invite)
                self.endpoint.send_stateless(ack, self.server)
                self._pump()
                call.answered.set()
            else:
                call.ended.set()
            return

    async def message(self, to: str, text: str, timeout: float = 5.0) -> Response:
        """A pager-mode MESSAGE (RFC 3428) to ``to``, answering the 407."""
        dialog = self._dialog(to)
        request = self._request(dialog, "MESSAGE", body=text.encode(), content_type="text/plain")
        response = await self.final(self.send(request), timeout=timeout)
        if response.status == 407:
            dialog = self._dialog(to, call_id=request.call_id, tag=dialog.local_tag, seq=request.cseq.seq)
            again = self._request(dialog, "MESSAGE", body=text.encode(), content_type="text/plain")
            again.headers.add("Proxy-Authorization", self._authorization(response, again, "proxy-authorization"))
            response = await self.final(self.send(again), timeout=timeout)
        return response

    async def in_dialog(self, call: SimCall, method: str, *, body: bytes = b"", content_type: str | None = None,
                        headers: tuple[tuple[str, str], ...] = (), timeout: float = 5.0) -> Response:
        assert call.dialog is not None
        request = self._request(call.dialog, method, body=body, content_type=content_type, headers=headers)
        response = await self.final(self.send(request), timeout=timeout)
        if method == "INVITE" and response.status < 300:
            self.endpoint.send_stateless(call.dialog.create_ack(request), self.server)
            self._pump()
        if method == "BYE":
            call.ended.set()
        return response

    async def hangup(self, call: SimCall, timeout: float = 5.0) -> Response:
        return await self.in_dialog(call, "BYE", timeout=timeout)

    def cancel(self, call: SimCall) -> None:
        assert call.dialog is not None
        self.send(call.dialog.create_cancel(call.invite))

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.network.detach(self.host, self.port)


# ---- the real server on the in-memory network ---------------------------------------------------------------------

@asynccontextmanager
async def sim_pbx(tmp_path: Path, config_text: str, users: Mapping[str, str],
                  prepare: Callable[[Store], Awaitable[None]] | None = None) -> AsyncIterator[SipServer]:
    """The real ``SipServer`` (``config_text`` plus a data directory in ``tmp_path``), its SIP on a fresh
    :class:`InMemoryNetwork` (``server.net``), ``users`` as extensions; ``prepare`` runs on the store first."""
    from ccpbx.pbx.app import SipServer
    from ccpbx.pbx.config import parse_config
    from ccpbx.pbx.store import Store

    net = InMemoryNetwork()
    config = parse_config(f'[server]\ndata_dir = "{tmp_path}"\n' + config_text, base_dir=tmp_path)
    if not re.search(r"^workers\s*=", config_text, re.M):  # media in this process unless the test asks for workers
        config = config.with_overrides(rtp_workers=0)
    config = config.with_overrides(sip_workers=0)  # they need real sockets: tests/interop/test_sip_workers.py
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    await store.add_extensions([(u, p, "") for u, p in users.items()], config.sip.realm)
    if prepare is not None:
        await prepare(store)
    server = SipServer(config, store)
    server.transports = InMemoryTransports(net, server._on_datagram)  # type: ignore[assignment]
    server.net = net  # type: ignore[attr-defined]
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


async def registered(server: SipServer, user: str, password: str, **kw: bool) -> SimPhone:
    """A :class:`SimPhone` for ``user`` on ``server``'s network, registered."""
    phone = SimPhone(server.net, (HOST, server.listening[0].port), user, password, **kw)  # type: ignore[attr-defined]
    assert (await phone.register()).status == 200
    return phone


async def answered_call(server: SipServer, users: Mapping[str, str], caller: str = "1001", callee: str = "1002"
                        ) -> tuple[SimPhone, SimCall, Call]:
    """``caller`` calls ``callee``, who answers (both registered with their ``users`` password): the caller's
    phone, its call, and the server's call."""
    a = await registered(server, caller, users[caller])
    b = await registered(server, callee, users[callee])
    call = await a.call(callee, body=sdp(), wait_answer=False)
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    b.answer(incoming, sdp())
    await asyncio.wait_for(call.answered.wait(), 5)
    (ours,) = server.calls.calls.values()
    return a, call, ours


async def until(predicate: Callable[[], object], timeout: float = 8.0) -> None:
    """Wait (polling) until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
