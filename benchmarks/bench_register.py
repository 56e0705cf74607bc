"""Registrations per second with digest, ccpbx beside Kamailio (registrar: usrloc + auth) in one run.

Each SIPp "call" is one registration (``scenarios/bench_register.xml``): REGISTER -> 401 -> REGISTER with
credentials -> 200, i.e. two transactions, 200 users cycling. Each offered rate runs against ccpbx and then
Kamailio (its default number of children), alternating, each ladder going on past its target's limit. Per step:
achieved rate, failures, SIPp's retransmissions, p50/p99 response time (first REGISTER to the 200), server CPU ms
per registration. Figures: the highest failure-free rate and the highest also fast (p99 <= 100 ms,
retransmissions <= 1%); ratio = ccpbx / Kamailio. ccpbx writes each binding to SQLite; Kamailio keeps them in
memory (usrloc db_mode 0), so its cost per registration is a floor.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_calls import comparison_rows, start_targets
from benchmarks.common import main_for
from benchmarks.ladder import run_ladder

# Finer steps where ccpbx breaks (800-1,600/s on 2 cores, 1,600-3,200/s with a SIP worker), as for calls.
RATES = (200, 400, 600, 800, 1000, 1200, 1600, 2000, 2400, 2800, 3200, 4800, 6400, 9600, 12800, 17000, 25600)
RATES_QUICK = (200, 400, 800, 1000, 1200, 1600, 3200, 6400)


def run(quick: bool = False, options: dict[str, Any] | None = None) -> dict[str, Any]:
    options = options or {}
    rates = RATES_QUICK if quick else RATES
    seconds = 2.0 if quick else 4.0
    with tempfile.TemporaryDirectory(prefix="ccpbx-bench-register-") as tmp:
        work = Path(tmp)
        targets = start_targets(work, options, with_uas=False)
        try:
            print("registrations per second (ccpbx and kamailio alternating):", file=sys.stderr)
            steps = run_ladder(targets, "bench_register", work, rates, seconds, callers=options.get("callers", 1))
        finally:
            info = {t.name: {**t.info, "callers": len(t.caller_ports)} for t in targets}
            for t in targets:
                t.close()
    ladders = {"register": {k: [s.as_dict() for s in v] for k, v in steps.items()}}
    return {"rows": comparison_rows("register", "registration", steps),
            "details": {"ladders": ladders, "targets": info, "step_seconds": seconds}}


if __name__ == "__main__":
    main_for(run, "benchmarks/results/register.json")
