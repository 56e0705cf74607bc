"""The public call API driven from a test, against SIPp phones: ``originate``, ``play``, ``record``, digit
streams and destination handlers, with the server running in this test's event loop (the same ``SipServer``
``ccpbx serve`` runs) so the test can hold the API an IVR flow or the ACD adapter holds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.dtmf import detect_digits, generate_digits
from ccpbx.media.g711 import ulaw_encode
from ccpbx.media.prompts import PromptPlayer
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.calls import Call, CallError, CallHangup, DialTarget, LegLeft, Party
from ccpbx.pbx.config import DestinationKind, parse_config
from ccpbx.pbx.destinations import Finished, Outcome
from ccpbx.pbx.sip.uri import SipUri
from ccpbx.pbx.store import Store
from tests.interop.sipp import SCENARIOS, free_media_port, free_port, run_sipp

USERS = {"2001": "secret-2001-pw", "2002": "secret-2002-pw"}
TONE_HZ = 1000
RATE = 8000

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    data = tmp_path / "data"
    data.mkdir()
    config = parse_config(f'[server]\ndata_dir = "{data}"\n[rtp]\nport_min = 30000\nport_max = 30400\n'
                          '[[dialplan.rule]]\nmatch = "700"\ndestination = "ivr:digits"\n')
    store = await Store.open(data / "ccpbx.sqlite3")
    await store.add_extensions([(ext, pw, "") for ext, pw in USERS.items()], config.sip.realm)
    server = SipServer(config.with_overrides(sip_workers=0), store)  # SIP workers: test_sip_workers.py
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


def _port(server: SipServer) -> int:
    return next(a.port for a in server.listening if a.transport == "udp")


async def _register_uas(server: SipServer, sipp: str, work: Path, user: str, scenario: str,
                        extra: list[str]) -> subprocess.Popen[str]:
    """A SIPp UAS on a free port, registered as ``user`` (the REGISTER runs in a thread: the server is ours)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sipp, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1", "-p", str(port),
                             "-m", "1", "-timeout", "40s", "-timeout_error", "-nostdin", "-mp", str(free_media_port()),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    reg = await asyncio.to_thread(run_sipp, sipp, "reg_contact", "127.0.0.1", _port(server), work / "reg",
                                  [[user, USERS[user], "300", str(port)]])
    assert reg.returncode == 0, reg.explain()
    return proc


async def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    out = proc.stdout.read() if proc.stdout is not None else ""
    return proc.returncode, out[-3000:]


def _dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / RATE)[int(np.argmax(spectrum))])


def _loud_tone_hz(pcm: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(pcm) > 500)
    assert loud.size > RATE // 2, f"the recording holds only {loud.size} loud samples"
    return _dominant_hz(pcm[loud[0]:loud[-1] + 1])  # the loud stretch, contiguous


async def _cdr(server: SipServer, call_id: str) -> dict[str, object]:
    for _ in range(100):
        await asyncio.sleep(0.05)
        with sqlite3.connect(server.store.path) as db:
            db.row_factory = sqlite3.Row
            row = db.execute('SELECT * FROM cdrs WHERE call_id = ? AND "end" IS NOT NULL', (call_id,)).fetchone()
        if row is not None:
            return dict(row)
    raise AssertionError(f"no final CDR for {call_id}")


