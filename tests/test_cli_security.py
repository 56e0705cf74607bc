"""``ccpbx security bans|ban|unban`` against a real admin API over a real :class:`Bans`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from ccpbx.pbx.admin import AdminServer, write_state
from ccpbx.pbx.bans import BanPolicy, Bans, FailureKind
from tests.pbx.test_admin import FakeLiveView
from tests.test_cli import run


class BanDesk:
    """What ``SipServer`` offers the admin API, over a fixed clock."""

    def __init__(self) -> None:
        self.bans = Bans(BanPolicy(ban_after=2, allow=("10.0.0.0/8",)))
        self.now = 1_000_000

    def ban_list(self) -> Mapping[str, object]:
        return {"bans": [{"ip": b.ip, "reason": b.reason, "failures": b.failures, "until": None,
                          "remaining": b.remaining_ms(self.now) / 1000} for b in self.bans.list(self.now)],
                "dropped_banned": 7, "dropped_rate_limited": 3}

    def unban(self, ip: str) -> bool:
        return self.bans.lift(ip) is not None

    def ban_address(self, ip: str, seconds: float, reason: str = "manual") -> Mapping[str, object] | None:
        ban = self.bans.ban(ip, reason, self.now + int(seconds * 1000), now=self.now)
        return None if ban is None else {"ip": ban.ip}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, BanDesk]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    desk = BanDesk()
    desk.bans.failed(("udp", "198.51.100.66", 5060), FailureKind.WRONG_PASSWORD, desk.now)
    loop = asyncio.new_event_loop()
    admin = AdminServer(FakeLiveView(), token="ban-token", bans=desk)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = asyncio.run_coroutine_threadsafe(admin.start(), loop).result(10)
        write_state(data_dir, url, "ban-token")
        yield data_dir, desk
    finally:
        asyncio.run_coroutine_threadsafe(admin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_ban_list_unban(served: tuple[Path, BanDesk]) -> None:
    data_dir, desk = served
    result = run(["security", "bans"], data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "no address is banned" in result.stdout and "7 packets from banned addresses" in result.stdout
    assert run(["security", "ban", "198.51.100.66", "--time", "90"], data_dir=data_dir).exit_code == 0
    result = run(["security", "bans"], data_dir=data_dir)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "REASON", "FAILURES", "UNTIL", "LEFT"]
    assert lines[1].split() == ["198.51.100.66", "manual", "-", "-", "0:01:30"]
    answer = json.loads(run(["security", "bans", "--json"], data_dir=data_dir).stdout)
    assert [b["ip"] for b in answer["bans"]] == ["198.51.100.66"]
    result = run(["security", "unban", "198.51.100.66"], data_dir=data_dir)
    assert result.exit_code == 0 and "unbanned" in result.stdout
    assert not desk.bans.banned("198.51.100.66", desk.now)
    assert desk.bans.failures("198.51.100.66", desk.now) == 0  # lifting forgets the failures
    result = run(["security", "unban", "198.51.100.66"], data_dir=data_dir)
    assert result.exit_code == 1 and "is not banned" in result.output


def test_bad_and_allowed_addresses_are_refused(served: tuple[Path, BanDesk]) -> None:
    data_dir, _ = served
    result = run(["security", "ban", "not-an-ip"], data_dir=data_dir)
    assert result.exit_code == 1 and "IP address" in result.output
    result = run(["security", "ban", "10.1.2.3"], data_dir=data_dir)
    assert result.exit_code == 1 and "never banned" in result.output


def test_without_a_server(tmp_path: Path) -> None:
    result = run(["security", "bans"], data_dir=tmp_path / "nothing")
    assert result.exit_code == 1 and "Traceback" not in result.output
