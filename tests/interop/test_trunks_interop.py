"""Trunks against real software over loopback: Kamailio as the SIP provider, SIPp as gateways and trunks.

- Kamailio (registrar + proxy, digest): ccpbx registers its account, refreshes it and shows the trunk
  registered; a phone on ccpbx calls an outside number that leaves through the trunk (the INVITE challenged by
  Kamailio and answered) to a SIPp UAS registered at Kamailio that echoes the audio back (both directions
  checked in a stereo recording); a call from the outside world to ccpbx's DID reaches an extension.
- A SIPp "TDM gateway" on 127.0.0.2 (an allowed source): its calls to DIDs land where the dial plan says; the
  same INVITE from 127.0.0.3 is challenged; it cannot reach an outbound route; 31 calls against a 30-channel
  trunk: 30 are answered and stay up, the 31st gets 503.
- Outbound: a trunk answering 503 fails over to the next; a trunk whose OPTIONS go unanswered is marked down
  and skipped; an extension without the international class is refused before any trunk is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.g711 import ulaw_encode
from ccpbx.pbx.app import SipServer
from tests.interop.calls import datagrams, uas_result
from tests.interop.kamailio import KamailioProvider, kamailio_binary, kamailio_provider, provider_uas
from tests.interop.server import in_process, udp_port
from tests.interop.sipp import free_port, run_sipp, start_sipp_uas, stop_process

pytestmark = pytest.mark.interop

RATE = 8000
TONE_HZ = 1000
USERS = {"1001": "pw-1001-trunk", "1002": "pw-1002-trunk"}
PROVIDER = {"ccpbx": "pbx-account-pw", "+15557654321": "far-end-pw"}
DID = "+15551230001"
FAR = "+15557654321"


def _messages(work: Path) -> str:
    return "".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-6000:] for f in work.rglob("*_messages.log"))


async def _until(predicate: object, timeout: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.05)


def _trunk(pbx: SipServer, name: str) -> dict[str, object]:
    return next(t for t in pbx.trunk_statuses() if t["name"] == name)


def _tone_wav(work: Path, seconds: float = 2.5) -> None:
    work.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(RATE * seconds)) / RATE
    pcm = (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)
    codes = ulaw_encode(pcm).tobytes()
    fmt = (7).to_bytes(2, "little") + (1).to_bytes(2, "little") + RATE.to_bytes(4, "little") + \
        RATE.to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(codes).to_bytes(4, "little")
    (work / "tone.wav").write_bytes(b"RIFF" + (len(body) + len(codes)).to_bytes(4, "little") + body + codes)


def _dominant_hz(pcm: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(pcm) > 500)
    assert loud.size > RATE // 2, f"only {loud.size} loud samples"
    part = pcm[loud[0]:loud[-1] + 1].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size)))
    return float(np.fft.rfftfreq(part.size, 1 / RATE)[int(np.argmax(spectrum))])


@contextlib.asynccontextmanager
async def _uas(sipp: str, scenario: str, work: Path, port: int, *, calls: int = 1,
               extra: list[str] | None = None) -> AsyncIterator[subprocess.Popen[str]]:
    """A SIPp UAS on 127.0.0.1:``port`` playing a trunk (not registered anywhere: the trunk names its address)."""
    proc = start_sipp_uas(sipp, scenario, work, port, calls=calls, extra=extra)
    try:
        await asyncio.sleep(0.3)  # listening
        yield proc
    finally:
        stop_process(proc, 0)


async def _register_uas(pbx: SipServer, sipp: str, work: Path, user: str, scenario: str = "uas_answer",
                        calls: int = 1, extra: list[str] | None = None) -> subprocess.Popen[str]:
    """A SIPp UAS registered at ccpbx as extension ``user``."""
    port = free_port()
    proc = start_sipp_uas(sipp, scenario, work, port, calls=calls, timeout_s=40, extra=extra)
    reg = await asyncio.to_thread(run_sipp, sipp, "reg_contact", "127.0.0.1", udp_port(pbx), work / "reg",
                                  [[user, USERS[user], "300", str(port)]])
    assert reg.returncode == 0, reg.explain()
    return proc


async def _wait(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    await asyncio.to_thread(stop_process, proc, timeout)
    out = proc.stdout.read() if proc.stdout is not None else ""
    return proc.returncode, out[-3000:]


def _cdrs(pbx: SipServer) -> list[dict[str, object]]:
    with sqlite3.connect(pbx.store.path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute('SELECT * FROM cdrs WHERE "end" IS NOT NULL ORDER BY start')]


# ---- Kamailio as the provider ---------------------------------------------------------------------------------

@pytest.fixture
def provider(tmp_path: Path) -> object:
    kamailio_binary()  # skips locally, fails with CI=true, when kamailio is missing
    with kamailio_provider(tmp_path / "kamailio", PROVIDER, did_prefixes=("+1555123",), max_expires=10) as prov:
        yield prov


def _provider_config(provider: KamailioProvider) -> str:
    return f"""
