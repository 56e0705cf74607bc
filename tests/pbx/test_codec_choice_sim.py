"""Codec choice across a bridge (RFC 3264 §6.1): the caller's order is honoured, the B-leg offer leads with the
caller's codec, and a late answer to the caller follows the callee's codec, so the engine relays packets
instead of transcoding whenever the phones allow it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccpbx.media.g711 import Codec
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.sdp import SessionDescription
from tests.pbx.simnet import SimCall, registered, sdp, sim_pbx, until

USERS = {"1001": "pw-1001-codec", "1002": "pw-1002-codec"}
pytestmark = pytest.mark.timeout(30)

@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    async with sim_pbx(tmp_path, "[admin]\nenabled = false\n[rtp]\nport_min = 33000\nport_max = 33400\n",
                       USERS) as server:
        yield server

async def _call(pbx: SipServer, offer: str, answer: str) -> tuple[SimCall, SimCall]:
    a, b = await registered(pbx, "1001", USERS["1001"]), await registered(pbx, "1002", USERS["1002"])
    call = await a.call("1002", body=sdp(codecs=offer), wait_answer=False)
    incoming = await asyncio.wait_for(b.incoming.get(), 5)
    b.answer(incoming, sdp(codecs=answer))
    await asyncio.wait_for(call.answered.wait(), 5)
    await until(lambda: any(c.b is not None and c.b.audio is not None for c in pbx.calls.calls.values()))
    return call, incoming

def _formats(body: bytes) -> tuple[str, ...]:
    return SessionDescription.parse(body).media[0].formats

def _legs(pbx: SipServer) -> tuple[Codec, Codec, bool]:
    (call,) = pbx.calls.calls.values()
    assert call.a.audio is not None and call.b is not None and call.b.audio is not None
    assert call.a.channel is not None
    return call.a.audio.codec, call.b.audio.codec, pbx.media.engine.relaying(call.a.channel)

async def test_caller_preferring_pcma_gets_pcma_on_both_legs_and_a_relay(pbx: SipServer) -> None:
    call, incoming = await _call(pbx, "8 0 101", "8 101")
    assert _formats(incoming.invite.body)[0] == "8"  # the B-leg offer leads with the caller's codec
    assert call.final is not None and _formats(call.final.body)[0] == "8"
    assert _legs(pbx) == (Codec.PCMA, Codec.PCMA, True)

async def test_a_late_answer_follows_the_callees_codec(pbx: SipServer) -> None:
    call, _ = await _call(pbx, "8 0 101", "0 101")  # the callee insists on PCMU
    assert call.final is not None and _formats(call.final.body)[0] == "0"  # the caller is answered PCMU
    assert _legs(pbx) == (Codec.PCMU, Codec.PCMU, True)

async def test_no_codec_in_common_between_the_phones_transcodes(pbx: SipServer) -> None:
    call, _ = await _call(pbx, "8 101", "0 101")
    assert call.final is not None and _formats(call.final.body)[0] == "8"
    assert _legs(pbx) == (Codec.PCMA, Codec.PCMU, False)

async def test_the_answer_lists_every_common_codec_and_the_engine_takes_both(pbx: SipServer) -> None:
    call, _ = await _call(pbx, "8 0 101", "8 0 101")
    assert call.final is not None and _formats(call.final.body) == ("8", "0", "101")
    (c,) = pbx.calls.calls.values()
    assert c.a.audio is not None and c.a.audio.receive_formats == ((0, Codec.PCMU),)
    assert c.b is not None and c.b.audio is not None and c.b.audio.receive_formats == ((0, Codec.PCMU),)
