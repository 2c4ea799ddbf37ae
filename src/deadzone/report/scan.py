"""Pieces of a scan's report, from the ``summary`` of its ``results.json`` alone.

The summary (plain data; costs are shares of the fine-tuning gain, 0.01 = 1%)::

    {"margin": 0.02,
     "strategies": {
        "frozen": {
           "sites": [{"site": "L0.attn.c_attn", "layer": 0, "role": "attn_qkv",
                      "params": 3072, "verdict": "negligible",
                      "cost": 0.004, "interval": [-0.001, 0.009],
                      "single": true}, ...],
           "correlations": {"pr": {"rho": -0.12, "p": 0.51, "n": 32}, ...}},
        "random": {...}},
     "scores": {"pr": {"L0.attn.c_attn": 84.5, ...}, "grad_norm": {...}, ...}}

A site's ``cost`` and ``interval`` are those of the judgement that decided it; ``single`` says
it was judged alone (a group's cost is not the site's own, so only single sites are coloured in
the heatmap and plotted against the scores). ``correlations`` hold Spearman's rho of each score
against the single-site costs and its permutation p-value, as the scan computed them; ``None``
where undefined. Nothing here recomputes a statistic.
"""

from __future__ import annotations

import math
from pathlib import Path

from deadzone.report import pyplot, save_png
from deadzone.sites import ROLE_ORDER

NEGLIGIBLE = ("negligible", "better")
# The colour scale spans this many margins either side of zero.
COLOUR_MARGINS = 5
# Scatters per row of scores.png.
PLOT_COLUMNS = 4
# Above this many cells the heatmap leaves out the numbers and keeps the marks.
ANNOTATE_CELLS = 160


def _roles(sites: list[dict]) -> list[str]:
    present = {s["role"] for s in sites}
    known = [r for r in ROLE_ORDER if r in present]
    return known + sorted(present - set(known))


def heatmap(summary: dict, path: str | Path) -> None:
    """PNG: one layer x role panel per strategy, colour = single-site cost (% of the gain),
    negligible cells marked; cells decided as part of a group are grey with their mark."""
    plt = pyplot()
    import numpy as np

    strategies = summary["strategies"]
    panels = max(1, len(strategies))
    fig, axes = plt.subplots(
        1, panels, figsize=(4.2 * panels + 1.5, 6), squeeze=False, layout="constrained"
    )
    margin = 100 * summary["margin"]
    limit = COLOUR_MARGINS * margin  # costs beyond it take the end colours
    image = None
    for ax, (name, st) in zip(axes[0], strategies.items(), strict=False):
        sites = [s for s in st["sites"] if s["layer"] is not None]
        roles = _roles(sites)
        layers = sorted({s["layer"] for s in sites})
        grid = np.full((len(layers), len(roles)), np.nan)
        for s in sites:
            if s.get("single") and s["cost"] is not None:
                grid[layers.index(s["layer"]), roles.index(s["role"])] = 100 * s["cost"]
        ax.imshow(np.ones_like(grid), cmap="Greys", vmin=0, vmax=6, aspect="auto")  # group: grey
        image = ax.imshow(grid, cmap="RdYlGn_r", vmin=-limit, vmax=limit, aspect="auto")
        annotate = grid.size <= ANNOTATE_CELLS
        for s in sites:
            y, x = layers.index(s["layer"]), roles.index(s["role"])
            value = grid[y, x]
            mark = "✓" if s["verdict"] in NEGLIGIBLE else {"costly": "✗"}.get(s["verdict"], "?")
            text = f"{mark} {value:+.1f}" if annotate and not math.isnan(value) else mark
            ax.text(x, y, text, ha="center", va="center", fontsize=7 if annotate else 6)
        ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers])
        ax.set_title(name)
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        bar.set_label(f"single-site cost, % of the fine-tuning gain (margin {margin:g}%)")
    fig.supxlabel("✓ negligible   ✗ costly   ? undetermined   grey: decided in a group", fontsize=8)
    save_png(fig, path)


def _pairs(summary: dict, strategy: str, score: str) -> tuple[list[float], list[float]]:
    values = summary["scores"].get(score, {})
    xs, ys = [], []
    for s in summary["strategies"][strategy]["sites"]:
        x = values.get(s["site"])
        if s.get("single") and s["cost"] is not None and x is not None and math.isfinite(x):
            xs.append(x)
            ys.append(100 * s["cost"])
    return xs, ys


def scores_plot(summary: dict, path: str | Path) -> None:
    """PNG: one scatter per score, the score against the single-site cost, one colour per
    strategy (its rho from the scan in the legend), the margin dashed."""
    plt = pyplot()
    names = list(summary["scores"]) or ["(no scores)"]
    cols = min(PLOT_COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        score, plotted = names[k], False
        for strategy, st in summary["strategies"].items():
            xs, ys = _pairs(summary, strategy, score)
            c = st.get("correlations", {}).get(score) or {}
            rho = "—" if c.get("rho") is None else f"{c['rho']:+.2f}"
            p = "" if c.get("p") is None else f", p={c['p']:.2g}"
            ax.scatter(xs, ys, s=14, label=f"{strategy}: ρ={rho}{p}")
            plotted = plotted or bool(xs)
        ax.axhline(100 * summary["margin"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(score, fontsize=9)
        ax.set_ylabel("cost (% of gain)", fontsize=8)
        ax.legend(fontsize=7)
        if not plotted:
            ax.text(0.5, 0.5, "no single-site costs", ha="center", transform=ax.transAxes)
    save_png(fig, path)


def rho_table(summary: dict) -> str:
    """Markdown: one row per score, per strategy Spearman's rho, its p-value and n."""
    strategies = list(summary["strategies"])
    header = "| Score | " + " | ".join(f"{s}: ρ (p, n)" for s in strategies) + " |"
    rows = [header, "|---|" + "---|" * len(strategies)]
    for score in summary["scores"]:
        cells = []
        for s in strategies:
            c = summary["strategies"][s].get("correlations", {}).get(score)
            if not c or c.get("rho") is None:
                cells.append("—" if not c else f"— (n={c.get('n', 0)})")
            else:
                cells.append(f"{c['rho']:+.2f} (p={c['p']:.2g}, n={c['n']})")
        rows.append(f"| {score} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
