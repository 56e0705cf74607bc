"""The benchmarks' pure helpers (benchmarks/measure.py): SIPp's stat and response-time files, percentiles, /proc
parsing, the exact RTP payload and its tally, and the ladder's figures. No timing here: figures belong in
benchmarks/."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from benchmarks.measure import (
    PAYLOAD_BYTES,
    Step,
    StreamTally,
    completion_rate,
    descendants,
    histogram_buckets,
    keep_climbing,
    ladder_figures,
    make_payload,
    parse_proc_stat,
    parse_sipp_rtt,
    parse_sipp_stat,
    parse_udp_drops,
    percentile,
    python_build,
    quantile_bound_between,
    read_payload,
    sipp_counts,
    stop_forked,
    tree_cpu_s,
)

STAT = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(C);TotalCallCreated;SuccessfulCall(C);FailedCall(C);"
    "FailedUnexpectedMessage(C);FailedTimeoutOnRecv(C);FailedMaxUDPRetrans(C);DeadCallMsgs(C);Retransmissions(C);\n"
    "2026-12-04\t18:29:53.378373\t1796408993.378373;x;y;00:00:01;200;150;0;0;0;0;0;3;\n"
    "2026-12-04\t18:29:55.385550\t1796408995.385550;x;y;00:00:02;400;395;5;2;1;2;4;17;\n"
)


def test_sipp_stat_last_row_counts() -> None:
    counts = sipp_counts(parse_sipp_stat(STAT))
    assert (counts.created, counts.successful, counts.failed) == (400, 395, 5)
    assert (counts.retransmissions, counts.unexpected, counts.timeouts, counts.dead_call_msgs) == (17, 2, 3, 4)


def test_sipp_stat_empty_or_header_only() -> None:
    assert parse_sipp_stat("") == {}
    assert parse_sipp_stat(STAT.splitlines()[0]) == {}
    assert sipp_counts({}).successful == 0


def test_sipp_rtt_pairs_of_one_counter() -> None:
    text = "Date_ms;response_time_ms;rtd_no\n12.001;4;1\n16;0;2\n20.5;8;1\nbroken\n"
    assert parse_sipp_rtt(text) == [(12.001, 4.0), (20.5, 8.0)]
    assert parse_sipp_rtt(text, rtd=2) == [(16.0, 0.0)]


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_completion_rate() -> None:
    assert completion_rate([0.0, 500.0, 1000.0]) == pytest.approx(2.0)
    assert completion_rate([5.0]) == 0.0
    assert completion_rate([5.0, 5.0]) == 0.0


def test_proc_stat_with_a_parenthesised_name() -> None:
    fields = " ".join(str(n) for n in range(3, 30))  # field 3 is the state; 4 ppid, 14 utime, 15 stime
    ppid, utime, stime = parse_proc_stat(f"1234 (a (weird) name) {fields}")
    assert (ppid, utime, stime) == (4, 14, 15)


def test_descendants_and_own_cpu() -> None:
    parents = {2: 1, 3: 2, 4: 1, 5: 9}
    assert descendants(1, parents) == {1, 2, 3, 4}
    assert descendants(5, parents) == {5}
    assert tree_cpu_s(os.getpid()) > 0


def test_payload_round_trip_and_alphabet() -> None:
    p = make_payload(7, 123_456)
    assert len(p) == PAYLOAD_BYTES
    assert set(p) <= set(range(0x20, 0x30))  # loud mu-law codes, never 0x7F/0xFF: survive a decode+encode
    assert read_payload(p) == (7, 123_456)
    assert make_payload(7, 1) != make_payload(8, 1) != make_payload(7, 2)


def test_payload_rejects_silence_corruption_and_truncation() -> None:
    assert read_payload(b"\xff" * PAYLOAD_BYTES) is None
    p = bytearray(make_payload(1, 2))
    p[100] = 0x20 + ((p[100] - 0x20) ^ 1)  # a valid code, the wrong one: the CRC catches it
    assert read_payload(bytes(p)) is None
    assert read_payload(make_payload(1, 2)[:-1]) is None
    p = bytearray(make_payload(1, 2))
    p[0] = 0x7F
    assert read_payload(bytes(p)) is None


def test_tally_counts_distinct_valid_packets_only() -> None:
    t = StreamTally()
    for seq in (0, 1, 1, 2, 4):  # 1 repeated (a frame the server repeated), 3 lost
        t.add(seq, arrival_s=seq * 0.02)
    t.add(None, arrival_s=0.1)  # silence or another call's packet
    assert (len(t.seen), t.duplicates, t.invalid) == (4, 1, 1)
    assert t.received_in(0, 4) == 4
    assert t.received_in(1, 3) == 2
    assert t.jitter == pytest.approx(0.0)  # every packet exactly on time


def test_tally_jitter_grows_with_irregular_arrivals() -> None:
    t = StreamTally()
    for seq in range(50):
        t.add(seq, arrival_s=seq * 0.02 + (0.01 if seq % 2 else 0.0))
    assert 40 < t.jitter < 80  # 10 ms = 80 samples of |D| each packet, smoothed by 1/16 from 0


def step(offered: float, achieved: float, *, failed: int = 0, p99: float | None = 10.0, retrans: int = 0) -> Step:
    return Step(target="t", offered=offered, attempted=100, completed=100 - failed, failed=failed,
                retransmissions=retrans, achieved=achieved, p50_ms=1.0, p99_ms=p99, cpu_ms_per_op=1.0)


def test_ladder_figures() -> None:
    steps = [step(100, 100), step(200, 199, p99=150.0), step(400, 390, retrans=5), step(800, 500),
             step(1600, 1580, failed=1)]
    figures = ladder_figures(steps)
    assert figures["max_rate_zero_failures"] == 390  # 800 saturated (< 80% of offered), 1600 failed
    assert figures["max_rate_fast"] == 100  # 200: p99 over 100 ms; 400: 5% retransmissions
    assert ladder_figures([]) == {"max_rate_zero_failures": 0.0, "max_rate_fast": 0.0}


def test_keep_climbing_past_the_first_failure() -> None:
    good, bad = step(100, 100), step(100, 100, failed=3)
    assert keep_climbing([])
    assert keep_climbing([good, good])
    assert keep_climbing([good, bad])
    assert keep_climbing([good, bad, bad])
    assert not keep_climbing([good, bad, bad, bad])
    assert keep_climbing([good, bad, bad, good])  # recovered: it goes on
    assert keep_climbing([bad, good, bad, bad])
    assert not keep_climbing([bad, good, bad, bad, bad])


def test_udp_drops_by_inode() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
        "pointer drops\n"
        "  1: 0100007F:90AA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1506811 2 "
        "0000000000000000 24471\n"
        "  2: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 42 2 "
        "0000000000000000 0\n"
    )
    assert parse_udp_drops(text) == {1506811: 24471, 42: 0}


def test_callers_share_the_users_without_overlap_and_keep_their_ports(tmp_path: object) -> None:
    from pathlib import Path

    from benchmarks.ladder import CALLERS, Target, write_injection

    work = Path(str(tmp_path))
    seen: list[set[str]] = []
    for caller in range(3):
        path = work / f"c{caller}.csv"
        write_injection(path, CALLERS, caller=caller, callers=3)
        users = [line.split(";")[0] for line in path.read_text().splitlines()[1:]]
        assert len(users) == CALLERS and users[0] == f"u{caller:04d}"
        seen.append(set(users))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == {f"u{n:04d}" for n in range(CALLERS)}
    one = work / "one.csv"
    write_injection(one, 3)
    assert [line.split(";")[0] for line in one.read_text().splitlines()[1:]] == ["u0000", "u0001", "u0002"]
    target = Target("t", "127.0.0.1", 5060, 0, lambda: None)
    first = target.callers(2)
    assert len(set(first)) == 2 and target.callers(2) == first and target.callers(3)[:2] == first


def _answers(conn: object) -> None:
    assert conn.recv() == "stop"  # type: ignore[attr-defined]
    conn.send({"ticks": 7})  # type: ignore[attr-defined]


def _dies(conn: object) -> None:
    raise SystemExit(3)


@pytest.mark.parametrize(("target", "expected"), [(_answers, {"ticks": 7}), (_dies, {})])
def test_stop_forked_collects_the_statistics_or_none(target: object, expected: dict[str, int]) -> None:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child,), daemon=True)
    proc.start()
    if target is _dies:
        proc.join(10)
        child.close()
    assert stop_forked(parent, proc) == expected
    assert not proc.is_alive()


def test_rfc3550_jitter_follows_the_rfc_per_stream() -> None:
    from benchmarks.bench_relay import rfc3550_jitter

    # A stream with constant transit has no jitter; one alternating 0 and 16 ms has D = 16 ms at every packet
    # after the first, and J moves 1/16 of the way toward it each time (RFC 3550 §6.4.1, §A.8).
    streams = [0, 1] * 5
    transits = [0.010, 0.0, 0.010, 0.016, 0.010, 0.0, 0.010, 0.016, 0.010, 0.0]
    steady, alternating = rfc3550_jitter(streams, transits)
    assert steady == 0.0
    expected = 0.0
    for _ in range(4):
        expected += (0.016 - expected) / 16.0
    assert abs(alternating - expected) < 1e-12
    assert rfc3550_jitter([], []) == []


def _step(target: str, offered: float, *, failed: int = 0, p99: float = 8.0, cpu: float = 3.0) -> Step:
    return Step(target=target, offered=offered, attempted=100, completed=100 - failed, failed=failed,
                retransmissions=0, achieved=offered, p50_ms=4.0, p99_ms=p99, cpu_ms_per_op=cpu)


def test_calls_rows_compare_with_each_reference_in_the_ladder() -> None:
    from benchmarks.bench_calls import comparison_rows

    steps = {"ccpbx": [_step("ccpbx", 100, cpu=4.0), _step("ccpbx", 200, p99=300.0, cpu=3.5),
                       _step("ccpbx", 300, failed=3)],
             "kamailio": [_step("kamailio", r, cpu=1.0) for r in (100, 200, 300)],
             "asterisk": [_step("asterisk", 100, cpu=3.0), _step("asterisk", 200, cpu=2.8),
                          _step("asterisk", 300, failed=1)]}
    rows = {r["name"]: r for r in comparison_rows("calls.0s_hold", "call", steps)}
    assert rows["calls.0s_hold.max_rate_fast"]["reference"] == "kamailio"
    fast = rows["calls.0s_hold.max_rate_fast vs asterisk"]
    assert (fast["value"], fast["reference_value"], fast["ratio"]) == (100.0, 200.0, 0.5)
    cpu = rows["calls.0s_hold.server_cpu_per_op @ 200/s vs asterisk"]  # the highest rate both served cleanly
    assert (cpu["value"], cpu["reference_value"], cpu["ratio"]) == (3.5, 2.8, 1.25)
    alone = {r["name"] for r in comparison_rows("calls.0s_hold", "call", {"ccpbx": steps["ccpbx"]})}
    assert alone == {"calls.0s_hold.max_rate_zero_failures", "calls.0s_hold.max_rate_fast"}


def test_tree_pss_counts_a_shared_page_once(tmp_path: Path) -> None:
    """Two processes sharing 32 MB (a forked child's untouched copy-on-write pages): their RSS counts it twice,
    the tree's PSS once."""
    import contextlib
    import subprocess
    import sys

    from benchmarks.measure import tree_pids, tree_pss_mb, tree_rss_mb

    script = ("import os, sys, time\nblob = bytearray(32 << 20)\nfor i in range(0, len(blob), 4096): blob[i] = 1\n"
              "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\nprint('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids = tree_pids(proc.pid)
        pss, rss = tree_pss_mb(proc.pid), tree_rss_mb(proc.pid)
        assert len(pids) == 2 and rss > 64 and 32 < pss < rss - 24
    finally:
        for pid in pids | {proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        proc.wait(10)


def test_idle_rows_compare_with_each_reference_measured() -> None:
    from benchmarks.bench_idle import idle_rows

    ours = {"cpu_ms_per_s": 4.0, "pss_mb": 150.0, "rss_mb": 190.0, "processes": 3, "window_s": 30.0}
    rows = {r["name"]: r for r in idle_rows({"ccpbx": ours, "asterisk": {"cpu_ms_per_s": 2.0, "pss_mb": 60.0},
                                             "kamailio": {"cpu_ms_per_s": 0.5, "pss_mb": 300.0}})}
    assert set(rows) == {"idle.cpu_ms_per_s vs asterisk", "idle.pss_mb vs asterisk", "idle.cpu_ms_per_s vs kamailio",
                         "idle.pss_mb vs kamailio"}
    assert rows["idle.cpu_ms_per_s vs asterisk"]["ratio"] == 2.0 and rows["idle.pss_mb vs kamailio"]["ratio"] == 0.5
    quiet = idle_rows({"ccpbx": ours, "kamailio": {"cpu_ms_per_s": 0.0, "pss_mb": 300.0}})
    assert next(r for r in quiet if r["name"].startswith("idle.cpu"))["ratio"] is None  # nothing to divide by
    alone = idle_rows({"ccpbx": ours})
    assert [(r["name"], r["value"], r["reference"]) for r in alone] == [("idle.cpu_ms_per_s", 4.0, None),
                                                                        ("idle.pss_mb", 150.0, None)]
    assert idle_rows({}) == []


def test_asterisk_configuration_and_its_401_scenario() -> None:
    from benchmarks.ladder import CALLEE, PASSWORD, SCENARIOS, USERS, _asterisk_configs

    conf = _asterisk_configs(Path("/tmp/x/etc"), 5099, "/usr/lib/asterisk/modules")
    pjsip = conf["pjsip.conf"]
    assert "bind=127.0.0.1:5099" in pjsip and "direct_media=no" in pjsip
    assert pjsip.count("type=auth") == USERS and pjsip.count(f"password={PASSWORD}") == USERS
    assert f"Dial(PJSIP/{CALLEE})" in conf["extensions.conf"]
    assert "astetcdir => /tmp/x/etc" in conf["asterisk.conf"] and "astlogdir => /tmp/x/log" in conf["asterisk.conf"]
    original = (SCENARIOS / "bench_call.xml").read_text()
    assert original.count('response="407"') == 1  # what start_asterisk rewrites to 401


def test_the_rtp_echo_sends_each_datagram_back_and_asks_for_a_big_buffer(tmp_path: Path) -> None:
    """The concurrency benchmark's echo (SIPp's own reads a socket with the system's default 212 KB buffer and
    dropped bursts): its socket gets the 16 MB asked, or all the system allows; a burst comes back whole; the
    callee's SDP names it."""
    import socket

    from benchmarks.echo import RECEIVE_BUFFER, bind_echo_socket
    from benchmarks.ladder import echo_scenario, start_echo, stop_proc
    from tests.interop.sipp import free_media_port

    probe = bind_echo_socket("127.0.0.1", 0)
    try:
        allowed = int(Path("/proc/sys/net/core/rmem_max").read_text())
        assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(RECEIVE_BUFFER, allowed)
    finally:
        probe.close()
    port = free_media_port()
    echo = start_echo(port)
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        me.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        me.bind(("127.0.0.1", 0))
        me.settimeout(5.0)
        sent = {i.to_bytes(4, "big") + bytes(168) for i in range(500)}
        for packet in sent:
            me.sendto(packet, ("127.0.0.1", port))
        back = set()
        while len(back) < len(sent):
            data, addr = me.recvfrom(2048)
            assert addr == ("127.0.0.1", port)
            back.add(data)
        assert back == sent
    finally:
        me.close()
        stop_proc(echo)
    assert echo.poll() is not None
    text = echo_scenario(tmp_path).read_text()
    assert "m=audio [echo_port] RTP/AVP 0" in text and "[media_port]" not in text


def test_a_fresh_callee_replaces_the_last_ladders_one(sipp: str, tmp_path: Path) -> None:
    """Between ladders each target gets a new SIPp callee (the old one carries the half-done calls of overloaded
    steps): the old process stops, its contact is unregistered, the new one is the only binding of the callee."""
    import sqlite3
    import time

    from benchmarks.ladder import CALLEE, restart_uas, start_ccpbx, start_uas

    target = start_ccpbx(tmp_path / "ccpbx")
    try:
        target.uas = start_uas(target.host, target.port, tmp_path / "uas")
        old = target.uas
        restart_uas(target, tmp_path / "uas-2")
        assert target.uas is not None and target.uas is not old
        assert old.proc.poll() is not None  # stopped
        database = tmp_path / "ccpbx" / "ccpbx-data" / "ccpbx.sqlite3"
        contacts: list[str] = []
        for _ in range(100):  # the registrar commits each change at once when idle; bounded wait
            with sqlite3.connect(database) as db:
                contacts = [row[0] for row in db.execute("SELECT contact FROM bindings WHERE aor = ?", (CALLEE,))]
            if len(contacts) == 1 and f":{target.uas.port}" in contacts[0]:
                break
            time.sleep(0.05)
        assert len(contacts) == 1 and f":{target.uas.port}" in contacts[0], contacts
    finally:
        target.close()


LAG_TEXT = """# HELP ccpbx_loop_lag_seconds lateness
# TYPE ccpbx_loop_lag_seconds histogram
ccpbx_loop_lag_seconds_bucket{{le="0.002"}} {a}
ccpbx_loop_lag_seconds_bucket{{le="0.01"}} {b}
ccpbx_loop_lag_seconds_bucket{{le="0.25"}} {c}
ccpbx_loop_lag_seconds_bucket{{le="+Inf"}} {d}
ccpbx_loop_lag_seconds_count {d}
ccpbx_loop_lag_seconds_sum 1.5
# HELP ccpbx_calls_active calls
# TYPE ccpbx_calls_active gauge
ccpbx_calls_active 3.0
"""


def test_a_steps_loop_lateness_is_the_histograms_growth_between_two_readings() -> None:
    before = histogram_buckets(LAG_TEXT.format(a=90, b=95, c=100, d=100), "ccpbx_loop_lag_seconds")
    assert before == [(0.002, 90.0), (0.01, 95.0), (0.25, 100.0), (float("inf"), 100.0)]
    # during the step: 100 probes more, 97 within 10 ms, 99 within 250 ms, one past every bound
    after = histogram_buckets(LAG_TEXT.format(a=150, b=192, c=199, d=200), "ccpbx_loop_lag_seconds")
    assert quantile_bound_between(before, after, 0.99) == 0.25
    assert quantile_bound_between(before, after, 0.95) == 0.01
    assert quantile_bound_between(before, after, 1.0) == float("inf")
    assert quantile_bound_between([], after, 0.5) == 0.002  # no reading before: everything since the start
    assert quantile_bound_between(before, before, 0.99) is None  # no probe between the readings
    assert quantile_bound_between(before, [], 0.99) is None  # the server did not answer
    assert quantile_bound_between(before[:2], after, 0.99) is None  # unlike buckets
    assert histogram_buckets(LAG_TEXT.format(a=1, b=1, c=1, d=1), "ccpbx_nothing") == []


def test_a_ccpbx_step_reports_its_event_loops_lateness(sipp: str, tmp_path: Path) -> None:
    """The ladder reads ccpbx's /metrics through its admin API before and after a step: a step of real
    registrations gets the p99 bound of the loop's lateness (any bound will do; that it is read is the point)."""
    from benchmarks.ladder import admin_metrics, format_step, run_step, start_ccpbx

    target = start_ccpbx(tmp_path / "ccpbx")
    try:
        assert "ccpbx_loop_lag_seconds_bucket" in admin_metrics(tmp_path / "ccpbx" / "ccpbx-data")
        step = run_step(target, "bench_register", tmp_path / "step", 20, 1.0)
        assert step.completed == step.attempted == 20 and step.failed == 0
        assert step.loop_p99_ms is not None and step.loop_p99_ms > 0
        assert "loop p99 <=" in format_step(step)
        assert step.others_cpu_pct is None  # a step of its own
    finally:
        target.close()
    assert admin_metrics(tmp_path / "nowhere") == ""  # no admin API there: nothing, not an error


def test_a_step_reports_what_the_ladders_other_servers_used_meanwhile(sipp: str, tmp_path: Path) -> None:
    """The servers of a ladder share the cores: a peer still busy during another's step (a backlog of the step
    before) takes CPU from it, which the step must show rather than count against the one measured."""
    import subprocess
    import sys

    from benchmarks.ladder import Target, format_step, run_step, start_ccpbx, stop_proc

    target = start_ccpbx(tmp_path / "ccpbx")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    peers = {name: Target(name, "127.0.0.1", 0, proc.pid, lambda: None)
             for name, proc in (("busy", busy), ("idle", idle))}
    try:
        loaded = run_step(target, "bench_register", tmp_path / "loaded", 20, 1.0, others=[peers["busy"]])
        quiet = run_step(target, "bench_register", tmp_path / "quiet", 20, 1.0, others=[peers["idle"]])
        assert loaded.failed == quiet.failed == 0
        assert loaded.others_cpu_pct is not None and loaded.others_cpu_pct > 30  # a spinning process: most of a core
        assert quiet.others_cpu_pct is not None and quiet.others_cpu_pct < 10
        assert f"others {loaded.others_cpu_pct:.0f}% cpu" in format_step(loaded)
    finally:
        for proc in (busy, idle):
            proc.kill()
            stop_proc(proc)
        target.close()


def test_ccpbx_targets_of_one_ladder_get_rtp_ranges_of_their_own() -> None:
    from benchmarks.ladder import RTP_PORTS, rtp_port_ranges

    assert rtp_port_ranges(1) == [RTP_PORTS]
    assert rtp_port_ranges(2) == ["21000-25999", "26000-30999"]
    three = [tuple(int(p) for p in r.split("-")) for r in rtp_port_ranges(3)]
    assert all(lo % 2 == 0 and hi > lo for lo, hi in three)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(three))  # disjoint, in order
    with pytest.raises(ValueError):
        rtp_port_ranges(5, "21000-21005")


def test_the_interpreter_is_named_with_its_build() -> None:
    # the benchmarks' figures depend on the interpreter's build: each result names the one that ran
    build = python_build()
    assert build["executable"] == os.path.realpath(sys.executable)
    assert build["version"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(build["configure_args"], str) and build["compiler"]
    maps = Path("/proc/self/maps").read_text()
    assert build["shared_libpython"] == ("libpython" in maps)


@pytest.mark.parametrize("bare", [False, True], ids=["media-process", "bare-reference"])
def test_relay_point_carries_packets_through_either_relay(bare: bool) -> None:
    """One small point of ``run.py relay`` end to end on loopback: the media process and the bare Python
    reference each relay every call's packets to the other side, and nothing arrives corrupted or misrouted.
    (How many arrive in time is the benchmark's business, not asserted here.)"""
    from benchmarks.bench_relay import measure_point

    p = measure_point(3, 0.2, 0.4, bare=bare)
    assert p["invalid"] == 0
    assert p["sent"] > 0
    assert 0 < p["received"] <= p["sent"]


def test_relay_verdict_needs_low_loss_a_kept_schedule_and_the_delay_or_jitter_bound() -> None:
    from benchmarks.bench_relay import MAX_DELAY_MS, MAX_JITTER_MS, carried

    ok = {"loss_pct": 0.2, "generator_limited": False, "delay_p99_ms": 5.0, "jitter_p99_ms": 2.0}
    assert carried(ok) == (True, True)
    assert carried({**ok, "loss_pct": 1.0}) == (False, False)
    assert carried({**ok, "generator_limited": True}) == (False, False)
    assert carried({**ok, "delay_p99_ms": MAX_DELAY_MS + 0.1}) == (False, True)
    assert carried({**ok, "jitter_p99_ms": MAX_JITTER_MS}) == (True, False)
    assert carried({**ok, "delay_p99_ms": -1.0, "jitter_p99_ms": -1.0}) == (False, False)  # nothing heard