[[trunk]]
name = "provider"
host = "{provider.host}"
port = {provider.port}
username = "ccpbx"
password = "{PROVIDER['ccpbx']}"
register = true
register_expires = 60
profile = "generic"
country_code = "1"
national_prefix = "1"
international_prefix = "011"

[[route]]
name = "out"
trunks = ["provider"]

[outbound]
classes = ["internal", "emergency", "national", "mobile"]

[dialplan]
rule = [
  {{ match = "_9X.", destination = "route:out", strip = 1 }},
  {{ match = "{DID}", destination = "extension:1002", from_trunk = "provider" }},
]
"""


async def test_kamailio_provider_registration_calls_out_and_in(provider: KamailioProvider, sipp: str,
                                                               tmp_path: Path) -> None:
    async with in_process(tmp_path, _provider_config(provider), USERS) as pbx:
        # registered with digest, shown up, and refreshed (Kamailio grants 10 s)
        await _until(lambda: _trunk(pbx, "provider")["registration"] == "registered", 10, "registered")
        await asyncio.to_thread(provider.wait_registered, "ccpbx", 15.0, 2)  # a refresh counts again
        assert _trunk(pbx, "provider")["registration"] == "registered"
        assert _trunk(pbx, "provider")["reachability"] == "up"  # Kamailio answers our OPTIONS

        # out: a phone dials 9 + a US number; it leaves as +1..., challenged by Kamailio, to a UAS that echoes
        with provider_uas(sipp, provider, "provider_uas_answer", tmp_path / "far", FAR, PROVIDER[FAR],
                          timeout_s=20, extra=["-rtp_echo", "-trace_msg"]) as far:
            work = tmp_path / "phone"
            _tone_wav(work)
            phone = asyncio.create_task(asyncio.to_thread(
                run_sipp, sipp, "uac_tone_call", "127.0.0.1", udp_port(pbx), work, [["1001", USERS["1001"]]],
                extra=["-s", "915557654321", "-trace_msg"], timeout_s=20))
            await _until(lambda: any(c.b is not None and c.b.up for c in pbx.calls.calls.values()), 10,
                         "the call answered through the provider")
            call = next(c for c in pbx.calls.calls.values() if c.b is not None)
            recording = call.record(tmp_path / "out.wav", stereo=True)
            result = await phone
            assert result.returncode == 0, result.explain() + _messages(work) + provider.tail()
        code, text = uas_result(far, tmp_path / "far", "provider_uas_answer")
        assert code == 0, text + _messages(tmp_path / "far") + provider.tail()
        provider.wait_for_log(r"provider\.invite\.auth user=ccpbx")  # our INVITE answered Kamailio's 407
        far_trace = _messages(tmp_path / "far")
        assert f"INVITE sip:{FAR}@" in far_trace and "P-Asserted-Identity:" in far_trace, far_trace
        with wave.open(str(recording)) as w:
            both = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
        assert abs(_dominant_hz(both[:, 0]) - TONE_HZ) <= 20  # the phone's tone went out
        assert abs(_dominant_hz(both[:, 1]) - TONE_HZ) <= 20  # and came back from the far end's echo
        legs = str(_cdrs(pbx)[-1]["legs"])
        assert "trunk:provider" in legs

        # in: the outside world calls the DID; Kamailio sends it to our registration; extension 1002 answers
        uas = await _register_uas(pbx, sipp, tmp_path / "ext", "1002", "uas_answer")
        world = await asyncio.to_thread(run_sipp, sipp, "provider_uac_call", provider.host, provider.port,
                                        tmp_path / "world", [["12125550100", "-"]],
                                        extra=["-s", DID, "-d", "500", "-trace_msg"], timeout_s=15)
        assert world.returncode == 0, world.explain() + _messages(tmp_path / "world") + provider.tail()
        code, out = await _wait(uas)
        assert code == 0, out
        await _until(lambda: len(_cdrs(pbx)) >= 2, 5, "the inbound CDR")
        row = _cdrs(pbx)[-1]
        assert row["callee"] == DID and row["caller"] == "+12125550100", row  # normalised to E.164
        assert row["disposition"] == "answered"


# ---- SIPp as a TDM gateway and as trunks ------------------------------------------------------------------------

def _gateway_config(first_port: int, second_port: int, dead_port: int, prack_port: int) -> str:
    return f"""
