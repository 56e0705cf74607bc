"""A server with nothing to do sleeps: no timer for the registration flusher, probes of the loop at rest.

A wake-up of an idle process costs ~0.1 ms of CPU on a virtual machine (``benchmarks/run.py idle``); the
housekeeping that woke the server every 200 ms and 50 times a second for nothing made an idle ``ccpbx serve``
cost three times what it did before it (see README, nineteenth run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ccpbx.pbx.app import FLUSH_INTERVAL_S
from ccpbx.pbx.location import Binding

from .simnet import registered, sim_pbx

pytestmark = pytest.mark.timeout(60)

USERS = {"1001": "pw-1001"}


async def test_the_registration_flusher_writes_nothing_at_rest_and_a_change_nobody_waits_for_within_its_interval(
        tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, "", USERS) as server:
        phone = await registered(server, "1001", USERS["1001"])  # answered after its binding was committed
        writes: list[tuple[int, int]] = []
        write = server.store.write_bindings

        async def counted(saved: Sequence[Binding], deleted: Sequence[tuple[str, str]]) -> None:
            writes.append((len(saved), len(deleted)))
            await write(saved, deleted)

        server.store.write_bindings = counted  # type: ignore[method-assign]
        flushes = [0]
        flush = server._flush

        async def counted_flush() -> None:
            flushes[0] += 1
            await flush()

        server._flush = counted_flush  # type: ignore[method-assign]
        await asyncio.sleep(FLUSH_INTERVAL_S * 3)
        # nothing to write: the flusher waits without a timer (it woke and flushed nothing every 200 ms before)
        assert (flushes[0], writes) == (0, [])

        # a change no REGISTER's answer waits for (a SIP worker's refresh goes this way): written within the interval
        binding = next(iter(server.location)).refreshed(expires_at=time.time() + 600)
        server.location.put(binding)
        server._binding_changed(binding, True)
        for _ in range(100):  # bounded: 1 s at most
            if writes:
                break
            await asyncio.sleep(0.01)
        assert writes == [(1, 0)] and flushes[0] == 1
        stored = [b for b in await server.store.load_bindings() if b.aor == "1001"]
        assert [b.expires_at for b in stored] == [binding.expires_at]
        await asyncio.sleep(FLUSH_INTERVAL_S * 2)
        assert (flushes[0], writes) == (1, [(1, 0)])  # and asleep again
        await phone.close()


async def test_a_running_server_probes_its_loop_less_often_without_sip_messages(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, "", USERS) as server:
        watch = server.loop_watch
        watch.rest_after_s = 0.05  # a second in service; shorter here
        for _ in range(300):  # bounded: 3 s at most
            if watch.resting:
                break
            await asyncio.sleep(0.01)
        assert watch.resting
        watch.rest_after_s = 60.0  # from the next message on, no rest again within this test
        phone = await registered(server, "1001", USERS["1001"])  # SIP work: probing every 20 ms again
        for _ in range(100):  # bounded: 1 s at most (the next probe at rest comes within 100 ms)
            if not watch.resting:
                break
            await asyncio.sleep(0.01)
        assert not watch.resting
        await phone.close()
