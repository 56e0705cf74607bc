"""Registration from real softphone stacks no one here wrote: baresip (libre) and pyVoIP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.interop.conftest import USERS
from tests.interop.server import RunningServer
from tests.interop.sipp import free_port


def baresip_config(folder: Path, user: str, password: str, server: RunningServer, transport: str = "udp") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config").write_text(
        "module_path /usr/lib/baresip/modules\n"
        f"sip_listen 127.0.0.1:{free_port()}\n"
        "audio_player aufile,/dev/null\naudio_source aufile,/dev/null\n"
        "module g711.so\nmodule_app account.so\n")
    (folder / "accounts").write_text(
        f"<sip:{user}@{server.host}:{server.port};transport={transport}>;auth_pass={password};regint=60;"
        "audio_codecs=PCMU\n")
    return folder


def test_baresip_registers_with_md5_and_unregisters(server: RunningServer, baresip: str, tmp_path: Path) -> None:
    conf = baresip_config(tmp_path / "baresip", "2001", USERS["2001"], server)
    proc = subprocess.Popen([baresip, "-4", "-f", str(conf), "-t", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        server.wait_for_log(r"sip\.register\.ok\s.*aor=2001 contacts=1", timeout=15)
    finally:
        proc.terminate()  # baresip unregisters on a clean exit
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
    server.wait_for_log(r"sip\.register\.ok\s.*aor=2001 contacts=0", timeout=10)
    assert "Register: " not in out or "200" in out, out


def test_baresip_registers_over_tcp(server: RunningServer, baresip: str, tmp_path: Path) -> None:
    conf = baresip_config(tmp_path / "baresip", "2002", USERS["2002"], server, transport="tcp")
    proc = subprocess.Popen([baresip, "-4", "-f", str(conf), "-t", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        text = server.wait_for_log(r"sip\.register\.ok\s.*aor=2002 contacts=1", timeout=15)
        assert "aor=2002" in text
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_baresip_with_a_wrong_password_is_refused(server: RunningServer, baresip: str, tmp_path: Path) -> None:
    conf = baresip_config(tmp_path / "baresip", "2001", "not-the-password", server)
    proc = subprocess.Popen([baresip, "-4", "-f", str(conf), "-t", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        server.wait_for_log(r"sip\.register\.forbidden\s.*aor=2001", timeout=15)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert "aor=2001 contacts=1" not in server.log


def test_pyvoip_registers(server: RunningServer) -> None:
    from pyVoIP.VoIP import PhoneStatus, VoIPPhone

    rtp = free_port()
    phone = VoIPPhone(server.host, server.port, "alice", USERS["alice"], myIP="127.0.0.1", sipPort=free_port(),
                      rtpPortLow=rtp, rtpPortHigh=rtp + 20)
    phone.start()
    try:
        deadline = time.monotonic() + 10
        while phone.get_status() != PhoneStatus.REGISTERED and time.monotonic() < deadline:
            time.sleep(0.1)
        assert phone.get_status() == PhoneStatus.REGISTERED
        server.wait_for_log(r"sip\.register\.ok\s.*aor=alice contacts=1")
    finally:
        phone.stop()
    server.wait_for_log(r"sip\.register\.ok\s.*aor=alice contacts=0")
