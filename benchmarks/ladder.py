"""Rate ladders: SIPp at rising offered rates against ``ccpbx serve`` and Kamailio, alternating in one run.

A *target* is a running server (ccpbx, or Kamailio with its default number of worker processes) with, for calls, a
SIPp callee registered to it. A *step* runs the same SIPp scenario at one offered rate for a few seconds and reads
back what happened: operations completed and failed and SIPp's retransmissions (from its ``-trace_stat`` file),
response times (its ``-trace_rtt`` file: p50/p99 and the completion rate, i.e. the achieved rate), and the server's
CPU time (user + system of its whole process tree from /proc) over the step divided by the operations completed.
The ladder alternates the targets rate by rate and goes on past each one's limit (see
:func:`measure.keep_climbing`), so the reference is pushed to where it breaks too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import (
    Buckets,
    Step,
    completion_rate,
    histogram_buckets,
    keep_climbing,
    parse_sipp_rtt,
    parse_sipp_stat,
    percentile,
    quantile_bound_between,
    sipp_counts,
    socket_inodes,
    tree_cpu_s,
    udp_port_inodes,
)
from tests.interop.sipp import BIND_ATTEMPTS, free_media_port, free_port, run_sipp

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
USERS = 200
PASSWORD = "bench-password-1"
CALLEE = f"u{USERS - 1:04d}"
CALLERS = USERS - 1
REALM = "ccpbx"
CLI = [sys.executable, "-c", "import sys; from ccpbx.cli.main import main; sys.exit(main())"]
SIPP_BUFFER = 4 << 20  # SIPp's socket buffers (its default, 64 KiB, drops datagrams in bursts at a few 1,000/s)
RECV_TIMEOUT_MS = 10_000  # a call waiting this long for a message fails (instead of hanging the step)
LOOP_LAG_METRIC = "ccpbx_loop_lag_seconds"  # ccpbx's event-loop lateness histogram (pbx/loopwatch.py)
# Not ccpbx's default 10000-20000: another ccpbx on the machine (a soak, tests) would collide with this one's ports.
# Several ccpbx targets in one ladder (with and without SIP workers) share it out (rtp_port_ranges): each one's
# pooled and in-use ports were the others' "address already in use" once a step overloaded them.
RTP_PORTS = "21000-31000"

KAMAILIO_CFG = """#!KAMAILIO
# children: Kamailio's default (8 UDP workers per listener); nothing forced.
debug=0
log_stderror=yes
memdbg=5
memlog=5
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="{mpath}"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("auth", "secret", "ccpbx-bench-secret")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (!loose_route() && is_method("ACK") && !t_check_trans()) {{ exit; }}
        t_relay();
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_auth_check("{realm}", "{password}", "0", "0")) {{ auth_challenge("{realm}", "1"); exit; }}
        save("location");
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!pv_auth_check("{realm}", "{password}", "0", "0")) {{ auth_challenge("{realm}", "1"); exit; }}
        consume_credentials();
        record_route();
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


