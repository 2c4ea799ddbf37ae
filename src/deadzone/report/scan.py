"""Pieces of a scan's report, from the ``summary`` of its ``results.json`` alone.

The summary (plain data; costs are shares of the fine-tuning gain, 0.01 = 1%)::

    {"margin": 0.02, "seeds": 3,
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
where undefined; ``seeds`` is the most seeds a verdict was read on (the scan's ``--seeds``).
Nothing here recomputes a statistic.
"""

from __future__ import annotations

import math
from pathlib import Path

from deadzone.errors import DeadzoneError
from deadzone.models.sites import ROLE_ORDER
from deadzone.report import pyplot, read_results, save_png, write_files
from deadzone.report.table import Table, to_markdown

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
    margin = 100 * _margin(summary)
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
        bar.set_label(f"single-site cost, {_unit(summary)}; margin = {margin:g}")
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
        ax.axhline(100 * _margin(summary), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(score, fontsize=9)
        ax.set_ylabel(f"cost ({_unit(summary)})", fontsize=8)
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


def _margin(summary: dict) -> float:
    """The margin the verdicts were judged against, in the summary's unit."""
    return summary.get("margin_used") or summary["margin"]


def _unit(summary: dict) -> str:
    """The unit of 100 x a cost: % of the gain, or centi-nats when the gain was not clear."""
    return "0.01 nats" if summary.get("unit") == "nats" else "% of the fine-tuning gain"


# --- report.md ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.2f}"


def _interval(interval: list[float] | None) -> str:
    return "—" if not interval else f"[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"


def sites_table(summary: dict, strategy: str) -> Table:
    """One row per site of ``strategy``: verdict, cost and interval (x 100, in the unit), and
    how it was judged."""
    rows = []
    for s in summary["strategies"][strategy]["sites"]:
        how = "alone" if s["single"] else "in a group"
        rows.append([s["site"], s["verdict"], _pct(s["cost"]), _interval(s["interval"]), how])
    unit = _unit(summary)
    columns = ["Site", "Verdict", f"Cost ({unit})", "Interval", "Judged"]
    return Table(columns, rows, right=frozenset({2, 3}))


def effective_text(summary: dict, strategy: str) -> str:
    """The effective count of one strategy in one sentence, with the joint interval."""
    e = summary["effective"][strategy]
    what = {"frozen": "need not train", "random": "carry nothing in their values"}.get(
        strategy, f"can be {strategy}"
    )
    if not e["sites"]:
        return f"{strategy}: no set of sites was found jointly negligible."
    share = e["fraction_of_trainable"]
    block = e["fraction_of_block_params"]
    return (
        f"{strategy}: {e['params']:,} parameters ({e['sites']} matrices) {what} — "
        f"{100 * share:.1f}% of the trainable parameters, {100 * block:.1f}% of those in the "
        f"blocks; joint cost {_pct(e['cost'])}, interval {_interval(e['interval'])} "
        f"({_unit(summary)}), {e['verdict']}."
    )


def joint_steps(summary: dict, strategy: str) -> list[str]:
    joint = summary["strategies"][strategy].get("joint")
    if not joint:
        return []
    lines = []
    for i, step in enumerate(joint["steps"], 1):
        lines.append(
            f"{i}. {len(step['sites'])} sites on {step['seeds']} seeds: {step['verdict']}, "
            f"cost {_pct(step['cost'])}, interval {_interval(step['interval'])} -> "
            f"{step['action']}"
        )
    return lines


def statistics_text(results: dict) -> str:
    s = summary_of(results)
    unit = "share of the fine-tuning gain" if s["unit"] == "share_of_gain" else "nats"
    rows = [r for st in s["strategies"].values() for r in st["sites"]]
    if not any(r.get("level") is not None for r in rows):  # unfinished, or written before Holm
        return (
            f"Costs are judged as a {unit} against the margin {s['margin_used']:g}: negligible "
            f"when the interval lies below it; every judgement so far at {s['alpha']:.3g} = "
            f"0.05 / {s['comparisons']} (sites x strategies), the strictest level of Holm's "
            "procedure; Holm's own verdicts come once every search is answered."
        )
    how = (
        f"each site's verdict is Holm's step-down over the site claims ({s['comparisons']} = "
        "sites x strategies, less any whose runs failed), read from the judgement that decided "
        "the site (its own or its group's; each site's `level` in results.json)"
    )
    if s["mode"] == "adaptive":
        how += (
            f"; the search steered by intervals at {s['alpha']:.3g} = 0.05 / "
            f"{s['comparisons']}, the strictest level Holm uses"
        )
    how += (
        f"; joint sets at {s['alpha']:.3g} (Bonferroni), except one that is exactly a set some "
        "site was decided with on every seed, whose claim stands as Holm read it"
    )
    return (
        f"Costs are judged as a {unit} against the margin {s['margin_used']:g}: negligible when "
        f"the interval lies below it; {how}."
    )


def summary_of(results: dict) -> dict:
    return results["summary"]


def seeds_read(results: dict) -> int:
    """The most seeds the verdicts were read on: the scan's ``--seeds`` (``results.json``'s
    ``seeds`` lists every seed run into the directory, a rerun with fewer included)."""
    return results["summary"].get("seeds") or len(results["seeds"])


def not_judged(results: dict) -> str | None:
    """Why nothing of this scan can be judged yet (its baselines have not all finished, or one
    failed), in one sentence; None once the baselines fix the scale of every cost."""
    if results["summary"].get("margin_used") is not None:
        return None
    full = [r for r in results["runs"] if r["key"].startswith("full/")]
    failed = [r for r in full if r.get("status") != "ok"]
    if failed:
        return (
            f"the baseline run {failed[0]['key']} failed ({failed[0].get('error')}), so nothing "
            "can be judged"
        )
    return (
        f"nothing can be judged yet: {len(full)} of its {seeds_read(results)} baseline runs "
        "finished before the scan stopped; rerun the scan to continue"
    )


def rho_note(summary: dict) -> str:
    """One sentence when rho covers only the sites judged alone (not every site), else ''."""
    parts = []
    for strategy, st in summary["strategies"].items():
        alone = sum(1 for site in st["sites"] if site["single"])
        if alone < len(st["sites"]):
            parts.append(f"{strategy} over the {alone} of {len(st['sites'])} sites judged alone")
    if not parts:
        return ""
    return f"ρ for {'; '.join(parts)} (an adaptive scan judges some sites only in groups)."


def markdown(results: dict) -> str:
    """``report.md`` of a scan, from its results alone."""
    s = summary_of(results)
    lines = [
        f"# Scan of `{results['model']}`",
        "",
        f"{len(results['sites'])} sites, strategies {', '.join(s['strategies'])}, "
        f"{s['mode']} search, up to {seeds_read(results)} seeds, {results['steps']} SFT "
        f"steps, data `{results['data']['spec']}`; {s['runs']} runs.",
        "",
        statistics_text(results),
        "",
    ]
    if not s.get("complete", True):
        lines += ["**This scan is not complete**: rerun the command to finish it.", ""]
    lines += ["## Effective parameter count", ""]
    lines += [f"- {effective_text(s, st)}" for st in s["strategies"]]
    lines += ["", "![heatmap](heatmap.png)", ""]
    for strategy, st in s["strategies"].items():
        counts = ", ".join(f"{n} {v}" for v, n in st["verdicts"].items() if n)
        lines += [
            f"## {strategy}",
            "",
            f"Verdicts: {counts}. {st['search']['judgements']} judgements, "
            f"{st['search']['runs']} runs besides the baselines.",
            "",
            to_markdown(sites_table(s, strategy)),
            "",
        ]
        steps = joint_steps(s, strategy)
        if steps:
            lines += ["Joint check:", "", *steps, ""]
    lines += [
        "## Does geometry predict redundancy?",
        "",
        "Spearman's rho of each cheap score against the single-site cost, with a permutation "
        "p-value:",
        "",
        rho_table(s),
    ]
    note = rho_note(s)
    lines += [note, ""] if note else []
    lines += ["![scores](scores.png)", ""]
    return "\n".join(lines)


def write_report(directory: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``heatmap.png`` and ``scores.png`` in ``directory`` from its
    ``results.json``; returns their paths by name. A scan whose baselines have not all finished
    is a one-line DeadzoneError: nothing can be judged yet."""
    results = read_results(directory, "scan")
    why = not_judged(results)
    if why:
        raise DeadzoneError(f"{Path(directory) / 'results.json'}: {why}")
    plots = {
        "heatmap.png": lambda results, path: heatmap(results["summary"], path),
        "scores.png": lambda results, path: scores_plot(results["summary"], path),
    }
    return {p.name: p for p in write_files(directory, "scan", markdown, plots)}
