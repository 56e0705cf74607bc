"""Busy lamps and busy-aware groups with SIPp phones.

alice's SIPp watches 2002 (SUBSCRIBE, ``Event: dialog``, digest) while 2001 calls 2002, a SIPp UAS that rings
for a second and answers: the watcher's NOTIFYs must show the call early, confirmed and terminated, in order.
Then ring groups: a member already on a call is not rung unless the group says ``ring_busy = true``.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.calls import cdr_rows, sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, build_options, ccpbx, send_udp_request, serving
from tests.interop.sipp import SCENARIOS, SippResult, free_port, run_sipp

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}

CONFIG = """
[server]
log_level = "debug"   # the tests wait for a phone's device-state change, logged at debug

[registrar]
min_expires = 10

[[group]]
name = "all"
number = "601"
strategy = "ringall"
members = ["2002", "alice"]
ring_time = 10
final = "hangup:480"

[[group]]
name = "everyone"
number = "602"
strategy = "ringall"
members = ["2002", "alice"]
ring_time = 10
ring_busy = true
final = "hangup:480"
"""


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[RunningServer]:
    with serving(tmp_path / "data", config_text=CONFIG, extensions=USERS) as srv:
        yield srv


def _call(sipp: str, server: RunningServer, work: Path, dialled: str, talk_ms: int) -> SippResult:
    return run_sipp(sipp, "uac_call", server.host, server.port, work, [["2001", USERS["2001"], "1000"]],
                    timeout_s=30, extra=["-s", dialled, "-d", str(talk_ms)])


def _watcher(sipp: str, server: RunningServer, work: Path, user: str, watched: str) -> subprocess.Popen[str]:
    """SIPp subscribed to ``watched``'s dialogs as ``user``, logging every message to ``messages.log``."""
    work.mkdir(parents=True, exist_ok=True)
    inf = work / "watcher.csv"
    inf.write_text(f"SEQUENTIAL\n{user};[authentication username={user} password={USERS[user]}]\n")
    cmd = [sipp, f"{server.host}:{server.port}", "-sf", str(SCENARIOS / "watch_dialog.xml"), "-inf", str(inf),
           "-s", watched, "-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()), "-timeout", "40s",
           "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(work / "errors.log"), "-trace_msg",
           "-message_file", str(work / "messages.log")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)


