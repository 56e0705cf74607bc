"""Pure helpers the load benchmarks share: SIPp's stat and response-time files, percentiles, process CPU time from
/proc, the exact RTP payload (sequence number and checksum in every packet), RFC 3550 jitter, and the ladder's
figures. Nothing here times anything, so ``tests/benchmarks/test_bench_helpers.py`` tests it all quickly.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import struct
import subprocess
import sys
import sysconfig
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ---- SIPp's files ----------------------------------------------------------------------------------------------


def parse_sipp_stat(text: str) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` file (``;``-separated, a header row first) as {column: value}.

    SIPp writes one row per ``-fd`` period and a last one when it exits; the ``(C)`` columns are cumulative, so
    the last row holds the run's totals. An empty or header-only file gives ``{}``.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(header, values, strict=False))


def stat_int(stat: dict[str, str], column: str) -> int:
    """An integer column of :func:`parse_sipp_stat`'s row (0 when absent or empty)."""
    value = stat.get(column, "").strip()
    try:
        return int(float(value))
    except ValueError:
        return 0


@dataclass
class SippCounts:
    """The totals of one SIPp run that the benchmarks report."""

    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    unexpected: int = 0
    timeouts: int = 0
    dead_call_msgs: int = 0
    out_of_call_msgs: int = 0


def sipp_counts(stat: dict[str, str]) -> SippCounts:
    """The counters of a parsed stat row (see :func:`parse_sipp_stat`)."""
    return SippCounts(
        created=stat_int(stat, "TotalCallCreated"),
        successful=stat_int(stat, "SuccessfulCall(C)"),
        failed=stat_int(stat, "FailedCall(C)"),
        retransmissions=stat_int(stat, "Retransmissions(C)"),
        unexpected=stat_int(stat, "FailedUnexpectedMessage(C)"),
        timeouts=stat_int(stat, "FailedTimeoutOnRecv(C)") + stat_int(stat, "FailedMaxUDPRetrans(C)"),
        dead_call_msgs=stat_int(stat, "DeadCallMsgs(C)"),
        out_of_call_msgs=stat_int(stat, "OutOfCallMsgs(C)"),
    )


def parse_sipp_rtt(text: str, rtd: int = 1) -> list[tuple[float, float]]:
    """``(time_ms, response_time_ms)`` pairs of response-time counter ``rtd`` from a SIPp ``-trace_rtt`` file.

    The file is ``Date_ms;response_time_ms;rtd_no`` with a header row; ``Date_ms`` counts from SIPp's start.
    SIPp's clock ticks in a few milliseconds (about 4 ms here), so the times are that coarse.
    """
    out: list[tuple[float, float]] = []
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) < 3:
            continue
        try:
            when, took, number = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            continue  # the header
        if number == rtd:
            out.append((when, took))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def completion_rate(times_ms: Sequence[float]) -> float:
    """Operations per second from their completion times: ``(n - 1) / (last - first)``; 0.0 below two."""
    if len(times_ms) < 2:
        return 0.0
    span = (max(times_ms) - min(times_ms)) / 1000.0
    return (len(times_ms) - 1) / span if span > 0 else 0.0


# ---- CPU time of a process tree ---------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """``(ppid, utime, stime)`` from the text of ``/proc/PID/stat`` (times in clock ticks).

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself, so the fields are
    counted from the last ``)``.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime field 14, stime field 15.
    return int(rest[1]), int(rest[11]), int(rest[12])


def _proc_table() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, utime + stime ticks)} for every process readable now."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                ppid, utime, stime = parse_proc_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (ppid, utime + stime)
    return table


def descendants(pid: int, parents: dict[int, int]) -> set[int]:
    """``pid`` and every process below it, given {pid: ppid}."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found = {pid}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop_forked(conn: Any, proc: Any) -> dict[str, Any]:
    """Tell a forked benchmark server (a ``multiprocessing`` process and its end of a pipe) to stop: it answers
    with its statistics (``{}`` when it does not within 10 s); the process is joined, or killed when it hangs."""
    stats: dict[str, Any] = {}
    try:
        conn.send("stop")
        if conn.poll(10):
            stats = conn.recv()
    except (OSError, EOFError):  # it died: no statistics
        pass
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    return stats


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (Kamailio's workers, media
    worker processes). A descendant that exited between two readings takes its time with it: read the tree
    while it runs."""
    table = _proc_table()
    tree = descendants(pid, {p: pp for p, (pp, _) in table.items()})
    return sum(table[p][1] for p in tree if p in table) / CLOCK_TICKS


