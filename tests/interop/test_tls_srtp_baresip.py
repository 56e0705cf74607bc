"""SIP over TLS and SRTP (SDES) with a real phone: baresip 1.0.0 registers to ``ccpbx serve`` over TLS (trusting
the self-signed certificate this test makes) with ``mediaenc=srtp-mand`` (RTP/SAVP and a=crypto, nothing else),
and calls a SIPp phone on plain UDP/RTP that echoes what it gets. baresip must hear its own tone back: its SRTP
reached ccpbx, was unprotected, crossed the bridge as RTP to SIPp and back, and was protected again for it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccpbx.pbx.tlscert import make_self_signed
from tests.interop.baresip import baresip_phone, dominant_frequency, rms
from tests.interop.server import RunningServer, serving
from tests.interop.sipp import free_media_port, free_port, run_sipp, start_sipp_uas, stop_process

EXTENSIONS = {"1001": "pw-1001-tls-srtp", "2001": "pw-2001-tls-srtp"}
TONE_HZ = 600
RATE_HZ = 8000
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[tuple[RunningServer, int, Path]]:
    made = make_self_signed(("127.0.0.1",))
    cert, key = tmp_path / "pbx.crt", tmp_path / "pbx.key"
    cert.write_bytes(made.certificate_pem)
    key.write_bytes(made.private_key_pem)
    rtp_min = random.randrange(20000, 38000, 2)
    config = (f'[sip]\ntransports = ["udp", "tcp", "tls"]\ntls_port = 0\ntls_certificate = "{cert}"\n'
              f'tls_private_key = "{key}"\n[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + 200}\n')
    with serving(tmp_path / "data", extensions=EXTENSIONS, config_text=config) as srv:
        tls_port = next(int(m[1]) for line in srv.stdout_lines
                        if (m := re.match(r"ccpbx: listening tls \S+ (\d+)", line)))
        yield srv, tls_port, cert


def test_baresip_over_tls_with_srtp_calls_a_plain_rtp_phone(pbx: tuple[RunningServer, int, Path], baresip: str,
                                                             sipp: str, tmp_path: Path) -> None:
    server, tls_port, cert = pbx
    uas_port = free_port()
    uas = start_sipp_uas(sipp, "uas_answer", tmp_path / "uas", uas_port, timeout_s=40, extra=["-rtp_echo"])
    try:
        reg = run_sipp(sipp, "reg_contact", "127.0.0.1", server.port, tmp_path / "reg",
                       [["2001", EXTENSIONS["2001"], "300", str(uas_port)]])
        assert reg.returncode == 0, reg.explain()
        with baresip_phone(baresip, server, tmp_path / "1001", "1001", EXTENSIONS["1001"], tone_hz=TONE_HZ,
                           transport="tls", port=tls_port, extra_config=f"module srtp.so\nsip_cafile {cert}\n",
                           account_params=";mediaenc=srtp-mand") as phone:
            log = server.log
            assert re.search(r"sip\.register\.ok\s.*aor=1001 contacts=1", log)
            phone.command("dial", f"sip:2001@127.0.0.1:{tls_port}")  # baresip adds the account's transport=tls
            phone.wait_event("CALL_ESTABLISHED", timeout=15)
            phone.drain(3.0)
            pcm = phone.received_audio()[RATE_HZ // 2:]
            assert len(pcm) >= RATE_HZ, f"only {len(pcm)} samples received"
            assert rms(pcm) > 2000.0, f"near silence (RMS {rms(pcm):.0f}):\n{phone.output()[-2000:]}"
            assert abs(dominant_frequency(pcm) - TONE_HZ) <= 20.0
            output = phone.output()
            assert re.search(r"SRTP is Enabled \(cryptosuite=AES_CM_128_HMAC_SHA1_(80|32)\)", output), output[-3000:]
            phone.command("hangup")
            phone.wait_event("CALL_CLOSED", timeout=10)
        log = server.wait_for_log(r"call\.media\.srtp\s.*suite=AES_CM_128_HMAC_SHA1_(80|32)")
        assert "srtp_errors" not in log
        assert re.search(r"sip\.register\.ok\s.*aor=1001 contacts=0", server.wait_for_log(
            r"aor=1001 contacts=0", timeout=10))  # baresip unregistered over TLS on its way out
    finally:
        stop_process(uas, 20)
    out = uas.stdout.read() if uas.stdout is not None else ""
    assert uas.returncode == 0, out[-3000:]


def test_a_call_to_a_phone_registered_over_tls_offers_it_srtp(
        pbx: tuple[RunningServer, int, Path], baresip: str, sipp: str, tmp_path: Path) -> None:
    """The other way round: a SIPp caller on UDP (plain RTP, echoing) calls baresip registered over TLS with
    best-effort SRTP (``mediaenc=srtp``: RTP/AVP + a=crypto). ccpbx's INVITE reaches baresip over its own TLS
    connection and offers SRTP ([sip] srtp = optional offers it on TLS legs); baresip takes it and hears its
    own tone back through the echo."""
    server, tls_port, cert = pbx
    with baresip_phone(baresip, server, tmp_path / "1001", "1001", EXTENSIONS["1001"], tone_hz=TONE_HZ,
                       auto_answer=True, transport="tls", port=tls_port,
                       extra_config=f"module srtp.so\nsip_cafile {cert}\n", account_params=";mediaenc=srtp") as phone:
        result = run_sipp(sipp, "uac_call", "127.0.0.1", server.port, tmp_path / "uac",
                          [["2001", EXTENSIONS["2001"], "1001"]], timeout_s=30,
                          extra=["-s", "1001", "-d", "4000", "-rtp_echo", "-mp", str(free_media_port())])
        assert result.returncode == 0, result.explain() + server.log[-3000:]
        phone.wait_event("CALL_CLOSED", timeout=10)
        output = phone.output()
        assert re.search(r"SRTP is Enabled", output), output[-3000:]
        pcm = phone.received_audio()[RATE_HZ // 2:]
        assert len(pcm) >= RATE_HZ and rms(pcm) > 2000.0, f"RMS {rms(pcm):.0f} over {len(pcm)} samples"
        assert abs(dominant_frequency(pcm) - TONE_HZ) <= 20.0
    server.wait_for_log(r"call\.media\.srtp\s.*leg=callee suite=AES_CM_128_HMAC_SHA1_80")
