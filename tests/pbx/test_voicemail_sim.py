"""Voicemail on the real server (in-memory SIP network, real RTP on loopback): messages left after a forward,
the busy and unavailable greetings, hang-ups while recording, the owner's ``*97`` menu and PIN, the
``message-summary`` lamps (subscribed and unsolicited) and the e-mail of a new message.

The phones here carry audio: each call's SDP names a loopback UDP socket of the test, which sends a sine as
PCMU and keeps what the server sends. The shipped prompts are replaced (``[ivr] prompt_paths``) by 60 ms of
silence each, so a menu takes milliseconds, except the two default greetings, which are tones the caller's
audio is checked for: the unavailable greeting 600 Hz, the busy one 1800 Hz. Keys go as SIP INFO (the
RFC 4733 path is the interop test's). Which prompt the flow reached is read from ``PbxFlowCall.play_one``.
"""

from __future__ import annotations

import asyncio
import re
import struct
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ccpbx.ivr.prompt_library import SHIPPED_PROMPTS
from ccpbx.media.g711 import ulaw_decode, ulaw_encode
from ccpbx.pbx.app import SipServer
from ccpbx.pbx.config import parse_config
from ccpbx.pbx.flows import PbxFlowCall
from ccpbx.pbx.sip.message import Response
from ccpbx.pbx.store import ExtensionFeatures, Store
from ccpbx.pbx.voicemail import hash_pin, verify_pin
from tests.pbx.simnet import HOST, InMemoryNetwork, InMemoryTransports, SimCall, SimPhone, sdp
from tests.smtp_sink import SmtpSink

USERS = {"1001": "pw-1001-vm-sim", "1002": "pw-1002-vm-sim", "1003": "pw-1003-vm-sim"}
RATE = 8000
MESSAGE_HZ = 700.0
UNAVAILABLE_HZ, BUSY_HZ = 600.0, 1800.0
OWNER_EMAIL = "owner-1001@example.com"

pytestmark = pytest.mark.timeout(60)


# ---- audio ------------------------------------------------------------------------------------------------------
def sine(hz: float, seconds: float, level: int = 8000) -> npt.NDArray[np.int16]:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * hz * t) * level).astype(np.int16)


def write_wav(path: Path, pcm: npt.NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def band(pcm: npt.NDArray[np.int16], hz: float) -> float:
    """Spectral magnitude near ``hz`` relative to the whole spectrum's peak (0..1)."""
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    return float(spectrum[np.abs(freqs - hz) <= 15].max() / max(spectrum.max(), 1e-9))


def loud_dominant_hz(pcm: npt.NDArray[np.int16], threshold: int = 2000) -> float:
    """The dominant frequency of the loud stretch of ``pcm`` (where the tone is, not the silences around it)."""
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    assert loud.size > RATE // 4, f"only {loud.size} loud samples"
    x = pcm[loud[0]:loud[-1] + 1].astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[int(np.argmax(spectrum))])