def cpu_snapshot() -> dict[int, int]:
    """{pid: CPU ticks} of every process: two snapshots show what else used the machine in between."""
    return {pid: ticks for pid, (_, ticks) in _proc_table().items()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class LoadWatch:
    """What else used the CPU during a run, sampled every ``period`` seconds by a thread, so a process that
    started and ended within the run (another helper's soak, a test suite) is counted too.

    ``others(exclude, own_markers)`` gives the busiest processes, but those in ``exclude`` (pids) or whose command
    line holds one of ``own_markers``, with their share of one core over the run.
    """

    def __init__(self, period: float = 5.0) -> None:
        import threading

        self.period = period
        self._first = cpu_snapshot()
        self._seen: dict[int, tuple[int, int, str]] = {}  # pid -> (first ticks, last ticks, cmdline)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for pid, ticks in cpu_snapshot().items():
            first, _, cmd = self._seen.get(pid, (self._first.get(pid, 0), 0, ""))
            self._seen[pid] = (first, ticks, cmd or _cmdline(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def others(self, exclude: set[int], own_markers: tuple[str, ...] = (), top: int = 5) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(self.period + 1)
        self._sample()
        seconds = max(time.monotonic() - self._started, 1e-9)
        used = []
        for pid, (first, last, cmd) in self._seen.items():
            if pid in exclude or any(marker in cmd for marker in own_markers):
                continue
            delta = (last - first) / CLOCK_TICKS
            if delta > 0.05 * seconds:
                used.append((delta, pid, cmd))
        return [{"pid": pid, "cpu_pct": round(100.0 * delta / seconds, 1), "cmd": cmd[:160]}
                for delta, pid, cmd in sorted(used, reverse=True)[:top]]


def parse_udp_drops(text: str) -> dict[int, int]:
    """{socket inode: datagrams dropped} from the text of ``/proc/net/udp`` (or udp6): the kernel's count of
    datagrams that found the socket's receive buffer full."""
    out: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 13 and parts[9].isdigit() and parts[-1].isdigit():
            out[int(parts[9])] = int(parts[-1])
    return out


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """The inodes of the sockets the processes ``pids`` hold open (one that has exited holds none)."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            continue
    return inodes


def udp_port_inodes(port: int) -> set[int]:
    """The inodes of the IPv4 UDP sockets bound to ``port``, from ``/proc/net/udp``."""
    path = Path("/proc/net/udp")
    found: set[int] = set()
    for line in (path.read_text() if path.exists() else "").splitlines()[1:]:
        parts = line.split()
        if len(parts) > 9 and parts[9].isdigit() and int(parts[1].rsplit(":", 1)[1], 16) == port:
            found.add(int(parts[9]))
    return found


def udp_drops(pids: Iterable[int]) -> int:
    """Datagrams dropped so far (receive buffer full) at the UDP sockets the processes ``pids`` hold open."""
    inodes = socket_inodes(pids)
    drops = parse_udp_drops(Path("/proc/net/udp").read_text()) if Path("/proc/net/udp").exists() else {}
    return sum(n for inode, n in drops.items() if inode in inodes)


def tree_pids(pid: int) -> set[int]:
    """``pid`` and its live descendants."""
    return descendants(pid, {p: pp for p, (pp, _) in _proc_table().items()})


def bound_udp_sockets(count: int, receive_buffer: int) -> list[socket.socket]:
    """``count`` non-blocking UDP sockets on 127.0.0.1 ephemeral ports, each with ``receive_buffer`` bytes asked."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its live descendants (media workers), in MB (``VmRSS``)."""
    return _tree_kib(pid, "status", "VmRSS:") / 1024.0


def tree_pss_mb(pid: int) -> float:
    """Proportional memory of ``pid`` and its live descendants, in MB (``Pss`` of ``/proc/<pid>/smaps_rollup``):
    each shared page (a library mapped by every process of the tree, Kamailio's shared memory) counted once over
    the processes sharing it, where summing their RSS counts it in each. 0 where smaps_rollup is missing (Linux
    before 4.14) or not readable."""
    return _tree_kib(pid, "smaps_rollup", "Pss:") / 1024.0


def _tree_kib(pid: int, name: str, field: str) -> int:
    """The sum over ``pid``'s tree of the kB figure on the line starting with ``field`` in ``/proc/<p>/<name>``."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/{name}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return total


# ---- exact RTP payload --------------------------------------------------------------------------------------------

PAYLOAD_BYTES = 160  # 20 ms of G.711
PAYLOAD_MAGIC = b"CCPB"
_INFO = struct.Struct("!4sII")  # magic, stream, sequence
_FILLER = PAYLOAD_BYTES // 2 - _INFO.size - 4  # the rest of the 80 information bytes, before the CRC-32
NIBBLE_BASE = 0x20  # each information byte is sent as two codes 0x20 + nibble


_TO_CODES = str.maketrans("0123456789abcdef", "".join(chr(NIBBLE_BASE + i) for i in range(16)))
_FROM_CODES = bytes(ord("0123456789abcdef"[b - NIBBLE_BASE]) if NIBBLE_BASE <= b < NIBBLE_BASE + 16 else ord("g")
                    for b in range(256))  # "g": not a hex digit, so bytes.fromhex refuses any other code
_FILLER_SOURCE = bytes(range(256)) * 2


def make_payload(stream: int, seq: int) -> bytes:
    """A 160-byte G.711 payload that says which stream and which packet it is, with a CRC-32 over both.

    80 information bytes (magic, stream, sequence, filler derived from them, CRC-32) are sent one nibble per byte
    as the mu-law codes 0x20..0x2F: loud, never silence, and unchanged by a mu-law decode and re-encode (only
    0x7F, negative zero, is not), so a server that relays or transcodes PCMU to PCMU hands them back intact.
    Built with C-level string operations: a load generator makes one per packet.
    """
    head = _INFO.pack(PAYLOAD_MAGIC, stream & 0xFFFFFFFF, seq & 0xFFFFFFFF)
    k = (stream * 31 + seq * 17) & 0xFF
    info = head + _FILLER_SOURCE[k : k + _FILLER]
    info += struct.pack("!I", zlib.crc32(info))
    return info.hex().translate(_TO_CODES).encode("latin-1")


def read_payload(payload: bytes) -> tuple[int, int] | None:
    """``(stream, seq)`` of a payload made by :func:`make_payload`; ``None`` when it is anything else (silence,
    a repeated or concealed frame the server made up, a corrupted one)."""
    if len(payload) != PAYLOAD_BYTES:
        return None
    try:
        info = bytes.fromhex(payload.translate(_FROM_CODES).decode("latin-1"))
    except ValueError:
        return None
    body, crc = info[:-4], struct.unpack("!I", info[-4:])[0]
    if zlib.crc32(body) != crc:
        return None
    magic, stream, seq = _INFO.unpack_from(body)
    if magic != PAYLOAD_MAGIC:
        return None
    return stream, seq


@dataclass
class StreamTally:
    """What one receiver saw of one stream: distinct valid packets, duplicates, invalid ones, and the RFC 3550
    §6.4.1 interarrival jitter in samples (8 kHz clock), computed from the sequence number in the payload (so
    the server's header rewriting does not matter)."""

    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    invalid: int = 0
    jitter: float = 0.0
    _last_transit: float | None = None

    def add(self, seq: int | None, arrival_s: float, samples_per_packet: int = 160, clock_hz: int = 8000) -> None:
        if seq is None:
            self.invalid += 1
            return
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        transit = arrival_s * clock_hz - seq * samples_per_packet
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            self.jitter += (d - self.jitter) / 16.0
        self._last_transit = transit

    def received_in(self, first: int, last: int) -> int:
        """Distinct valid sequence numbers within ``first..last`` inclusive."""
        return sum(1 for s in self.seen if first <= s <= last)


# ---- the ladder's figures -----------------------------------------------------------------------------------------

FAST_P99_MS = 100.0
FAST_RETRANS = 0.01
SATURATED = 0.8  # achieved below this fraction of the offered rate: the target could not keep up


@dataclass
class Step:
    """One rate of a ladder against one target."""

    target: str
    offered: float
    attempted: int
    completed: int
    failed: int
    retransmissions: int
    achieved: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_op: float | None
    unexpected: int = 0
    callee_retransmissions: int = 0  # of ``retransmissions``: those of the SIPp callee (calls only)
    callee_failed: int = 0  # of ``failed``: calls the SIPp callee counted as failed
    seconds: float = 0.0
    client_cpu_pct: float | None = None
    note: str = ""
    # ccpbx only: the server's event loop during the step, from its /metrics (ccpbx_loop_lag_seconds): the bound
    # of the histogram bucket that holds the 99th percentile of a 20 ms probe's lateness
    loop_p99_ms: float | None = None
    # the other servers of the ladder during this step, in % of one core (they should be idle: anything they still
    # do takes the shared cores from this target, and its figures suffer for it)
    others_cpu_pct: float | None = None

    @property
    def retrans_ratio(self) -> float:
        return self.retransmissions / self.attempted if self.attempted else 0.0

    @property
    def failure_free(self) -> bool:
        return self.failed == 0 and self.completed == self.attempted and self.attempted > 0

    @property
    def saturated(self) -> bool:
        return self.achieved < SATURATED * self.offered

    @property
    def fast(self) -> bool:
        return (self.failure_free and self.p99_ms is not None and self.p99_ms <= FAST_P99_MS
                and self.retrans_ratio <= FAST_RETRANS)

    @property
    def good(self) -> bool:
        """Failure-free and not saturated: the rate counts towards the figure."""
        return self.failure_free and not self.saturated

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(retrans_ratio=round(self.retrans_ratio, 4), failure_free=self.failure_free, fast=self.fast,
                 saturated=self.saturated)
        return d


Buckets = list[tuple[float, float]]  # a Prometheus histogram: cumulative (upper bound, count), ending with inf


def histogram_buckets(metrics_text: str, name: str) -> Buckets:
    """The ``name`` histogram's cumulative buckets in a Prometheus text exposition (empty when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return sorted((float(s.labels["le"]), s.value) for s in family.samples
                          if s.name == f"{name}_bucket")
    return []


def quantile_bound_between(before: Buckets, after: Buckets, q: float) -> float | None:
    """The smallest bucket bound within which a fraction ``q`` of what the histogram counted between two
    readings falls (``inf`` past the last bound); None with nothing counted between them or unlike buckets."""
    from ccpbx.pbx.loopwatch import quantile_bound

    if not after or len(before) not in (0, len(after)):
        return None
    return quantile_bound([(bound, n - (before[i][1] if before else 0.0)) for i, (bound, n) in enumerate(after)], q)


def ladder_figures(steps: Iterable[Step]) -> dict[str, float]:
    """The two figures of a ladder: the highest achieved rate of a failure-free, unsaturated step, and the highest
    that is also fast (p99 <= 100 ms, retransmissions <= 1% of operations); 0.0 when no step qualifies."""
    steps = list(steps)
    ok = [s.achieved for s in steps if s.good]
    fast = [s.achieved for s in steps if s.good and s.fast]
    return {"max_rate_zero_failures": max(ok, default=0.0), "max_rate_fast": max(fast, default=0.0)}


def keep_climbing(steps: Sequence[Step], after_bad: int = 2) -> bool:
    """Whether a ladder goes on: it stops once its last ``after_bad + 1`` steps were all bad (a failure or
    saturation), so it goes ``after_bad`` steps past where the target breaks, showing that it stays broken (a step
    that recovers starts the count again)."""
    tail = steps[-(after_bad + 1) :]
    return len(tail) < after_bad + 1 or any(s.good for s in tail)


# ---- the machine ----------------------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip()
    return ""


def python_build() -> dict[str, Any]:
    """The interpreter that runs the benchmarks and the servers they start (``sys.executable``): its path, version,
    compiler, configure options, and whether it runs on a shared libpython. A build's options change every
    Python-level figure: on the same box, pyenv's default build of 3.11.7 (shared libpython, no
    ``--enable-optimizations``) ran a call with 11.5% more instructions and 14-21% more CPU than Debian 12's static
    ``/usr/bin/python3`` (3.11.2), which the README's install uses on Debian."""
    shared = False
    try:
        shared = any("libpython" in line for line in Path("/proc/self/maps").read_text().splitlines())
    except OSError:
        pass
    return {
        "executable": os.path.realpath(sys.executable),
        "version": platform.python_version(),
        "compiler": platform.python_compiler(),
        "configure_args": sysconfig.get_config_var("CONFIG_ARGS") or "",
        "shared_libpython": shared,
    }


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, kernel, load and the versions of what the benchmarks drive."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    import numpy as np

    root = Path(__file__).resolve().parent.parent
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_build": python_build(),
        "numpy": np.__version__,
        "load_avg": os.getloadavg(),
        "ccpbx_commit": _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "sipp": _first_line(["sipp", "-v"]),
        "kamailio": _first_line(["kamailio", "-v"]) or _first_line(["/usr/sbin/kamailio", "-v"]),
    }