def stop_proc(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: never leaves ``proc`` running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Uas:
    """A SIPp callee answering every call, registered as CALLEE; with ``echo`` its SDP names an RTP echo
    (:mod:`benchmarks.echo`) that sends each packet back."""

    proc: subprocess.Popen[bytes]
    port: int
    media_port: int
    stat: Path
    echo: subprocess.Popen[bytes] | None = None

    def pids(self) -> set[int]:
        """The processes whose sockets take the calls' RTP (for their kernel drop counts)."""
        return {self.proc.pid} | ({self.echo.pid} if self.echo is not None else set())

    def stop(self) -> None:
        stop_proc(self.proc)
        if self.echo is not None:
            stop_proc(self.echo)

    def counts(self) -> tuple[int, int]:
        """SIPp's cumulative retransmissions as the callee (its 200s the server was slow to ACK) and its failed
        calls, from its stat file (written every second)."""
        c = sipp_counts(parse_sipp_stat(_read(self.stat)))
        return c.retransmissions, c.failed


def start_uas(host: str, port: int, work: Path, *, echo: bool = False) -> Uas:
    """A registered SIPp callee; with ``echo``, its answers' SDP names an RTP echo process (see
    :mod:`benchmarks.echo`: SIPp's own ``-rtp_echo`` drops bursts in its small receive buffer)."""
    work.mkdir(parents=True, exist_ok=True)
    sip_port, media_port = free_port(), free_media_port()
    stat = work / "uas.stat.csv"
    scenario = SCENARIOS / "bench_uas.xml"
    extra: list[str] = []
    echo_proc = None
    if echo:
        echo_port = free_media_port()
        echo_proc = start_echo(echo_port)
        scenario = echo_scenario(work)
        extra = ["-key", "echo_port", str(echo_port)]
    for attempt in range(BIND_ATTEMPTS):
        if attempt:
            sip_port, media_port = free_port(), free_media_port()
        cmd = ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(sip_port),
               "-mp", str(media_port), "-nostdin", "-trace_err", "-error_file", str(work / "uas.errors.log"),
               "-trace_stat", "-stf", str(stat), "-fd", "1", "-buff_size", str(SIPP_BUFFER),
               "-max_recv_loops", "1000", "-timeout", "7200s", *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        if _listening(proc, sip_port):
            break
        stop_proc(proc)
    else:
        if echo_proc is not None:
            stop_proc(echo_proc)
        raise RuntimeError(f"the SIPp callee did not start (see {work / 'uas.errors.log'})")
    uas = Uas(proc, sip_port, media_port, stat, echo_proc)
    reg = run_sipp("sipp", "reg_contact", host, port, work / "reg", [[CALLEE, PASSWORD, "3600", str(sip_port)]])
    if reg.returncode != 0:
        uas.stop()
        raise RuntimeError("the SIPp callee could not register: " + reg.explain())
    return uas


def _listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    """Whether ``proc`` came to hold UDP ``port`` (False: it exited first, e.g. because the port was taken between
    free_port and its bind, or it does not hold it after ``timeout``). Read from /proc: a socket on the port that
    is one of ``proc``'s open files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if udp_port_inodes(port) & socket_inodes([proc.pid]):
            return True
        time.sleep(0.02)
    return False


def restart_uas(target: Target, work: Path) -> None:
    """Give ``target`` a fresh callee for the next ladder. The calls an overloaded step left half done (their
    caller gave up before the ACK or BYE) stay with the old SIPp, which keeps waiting for them, unbounded, and
    answers more slowly with each: after the 0 s hold ladder's last steps (thousands of such calls) it added
    seconds to every answer of the 1 s hold ladder's middle steps, whatever the server. The old contact is
    unregistered before the new one registers, so that no call is forked to a callee that is gone."""
    old = target.uas
    if old is None:
        return
    old.stop()
    target.uas = None
    run_sipp("sipp", "reg_contact", target.host, target.port, work / "unreg", [[CALLEE, PASSWORD, "0", str(old.port)]])
    target.uas = start_uas(target.host, target.port, work, echo=old.echo is not None)


def echo_scenario(work: Path) -> Path:
    """``bench_uas.xml`` answering with the echo's port (``-key echo_port``) as its audio port."""
    text = (SCENARIOS / "bench_uas.xml").read_text()
    assert "m=audio [media_port]" in text, "bench_uas.xml changed: update echo_scenario"
    path = work / "bench_uas_echo.xml"
    path.write_text(text.replace("m=audio [media_port]", "m=audio [echo_port]"))
    return path


def start_echo(port: int) -> subprocess.Popen[bytes]:
    """:mod:`benchmarks.echo` on 127.0.0.1:``port``, once it says it is bound."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("echo.py")), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    if not ready or proc.stdout.readline().strip() != b"ready":
        stop_proc(proc)
        raise RuntimeError(f"the RTP echo did not start on port {port}")
    return proc


@dataclass
class Target:
    """A server under test: where to send, whose CPU to count, how to stop it."""

    name: str
    host: str
    port: int
    pid: int
    stop: Callable[[], None]
    log: Callable[[], str] = lambda: ""
    uas: Uas | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metrics: Callable[[], str] | None = None  # ccpbx: its /metrics text, read before and after each step
    caller_ports: list[int] = field(default_factory=list)  # each SIPp caller's own port, kept from step to step
    scenarios: dict[str, Path] = field(default_factory=dict)  # a target's own version of a scenario, by name

    def scenario(self, name: str) -> Path:
        return self.scenarios.get(name, SCENARIOS / f"{name}.xml")

    def callers(self, count: int) -> list[int]:
        """The ports of ``count`` callers: the same phones step after step (a phone keeps its port, and what a
        server learnt of it, e.g. a SIP worker's lease, still holds at the next step)."""
        while len(self.caller_ports) < count:
            self.caller_ports.append(free_port())
        return self.caller_ports[:count]

    def close(self) -> None:
        if self.uas is not None:
            self.uas.stop()
            self.uas = None
        self.stop()


async def _make_users(data: Path) -> None:
    from ccpbx.pbx.store import Store

    store = await Store.open(data / "ccpbx.sqlite3")
    try:
        await store.add_extensions([(f"u{n:04d}", PASSWORD, "") for n in range(USERS)], REALM)
    finally:
        await store.close()


class ServerRejectedError(RuntimeError):
    """``ccpbx serve`` refused the extra arguments it was given (an option this version does not have)."""


def rtp_port_ranges(count: int, ports: str = RTP_PORTS) -> list[str]:
    """``ports`` split into ``count`` disjoint ranges of even width, one per ccpbx target of a ladder."""
    if count <= 1:
        return [ports]
    lo, hi = (int(p) for p in ports.split("-"))
    width = ((hi - lo + 1) // max(1, count)) & ~1
    if width < 4:
        raise ValueError(f"{ports} cannot be shared by {count} servers")
    return [f"{lo + i * width}-{lo + (i + 1) * width - 1}" for i in range(count)]


def start_ccpbx(work: Path, server_args: Sequence[str] = (), config_text: str = "",
                rtp_ports: str = RTP_PORTS) -> Target:
    """``ccpbx serve`` on loopback (a fresh data directory, USERS extensions, the default log level, info, as users
    run it: about six lines a call) with ``server_args`` passed through; :class:`ServerRejectedError` when it
    exits at once with a usage error."""
    data = work / "ccpbx-data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(_make_users(data))
    config = data / "ccpbx.toml"
    config.write_text(config_text)
    log, out = data / "server.log", data / "server.out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("a") as log_file, out.open("w") as out_file:
        proc = subprocess.Popen([*CLI, "--data-dir", str(data), "--config", str(config), "serve", "--host",
                                 "127.0.0.1", "--sip-port", "0", "--rtp-ports", rtp_ports, *server_args],
                                stdout=out_file, stderr=log_file, env=env)
    deadline = time.monotonic() + 30
    port = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:]
            if proc.returncode == 2 or "No such option" in text or "Error: " in text:
                args = " ".join(server_args)
                raise ServerRejectedError(f"ccpbx serve {args} exited {proc.returncode}: {text.strip()}")
            raise RuntimeError(f"ccpbx serve exited {proc.returncode}: {text}")
        lines = out.read_text(errors="replace").splitlines()
        for line in lines:
            m = re.match(r"ccpbx: listening udp (\S+) (\d+)", line)
            if m:
                port = int(m.group(2))
        if "ccpbx: ready" in lines and port:
            return Target("ccpbx", "127.0.0.1", port, proc.pid, lambda: stop_proc(proc),
                          lambda: log.read_text(errors="replace"), info={"args": list(server_args)},
                          metrics=lambda: admin_metrics(data))
        time.sleep(0.05)
    stop_proc(proc)
    raise RuntimeError("ccpbx serve did not become ready in 30 s")


def admin_metrics(data: Path) -> str:
    """``ccpbx serve``'s /metrics text through its admin API (the address and token it wrote in ``data``); ""
    when the API is off or does not answer."""
    try:
        url = json.loads((data / "admin.json").read_text())["url"]
        token = (data / "admin.token").read_text().strip()
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:  # loopback: our own server
            return str(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError, KeyError):
        return ""


def _loop_lag(target: Target) -> Buckets:
    return histogram_buckets(target.metrics(), LOOP_LAG_METRIC) if target.metrics is not None else []


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)


def start_kamailio(work: Path) -> Target:
    """Kamailio as a registrar and stateful proxy (tm, rr, usrloc, auth: INVITE challenged with 407, REGISTER with
    401, as ccpbx does), with its default number of children."""
    kamailio = kamailio_binary()
    if kamailio is None:
        raise RuntimeError("kamailio is not installed")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    candidates = [str(p) for p in Path("/usr/lib").glob("*/kamailio/modules")] + ["/usr/lib/kamailio/modules"]
    mpath = next((p for p in candidates if Path(p).is_dir()), candidates[-1]) + "/"
    cfg = work / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, mpath=mpath, password=PASSWORD, realm=REALM))
    log = work / "kamailio.log"
    proc = subprocess.Popen([kamailio, "-f", str(cfg), "-DD", "-E", "-m", "512", "-M", "32", "-P",
                             str(work / "kamailio.pid"), "-Y", str(work)], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    time.sleep(1.5)
    if proc.poll() is not None:
        raise RuntimeError(f"kamailio exited: {log.read_text()[-2000:]}")
    children = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == proc.pid)
    return Target("kamailio", "127.0.0.1", port, proc.pid, lambda: stop_proc(proc),
                  lambda: log.read_text(errors="replace"),
                  info={"processes": 1 + children, "children_setting": "default (not set in the config)"})