[[conference]]
name = "lobby"
max_members = 50
music_when_alone = false
tones = false

[[profile]]
name = "fastping"
keepalive = 1

[[profile]]
name = "quiet"          # SIPp trunks: no OPTIONS pings (a SIPp UAS takes only its scenario's messages)
number_format = "national"
keepalive = 0

[[trunk]]
name = "pra"
host = "127.0.0.2"
allowed_sources = ["127.0.0.2"]
profile = "generic-gateway"
country_code = "49"
max_channels = 30

[[trunk]]
name = "first"
host = "127.0.0.1"
port = {first_port}
profile = "quiet"
country_code = "49"

[[trunk]]
name = "second"
host = "127.0.0.1"
port = {second_port}
profile = "quiet"
country_code = "49"

[[profile]]
name = "quiet-100rel"   # a gateway that requires RFC 3262 (as patton-smartnode), without OPTIONS pings
prack = "required"
number_format = "national"
keepalive = 0

[[trunk]]
name = "isdn"
host = "127.0.0.1"
port = {prack_port}
profile = "quiet-100rel"
country_code = "49"

[[route]]
name = "prack"
trunks = ["isdn"]

[[trunk]]
name = "dead"
host = "127.0.0.1"
port = {dead_port}
profile = "fastping"

[[route]]
name = "out"
trunks = ["first", "second"]

[[route]]
name = "skip-dead"
trunks = ["dead", "second"]

