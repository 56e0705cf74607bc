"""Hostile SIP junk for the memory tests and ``benchmarks/soak.py --hostile`` (imports nothing of ccpbx)."""

from __future__ import annotations

import random


def junk(i: int, rnd: random.Random) -> tuple[bytes, tuple[str, str, int]]:
    """One hostile datagram: a new Call-ID, branch and tag every time, from many addresses."""
    host, port = f"10.9.{i % 200}.{i % 250 + 1}", 10_000 + i % 50_000
    cid, tag, branch = f"{rnd.getrandbits(64):x}@junk", f"{rnd.getrandbits(32):x}", f"z9hG4bK{rnd.getrandbits(64):x}"
    head = (f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{i}@evil.example>;tag={tag}\r\nCall-ID: {cid}\r\n")
    contact = f"Contact: <sip:x@{host}:{port}>\r\n"
    kind = i % 6
    if kind == 0:  # an INVITE that never answers its 407 (no ACK: Timer H)
        text = (f"INVITE sip:1002@127.0.0.1 SIP/2.0\r\n{head}To: <sip:1002@127.0.0.1>\r\nCSeq: 1 INVITE\r\n"
                f"{contact}Content-Length: 0\r\n\r\n")
    elif kind == 1:  # REGISTER guessing a user and a password, with a forged nonce
        text = (f"REGISTER sip:127.0.0.1 SIP/2.0\r\n{head}To: <sip:u{i}@127.0.0.1>\r\nCSeq: 1 REGISTER\r\n{contact}"
                f'Authorization: Digest username="u{i}", realm="ccpbx", nonce="1.2.3", uri="sip:127.0.0.1", '
                f'response="0123456789abcdef0123456789abcdef"\r\nContent-Length: 0\r\n\r\n')
    elif kind == 2:  # a response nobody asked for
        text = (f"SIP/2.0 200 OK\r\n{head}To: <sip:1002@127.0.0.1>;tag=x{tag}\r\nCSeq: 1 INVITE\r\n"
                f"Content-Length: 0\r\n\r\n")
    elif kind == 3:
        text = (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n{head}To: <sip:127.0.0.1>\r\nCSeq: 1 OPTIONS\r\n"
                f"Content-Length: 0\r\n\r\n")
    elif kind == 4:  # BYE for no dialog
        text = (f"BYE sip:1002@127.0.0.1 SIP/2.0\r\n{head}To: <sip:1002@127.0.0.1>;tag=t{tag}\r\nCSeq: 2 BYE\r\n"
                f"Content-Length: 0\r\n\r\n")
    else:
        text = (f"SUBSCRIBE sip:1002@127.0.0.1 SIP/2.0\r\n{head}To: <sip:1002@127.0.0.1>\r\nCSeq: 1 SUBSCRIBE\r\n"
                f"Event: dialog\r\n{contact}Content-Length: 0\r\n\r\n")
    return text.encode(), ("udp", host, port)
