"""Shared fixtures. Third-party tools are required in CI (CI=true): missing means fail, not skip."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


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