class RtpEnd(asyncio.DatagramProtocol):
    """A phone's audio: a loopback UDP socket that sends PCMU frames and keeps the PCMU it receives."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.received = bytearray()
        self.seq, self.stamp = 1, 0

    @classmethod
    async def open(cls) -> RtpEnd:
        end = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: end, local_addr=(HOST, 0))
        return end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a _SelectorDatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 12 and data[1] & 0x7F == 0:
            self.received += data[12:]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def offer(self) -> bytes:
        return sdp(self.port)

    def answered(self, response: Response | None) -> None:
        assert response is not None and response.status == 200
        text = response.body.decode()
        host = re.search(r"(?m)^c=IN IP4 (\S+)", text)
        port = re.search(r"(?m)^m=audio (\d+)", text)
        assert host and port, text
        self.remote = (host.group(1), int(port.group(1)))

    async def send(self, pcm: npt.NDArray[np.int16]) -> None:
        """Send ``pcm`` in real time, 20 ms a packet."""
        assert self.transport is not None and self.remote is not None
        codes = ulaw_encode(pcm)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(0, codes.size - 159, 160):
            header = struct.pack("!BBHII", 0x80, 0x80 if self.seq == 1 else 0, self.seq & 0xFFFF,
                                 self.stamp & 0xFFFFFFFF, 0x5EED0001)
            self.transport.sendto(header + codes[i:i + 160].tobytes(), self.remote)
            self.seq += 1
            self.stamp += 160
            await asyncio.sleep(max(0.0, start + (i // 160 + 1) * 0.02 - loop.time()))

    def heard(self, since: int = 0) -> npt.NDArray[np.int16]:
        return ulaw_decode(np.frombuffer(bytes(self.received[since:]), dtype=np.uint8))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---- the server -------------------------------------------------------------------------------------------------
def short_prompts(folder: Path) -> None:
    """Every shipped prompt as 60 ms of silence, except the default greetings: tones the caller can hear."""
    folder.mkdir()
    for shipped in (SHIPPED_PROMPTS / "en").glob("*.wav"):
        write_wav(folder / shipped.name, np.zeros(480, dtype=np.int16))
    write_wav(folder / "vm-unavailable.wav", sine(UNAVAILABLE_HZ, 0.6))
    write_wav(folder / "vm-busy.wav", sine(BUSY_HZ, 0.6))


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
async def pbx(tmp_path: Path, sink: SmtpSink) -> AsyncIterator[SipServer]:
    short_prompts(tmp_path / "prompts")
    config = parse_config(
        f'[server]\ndata_dir = "{tmp_path}"\n[admin]\nenabled = false\n'
        '[rtp]\nport_min = 33000\nport_max = 33400\nworkers = 0\n'
        '[ivr]\nprompt_paths = ["prompts"]\n'
        f'[voicemail]\nmin_message = 0.5\nunsolicited_mwi = true\nsmtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\n'
        'smtp_from = "pbx@example.com"\n'
        '[[dialplan.rule]]\nmatch = "800"\ndestination = "voicemail:1001"\n', base_dir=tmp_path)
    store = await Store.open(tmp_path / "ccpbx.sqlite3")
    await store.add_extensions([(u, p, "") for u, p in USERS.items()], config.sip.realm)
    server = SipServer(config.with_overrides(sip_workers=0), store)  # SIP workers: test_sip_workers.py
    server.transports = InMemoryTransports(net := InMemoryNetwork(), server._on_datagram)  # type: ignore[assignment]
    server.net = net  # type: ignore[attr-defined]
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.stop()
        await store.close()


@pytest.fixture
def played(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every prompt the flows play, in order: names as given, files by their name."""
    names: list[str] = []
    original = PbxFlowCall.play_one

    async def spy(self: PbxFlowCall, prompt: str | Path, *, interruptible: bool) -> str | None:
        names.append(f"file:{prompt.name}" if isinstance(prompt, Path) else prompt)
        return await original(self, prompt, interruptible=interruptible)

    monkeypatch.setattr(PbxFlowCall, "play_one", spy)
    return names


async def phone(pbx: SipServer, user: str, **kw: bool) -> SimPhone:
    p = SimPhone(pbx.net, (HOST, pbx.listening[0].port), user, USERS[user], **kw)  # type: ignore[attr-defined]
    assert (await p.register()).status == 200
    return p


