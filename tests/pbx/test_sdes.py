"""SDES (RFC 4568) in the offer/answer exchange: a=crypto lines parsed and answered, RTP/SAVP, best-effort SRTP
(RTP/AVP with a=crypto), offers made both ways, and the 488 reasons for what we cannot take."""

from __future__ import annotations

import base64

import pytest

from ccpbx.media.srtp import SrtpParameters, SrtpSuite
from ccpbx.pbx.sdes import CryptoAttribute, CryptoError, choose_crypto, new_master_key
from ccpbx.pbx.sdp import LocalMedia, SdpNegotiationError, SdpSession, SessionDescription, SrtpUse
from ccpbx.pbx.sip.errors import SipLocalError

KEY = bytes(range(30))
THEIRS = bytes(range(100, 130))
B64 = base64.b64encode(THEIRS).decode()
OURS = LocalMedia("192.0.2.1", 4000, srtp=SrtpUse.ACCEPT, srtp_key=KEY)


def offer(*streams: str) -> SessionDescription:
    return SessionDescription.parse("v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
                                    + "".join(streams))


def stream(proto: str = "RTP/SAVP", *crypto: str, port: int = 5000) -> str:
    lines = "".join(f"a=crypto:{c}\r\n" for c in crypto)
    return f"m=audio {port} {proto} 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{lines}"


def crypto_of(sdp: SessionDescription, index: int = 0) -> list[CryptoAttribute]:
    return [CryptoAttribute.parse(v or "") for v in sdp.media[index].attribute_values("crypto")]


def test_parse_and_write_a_crypto_line() -> None:
    line = CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^31")
    assert (line.tag, line.suite, line.key) == (1, SrtpSuite.AES_CM_128_HMAC_SHA1_80, THEIRS)
    assert CryptoAttribute.parse(line.value()) == line
    assert B64 not in repr(line)
    assert len(new_master_key()) == 30 and new_master_key() != new_master_key()


@pytest.mark.parametrize(("value", "why"), [
    ("1 AES_CM_128_HMAC_SHA1_80", "needs"),
    ("x AES_CM_128_HMAC_SHA1_80 inline:" + B64, "tag"),
    ("1 AES_256_CM_HMAC_SHA1_80 inline:" + B64, "unsupported crypto suite"),
    ("1 AES_CM_128_HMAC_SHA1_80 outline:" + B64, "inline"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:@@@", "base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(16)).decode(), "30 bytes"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|2^20|1:4", "MKI"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|1000", "lifetime"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + ";inline:" + B64, "more than one key"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + " UNENCRYPTED_SRTP", "session parameter"),
])
def test_unusable_crypto_lines_say_why(value: str, why: str) -> None:
    with pytest.raises(CryptoError, match=why):
        CryptoAttribute.parse(value)


