"""``ccpbx trunk list`` against a real admin API serving trunk statuses; ``ccpbx trunk profiles`` from the config."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccpbx.pbx.admin import AdminServer, write_state
from ccpbx.pbx.trunks import TrunkStatus
from tests.pbx.test_admin import FakeLiveView
from tests.test_cli import run

STATUSES = [
    TrunkStatus(name="main", host="sip.provider.example", profile="generic", addresses=("udp:192.0.2.1:5060",),
                registration="registered", registration_detail="200 OK, 600 s", reachability="up", rtt_ms=12,
                inbound=3, outbound=1, max_channels=10, max_inbound=None, max_outbound=None, available=True),
    TrunkStatus(name="pra", host="192.0.2.7", profile="patton-smartnode", addresses=("udp:192.0.2.7:5060",),
                registration="off", registration_detail="", reachability="down", rtt_ms=None, inbound=0,
                outbound=0, max_channels=30, max_inbound=30, max_outbound=20, available=False),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    loop = asyncio.new_event_loop()
    admin = AdminServer(FakeLiveView(), token="trunk-token", trunks=lambda: [s.to_json() for s in STATUSES])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(admin.start(), loop).result(10)
        write_state(data_dir, url, "trunk-token")
        yield data_dir
    finally:
        asyncio.run_coroutine_threadsafe(admin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_trunk_list_table_and_json(served: Path) -> None:
    result = run(["trunk", "list"], data_dir=served)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HOST", "ADDRESSES", "REGISTRATION", "OPTIONS", "IN", "OUT", "MAX",
                                "AVAILABLE"]
    assert lines[1].split() == ["main", "sip.provider.example", "udp:192.0.2.1:5060", "registered", "(200", "OK,",
                                "600", "s)", "up", "12", "ms", "3", "1", "10", "yes"]
    assert lines[2].split() == ["pra", "192.0.2.7", "udp:192.0.2.7:5060", "off", "down", "0/30", "0/20", "30", "no"]
    result = run(["trunk", "list", "--json"], data_dir=served)
    assert json.loads(result.stdout)[0]["registration_detail"] == "200 OK, 600 s"


def test_trunk_list_without_a_server(tmp_path: Path) -> None:
    result = run(["trunk", "list"], data_dir=tmp_path / "nothing")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_trunk_profiles_lists_shipped_and_own(tmp_path: Path) -> None:
    config = tmp_path / "ccpbx.toml"
    config.write_text('[[profile]]\nname = "basement-e1"\ndescription = "Our E1 box"\ndtmf = "info"\n')
    result = run(["--config", str(config), "trunk", "profiles"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"generic", "patton-smartnode", "audiocodes-mediant", "basement-e1"} <= set(rows)
    assert "required" in rows["patton-smartnode"] and "info" in rows["basement-e1"]