[dialplan]
rule = [
  {{ match = "_9X.", destination = "route:out", strip = 1 }},
  {{ match = "_8X.", destination = "route:skip-dead", strip = 1 }},
  {{ match = "_7X.", destination = "route:prack", strip = 1 }},
  {{ match = "201", destination = "extension:1001", from_trunk = "pra" }},
  {{ match = "300", destination = "conference:lobby", from_trunk = "pra" }},
]
"""


@pytest.fixture
async def gateway_pbx(tmp_path: Path) -> AsyncIterator[tuple[SipServer, dict[str, int], socket.socket]]:
    ports = {"first": free_port(), "second": free_port(), "isdn": free_port()}
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a trunk that never answers
    dead.bind(("127.0.0.1", 0))
    dead.setblocking(False)
    try:
        async with in_process(tmp_path, _gateway_config(ports["first"], ports["second"], dead.getsockname()[1],
                                                              ports["isdn"]),
                              USERS) as pbx:
            yield pbx, ports, dead
    finally:
        dead.close()


def _gateway_call(sipp: str, scenario: str, pbx: SipServer, work: Path, number: str, *, source: str = "127.0.0.2",
                  calls: int = 1, hold_ms: int = 500, timeout_s: int = 20) -> object:
    return run_sipp(sipp, scenario, "127.0.0.1", udp_port(pbx), work, [["0301234567", "-"]] * calls,
                    calls=calls, rate=100, timeout_s=timeout_s,
                    extra=["-s", number, "-d", str(hold_ms), "-i", source, "-trace_msg", "-l", str(calls)])


async def test_gateway_dids_land_where_the_dial_plan_says(gateway_pbx: tuple[SipServer, dict[str, int], object],
                                                          sipp: str, tmp_path: Path) -> None:
    pbx, _, _ = gateway_pbx
    uas = await _register_uas(pbx, sipp, tmp_path / "ext", "1001")
    result = await asyncio.to_thread(_gateway_call, sipp, "provider_uac_call", pbx, tmp_path / "gw", "201")
    assert result.returncode == 0, result.explain() + _messages(tmp_path / "gw")  # type: ignore[attr-defined]
    code, out = await _wait(uas)
    assert code == 0, out
    await _until(lambda: len(_cdrs(pbx)) >= 1, 5, "CDR")
    row = _cdrs(pbx)[-1]
    assert (row["callee"], row["caller"], row["disposition"]) == ("201", "+49301234567", "answered")
    # the same INVITE from another address is no gateway's: challenged like a phone
    stranger = await asyncio.to_thread(_gateway_call, sipp, "gw_challenged", pbx, tmp_path / "stranger", "201",
                                       source="127.0.0.3")
    assert stranger.returncode == 0, stranger.explain() + _messages(tmp_path / "stranger")  # type: ignore[attr-defined]
    # a caller from outside cannot reach the outbound route (nor anything but the gateway's rules)
    out_again = await asyncio.to_thread(_gateway_call, sipp, "gw_not_found", pbx, tmp_path / "tollfraud",
                                        "900441234567")
    assert out_again.returncode == 0, out_again.explain() + _messages(tmp_path / "tollfraud")  # type: ignore[attr-defined]
    assert _trunk(pbx, "first")["outbound"] == 0 and _trunk(pbx, "second")["outbound"] == 0


async def test_31_calls_against_30_channels(gateway_pbx: tuple[SipServer, dict[str, int], object], sipp: str,
                                            tmp_path: Path) -> None:
    pbx, _, _ = gateway_pbx
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, int(_trunk(pbx, "pra")["inbound"]))  # type: ignore[call-overload]
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        result = await asyncio.to_thread(_gateway_call, sipp, "provider_uac_call", pbx, tmp_path / "gw", "300",
                                         calls=31, hold_ms=3000, timeout_s=30)
    finally:
        watcher.cancel()
    errors = result.errors  # type: ignore[attr-defined]
    # exactly one call failed, and it failed with 503 (SIPp logs the message it did not expect)
    assert errors.count("Aborting call") == 1 and "received 'SIP/2.0 503 " in errors, result.explain()  # type: ignore[attr-defined]
    assert peak == 30
    await _until(lambda: len(_cdrs(pbx)) >= 30, 10, "30 CDRs")
    rows = _cdrs(pbx)
    assert len(rows) == 30
    for row in rows:  # each stayed up for the whole hold and was ended by the gateway
        assert row["disposition"] == "answered" and row["hangup_side"] == "caller", row
        assert float(row["end"]) - float(row["answer"]) >= 2.9  # type: ignore[arg-type]
    await _until(lambda: _trunk(pbx, "pra")["inbound"] == 0, 5, "channels released")


async def test_503_fails_over_and_a_silent_trunk_is_skipped(gateway_pbx: tuple[SipServer, dict[str, int],
                                                                                socket.socket],
                                                            sipp: str, tmp_path: Path) -> None:
    pbx, ports, dead = gateway_pbx
    async with _uas(sipp, "uas_unavailable", tmp_path / "first", ports["first"]) as first, \
            _uas(sipp, "uas_answer", tmp_path / "second", ports["second"], calls=2) as second:
        phone = await asyncio.to_thread(run_sipp, sipp, "uac_call", "127.0.0.1", udp_port(pbx), tmp_path / "p1",
                                        [["1001", USERS["1001"]]], extra=["-s", "90301234567"], timeout_s=20)
        assert phone.returncode == 0, phone.explain()
        code, out = await _wait(first, 10)
        assert code == 0, out  # it got the INVITE, answered 503 and got our ACK
        # the dead trunk: OPTIONS every second, unanswered -> down, and then skipped at once
        await _until(lambda: _trunk(pbx, "dead")["reachability"] == "down", 10, "dead trunk marked down")
        assert not _trunk(pbx, "dead")["available"]
        pinged = b"".join(datagrams(dead))
        assert b"OPTIONS sip:" in pinged
        started = asyncio.get_running_loop().time()
        phone = await asyncio.to_thread(run_sipp, sipp, "uac_call", "127.0.0.1", udp_port(pbx), tmp_path / "p2",
                                        [["1001", USERS["1001"]]], extra=["-s", "80301234567"], timeout_s=20)
        assert phone.returncode == 0, phone.explain()
        assert asyncio.get_running_loop().time() - started < 8
        assert b"INVITE sip:" not in b"".join(datagrams(dead))  # never tried
        code, out = await _wait(second, 10)
        assert code == 0, out


async def test_an_extension_without_the_international_class_is_refused(
        gateway_pbx: tuple[SipServer, dict[str, int], object], sipp: str, tmp_path: Path) -> None:
    pbx, ports, _ = gateway_pbx
    async with _uas(sipp, "uas_answer", tmp_path / "first", ports["first"]) as first:
        phone = await asyncio.to_thread(run_sipp, sipp, "uac_forbidden", "127.0.0.1", udp_port(pbx),
                                        tmp_path / "p", [["1002", USERS["1002"]]], extra=["-s", "90044207946000"],
                                        timeout_s=15)
        assert phone.returncode == 0, phone.explain()
        assert first.poll() is None  # the trunk never saw an INVITE
    assert _trunk(pbx, "first")["outbound"] == 0


async def test_prack_with_gateways_that_require_100rel(gateway_pbx: tuple[SipServer, dict[str, int], object],
                                                       sipp: str, tmp_path: Path) -> None:
    pbx, ports, _ = gateway_pbx
    # in: the gateway requires 100rel; our 180 comes reliably and is PRACKed before the answer
    uas = await _register_uas(pbx, sipp, tmp_path / "ext", "1001", "uas_ring_answer")
    result = await asyncio.to_thread(_gateway_call, sipp, "gw_100rel", pbx, tmp_path / "gw", "201")
    assert result.returncode == 0, result.explain() + _messages(tmp_path / "gw")  # type: ignore[attr-defined]
    code, out = await _wait(uas)
    assert code == 0, out
    # out: the trunk's profile requires 100rel; the gateway sends a reliable 183 and answers only after our PRACK
    async with _uas(sipp, "uas_100rel", tmp_path / "isdn", ports["isdn"]) as isdn:
        phone = await asyncio.to_thread(run_sipp, sipp, "uac_call", "127.0.0.1", udp_port(pbx), tmp_path / "p",
                                        [["1001", USERS["1001"]]], extra=["-s", "70301234567"], timeout_s=20)
        assert phone.returncode == 0, phone.explain()
        code, out = await _wait(isdn, 10)
        assert code == 0, out
