"""``ccpbx serve --media-workers``-style servers (``[rtp] workers = 2``): the media path in worker processes, checked
by real phones as the in-process path is, plus what only workers can do — die. A server with the default config
runs one worker per core.

The baresip call and conference tests of ``test_calls_baresip.py`` and ``test_conference_baresip.py`` run here
again, unchanged, against a server whose media runs in two workers: a call's legs open on one worker, and a
conference gathers callers that opened on different workers (they are moved to one). SIPp checks a plain call
and its CDR. Then a worker is killed with SIGKILL in the middle of a call: both phones must get a BYE, the CDR
must say ``media_worker_lost``, and the server must start a new worker that carries the next call.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccpbx.media.workers import usable_cores
from ccpbx.pbx.config import AUTO_MEDIA_WORKERS_MAX
from tests.interop import test_calls_baresip as calls
from tests.interop import test_conference_baresip as conference
from tests.interop.conftest import USERS as SIPP_USERS
from tests.interop.server import RunningServer, serving
from tests.interop.test_calls_baresip import (  # noqa: F401 - collected here again, against this module's pbx
    test_audio_both_ways_and_callee_hangs_up,
    test_blind_transfer_to_a_third_phone,
    test_hold_plays_music_to_the_other_party_and_resume_restores_audio,
    test_rfc4733_digits_reach_the_callee,
)
from tests.interop.test_calls_sipp import _call as sipp_call
from tests.interop.test_conference_baresip import (  # noqa: F401
    test_a_caller_blind_transferred_into_the_room_meets_the_next_member,
    test_three_phones_in_a_room_hear_each_other_and_a_fourth_is_refused,
)

WORKERS = 2

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    rtp_min = random.randrange(calls.RTP_RANGE_LO, calls.RTP_RANGE_HI, 2)
    config = (f"[rtp]\nport_min = {rtp_min}\nport_max = {rtp_min + calls.RTP_RANGE_PORTS}\nworkers = {WORKERS}\n\n"
              f'[[conference]]\nname = "{conference.ROOM}"\nnumber = "{conference.ROOM_NUMBER}"\n'
              "max_members = 3\n")
    users = {**calls.EXTENSIONS, **conference.EXTENSIONS, **SIPP_USERS}
    with serving(tmp_path_factory.mktemp("pbx-workers") / "data", extensions=users, config_text=config) as srv:
        yield srv


def worker_pids(server: RunningServer) -> set[int]:
    """The media workers of ``server`` (its children running ``ccpbx.media.worker``)."""
    pids = set()
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ccpbx.media.worker" in cmdline:
            pids.add(pid)
    return pids


def wait_for(predicate, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_server_runs_its_media_in_workers(pbx: RunningServer) -> None:
    assert len(worker_pids(pbx)) == WORKERS


def test_a_default_server_runs_one_media_worker_per_core(server: RunningServer) -> None:
    """``[rtp] workers = "auto"`` (the default): one worker per core the server may use, at most eight."""
    expected = min(usable_cores(), AUTO_MEDIA_WORKERS_MAX)
    assert len(worker_pids(server)) == expected
    assert f"ccpbx: media in {expected} worker process{'es' if expected > 1 else ''}" in server.stdout_lines


def test_a_sipp_call_through_workers_and_its_cdr(pbx: RunningServer, sipp: str, tmp_path: Path) -> None:
    sipp_call(sipp, pbx, tmp_path, "uac_call", "uas_answer", pause_ms=1000)
    with sqlite3.connect(pbx.data_dir / "ccpbx.sqlite3") as db:
        rows = wait_for(lambda: db.execute(
            "SELECT disposition FROM cdrs WHERE caller = '2001' AND \"end\" IS NOT NULL").fetchall(), "the CDR")
    assert rows[-1][0] == "answered"


def test_a_killed_worker_ends_its_calls_with_bye_and_cdr_and_is_replaced(
        baresip: str, pbx: RunningServer, tmp_path: Path) -> None:
    before = worker_pids(pbx)
    with calls.phone(baresip, pbx, tmp_path, "1001", calls.TONE_A_HZ) as a, \
            calls.phone(baresip, pbx, tmp_path, "1002", calls.TONE_B_HZ, auto_answer=True) as b:
        call_id = calls.dial(a, b, pbx, "1002")
        a.drain(calls.LISTEN_S + 0.5)
        calls.assert_hears(a.received_audio()[calls.SETTLE_SAMPLES:], calls.TONE_B_HZ, "A hears B")
        for pid in before:  # one of them runs the call: kill both, so it is certainly gone
            os.kill(pid, signal.SIGKILL)
        a.wait_event("CALL_CLOSED", timeout=10)  # a BYE, not dead air
        b.wait_event("CALL_CLOSED", timeout=10)
    rows = calls.call_cdrs(pbx, call_id, 1)
    assert rows[0]["end_reason"] == "media_worker_lost", rows
    assert rows[0]["disposition"] == "answered", rows
    after = wait_for(lambda: (p := worker_pids(pbx)) and len(p) == WORKERS and not p & before and p,
                     "new workers")
    assert len(after) == WORKERS
    pbx.wait_for_log("call.media.lost")
    pbx.wait_for_log("media.worker.died")
    # the new workers carry the next call, both ways
    calls.two_way_call_then_hangup(baresip, pbx, tmp_path / "after", callee_hangs_up=False)
