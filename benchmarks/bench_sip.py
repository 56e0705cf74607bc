"""The SIP message parser's speed: a captured INVITE parsed and serialised again, messages per second (best of
three); and the same INVITE parsed and read as the stack reads a message on a call's way through it (Call-ID
five times, CSeq and the top Via four, From and To three: the typed accessors' share of a call). Registrations
per second under load are ``bench_register``; calls per second ``bench_calls``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import best_seconds_per_call, main_for

CAPTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "sip" / "captures" / "baresip_invite.sip"


def _target_s(quick: bool) -> float:
    return 0.05 if quick else 0.5  # how long each of the three runs lasts (some 2,000 or 20,000 messages)


def bench_parser(quick: bool) -> float:
    """Messages per second, parsed and serialised again."""
    from ccpbx.pbx.sip.message import parse_message

    data = CAPTURE.read_bytes()
    return 1.0 / best_seconds_per_call(lambda: parse_message(data).serialize(), 3, _target_s(quick))


def _parse_and_read(data: bytes) -> None:
    from ccpbx.pbx.sip.message import parse_message

    message = parse_message(data)
    for _ in range(5):
        message.call_id  # noqa: B018
    for _ in range(4):
        message.cseq  # noqa: B018
        message.via  # noqa: B018
    for _ in range(3):
        message.from_  # noqa: B018
        message.to  # noqa: B018


def bench_parse_and_read(quick: bool) -> float:
    """Microseconds per message: parsed, then its typed headers read as a call's handling reads them."""
    data = CAPTURE.read_bytes()
    return 1e6 * best_seconds_per_call(lambda: _parse_and_read(data), 3, _target_s(quick))


def run(quick: bool = False) -> list[dict[str, Any]]:
    parsed = bench_parser(quick)
    read = bench_parse_and_read(quick)
    return [{"name": "sip.parser.parse_serialize", "value": round(parsed), "unit": "messages/s",
             "reference": None, "reference_value": None, "ratio": None},
            {"name": "sip.parser.parse_and_read", "value": round(read, 1),
             "unit": "us per message (parsed, typed headers read 19 times)",
             "reference": None, "reference_value": None, "ratio": None}]


if __name__ == "__main__":
    main_for(run, "benchmarks/results/sip.json")
