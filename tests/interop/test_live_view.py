"""The live view of a real ``ccpbx serve``: a SIPp call through it shows up in ``ccpbx show ...`` and /metrics.

SIPp 2002 (a UAS registered as an extension) answers; SIPp 2001 calls it and holds the call up for a while,
during which the command line and a Prometheus scrape must see it; after the BYE it must be gone.
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.interop.calls import sipp_uas, uas_result
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, ccpbx
from tests.interop.sipp import run_sipp

TALK_MS = 10_000  # long enough for the checks below (each runs the ccpbx command, ~1 s)
WAIT_S = 10.0


def _show(server: RunningServer, *args: str) -> Any:
    result = ccpbx(server.data_dir, "show", *args, config=server.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr + server.log[-3000:]
    return json.loads(result.stdout) if "--json" in args else result.stdout


def _wait_for(what: str, check: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.2)


def _metrics(server: RunningServer) -> dict[str, float]:
    state = json.loads((server.data_dir / "admin.json").read_text())
    token = (server.data_dir / "admin.token").read_text().strip()
    request = urllib.request.Request(state["url"] + "/metrics", headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        text = response.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True) if s.labels else s.name: s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_live_call_in_show_and_metrics(server: RunningServer, sipp: str, tmp_path: Path) -> None:
    assert (server.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    with sipp_uas(sipp, "uas_answer", server, tmp_path / "uas", "2002", USERS["2002"], timeout_s=40) as uas, \
            ThreadPoolExecutor(1) as pool:
        caller = pool.submit(run_sipp, sipp, "uac_call", server.host, server.port, tmp_path / "uac",
                             [["2001", USERS["2001"], "1000"]], timeout_s=40, extra=["-s", "2002", "-d", str(TALK_MS)])
        calls = _wait_for("an answered call", lambda: [c for c in _show(server, "calls", "--json")
                                                       if c["state"] == "answered"])
        assert len(calls) == 1, calls
        call = calls[0]
        assert (call["caller"], call["dialled"], call["destination"]) == ("2001", "2002", "extension:2002")
        assert [(leg["role"], leg["peer"], leg["state"]) for leg in call["legs"]] == [
            ("caller", "2001", "confirmed"), ("callee", "extension:2002", "confirmed")]
        assert all(leg["codec"] == "PCMU" and leg["sip_call_id"] and leg["rtp"] is not None for leg in call["legs"])

        table = _show(server, "calls")
        row = next(line for line in table.splitlines() if line.startswith(call["id"][:8]))
        assert row.split()[1:5] == ["2001", "2002", "extension:2002", "answered"], table

        registrations = _show(server, "registrations")
        assert any(line.split()[0] == "2002" for line in registrations.splitlines()[1:]), registrations

        devices = {line.split()[0]: line.split()[1:] for line in _show(server, "devices").splitlines()[1:]}
        assert devices["2002"] == ["in_use", "1"], devices
        assert devices["2001"] == ["in_use", "1"], devices  # calling from an unregistered phone: in a call
        assert devices["alice"] == ["unavailable", "0"], devices

        metrics = _metrics(server)
        assert metrics["ccpbx_calls_active"] == 1
        assert metrics["ccpbx_calls_total"] == 1
        assert metrics["ccpbx_registrations"] == 1
        assert metrics['ccpbx_sip_requests_total{"method": "INVITE"}'] >= 2  # challenged, then with credentials
        assert metrics["ccpbx_rtp_channels"] == 2
        assert metrics['ccpbx_media_tick_seconds_bucket{"le": "+Inf"}'] > 0
        assert metrics["ccpbx_gc_pacer_running"] == 1  # `ccpbx serve` paces young collections by time

        result = caller.result(timeout=60)
        assert result.returncode == 0, result.explain() + server.log[-3000:]
    code, text = uas_result(uas, tmp_path / "uas", "uas_answer")
    assert code == 0, text + server.log[-3000:]

    def no_calls() -> bool:
        result = ccpbx(server.data_dir, "show", "calls", config=server.config, check=False)
        return result.returncode == 0 and result.stdout == "" and "no active calls" in result.stderr

    _wait_for("no active calls", no_calls)
    assert _show(server, "calls", "--json") == []
    metrics = _metrics(server)
    assert (metrics["ccpbx_calls_active"], metrics['ccpbx_calls_ended_total{"outcome": "answered"}']) == (0, 1)
    devices = _show(server, "devices", "--json")
    assert {d["extension"]: d["state"] for d in devices}["2002"] == "idle"

    assert server.stop() == 0
    assert not (server.data_dir / "admin.json").exists() and not (server.data_dir / "admin.token").exists()
    result = ccpbx(server.data_dir, "show", "calls", config=server.config, check=False)
    assert result.returncode == 1
    assert "admin.json missing" in result.stderr