# ---- Asterisk ---------------------------------------------------------------------------------------------------
# Debian 12 ships no Asterisk; `benchmarks/asterisk_root.sh` installs Debian unstable's (22.x) into a directory
# tree (debootstrap) that the ladder runs it from with chroot. A system-wide `asterisk` is used when there is one.
ASTERISK_ROOT = Path(os.environ.get("CCPBX_BENCH_ASTERISK_ROOT", "/opt/asterisk-root"))
ASTERISK_RTP_PORTS = (32000, 39998)  # clear of ccpbx's RTP_PORTS and of the callers' SDP ports (40000 + 2n)


def asterisk_command() -> list[str] | None:
    """How to run Asterisk here: the system's, or the one in ASTERISK_ROOT (through chroot); None when neither."""
    found = shutil.which("asterisk") or shutil.which("asterisk", path="/usr/sbin")
    if found:
        return [found]
    if (ASTERISK_ROOT / "usr/sbin/asterisk").exists() and shutil.which("chroot"):
        return [shutil.which("chroot") or "chroot", str(ASTERISK_ROOT), "/usr/sbin/asterisk"]
    return None


def _asterisk_configs(etc: Path, port: int, moddir: str) -> dict[str, str]:
    """Asterisk's configuration for the benchmark: a B2BUA anchoring media (direct_media=no) between callers and
    the callee, every user with a digest password (PJSIP challenges an INVITE with 401, not 407), its own
    defaults elsewhere (every module it can load with no configuration of its own, CDRs to its CSV file, its
    logger's notices, warnings and errors to a file)."""
    run, log, spool, db = (etc.parent / d for d in ("run", "log", "spool", "db"))
    users = []
    for n in range(USERS):
        user = f"u{n:04d}"
        users.append(f"[{user}](caller)\nauth={user}\naors={user}\n"
                     f"[{user}]\ntype=auth\nauth_type=digest\nusername={user}\npassword={PASSWORD}\n"
                     f"[{user}]\ntype=aor\nmax_contacts=1\nremove_existing=yes\n")
    return {
        "asterisk.conf": (f"[directories]\nastetcdir => {etc}\nastmoddir => {moddir}\n"
                          f"astvarlibdir => /var/lib/asterisk\nastdbdir => {db}\nastkeydir => /var/lib/asterisk\n"
                          f"astdatadir => /usr/share/asterisk\nastagidir => /usr/share/asterisk/agi-bin\n"
                          f"astspooldir => {spool}\nastrundir => {run}\nastlogdir => {log}\n"
                          "astsbindir => /usr/sbin\n[options]\n"),
        "modules.conf": "[modules]\nautoload=yes\n",
        "logger.conf": "[general]\n[logfiles]\nmessages.log => notice,warning,error\n",
        "cdr.conf": "[general]\nenable=yes\n[csv]\nusegmtime=yes\nloguniqueid=yes\nloguserfield=yes\n",
        "rtp.conf": f"[general]\nrtpstart={ASTERISK_RTP_PORTS[0]}\nrtpend={ASTERISK_RTP_PORTS[1]}\n",
        "extensions.conf": f"[bench]\nexten => {CALLEE},1,Dial(PJSIP/{CALLEE})\n same => n,Hangup()\n",
        "pjsip.conf": ("[global]\ntype=global\n"
                       f"[bench-udp]\ntype=transport\nprotocol=udp\nbind=127.0.0.1:{port}\n"
                       "[caller](!)\ntype=endpoint\ncontext=bench\ndisallow=all\nallow=ulaw\ndirect_media=no\n"
                       "media_address=127.0.0.1\nbind_rtp_to_media_address=yes\n" + "".join(users)),
    }


