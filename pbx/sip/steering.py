"""Kernel steering of SIP requests to worker processes sharing the UDP port (Linux).

The server's UDP socket and each worker's join one ``SO_REUSEPORT`` group on the same address and port, the
server's first. A classic BPF program attached to the group (``SO_ATTACH_REUSEPORT_CBPF``) picks, for every
datagram, the index of the socket that gets it: a response (its first four bytes are ``SIP/``), a BYE and
anything shorter than four bytes go to index 0, the server; every other datagram (requests, keep-alives) goes
to a worker (index 1..N, by the sender's UDP port when N > 1, so one phone's requests all go to one worker, in
the order it sent them). A worker answers what it can (challenges, leased refreshes) and passes the rest on in
order over its link (:mod:`ccpbx.pbx.sip_worker`); responses, which only the server's transactions can match,
never make that detour, nor do BYEs, which no worker answers: a BYE ends a dialog the server confirmed, so it
cannot overtake the request that set the dialog up (a request of the same dialog still on its way through a
worker, an INFO say, may then come after the BYE, and is answered 481 as a late one over UDP would be).

When a worker dies its socket leaves the group; an index past the end makes the kernel fall back to its own hash
over the sockets left, the server's among them: requests then reach the server, which handles them as always.

The program sees the datagram from its UDP payload on (the kernel pulls the UDP header before running it); the
sender's port is read relative to the network header (``SKF_NET_OFF``), assuming no IPv4 options or IPv6
extension headers (with them the index is still in range: only the spread changes).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["BYE_PREFIX", "RESPONSE_PREFIX", "SteeringUnavailableError", "attach_request_steering",
           "request_steering_program", "reuse_port_socket", "steering_available"]

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
SKF_NET_OFF = -0x100000

# classic BPF opcodes (linux/bpf_common.h)
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_H = 0x00, 0x08
BPF_ABS = 0x20
BPF_K, BPF_A = 0x00, 0x10
BPF_ADD, BPF_MOD = 0x00, 0x90
BPF_JEQ = 0x10

RESPONSE_PREFIX = b"SIP/"
BYE_PREFIX = b"BYE "
_IP_HEADER_BYTES: dict[int, int] = {socket.AF_INET: 20, socket.AF_INET6: 40}


class SteeringUnavailableError(OSError):
    """The kernel refused the reuse-port group or its program (not Linux, or too old)."""


def steering_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k


def request_steering_program(workers: int, family: int) -> list[Instruction]:
    """The program: responses, BYEs (and datagrams under four bytes) to index 0, the server; the rest to index
    1..``workers``."""
    if workers < 1:
        raise ValueError(f"at least one worker, got {workers}")
    prefix = int.from_bytes(RESPONSE_PREFIX, "big")
    bye = int.from_bytes(BYE_PREFIX, "big")
    if workers == 1:
        return [
            (BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),  # A = the payload's first four bytes (too short: return 0)
            (BPF_JMP | BPF_JEQ | BPF_K, 2, 0, prefix),
            (BPF_JMP | BPF_JEQ | BPF_K, 1, 0, bye),
            (BPF_RET | BPF_K, 0, 0, 1),
            (BPF_RET | BPF_K, 0, 0, 0),
        ]
    source_port = SKF_NET_OFF + _IP_HEADER_BYTES[family]
    return [
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        (BPF_JMP | BPF_JEQ | BPF_K, 5, 0, prefix),
        (BPF_JMP | BPF_JEQ | BPF_K, 4, 0, bye),
        (BPF_LD | BPF_H | BPF_ABS, 0, 0, source_port & 0xFFFFFFFF),  # A = the sender's UDP port
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, workers),
        (BPF_ALU | BPF_ADD | BPF_K, 0, 0, 1),
        (BPF_RET | BPF_A, 0, 0, 0),
        (BPF_RET | BPF_K, 0, 0, 0),
    ]


def attach_request_steering(sock: socket.socket, workers: int) -> None:
    """Attach :func:`request_steering_program` to ``sock``'s reuse-port group."""
    program = request_steering_program(workers, sock.family)
    code = b"".join(struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog, native layout
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise SteeringUnavailableError(exc.errno, f"cannot steer requests to SIP workers: {exc.strerror}") from None


def reuse_port_socket(host: str, port: int, family: int) -> socket.socket:
    """A UDP socket bound to ``host:port`` in that address's reuse-port group (the first one creates it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
