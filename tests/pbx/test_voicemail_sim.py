"""Voicemail on the real server (in-memory SIP, real RTP over loopback): a caller forwarded on no answer leaves a
message (a 440 Hz tone, found again in the stored WAV), the owner's phone gets unsolicited MWI NOTIFYs with the
counts, the owner dials *97, keys its PIN and hears the message (the tone in the RTP it receives), and the new
message is e-mailed to the owner with the WAV attached (a local SMTP sink)."""

from __future__ import annotations

import asyncio
import email
import socket
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from ccpbx.media.g711 import ulaw_decode, ulaw_encode
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.store import ExtensionFeatures, Store
from ccpbx.pbx.voicemail import hash_pin
from tests.pbx.simnet import HOST, InMemoryNetwork, InMemoryTransports, SimCall, SimPhone, sdp

USERS = {"1001": "pw-1001-sim", "1002": "pw-1002-sim"}
TONE_HZ = 440
RATE = 8000

pytestmark = pytest.mark.timeout(60)


class SmtpSink:
    """Just enough of an SMTP server (RFC 5321) to receive one message per connection."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 sink\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    data += chunk
                self.messages.append(data[:-5])
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class RtpPeer:
    """A phone's media: a real UDP socket that sends a tone as PCMU and keeps what it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        asyncio.get_running_loop().add_reader(self.sock, self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return
            if len(data) > 12 and data[1] & 0x7F == 0:
                self.received += data[12:]

    async def wait_for_tone(self, hz: float, timeout: float) -> None:
        """Until the last 200 ms received are a loud tone of ``hz`` (voicemail's beep: recording starts)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            tail = ulaw_decode(np.frombuffer(bytes(self.received[-1600:]), dtype=np.uint8)).astype(np.float64)
            if tail.size == 1600 and np.abs(tail).max() > 2000:
                spectrum = np.abs(np.fft.rfft(tail * np.hanning(tail.size)))
                if abs(np.fft.rfftfreq(tail.size, 1 / RATE)[int(np.argmax(spectrum))] - hz) < 30:
                    return
        raise AssertionError(f"no {hz} Hz tone heard in {timeout} s")

    async def send_tone(self, answer_sdp: bytes, seconds: float) -> None:
        port = int(next(line for line in answer_sdp.decode().splitlines() if line.startswith("m=audio")).split()[1])
        t = np.arange(int(RATE * seconds)) / RATE
        payload = ulaw_encode((np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)).tobytes()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(len(payload) // 160):
            header = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1234ABCD)
            self.sock.sendto(header + payload[i * 160:(i + 1) * 160], ("127.0.0.1", port))
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


def dominant_hz(pcm: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    assert loud.size > RATE // 2, f"only {loud.size} loud samples"
    part = pcm[loud[0]:loud[-1] + 1].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size)))
    return float(np.fft.rfftfreq(part.size, 1 / RATE)[int(np.argmax(spectrum))])


def tone_seconds(pcm: np.ndarray, hz: float) -> float:
    """How long ``hz`` is the loud, dominant frequency (200 ms windows, 100 ms apart)."""
    windows = 0
    for start in range(0, pcm.size - 1600, 800):
        part = pcm[start:start + 1600]
        if np.abs(part).max() < 2000:
            continue
        spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size)))
        if abs(np.fft.rfftfreq(part.size, 1 / RATE)[int(np.argmax(spectrum))] - hz) <= 15:
            windows += 1
    return windows * 0.1


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = await sink.start()
    yield sink, port
    sink.close()


@pytest.fixture
async def pbx(tmp_path: Path, smtp: tuple[SmtpSink, int]) -> AsyncIterator[SipServer]:
    net = InMemoryNetwork()
    config = parse_config(f'[server]\ndata_dir = "{tmp_path}"\n[admin]\nenabled = false\n'
                          '[rtp]\nport_min = 34000\nport_max = 34400\n'
                          f'[voicemail]\nunsolicited_mwi = true\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp[1]}\n'
                          'silence_stop = 3\n')
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    await store.add_extensions([(u, p, "") for u, p in USERS.items()], config.sip.realm)
    await store.set_features(ExtensionFeatures("1001", forward_noanswer="voicemail:1001", noanswer_seconds=1))
    await store.update_voicebox("1001", pin_hash=hash_pin("2468"), email="owner@example.com")
    server = SipServer(config, store)
    server.transports = InMemoryTransports(net, server._on_datagram)  # type: ignore[assignment]
    server.net = net  # type: ignore[attr-defined]
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


async def phone(pbx: SipServer, user: str) -> SimPhone:
    p = SimPhone(pbx.net, (HOST, pbx.listening[0].port), user, USERS[user])  # type: ignore[attr-defined]
    assert (await p.register()).status == 200
    return p


async def until(predicate: object, timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def mwi_bodies(p: SimPhone) -> list[str]:
    return [r.body.decode() for r in p.requests if r.method == "NOTIFY"
            and (r.headers.get("event") or "").startswith("message-summary")]


async def press(p: SimPhone, call: SimCall, keys: str) -> None:
    for key in keys:
        info = await p.in_dialog(call, "INFO", body=f"Signal={key}\r\nDuration=160\r\n".encode(),
                                 content_type="application/dtmf-relay")
        assert info.status == 200
        await asyncio.sleep(0.05)


async def test_a_message_is_left_lit_heard_and_mailed(pbx: SipServer, smtp: tuple[SmtpSink, int]) -> None:
    owner = await phone(pbx, "1001")  # registered, never answers: no answer after 1 s goes to voicemail
    caller = await phone(pbx, "1002")
    media = RtpPeer()
    try:
        call = await caller.call("1001", body=sdp(port=media.port, codecs="0"), timeout=10)
        assert call.final is not None and call.final.status == 200  # voicemail answered
        await media.wait_for_tone(1000, 20)  # the greeting, then the beep
        await asyncio.sleep(0.4)
        await media.send_tone(call.final.body, 2.0)
        await press(caller, call, "#")
        await asyncio.wait_for(call.ended.wait(), 15)  # "your message has been saved, goodbye"
    finally:
        media.close()
    await until(lambda: pbx.voicemail.counts.get("1001") == (1, 0))
    [row] = await pbx.store.list_voicemail("1001")
    assert row.caller == "1002" and row.folder == "new" and 1.5 <= row.duration_s <= 4.0
    with wave.open(row.path) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert abs(dominant_hz(pcm) - TONE_HZ) <= 10
    await until(lambda: any("Voice-Message: 1/0" in b for b in mwi_bodies(owner)))
    assert "Messages-Waiting: yes" in mwi_bodies(owner)[-1]
    await until(lambda: len(smtp[0].messages) == 1)
    mail = email.message_from_bytes(smtp[0].messages[0])
    assert mail["To"] == "owner@example.com" and "1002" in mail["Subject"]
    attachment = next(part for part in mail.walk() if part.get_content_type() == "audio/wav")
    assert attachment.get_payload(decode=True) == Path(row.path).read_bytes()

    # the owner: *97, PIN, 1 (new messages) and listens
    listen = RtpPeer()
    try:
        menu = await owner.call("*97", body=sdp(port=listen.port, codecs="0"), timeout=10)
        assert menu.final is not None and menu.final.status == 200, menu.final
        await asyncio.sleep(1.0)
        await press(owner, menu, "2468#")
        await asyncio.sleep(0.5)
        await press(owner, menu, "1")  # interrupts the counts

        def heard() -> np.ndarray:
            return ulaw_decode(np.frombuffer(bytes(listen.received), dtype=np.uint8)).astype(np.float64)

        # "message one from 1 0 0 2", then the message: its 2 s tone among the spoken prompts
        await until(lambda: tone_seconds(heard(), TONE_HZ) >= 1.2, timeout=20)
        await owner.hangup(menu)
    finally:
        listen.close()
    await until(lambda: pbx.voicemail.counts.get("1001") == (0, 1))  # heard: saved, the lamp goes out
    await until(lambda: any("Messages-Waiting: no" in b and "Voice-Message: 0/1" in b for b in mwi_bodies(owner)))
