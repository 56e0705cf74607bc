"""Shared fixtures. Third-party tools are required in CI (CI=true): missing means fail, not skip."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Hypothesis' per-example deadline is a timed assertion: on a loaded 2-core machine one example of a pure
# test took 632 ms once and failed the run. Speed is measured in benchmarks/, never here.
# In CI the examples are derandomized (the same every run): a red CI then means a change broke something, not
# that this run's random draw found an old bug; local runs keep exploring (and their finds become tests).
settings.register_profile("ccpbx", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=IN_CI, database=None if IN_CI else settings.default.database)
settings.load_profile("ccpbx")


def require_tool(name: str) -> str:
    """Return the path of an executable, skipping the test locally (failing it in CI) when it is absent."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it; ./scripts/test does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def sipp() -> str:
    return require_tool("sipp")


@pytest.fixture
def baresip() -> str:
    return require_tool("baresip")


@pytest.fixture
def sox() -> str:
    return require_tool("sox")


@pytest.fixture
def espeak() -> str:
    return require_tool("espeak-ng")