def _asterisk_moddir(root: Path) -> str:
    found = sorted(root.glob("usr/lib/*/asterisk/modules")) + sorted(root.glob("usr/lib/asterisk/modules"))
    return "/" + str(found[0].relative_to(root)) if found else "/usr/lib/asterisk/modules"


def start_asterisk(work: Path) -> Target:
    """Asterisk (PJSIP) as a B2BUA between the SIPp callers and the callee, anchoring media like ccpbx; its
    INVITE challenge is a 401, so its calls run :data:`SCENARIOS`' bench_call with 401 in place of 407."""
    command = asterisk_command()
    if command is None:
        raise RuntimeError("asterisk is not installed (benchmarks/asterisk_root.sh installs one)")
    chrooted = command[0].endswith("chroot")
    # Inside the chroot, Asterisk sees only its own tree: its files live there, under a directory of this run.
    base = (ASTERISK_ROOT / "tmp" if chrooted else work).joinpath(f"ccpbx-bench-asterisk-{os.getpid()}-{free_port()}")
    inside = Path("/") / base.relative_to(ASTERISK_ROOT) if chrooted else base
    for d in ("etc", "run", "log/cdr-csv", "spool", "db"):  # the CDR CSV backend writes log/cdr-csv/Master.csv
        (base / d).mkdir(parents=True, exist_ok=True)
    port = free_port()
    moddir = _asterisk_moddir(ASTERISK_ROOT if chrooted else Path("/"))
    for name, text in _asterisk_configs(inside / "etc", port, moddir).items():
        (base / "etc" / name).write_text(text)
    (work / "bench_call_401").mkdir(parents=True, exist_ok=True)
    scenario = work / "bench_call_401" / "bench_call.xml"  # same name: SIPp names its rtt files after it
    scenario.write_text((SCENARIOS / "bench_call.xml").read_text().replace('response="407"', 'response="401"'))
    conf = str(inside / "etc" / "asterisk.conf")
    out = work / "asterisk.out"
    proc = subprocess.Popen([*command, "-f", "-n", "-C", conf],
                            stdout=out.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        stop_proc(proc)
        shutil.rmtree(base, ignore_errors=True)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop()
            raise RuntimeError(f"asterisk exited {proc.returncode}: {_read(out)[-2000:]}")
        booted = subprocess.run([*command, "-C", conf, "-rx", "core waitfullybooted"], capture_output=True,
                                timeout=30)
        if booted.returncode == 0 and b"fully booted" in booted.stdout:
            break
        time.sleep(0.5)
    else:
        stop()
        raise RuntimeError("asterisk did not boot in 60 s")
    version = subprocess.run([*command, "-V"], capture_output=True, text=True).stdout.strip()
    log_file = base / "log" / "messages.log"
    return Target("asterisk", "127.0.0.1", port, proc.pid, stop,
                  lambda: _read(log_file) + _read(out),
                  info={"version": version, "run_from": " ".join(command), "challenge": "401 (PJSIP)"},
                  scenarios={"bench_call": scenario})


def _ppid(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


# ---- one step ---------------------------------------------------------------------------------------------------


def write_injection(path: Path, count: int, expires: str = "3600", ports: Sequence[int] | None = None, *,
                    caller: int = 0, callers: int = 1) -> None:
    """SIPp's injection file: ``user;[authentication ...];third`` per call, callers cycling over the extensions
    (the callee excluded). ``third`` is ``expires`` for REGISTER, or the SDP port of each call. With ``callers``
    SIPp processes, caller ``caller`` (0-based) cycles over its own share of the extensions only."""
    own = list(range(caller, CALLERS, callers))
    lines = []
    for n in range(count):
        user = f"u{own[n % len(own)]:04d}"
        third = str(ports[n]) if ports is not None else expires
        lines.append(f"{user};[authentication username={user} password={PASSWORD}];{third}\n")
    path.write_text("SEQUENTIAL\n" + "".join(lines))


def sipp_command(target: Target, scenario: str, work: Path, count: int, rate: float, *, limit: int,
                 hold_ms: int = 0, timeout_s: int = 120, extra: Sequence[str] = (),
                 port: int | None = None) -> list[str]:
    return ["sipp", f"{target.host}:{target.port}", "-sf", str(target.scenario(scenario)),
            "-inf", str(work / "inject.csv"), "-m", str(count), "-r", f"{rate:g}", "-l", str(limit),
            "-s", CALLEE, "-d", str(hold_ms), "-i", "127.0.0.1", "-p", str(port or free_port()),
            "-mp", str(free_media_port()),
            "-nostdin", "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1", "-trace_rtt", "-rtt_freq", "1",
            "-trace_err", "-error_file", str(work / "errors.log"), "-recv_timeout", str(RECV_TIMEOUT_MS),
            "-timeout", f"{timeout_s}s", "-max_recv_loops", "1000", "-max_sched_loops", "1000",
            "-buff_size", str(SIPP_BUFFER), *extra]


def run_step(target: Target, scenario: str, work: Path, rate: float, seconds: float, *, hold_ms: int = 0,
             settle_s: float = 0.5, callers: int = 1, others: Sequence[Target] = ()) -> Step:
    """Offer ``rate`` operations/s of ``scenario`` for ``seconds`` to ``target`` and read back the figures;
    ``callers`` SIPp processes share the rate, each from its own port with its own share of the users. The CPU
    that ``others`` (the ladder's other servers) use meanwhile is reported beside it."""
    work.mkdir(parents=True, exist_ok=True)
    count = max(2, int(rate * seconds))
    # Enough calls in flight for the offered rate with a few seconds of slowness; beyond that SIPp holds back new
    # calls, and the achieved rate shows it.
    limit = int(max(200, rate * (hold_ms / 1000 + 3)) / callers)
    timeout_s = int(seconds * 3 + hold_ms / 1000 + RECV_TIMEOUT_MS / 1000 + 30)
    dirs, cmds = [], []
    for caller, port in enumerate(target.callers(callers)):
        share = count // callers + (1 if caller < count % callers else 0)
        cwork = work if callers == 1 else work / f"c{caller}"
        cwork.mkdir(parents=True, exist_ok=True)
        write_injection(cwork / "inject.csv", share, ports=[40000 + 2 * ((n * callers + caller) % 5000)
                                                           for n in range(share)]
                        if scenario == "bench_call" else None, caller=caller, callers=callers)
        dirs.append(cwork)
        cmds.append(sipp_command(target, scenario, cwork, share, rate / callers, limit=limit, hold_ms=hold_ms,
                                 timeout_s=timeout_s, port=port))
    callee0 = target.uas.counts() if target.uas else (0, 0)
    lag0 = _loop_lag(target)
    cpu0 = tree_cpu_s(target.pid)
    others0 = _others_cpu_s(others)
    _children_cpu_s()
    wall0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=d)
             for cmd, d in zip(cmds, dirs, strict=True)]
    client_cpu = 0.0
    errs = []
    for proc in procs:
        try:
            errs.append(proc.communicate(timeout=timeout_s + 30)[1])
        except subprocess.TimeoutExpired:
            proc.kill()
            errs.append(proc.communicate()[1])
    client_cpu = _children_cpu_s()
    wall = time.perf_counter() - wall0
    others_cpu = _others_cpu_s(others) - others0
    time.sleep(settle_s)  # the server finishes the last calls' second leg
    cpu = tree_cpu_s(target.pid) - cpu0
    loop_p99 = quantile_bound_between(lag0, _loop_lag(target), 0.99) if target.metrics is not None else None
    callee_retrans = callee_failed = 0
    if target.uas is not None:
        time.sleep(1.1)  # the callee's stat file is rewritten every second
        retrans1, failed1 = target.uas.counts()
        callee_retrans, callee_failed = max(0, retrans1 - callee0[0]), max(0, failed1 - callee0[1])
    successful = failed = retransmissions = unexpected = 0
    rtts = []
    note = ""
    for d, proc, err in zip(dirs, procs, errs, strict=True):
        stat = parse_sipp_stat(_read(d / "stat.csv"))
        counts = sipp_counts(stat)
        successful += counts.successful
        failed += counts.failed
        retransmissions += counts.retransmissions
        unexpected += counts.unexpected
        for f in d.glob(f"{scenario}_*_rtt.csv"):
            rtts += parse_sipp_rtt(_read(f))
        if not stat:
            note = f"no SIPp statistics (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}"
    times = [t for t, _ in rtts]
    took = [r for _, r in rtts]
    completed = successful
    return Step(
        target=target.name, offered=float(rate), attempted=count, completed=completed,
        failed=failed + max(0, count - completed - failed) + callee_failed,
        callee_failed=callee_failed,
        retransmissions=retransmissions + callee_retrans, callee_retransmissions=callee_retrans,
        achieved=round(completion_rate(times), 1), p50_ms=percentile(took, 50), p99_ms=percentile(took, 99),
        cpu_ms_per_op=round(1000 * cpu / completed, 3) if completed else None, unexpected=unexpected,
        seconds=round(wall, 2), client_cpu_pct=round(100 * client_cpu / wall, 1) if wall > 0 else None, note=note,
        loop_p99_ms=None if loop_p99 is None else round(loop_p99 * 1000, 1),
        others_cpu_pct=round(100 * others_cpu / wall, 1) if others and wall > 0 else None)


