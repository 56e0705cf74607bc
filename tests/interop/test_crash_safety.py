"""``kill -9`` under call load: nothing the server committed or acknowledged is lost.

A real ``ccpbx serve`` carries SIPp calls (to an extension, and through an ACD queue) while more load runs;
a phone registers; the test snapshots what another reader sees committed in SQLite — finished CDRs, queue-log
rows, bindings — and kills the server with SIGKILL at once. After a restart on the same data directory:
every snapshotted CDR and queue-log row is there unchanged, calls cut by the crash are closed as incomplete
(none is left open), the registration that got its 200 just before the kill is there (a REGISTER is answered
only after its binding is committed), and the extension registered before the crash is reachable without
registering again.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.interop.calls import sipp_uas
from tests.interop.conftest import USERS
from tests.interop.server import RunningServer, start_server
from tests.interop.sipp import SCENARIOS, free_port, run_sipp

CONFIG = """
[[queue]]
name = "support"
number = "500"
members = ["2002"]
ring_timeout = 5
wrap_up = 0
announce_position = false
"""
USERS3 = {**USERS, "2003": "secret-2003-pw"}


def _query(data: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(data / "ccpbx.sqlite3") as db:  # another reader: it sees only what is committed
        return [tuple(r) for r in db.execute(sql)]


def _background_load(sipp: str, server: RunningServer, work: Path) -> subprocess.Popen[str]:
    """Calls from 2001 to 2002 at 20/s, each held 1 s, until the test kills it."""
    work.mkdir(parents=True, exist_ok=True)
    inf = work / "load.csv"
    inf.write_text(f"SEQUENTIAL\n2001;[authentication username=2001 password={USERS['2001']}];0\n")
    cmd = [sipp, f"{server.host}:{server.port}", "-sf", str(SCENARIOS / "uac_call.xml"), "-inf", str(inf),
           "-m", "2000", "-r", "20", "-s", "2002", "-d", "1000", "-i", "127.0.0.1", "-p", str(free_port()),
           "-timeout", "60s", "-nostdin"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=work)


def test_kill_9_under_load_loses_nothing_committed_or_acknowledged(sipp: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, config_text=CONFIG, extensions=USERS3)
    load: subprocess.Popen[str] | None = None
    spare = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where 2003's Contact points
    spare.bind(("127.0.0.1", 0))
    try:
        with sipp_uas(sipp, "uas_answer", server, tmp_path / "uas", "2002", USERS["2002"], calls=5000,
                      timeout_s=60) as uas:
            rows = [["2001", USERS["2001"]]] * 30
            direct = run_sipp(sipp, "uac_call", server.host, server.port, tmp_path / "direct", rows, calls=30,
                              rate=20, extra=["-s", "2002", "-d", "200"])
            assert direct.returncode == 0, direct.explain()
            queued = run_sipp(sipp, "uac_call", server.host, server.port, tmp_path / "queued", rows[:10],
                              calls=10, rate=5, extra=["-s", "500", "-d", "200"])
            assert queued.returncode == 0, queued.explain()
            load = _background_load(sipp, server, tmp_path / "load")
            time.sleep(1.5)  # under load: calls ringing, answered and ending
            reg = run_sipp(sipp, "reg_contact", server.host, server.port, tmp_path / "reg2003",
                           [["2003", USERS3["2003"], "300", str(spare.getsockname()[1])]])
            assert reg.returncode == 0, reg.explain()  # its 200 OK arrived: acknowledged
            cdrs = _query(data, 'SELECT call_id, "end", disposition FROM cdrs WHERE "end" IS NOT NULL')
            queue_log = _query(data, "SELECT * FROM queue_log")
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            load.kill()
            load.wait(10)
            load = None
            assert len(cdrs) >= 40 and queue_log, (len(cdrs), len(queue_log))

            restarted = start_server(data, config_text=CONFIG, extensions=USERS3)
            try:
                restarted.wait_for_log(r"cdr\.incomplete\.closed|sip\.server\.started")
                after = {row[0]: row for row in _query(data, 'SELECT call_id, "end", disposition FROM cdrs')}
                lost = [row for row in cdrs if after.get(row[0]) != row]
                assert not lost, f"{len(lost)} committed CDRs lost or changed, e.g. {lost[:3]}"
                assert not _query(data, 'SELECT call_id FROM cdrs WHERE "end" IS NULL')  # crash-cut: closed
                assert sum(1 for row in after.values() if row[2] == "answered") >= 40
                assert set(queue_log) <= set(_query(data, "SELECT * FROM queue_log"))
                assert _query(data, "SELECT aor FROM bindings WHERE aor = '2003'")  # acknowledged just before
                # 2002 registered before the crash: reachable without registering again
                after_call = run_sipp(sipp, "uac_call", restarted.host, restarted.port, tmp_path / "after",
                                      [["2001", USERS["2001"]]], extra=["-s", "2002", "-d", "200"])
                assert after_call.returncode == 0, after_call.explain() + restarted.log[-3000:]
            finally:
                restarted.stop()
            uas.kill()
    finally:
        spare.close()
        if load is not None:
            load.kill()
            load.wait(10)
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
