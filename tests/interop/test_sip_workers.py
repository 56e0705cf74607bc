"""``[sip] workers``: worker processes sharing the UDP port answer the REGISTER challenges and refreshes of
known phones, and the 407 (and its ACK) of a known caller's new calls.

SIPp registers through a server with one worker: its first challenge comes from the server (an endpoint it does
not know yet), the later ones from the worker, and the server accepts the worker's nonces (its own kind, or the
worker's own when the worker vouches for their counts). A phone whose binding the server leased has its
refreshes answered by the worker and stored by the server; a wrong password still meets the server. A banned
address gets nothing from the worker; a worker killed with SIGKILL is restarted while registrations go on;
stopping the server stops its workers. SIPp calls from one port: the first call's 407 comes from the server, the
next ones' from the worker, each call completed by the server with its CDR; a wrong password sends the caller's
next call to the server again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ccpbx.pbx.app import SipServer, sip_worker_count
from ccpbx.pbx.sip.message import Response, parse_message
from ccpbx.pbx.sip.steering import steering_available
from tests.interop.calls import cdr_rows
from tests.interop.conftest import USERS
from tests.interop.server import in_process, start_server, udp_port
from tests.interop.sipp import free_port, run_sipp, start_sipp_uas, stop_process

pytestmark = pytest.mark.skipif(not steering_available(), reason="SIP workers are Linux's (SO_REUSEPORT + BPF)")

WORKERS = "[sip]\nworkers = 1\n"
PHONE = "127.0.0.2"


async def wait_until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def register_cycle(sipp: str, pbx: SipServer, work: Path, *, local_port: int | None = None) -> None:
    """SIPp's register / unregister / register / refresh / remove-all from one socket: five challenges."""
    extra = ["-p", str(local_port)] if local_port else []
    result = await asyncio.to_thread(run_sipp, sipp, "reg_cycle", "127.0.0.1", udp_port(pbx), work,
                                     [["2001", USERS["2001"], "60"]], extra=extra, local_ip=PHONE)
    assert result.returncode == 0, result.explain()


def plain_register(port: int) -> bytes:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE}:{port};branch=z9hG4bK-w1;rport\r\n"
            f"From: <sip:2001@127.0.0.1>;tag=w1\r\nTo: <sip:2001@127.0.0.1>\r\nCall-ID: w1@{PHONE}\r\n"
            f"CSeq: 1 REGISTER\r\nContact: <sip:2001@{PHONE}:{port}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
            ).encode()


@pytest.mark.parametrize("workers", [WORKERS, '[sip]\nworkers = "auto"\n'], ids=["one", "auto"])
async def test_a_known_phones_challenges_come_from_the_worker_and_its_nonces_are_accepted(
        tmp_path: Path, sipp: str, workers: str) -> None:
    async with in_process(tmp_path, workers, USERS) as pbx:
        if "auto" in workers and sip_worker_count("auto") == 0:  # one usable core: "auto" means none
            assert pbx.sip_workers is None
            return
        assert pbx.sip_workers is not None and len(pbx.sip_workers.pids()) == 1
        await register_cycle(sipp, pbx, tmp_path / "cycle")
        # five challenges: the first by the server (the endpoint was new), four by the worker
        await wait_until(lambda: pbx.stats.worker_challenges >= 4)
        assert pbx.stats.worker_challenges == 4 and pbx.stats.challenges == 5
        assert pbx.registration.registered == 5
        # none was a refresh a worker answers (a query, unregisters): those on the worker's own nonces (after
        # the 3rd leased the binding) were passed on vouched for, so SIPp met no second challenge
        assert pbx.stats.worker_refreshes == 0 and pbx.stats.by_method["REGISTER"] == 10
        assert pbx.location.lookup("2001", time.time()) == [] and pbx.leases.leases == {}
        await register_cycle(sipp, pbx, tmp_path / "again")  # a new SIPp socket: new endpoint, first by the server
        await wait_until(lambda: pbx.stats.worker_challenges >= 8)
        assert pbx.stats.worker_challenges == 8 and pbx.stats.challenges == 10


