"""The ports we give SIPp (-p, -mp): room for the sockets SIPp binds there, another try when one was taken."""

from __future__ import annotations

import resource
import socket
import subprocess
from pathlib import Path

import pytest

from tests.interop.sipp import free_media_port, free_port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _sipp_starts(sipp: str, media_port: int, work: Path) -> str:
    """Run a one-call SIPp caller against a port where nothing answers; its output (it fails either way)."""
    dead = free_port()
    proc = subprocess.run([sipp, f"127.0.0.1:{dead}", "-sn", "uac", "-m", "1", "-i", "127.0.0.1",
                           "-p", str(free_port()), "-mp", str(media_port), "-nostdin", "-timeout", "2s",
                           "-timeout_error"],
                          capture_output=True, text=True, timeout=30, cwd=work)
    return proc.stdout + proc.stderr


def test_sipp_cannot_start_when_the_port_two_above_its_media_port_is_taken(sipp: str, tmp_path: Path) -> None:
    """Why free_port() is not enough for -mp: SIPp binds the video socket on P + 2 and gives up when it cannot."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1] - 2
        assert "Unable to bind video RTP socket" in _sipp_starts(sipp, port, tmp_path)


def test_free_media_port_leaves_both_of_sipps_sockets_free(sipp: str, tmp_path: Path) -> None:
    # Many bound sockets around, as a benchmark's RTP generator holds: the neighbours of a port are often taken.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2_500  # Debian's default soft limit is 1,024 descriptors
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    held = []
    try:
        for _ in range(min(2_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        ports = [free_media_port() for _ in range(50)]
        assert all(_bindable(p) and _bindable(p + 2) for p in ports)
        assert "Unable to bind" not in _sipp_starts(sipp, ports[0], tmp_path)
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_sipp_run_that_lost_its_port_runs_again_on_another(sipp: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port() can only say a port *was* free; CI once saw another process bind it before SIPp did ("Unable to
    bind main socket"), which failed a test that had nothing to do with it. run_sipp runs SIPp again on a new port."""
    import tests.interop.sipp as sipp_helpers

    given: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))

        def first_a_taken_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
            port = int(taken.getsockname()[1]) if not given else free_port(host, kind)
            given.append(port)
            return port

        monkeypatch.setattr(sipp_helpers, "free_port", first_a_taken_port)
        # Nothing answers there: the run fails by its timeout either way, but only once SIPp had a port.
        result = sipp_helpers.run_sipp(sipp, "reg_ok", "127.0.0.1", free_port(), tmp_path,
                                       [["alice", "secret", "60"]], timeout_s=1)
    assert len(given) == 2 and given[0] != given[1]
    assert not result.lost_its_port(), result.explain()
    assert sipp_helpers.UNBOUND not in result.output + result.errors


def test_the_benchmarks_callee_is_only_taken_as_started_once_it_holds_its_port(sipp: str, tmp_path: Path) -> None:
    from benchmarks.ladder import SCENARIOS, _listening, stop_proc

    def callee(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sipp, "-sf", str(SCENARIOS / "bench_uas.xml"), "-i", "127.0.0.1", "-p", str(port),
                                 "-mp", str(free_media_port()), "-nostdin", "-timeout", "20s"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        lost = callee(taken.getsockname()[1])
        try:
            assert not _listening(lost, taken.getsockname()[1])  # bound by us, not by SIPp: SIPp exits
        finally:
            stop_proc(lost)
    port = free_port()
    started = callee(port)
    try:
        assert _listening(started, port)
    finally:
        stop_proc(started)
