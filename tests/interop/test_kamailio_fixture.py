"""The Kamailio "SIP provider" fixture (tests/interop/kamailio.py) does what trunk tests rely on, shown with SIPp."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import kamailio
from tests.interop.calls import uas_result
from tests.interop.kamailio import KamailioProvider, kamailio_binary, kamailio_provider, provider_uas, register_sipp
from tests.interop.sipp import free_port, run_sipp

SUBSCRIBERS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "ccpbx": "pbx-trunk-pw"}
DID = "+15551234567"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[KamailioProvider]:
    kamailio_binary()  # skip locally (fail with CI=true) when kamailio is not installed
    with kamailio_provider(tmp_path / "kamailio", SUBSCRIBERS, did_prefixes=("+1555123", "1555123")) as prov:
        yield prov


def _messages(work: Path) -> str:
    return "".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-4000:] for f in work.rglob("*_messages.log"))


def test_register_right_and_wrong_password(provider: KamailioProvider, sipp: str, tmp_path: Path) -> None:
    register_sipp(sipp, provider, tmp_path / "ok", "alice", SUBSCRIBERS["alice"], free_port())
    wrong = run_sipp(sipp, "reg_wrong", provider.host, provider.port, tmp_path / "wrong",
                     [["bob", "not-bobs-password", "300"]], timeout_s=10)
    assert wrong.returncode == 0, wrong.explain() + provider.tail()  # 401, then 403
    stranger = run_sipp(sipp, "reg_wrong", provider.host, provider.port, tmp_path / "stranger",
                        [["mallory", "whatever", "300"]], timeout_s=10)
    assert stranger.returncode == 0, stranger.explain() + provider.tail()
    provider.wait_for_log(r"provider\.register\.forbidden user=bob rc=-2")
    assert provider.options() is not None  # still answering keep-alive pings


def test_subscriber_calls_a_registered_subscriber(provider: KamailioProvider, sipp: str, tmp_path: Path) -> None:
    with provider_uas(sipp, provider, "provider_uas_answer", tmp_path / "uas", "bob", SUBSCRIBERS["bob"],
                      timeout_s=10, extra=["-trace_msg"]) as proc:
        caller = run_sipp(sipp, "provider_uac_auth_call", provider.host, provider.port, tmp_path / "uac",
                          [["alice", SUBSCRIBERS["alice"], "300"]], timeout_s=10,
                          extra=["-s", "bob", "-d", "300", "-trace_msg"])
        assert caller.returncode == 0, caller.explain() + _messages(tmp_path / "uac") + provider.tail()
    code, text = uas_result(proc, tmp_path / "uas", "provider_uas_answer")
    assert code == 0, text + _messages(tmp_path / "uas") + provider.tail()
    provider.wait_for_log(r"provider\.invite\.auth user=alice")
    provider.wait_for_log(r"provider\.req BYE ")  # the BYE went through the proxy (Record-Route)
    uas_trace = _messages(tmp_path / "uas")
    assert "Record-Route:" in uas_trace and "BYE sip:" in uas_trace, uas_trace


def test_unregistered_callee_and_wrong_caller_password(provider: KamailioProvider, sipp: str,
                                                      tmp_path: Path) -> None:
    for name, row, status in (("nobody", ["alice", SUBSCRIBERS["alice"], "300"], "404"),
                              ("badpw", ["alice", "not-alices-password", "300"], "403")):
        result = run_sipp(sipp, "provider_uac_auth_call", provider.host, provider.port, tmp_path / name, [row],
                          timeout_s=5, extra=["-s", "carol", "-trace_msg"])
        assert result.returncode != 0, result.explain()
        assert f"SIP/2.0 {status} " in _messages(tmp_path / name), _messages(tmp_path / name) + provider.tail()


def test_did_call_reaches_the_pbx_account(provider: KamailioProvider, sipp: str, tmp_path: Path) -> None:
    with provider_uas(sipp, provider, "provider_uas_answer", tmp_path / "pbx", provider.pbx_account,
                      SUBSCRIBERS["ccpbx"], timeout_s=10, extra=["-trace_msg"]) as proc:
        caller = run_sipp(sipp, "provider_uac_call", provider.host, provider.port, tmp_path / "world",
                          [["outsider", "-", "300"]], timeout_s=10, extra=["-s", DID, "-d", "300", "-trace_msg"])
        assert caller.returncode == 0, caller.explain() + _messages(tmp_path / "world") + provider.tail()
    code, text = uas_result(proc, tmp_path / "pbx", "provider_uas_answer")
    assert code == 0, text + _messages(tmp_path / "pbx") + provider.tail()
    trace = _messages(tmp_path / "pbx")
    assert f"INVITE sip:{provider.pbx_account}@127.0.0.1:" in trace, trace
    assert f"To: <sip:{DID}@127.0.0.1>" in trace, trace
    provider.wait_for_log(rf"provider\.did \{DID} -> {provider.pbx_account}")
    provider.wait_registered(provider.pbx_account)


def test_did_call_without_a_registered_pbx_gets_480(provider: KamailioProvider, sipp: str, tmp_path: Path) -> None:
    result = run_sipp(sipp, "provider_uac_call", provider.host, provider.port, tmp_path / "world",
                      [["outsider", "-", "300"]], timeout_s=5, extra=["-s", "15551230000", "-trace_msg"])
    assert result.returncode != 0
    assert "SIP/2.0 480 " in _messages(tmp_path / "world"), _messages(tmp_path / "world") + provider.tail()


def test_stop_ends_the_process(tmp_path: Path) -> None:
    kamailio_binary()
    with kamailio_provider(tmp_path / "k", {"u": "p"}) as prov:
        proc = prov.proc
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None and prov.options(timeout=0.3) is None
    prov.stop()  # idempotent


def test_a_taken_port_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kamailio_binary()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(kamailio, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))
        with kamailio_provider(tmp_path / "k", {"u": "p"}) as prov:
            assert prov.port != taken and prov.options() is not None
        assert prov.log.count("=== start attempt") == 2, prov.tail()
