"""The admin API over a fake live view (aiohttp's TestServer on loopback), device states, the admin files."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ccpbx.media.errors import MediaError
from ccpbx.media.g711 import Codec
from ccpbx.media.transport import TickDurations
from ccpbx.pbx.admin import (
    AdminServer,
    AdminStateError,
    CallState,
    CallView,
    DeviceState,
    DeviceView,
    LegView,
    MetricsSnapshot,
    RateWindow,
    RegistrationView,
    RtpView,
    read_state,
    remove_state,
    write_state,
)
from ccpbx.pbx.calls import LegState
from ccpbx.pbx.gcpace import GcPacer
from ccpbx.pbx.liveview import ServerLiveView
from ccpbx.pbx.location import Binding, LocationService
from ccpbx.pbx.loopwatch import LoopWatch

TOKEN = "s3cret-token-for-tests"
T0 = 1_764_840_000.0  # 2025-12-04T09:20:00Z


def _leg(role: str, peer: str, state: str = "confirmed", *, inbound: bool | None = None, held: bool = False,
         rtp: RtpView | None = None) -> LegView:
    return LegView(role=role, inbound=role == "caller" if inbound is None else inbound, peer=peer, state=state,
                   sip_call_id=f"{role}-{peer}@test", codec="PCMU", held=held, rtp=rtp)


def _call(call_id: str, caller: str, *legs: LegView, answered: bool = True) -> CallView:
    return CallView(id=call_id, caller=caller, caller_name="", dialled=legs[-1].peer.removeprefix("extension:"),
                    destination=legs[-1].peer, state=CallState.ANSWERED if answered else CallState.RINGING,
                    started=T0, answered=T0 + 2 if answered else None, duration_s=12.5, legs=tuple(legs))


def _metrics(**changes: object) -> MetricsSnapshot:
    ticks = TickDurations()
    for seconds in (0.0002, 0.0003, 0.004, 0.03):
        ticks.observe(seconds)
    base = MetricsSnapshot(
        uptime_s=42.0, calls_active=1, calls_total=7, calls_answered=4, calls_failed=2, calls_per_second=0.25,
        registrations=3, sip_requests=(("INVITE", 14), ("REGISTER", 6)), rtp_channels=2, rtp_packets_lost=5,
        rtp_jitter_max_s=0.012, rtp_jitter_mean_s=0.008, media_ticks=4, media_late_ticks=1,
        media_skipped_ticks=0, tick_buckets=tuple(ticks.cumulative()), tick_seconds_sum=ticks.total_s,
        loop_lag_buckets=((0.002, 5), (0.25, 6), (float("inf"), 7)), loop_lag_seconds_sum=0.5, loop_stalls=1,
        gc_pause_buckets=((0.002, 2), (float("inf"), 3)), gc_pause_seconds_sum=0.04, gc_paced=(9, 1),
        gc_pacer_running=True)
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class FakeLiveView:
    call_list: list[CallView] = field(default_factory=list)
    registration_list: list[RegistrationView] = field(default_factory=list)
    device_list: list[DeviceView] = field(default_factory=list)
    snapshot: MetricsSnapshot = field(default_factory=_metrics)

    def calls(self) -> Sequence[CallView]:
        return self.call_list

    def registrations(self) -> Sequence[RegistrationView]:
        return self.registration_list

    def devices(self) -> Sequence[DeviceView]:
        return self.device_list

    def metrics(self) -> MetricsSnapshot:
        return self.snapshot


@pytest.fixture
def live() -> FakeLiveView:
    rtp = RtpView(packets_received=500, packets_sent=498, lost=2, jitter_ms=3.5)
    return FakeLiveView(
        call_list=[_call("c1", "2001", _leg("caller", "2001", rtp=rtp), _leg("callee", "extension:2002"))],
        registration_list=[RegistrationView("2002", "<sip:2002@127.0.0.1:5070>", "udp", "127.0.0.1:5070", 290,
                                            "SIPp")],
        device_list=[DeviceView("2001", DeviceState.IN_USE, 1), DeviceView("2003", DeviceState.UNAVAILABLE, 0)],
    )


async def _client(live: FakeLiveView, *, metrics_public: bool = False) -> TestClient:  # type: ignore[type-arg]
    admin = AdminServer(live, token=TOKEN, metrics_public=metrics_public)
    client = TestClient(TestServer(admin.app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(live: FakeLiveView) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    c = await _client(live)
    try:
        yield c
    finally:
        await c.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDPOINTS = ("/api/calls", "/api/registrations", "/api/devices", "/api/status", "/metrics")


# -- the token -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", "",
                                    f"Bearer {TOKEN[:-1]}"])
async def test_every_endpoint_wants_the_token(client: TestClient, path: str,  # type: ignore[type-arg]
                                              header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get(path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await response.json()


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_the_right_token_opens_every_endpoint(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    response = await client.get(path, headers={"Authorization": f"bearer  {TOKEN} "})
    assert response.status == 200


async def test_metrics_public_opens_metrics_only(live: FakeLiveView) -> None:
    client = await _client(live, metrics_public=True)
    try:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/api/calls")).status == 401
    finally:
        await client.close()


async def test_unknown_paths_are_404_behind_the_token(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/api/nothing")).status == 401
    assert (await client.get("/api/nothing", headers=AUTH)).status == 404


# -- the JSON ------------------------------------------------------------------------------------------------


async def test_calls_json(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/api/calls", headers=AUTH)
    assert response.content_type == "application/json"
    [call] = await response.json()
    assert {k: call[k] for k in ("id", "caller", "dialled", "destination", "state", "duration")} == {
        "id": "c1", "caller": "2001", "dialled": "2002", "destination": "extension:2002", "state": "answered",
        "duration": 12.5}
    assert call["started"] == "2025-12-04T09:20:00.000+00:00"
    assert call["answered"] == "2025-12-04T09:20:02.000+00:00"
    caller, callee = call["legs"]
    assert caller == {"role": "caller", "inbound": True, "peer": "2001", "state": "confirmed",
                      "sip_call_id": "caller-2001@test", "codec": "PCMU", "held": False,
                      "rtp": {"packets_received": 500, "packets_sent": 498, "lost": 2, "jitter_ms": 3.5}}
    assert (callee["role"], callee["peer"], callee["rtp"]) == ("callee", "extension:2002", None)


async def test_registrations_and_devices_json(client: TestClient) -> None:  # type: ignore[type-arg]
    registrations = await (await client.get("/api/registrations", headers=AUTH)).json()
    assert registrations == [{"aor": "2002", "contact": "<sip:2002@127.0.0.1:5070>", "transport": "udp",
                              "source": "127.0.0.1:5070", "expires_in": 290, "user_agent": "SIPp"}]
    devices = await (await client.get("/api/devices", headers=AUTH)).json()
    assert devices == [{"extension": "2001", "state": "in_use", "calls": 1},
                       {"extension": "2003", "state": "unavailable", "calls": 0}]


async def test_status_json(client: TestClient) -> None:  # type: ignore[type-arg]
    status = await (await client.get("/api/status", headers=AUTH)).json()
    assert status["version"]
    assert status["pid"] == os.getpid()
    assert (status["uptime"], status["calls_active"], status["calls_total"], status["registrations"]) == (
        42.0, 1, 7, 3)


async def test_empty_lists(live: FakeLiveView) -> None:
    live.call_list.clear()
    client = await _client(live)
    try:
        assert await (await client.get("/api/calls", headers=AUTH)).json() == []
    finally:
        await client.close()


# -- /metrics --------------------------------------------------------------------------------------------------


async def test_metrics_parse_and_carry_the_live_values(client: TestClient, live: FakeLiveView) -> None:  # type: ignore[type-arg]
    response = await client.get("/metrics", headers=AUTH)
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("ccpbx_calls_active") == 1
    assert value("ccpbx_calls_total") == 7
    assert value("ccpbx_calls_ended_total", outcome="answered") == 4
    assert value("ccpbx_calls_ended_total", outcome="failed") == 2
    assert value("ccpbx_calls_per_second") == 0.25
    assert value("ccpbx_registrations") == 3
    assert value("ccpbx_sip_requests_total", method="INVITE") == 14
    assert value("ccpbx_sip_requests_total", method="REGISTER") == 6
    assert value("ccpbx_rtp_packets_lost_total") == 5
    assert value("ccpbx_rtp_jitter_seconds", aggregate="max") == pytest.approx(0.012)
    assert value("ccpbx_rtp_jitter_seconds", aggregate="mean") == pytest.approx(0.008)
    assert value("ccpbx_media_late_ticks_total") == 1
    assert value("ccpbx_media_tick_seconds_bucket", le="0.0005") == 2
    assert value("ccpbx_media_tick_seconds_bucket", le="0.005") == 3
    assert value("ccpbx_media_tick_seconds_bucket", le="+Inf") == 4
    assert value("ccpbx_media_tick_seconds_count") == 4
    assert value("ccpbx_media_tick_seconds_sum") == pytest.approx(0.0345)
    assert value("ccpbx_loop_lag_seconds_bucket", le="0.002") == 5
    assert value("ccpbx_loop_lag_seconds_bucket", le="+Inf") == value("ccpbx_loop_lag_seconds_count") == 7
    assert value("ccpbx_loop_lag_seconds_sum") == 0.5
    assert value("ccpbx_loop_stalls_total") == 1
    assert value("ccpbx_gc_pause_seconds_bucket", le="+Inf") == 3
    assert value("ccpbx_gc_pause_seconds_sum") == pytest.approx(0.04)
    assert value("ccpbx_gc_paced_collections_total", generation="young") == 9
    assert value("ccpbx_gc_paced_collections_total", generation="middle") == 1
    assert value("ccpbx_gc_pacer_running") == 1

    live.snapshot = _metrics(calls_active=3)  # read at scrape time, not at start
    text = await (await client.get("/metrics", headers=AUTH)).text()
    active = next(f for f in text_string_to_metric_families(text) if f.name == "ccpbx_calls_active")
    assert active.samples[0].value == 3


async def test_two_servers_keep_their_metrics_apart(live: FakeLiveView) -> None:
    # a private registry each: no global state, so tests (and two servers in one process) do not collide
    other = FakeLiveView(snapshot=_metrics(calls_active=9))
    one, two = await _client(live), await _client(other)
    try:
        for client, expected in ((one, 1), (two, 9)):
            text = await (await client.get("/metrics", headers=AUTH)).text()
            assert f"ccpbx_calls_active {float(expected)}" in text
    finally:
        await one.close()
        await two.close()


# -- device states (pure) -------------------------------------------------------------------------------------


# -- calls per second ------------------------------------------------------------------------------------------


def test_rate_window_over_the_last_minute() -> None:
    rate = RateWindow(60.0)
    assert rate.rate() == 0.0
    rate.observe(0.0, 0)
    assert rate.rate() == 0.0
    for t in range(1, 121):
        rate.observe(float(t), t * 2 if t <= 60 else 120)  # 2 calls/s for a minute, then none
        if t == 30:
            assert rate.rate() == pytest.approx(2.0)
    assert rate.rate() == pytest.approx(0.0)
    rate.observe(150.0, 150)  # 30 calls in the last 30 s of a 60 s window
    assert rate.rate() == pytest.approx(0.5)


def test_tick_durations_are_a_cumulative_histogram() -> None:
    ticks = TickDurations((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.5):
        ticks.observe(seconds)
    assert ticks.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert (ticks.count, ticks.total_s) == (4, pytest.approx(0.5035))


# -- admin.json and admin.token --------------------------------------------------------------------------------


def test_state_files_round_trip_private_and_removed(tmp_path: Path) -> None:
    write_state(tmp_path, "http://127.0.0.1:4321", "tok")
    for name in ("admin.token", "admin.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert json.loads((tmp_path / "admin.json").read_text()) == {"url": "http://127.0.0.1:4321", "pid": os.getpid()}
    endpoint = read_state(tmp_path)
    assert (endpoint.url, endpoint.token, endpoint.pid) == ("http://127.0.0.1:4321", "tok", os.getpid())
    remove_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(AdminStateError, match=r"no running ccpbx found in .* \(admin.json missing\)"):
        read_state(tmp_path)


def test_an_old_token_file_is_narrowed_to_0600(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("old")
    (tmp_path / "admin.token").chmod(0o644)
    write_state(tmp_path, "http://127.0.0.1:1", "new")
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
    assert read_state(tmp_path).token == "new"


def test_another_servers_files_are_left_alone(tmp_path: Path) -> None:
    write_state(tmp_path, "http://127.0.0.1:1", "tok")
    (tmp_path / "admin.json").write_text(json.dumps({"url": "http://127.0.0.1:2", "pid": os.getpid() + 1}))
    remove_state(tmp_path)
    assert (tmp_path / "admin.json").exists() and (tmp_path / "admin.token").exists()


def test_a_broken_state_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "admin.json").write_text("{not json")
    with pytest.raises(AdminStateError, match="cannot read"):
        read_state(tmp_path)
    (tmp_path / "admin.json").write_text('{"url": "ftp://x"}')
    with pytest.raises(AdminStateError, match="names no admin URL"):
        read_state(tmp_path)


async def test_admin_server_listens_on_loopback_and_stops(live: FakeLiveView) -> None:
    admin = AdminServer(live, token=TOKEN)
    url = await admin.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session, session.get(f"{url}/api/devices", headers=AUTH) as resp:
            assert resp.status == 200
            assert len(await resp.json()) == 2
    finally:
        await admin.stop()


# -- the default live view over a server's parts (fakes: no sockets) -------------------------------------------


def _fake_server() -> SimpleNamespace:
    from ccpbx.media.engine import ChannelStats

    def channel_stats(lost: int, jitter_ms: float, packets_in: int = 100) -> ChannelStats:
        return ChannelStats(packets_in=packets_in, packets_out=99, bad=0, lost=lost, late=0, duplicates=0,
                            jitter_ms=jitter_ms, depth_ms=40, relayed=0)

    stats = {4: channel_stats(3, 2.0), 6: channel_stats(1, 6.0), 8: channel_stats(0, 0.0, packets_in=0)}

    def engine_stats(ch: int) -> ChannelStats:
        if ch not in stats:
            raise MediaError(f"no channel {ch}")
        return stats[ch]

    caller = SimpleNamespace(id="legA", role="caller", inbound=True, peer="2001", state=LegState.CONFIRMED,
                             sip_call_id="a@x", audio=SimpleNamespace(codec=Codec.PCMU), held_by_remote=False,
                             channel=4)
    callee = SimpleNamespace(id="legB", role="callee", inbound=False, peer="extension:2002", state=LegState.CONFIRMED,
                             sip_call_id="b@x", audio=SimpleNamespace(codec=Codec.PCMU), held_by_remote=True,
                             channel=6)
    lost_leg = SimpleNamespace(id="legC", role="callee", inbound=False, peer="extension:2003",
                               state=LegState.ENDED, sip_call_id="c@x", audio=None, held_by_remote=False, channel=None)
    call = SimpleNamespace(id="call1", caller=SimpleNamespace(number="2001", name="Desk"), dialled="2002",
                           destination="extension:2002", answered_at=T0 + 1, started=T0,
                           legs=[caller, callee, lost_leg])
    location = LocationService()
    for aor, expires_at in (("2002", T0 + 100), ("2003", T0 - 1)):
        location.put(Binding(aor=aor, contact=f"<sip:{aor}@[::1]:5070>", expires_at=expires_at, call_id="r",
                             cseq=1, transport="udp", source_host="::1", source_port=5070, user_agent="UA"))
    media = SimpleNamespace(engine=SimpleNamespace(stats=engine_stats), tick_durations=TickDurations(), ticks=10,
                            late_ticks=1, skipped_ticks=0)
    manager = SimpleNamespace(calls={"call1": call}, by_channel={4: caller, 6: callee},
                              stats=SimpleNamespace(calls=5, answered=3, failed=1))
    states = {"2001": DeviceState.IN_USE, "2002": DeviceState.ON_HOLD, "2003": DeviceState.UNAVAILABLE}
    devices = SimpleNamespace(snapshot=lambda extensions: {e: states[e] for e in sorted(extensions)},
                              legs=lambda ext: [caller] if ext == "2001" else [callee] if ext == "2002" else [])
    caller.call = callee.call = call
    watch = LoopWatch(clock=lambda: 0.0)
    for late in (0.001, 0.03, 0.3):
        watch.observe_lateness(late)
    return SimpleNamespace(calls=manager, location=location, media=media, devices=devices,
                           router=SimpleNamespace(extensions=lambda: {"2001", "2002", "2003"}),
                           stats=SimpleNamespace(by_method={"REGISTER": 2, "INVITE": 4}), loop_watch=watch,
                           gc_pacer=GcPacer())


def test_server_live_view_calls_registrations_devices() -> None:
    server = _fake_server()
    live = ServerLiveView(server, clock=lambda: T0 + 10)  # type: ignore[arg-type]
    [call] = live.calls()
    assert (call.id, call.caller, call.caller_name, call.state, call.duration_s) == (
        "call1", "2001", "Desk", CallState.ANSWERED, 10.0)
    assert [(leg.role, leg.peer, leg.state, leg.codec, leg.held) for leg in call.legs] == [
        ("caller", "2001", "confirmed", "PCMU", False), ("callee", "extension:2002", "confirmed", "PCMU", True)]
    assert call.legs[0].rtp == RtpView(100, 99, 3, 2.0)
    assert live.registrations() == [RegistrationView("2002", "<sip:2002@[::1]:5070>", "udp", "[::1]:5070", 90, "UA")]
    assert [(d.extension, d.state, d.calls) for d in live.devices()] == [
        ("2001", DeviceState.IN_USE, 1), ("2002", DeviceState.ON_HOLD, 1), ("2003", DeviceState.UNAVAILABLE, 0)]
    swapped = ServerLiveView(server, devices=lambda: [DeviceView("x", DeviceState.IDLE, 0)])  # type: ignore[arg-type]
    assert swapped.devices() == [DeviceView("x", DeviceState.IDLE, 0)]


def test_server_live_view_metrics_keep_the_loss_of_closed_channels() -> None:
    server = _fake_server()
    live = ServerLiveView(server, clock=lambda: T0 + 10)  # type: ignore[arg-type]
    m = live.metrics()
    assert (m.calls_active, m.calls_total, m.calls_answered, m.calls_failed, m.registrations) == (1, 5, 3, 1, 1)
    assert m.sip_requests == (("INVITE", 4), ("REGISTER", 2))
    assert (m.rtp_channels, m.rtp_packets_lost) == (2, 4)
    assert (m.rtp_jitter_max_s, m.rtp_jitter_mean_s) == (pytest.approx(0.006), pytest.approx(0.004))
    assert (m.media_ticks, m.media_late_ticks) == (10, 1)
    # the loop's probes: one under 2 ms, one under 50, one stall
    assert (m.loop_lag_buckets[0], m.loop_lag_buckets[4], m.loop_lag_buckets[-1]) == ((0.002, 1), (0.05, 2),
                                                                                       (float("inf"), 3))
    assert (m.loop_stalls, m.loop_lag_seconds_sum) == (1, pytest.approx(0.331))
    assert m.gc_pause_buckets[-1] == (float("inf"), 0) and m.gc_pause_seconds_sum == 0.0
    del server.calls.by_channel[4]  # the caller's channel closed: its 3 lost packets stay counted
    server.calls.by_channel[8] = SimpleNamespace(id="legD")  # a new channel with no packets: no jitter yet
    m = live.metrics()
    assert (m.rtp_channels, m.rtp_packets_lost, m.rtp_jitter_max_s) == (2, 4, pytest.approx(0.006))
