"""Plots: log-log time per meta-iteration against ``T`` (``--plot``; ``bench/plot.py`` from any CSV).

matplotlib is imported only when a plot is drawn (:func:`plot_rows`).
"""
from __future__ import annotations

import os
from typing import List, Optional

from .workloads import BASELINE


def plot_rows(rows: List[dict], path: str, workload: str = "sine", title: str = "") -> str:
    """Log-log median time per meta-iteration against T, one line per provider
    (``step`` solid, ``op`` dashed, p20-p80 shaded), one panel per (K, order).
    ``rows`` are CSV dicts (strings are fine). Needs matplotlib; returns ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    ok = [r for r in rows if r.get("status") == "ok" and r.get("median_ms") not in (None, "")]
    if not any(r["workload"] == workload for r in ok):
        have = sorted({r["workload"] for r in ok})
        if not have:
            raise ValueError("no successful rows to plot")
        workload = max(have, key=lambda w: len({r["T"] for r in ok if r["workload"] == w}))
    ok = [r for r in ok if r["workload"] == workload]
    panels = sorted({(int(r["K"]), r["order"]) for r in ok}, key=lambda p: (p[1] != "second", p[0]))
    provs = sorted({r["provider"] for r in ok}, key=lambda p: (p != BASELINE, p))
    colors = {p: f"C{i % 10}" for i, p in enumerate(provs)}
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (K, order) in zip(axes[0], panels):
        for p in provs:
            for q, style in (("step", "-o"), ("op", "--x")):
                pts = sorted((int(r["T"]), float(r["median_ms"]), float(r["p20_ms"]), float(r["p80_ms"]))
                             for r in ok if r["provider"] == p and r["quantity"] == q and int(r["K"]) == K
                             and r["order"] == order)
                if not pts:
                    continue
                T, med, lo, hi = zip(*pts)
                ax.plot(T, med, style, color=colors[p], label=f"{p} {q}", markersize=4)
                ax.fill_between(T, lo, hi, color=colors[p], alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks per batch T")
        ax.set_ylabel("ms per meta-iteration (median)")
        ax.set_title(f"{workload} K={K} {order} order")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    return path


def run_title(info: dict, run_label: Optional[str] = None) -> str:
    """Plot title of a run from its environment (``env_info`` + ``run_id``) or any CSV row of it."""
    return (f"{info['device']}  torch {info['torch']}  metakern {info['metakern']} ({info['git_rev']})  "
            f"{info['run_id'] if run_label is None else run_label}")


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


NO_MPL = "--plot needs matplotlib, which is not installed: pip install matplotlib (or pip install 'metakern[bench]')"
