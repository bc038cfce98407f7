"""Plots of benchmark rows (``--plot``; ``bench/plot.py`` from any CSV).

One figure, sections from top to bottom, each for one quantity (``step`` by default):

* **speedup over vmap**: grouped bars, one group per config (workload, T, K, order),
  one bar per provider with its ratio printed above it, a line at 1x
  (:func:`speedup_groups`); a provider skipped or failed on a config gets a note in
  its place;
* **peak memory against K**, one panel per (workload, T, order) measured at two or
  more K, where the rows have ``peak_mem_mb`` (:func:`memory_panels`);
* **time against T** (median ms per meta-iteration, p20-p80 shaded, log-log), one
  panel per (workload, K, order) measured at two or more T (:func:`time_panels`).

Each provider keeps one colour in every section and every run (:func:`provider_color`:
a backend's ``-2op`` variant a lighter shade of its colour). Rows of several runs of one
config are combined by their median. matplotlib is imported only when a figure is drawn
(:func:`make_figure`).
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .workloads import BASELINE

# tab20 indices: (dark, light) pairs, so that mk-<b> and mk-<b>-2op share a hue.
_TAB20 = {"mk-cpp": 4, "mk-cpp-2op": 5, "mk-torch": 0, "mk-torch-2op": 1, "mk-cuda": 6, "mk-cuda-2op": 7,
          "mk-triton": 8, "mk-triton-2op": 9, "loop": 10, "higher": 12, BASELINE: 14, "vmap-graph": 16}
_ORDER = ["mk-cpp", "mk-cpp-2op", "mk-cuda", "mk-cuda-2op", "mk-triton", "mk-triton-2op", "mk-torch",
          "mk-torch-2op", "vmap-graph", BASELINE, "loop", "higher"]
_SPARE = (2, 3, 18, 19, 13, 15, 17, 11)  # for providers this module does not know


def provider_color(name: str):
    """The provider's colour (an RGB tuple), the same in every plot."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    if name in _TAB20:
        return tab(_TAB20[name])
    return tab(_SPARE[sum(map(ord, name)) % len(_SPARE)])


def _provider_key(name: str):
    return (_ORDER.index(name), name) if name in _ORDER else (len(_ORDER), name)


def _f(v) -> Optional[float]:
    return None if v in (None, "") else float(v)


Key = Tuple[str, int, int, str]  # (workload, T, K, order)


def _key(r: dict) -> Key:
    return r["workload"], int(r["T"]), int(r["K"]), r["order"]


def _config_orderer(rows: Sequence[dict]):
    """Sort key of configs: workloads in the order the rows first name them, then
    second order before first, then K, then T."""
    first = {}
    for r in rows:
        first.setdefault(r["workload"], len(first))

    def key(k: Key):
        w, T, K, order = k
        return first.get(w, len(first)), order != "second", K, T
    return key