def _others_cpu_s(others: Sequence[Target]) -> float:
    return sum(tree_cpu_s(other.pid) for other in others)  # one that has exited (a crashed peer) counts nothing


_children_seen = 0.0


def _children_cpu_s() -> float:
    """CPU seconds of the child processes reaped since the last call (the SIPp caller of a step)."""
    global _children_seen
    t = os.times()
    total = t.children_user + t.children_system
    delta, _children_seen = total - _children_seen, total
    return delta


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def format_step(s: Step) -> str:
    p50 = "-" if s.p50_ms is None else f"{s.p50_ms:.0f}"
    p99 = "-" if s.p99_ms is None else f"{s.p99_ms:.0f}"
    cpu = "-" if s.cpu_ms_per_op is None else f"{s.cpu_ms_per_op:.2f}"
    flag = "fast" if s.fast else ("ok" if s.good else ("SATURATED" if s.failure_free else "FAILED"))
    return (f"  {s.target:<9} {s.offered:>7.0f}/s offered {s.achieved:>8.1f}/s achieved  done {s.completed:>6}/"
            f"{s.attempted:<6} failed {s.failed:>5}  retrans {s.retransmissions:>5}  p50 {p50:>5} p99 {p99:>5} ms  "
            f"cpu {cpu:>6} ms/op  caller sipp {s.client_cpu_pct or 0:>3.0f}% cpu  {flag}"
            f"{'' if s.loop_p99_ms is None else f'  (loop p99 <= {s.loop_p99_ms:g} ms)'}"
            f"{'' if s.others_cpu_pct is None else f'  (others {s.others_cpu_pct:.0f}% cpu)'}"
            f"{('  ' + s.note) if s.note else ''}")