def _stop(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    return proc.returncode, out[-2000:]


def _notify_bodies(log: str) -> list[tuple[str, bytes]]:
    """(Subscription-State, body) of every NOTIFY in a SIPp -trace_msg log, in arrival order."""
    found = []
    for chunk in re.split(r"\n-{20,}[^\n]*\n", log):
        start = chunk.find("NOTIFY sip:")
        if start < 0 or "message received" not in chunk[:start]:
            continue
        message = chunk[start:].replace("\r\n", "\n")
        head, _, body = message.partition("\n\n")
        state = re.search(r"(?im)^Subscription-State:\s*(.+)$", head)
        found.append((state.group(1).strip() if state else "", body.strip().encode()))
    return found


def test_subscribe_is_challenged_and_advertised(pbx: RunningServer) -> None:
    subscribe = (b"SUBSCRIBE sip:2002@127.0.0.1 SIP/2.0\r\n"
                 b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKblf-raw;rport\r\nMax-Forwards: 70\r\n"
                 b"From: <sip:alice@127.0.0.1>;tag=raw\r\nTo: <sip:2002@127.0.0.1>\r\nCall-ID: blf-raw\r\n"
                 b"CSeq: 1 SUBSCRIBE\r\nContact: <sip:alice@127.0.0.1:9>\r\nEvent: dialog\r\n"
                 b"Content-Length: 0\r\n\r\n")
    reply = send_udp_request(pbx.host, pbx.port, subscribe)
    assert reply.startswith("SIP/2.0 401 ") and "WWW-Authenticate: Digest" in reply, reply
    options = send_udp_request(pbx.host, pbx.port, build_options(pbx.host, pbx.port))
    assert re.search(r"(?m)^Allow:[^\r\n]*SUBSCRIBE", options), options
    assert re.search(r"(?m)^Allow-Events: dialog, message-summary\r$", options), options  # BLF and MWI


def test_a_watcher_sees_a_call_ring_answer_and_end(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    watcher = _watcher(sipp, pbx, tmp_path / "watcher", "alice", "2002")
    try:
        pbx.wait_for_log(r"sip\.subscription\.started", timeout=15)
        with sipp_uas(sipp, "uas_ring_answer", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=20) as b:
            result = _call(sipp, pbx, tmp_path / "uac", "2002", 1500)
            assert result.returncode == 0, result.explain() + pbx.log[-3000:]
        assert uas_result(b, tmp_path / "b", "uas_ring_answer")[0] == 0
    finally:
        code, out = _stop(watcher, 30)
    messages = (tmp_path / "watcher" / "messages.log").read_text(errors="replace")
    errors = (tmp_path / "watcher" / "errors.log")
    assert code == 0, out + (errors.read_text() if errors.exists() else "") + messages[-3000:] + pbx.log[-3000:]

    notifies = _notify_bodies(messages)
    assert notifies[0][0].startswith("active;expires=")
    assert notifies[-1][0] == "terminated;reason=timeout"  # the unsubscribe (Expires: 0)
    states: list[str] = []
    versions: list[int] = []
    for _, body in notifies:
        root = ET.fromstring(body)
        assert root.get("state") == "full" and root.get("entity", "").startswith("sip:2002@")
        versions.append(int(root.get("version", "-1")))
        for dialog in root.findall("d:dialog", NS):
            assert dialog.get("call-id") and dialog.get("remote-tag") and dialog.get("direction") == "recipient"
            state = dialog.findtext("d:state", namespaces=NS) or ""
            if state != "trying":
                assert dialog.get("local-tag"), "the phone's tag is known once it answered with a tag"
            if not states or states[-1] != state:
                states.append(state)
    assert versions == list(range(len(notifies)))
    assert ET.fromstring(notifies[0][1]).findall("d:dialog", NS) == []  # idle at first
    assert [s for s in states if s in ("early", "confirmed", "terminated")] == ["early", "confirmed", "terminated"]


@pytest.mark.parametrize(("group", "ring_busy"), [("601", False), ("602", True)])
def test_ringall_group_skips_a_member_on_a_call(pbx: RunningServer, sipp: str, tmp_path: Path, group: str,
                                                 ring_busy: bool) -> None:
    """2002 is on a call when 2001 calls the group. Without ring_busy only alice rings (and answers); with it
    2002 rings too and answers at once, while alice only rings and is cancelled: both rang, deterministically."""
    alice_scenario = "uas_ring_cancel" if ring_busy else "uas_answer"
    with sipp_uas(sipp, "uas_answer", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=25,
                  calls=2 if ring_busy else 1) as b, \
            sipp_uas(sipp, alice_scenario, pbx, tmp_path / "alice", "alice", USERS["alice"], timeout_s=25) as alice, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(_call, sipp, pbx, tmp_path / "first", "2002", 6000)
        pbx.wait_for_log(r"device\.state\.changed(?=[^\n]*ext=2002)(?=[^\n]*new=in_use)", timeout=15)
        result = _call(sipp, pbx, tmp_path / "group", group, 500)
        assert result.returncode == 0, result.explain() + pbx.log[-3000:]
        assert first.result(timeout=40).returncode == 0, pbx.log[-3000:]
    alice_code, alice_out = uas_result(alice, tmp_path / "alice", alice_scenario)
    assert alice_code == 0, alice_out
    b_code, b_out = uas_result(b, tmp_path / "b", "uas_answer")
    assert b_code == 0, b_out
    rows = cdr_rows(pbx, count=2, timeout=10)
    group_row = next(r for r in rows if r["callee"] == group)
    legs = str(group_row["legs"])
    assert group_row["disposition"] == "answered", group_row
    if ring_busy:
        assert legs.count('"callee"') == 2, legs  # both rang, 2002 answered
    else:
        assert legs.count('"callee"') == 1 and "extension:alice" in legs, legs  # only the idle member
        assert re.search(r"route\.group\.member_busy(?=[^\n]*member=2002)", pbx.log)


def test_call_waiting_off_makes_a_busy_extension_busy(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    ccpbx(pbx.data_dir, "ext", "call-waiting", "2002", "off", config=pbx.config)
    with sipp_uas(sipp, "uas_answer", pbx, tmp_path / "b", "2002", USERS["2002"], timeout_s=25) as b, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(_call, sipp, pbx, tmp_path / "first", "2002", 4000)
        pbx.wait_for_log(r"device\.state\.changed(?=[^\n]*ext=2002)(?=[^\n]*new=in_use)", timeout=15)
        second = run_sipp(sipp, "uac_busy", pbx.host, pbx.port, tmp_path / "second",
                          [["2001", USERS["2001"], "1000"]], timeout_s=20, extra=["-s", "2002"])
        assert second.returncode == 0, second.explain() + pbx.log[-3000:]
        assert first.result(timeout=40).returncode == 0, pbx.log[-3000:]
    assert uas_result(b, tmp_path / "b", "uas_answer")[0] == 0
    busy = next(r for r in cdr_rows(pbx, count=2, timeout=10) if r["disposition"] != "answered")
    assert (busy["disposition"], busy["hangup_status"]) == ("busy", 486), busy
