"""Replay every input the fuzz campaign (benchmarks/fuzz.py) found crashing, through the same entry points.

Each file in tests/data/fuzz_corpus/<area>/ once raised something other than the package's own errors (or made
a SIP handler raise inside the server). Now each must parse or be refused cleanly. The server's inputs are fed
in order to one server, from a trusted and an untrusted source, because some crashes needed the state an
earlier input left (two RFC 2543 INVITEs that differ only in Request-URI are two transactions).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fuzz_targets import (
    PLAIN_SOURCE,
    SYNC_TARGETS,
    TRUSTED_SOURCE,
    corpus_files,
    sip_server_target,
)


@pytest.mark.parametrize("area", sorted(SYNC_TARGETS))
def test_corpus_replays_cleanly(area: str) -> None:
    for path in corpus_files(area):
        SYNC_TARGETS[area](path.read_bytes())  # raises on a regression; the file names the input


def test_corpus_has_inputs() -> None:
    assert corpus_files("sip_server") and corpus_files("config")


async def test_server_corpus_replays_cleanly(tmp_path: Path) -> None:
    async with sip_server_target(tmp_path) as target:
        for path in corpus_files("sip_server"):
            for source in (TRUSTED_SOURCE, PLAIN_SOURCE):
                await target.feed(path.read_bytes(), source)
                await asyncio.sleep(0.005)
        assert target.server.stats.handler_errors == 0  # type: ignore[attr-defined]
