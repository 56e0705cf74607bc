"""Running SIPp scenarios against a server: one bounded subprocess per scenario."""

from __future__ import annotations

import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"
UNBOUND = "Unable to bind main socket"  # SIPp's words when its -p port is taken
BIND_ATTEMPTS = 3  # a SIPp run that lost its port to another process is run again on another one


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_media_port(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port P for SIPp's ``-mp P``: SIPp binds its audio socket on P and its video socket on P + 2 and exits at
    once when either is taken ("Unable to bind video RTP socket"), so both must be free. With a thousand sockets
    bound in the ephemeral range (a benchmark's RTP generator), P + 2 alone was taken often enough that a whole
    benchmark point had no calls."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_DGRAM) as audio:
            audio.bind((host, 0))
            port = int(audio.getsockname()[1])
            if port > 65533:
                continue
            with socket.socket(family, socket.SOCK_DGRAM) as video:
                try:
                    video.bind((host, port + 2))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no UDP port P with P + 2 also free on {host} in {attempts} tries")


def free_port_both(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port P free for UDP and TCP, with P + 1 free for TCP: a SIP listener that binds all of them, as
    baresip's ``sip_listen P`` does (UDP and TCP on P, TLS on P + 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(family, socket.SOCK_STREAM) as tcp, \
                    socket.socket(family, socket.SOCK_STREAM) as tls:
                try:
                    tcp.bind((host, port))
                    tls.bind((host, port + 1))
                except OSError:
                    continue  # taken: another port
                return port
    raise RuntimeError(f"no port free for UDP and TCP (and TCP + 1) on {host} in {attempts} tries")


@dataclass
class SippResult:
    returncode: int
    output: str
    errors: str

    def lost_its_port(self) -> bool:
        """SIPp exited before sending anything because the port it was given was taken in the meantime (free_port
        can only say a port *was* free: another process may bind it before SIPp does)."""
        return self.returncode != 0 and UNBOUND in self.errors + self.output

    def explain(self) -> str:
        return (f"sipp exited {self.returncode}\n--- errors ---\n{self.errors[-3000:]}\n"
                f"--- output ---\n{self.output[-2000:]}")


def run_sipp(sipp: str, scenario: str, host: str, port: int, work: Path, rows: list[list[str]], *,
             transport: str = "u1", calls: int = 1, rate: float = 10.0, timeout_s: int = 30,
             extra: list[str] | None = None, local_ip: str | None = None) -> SippResult:
    """Run ``scenario`` (a file in scenarios/) as UAC; ``rows`` feed [field0]… (one row per call, in order).

    Rows are ``[user, password, expires]``; field1 becomes SIPp's ``[authentication …]`` keyword, which SIPp
    expands only when it stands in the injection file, not nested in a scenario line. ``local_ip``: the address
    SIPp binds (another loopback address such as 127.0.0.2 is another source as the server sees it).
    """
    work.mkdir(parents=True, exist_ok=True)
    inf = work / f"{scenario}.csv"
    lines = [[r[0], f"[authentication username={r[0]} password={r[1]}]", *r[2:]] for r in rows]
    inf.write_text("SEQUENTIAL\n" + "".join(";".join(r) + "\n" for r in lines))
    err = work / f"{scenario}.errors.log"
    local = (local_ip or ("::1" if ":" in host else host)).strip("[]")
    kind = socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for _ in range(BIND_ATTEMPTS):
        err.unlink(missing_ok=True)
        cmd = [sipp, target, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-inf", str(inf), "-m", str(calls),
               "-r", str(rate), "-l", "200", "-t", transport, "-i", local,
               "-p", str(free_port(local, kind)),
               "-timeout", f"{timeout_s}s", "-timeout_error", "-max_recv_loops", "1000", "-nostdin",
               "-trace_err", "-error_file", str(err), *(extra or [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, cwd=work)
        errors = err.read_text(errors="replace") if err.exists() else ""
        result = SippResult(proc.returncode, proc.stdout + proc.stderr, errors)
        if not result.lost_its_port():
            break
    return result


def start_sipp_uas(sipp: str, scenario: str, work: Path, port: int, *, calls: int = 1, timeout_s: int = 30,
                   extra: list[str] | None = None) -> subprocess.Popen[str]:
    """SIPp as a UAS running ``scenario`` on 127.0.0.1:``port`` (its errors in ``<scenario>.uas.errors.log``)."""
    work.mkdir(parents=True, exist_ok=True)
    err = work / f"{scenario}.uas.errors.log"
    cmd = [sipp, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1", "-p", str(port), "-m", str(calls),
           "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(err),
           "-mp", str(free_media_port()), *(extra or [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)


def stop_process(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for ``proc`` to end, then kill it; never leaves it running."""
    if proc.poll() is None:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def write_rfc4733_pcap(path: Path, digits: str, *, payload_type: int = 101, lead_ms: int = 500,
                       tone_ms: int = 160, gap_ms: int = 200) -> None:
    """A pcap of RTP telephone-events (RFC 4733) pressing ``digits``, for SIPp's ``play_pcap_audio``.

    Each key: an event packet every 20 ms (marker on the first, one timestamp, a growing duration), then
    three end packets, then ``gap_ms`` of nothing. SIPp rewrites addresses and ports when it replays.
    (SIPp 3.6's own ``play_dtmf`` sends events with a zero payload, which no receiver can read.)
    """
    codes = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
    packets: list[tuple[float, bytes]] = []
    seq, t_ms, ssrc = 1000, lead_ms, 0x4733AB01
    for digit in digits:
        event = codes[digit]
        stamp = t_ms * 8
        steps = tone_ms // 20
        for i in range(steps + 3):
            end = i >= steps
            duration = min(i + 1, steps) * 160
            rtp = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0) | payload_type, seq & 0xFFFF, stamp, ssrc)
            rtp += struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
            packets.append(((t_ms + 20 * min(i, steps)) / 1000, rtp))
            seq += 1
        t_ms += tone_ms + gap_ms
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for when, rtp in packets:
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        sec = int(when)
        out += struct.pack("<IIII", sec, int((when - sec) * 1_000_000), len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