def run_ladder(targets: Sequence[Target], scenario: str, work: Path, rates: Sequence[float], seconds: float, *,
               hold_ms: int = 0, pause_s: float = 1.0, callers: int = 1) -> dict[str, list[Step]]:
    """Each rate against each target in turn (alternating), each target until :func:`keep_climbing` says stop."""
    steps: dict[str, list[Step]] = {t.name: [] for t in targets}
    still_busy = ""
    for rate in rates:
        active = [t for t in targets if keep_climbing(steps[t.name])]
        if not active:
            break
        for target in active:
            step = run_step(target, scenario, work / target.name / f"r{rate:g}", rate, seconds, hold_ms=hold_ms,
                            callers=callers, others=[t for t in targets if t is not target])
            if still_busy:
                step.note = (step.note + " " + still_busy).strip()
            steps[target.name].append(step)
            print(format_step(step), file=sys.stderr, flush=True)
            if not step.good and "Traceback" in target.log():
                print("    server log has a traceback:\n" + target.log()[-2000:], file=sys.stderr)
            time.sleep(pause_s)  # transactions of the step end (Timer K/J), so the next step starts clean
            waited, idle = wait_idle(target)
            still_busy = "" if idle else f"({target.name} still busy from its previous step)"
            if waited > 1.0:
                print(f"    ({target.name} took {waited:.1f} s more to {'go idle' if idle else 'NOT go idle'})",
                      file=sys.stderr)
    return steps


def wait_idle(target: Target, busy: float = 0.25, limit_s: float = 60.0, sample_s: float = 0.5) -> tuple[float, bool]:
    """Wait until ``target`` uses less than ``busy`` of a core (an overloaded server works off its backlog of
    retransmissions after SIPp has given up), so that it does not eat into the next target's step. Returns the
    seconds waited and whether it went idle (the next step is marked when not)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = tree_cpu_s(target.pid)
        time.sleep(sample_s)
        if tree_cpu_s(target.pid) - before < busy * sample_s:
            return time.monotonic() - started, True
    return time.monotonic() - started, False
