"""A PNG chart of a ``benchmarks/run.py`` result: each ladder (achieved rate and p99 response time against the
offered rate, ccpbx beside Kamailio) and the concurrency curve (CPU per call-second and exact loss against the
number of calls). matplotlib is imported here only, and is optional (``pip install -e '.[bench]'``).

    python benchmarks/chart.py benchmarks/results/calls-register.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"ccpbx": "tab:blue", "kamailio": "tab:orange", "asterisk": "tab:red", "ccpbx-sip1": "tab:green",
           "ccpbx-sip2": "tab:olive"}


def panels(result: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """What there is to draw: ("ladder", title, {target: [step, ...]}) and ("concurrency", title, {label: curve})."""
    out: list[tuple[str, str, Any]] = []
    for details in result.get("details", {}).values():
        for name, ladder in (details.get("ladders") or {}).items():
            out.append(("ladder", name, ladder))
        curves = details.get("concurrency")
        if curves:
            out.append(("concurrency", "concurrency", {k: v for k, v in curves.items() if "points" in v}))
    return out


def write_chart(result: dict[str, Any], path: Path) -> bool:
    """Draw ``result`` into ``path``; False (with a message) when matplotlib is missing or nothing to draw."""
    todo = panels(result)
    if not todo:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, axes = plt.subplots(len(todo), 2, figsize=(12, 4 * len(todo)), squeeze=False)
    for row, (kind, title, data) in enumerate(todo):
        left, right = axes[row]
        if kind == "ladder":
            top = 0.0
            for target, steps in data.items():
                if not steps:
                    continue
                colour = COLOURS.get(target)
                offered = [s["offered"] for s in steps]
                top = max(top, *offered)
                left.plot(offered, [s["achieved"] for s in steps], "o-", color=colour, label=target)
                bad = [s for s in steps if not s["failure_free"]]
                left.plot([s["offered"] for s in bad], [s["achieved"] for s in bad], "x", color="red", ms=10)
                right.plot(offered, [s["p99_ms"] if s["p99_ms"] is not None else float("nan") for s in steps], "o-",
                           color=colour, label=f"{target} p99")
                right.plot(offered, [s["p50_ms"] if s["p50_ms"] is not None else float("nan") for s in steps], ".:",
                           color=colour, label=f"{target} p50")
            left.plot([0, top], [0, top], "--", color="grey", lw=0.8, label="achieved = offered")
            left.set(title=f"{title}: achieved rate (x: a step with failures)", xlabel="offered /s",
                     ylabel="achieved /s", xscale="log", yscale="log")
            right.axhline(100, color="red", lw=0.8, ls="--", label="fast: p99 <= 100 ms")
            right.set(title=f"{title}: response time", xlabel="offered /s", ylabel="ms", xscale="log", yscale="log")
        else:
            for label, curve in data.items():
                pts = curve["points"]
                n = [p["calls"] for p in pts]
                left.plot(n, [p["cpu_ms_per_call_s"] for p in pts], "o-", label=label)
                right.plot(n, [p["loss_pct"] for p in pts], "o-", label=label)
            left.set(title="server CPU per call-second (anchored G.711)", xlabel="simultaneous calls",
                     ylabel="CPU ms per call-second")
            left.set_ylim(bottom=0)
            right.set_ylim(bottom=0)
            right.set(title="exact end-to-end loss", xlabel="simultaneous calls", ylabel="loss %")
        if kind == "ladder":
            ticks = sorted({s["offered"] for steps in data.values() for s in steps})
            for ax in (left, right):
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=45, fontsize=8)
                ax.minorticks_off()
        for ax in (left, right):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    machine = result.get("machine", {})
    fig.suptitle(f"ccpbx {machine.get('ccpbx_commit', '')} on {machine.get('cores', '?')} x "
                 f"{machine.get('cpu_model', '?')}, {result.get('started', '')}"
                 f"{' (quick)' if result.get('quick') else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    sys.exit(0 if write_chart(json.loads(source.read_text()), target) else 1)