async def test_a_leased_phones_refreshes_are_the_workers_and_a_wrong_password_still_meets_the_server(
        tmp_path: Path, sipp: str) -> None:
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        port = free_udp_port(PHONE)

        async def registrations(name: str, rows: list[list[str]], scenario: str = "reg_ok") -> None:
            result = await asyncio.to_thread(run_sipp, sipp, scenario, "127.0.0.1", udp_port(pbx), tmp_path / name,
                                             rows, calls=len(rows), rate=20, extra=["-p", str(port)],
                                             local_ip=PHONE)
            assert result.returncode == 0, result.explain()

        # three registrations from one phone (each a new Call-ID): the server's, then two the worker answers
        await registrations("three", [["2001", USERS["2001"], "120"]] * 3)
        await wait_until(lambda: pbx.stats.worker_refreshes >= 2 and pbx.stats.worker_quick >= 4)
        assert pbx.stats.worker_refreshes == 2 and pbx.registration.registered == 3
        assert pbx.stats.worker_quick == 4  # SIPp's REGISTERs are of the shape read quickly: two 401s, two 200s
        [binding] = pbx.location.lookup("2001", time.time())
        assert (binding.source_host, binding.source_port, binding.cseq) == (PHONE, port, 2)
        assert 118 <= binding.expires_at - time.time() <= 120 and "2001" in pbx.leases.leases
        lease_call_id = pbx.leases.leases["2001"].call_id
        assert binding.call_id == lease_call_id  # the last refresh's Call-ID, as the worker reported it
        deadline = time.monotonic() + 10  # written behind, at the next group commit
        while [b.call_id for b in await pbx.store.load_bindings()] != [lease_call_id]:
            assert time.monotonic() < deadline, "the refreshed binding was not stored"
            await asyncio.sleep(0.05)
        # a wrong password on the worker's nonce: refused by the server (403, counted), the lease ends
        failures = pbx.admission.failures.count((PHONE, "2001"), time.time())
        await registrations("wrong", [["2001", "not-the-password", "120"]], scenario="reg_wrong")
        assert pbx.admission.failures.count((PHONE, "2001"), time.time()) == failures + 1
        assert "2001" not in pbx.leases.leases and pbx.stats.worker_refreshes == 2
        await registrations("again", [["2001", USERS["2001"], "120"]] * 2)  # the server's, leased, the worker's
        await wait_until(lambda: pbx.stats.worker_refreshes >= 3)
        assert pbx.stats.worker_refreshes == 3 and pbx.registration.registered == 5


async def test_a_banned_address_gets_nothing_from_the_worker(tmp_path: Path, sipp: str) -> None:
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        port = free_udp_port(PHONE)
        await register_cycle(sipp, pbx, tmp_path / "cycle", local_port=port)  # the endpoint is known now
        await wait_until(lambda: pbx.stats.worker_challenges >= 4)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind((PHONE, port))
            phone.setblocking(False)
            loop = asyncio.get_running_loop()

            async def ask() -> Response | None:
                await loop.sock_sendto(phone, plain_register(port), ("127.0.0.1", udp_port(pbx)))
                try:
                    data = await asyncio.wait_for(loop.sock_recv(phone, 4096), 1.0)
                except TimeoutError:
                    return None
                response = parse_message(data)
                assert isinstance(response, Response)
                return response

            assert pbx.ban_address(PHONE, 60) is not None
            await asyncio.sleep(0.2)  # the ban reaches the worker over its link
            dropped_before = pbx.bans.dropped_banned
            assert await ask() is None
            await wait_until(lambda: pbx.bans.dropped_banned > dropped_before)  # counted by the worker
            assert pbx.unban(PHONE)
            await asyncio.sleep(0.2)
            challenged = pbx.stats.worker_challenges
            response = await ask()
            assert response is not None and response.status == 401
            await wait_until(lambda: pbx.stats.worker_challenges > challenged)


async def test_a_killed_worker_is_restarted_and_registrations_go_on(tmp_path: Path, sipp: str) -> None:
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        workers = pbx.sip_workers
        assert workers is not None
        (old,) = workers.pids()
        os.kill(old, signal.SIGKILL)
        await register_cycle(sipp, pbx, tmp_path / "meanwhile")  # the server or the new worker: answered
        await wait_until(lambda: workers.pids() and workers.pids() != [old])
        assert workers.restarts == 1
        challenged = pbx.stats.worker_challenges
        await register_cycle(sipp, pbx, tmp_path / "after")
        await wait_until(lambda: pbx.stats.worker_challenges >= challenged + 4)


