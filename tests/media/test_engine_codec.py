"""Changing a channel's codec after open (SDP answers arrive after the port was offered)."""

from __future__ import annotations

import numpy as np
import pytest

from ccpbx.media.engine import MediaEngine
from ccpbx.media.errors import MediaError
from ccpbx.media.g711 import Codec
from ccpbx.media.rtp import RtpPacket


def _frame(engine: MediaEngine, ch: int, seq: int, codec: Codec, value: int) -> None:
    pcm = np.full(160, value, dtype=np.int16)
    payload = codec.encode(pcm).tobytes()
    packet = RtpPacket(payload_type=codec.payload_type, sequence=seq, timestamp=seq * 160, ssrc=1234,
                       payload=payload)
    engine.receive(ch, packet.serialize(), ("127.0.0.1", 40000 + ch), seq * 20)


def test_set_codec_changes_sent_payload_type_and_transcodes() -> None:
    engine = MediaEngine()
    a = engine.open_channel(Codec.PCMU, ("127.0.0.1", 40000))
    b = engine.open_channel(Codec.PCMU, ("127.0.0.1", 40001))
    engine.bridge(a, b)
    assert engine.relaying(a)
    engine.set_codec(b, Codec.PCMA)
    assert not engine.relaying(a)  # different codecs: the audio path transcodes
    for seq in range(1, 8):
        _frame(engine, a, seq, Codec.PCMU, 4000)
        engine.tick(seq * 20 + 60)
    sent_to_b = [RtpPacket.parse(d) for ch, d, _ in engine.outgoing_by_channel() if ch == b]
    assert sent_to_b and {p.payload_type for p in sent_to_b} == {Codec.PCMA.payload_type}
    decoded = Codec.PCMA.decode(np.frombuffer(sent_to_b[-1].payload, dtype=np.uint8))
    assert abs(int(np.median(decoded)) - 4000) < 200


def test_set_codec_rejects_bad_input() -> None:
    engine = MediaEngine()
    a = engine.open_channel(Codec.PCMU, None)
    with pytest.raises(MediaError):
        engine.set_codec(a, "PCMU")  # type: ignore[arg-type]
    with pytest.raises(MediaError):
        engine.set_codec(a, Codec.PCMA, telephone_event_pt=13)
    with pytest.raises(MediaError):
        engine.set_codec(a + 1, Codec.PCMA)