def _median_of(rows: List[dict], col: str) -> Optional[float]:
    vals = [_f(r.get(col)) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _by(rows: Sequence[dict], quantity: str) -> Dict[Tuple[Key, str], List[dict]]:
    """Rows of ``quantity`` by (config, provider)."""
    out: Dict[Tuple[Key, str], List[dict]] = {}
    for r in rows:
        if r.get("quantity") == quantity:
            out.setdefault((_key(r), r["provider"]), []).append(r)
    return out


def _ok(rs: List[dict]) -> List[dict]:
    return [r for r in rs if r.get("status") == "ok" and _f(r.get("median_ms")) is not None]


# A provider whose meta-gradient differs from the baseline's by more than this
# (``grad_err`` of its ``op`` rows; fp32 providers agree to about 1e-6) gets its bars
# marked: a speedup of a wrong result is no speedup.
GRAD_ERR_FLAG = 1e-3


class Bar(NamedTuple):
    provider: str
    speedup: Optional[float]   # median speedup_vs_vmap of the ok rows; None when there are none
    status: str                # "ok", or why there is no bar ("skipped", "failed")
    grad_err: Optional[float]  # median grad_err of the provider's op rows on this config


def speedup_groups(rows: Sequence[dict], quantity: str = "step") -> List[Tuple[Key, List[Bar]]]:
    """Bars of the speedup section: ``[(config, [Bar, ...]), ...]``, the configs sorted
    by workload (in the rows' order), then second order first, K, T. The baseline
    itself is the 1x line, not a bar; a config without a baseline row has no group."""
    by, ops = _by(rows, quantity), _by(rows, "op")
    configs = sorted({k for k, p in by if p == BASELINE and _ok(by[k, p])}, key=_config_orderer(rows))
    out = []
    for k in configs:
        bars = []
        for p in sorted({p for kk, p in by if kk == k and p != BASELINE}, key=_provider_key):
            rs = by[k, p]
            v = _median_of(_ok(rs), "speedup_vs_vmap")
            bars.append(Bar(p, v, "ok" if v is not None else rs[0].get("status") or "missing",
                            _median_of(ops.get((k, p), []), "grad_err")))
        if bars:
            out.append((k, bars))
    return out


def _curves(rows, quantity, x_of, panel_of, y_col):
    """``{panel: {provider: [(x, y, p20_ms, p80_ms), ...]}}`` from the medians of ok rows."""
    panels: Dict[tuple, Dict[str, Dict[int, List[dict]]]] = {}
    for (k, p), rs in _by(rows, quantity).items():
        ok = [r for r in _ok(rs) if _f(r.get(y_col)) is not None]
        if ok:
            panels.setdefault(panel_of(k), {}).setdefault(p, {}).setdefault(x_of(k), []).extend(ok)
    out = {}
    for panel, provs in panels.items():
        out[panel] = {}
        for p, pts in provs.items():
            out[panel][p] = sorted((x, _median_of(rs, y_col), _median_of(rs, "p20_ms"), _median_of(rs, "p80_ms"))
                                   for x, rs in pts.items())
    return out


def memory_panels(rows: Sequence[dict], quantity: str = "step") -> Dict[Tuple[str, int, str], Dict[str, list]]:
    """Peak memory against K: ``{(workload, T, order): {provider: [(K, MB, p20_ms, p80_ms), ...]}}``
    (the time quantiles are not drawn here), only for (workload, T, order) with
    ``peak_mem_mb`` at two or more K."""
    cur = _curves(rows, quantity, lambda k: k[2], lambda k: (k[0], k[1], k[3]), "peak_mem_mb")
    return {k: v for k, v in cur.items() if len({pt[0] for pts in v.values() for pt in pts}) >= 2}


def time_panels(rows: Sequence[dict], quantity: str = "step") -> Dict[Tuple[str, int, str], Dict[str, list]]:
    """Median ms against T: ``{(workload, K, order): {provider: [(T, ms, p20, p80), ...]}}``,
    only for (workload, K, order) measured at two or more T."""
    cur = _curves(rows, quantity, lambda k: k[1], lambda k: (k[0], k[2], k[3]), "median_ms")
    return {k: v for k, v in cur.items() if len({pt[0] for pts in v.values() for pt in pts}) >= 2}


def _pick_quantity(rows, quantity: str) -> str:
    """``quantity``, or the other one when the rows have only that."""
    have = {r.get("quantity") for r in rows}
    other = [q for q in ("step", "op") if q in have]
    return quantity if quantity in have or not other else other[0]


def _order_label(order: str) -> str:
    return "" if order == "second" else f", {order} order"


def _log_ticks(lo: float, hi: float) -> List[float]:
    """Tick values for a log axis over ``[lo, hi]``: 1-2-5 steps, or 1..9 steps when
    those give fewer than three ticks (a range within one decade)."""
    out: List[float] = []
    for mants in ((1, 2, 5), tuple(range(1, 10))):
        out = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
               for m in mants if lo <= m * 10.0 ** e <= hi]
        if len(out) >= 3:
            break
    return out


