"""The control link of the media workers: frames, batching, descriptors passed in order, partial writes."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import numpy as np

from ccpbx.media.link import MAX_FDS_PER_FRAME, Link


async def test_batches_big_frames_and_descriptors_arrive_in_order() -> None:
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[Any] = []
    closed: list[str] = []
    a = Link(a_sock, lambda m: None, lambda: closed.append("a"))
    b = Link(b_sock, got.extend, lambda: closed.append("b"))
    pipes = [os.pipe() for _ in range(MAX_FDS_PER_FRAME + 10)]  # more than one frame's worth of descriptors
    try:
        blob = np.arange(4 << 20, dtype=np.int16)  # 8 MB: far more than the socket buffers, written in parts
        a.send(("blob", blob))
        for i, (r, _) in enumerate(pipes):
            a.send(("fd", i), [r])
        assert a.frames_out == 1  # the descriptors overflowed one frame: it left early, the rest follows
        assert a.pending_bytes > 0  # 8 MB cannot all be in the socket's buffers before the other end reads
        async with asyncio.timeout(10):
            while len(got) < 1 + len(pipes):
                await asyncio.sleep(0.01)
        assert got[0][0] == "blob" and np.array_equal(got[0][1], blob)
        assert [m[1] for m in got[1:]] == list(range(len(pipes)))
        assert a.pending_bytes == 0
        received = b.take_fds(len(pipes))
        for (_, w), fd in zip(pipes, received, strict=True):  # each descriptor is its pipe's read end
            os.write(w, b"x")
            assert os.read(fd, 1) == b"x"
            os.close(fd)
        a.close()
        async with asyncio.timeout(5):
            while "b" not in closed:
                await asyncio.sleep(0.01)
        assert closed == ["a", "b"]  # the other end saw the close
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        a.close()
        b.close()


async def test_frames_keep_a_minimum_gap_and_carry_several_iterations() -> None:
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[Any] = []
    gap = 0.2  # wide, so a slow machine cannot make the iterations below fall on both sides of it
    a = Link(a_sock, lambda m: None, lambda: None, min_gap_s=gap)
    b = Link(b_sock, got.extend, lambda: None)
    try:
        a.send("first")
        await asyncio.sleep(0)  # end of the iteration: nothing went out lately, so the frame leaves now
        await asyncio.sleep(0)
        assert a.frames_out == 1
        for i in range(3):  # three more iterations within the gap: held back, then one frame
            a.send(i)
            await asyncio.sleep(0)
        assert a.frames_out == 1
        async with asyncio.timeout(10):
            while len(got) < 4:
                await asyncio.sleep(0.01)
        assert got == ["first", 0, 1, 2]
        assert a.frames_out == 2
        assert b.frames_in == 2
    finally:
        a.close()
        b.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_descriptor_closed_before_its_frame_leaves_still_arrives_and_none_leak() -> None:
    """A channel that ends within the frame gap (its sockets closed, the number reused by the next call's
    socket) must neither break the link (it did: EBADF closed it, and the worker's calls were lost) nor send
    the wrong socket."""
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[Any] = []
    closed: list[str] = []
    before = _open_fds()
    a = Link(a_sock, lambda m: None, lambda: closed.append("a"), min_gap_s=0.05)
    b = Link(b_sock, got.extend, lambda: closed.append("b"))
    others: list[socket.socket] = []
    try:
        ports = []
        for i in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
            a.send(("open", i), [s.fileno()])
            s.close()  # before the frame leaves
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # likely takes the number just freed
            other.bind(("127.0.0.1", 0))
            others.append(other)
        async with asyncio.timeout(10):
            while len(got) < 20:
                await asyncio.sleep(0.01)
        assert closed == []
        received = b.take_fds(20)
        for fd, port in zip(received, ports, strict=True):
            s = socket.socket(fileno=fd)
            assert s.getsockname()[1] == port  # the socket named at send, not what has its number now
            s.close()
    finally:
        for other in others:
            other.close()
        a.close()
        b.close()
    assert _open_fds() == before - 2  # the pair's two ends are closed, and the link's duplicates once sent


async def test_descriptors_still_queued_when_the_link_closes_are_closed() -> None:
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    before = _open_fds()
    a = Link(a_sock, lambda m: None, lambda: None, min_gap_s=10.0)
    a.send("first")
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first frame left: the next waits out the 10 s gap
    r, w = os.pipe()
    a.send(("fd", 0), [r])
    a.close()
    os.close(r)
    os.close(w)
    b_sock.close()
    assert _open_fds() == before - 2  # the pair's two ends are closed, and nothing of the link's stays


def test_restarts_back_off_by_the_deaths_within_the_window() -> None:
    import collections

    from ccpbx.media.link import RESTART_BACKOFF_S, RESTART_WINDOW_S, restart_delay

    deaths: collections.deque[float] = collections.deque()
    assert [restart_delay(deaths, t) for t in (100.0, 101.0, 102.0, 103.0, 104.0)] == [
        RESTART_BACKOFF_S[0], RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[2], RESTART_BACKOFF_S[3], RESTART_BACKOFF_S[3]]
    assert restart_delay(deaths, 104.5 + RESTART_WINDOW_S) == RESTART_BACKOFF_S[0]  # the old deaths are forgotten
