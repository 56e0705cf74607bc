"""A call whose callee leg gets no RTP port (the range is used up) fails as a busy target does: the caller hears
an error response, the log says why in one warning, and no traceback; the server goes on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.pbx.simnet import registered, sdp, sim_pbx, until

USERS = {"1001": "pw-1001-ports", "1002": "pw-1002-ports"}
pytestmark = pytest.mark.timeout(30)


def _free_even_pair() -> int:
    """An even UDP port whose odd neighbour is free too, on loopback (bound and let go at once)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no free even port pair on loopback")


async def test_a_callee_leg_without_an_rtp_port_fails_the_target_not_the_server(tmp_path: Path) -> None:
    port = _free_even_pair()
    # one RTP port pair in all: the caller's leg takes it, the callee's finds none
    config = f'[admin]\nenabled = false\n[rtp]\nport_min = {port}\nport_max = {port + 1}\n'
    async with sim_pbx(tmp_path, config, USERS) as pbx:
        a = await registered(pbx, "1001", USERS["1001"])
        b = await registered(pbx, "1002", USERS["1002"])
        with capture_logs() as logs:
            call = await a.call("1002", body=sdp(), wait_answer=True)
        assert call.final is not None and call.final.status == 480  # as a target that cannot be reached
        assert b.incoming.empty()  # the callee was never called: its leg had no media
        unavailable = [e for e in logs if e["event"] == "call.media.unavailable"]
        assert len(unavailable) == 1 and unavailable[0]["target"] and unavailable[0]["log_level"] == "warning"
        assert not [e for e in logs if e["event"] == "call.failed" or e.get("exc_info")]
        await until(lambda: not pbx.calls.calls, timeout=5)
        assert not pbx.calls.by_channel  # the caller's channel closed: its pair can serve the next call
        # the server still serves: the caller can call again and gets a clean answer (480 as before, or 503
        # when the caller's own leg finds the one pair still resting after the last call)
        with capture_logs() as logs:
            again = await a.call("1002", body=sdp(), wait_answer=True)
        assert again.final is not None and again.final.status in (480, 503)
        assert not [e for e in logs if e["event"] == "call.failed" or e.get("exc_info")]
