"""Calls through the B2BUA between two SIPp instances: UAC -> ccpbx -> UAS (RFC 3261 §13-§15).

Every test checks both SIPp sides (exit code 0: each expected message arrived, in order, with the content its
``<ereg check_it>`` actions demand) and the CDR the call left behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.interop.calls import cdr_rows, datagrams, silent_contact, sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer
from tests.interop.sipp import SippResult, run_sipp

UAS_TIMEOUT_S = 12  # every UAS exits by then even when the call never reaches it


def _caller(sipp: str, server: RunningServer, work: Path, scenario: str, dialled: str = "2002", *,
            pause_ms: int = 500, transport: str = "u1") -> SippResult:
    return run_sipp(sipp, scenario, server.host, server.port, work, [["2001", USERS["2001"], "1000"]],
                    transport=transport, timeout_s=15, extra=["-s", dialled, "-d", str(pause_ms), "-trace_msg"])


def _messages(work: Path) -> str:
    """The SIP messages SIPp traced (``-trace_msg``) in ``work``: what to read when a scenario fails."""
    return "".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-6000:] for f in work.glob("*_messages.log"))


def _call(sipp: str, server: RunningServer, tmp_path: Path, uac: str, uas: str, *, pause_ms: int = 500,
          transport: str = "u1") -> None:
    """One call from ``uac`` (as 2001) to 2002 answered by ``uas``; both sides must finish their scenario."""
    with sipp_uas(sipp, uas, server, tmp_path / "uas", "2002", USERS["2002"], timeout_s=UAS_TIMEOUT_S,
                  extra=["-trace_msg"]) as proc:
        result = _caller(sipp, server, tmp_path / "uac", uac, pause_ms=pause_ms, transport=transport)
        assert result.returncode == 0, result.explain() + _messages(tmp_path / "uac") + server.log[-3000:]
    code, text = uas_result(proc, tmp_path / "uas", uas)
    assert code == 0, text + _messages(tmp_path / "uas") + server.log[-3000:]


def _one_cdr(server: RunningServer) -> dict[str, object]:
    rows = cdr_rows(server)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["caller"], row["callee"]) == ("2001", "2002"), row
    return row


def _no_cdr(server: RunningServer) -> None:
    assert cdr_rows(server, timeout=1.0) == []


def test_plain_call_and_its_cdr(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_call", "uas_answer", pause_ms=1000)
    rows = cdr_rows(server)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["caller"], row["callee"], row["destination"]) == ("2001", "2002", "extension:2002")
    assert row["disposition"] == "answered" and row["hangup_side"] == "caller"
    assert 0.8 < float(row["end"]) - float(row["answer"]) < 5.0  # type: ignore[arg-type]


def test_callee_hangs_up(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_callee_bye", "uas_callee_bye")
    row = _one_cdr(server)
    assert row["disposition"] == "answered" and row["hangup_side"] == "callee", row
    assert 0.8 < float(row["end"]) - float(row["answer"]) < 5.0  # type: ignore[arg-type]


def test_cancel_before_answer(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_cancel", "uas_ring_cancel")
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_side"], row["answer"]) == ("cancelled", "caller", None), row
    assert row["hangup_status"] == 487, row


def test_busy_callee(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_busy", "uas_busy")
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_status"], row["answer"]) == ("busy", 486, None), row


def test_no_common_codec_is_488_and_never_rings(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    with silent_contact(sipp, server, tmp_path / "uas", "2002", USERS["2002"]) as callee:
        result = _caller(sipp, server, tmp_path / "uac", "uac_g729")
        assert result.returncode == 0, result.explain() + server.log[-3000:]
        time.sleep(0.3)
        assert datagrams(callee) == []  # refused before routing: the callee never heard of the call
    row = _one_cdr(server)  # a call center counts every attempt, refused ones too
    assert (row["disposition"], row["hangup_status"], row["answer"]) == ("rejected", 488, None), row


def test_late_offer(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_late_offer", "uas_answer")
    assert "call.ack.bad_answer" not in server.log
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_side"]) == ("answered", "caller"), row


def test_hold_and_resume_by_reinvite(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_hold", "uas_answer")
    log = server.wait_for_log(r"call\.resume")
    assert log.index("call.hold") < log.index("call.resume")
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_side"]) == ("answered", "caller"), row


def test_session_timer_refreshed_by_update(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_timer", "uas_answer")
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_side"]) == ("answered", "caller"), row


def test_session_expires_below_min_se_is_422(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = _caller(sipp, server, tmp_path / "uac", "uac_timer_small")
    assert result.returncode == 0, result.explain() + server.log[-3000:]
    _no_cdr(server)  # a negotiation step (the UAC retries with a larger interval), not a call attempt


def test_bye_race(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_bye_race", "uas_bye_race")
    row = _one_cdr(server)
    assert row["disposition"] == "answered" and row["hangup_side"] in ("caller", "callee"), row
    time.sleep(0.5)  # late retransmissions and stray responses, if any, have arrived
    assert len(cdr_rows(server)) == 1


def test_max_forwards_zero_is_483(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = _caller(sipp, server, tmp_path / "uac", "uac_max_forwards")
    assert result.returncode == 0, result.explain() + server.log[-3000:]
    _no_cdr(server)


def test_plain_call_over_tcp(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    _call(sipp, server, tmp_path, "uac_call", "uas_answer", transport="t1")
    row = _one_cdr(server)
    assert (row["disposition"], row["hangup_side"]) == ("answered", "caller"), row


def test_unknown_number_hears_a_tone_then_404(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _caller(sipp, server, tmp_path / "uac", "uac_unknown", "5555")
    assert result.returncode == 0, result.explain() + server.log[-3000:]
    assert time.monotonic() - started > 2.0  # the tone lasts ~3 s before the 404: never a silent refusal
    rows = cdr_rows(server)
    assert len(rows) == 1, rows
    assert (rows[0]["callee"], rows[0]["disposition"], rows[0]["hangup_status"]) == ("5555", "rejected", 404)


def test_malformed_sdp_is_400_with_a_reason(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    result = _caller(sipp, server, tmp_path / "uac", "uac_bad_sdp")
    assert result.returncode == 0, result.explain() + server.log[-3000:]
    assert "Traceback" not in server.log
    assert server.options_ok()  # still serving


def test_instant_message_is_relayed_to_the_registered_extension(
        server: RunningServer, sipp: str, tmp_path: Path) -> None:
    """SIPp sends MESSAGE (RFC 3428) to 2002 through ccpbx (407 answered); a SIPp UAS registered as 2002
    receives it with its text and Content-Type and answers 200, which the sender gets."""
    with sipp_uas(sipp, "uas_message", server, tmp_path / "uas", "2002", USERS["2002"], timeout_s=20) as uas:
        sender = _caller(sipp, server, tmp_path / "uac", "uac_message")
        assert sender.returncode == 0, sender.explain()
        uas.wait(10)
    code, output = uas_result(uas, tmp_path / "uas", "uas_message")
    assert code == 0, output
    assert "sip.message.relayed" in server.log and "status=200" in server.log


def test_caller_preferring_pcma_is_answered_pcma_and_relayed(server: RunningServer, sipp: str,
                                                             tmp_path: Path) -> None:
    """The caller offers 8 0 101, the callee answers PCMA: both legs PCMA, the engine relays (no transcoding)."""
    _call(sipp, server, tmp_path, "uac_call_pcma_first", "uas_answer_pcma", pause_ms=1000)
    log = server.wait_for_log(r"call\.media\.bridged")
    assert "codec_a=PCMA" in log and "codec_b=PCMA" in log and "relay=True" in log, log[-3000:]
    _one_cdr(server)
