"""Erlang B/C/A against known values, the simulation against Erlang C, and ``ccpbx acd simulate``."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from ccpbx.acd.erlang import erlang_a_prediction, erlang_b, erlang_c, erlang_c_prediction
from ccpbx.acd.simulate import SimulationConfig, simulate
from ccpbx.cli.main import main


def test_erlang_b_and_c_known_values() -> None:
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-6)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 8.0) == pytest.approx(0.40918, abs=1e-5)
    assert erlang_c(5, 5.0) == 1.0
    # Stable far beyond where factorials overflow a float.
    assert 0 < erlang_c(2_000, 1_950.0) < 1


def test_erlang_c_prediction_m_m_1() -> None:
    # M/M/1, rho = 0.5, mean service 10 s: P(wait) = 0.5, ASA = 10 s, P(W <= t) = 1 - 0.5 e^{-t/20}.
    p = erlang_c_prediction(1, 180, 10, 20)
    assert p.p_wait == pytest.approx(0.5)
    assert p.asa_s == pytest.approx(10.0)
    assert p.service_level == pytest.approx(1 - 0.5 * math.exp(-1))
    assert p.occupancy == pytest.approx(0.5)


def test_erlang_a_tends_to_erlang_c_with_infinite_patience_and_abandons_otherwise() -> None:
    c = erlang_c_prediction(10, 160, 180, 20)
    a = erlang_a_prediction(10, 160, 180, 1e9, 20)
    assert a.service_level == pytest.approx(c.service_level, abs=1e-4)
    assert a.asa_s == pytest.approx(c.asa_s, rel=1e-3)
    impatient = erlang_a_prediction(10, 160, 180, 60, 20)
    assert impatient.abandon_rate > 0.05 and impatient.asa_s < c.asa_s
    overloaded = erlang_a_prediction(10, 400, 180, 60, 20)  # 20 erlangs on 10 agents: stable with abandonment
    assert overloaded.abandon_rate == pytest.approx(0.5, abs=0.06)


# M/M/c without abandonment: 10 agents, 8 erlangs; tolerance 0.03 on service level and occupancy, 12% on ASA
# (the slowest figure to converge). Fixed seed, so deterministic; about 3 s.
SL_TOLERANCE = 0.03
ASA_RELATIVE = 0.12


def test_simulation_agrees_with_erlang_c() -> None:
    sim = simulate(SimulationConfig(agents=10, arrivals_per_hour=160, aht_s=180, hours=200, seed=1))
    pred = erlang_c_prediction(10, 160, 180, 20)
    assert sim.arrivals > 25_000 and sim.abandoned == 0
    assert sim.service_level == pytest.approx(pred.service_level, abs=SL_TOLERANCE)
    assert sim.asa_s == pytest.approx(pred.asa_s, rel=ASA_RELATIVE)
    assert sim.occupancy == pytest.approx(pred.occupancy, abs=SL_TOLERANCE)


def test_simulation_with_patience_agrees_with_erlang_a() -> None:
    sim = simulate(SimulationConfig(agents=10, arrivals_per_hour=160, aht_s=180, hours=60, patience_s=120, seed=2))
    pred = erlang_a_prediction(10, 160, 180, 120, 20)
    assert sim.abandon_rate == pytest.approx(pred.abandon_rate, abs=0.02)
    assert sim.service_level == pytest.approx(pred.service_level, abs=0.04)


def test_cli_simulate_json() -> None:
    result = CliRunner().invoke(main, ["acd", "simulate", "--agents", "5", "--arrivals-per-hour", "60",
                                       "--aht", "240", "--hours", "4", "--patience", "90", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"simulated", "erlang_c", "erlang_a"}
    for column in data.values():
        assert set(column) == {"service_level", "asa_s", "occupancy", "abandon_rate"}
    assert data["erlang_c"]["occupancy"] == pytest.approx(0.8)


def test_cli_simulate_table_and_bad_arguments() -> None:
    result = CliRunner().invoke(main, ["acd", "simulate", "--agents", "3", "--arrivals-per-hour", "30",
                                       "--aht", "120", "--hours", "1", "--lognormal"])
    assert result.exit_code == 0, result.output
    assert "erlang_c" in result.stdout and "service level (20 s)" in result.stdout
    bad = CliRunner().invoke(main, ["acd", "simulate", "--agents", "0", "--arrivals-per-hour", "30", "--aht", "1"])
    assert bad.exit_code == 2
