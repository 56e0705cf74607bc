"""The entry points the fuzz campaign (benchmarks/fuzz.py) drives and tests/test_fuzz_corpus.py replays.

Each target takes one input (bytes) and returns normally when the code under test did the right thing: parsed
the input, or refused it with an error of the package's own hierarchy (``SipError``, ``MediaError``,
``ConfigError``). Any other exception escapes and is a crash. The SIP server target is a coroutine: the real
``SipServer`` (the sim network's in-memory transports, no SIP sockets) takes the datagram through its endpoint,
transactions and handler chain; a handler that raises there is counted by the server and re-raised here.
"""

from __future__ import annotations

import asyncio
import tempfile
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ccpbx.media.engine import MediaEngine
from ccpbx.media.errors import MediaError
from ccpbx.media.g711 import Codec
from ccpbx.media.rtp import RtpPacket, parse_rtcp
from ccpbx.media.telephone_event import TelephoneEvent
from ccpbx.pbx.config import ConfigError, load_config
from ccpbx.pbx.sdp import LocalMedia, SdpSession, SessionDescription
from ccpbx.pbx.sip.errors import SipError
from ccpbx.pbx.sip.message import parse_message

AREAS = ("sip", "sip_server", "sdp", "rtp", "config")
CORPUS_DIR = Path(__file__).parent / "data" / "fuzz_corpus"


class HandlerCrashError(Exception):
    """A SIP handler raised inside the server (the server logged it and went on; the request got no answer)."""

    def __init__(self, original: BaseException, where: str) -> None:
        super().__init__(f"{type(original).__name__} at {where}: {original}")
        self.original = original
        self.where = where


# ---- SIP parser ---------------------------------------------------------------------------------------------

def sip_target(data: bytes) -> None:
    for stream in (False, True):
        try:
            message = parse_message(data, stream=stream)
        except SipError:
            continue
        message.serialize()  # what the B2BUA would forward: must never raise either


# ---- SDP: parse, answer (both codec orders), and read it as an answer to our offer -------------------------------

LOCAL = LocalMedia("192.0.2.1", 30000)
LOCAL_PCMA = LocalMedia("192.0.2.1", 30000, codecs=(Codec.PCMA, Codec.PCMU))


def sdp_target(data: bytes) -> None:
    try:
        remote = SessionDescription.parse(data)
    except SipError:
        return
    remote.serialize()
    for local in (LOCAL, LOCAL_PCMA):
        session = SdpSession("fuzz", "1")
        try:
            answer, _ = session.answer(remote, local)
            answer.serialize()
        except SipError:
            pass
        ours = SdpSession("fuzz", "2")
        offer = ours.offer(local)
        try:
            ours.process_answer(offer, remote)
        except SipError:
            pass


# ---- RTP, RTCP, RFC 4733 codecs and the engine's receive path --------------------------------------------------

class _Engine:
    """One engine with a transcoding pair (extra payload types, 30 ms out) and a relayed pair, reused across
    inputs (as a server's is)."""

    def __init__(self) -> None:
        self.engine = MediaEngine()
        e = self.engine
        self.a = e.open_channel(Codec.PCMU, ("127.0.0.1", 40000))
        self.b = e.open_channel(Codec.PCMA, ("127.0.0.1", 40002))
        e.set_codec(self.a, Codec.PCMU, 101, also=((8, Codec.PCMA), (97, Codec.PCMA)))  # switching codecs
        e.set_send_ptime(self.b, 30)  # the transcoded peer asked 30 ms packets
        e.bridge(self.a, self.b)
        self.c = e.open_channel(Codec.PCMU, ("127.0.0.1", 40004))
        self.d = e.open_channel(Codec.PCMU, ("127.0.0.1", 40006))
        e.bridge(self.c, self.d)
        self.now = 0
        self.count = 0


_ENGINE: _Engine | None = None


def rtp_target(data: bytes) -> None:
    global _ENGINE
    for parse in (RtpPacket.parse, parse_rtcp, TelephoneEvent.parse):
        try:
            parse(data)  # type: ignore[operator]
        except MediaError:
            pass
    if _ENGINE is None:
        _ENGINE = _Engine()
    state = _ENGINE
    e = state.engine
    state.count += 1
    state.now += 7
    for ch in (state.a, state.c):
        e.receive(ch, data, ("127.0.0.1", 40000 + 2 * ch), state.now)
    e.receive_rtcp(state.b, data, ("127.0.0.1", 40003), state.now)
    if state.count % 3 == 0:
        e.tick(state.now)
        e.outgoing_by_channel()
        e.outgoing_rtcp()
        e.events()


# ---- the config file loader --------------------------------------------------------------------------------------

_CONFIG_DIR: Path | None = None


def config_target(data: bytes) -> None:
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="ccpbx-fuzz-config-"))
    path = _CONFIG_DIR / "ccpbx.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError:
        pass


SYNC_TARGETS = {"sip": sip_target, "sdp": sdp_target, "rtp": rtp_target, "config": config_target}


# ---- the whole UAS path of the real server -------------------------------------------------------------------------

FUZZ_USERS = {"1001": "fuzz-secret-1", "1002": "fuzz-secret-2"}
TRUSTED_SOURCE = ("udp", "10.9.9.9", 5060)  # admitted without a challenge: INVITEs reach call control
PLAIN_SOURCE = ("udp", "198.51.100.7", 5060)
SERVER_CONFIG = '[auth]\ntrusted_networks = ["10.0.0.0/8"]\n[rtp]\nport_min = 47000\nport_max = 47998\n'


class SipServerTarget:
    """The real server; :meth:`feed` hands it one datagram and raises :class:`HandlerCrashError` if a handler raised."""

    def __init__(self, server: object) -> None:
        self.server = server
        self.crashes: list[HandlerCrashError] = []
        self.responses = 0
        original = server._dispatch  # type: ignore[attr-defined]

        def dispatch(event: object) -> None:
            try:
                original(event)
            except Exception as exc:
                self.crashes.append(HandlerCrashError(exc, crash_location(exc)))
                raise

        server._dispatch = dispatch  # type: ignore[attr-defined]
        target = self

        class _Sink:  # replaces the in-memory network's send: counts, keeps nothing
            listening = server.transports.listening  # type: ignore[attr-defined]

            def send(self, data: bytes, destination: object) -> None:
                target.responses += 1

            async def close(self) -> None:
                pass

        server.transports = _Sink()  # type: ignore[attr-defined]

    async def feed(self, data: bytes, source: tuple[str, str, int], *, settle: bool = True) -> None:
        self.crashes.clear()
        self.server._on_datagram(data, source)  # type: ignore[attr-defined]
        if settle:
            for _ in range(3):
                await asyncio.sleep(0)
        if self.crashes:
            raise self.crashes[0]


@asynccontextmanager
async def sip_server_target(tmp_path: Path) -> AsyncIterator[SipServerTarget]:
    from tests.pbx.simnet import sim_pbx

    async with sim_pbx(tmp_path, SERVER_CONFIG, FUZZ_USERS) as server:
        yield SipServerTarget(server)


def crash_location(exc: BaseException) -> str:
    """``file:line function`` of the innermost frame in ccpbx's own code (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/tests/" not in f.filename and any(
        f"/{p}/" in f.filename for p in ("pbx", "media", "acd", "ivr", "cli"))]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    parts = Path(frame.filename).parts
    short = "/".join(parts[-2:])
    return f"{short}:{frame.lineno} {frame.name}"


def corpus_files(area: str) -> list[Path]:
    folder = CORPUS_DIR / area
    return sorted(folder.glob("*.bin")) if folder.is_dir() else []
