"""Voicemail and its lamp against SIPp: a SIPp phone subscribed to its own box's message-summary (RFC 3842) gets
0/0, then 1/0 when a SIPp caller leaves a message (a 440 Hz tone, found again in the stored WAV), then 0/1 after
the owner (SIPp again) dials *97, keys its PIN and the new-messages key by SIP INFO."""

from __future__ import annotations

import asyncio
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.g711 import ulaw_encode
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.store import Store
from ccpbx.pbx.voicemail import hash_pin
from tests.interop.sipp import SCENARIOS, free_port, run_sipp
from tests.interop.test_blf_sipp import _notify_bodies
from tests.interop.test_call_api_sipp import _write_ulaw_wav

USERS = {"2001": "secret-2001-pw", "2002": "secret-2002-pw"}
RATE = 8000
TONE_HZ = 440

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[SipServer]:
    data = tmp_path / "data"
    data.mkdir()
    config = parse_config(
        f'[server]\ndata_dir = "{data}"\n[admin]\nenabled = false\n[rtp]\nport_min = 31000\nport_max = 31200\n'
        '[[dialplan.rule]]\nmatch = "_8XXXX"\nstrip = 1\ndestination = "voicemail:{number}"\n')
    store = await Store.open(data / "ccpbx.sqlite3")
    await store.add_extensions([(ext, pw, "") for ext, pw in USERS.items()], config.sip.realm)
    await store.update_voicebox("2001", pin_hash=hash_pin("2468"))
    server = SipServer(config, store)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


def _port(server: SipServer) -> int:
    return next(a.port for a in server.listening if a.transport == "udp")


def _watcher(sipp: str, port: int, work: Path) -> subprocess.Popen[str]:
    work.mkdir(parents=True, exist_ok=True)
    inf = work / "watcher.csv"
    inf.write_text(f"SEQUENTIAL\n2001;[authentication username=2001 password={USERS['2001']}]\n")
    cmd = [sipp, f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "watch_mwi.xml"), "-inf", str(inf), "-s", "2001",
           "-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()), "-timeout", "120s", "-timeout_error",
           "-nostdin", "-trace_err", "-error_file", str(work / "errors.log"), "-trace_msg", "-message_file",
           str(work / "messages.log")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)


def _dominant_hz(pcm: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    assert loud.size > RATE, f"only {loud.size} loud samples"
    part = pcm[loud[0]:loud[-1] + 1].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size)))
    return float(np.fft.rfftfreq(part.size, 1 / RATE)[int(np.argmax(spectrum))])


async def _until(predicate: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_message_lights_the_lamp_and_listening_puts_it_out(
        pbx: SipServer, sipp: str, tmp_path: Path) -> None:
    watcher = _watcher(sipp, _port(pbx), tmp_path / "watcher")
    try:
        await _until(lambda: (tmp_path / "watcher" / "messages.log").exists()
                     and "Voice-Message" in (tmp_path / "watcher" / "messages.log").read_text(errors="replace"), 15)
        caller = tmp_path / "caller"
        caller.mkdir()
        t = np.arange(RATE * 16) / RATE  # longer than the greeting: its end is the message
        _write_ulaw_wav(caller / "tone.wav", ulaw_encode((np.sin(2 * np.pi * TONE_HZ * t) * 8000)
                                                         .astype(np.int16)).tobytes())
        left = await asyncio.to_thread(run_sipp, sipp, "uac_tone_then_bye", "127.0.0.1", _port(pbx), caller,
                                       [["2002", USERS["2002"]]], extra=["-s", "82001", "-d", "15500"], timeout_s=60)
        assert left.returncode == 0, left.explain()
        await _until(lambda: pbx.voicemail.counts.get("2001") == (1, 0), 10)
        [row] = await pbx.store.list_voicemail("2001")
        assert row.caller == "2002" and row.duration_s >= 2
        with wave.open(row.path) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        assert abs(_dominant_hz(pcm) - TONE_HZ) <= 10

        owner = await asyncio.to_thread(run_sipp, sipp, "uac_vm_owner", "127.0.0.1", _port(pbx), tmp_path / "owner",
                                        [["2001", USERS["2001"]]], extra=["-s", "*97"], timeout_s=60)
        assert owner.returncode == 0, owner.explain()
        await _until(lambda: pbx.voicemail.counts.get("2001") == (0, 1), 10)
        out, _ = await asyncio.to_thread(watcher.communicate, None, 20)
        assert watcher.returncode == 0, out[-2000:]
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    bodies = [body.decode() for _, body in _notify_bodies((tmp_path / "watcher" / "messages.log").read_text())]
    counts = [line.split(":", 1)[1].strip().split()[0] for body in bodies for line in body.splitlines()
              if line.startswith("Voice-Message")]
    assert counts[0] == "0/0" and "1/0" in counts and counts[-1] == "0/1"
    assert counts.index("1/0") < len(counts) - 1
    assert "Messages-Waiting: yes" in bodies[counts.index("1/0")]
    assert "Message-Account: sip:2001@" in bodies[0]
