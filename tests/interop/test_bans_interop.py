"""Bans against a real password guesser over loopback: SIPVicious' ``sipvicious_svcrack`` (PyPI ``sipvicious``,
in the test extra) guesses extension 2002's password from 127.0.0.1 while a SIPp phone from 127.0.0.2 keeps
registering and placing calls. The guesser is banned before its 10th guess and within a second; the phone
never notices."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer
from ccpbx.pbx.bans import Ban, FailureKind
from tests.interop.conftest import USERS
from tests.interop.server import in_process, udp_port
from tests.interop.sipp import run_sipp

GUESSER = "127.0.0.1"
PHONE = "127.0.0.2"


def svcrack() -> str:
    beside = Path(sys.executable).parent / "sipvicious_svcrack"
    path = str(beside) if beside.exists() else shutil.which("sipvicious_svcrack")
    if path is None:
        pytest.skip("sipvicious is not installed (pip install -e '.[test]')")
    return path


def watch_failures(pbx: SipServer) -> list[tuple[float, str, Ban | None]]:
    """Every failure the bans count, with the time and the ban it caused."""
    seen: list[tuple[float, str, Ban | None]] = []
    failed = pbx.bans.failed

    def recording(source: tuple[str, str, int], kind: FailureKind, now: int, *, user: str = "") -> Ban | None:
        ban = failed(source, kind, now, user=user)
        seen.append((time.monotonic(), source[1], ban))
        return ban

    pbx.bans.failed = recording  # type: ignore[method-assign]
    return seen


def phone_session(sipp: str, port: int, work: Path, rounds: int) -> list[str]:
    """The good phone: register, dial *78 and *79 (answered by the server, which hangs up), ``rounds`` times;
    the problems, if any."""
    problems = []
    for n in range(rounds):
        for scenario, rows, extra in (("reg_ok", [["2001", USERS["2001"], "120"]], []),
                                      ("uac_answered_then_bye", [["2001", USERS["2001"]]], ["-s", "*78"]),
                                      ("uac_answered_then_bye", [["2001", USERS["2001"]]], ["-s", "*79"])):
            result = run_sipp(sipp, scenario, "127.0.0.1", port, work / f"{n}-{scenario}-{extra}", rows,
                              extra=extra, local_ip=PHONE, timeout_s=20)
            if result.returncode != 0:
                problems.append(result.explain())
    return problems


async def test_svcrack_is_banned_before_its_tenth_guess_while_a_phone_elsewhere_works(tmp_path: Path,
                                                                                     sipp: str) -> None:
    tool = svcrack()
    async with in_process(tmp_path, "", USERS) as pbx:
        port = udp_port(pbx)
        failures = watch_failures(pbx)
        phone = asyncio.create_task(asyncio.to_thread(phone_session, sipp, port, tmp_path / "phone", 3))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        crack = await asyncio.create_subprocess_exec(
            tool, "-u", "2002", "-r", "1-2000", "-b", GUESSER, "-x", GUESSER, "--maximumtime=3",
            f"udp://127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path)
        try:
            output, _ = await asyncio.wait_for(crack.communicate(), 60)
        finally:
            if crack.returncode is None:
                crack.kill()
                await crack.wait()
        text = output.decode(errors="replace")
        problems = await phone
        assert problems == [], "\n\n".join(problems)
        guesses = [f for f in failures if f[1] == GUESSER]
        assert guesses, f"svcrack made no guess:\n{text[-2000:]}"
        banned_at = next(i for i, f in enumerate(guesses) if f[2] is not None)
        ban = guesses[banned_at][2]
        assert ban is not None and ban.reason == "auth-failures"
        assert banned_at + 1 < 10, f"banned only at guess {banned_at + 1}"
        assert len(guesses) == banned_at + 1  # nothing of its was answered (nor counted) afterwards
        to_ban_s = guesses[banned_at][0] - guesses[0][0]
        assert to_ban_s < 1.0
        assert pbx.bans.banned(GUESSER, pbx.now())
        assert "found nothing" in text or "2002" not in text.split("found")[-1]
        assert not pbx.bans.banned(PHONE, pbx.now()) and pbx.bans.failures(PHONE, pbx.now()) == 0
        assert pbx.bans.dropped_banned > 0
        print(f"svcrack: banned at guess {banned_at + 1}, {to_ban_s * 1000:.0f} ms after its first wrong password "
              f"({time.monotonic() - started:.1f} s run); {pbx.bans.dropped_banned} packets dropped afterwards")
