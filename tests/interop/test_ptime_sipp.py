"""Any packet time through a transcoded call (RFC 3551 §4.5, RFC 8866 §6.4 a=ptime), with SIPp doing the SIP.

The caller (SIPp) offers PCMA only with ``a=ptime:30``; the callee (SIPp) answers PCMU only at 20 ms, so ccpbx
transcodes. The RTP of both phones is the test's own sockets (the SDP names them): the caller side sends a
1000 Hz tone in 30 ms A-law packets, the callee side a 1500 Hz tone in 20 ms mu-law packets. Each side must get
the other's tone at exactly its frequency, the caller in 30 ms packets as it asked, the callee in 20 ms ones.
"""

from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ccpbx.media.g711 import Codec
from tests.interop.baresip import dominant_frequency
from tests.interop.calls import sipp_uas
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer
from tests.interop.sipp import run_sipp

CALLER_HZ, CALLEE_HZ = 1000.0, 1500.0
TALK_S = 2.5


def _tone(codec: Codec, hz: float, seconds: float) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return codec.encode((8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)).tobytes()


def _rtp(pt: int, seq: int, ts: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x30A11CE) + payload


class _Side:
    """One phone's RTP: a socket, the tone it sends in packets of ``samples``, what it received."""

    def __init__(self, codec: Codec, hz: float, samples: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.codec, self.samples = codec, samples
        self.tone = _tone(codec, hz, TALK_S + 5)  # outlasts the call: the last second heard is tone
        self.peer: tuple[str, int] | None = None  # ccpbx's RTP port for this leg: where its packets come from
        self.received: list[bytes] = []
        self.sent = 0
        self.started = 0.0

    def pump(self, now: float) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.peer = self.peer or source
            self.received.append(data)
        if self.peer is None:
            return
        if not self.started:
            self.started = now
        due = int((now - self.started) * 8000 / self.samples) + 1
        while self.sent < due and (self.sent + 1) * self.samples <= len(self.tone):
            start = self.sent * self.samples
            self.sock.sendto(_rtp(self.codec.payload_type, self.sent, start, self.tone[start:start + self.samples]),
                             self.peer)
            self.sent += 1

    def heard(self) -> tuple[set[int], set[int], np.ndarray]:
        """(payload types, payload sizes, decoded audio) of what arrived, the last second only."""
        pts = {d[1] & 0x7F for d in self.received}
        sizes = {len(d) - 12 for d in self.received}
        codes = np.frombuffer(b"".join(d[12:] for d in self.received), dtype=np.uint8)
        pcm = (Codec.PCMA if 8 in pts else Codec.PCMU).decode(codes)
        return pts, sizes, pcm[-8000:]


def test_30ms_caller_and_20ms_callee_hear_each_other_through_a_transcoded_call(
        server: RunningServer, sipp: str, tmp_path: Path) -> None:
    caller = _Side(Codec.PCMA, CALLER_HZ, 240)
    callee = _Side(Codec.PCMU, CALLEE_HZ, 160)
    inf = tmp_path / "uas_fields.csv"
    inf.write_text(f"SEQUENTIAL\n{callee.port}\n")
    try:
        with sipp_uas(sipp, "uas_answer_pcmu_port", server, tmp_path / "uas", "2002", USERS["2002"],
                      timeout_s=20, extra=["-inf", str(inf), "-trace_msg"]), ThreadPoolExecutor(1) as pool:
            call = pool.submit(run_sipp, sipp, "uac_call_ptime30", server.host, server.port, tmp_path / "uac",
                               [["2001", USERS["2001"], str(caller.port)]], timeout_s=20,
                               extra=["-s", "2002", "-d", str(int((TALK_S + 1) * 1000)), "-trace_msg"])
            deadline = time.monotonic() + TALK_S + 6
            while not call.done() and time.monotonic() < deadline:
                now = time.monotonic()
                caller.pump(now)
                callee.pump(now)
                time.sleep(0.002)
            result = call.result(timeout=30)
            assert result.returncode == 0, result.explain() + server.log[-3000:]
        log = server.log
        assert "codec_a=PCMA" in log and "codec_b=PCMU" in log and "relay=False" in log, log[-3000:]
        pts, sizes, pcm = caller.heard()
        assert pts == {8} and sizes == {240}, (pts, sizes)  # A-law in 30 ms packets, as the caller asked
        assert len(pcm) == 8000 and dominant_frequency(pcm) == CALLEE_HZ
        pts, sizes, pcm = callee.heard()
        assert pts == {0} and sizes == {160}, (pts, sizes)
        assert len(pcm) == 8000 and dominant_frequency(pcm) == CALLER_HZ
    finally:
        caller.sock.close()
        callee.sock.close()