async def test_originate_plays_a_tone_the_callee_echoes_into_our_recording(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    uas = await _register_uas(pbx, sipp, tmp_path / "uas", "2001", "uas_answer", ["-rtp_echo"])
    call = await pbx.control.originate("extension:2001", caller=Party("robot", "Wake-up"), timeout_s=10,
                                       data={"purpose": "wake-up"})
    assert call.a.up and call.originated
    recording = call.record(tmp_path / "echo.wav", stereo=True)  # left: what the callee says (its echo)
    t = np.arange(RATE * 1.5) / RATE
    tone = (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)
    assert await asyncio.wait_for(call.play(PromptPlayer(tone)), 5) is None  # returns when it has played
    await asyncio.sleep(0.3)  # the echo of the last frames is on its way back
    call.hangup()
    code, output = await _finish(uas)
    assert code == 0, output  # the callee got our BYE
    with wave.open(str(recording)) as w:
        assert (w.getframerate(), w.getnchannels()) == (RATE, 2)
        both = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    assert abs(_loud_tone_hz(both[:, 1]) - TONE_HZ) <= 20  # what the callee heard: our tone
    assert abs(_loud_tone_hz(both[:, 0]) - TONE_HZ) <= 20  # what it said: the echo of our tone
    row = await _cdr(pbx, call.id)
    assert row["destination"] == "extension:2001" and row["caller"] == "robot"
    assert row["disposition"] == "answered" and row["hangup_side"] == "system"
    assert row["recording"] == str(recording)
    assert '"purpose":"wake-up"' in str(row["data"])


async def test_originate_to_nobody_registered_fails_with_480(pbx: SipServer) -> None:
    with pytest.raises(CallError) as info:
        await pbx.control.originate("extension:2002", caller=Party("robot"))
    assert info.value.status_hint == 480


async def test_inband_digits_of_a_phone_without_telephone_event_reach_the_application_once(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    collected: list[str] = []
    ended = asyncio.Event()

    async def digits_flow(call: Call, target: str, number: str) -> Outcome:
        try:
            await call.answer()
            for _ in range(4):
                digit = await call.next_digit(timeout=10)
                if digit is None:
                    break
                collected.append(digit)
        except CallHangup:
            pass
        finally:
            ended.set()
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, digits_flow, replace=True)
    work = tmp_path / "uac"
    _digits_wav(work)
    result = await asyncio.to_thread(run_sipp, sipp, "uac_inband_digits", "127.0.0.1", _port(pbx), work,
                                     [["2002", USERS["2002"]]], extra=["-s", "700"], timeout_s=30)
    assert result.returncode == 0, result.explain()
    await asyncio.wait_for(ended.wait(), 5)
    assert "".join(collected) == "1234"


def _write_ulaw_wav(path: Path, codes: bytes) -> None:
    """A G.711 mu-law WAV (format 7), what SIPp's rtp_stream sends as PCMU payloads."""
    fmt = (7).to_bytes(2, "little") + (1).to_bytes(2, "little") + RATE.to_bytes(4, "little") + \
        RATE.to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(codes).to_bytes(4, "little")
    path.write_bytes(b"RIFF" + (len(body) + len(codes)).to_bytes(4, "little") + body + codes)



def _digits_wav(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    pcm = np.concatenate([np.zeros(RATE, dtype=np.int16), generate_digits("1234", tone_ms=120, pause_ms=120),
                          np.zeros(RATE // 2, dtype=np.int16)])
    _write_ulaw_wav(work / "digits.wav", ulaw_encode(pcm).tobytes())


async def test_an_originated_leg_moves_into_a_callers_call_and_is_bridged(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    """Agent-first, as the ACD will do it: the agent's phone is called first (originate), then the customer's
    call adopts that leg and bridges it. The agent (SIPp, echoing RTP) sends back what the customer says, so
    what the customer hears (the right channel of a stereo recording) carries the customer's own digits."""
    uas = await _register_uas(pbx, sipp, tmp_path / "agent", "2001", "uas_answer", ["-rtp_echo"])
    agent_call = await pbx.control.originate("extension:2001", caller=Party("queue"), timeout_s=10)
    agent = agent_call.a
    recording = tmp_path / "bridge.wav"
    served = asyncio.Event()

    async def queue(call: Call, target: str, number: str) -> Outcome:
        try:
            await call.answer()
            call.adopt(agent)
            call.bridge(call.a, agent)
            call.record(recording, stereo=True)
            await asyncio.sleep(3.5)
        finally:
            served.set()
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, queue, replace=True)
    _digits_wav(tmp_path / "uac")
    result = await asyncio.to_thread(run_sipp, sipp, "uac_inband_digits", "127.0.0.1", _port(pbx), tmp_path / "uac",
                                     [["2002", USERS["2002"]]], extra=["-s", "700"], timeout_s=30)
    assert result.returncode == 0, result.explain()  # the customer got our BYE after the handler finished
    await asyncio.wait_for(served.wait(), 5)
    code, output = await _finish(uas)
    assert code == 0, output  # the agent got its BYE too
    assert agent_call.finished and agent_call.end_reason == "moved"
    with wave.open(str(recording)) as w:
        assert w.getnchannels() == 2
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    assert detect_digits(stereo[:, 0]) == "1234"  # the customer, left
    assert detect_digits(stereo[:, 1]) == "1234"  # the agent echoing what it heard through the bridge, right
    row = await _cdr(pbx, next(c for c in agent_call.transfers))
    assert row["caller"] == "2002" and row["recording"] == str(recording)
    assert agent_call.id in str(row["transfers"])


async def test_call_out_then_end_when_keeps_the_caller_after_the_agent_leaves(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    uas = await _register_uas(pbx, sipp, tmp_path / "agent", "2001", "uas_callee_bye", [])
    seen: list[str] = []

    async def queue(call: Call, target: str, number: str) -> Outcome:
        await call.answer()
        call.park(call.a)  # music while the agent rings
        agent = await call.call_out("extension:2001", timeout_s=10)
        seen.append("answered" if agent.up else "not answered")
        call.bridge(call.a, agent)
        call.end_when(call.a)  # the agent hanging up must not end the customer's call
        while True:
            event = await call.wait_event()
            if isinstance(event, LegLeft):
                seen.append(f"left:{event.leg is agent}")
                break
        seen.append("caller still up" if call.a.up and not call.finished else "caller gone")
        await call.play(PromptPlayer(np.zeros(RATE // 2, dtype=np.int16)))
        return Finished()

    pbx.control.register_destination(DestinationKind.IVR, queue, replace=True)
    result = await asyncio.to_thread(run_sipp, sipp, "uac_answered_then_bye", "127.0.0.1", _port(pbx),
                                     tmp_path / "uac", [["2002", USERS["2002"]]], extra=["-s", "700"], timeout_s=30)
    assert result.returncode == 0, result.explain()  # the caller's BYE came from us, after the agent left
    code, output = await _finish(uas)
    assert code == 0, output
    assert seen == ["answered", "left:True", "caller still up"]


@pytest.mark.parametrize(("password", "answered"), [("trunk-secret", True), ("wrong-secret", False)])
async def test_an_outbound_invite_challenged_by_the_far_end_is_resent_once_with_credentials(
        pbx: SipServer, sipp: str, tmp_path: Path, password: str, answered: bool) -> None:
    """A provider (SIPp) answers our INVITE 401; ccpbx resends it once with digest credentials, which SIPp
    verifies itself (verifyauth): the right password gets the call answered, a wrong one fails with 403."""
    port = free_port()
    work = tmp_path / "provider"
    work.mkdir()
    proc = subprocess.Popen([sipp, "-sf", str(SCENARIOS / "uas_challenge.xml"), "-i", "127.0.0.1", "-p", str(port),
                             "-m", "1", "-timeout", "30s", "-nostdin", "-mp", str(free_media_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    await asyncio.sleep(0.5)  # SIPp binds its port
    target = DialTarget(uri=SipUri(user="4930123", host="127.0.0.1", port=port), destination=("udp", "127.0.0.1", port),
                        label="trunk:provider", to=Party("4930123"), credentials=("trunkuser", password))
    try:
        if answered:
            call = await pbx.calls.originate([target], caller=Party("2001"), dialled="4930123", timeout_ms=10_000)
            assert call.a.up and call.a.challenged
            call.hangup()
        else:
            with pytest.raises(CallError) as info:
                await pbx.calls.originate([target], caller=Party("2001"), dialled="4930123", timeout_ms=10_000)
            assert info.value.status_hint == 403
    finally:
        code, output = await _finish(proc)
    assert code == 0, output  # SIPp's scenario ran to its end: it saw what it expected