async def until(predicate: Callable[[], object], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not met in {timeout} s"
        await asyncio.sleep(0.01)


async def reached(played: list[str], prompt: str, count: int = 1) -> None:
    await until(lambda: played.count(prompt) >= count, what=f"{prompt!r} x{count} played (so far {played})")


async def press(p: SimPhone, call: SimCall, keys: str) -> None:
    for key in keys:
        info = await p.in_dialog(call, "INFO", body=f"Signal={key}\r\nDuration=160\r\n".encode(),
                                 content_type="application/dtmf-relay")
        assert info.status == 200


async def subscribe(p: SimPhone, box: str) -> Response:
    """SUBSCRIBE to ``box``'s message-summary (answering the digest challenge)."""
    headers = (("Contact", p.contact), ("Event", "message-summary"),
               ("Accept", "application/simple-message-summary"), ("Expires", "600"))
    dialog = p._dialog(box)
    request = p._request(dialog, "SUBSCRIBE", headers=headers)
    response = await p.final(p.send(request))
    if response.status in (401, 407):
        dialog = p._dialog(box, call_id=request.call_id, tag=dialog.local_tag, seq=request.cseq.seq)
        again = p._request(dialog, "SUBSCRIBE", headers=headers)
        name = "Authorization" if response.status == 401 else "Proxy-Authorization"
        again.headers.add(name, p._authorization(response, again, name.lower()))
        response = await p.final(p.send(again))
    return response


def summaries(p: SimPhone, call_id: str | None = None, *, besides: tuple[str, ...] = ()) -> list[str]:
    """``Voice-Message`` counts of the message-summary NOTIFYs ``p`` got: in the subscription ``call_id``, or
    (without one) those outside the subscriptions ``besides``: the unsolicited ones."""
    found = []
    for request in p.requests:
        if request.method != "NOTIFY" or request.headers.get("event") != "message-summary":
            continue
        if call_id is not None and request.call_id != call_id:
            continue
        if call_id is None and request.call_id in besides:
            continue
        body = request.body.decode()
        counts = re.search(r"(?m)^Voice-Message: (\d+/\d+) \(0/0\)\r$", body)
        waiting = re.search(r"(?m)^Messages-Waiting: (yes|no)\r$", body)
        account = re.search(r"(?m)^Message-Account: (\S+)\r$", body)
        assert counts and waiting and account, body
        assert account.group(1).startswith(f"sip:{p.user}@"), body
        assert (waiting.group(1) == "yes") == (not counts.group(1).startswith("0/")), body
        assert request.headers.get("content-type") == "application/simple-message-summary"
        found.append(counts.group(1))
    return found


def box_counts(pbx: SipServer, box: str) -> tuple[int, int]:
    return pbx.voicemail.counts.get(box, (0, 0))


async def leave_message(pbx: SipServer, played: list[str], caller: SimPhone, number: str, *, seconds: float,
                        finish: str = "#") -> tuple[SimCall, RtpEnd]:
    """``caller`` dials ``number``, waits for the beep, speaks ``seconds`` of MESSAGE_HZ, then presses
    ``finish`` ("#") or hangs up (``finish=""``)."""
    rtp = await RtpEnd.open()
    beeps = played.count("tone:beep")
    call = await caller.call(number, body=rtp.offer(), timeout=10)
    rtp.answered(call.final)
    await reached(played, "tone:beep", beeps + 1)
    await asyncio.sleep(0.45)  # the 400 ms beep, then the recording starts
    await rtp.send(sine(MESSAGE_HZ, seconds))
    await asyncio.sleep(0.1)
    if finish:
        await press(caller, call, finish)
        await asyncio.wait_for(call.ended.wait(), 5)  # the flow says goodbye and hangs up
    else:
        await caller.hangup(call)
    return call, rtp


# ---- tests ------------------------------------------------------------------------------------------------------
async def test_a_message_after_no_answer_is_kept_counted_lit_and_mailed(
        pbx: SipServer, played: list[str], sink: SmtpSink) -> None:
    await pbx.store.set_features(ExtensionFeatures("1001", forward_noanswer="voicemail:1001", noanswer_seconds=1))
    await pbx.store.update_voicebox("1001", email=OWNER_EMAIL)
    owner = await phone(pbx, "1001")
    subscribed = await subscribe(owner, "1001")
    assert subscribed.status == 200
    await until(lambda: summaries(owner, subscribed.call_id) == ["0/0"], what="the first NOTIFY")
    caller = await phone(pbx, "1002")

    call, rtp = await leave_message(pbx, played, caller, "1001", seconds=1.5)
    assert 180 in call.provisional  # 1001 rang first (and did not answer)
    heard = rtp.heard()
    assert band(heard, UNAVAILABLE_HZ) > 0.2 and band(heard, BUSY_HZ) < 0.05  # the unavailable greeting, not busy
    assert played.index("vm-unavailable") < played.index("vm-leave-message") < played.index("tone:beep")
    assert played[-2:] == ["vm-message-saved", "goodbye"]

    [row] = await pbx.store.list_voicemail("1001")
    assert (row.folder, row.caller, row.mailbox) == ("new", "1002", "1001")
    assert 1.2 <= row.duration_s <= 2.2, row.duration_s
    path = Path(row.path)
    assert path.parent == pbx.voicemail.root / "1001"
    assert abs(loud_dominant_hz(read_wav(path)) - MESSAGE_HZ) <= 10

    assert box_counts(pbx, "1001") == (1, 0)
    await until(lambda: summaries(owner, subscribed.call_id) == ["0/0", "1/0"], what="the lamp lit")
    # unsolicited (unsolicited_mwi = true): at registration, then at the change
    await until(lambda: summaries(owner, besides=(subscribed.call_id,)) == ["0/0", "1/0"],
                what="the unsolicited NOTIFYs")

    [mail] = await asyncio.to_thread(sink.wait, 1)
    assert mail.recipients == [OWNER_EMAIL]
    message = mail.parsed()
    assert message["From"] == "pbx@example.com" and "1002" in message["Subject"]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "audio/wav"
    assert attachment.get_content() == path.read_bytes()


async def test_forward_on_busy_plays_the_busy_greeting_and_a_hang_up_keeps_the_message(
        pbx: SipServer, played: list[str]) -> None:
    await pbx.store.set_features(ExtensionFeatures("1001", dnd=True, forward_busy="voicemail:1001"))
    caller = await phone(pbx, "1002")
    _, rtp = await leave_message(pbx, played, caller, "1001", seconds=1.2, finish="")  # hangs up while recorded
    heard = rtp.heard()
    assert band(heard, BUSY_HZ) > 0.2 and band(heard, UNAVAILABLE_HZ) < 0.05
    await until(lambda: box_counts(pbx, "1001") == (1, 0), what="the message kept")
    [row] = await pbx.store.list_voicemail("1001")
    assert row.duration_s >= 0.9 and abs(loud_dominant_hz(read_wav(Path(row.path))) - MESSAGE_HZ) <= 10
    await until(lambda: not pbx.calls.calls, what="the call gone")


async def test_a_message_shorter_than_min_message_is_not_kept(pbx: SipServer, played: list[str]) -> None:
    caller = await phone(pbx, "1002")
    await leave_message(pbx, played, caller, "800", seconds=0.1)
    assert "vm-too-short" in played and "vm-message-saved" not in played
    assert await pbx.store.list_voicemail("1001") == []
    assert not list((pbx.voicemail.root / "1001").glob("*.wav"))
    assert not list((pbx.voicemail.root.parent / "recordings").rglob("*.wav"))  # the attempt is not left over


async def test_the_owner_hears_saves_and_deletes_through_the_menu_and_the_lamp_follows(
        pbx: SipServer, played: list[str]) -> None:
    await pbx.store.update_voicebox("1001", pin_hash=hash_pin("4321"))
    await leave_message(pbx, played, await phone(pbx, "1002"), "800", seconds=1.5)
    [row] = await pbx.store.list_voicemail("1001")
    owner = await phone(pbx, "1001")
    subscribed = await subscribe(owner, "1001")
    assert subscribed.status == 200
    await until(lambda: summaries(owner, subscribed.call_id) == ["1/0"], what="the first NOTIFY")

    rtp = await RtpEnd.open()
    call = await owner.call("*97", body=rtp.offer(), timeout=10)
    rtp.answered(call.final)
    talking = asyncio.ensure_future(rtp.send(np.zeros(RATE * 12, dtype=np.int16)))  # a phone sends all along
    await reached(played, "vm-enter-pin")
    await press(owner, call, "4321#")
    await reached(played, "vm-you-have")
    mark = len(rtp.received)
    await press(owner, call, "1")  # new messages
    await reached(played, "vm-message-menu")  # the message has played
    assert abs(loud_dominant_hz(rtp.heard(mark)) - MESSAGE_HZ) <= 10  # the owner heard the caller's tone
    assert "file:" + Path(row.path).name in played
    await until(lambda: summaries(owner, subscribed.call_id) == ["1/0", "0/1"], what="the lamp off, one saved")
    assert [r.folder for r in await pbx.store.list_voicemail("1001")] == ["saved"]

    await press(owner, call, "#")  # back to the main menu
    await reached(played, "vm-main-menu", 1)
    await press(owner, call, "2")  # saved messages
    await reached(played, "vm-message-menu", 2)
    await press(owner, call, "7")  # delete
    await reached(played, "vm-deleted")
    await until(lambda: summaries(owner, subscribed.call_id) == ["1/0", "0/1", "0/0"], what="the box empty")
    assert await pbx.store.list_voicemail("1001") == [] and not Path(row.path).exists()
    await reached(played, "vm-main-menu", 2)
    await press(owner, call, "#")
    await asyncio.wait_for(call.ended.wait(), 5)
    assert played[-1] == "goodbye"
    talking.cancel()
    rtp.close()


async def test_three_wrong_pins_say_goodbye_and_hang_up(pbx: SipServer, played: list[str]) -> None:
    await pbx.store.update_voicebox("1001", pin_hash=hash_pin("4321"))
    owner = await phone(pbx, "1001")
    call = await owner.call("*97", timeout=10)
    for attempt in range(1, 4):
        await reached(played, "vm-enter-pin", attempt)
        await press(owner, call, "1234#")
    await asyncio.wait_for(call.ended.wait(), 5)
    assert played.count("vm-bad-pin") == 3 and played[-1] == "goodbye" and "vm-you-have" not in played


async def test_another_box_always_asks_its_pin_and_one_without_a_pin_is_closed_to_others(
        pbx: SipServer, played: list[str]) -> None:
    other = await phone(pbx, "1002")
    call = await other.call("*971001", timeout=10)  # 1001 has no PIN: nobody but 1001 may set one
    await asyncio.wait_for(call.ended.wait(), 5)
    assert played == ["vm-no-pin", "goodbye"]
    assert (await pbx.store.get_voicebox("1001")).pin_hash is None


async def test_a_box_without_a_pin_has_its_owner_choose_one(pbx: SipServer, played: list[str]) -> None:
    owner = await phone(pbx, "1001")
    call = await owner.call("*97", timeout=10)
    await reached(played, "vm-set-pin-first")
    await reached(played, "vm-new-pin")
    await press(owner, call, "12#")  # too short
    await reached(played, "vm-pin-too-short")
    await reached(played, "vm-new-pin", 2)
    await press(owner, call, "2468#")
    await reached(played, "vm-repeat-pin")
    await press(owner, call, "2468#")
    await reached(played, "vm-pin-changed")
    stored = (await pbx.store.get_voicebox("1001")).pin_hash
    assert stored is not None and stored.startswith("pbkdf2$") and stored.split("$")[-1] != "2468"
    assert verify_pin("2468", stored) and not verify_pin("2469", stored)
    await reached(played, "vm-main-menu")
    await press(owner, call, "#")
    await asyncio.wait_for(call.ended.wait(), 5)


async def test_a_phone_may_watch_only_its_own_mailbox(pbx: SipServer) -> None:
    other = await phone(pbx, "1002")
    assert (await subscribe(other, "1001")).status == 403
    assert (await subscribe(other, "1002")).status == 200


async def test_a_mail_server_that_is_down_loses_no_message(pbx: SipServer, played: list[str],
                                                           sink: SmtpSink) -> None:
    await pbx.store.update_voicebox("1001", email=OWNER_EMAIL)
    sink.__exit__(None, None, None)  # nothing listens on the configured port any more
    await leave_message(pbx, played, await phone(pbx, "1002"), "800", seconds=1.0)
    await until(lambda: not pbx.voicemail._mail_tasks, what="the e-mail attempt over")
    [row] = await pbx.store.list_voicemail("1001")
    assert Path(row.path).is_file() and box_counts(pbx, "1001") == (1, 0)


def test_wrong_pins_across_calls_lock_the_box_for_a_while() -> None:
    from ccpbx.pbx.voicemail import PinGuard

    now = [0.0]
    guard = PinGuard(max_failures=3, window_s=60, lock_s=300, clock=lambda: now[0])
    guard.failed("1001")
    guard.failed("1001")
    now[0] = 70.0  # the first two are outside the window now
    guard.failed("1001")
    assert not guard.locked("1001")
    guard.failed("1001")
    guard.failed("1001")
    assert guard.locked("1001") and not guard.locked("1002")
    now[0] = 70.0 + 299
    assert guard.locked("1001")
    now[0] = 70.0 + 301
    assert not guard.locked("1001")
    guard.failed("1001")
    guard.succeeded("1001")
    guard.failed("1001")
    guard.failed("1001")
    assert not guard.locked("1001")  # a success forgets earlier failures
