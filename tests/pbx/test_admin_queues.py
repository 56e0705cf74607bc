"""The admin API's queue endpoints and gauges over a fake QueueControl (aiohttp's TestServer on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ccpbx.pbx.admin import AdminServer, read_state
from ccpbx.pbx.config import load_config
from ccpbx.pbx.liveview import start_live_view
from ccpbx.pbx.queue_api import AgentAction, AgentCommandError, QueueControl
from tests.pbx.test_admin import AUTH, TOKEN, FakeLiveView


def queue_figures(name: str, **changes: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "name": name, "open": True, "waiting": 3, "callbacks_waiting": 1, "ringing": 1, "longest_wait_s": 72.4,
        "staffed": 4, "agents": {"available": 1, "on-contact": 2, "paused": 1}, "answered": 120,
        "answered_within_sl": 111, "abandoned": 4, "overflowed": 2, "callbacks_requested": 3,
        "callbacks_completed": 2, "service_level": 0.895, "service_level_s": 20, "asa_s": 14.2, "ewt_s": 40}
    figures.update(changes)
    return figures


def agent_figures(extension: str, state: str, **changes: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "extension": extension, "state": state, "time_in_state_s": 95.0, "pause_reason": None,
        "device_available": True, "device_reason": "", "answered": 12, "queues": ["support"]}
    figures.update(changes)
    return figures


@dataclass
class FakeQueueControl:
    """Answers a fixed snapshot and records agent commands; ``known`` are the agents it accepts."""

    figures: dict[str, Any] = field(default_factory=lambda: {
        "queues": [queue_figures("support"),
                   queue_figures("sales", waiting=0, longest_wait_s=0, staffed=0, agents={}, answered=0,
                                 answered_within_sl=0, abandoned=0, service_level=None, asa_s=None, ewt_s=None)],
        "agents": [agent_figures("2001", "on-contact"),
                   agent_figures("2002", "paused", pause_reason="lunch break", time_in_state_s=600.0),
                   agent_figures("2003", "unreachable", device_available=False, device_reason="not registered",
                                 queues=["support", "sales"])],
        "since": "2025-12-04T00:00:00+00:00"})
    known: set[str] = field(default_factory=lambda: {"2001", "2002", "2003"})
    commands: list[tuple[str, AgentAction, str | None, str | None]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return self.figures

    async def agent_command(self, extension: str, action: AgentAction, *, queue: str | None = None,
                            reason: str | None = None) -> None:
        if extension not in self.known:
            raise AgentCommandError(f"{extension} is no agent")
        if queue is not None and queue not in {"support", "sales"}:
            raise AgentCommandError(f"agent {extension} does not serve queue {queue!r}")
        self.commands.append((extension, action, queue, reason))


def test_the_fake_is_a_queue_control() -> None:
    control: QueueControl = FakeQueueControl()  # mypy checks the protocol here
    assert control.snapshot()["queues"]


@pytest.fixture
def queues() -> FakeQueueControl:
    return FakeQueueControl()


@pytest.fixture
async def admin(queues: FakeQueueControl) -> AsyncIterator[tuple[AdminServer, TestClient]]:  # type: ignore[type-arg]
    server = AdminServer(FakeLiveView(), token=TOKEN, queues=queues)
    client = TestClient(TestServer(server.app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield server, client
    finally:
        await client.close()


async def test_queue_endpoints_want_the_token(admin: tuple[AdminServer, TestClient]) -> None:  # type: ignore[type-arg]
    _, client = admin
    response = await client.get("/api/queues")
    assert response.status == 401
    response = await client.post("/api/agents/2001/login", headers={"Authorization": "Bearer wrong"})
    assert response.status == 401


async def test_queues_json_is_the_snapshot(admin: tuple[AdminServer, TestClient],  # type: ignore[type-arg]
                                           queues: FakeQueueControl) -> None:
    _, client = admin
    response = await client.get("/api/queues", headers=AUTH)
    assert response.status == 200
    assert await response.json() == queues.figures


@pytest.mark.parametrize(("action", "body", "expected"), [
    ("login", None, ("2001", AgentAction.LOGIN, None, None)),
    ("logout", {"queue": "sales"}, ("2001", AgentAction.LOGOUT, "sales", None)),
    ("pause", {"reason": "lunch", "queue": None}, ("2001", AgentAction.PAUSE, None, "lunch")),
    ("unpause", {}, ("2001", AgentAction.UNPAUSE, None, None)),
    ("pause", {"reason": ""}, ("2001", AgentAction.PAUSE, None, None)),
])
async def test_agent_commands(admin: tuple[AdminServer, TestClient], queues: FakeQueueControl,  # type: ignore[type-arg]
                              action: str, body: dict[str, Any] | None,
                              expected: tuple[str, AgentAction, str | None, str | None]) -> None:
    _, client = admin
    response = await client.post(f"/api/agents/2001/{action}", headers=AUTH, json=body)
    assert response.status == 200, await response.text()
    assert await response.json() == {"ok": True}
    assert queues.commands == [expected]


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/api/agents/9999/login", None, "9999 is no agent"),
    ("/api/agents/2001/login", {"queue": "nosuch"}, "does not serve queue 'nosuch'"),
    ("/api/agents/2001/dance", None, "no agent action 'dance' (one of login, logout, pause, unpause)"),
    ("/api/agents/2001/pause", {"reason": 5}, "reason must be a string"),
    ("/api/agents/2001/pause", {"why": "x"}, "unknown key 'why'"),
    ("/api/agents/2001/pause", ["lunch"], "must be a JSON object"),
])
async def test_refused_agent_commands_are_400_with_the_reason(
        admin: tuple[AdminServer, TestClient], queues: FakeQueueControl,  # type: ignore[type-arg]
        path: str, body: Any, fragment: str) -> None:
    _, client = admin
    response = await client.post(path, headers=AUTH, json=body)
    assert response.status == 400
    assert fragment in (await response.json())["error"]
    assert queues.commands == []


async def test_a_body_that_is_no_json_is_400(admin: tuple[AdminServer, TestClient]) -> None:  # type: ignore[type-arg]
    _, client = admin
    response = await client.post("/api/agents/2001/pause", headers=AUTH, data=b"{lunch")
    assert response.status == 400
    assert "JSON object" in (await response.json())["error"]


async def test_agents_endpoint_takes_post_only(admin: tuple[AdminServer, TestClient]) -> None:  # type: ignore[type-arg]
    _, client = admin
    response = await client.get("/api/agents/2001/login", headers=AUTH)
    assert response.status == 405


async def test_without_queue_control_both_answer_503() -> None:
    server = AdminServer(FakeLiveView(), token=TOKEN)
    async with TestClient(TestServer(server.app, host="127.0.0.1")) as client:
        for response in (await client.get("/api/queues", headers=AUTH),
                         await client.post("/api/agents/2001/login", headers=AUTH)):
            assert response.status == 503
            assert await response.json() == {"error": "no queues configured"}
        metrics = await (await client.get("/metrics", headers=AUTH)).text()
        assert "ccpbx_queue" not in metrics
        server.queues = FakeQueueControl()  # set later, as the composition root may
        assert (await client.get("/api/queues", headers=AUTH)).status == 200


async def test_metrics_have_per_queue_gauges(admin: tuple[AdminServer, TestClient]) -> None:  # type: ignore[type-arg]
    _, client = admin
    text = await (await client.get("/metrics", headers=AUTH)).text()
    samples = {(s.name, s.labels.get("queue")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ccpbx_queue_waiting", "support")] == 3
    assert samples[("ccpbx_queue_waiting", "sales")] == 0
    assert samples[("ccpbx_queue_longest_wait_seconds", "support")] == pytest.approx(72.4)
    assert samples[("ccpbx_queue_agents_staffed", "support")] == 4
    assert samples[("ccpbx_queue_service_level", "support")] == pytest.approx(0.895)
    assert ("ccpbx_queue_service_level", "sales") not in samples  # nothing counted yet: no figure
    assert samples[("ccpbx_queue_answered", "support")] == 120
    assert samples[("ccpbx_queue_abandoned", "support")] == 4
    assert samples[("ccpbx_calls_active", None)] == 1  # the call gauges are still there


async def test_start_live_view_serves_the_servers_queue_control(tmp_path: Path) -> None:
    queues = FakeQueueControl()
    # the live view reads the other parts only when asked, but for its calls-per-second sampler
    server = SimpleNamespace(queues=queues, calls=SimpleNamespace(stats=SimpleNamespace(calls=0)),
                             trunk_statuses=list)
    service = await start_live_view(load_config(None), tmp_path, server)  # type: ignore[arg-type]
    try:
        assert service.admin is not None and service.admin.queues is queues
        assert read_state(tmp_path).url == service.admin.url
        await asyncio.sleep(0)  # let the sampler run once
    finally:
        await service.stop()