def _plain_log_axis(axis, values: Sequence[float]):
    """A log axis labelled with plain numbers (25, 256, 0.5), not powers of ten:
    ticks at ``values`` (the measured T) on x, at :func:`_log_ticks` of the data's
    range on y."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(sorted(set(values))))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _ratio(v: float) -> str:
    return f"{v:.1f}x" if v >= 0.95 else f"{v:.2f}x"


def _draw_bars(ax, groups, provs, quantity):
    width = 0.8 / len(provs)
    top = max([b.speedup for _, bars in groups for b in bars if b.speedup is not None] + [1.0])
    vertical = max(len(bars) for _, bars in groups) > 6
    for gi, (_, bars) in enumerate(groups):
        x0 = gi - width * (len(bars) - 1) / 2
        for si, b in enumerate(bars):
            x = x0 + si * width
            if b.speedup is None:
                ax.text(x, top * 0.02, f"{b.provider} {b.status}", ha="center", va="bottom", fontsize=6.5,
                        rotation=90, color="0.4")
                continue
            wrong = b.grad_err is not None and b.grad_err > GRAD_ERR_FLAG
            ax.bar(x, b.speedup, width * 0.92, color=provider_color(b.provider), hatch="////" if wrong else None,
                   edgecolor="crimson" if wrong else "none", linewidth=0)
            label = _ratio(b.speedup) + (f"\nerr {b.grad_err:.0e}" if wrong else "")
            ax.text(x, b.speedup + top * 0.015, label, ha="center", va="bottom", fontsize=7,
                    rotation=90 if vertical else 0, color="crimson" if wrong else "black",
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.4, alpha=0.85))
    ax.axhline(1.0, color="0.25", linewidth=1.0, linestyle="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\nT={T} K={K}{_order_label(o)}" for (w, T, K, o), _ in groups], fontsize=8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel(f"speedup over {BASELINE}, {quantity}")
    ax.grid(True, axis="y", alpha=0.3)


def _draw_lines(ax, curves, time: bool):
    """One line per provider; ``time``: log-log with the p20-p80 band, else (memory)
    linear axes from 0, ticks at the measured K."""
    xs, ys = [], []
    for p in sorted(curves, key=_provider_key):
        x, y, lo, hi = zip(*curves[p])
        c = provider_color(p)
        ax.plot(x, y, "-o", color=c, markersize=4, linewidth=1.6)
        if time and None not in lo and None not in hi:
            ax.fill_between(x, lo, hi, color=c, alpha=0.18, linewidth=0)
            ys += lo + hi
        xs += x
        ys += y
    if time:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis, xs)
        lo, hi = min(ys) / 1.15, max(ys) * 1.15
        ax.set_ylim(lo, hi)
        _plain_log_axis(ax.yaxis, _log_ticks(lo, hi))
    else:
        ax.set_xticks(sorted(set(xs)))
        pad = max((max(xs) - min(xs)) * 0.08, 0.5)
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_ylim(0, max(ys) * 1.12)
    ax.grid(True, which="major", alpha=0.3)


GROUPS_PER_ROW, PANELS_PER_ROW = 6, 4


def make_figure(rows: Sequence[dict], title: str = "", quantity: str = "step",
                workloads: Optional[Sequence[str]] = None):
    """The figure of ``rows`` (CSV dicts; strings are fine), for ``quantity`` (the other
    one when the rows have only that), optionally only ``workloads``. Raises
    ``ValueError`` when no row is usable. Needs matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in rows if workloads is None or r.get("workload") in workloads]
    if not _ok(list(rows)):
        have = "" if workloads is None else f" for workloads {list(workloads)}"
        raise ValueError(f"no successful rows to plot{have}")
    quantity = _pick_quantity(rows, quantity)
    groups = speedup_groups(rows, quantity)
    by_config = _config_orderer(rows)  # (workload, T, K, order) -> sort key
    lines = ([("memory", k, v) for k, v in sorted(memory_panels(rows, quantity).items(),
                                                  key=lambda kv: by_config((kv[0][0], kv[0][1], 0, kv[0][2])))]
             + [("time", k, v) for k, v in sorted(time_panels(rows, quantity).items(),
                                                 key=lambda kv: by_config((kv[0][0], 0, kv[0][1], kv[0][2])))])
    if not groups and not lines:
        raise ValueError(f"nothing to plot: no {BASELINE} row to compare with, and no config measured at "
                         f"two or more K (memory) or T (time)")
    bar_rows = [groups[i:i + GROUPS_PER_ROW] for i in range(0, len(groups), GROUPS_PER_ROW)]
    line_rows = [lines[i:i + PANELS_PER_ROW] for i in range(0, len(lines), PANELS_PER_ROW)]
    provs = sorted({b.provider for _, bars in groups for b in bars}, key=_provider_key)
    everyone = sorted(set(provs) | {p for _, _, c in lines for p in c}, key=_provider_key)

    slots = max(len(provs), 1)
    bar_w = max((len(g) for g in bar_rows), default=0) * (0.42 * slots + 0.55)
    width = min(17.0, max(8.0, bar_w + 1.2, 4.1 * max((len(r) for r in line_rows), default=0)))
    heights = [3.4] * len(bar_rows) + [3.2] * len(line_rows)
    fig = Figure(figsize=(width, sum(heights) + 0.9), layout="constrained")
    subs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, chunk in zip(subs, bar_rows):
        ax = sub.subplots()
        _draw_bars(ax, chunk, provs, quantity)
    for sub, chunk in zip(subs[len(bar_rows):], line_rows):
        axes = sub.subplots(1, PANELS_PER_ROW if len(line_rows) > 1 else len(chunk), squeeze=False)[0]
        for ax, (kind, key, curves) in zip(axes, chunk):
            if kind == "memory":
                w, T, order = key
                _draw_lines(ax, curves, time=False)
                ax.set_title(f"{w} T={T}{_order_label(order)}: peak memory", fontsize=10)
                ax.set_xlabel("inner steps K")
                ax.set_ylabel(f"peak MB of one {quantity}")
            else:
                w, K, order = key
                _draw_lines(ax, curves, time=True)
                ax.set_title(f"{w} K={K}{_order_label(order)}: time per {quantity}", fontsize=10)
                ax.set_xlabel("tasks per batch T")
                ax.set_ylabel("ms (median, p20-p80)")
        for ax in axes[len(chunk):]:
            ax.set_visible(False)
    handles = [Patch(color=provider_color(p), label=p) for p in everyone]
    if groups:
        handles.append(Line2D([], [], color="0.25", linewidth=1.0, linestyle="--", label=f"1x = {BASELINE}"))
    subs[0].legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 9), fontsize=8,
                   frameon=False)
    notes = [_workloads_line(rows)]
    if any(b.grad_err is not None and b.grad_err > GRAD_ERR_FLAG for _, bars in groups for b in bars):
        notes.append(f"red, hatched: meta-gradient differs from {BASELINE}'s by more than {GRAD_ERR_FLAG:g} "
                     f"(relative, op rows)")
    fig.suptitle("\n".join(([title] if title else []) + notes), fontsize=8.5)
    return fig


def _workloads_line(rows: Sequence[dict]) -> str:
    """``sine 1-40-40-1 mse 10+10 points; ...``: what each workload in the rows is."""
    seen: Dict[str, str] = {}
    for r in rows:
        if r.get("workload") not in seen and r.get("dims"):
            pts = f" {r['n_support']}+{r['n_query']} points" if r.get("n_support") else ""
            seen[r["workload"]] = f"{r['workload']} {r['dims']} {r.get('loss', '')}{pts}"
    return "; ".join(seen.values())


def plot_rows(rows: List[dict], path: str, workloads: Optional[Sequence[str]] = None, title: str = "",
              quantity: str = "step") -> str:
    """Write :func:`make_figure` of ``rows`` to the PNG ``path`` (its folder created);
    returns ``path``."""
    fig = make_figure(rows, title=title, quantity=quantity, workloads=workloads)
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
