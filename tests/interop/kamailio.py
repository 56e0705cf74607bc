"""Kamailio as a minimal "SIP provider" for trunk interop tests: generated config, loopback UDP, foreground.

The provider has subscribers (plaintext passwords in the generated config, no database), a registrar kept in
memory, and numbers (DIDs) it routes to whoever registered as ``pbx_account``:

* REGISTER: 401 challenge (``realm``, qop=auth), 403 on wrong credentials or an unknown user, else saved.
* INVITE to a number starting with one of ``did_prefixes``: from anyone, no auth; the Request-URI user becomes
  ``pbx_account`` (To keeps the dialled number), then the registered contact of that account, 480 when none.
* Any other initial INVITE: 407 challenge; the credentials' user must be a subscriber with the right password
  (403 otherwise); then the registered contact of the Request-URI user, 404 when none.
* Record-Route on initial INVITEs, loose routing for in-dialog requests, CANCEL matched to its INVITE,
  out-of-dialog OPTIONS answered 200 (keep-alive pings). Every request and final reply is logged (xlog).

``start_kamailio`` returns once the process answers an OPTIONS; ``provider.stop()`` always ends it (SIGTERM to
its process group, SIGKILL after a grace). Prefer :func:`kamailio_provider` (a context manager) in tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_tool
from tests.interop.sipp import SippResult, free_port, run_sipp, start_sipp_uas, stop_process

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3
SAFE = re.compile(r"[A-Za-z0-9+._~!*()'-]+")  # what may stand inside a quoted string of the generated config


def kamailio_binary() -> str:
    """The kamailio executable (Debian puts it in /usr/sbin); skips locally, fails with CI=true, when absent."""
    for candidate in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio"):
        if os.access(candidate, os.X_OK):
            return candidate
    return require_tool("kamailio")


@dataclass
class KamailioProvider:
    host: str
    port: int
    realm: str
    pbx_account: str
    did_prefixes: tuple[str, ...]
    subscribers: dict[str, str]
    log_path: Path
    config_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        """The end of Kamailio's log: what to show when a test fails."""
        return f"\n--- kamailio log ({self.log_path}) ---\n" + self.log[-chars:]

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the log; returns the log."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.log
            if len(regex.findall(text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} (x{count}) in kamailio's log" + self.tail())
            time.sleep(0.05)

    def wait_registered(self, user: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``user`` (e.g. ``pbx_account``) registered ``count`` times (a refresh counts again)."""
        return self.wait_for_log(rf"provider\.register\.ok aor={re.escape(user)} ", timeout, count)

    def options(self, timeout: float = 1.0) -> bytes | None:
        """Send one OPTIONS to the provider; return the first response datagram, or None on timeout."""
        return _options(self.host, self.port, timeout)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after a grace; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _terminate(proc)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
    # The main process is gone; its children (same group) could outlive it for a moment.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _options(host: str, port: int, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        lport = sock.getsockname()[1]
        tag = uuid.uuid4().hex[:12]
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {host}:{lport};branch=z9hG4bK-{tag};rport\r\n"
               f"From: <sip:probe@{host}>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\n"
               f"Call-ID: probe-{tag}@{host}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        try:
            sock.sendto(msg.encode(), (host, port))
            return sock.recv(65535)
        except OSError:  # timeout, or an ICMP port-unreachable while Kamailio is not bound yet
            return None


def _check(kind: str, value: str) -> str:
    if not SAFE.fullmatch(value):
        raise ValueError(f"{kind} {value!r}: use letters, digits and +._~!*()'- only")
    return value


def render_config(*, port: int, subscribers: Mapping[str, str], realm: str, did_prefixes: Sequence[str],
                  pbx_account: str, host: str = "127.0.0.1", min_expires: int = 10, max_expires: int = 3600) -> str:
    """The kamailio.cfg text of the provider (modules of Debian's base ``kamailio`` package only)."""
    _check("realm", realm)
    _check("pbx_account", pbx_account)
    passwords = "\n".join(
        f'    if ($var(user) == "{_check("user", user)}") {{ $var(pw) = "{_check("password", pw)}"; }}'
        for user, pw in subscribers.items())
    dids = "\n".join(
        f'    if ($(rU{{s.substr,0,{len(p)}}}) == "{_check("did prefix", p)}") {{ return(1); }}'
        for p in did_prefixes)
    return f"""#!KAMAILIO
# Generated by tests/interop/kamailio.py: a minimal SIP provider for ccpbx trunk tests.
debug=2
log_stderror=yes
children=2
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
listen=udp:{host}:{port}
alias="{realm}"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"

modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 30000)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "max_expires", {max_expires})

request_route {{
    xlog("L_NOTICE", "provider.req $rm ruri=$ru from=$fu to=$tu src=$si:$sp\\n");
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check()) {{ xlog("L_WARN", "provider.insane $rm from $si:$sp\\n"); exit; }}

    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (has_totag()) {{ route(WITHINDLG); exit; }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    t_check_trans();

    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("REGISTER")) {{ route(REGISTRAR); exit; }}
    if (!is_method("INVITE")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}

    remove_hf("Route");
    record_route();
    if (route(DID)) {{
        xlog("L_NOTICE", "provider.did $rU -> {pbx_account}\\n");
        $rU = "{pbx_account}";
        if (!lookup("location")) {{
            xlog("L_NOTICE", "provider.did.unregistered {pbx_account}\\n");
            sl_send_reply("480", "Temporarily Unavailable");
            exit;
        }}
        route(RELAY);
        exit;
    }}
    route(AUTH_INVITE);
    if (!lookup("location")) {{
        xlog("L_NOTICE", "provider.notfound $rU\\n");
        sl_send_reply("404", "Not Found");
        exit;
    }}
    route(RELAY);
}}

route[PASSWD] {{
    $var(pw) = "";
{passwords}
}}

route[DID] {{
{dids}
    return(-1);
}}

route[REGISTRAR] {{
    if (!is_present_hf("Authorization")) {{
        www_challenge("{realm}", "1");
        exit;
    }}
    $var(user) = $au;
    route(PASSWD);
    if ($var(pw) == "" || $au != $tU) {{
        xlog("L_NOTICE", "provider.register.forbidden user=$au aor=$tU\\n");
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    if (!pv_www_authenticate("{realm}", "$var(pw)", "0")) {{
        $var(rc) = $rc;
        if ($var(rc) == -2 || $var(rc) == -3 || $var(rc) == -8) {{
            xlog("L_NOTICE", "provider.register.forbidden user=$au rc=$var(rc)\\n");
            sl_send_reply("403", "Forbidden");
            exit;
        }}
        www_challenge("{realm}", "1");  # no, stale or expired credentials
        exit;
    }}
    consume_credentials();
    if (!save("location")) {{ sl_reply_error(); exit; }}
    xlog("L_NOTICE", "provider.register.ok aor=$tU contact=$ct expires=$hdr(Expires)\\n");
}}

route[AUTH_INVITE] {{
    if (!is_present_hf("Proxy-Authorization")) {{
        proxy_challenge("{realm}", "1");
        exit;
    }}
    $var(user) = $au;
    route(PASSWD);
    if ($var(pw) == "") {{
        xlog("L_NOTICE", "provider.invite.forbidden user=$au\\n");
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    if (!pv_proxy_authenticate("{realm}", "$var(pw)", "0")) {{
        $var(rc) = $rc;
        if ($var(rc) == -2 || $var(rc) == -3 || $var(rc) == -8) {{
            xlog("L_NOTICE", "provider.invite.forbidden user=$au rc=$var(rc)\\n");
            sl_send_reply("403", "Forbidden");
            exit;
        }}
        proxy_challenge("{realm}", "1");  # no, stale or expired credentials
        exit;
    }}
    consume_credentials();
    xlog("L_NOTICE", "provider.invite.auth user=$au\\n");
}}

route[RELAY] {{
    xlog("L_NOTICE", "provider.relay $rm to=$tu -> $ru\\n");
    t_on_reply("REPLY");
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}

route[WITHINDLG] {{
    if (loose_route()) {{
        route(RELAY);
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}

onreply_route[REPLY] {{
    xlog("L_NOTICE", "provider.reply $rs $rr for $rm\\n");
}}
"""


def _launch(binary: str, work: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "-f", str(config), "-DD", "-E", "-m", "64", "-M", "8", "-w", str(work),
           "-Y", str(run), "-P", str(run / "kamailio.pid")]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=work,
                                start_new_session=True)


def start_kamailio(work: Path, subscribers: Mapping[str, str], *, realm: str = "provider.test",
                   did_prefixes: Sequence[str] = ("+1555123", "1555123"), pbx_account: str = "ccpbx",
                   min_expires: int = 10, max_expires: int = 3600) -> KamailioProvider:
    """Start Kamailio in ``work`` (its config, log, pid and runtime dir go there); return once it answers.

    The caller must ``stop()`` the result (or use :func:`kamailio_provider`).
    """
    binary = kamailio_binary()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "kamailio.cfg"
    log = work / "kamailio.log"
    host = "127.0.0.1"
    last = ""
    for attempt in range(START_ATTEMPTS):
        port = free_port(host)
        config.write_text(render_config(port=port, subscribers=subscribers, realm=realm,
                                        did_prefixes=did_prefixes, pbx_account=pbx_account, host=host,
                                        min_expires=min_expires, max_expires=max_expires))
        with log.open("a") as out:
            out.write(f"=== start attempt {attempt + 1} on udp:{host}:{port}\n")
        provider = KamailioProvider(host, port, realm, pbx_account, tuple(did_prefixes), dict(subscribers),
                                    log, config, _launch(binary, work, config, log))
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                assert provider.proc is not None
                if provider.proc.poll() is not None:
                    break  # bad config or port taken: the log says which
                if provider.options(timeout=0.2) is not None:
                    return provider
        except BaseException:
            provider.stop()
            raise
        last = provider.tail()
        provider.stop()
    raise AssertionError(f"kamailio did not answer OPTIONS after {START_ATTEMPTS} attempts" + last)


@contextmanager
def kamailio_provider(work: Path, subscribers: Mapping[str, str], *, realm: str = "provider.test",
                      did_prefixes: Sequence[str] = ("+1555123", "1555123"), pbx_account: str = "ccpbx",
                      min_expires: int = 10, max_expires: int = 3600) -> Iterator[KamailioProvider]:
    """:func:`start_kamailio` as a context manager that always stops the process."""
    provider = start_kamailio(work, subscribers, realm=realm, did_prefixes=did_prefixes, pbx_account=pbx_account,
                              min_expires=min_expires, max_expires=max_expires)
    try:
        yield provider
    finally:
        provider.stop()


def register_sipp(sipp: str, provider: KamailioProvider, work: Path, user: str, password: str, contact_port: int,
                  *, expires: int = 300, expect_ok: bool = True) -> SippResult:
    """Register ``user`` at the provider with SIPp (401, then credentials) and Contact 127.0.0.1:contact_port.

    With ``expect_ok`` (the default) asserts SIPp got its 200 and Kamailio logged the binding.
    """
    result = run_sipp(sipp, "reg_contact", provider.host, provider.port, work,
                      [[user, password, str(expires), str(contact_port)]], timeout_s=10)
    if expect_ok:
        assert result.returncode == 0, result.explain() + provider.tail()
        provider.wait_for_log(rf"provider\.register\.ok aor={re.escape(user)} contact=\S*:{contact_port}\b")
    return result


@contextmanager
def provider_uas(sipp: str, provider: KamailioProvider, scenario: str, work: Path, user: str, password: str, *,
                 calls: int = 1, timeout_s: int = 15,
                 extra: list[str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A SIPp UAS (``scenario`` in scenarios/) on a free port, registered at the provider as ``user``.

    Yields the process; read its outcome with ``tests.interop.calls.uas_result(proc, work, scenario)`` after
    the block (which waits for it to finish, killing it after ``timeout_s + 5`` s).
    """
    port = free_port()
    proc = start_sipp_uas(sipp, scenario, work, port, calls=calls, timeout_s=timeout_s, extra=extra)
    try:
        register_sipp(sipp, provider, work / "reg", user, password, port)
        yield proc
    except BaseException:
        proc.kill()
        raise
    finally:
        stop_process(proc, timeout_s + 5)