def test_savp_offer_is_answered_with_the_offerers_tag_and_our_key() -> None:
    sdp, audio = SdpSession().answer(offer(stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_32 inline:{B64}",
                                                  f"2 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), OURS)
    assert sdp.media[0].proto == "RTP/SAVP" and sdp.media[0].port == 4000
    assert crypto_of(sdp) == [CryptoAttribute(1, SrtpSuite.AES_CM_128_HMAC_SHA1_32, KEY)]  # the offerer's first
    assert audio.srtp == SrtpParameters(SrtpSuite.AES_CM_128_HMAC_SHA1_32, local_key=KEY, remote_key=THEIRS)
    # a re-offer with the same keys gets the same answer: the o= version stays (RFC 3264 §8)
    session = SdpSession()
    first, _ = session.answer(offer(stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), OURS)
    again, _ = session.answer(offer(stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), OURS)
    assert again.origin.version == first.origin.version


def test_a_bad_line_is_skipped_for_a_good_one_and_all_bad_is_488_with_the_reason() -> None:
    _, audio = SdpSession().answer(offer(stream("RTP/SAVP", "1 F8_128_HMAC_SHA1_80 inline:" + B64,
                                                f"2 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), OURS)
    assert audio.srtp is not None and audio.srtp.suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    with pytest.raises(SdpNegotiationError, match="no usable a=crypto: unsupported crypto suite F8") as caught:
        SdpSession().answer(offer(stream("RTP/SAVP", "1 F8_128_HMAC_SHA1_80 inline:" + B64)), OURS)
    assert caught.value.status_hint == 488
    with pytest.raises(SdpNegotiationError, match="no a=crypto line"):
        SdpSession().answer(offer(stream("RTP/SAVP")), OURS)


def test_srtp_off_declines_savp_with_488_and_ignores_crypto_on_avp() -> None:
    plain = LocalMedia("192.0.2.1", 4000)
    with pytest.raises(SdpNegotiationError, match=r"SRTP .* not enabled"):
        SdpSession().answer(offer(stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), plain)
    sdp, audio = SdpSession().answer(offer(stream("RTP/AVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), plain)
    assert audio.srtp is None and not crypto_of(sdp)


def test_best_effort_srtp_on_avp() -> None:
    sdp, audio = SdpSession().answer(offer(stream("RTP/AVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), OURS)
    assert sdp.media[0].proto == "RTP/AVP" and audio.srtp is not None and crypto_of(sdp)[0].key == KEY
    # nothing usable in a best-effort offer: plain RTP, no 488
    sdp, audio = SdpSession().answer(offer(stream("RTP/AVP", "1 AES_CM_128_HMAC_SHA1_80 inline:@@")), OURS)
    assert audio.srtp is None and not crypto_of(sdp)


def test_offered_both_ways_the_secure_stream_wins_whatever_the_order() -> None:
    savp = stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}", port=5002)
    for streams in ((stream("RTP/AVP"), savp), (savp, stream("RTP/AVP"))):
        sdp, audio = SdpSession().answer(offer(*streams), OURS)
        index = [m.proto for m in sdp.media].index("RTP/SAVP")
        assert audio.stream_index == index and audio.srtp is not None
        assert [m.port for m in sdp.media] == [4000 if i == index else 0 for i in range(2)]
    # without SRTP the plain one is taken and the secure one declined
    sdp, audio = SdpSession().answer(offer(stream("RTP/AVP"), savp), LocalMedia("192.0.2.1", 4000))
    assert audio.stream_index == 0 and audio.srtp is None and sdp.media[1].port == 0


def test_required_refuses_plain_offers() -> None:
    required = LocalMedia("192.0.2.1", 4000, srtp=SrtpUse.REQUIRED, srtp_key=KEY)
    with pytest.raises(SdpNegotiationError, match=r"SRTP .* is required"):
        SdpSession().answer(offer(stream("RTP/AVP")), required)
    _, audio = SdpSession().answer(offer(stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")), required)
    assert audio.srtp is not None


@pytest.mark.parametrize("use", [SrtpUse.OFFER, SrtpUse.REQUIRED])
def test_our_srtp_offer_and_the_answer_to_it(use: SrtpUse) -> None:
    session = SdpSession()
    ours = session.offer(LocalMedia("192.0.2.1", 4000, srtp=use, srtp_key=KEY))
    assert ours.media[0].proto == ("RTP/SAVP" if use is SrtpUse.REQUIRED else "RTP/AVP")
    assert [(c.tag, c.suite) for c in crypto_of(ours)] == [(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80),
                                                           (2, SrtpSuite.AES_CM_128_HMAC_SHA1_32)]
    assert {c.key for c in crypto_of(ours)} == {KEY}
    # the peer answers it as we would: a second session plays the far end
    answer, far = SdpSession().answer(ours, LocalMedia("192.0.2.2", 5000, srtp=SrtpUse.ACCEPT, srtp_key=THEIRS))
    audio = session.process_answer(ours, answer)
    assert audio.srtp == SrtpParameters(SrtpSuite.AES_CM_128_HMAC_SHA1_80, local_key=KEY, remote_key=THEIRS)
    assert far.srtp == SrtpParameters(SrtpSuite.AES_CM_128_HMAC_SHA1_80, local_key=THEIRS, remote_key=KEY)
    # a far end without SRTP: plain for best effort, 488 for RTP/SAVP (it cannot accept the stream at all)
    if use is SrtpUse.OFFER:
        answer, _ = SdpSession().answer(ours, LocalMedia("192.0.2.2", 5000))
        assert session.process_answer(ours, answer).srtp is None
    else:
        with pytest.raises(SdpNegotiationError):
            SdpSession().answer(ours, LocalMedia("192.0.2.2", 5000))


def test_answers_we_cannot_use() -> None:
    session = SdpSession()
    ours = session.offer(LocalMedia("192.0.2.1", 4000, srtp=SrtpUse.REQUIRED, srtp_key=KEY))
    plain, _ = SdpSession().answer(offer(stream("RTP/AVP")), LocalMedia("192.0.2.2", 5000))
    no_crypto = SessionDescription.parse(plain.serialize().replace(b"RTP/AVP", b"RTP/SAVP"))
    with pytest.raises(SdpNegotiationError, match="no a=crypto"):
        session.process_answer(ours, no_crypto)
    wrong_tag = SessionDescription.parse(plain.serialize().replace(b"RTP/AVP", b"RTP/SAVP") + (
        f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n").encode())
    with pytest.raises(SdpNegotiationError, match="tag 7"):
        session.process_answer(ours, wrong_tag)


def test_local_media_needs_a_key_for_srtp() -> None:
    with pytest.raises(SipLocalError, match="30-byte"):
        LocalMedia("192.0.2.1", 4000, srtp=SrtpUse.ACCEPT)
    assert "srtp_key" not in repr(OURS) or repr(KEY) not in repr(OURS)
    assert choose_crypto([None, "junk"]) == (None, "a=crypto needs <tag> <suite> inline:<key>")
