"""An RTP echo for the concurrency benchmark: one UDP socket that sends every datagram back to its sender.

The SIPp callee answers the calls, but its SDP names this socket instead of SIPp's own ``-rtp_echo``: SIPp reads
its echo socket with the system's default receive buffer (212 KB on Debian; ``-buff_size`` sizes only its SIP
sockets), and a few hundred calls' packets arriving together overflowed it, so the benchmark's loss from 300
calls up was SIPp's. This one asks for a 16 MB buffer (``SO_RCVBUFFORCE`` as root, else up to
``net.core.rmem_max``) and does nothing but echo, in a process of its own.

    python benchmarks/echo.py --port 40000   # prints "ready" once bound; runs until killed
"""

from __future__ import annotations

import argparse
import socket
import sys

RECEIVE_BUFFER = 16 << 20
SO_RCVBUFFORCE = 33  # Linux: past net.core.rmem_max, as root


def bind_echo_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    return sock


def echo_forever(sock: socket.socket) -> None:
    """Send each datagram back where it came from (blocking: the process does nothing else)."""
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, addr = recvfrom(2048)
        try:
            sendto(data, addr)
        except OSError:  # a full send buffer or a closed port (ICMP): the packet is lost, as a phone's would be
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    sock = bind_echo_socket(args.host, args.port)
    print("ready", flush=True)
    try:
        echo_forever(sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
