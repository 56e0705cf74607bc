"""A fuzz campaign over ccpbx's input parsers and the SIP server's whole UAS path (not part of the test run).

    python benchmarks/fuzz.py [--total N] [--seed S] [--workers W] [--json FILE] [--save/--no-save]

Areas (the entry points are in tests/fuzz_targets.py, which tests/test_fuzz_corpus.py replays in CI):

- ``sip``        ``parse_message`` (datagram and stream framing) and serialising what parsed;
- ``sip_server`` the real ``SipServer`` without sockets: endpoint, transactions, admission, registrar,
                 subscriptions, trunks, calls (trusted and untrusted sources);
- ``sdp``        ``SessionDescription.parse``, ``SdpSession.answer`` and ``process_answer``;
- ``rtp``        ``RtpPacket.parse``, ``parse_rtcp``, ``TelephoneEvent.parse`` and the media engine's receive
                 path (a transcoded and a relayed bridge, ticking);
- ``config``     ``load_config`` on a file.

Inputs are half mutations of golden inputs (tests/data/, the shipped config and profiles, packets built by our
own serialisers) and half grammar-aware generation. The seed is fixed, so a run is repeatable. The outcome per
area must be "parsed" or "refused with the package's own error"; anything else is counted by exception type and
location, and the first inputs of each crash class are saved to tests/data/fuzz_corpus/<area>/<hash>.bin.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import random
import struct
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz_targets import (  # noqa: E402
    CORPUS_DIR,
    PLAIN_SOURCE,
    SYNC_TARGETS,
    TRUSTED_SOURCE,
    HandlerCrashError,
    crash_location,
    sip_server_target,
)

# Share of the default 10^6 inputs per area, sized by measured rates so the run takes well under 20 minutes on
# two cores (the server path is ~50x slower per input than the parsers).
SHARES = {"sip": 0.27, "sip_server": 0.15, "sdp": 0.20, "rtp": 0.28, "config": 0.10}
SAVE_PER_CLASS = 3  # inputs kept per (exception type, location): enough to replay, not thousands of files
CHUNK = 25_000

# ---- golden inputs ------------------------------------------------------------------------------------------------


def sip_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((ROOT / "tests" / "data" / "sip").rglob("*.sip"))]


SDP_GOLDEN = [
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:30\r\na=sendrecv\r\n",
    b"v=0\r\no=user 53655765 2353687637 IN IP4 192.0.2.9\r\ns=call\r\nt=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0 96\r\nc=IN IP4 192.0.2.9\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n"
    b"m=video 5006 RTP/AVP 31\r\nc=IN IP4 192.0.2.9\r\n",
    b"v=0\r\no=- 2 2 IN IP6 2001:db8::1\r\ns= \r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n"
    b"m=audio 0 RTP/AVP 0\r\nm=audio 6000 RTP/SAVP 18 8\r\na=rtpmap:18 G729/8000\r\na=ptime:60\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
    b"v=0\r\no=- 3 3 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 7000 RTP/AVP 97 0\r\n"
    b"a=rtpmap:97 pcma/8000/1\r\na=maxptime:40\r\na=inactive\r\na=rtcp:7001\r\n",
]


def sdp_seeds() -> list[bytes]:
    out = list(SDP_GOLDEN)
    for data in sip_seeds():
        _, _, body = data.partition(b"\r\n\r\n")
        if body.startswith(b"v=0"):
            out.append(body)
    return out


def rtp_seeds() -> list[bytes]:
    from ccpbx.media.rtp import (
        Bye,
        ReceiverReport,
        ReportBlock,
        RtpPacket,
        SenderReport,
        SourceDescription,
        serialize_rtcp,
    )
    from ccpbx.media.telephone_event import TelephoneEvent

    out = []
    for pt, size in ((0, 160), (8, 160), (8, 240), (0, 80), (0, 320), (8, 480), (101, 4)):
        payload = TelephoneEvent(5, False, 10, 800).serialize() if pt == 101 else bytes(range(size % 256)) * 2
        out.append(RtpPacket(payload_type=pt, sequence=7, timestamp=1234, ssrc=99, marker=True,
                             payload=payload[:size]).serialize())
    block = ReportBlock(99, 3, 10, 1000, 20, 5, 6)
    out.append(serialize_rtcp([SenderReport(99, 1 << 40, 160, 10, 1600, (block,)),
                               SourceDescription.cname(99, "fuzz@host")]))
    out.append(serialize_rtcp([ReceiverReport(98, (block, block)), Bye((98,))]))
    return out


def config_seeds() -> list[bytes]:
    files = [ROOT / "pbx" / "default_config.toml", *sorted((ROOT / "pbx" / "profiles").glob("*.toml"))]
    out = [p.read_bytes() for p in files]
    out.append(b'[sip]\nport = 5070\n[[dialplan.rule]]\nmatch = "_9X."\ndestination = "hangup:"\n'
               b'[[group]]\nname = "sales"\nnumber = "600"\nmembers = ["1001", "1002"]\n'
               b'[[conference]]\nname = "standup"\nnumber = "800"\npin = "1234"\n')
    return out


# ---- mutation -----------------------------------------------------------------------------------------------------

INTERESTING = [b"\xff", b"\xfe\xff", b"\xc3(", b"\x00", b"\r\n", b"\n", b"\r", b" ", b"\t", b";", b",", b":", b"=",
               b"<", b">", b'"', b"\\", b"%", b"%0", b"@", b"[", b"]", b"/", b"*", b"0", b"-1", b"65536",
               b"4294967296", b"99999999999999999999", b"1e9", b"nan", b"\xe2\x80\xae", b"\xed\xa0\x80",
               b"sip:", b"sips:", b"tel:", b"z9hG4bK", b";tag=", b";branch=", b";rport", b"[::1]", b"0.0.0.0",
               b"Content-Length: 0\r\n", b"\r\n\r\n", b"a=", b"m=audio 0 RTP/AVP 0\r\n", b"=[", b"{}", b"'''"]
NUMBERS = [b"0", b"1", b"-1", b"127", b"128", b"255", b"256", b"65535", b"65536", b"2147483647", b"2147483648",
           b"4294967295", b"4294967296", b"18446744073709551616", b"1" * 40, b"00000000001", b"1.5", b"-0", b"+1"]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5, 8))):
        op = rng.randrange(11)
        n = len(buf)
        pos = rng.randrange(n + 1)
        if op == 0 and n:  # flip a bit
            buf[pos % n] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # set a random byte
            buf[pos % n] = rng.randrange(256)
        elif op == 2:  # insert an interesting token
            buf[pos:pos] = rng.choice(INTERESTING)
        elif op == 3 and n:  # delete a chunk
            buf[pos:pos + rng.randrange(1, 40)] = b""
        elif op == 4 and n:  # duplicate a chunk
            start = rng.randrange(n)
            buf[pos:pos] = buf[start:start + rng.randrange(1, 80)]
        elif op == 5:  # splice in part of another seed
            other = rng.choice(seeds)
            if other:
                start = rng.randrange(len(other))
                buf[pos:pos] = other[start:start + rng.randrange(1, 200)]
        elif op == 6:  # replace a number with an interesting one
            digits = [i for i in range(n) if 48 <= buf[i] <= 57]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and 48 <= buf[j] <= 57:
                    j += 1
                buf[i:j] = rng.choice(NUMBERS)
        elif op == 7:  # line operations: delete, duplicate or swap lines
            lines = bytes(buf).split(b"\n")
            if len(lines) > 1:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                kind = rng.randrange(3)
                if kind == 0:
                    del lines[i]
                elif kind == 1:
                    lines.insert(j, lines[i])
                else:
                    lines[i], lines[j] = lines[j], lines[i]
                buf = bytearray(b"\n".join(lines))
        elif op == 8:  # truncate
            del buf[pos:]
        elif op == 9:  # repeat a short run many times (length limits, quadratic paths)
            if n:
                start = rng.randrange(n)
                buf[pos:pos] = buf[start:start + rng.randrange(1, 4)] * rng.choice((10, 100, 1000))
        else:  # non-UTF-8 bytes into a token
            buf[pos:pos] = rng.choice((b"\xff", b"\x80", b"\xc3", b"\xe9", b"\xfe\xfe"))
    return bytes(buf[:70_000])


# ---- grammar-aware generation ---------------------------------------------------------------------------------------

CRYPTO_LINE = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
DISPLAY_NAMES = ["", '"Alice" ', "Bob ", '"" ', '"M\udcfcller" ', '"\\"" ', "\udcff "]
METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "REFER", "INFO",
           "MESSAGE", "UPDATE", "PRACK", "PUBLISH", "FOO"]


def pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def gen_token(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
    if rng.random() < 0.1:
        return rng.choice(["", "\udcff", "é", "a b", "a;b", "a,b", "a\"b", "*", "x" * 300])
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))


def gen_uri(rng: random.Random) -> str:
    user = pick(rng, "1001", "1002", "alice", "9", "*8", "**1001", "+15551234", "600", "800", "", "%31001",
                "a;b=c", gen_token(rng))
    host = pick(rng, "127.0.0.1", "10.9.9.9", "ccpbx", "[::1]", "example.com", "192.0.2.1:5070", "h:0", "h:99999")
    params = "".join(pick(rng, "", ";transport=udp", ";transport=tcp", ";lr", ";user=phone", ";maddr=10.0.0.1",
                          f";{gen_token(rng)}={gen_token(rng)}") for _ in range(rng.randrange(3)))
    scheme = pick(rng, "sip", "sip", "sip", "sips", "tel", "urn")
    return f"{scheme}:{user}@{host}{params}" if user else f"{scheme}:{host}{params}"


def gen_sdp(rng: random.Random) -> str:
    lines = ["v=0", f"o=- {rng.randrange(10**6)} {rng.randrange(3)} IN IP4 192.0.2.{rng.randrange(256)}", "s=-"]
    if rng.random() < 0.8:
        lines.append(pick(rng, "c=IN IP4 192.0.2.7", "c=IN IP4 0.0.0.0", "c=IN IP6 ::1", "c=IN IP4 224.2.1.1/127",
                          "c=IN IP4", "c=IN XX 1.2.3.4"))
    lines.append(pick(rng, "t=0 0", "t=1 2", "t=x"))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        pts = [pick(rng, "0", "8", "101", "96", "97", "18", "9", "127", "128", "x") for _ in range(rng.randrange(1, 5))]
        proto = pick(rng, "RTP/AVP", "RTP/AVP", "RTP/SAVP", "RTP/AVPF", "UDP/TLS/RTP/SAVPF", "udp")
        lines.append(f"m={pick(rng, 'audio', 'audio', 'video', 'image')} "
                     f"{pick(rng, '4000', '0', '65535', '65536', '4000/2')} {proto} {' '.join(pts)}")
        for pt in pts:
            if rng.random() < 0.6:
                enc = pick(rng, "PCMU", "PCMA", "pcma", "telephone-event", "G729", "opus")
                lines.append(f"a=rtpmap:{pt} {enc}/{pick(rng, '8000', '48000', '8000/2', '0', 'x')}")
        for _ in range(rng.randrange(4)):
            lines.append(pick(rng, "a=ptime:10", "a=ptime:20", "a=ptime:30", "a=ptime:60", "a=ptime:0",
                              "a=ptime:999999", "a=maxptime:40", "a=sendonly", "a=recvonly", "a=inactive",
                              "a=sendrecv", "a=fmtp:101 0-16", "a=fmtp:101 0-15,66,70", "a=fmtp:101 16-0",
                              "a=fmtp:101 0-99999", "a=rtcp:4001", "a=rtcp:x", CRYPTO_LINE, "a=ice-ufrag:x",
                              f"a={gen_token(rng)}"))
    return "\r\n".join(lines) + pick(rng, "\r\n", "\n", "")


def gen_sip(rng: random.Random) -> bytes:
    method = rng.choice(METHODS)
    n = rng.randrange(10**9)
    call_id = pick(rng, f"fz{n}", f"fz{n}@10.9.9.9", gen_token(rng))
    ftag = pick(rng, f"f{n}", gen_token(rng))
    headers = [
        f"Via: SIP/2.0/{pick(rng, 'UDP', 'TCP', 'TLS', 'WS')} {pick(rng, '10.9.9.9:5060', '198.51.100.7', '[::1]:5')}"
        f";branch={pick(rng, f'z9hG4bK{n}', gen_token(rng), 'z9hG4bK')}{pick(rng, ';rport', '', ';received=1.2.3.4')}",
        f"From: {rng.choice(DISPLAY_NAMES)}<{gen_uri(rng)}>;tag={ftag}",
        f"To: <{gen_uri(rng)}>{pick(rng, '', '', f';tag={gen_token(rng)}')}",
        f"Call-ID: {call_id}",
        f"CSeq: {pick(rng, '1', '2', '101', str(rng.randrange(2**31)), '0')} "
        f"{method if rng.random() < 0.9 else rng.choice(METHODS)}",
        f"Max-Forwards: {pick(rng, '70', '0', '1', '255')}",
    ]
    extra = ["Contact: <sip:1001@10.9.9.9:5060>", "Contact: *", "Contact: <sip:1001@10.9.9.9>;expires=0",
             f"Expires: {pick(rng, '0', '60', '3600', '4294967295')}", "Supported: 100rel, timer, replaces",
             "Require: 100rel", "Session-Expires: 90;refresher=uac", "Min-SE: 90", "Event: dialog",
             "Event: message-summary", "Event: refer", "Event: presence", "Accept: application/dialog-info+xml",
             f"Refer-To: <{gen_uri(rng)}>", "Refer-To: <sip:1002@ccpbx?Replaces=a%3Bto-tag%3Db%3Bfrom-tag%3Dc>",
             "Replaces: abc;to-tag=1;from-tag=2", "Referred-By: <sip:1001@ccpbx>", "RAck: 1 1 INVITE", "RSeq: 1",
             "Route: <sip:10.0.0.1;lr>", "Record-Route: <sip:10.0.0.2;lr>",
             'Authorization: Digest username="1001", realm="ccpbx", nonce="x", uri="sip:ccpbx", response="0"',
             'Proxy-Authorization: Digest username="1001", realm="ccpbx", nonce="1.2.abc", uri="sip:1002@ccpbx", '
             'response="00", qop=auth, nc=00000001, cnonce="c", algorithm=SHA-256',
             "Subscription-State: active;expires=60", "Reason: SIP;cause=200;text=\"x\"",
             "P-Asserted-Identity: <sip:+15551234@trunk>", "Diversion: <sip:100@x>", "Allow: INVITE, BYE",
             f"{gen_token(rng)}: {gen_token(rng)}"]
    headers += rng.sample(extra, rng.randrange(6))
    body = b""
    kind = rng.random()
    if kind < 0.4:
        body = gen_sdp(rng).encode("utf-8", "surrogateescape")
        headers.append("Content-Type: application/sdp")
    elif kind < 0.5:
        body = pick(rng, "Signal=5\r\nDuration=160\r\n", "Signal=*\r\n", "Signal=\r\n", "5").encode()
        headers.append(f"Content-Type: {pick(rng, 'application/dtmf-relay', 'application/dtmf')}")
    elif kind < 0.55:
        body = b"hello " * rng.randrange(400)
        headers.append("Content-Type: text/plain")
    rng.shuffle(headers)
    if rng.random() < 0.8:
        headers.append(f"Content-Length: {len(body) if rng.random() < 0.9 else rng.randrange(2000)}")
    start = f"{method} {gen_uri(rng)} SIP/2.0" if rng.random() < 0.92 else \
        f"SIP/2.0 {pick(rng, '100', '180', '200', '401', '407', '487', '999')} Reason"
    text = start + "\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return text.encode("utf-8", "surrogateescape") + body


def gen_rtp(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.6:
        version = 2 if rng.random() < 0.9 else rng.randrange(4)
        padding = rng.random() < 0.1
        extension = rng.random() < 0.1
        cc = rng.randrange(16) if rng.random() < 0.1 else 0
        pt = rng.choice((0, 8, 101, 0, 8, 96, 13, 127, 72, 73))
        b0 = version << 6 | padding << 5 | extension << 4 | cc
        header = struct.pack("!BBHII", b0, (rng.random() < 0.1) << 7 | pt, rng.randrange(65536),
                             rng.randrange(2**32), rng.choice((1234, 99, rng.randrange(2**32))))
        header += bytes(4 * cc)
        if extension:
            header += struct.pack("!HH", 0xBEDE, rng.choice((0, 1, 2, 1000))) + bytes(4 * rng.randrange(3))
        if pt == 101:
            payload = struct.pack("!BBH", rng.randrange(256), rng.randrange(256), rng.randrange(65536))
            payload = payload[: rng.choice((4, 4, 4, 0, 3, 8))] if rng.random() < 0.3 else payload
        else:
            size = rng.choice((160, 160, 80, 240, 320, 480, 0, 1, 159, 161, 1000))
            payload = bytes(rng.randrange(256) for _ in range(min(size, 8))) * (size // 8 + 1)
            payload = payload[:size]
        if padding:
            payload += bytes([rng.randrange(256)]) * rng.choice((1, 2, 4))
        return header + payload
    # RTCP compound: random packets with random counts and lengths
    out = b""
    for _ in range(rng.randrange(1, 4)):
        ptype = rng.choice((200, 201, 202, 203, 204, 205, 206, 207))
        count = rng.randrange(32)
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 4, 24, 28, 48, 20, 7))))
        length = (len(body) // 4) if rng.random() < 0.8 else rng.randrange(65536)
        out += struct.pack("!BBH", 0x80 | (rng.random() < 0.1) << 5 | count, ptype, length) + body
    return out


_CONFIG_TREE: dict[str, Any] | None = None
CONFIG_VALUES: list[Any] = [0, 1, -1, 65536, 5060, 2**63, 0.5, True, False, "", "x", "0.0.0.0", "::", "1001",
                            "_9X.", "hangup:", "extension:1001", "ivr:nosuch", "trunk:x", "queue:support",
                            "voicemail:1001", "conference:standup", "group:sales", "\udcff", "10.0.0.0/8", "a" * 500,
                            [], ["1001"], [1, 2], {}, {"x": 1}, "PCMU", "PCMA", "G729", "rrmemory", "08:00-17:00",
                            "mon-fri", "Europe/Berlin", "Nowhere/City"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\\ud", "\\\\ud")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _toml(tree: dict[str, Any]) -> str:
    """A TOML writer just big enough for the config's shape: [section] tables, [[arrays]] of tables."""
    out: list[str] = []
    for name, section in tree.items():
        if isinstance(section, dict):
            out.append(f"[{name}]")
            for key, value in section.items():
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    for item in value:
                        out.append(f"[[{name}.{key}]]")
                        out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                    out.append(f"[{name}]" if section else "")
                else:
                    out.append(f"{key} = {_toml_value(value)}")
        elif isinstance(section, list) and all(isinstance(v, dict) for v in section):
            for item in section:
                out.append(f"[[{name}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        else:
            out.insert(0, f"{name} = {_toml_value(section)}")
    return "\n".join(out) + "\n"


def gen_config(rng: random.Random) -> bytes:
    global _CONFIG_TREE
    if _CONFIG_TREE is None:
        base = tomllib.loads(config_seeds()[-1].decode())
        base.update(tomllib.loads((ROOT / "pbx" / "default_config.toml").read_text()))
        _CONFIG_TREE = base
    tree = json.loads(json.dumps(_CONFIG_TREE))
    sections = [k for k, v in tree.items() if isinstance(v, dict)]
    for _ in range(rng.randrange(1, 6)):
        section = rng.choice([*sections, "group", "conference", "queue", "trunk", "agent", "ivr"])
        op = rng.randrange(4)
        if section in ("group", "conference", "queue", "trunk", "agent", "ivr"):
            items = tree.setdefault(section, [])
            if isinstance(items, list):
                items.append({pick(rng, "name", "number", "members", "strategy", "pin", "host", "agents",
                                   "destination", "ring_time"): rng.choice(CONFIG_VALUES) for _ in range(3)})
            continue
        table = tree[section]
        keys = list(table)
        if op == 0 and keys:  # a value of the wrong type or out of range
            table[rng.choice(keys)] = rng.choice(CONFIG_VALUES)
        elif op == 1 and keys:
            del table[rng.choice(keys)]
        elif op == 2:
            table[gen_token(rng).replace("\udcff", "x") or "k"] = rng.choice(CONFIG_VALUES)
        elif keys:  # a number nudged to its edges
            key = rng.choice(keys)
            if isinstance(table[key], int) and not isinstance(table[key], bool):
                table[key] = rng.choice((0, -1, table[key] + 1, table[key] * 1000, 2**31))
    return _toml(tree).encode("utf-8", "surrogateescape")


GENERATORS = {"sip": gen_sip, "sip_server": gen_sip, "sdp": lambda r: gen_sdp(r).encode("utf-8", "surrogateescape"),
              "rtp": gen_rtp, "config": gen_config}


def seeds_for(area: str) -> list[bytes]:
    return {"sip": sip_seeds, "sip_server": sip_seeds, "sdp": sdp_seeds, "rtp": rtp_seeds,
            "config": config_seeds}[area]()


def next_input(rng: random.Random, area: str, seeds: list[bytes]) -> bytes:
    if rng.random() < 0.5:
        return GENERATORS[area](rng)
    return mutate(rng, rng.choice(seeds), seeds)


# ---- running ------------------------------------------------------------------------------------------------------


def _record(result: dict[str, Any], area: str, data: bytes, exc: BaseException, save: bool) -> None:
    original = exc.original if isinstance(exc, HandlerCrashError) else exc
    where = exc.where if isinstance(exc, HandlerCrashError) else crash_location(exc)
    key = f"{type(original).__name__} @ {where}"
    crashes = result["crashes"]
    entry = crashes.setdefault(key, {"count": 0, "saved": [], "message": str(original)[:200]})
    entry["count"] += 1
    if save and len(entry["saved"]) < SAVE_PER_CLASS:
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = CORPUS_DIR / area
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{digest}.bin").write_bytes(data)
        entry["saved"].append(f"{area}/{digest}.bin")


def run_job(job: tuple[str, int, int, bool]) -> dict[str, Any]:
    area, count, seed, save = job
    rng = random.Random(seed)
    seeds = seeds_for(area)
    result: dict[str, Any] = {"area": area, "inputs": 0, "seconds": 0.0, "crashes": {}}
    started = time.perf_counter()
    if area == "sip_server":
        asyncio.run(_run_server(rng, seeds, count, result, save))
    else:
        target = SYNC_TARGETS[area]
        for _ in range(count):
            data = next_input(rng, area, seeds)
            try:
                target(data)
            except Exception as exc:
                _record(result, area, data, exc, save)
            result["inputs"] += 1
    result["seconds"] = time.perf_counter() - started
    return result


async def _run_server(rng: random.Random, seeds: list[bytes], count: int, result: dict[str, Any],
                      save: bool) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    with tempfile.TemporaryDirectory() as tmp:
        async with sip_server_target(Path(tmp)) as target:
            for i in range(count):
                data = next_input(rng, "sip_server", seeds)
                source = TRUSTED_SOURCE if rng.random() < 0.5 else PLAIN_SOURCE
                try:
                    await target.feed(data, source, settle=i % 8 == 0)
                except Exception as exc:
                    _record(result, "sip_server", data, exc, save)
                result["inputs"] += 1
        result["responses"] = target.responses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=1_000_000, help="inputs across all areas (default 10^6)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--areas", default=",".join(SHARES), help="comma-separated subset of " + ",".join(SHARES))
    parser.add_argument("--json", default="benchmarks/results/fuzz.json")
    parser.add_argument("--no-save", action="store_true", help="do not write crashing inputs to the corpus")
    args = parser.parse_args(argv)
    areas = args.areas.split(",")
    share_sum = sum(SHARES[a] for a in areas)
    jobs: list[tuple[str, int, int, bool]] = []
    for area in areas:
        left = round(args.total * SHARES[area] / share_sum)
        part = 0
        while left > 0:
            n = min(CHUNK if area != "sip_server" else CHUNK // 5, left)
            jobs.append((area, n, args.seed * 1000 + len(jobs), not args.no_save))
            left -= n
            part += 1
    jobs.sort(key=lambda j: j[0] != "sip_server")  # the slowest chunks first, so both cores stay busy
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers, maxtasksperchild=1) as pool:
        results = pool.map(run_job, jobs, chunksize=1)
    wall = time.perf_counter() - started
    merged: dict[str, dict[str, Any]] = {}
    for r in results:
        m = merged.setdefault(r["area"], {"area": r["area"], "inputs": 0, "cpu_seconds": 0.0, "crashes": {}})
        m["inputs"] += r["inputs"]
        m["cpu_seconds"] += r["seconds"]
        for key, entry in r["crashes"].items():
            e = m["crashes"].setdefault(key, {"count": 0, "saved": [], "message": entry["message"]})
            e["count"] += entry["count"]
            e["saved"] = (e["saved"] + entry["saved"])[:SAVE_PER_CLASS]
    print(f"{'area':<11} {'inputs':>10} {'cpu s':>8} {'inputs/s':>9} {'crashes':>8} {'classes':>8}")
    for m in merged.values():
        crashes = sum(e["count"] for e in m["crashes"].values())
        rate = m["inputs"] / m["cpu_seconds"] if m["cpu_seconds"] else 0.0
        print(f"{m['area']:<11} {m['inputs']:>10,} {m['cpu_seconds']:>8.1f} {rate:>9,.0f} {crashes:>8,} "
              f"{len(m['crashes']):>8}")
    total = sum(m["inputs"] for m in merged.values())
    print(f"{'total':<11} {total:>10,}   wall {wall:.1f} s, seed {args.seed}, {args.workers} workers")
    for m in merged.values():
        for key, e in sorted(m["crashes"].items(), key=lambda kv: -kv[1]["count"]):
            print(f"  {m['area']}: {e['count']:>7,} x {key}: {e['message'][:100]!r}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": args.seed, "total": total, "wall_seconds": wall,
                               "areas": list(merged.values())}, indent=2) + "\n")
    return 1 if any(m["crashes"] for m in merged.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