def test_stopping_the_server_stops_its_workers(tmp_path: Path, sipp: str) -> None:
    srv = start_server(tmp_path / "data", config_text=WORKERS, extensions={"2001": USERS["2001"]})
    try:
        assert "ccpbx: REGISTER and INVITE challenges, REGISTER refreshes in 1 SIP worker process" in srv.stdout_lines
        result = run_sipp(sipp, "reg_cycle", srv.host, srv.port, tmp_path / "cycle", [["2001", USERS["2001"], "60"]])
        assert result.returncode == 0, result.explain()
        srv.wait_for_log(r"sip\.worker\.counts.*challenged=4")
        children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == srv.proc.pid
                    and b"sip_worker" in _cmdline(int(p))]
        assert len(children) == 1
    finally:
        assert srv.stop() == 0  # SIGTERM
    pid = int(children[0])
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and _parent(pid) == srv.proc.pid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or b"sip_worker" not in _cmdline(pid)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def test_a_datagram_that_waited_too_long_on_its_way_from_a_worker_is_shed(tmp_path: Path) -> None:
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        shed, requests = pbx.stats.shed, pbx.stats.requests
        source = ("udp", PHONE, 5999)
        pbx._from_sip_worker(plain_register(5999), source, pbx.now() - 1_000, None)  # its sender retransmitted
        assert pbx.stats.shed == shed + 1 and pbx.stats.requests == requests
        pbx._from_sip_worker(plain_register(5999), source, pbx.now() - 10, None)
        assert pbx.stats.requests == requests + 1 and pbx.stats.challenges >= 1  # handled here


async def test_a_kernel_that_refuses_the_steering_program_means_no_workers_not_no_server(
        tmp_path: Path, sipp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccpbx.pbx.sip import transport
    from ccpbx.pbx.sip.steering import SteeringUnavailableError

    def refuse(sock: socket.socket, workers: int) -> None:
        raise SteeringUnavailableError(22, "cannot steer requests to SIP workers: Invalid argument")

    monkeypatch.setattr(transport, "attach_request_steering", refuse)
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        assert pbx.sip_workers is None
        await register_cycle(sipp, pbx, tmp_path / "cycle")
        assert pbx.stats.challenges == 5 and pbx.stats.worker_challenges == 0


async def test_a_known_callers_new_calls_are_challenged_by_the_worker_and_placed_by_the_server(tmp_path: Path,
                                                                                             sipp: str) -> None:
    async with in_process(tmp_path, WORKERS, USERS) as pbx:
        uas_port = free_port()
        uas = start_sipp_uas(sipp, "uas_answer", tmp_path / "uas", uas_port, calls=4, timeout_s=60)
        try:
            reg = await asyncio.to_thread(run_sipp, sipp, "reg_contact", "127.0.0.1", udp_port(pbx),
                                          tmp_path / "reg", [["2002", USERS["2002"], "300", str(uas_port)]])
            assert reg.returncode == 0, reg.explain()
            port = free_udp_port(PHONE)  # one caller: every call from this one endpoint

            async def calls(name: str, rows: list[list[str]], scenario: str = "uac_call") -> None:
                result = await asyncio.to_thread(run_sipp, sipp, scenario, "127.0.0.1", udp_port(pbx),
                                                 tmp_path / name, rows, calls=len(rows), rate=5,
                                                 extra=["-p", str(port), "-s", "2002", "-d", "100"], local_ip=PHONE)
                assert result.returncode == 0, result.explain()

            await calls("three", [["2001", USERS["2001"], "1000"]] * 3)
            # the first call's 407 came from the server (a caller it did not know), the next two from the worker,
            # whose ACKs ended there (an ACK a transaction absorbs is not counted); every INVITE with credentials,
            # ACK of a 200 and BYE reached the server
            await wait_until(lambda: pbx.stats.worker_challenges >= 2 and pbx.stats.by_method.get("BYE", 0) >= 3)
            assert pbx.stats.worker_challenges == 2 and pbx.stats.challenges == 4  # and the callee's REGISTER's
            assert pbx.stats.worker_quick == 2  # SIPp's INVITEs are of the shape read quickly
            assert pbx.stats.by_method["INVITE"] == 6 and pbx.stats.by_method["ACK"] == 3
            rows = cdr_rows(_Store(pbx), count=3)
            assert [(r["caller"], r["callee"], r["disposition"]) for r in rows] == [("2001", "2002", "answered")] * 3
            # a wrong password (after the worker's 407): refused by the server, which counts it and takes the
            # caller's next call back (its 407 from the server: the lock-out sees every call)
            failures = pbx.admission.failures.count((PHONE, "2001"), time.time())
            await calls("wrong", [["2001", "not-the-password", "1000"]], scenario="uac_forbidden")
            assert pbx.admission.failures.count((PHONE, "2001"), time.time()) == failures + 1
            await wait_until(lambda: pbx.stats.worker_challenges >= 3)
            await calls("after", [["2001", USERS["2001"], "1000"]])
            await wait_until(lambda: len(cdr_rows(_Store(pbx), count=4)) >= 4)
            await asyncio.sleep(1.5)  # the worker's counts of the last second
            assert pbx.stats.worker_challenges == 3 and pbx.stats.challenges == 6
        finally:
            stop_process(uas, 10)


class _Store:
    """What ``cdr_rows`` reads: the data directory of an in-process server."""

    def __init__(self, pbx: SipServer) -> None:
        self.data_dir = Path(pbx.store.path).parent
