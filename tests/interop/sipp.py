"""Running SIPp scenarios against a server: one bounded subprocess per scenario."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SippResult:
    returncode: int
    output: str
    errors: str

    def explain(self) -> str:
        return (f"sipp exited {self.returncode}\n--- errors ---\n{self.errors[-3000:]}\n"
                f"--- output ---\n{self.output[-2000:]}")


def run_sipp(sipp: str, scenario: str, host: str, port: int, work: Path, rows: list[list[str]], *,
             transport: str = "u1", calls: int = 1, rate: float = 10.0, timeout_s: int = 30,
             extra: list[str] | None = None) -> SippResult:
    """Run ``scenario`` (a file in scenarios/) as UAC; ``rows`` feed [field0]… (one row per call, in order).

    Rows are ``[user, password, expires]``; field1 becomes SIPp's ``[authentication …]`` keyword, which SIPp
    expands only when it stands in the injection file, not nested in a scenario line.
    """
    work.mkdir(parents=True, exist_ok=True)
    inf = work / f"{scenario}.csv"
    lines = [[r[0], f"[authentication username={r[0]} password={r[1]}]", *r[2:]] for r in rows]
    inf.write_text("SEQUENTIAL\n" + "".join(";".join(r) + "\n" for r in lines))
    err = work / f"{scenario}.errors.log"
    local = "[::1]" if ":" in host else host
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cmd = [sipp, target, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-inf", str(inf), "-m", str(calls),
           "-r", str(rate), "-l", "200", "-t", transport, "-i", local.strip("[]"),
           "-p", str(free_port(host, socket.SOCK_STREAM if transport.startswith("t") else socket.SOCK_DGRAM)),
           "-timeout", f"{timeout_s}s", "-timeout_error", "-max_recv_loops", "1000", "-nostdin",
           "-trace_err", "-error_file", str(err), *(extra or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, cwd=work)
    errors = err.read_text(errors="replace") if err.exists() else ""
    return SippResult(proc.returncode, proc.stdout + proc.stderr, errors)
