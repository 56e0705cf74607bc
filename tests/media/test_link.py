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
        async with asyncio.timeout(10):
            while len(got) < 1 + len(pipes):
                await asyncio.sleep(0.01)
        assert got[0][0] == "blob" and np.array_equal(got[0][1], blob)
        assert [m[1] for m in got[1:]] == list(range(len(pipes)))
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
