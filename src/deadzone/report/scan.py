"""Pieces of a scan's report, from the ``summary`` of its ``results.json`` alone.

The summary (plain data; costs are shares of the fine-tuning gain, 0.01 = 1%, or nats when
the gain was not clearly positive: ``unit``)::

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
from deadzone.experiments.search import LIKELY_COSTLY, NOT_JUDGED
from deadzone.models.sites import ROLE_ORDER
from deadzone.report import html, pyplot, read_results, save_png, write_files
from deadzone.report.table import Table, to_markdown

NEGLIGIBLE = ("negligible", "better")
# Fewer single-site costs than this make no scatter (a correlation of two points says nothing).
MIN_POINTS = 3
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
    scale = _scale(summary)
    margin = scale * _margin(summary)
    limit = colour_limit(summary)
    image = None
    for ax, (name, st) in zip(axes[0], strategies.items(), strict=False):
        sites = [s for s in st["sites"] if s["layer"] is not None]
        roles = _roles(sites)
        layers = sorted({s["layer"] for s in sites})
        grid = np.full((len(layers), len(roles)), np.nan)
        for s in sites:
            if s.get("single") and s["cost"] is not None:
                grid[layers.index(s["layer"]), roles.index(s["role"])] = scale * s["cost"]
        ax.imshow(np.ones_like(grid), cmap="Greys", vmin=0, vmax=6, aspect="auto")  # group: grey
        image = ax.imshow(grid, cmap="RdYlGn_r", vmin=-limit, vmax=limit, aspect="auto")
        annotate = grid.size <= ANNOTATE_CELLS
        for s in sites:
            y, x = layers.index(s["layer"]), roles.index(s["role"])
            value = grid[y, x]
            mark = "✓" if s["verdict"] in NEGLIGIBLE else {"costly": "✗"}.get(s["verdict"], "?")
            shown = f"{value:+.1f}" if scale == 100 else f"{value:+.3f}"
            text = f"{mark} {shown}" if annotate and not math.isnan(value) else mark
            ax.text(x, y, text, ha="center", va="center", fontsize=7 if annotate else 6)
        ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers])
        ax.set_title(name)
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        bar.set_label(f"single-site cost, {_unit(summary)}; margin = {margin:g}")
    fig.supxlabel("✓ negligible   ✗ costly   ? undetermined   grey: decided in a group", fontsize=8)
    save_png(fig, path)


def colour_limit(summary: dict) -> float:
    """The heatmap's colour scale, ± this (in the unit shown): the largest single-site cost in
    size, so the colours spread over the costs drawn; the margin when no cost is drawn."""
    scale = _scale(summary)
    costs = [
        abs(scale * s["cost"])
        for st in summary["strategies"].values()
        for s in st["sites"]
        if s.get("single") and s["cost"] is not None and s["layer"] is not None
    ]
    return max(costs, default=0.0) or scale * _margin(summary)


def _pairs(summary: dict, strategy: str, score: str) -> tuple[list[float], list[float]]:
    values = summary["scores"].get(score, {})
    xs, ys = [], []
    for s in summary["strategies"][strategy]["sites"]:
        x = values.get(s["site"])
        if s.get("single") and s["cost"] is not None and x is not None and math.isfinite(x):
            xs.append(x)
            ys.append(_scale(summary) * s["cost"])
    return xs, ys


def drawn(summary: dict) -> bool:
    """Whether some score has at least :data:`MIN_POINTS` single-site costs to scatter."""
    return any(
        len(_pairs(summary, strategy, score)[0]) >= MIN_POINTS
        for score in summary["scores"]
        for strategy in summary["strategies"]
    )


def scores_plot(summary: dict, path: str | Path) -> None:
    """PNG: one scatter per score, the score against the single-site cost, one colour per
    strategy with at least :data:`MIN_POINTS` points (its rho from the scan in the legend, under
    the axes), the margin dashed."""
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
            if len(xs) < MIN_POINTS:
                continue
            c = st.get("correlations", {}).get(score) or {}
            rho = "—" if c.get("rho") is None else f"{c['rho']:+.2f}"
            p = "" if c.get("p") is None else f", p={c['p']:.2g}"
            ax.scatter(xs, ys, s=14, label=f"{strategy}: ρ={rho}{p}")
            plotted = plotted or bool(xs)
        ax.axhline(_scale(summary) * _margin(summary), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(score, fontsize=9)
        ax.set_ylabel(f"cost ({_unit(summary)})", fontsize=8)
        if plotted:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        else:
            text = f"fewer than {MIN_POINTS} sites judged alone"
            ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes, fontsize=8)
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


def _in_nats(summary: dict) -> bool:
    return summary.get("unit") == "nats"


def _scale(summary: dict) -> float:
    """What a cost is multiplied by to be shown: 100 for a share of the gain (shown in %), 1 for
    nats (shown as nats)."""
    return 1.0 if _in_nats(summary) else 100.0


def _unit(summary: dict) -> str:
    """The unit costs are shown in: % of the fine-tuning gain, or nats when the gain was not
    clearly positive."""
    return "nats" if _in_nats(summary) else "% of the fine-tuning gain"


# --- report.md ---------------------------------------------------------------------------------


def _pct(value: float | None, summary: dict) -> str:
    """A cost in the unit shown: ``+1.23`` (% of the gain) or ``+0.0123`` (nats)."""
    if value is None:
        return "—"
    return f"{value:+.4f}" if _in_nats(summary) else f"{100 * value:+.2f}"


def _interval(interval: list[float] | None, summary: dict) -> str:
    if not interval:
        return "—"
    return f"[{_pct(interval[0], summary)}, {_pct(interval[1], summary)}]"


def _listed(names: list[str], shown: int = 6) -> str:
    """``a, b, c``, the first ``shown`` named and how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" * (len(names) > shown))


def _matrices(names: list[str]) -> str:
    """``1 matrix: L1.attn.c_proj``, ``3 matrices: a, b, c``."""
    return f"{len(names)} {'matrix' if len(names) == 1 else 'matrices'}: {_listed(names)}"


def sites_table(summary: dict, strategy: str) -> Table:
    """One row per site of ``strategy``: verdict, cost and interval (x 100, in the unit), and
    how it was judged; with the prior (in the same unit) when the scan had one."""
    sites = summary["strategies"][strategy]["sites"]
    with_prior = any(s.get("prior") is not None for s in sites)
    rows = []
    for s in sites:
        how = "alone" if s["single"] else "in a group"
        if s.get("label"):
            how = f"not run: {s['label']} (a prior, not a verdict)"
        cost, interval = _pct(s["cost"], summary), _interval(s["interval"], summary)
        prior = [_pct(s.get("prior"), summary)] if with_prior else []
        rows.append([s["site"], s["verdict"], cost, interval, *prior, how])
    unit = _unit(summary)
    columns = ["Site", "Verdict", f"Cost ({unit})", "Interval"]
    columns += [f"Prior ({unit})"] if with_prior else []
    right = {2, 3, 4} if with_prior else {2, 3}
    return Table([*columns, "Judged"], rows, right=frozenset(right))


def prior_text(summary: dict, strategy: str) -> str | None:
    """How the prior mode spent the runs of ``strategy``, in a sentence; None without priors."""
    part = summary["strategies"][strategy]["search"].get("priors")
    if not part or not part.get("ranked"):
        return None
    low = len(part["candidates"])
    per = " per parameter" if part.get("per_parameter") else ""  # absent: an older record
    ranked = f"{len(part['ranked'])} sites ranked by prior{per}"
    found = (
        f"the {low} lowest of {ranked} were negligible together"
        if low
        else f"not even the lowest of {ranked} was negligible"
    )
    calibrated = (
        f"the smallest set refused (the {len(part['calibrated_on'])} first) put the priors on "
        f"the costs' scale, times {part['factor']:.3g}"
        if part["calibrated_on"]
        else "no set was refused, so the priors were not calibrated"
    )
    rest = (
        f"{sum(map(len, part['groups']))} other sites were judged in {len(part['groups'])} "
        "group(s) by calibrated prior"
        if part["groups"] or not part["middle"]
        else f"{len(part['middle'])} other sites were not judged (--rest label: not run)"
    )
    labelled = len(part["likely_costly"])
    if labelled and not summary.get("confirm"):
        rest += f"; {labelled} labelled likely costly (a prior, not run)"
    return f"By prior: {found}; {calibrated}; {rest}."


def seed_plan_text(summary: dict) -> str | None:
    """The seed plan made before the first judgement (prior mode), in a sentence."""
    plan = summary.get("seed_plan")
    if not plan:
        return None
    worst, best = plan["worst"], plan["best"]
    return (
        f"Seed plan from the baselines' spread: at worst, {worst['seeds']} seeds call a site "
        f"that costs nothing negligible with chance {worst['power']:.0%} (paired SD "
        f"{worst['sd']:.3g} against margin {worst['margin']:.3g}); with the spread pairing "
        f"removes, {best['power']:.0%}."
    )


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
    names = (summary["strategies"][strategy].get("joint") or {}).get("sites") or []
    which = f" ({_listed(names)})" if len(names) == e["sites"] else ""
    return (
        f"{strategy}: {e['params']:,} parameters in {e['sites']} "
        f"{'matrix' if e['sites'] == 1 else 'matrices'}{which} {what} — "
        f"{100 * share:.1f}% of the trainable parameters, {100 * block:.1f}% of those in the "
        f"blocks; joint cost {_pct(e['cost'], summary)}, interval "
        f"{_interval(e['interval'], summary)} ({_unit(summary)}), {e['verdict']}."
    )


def joint_steps(summary: dict, strategy: str) -> list[str]:
    joint = summary["strategies"][strategy].get("joint")
    if not joint:
        return []
    lines = []
    for step in joint["steps"]:
        n = len(step["sites"])
        lines.append(
            f"{n} {'site' if n == 1 else 'sites'} on {step['seeds']} seeds: "
            f"{step['verdict']}, cost {_pct(step['cost'], summary)}, interval "
            f"{_interval(step['interval'], summary)} -> {step['action']}"
        )
    return lines


def statistics_text(results: dict) -> str:
    s = summary_of(results)
    unit = (
        "in nats (the fine-tuning gain was not clearly positive)"
        if _in_nats(s)
        else "as a share of the fine-tuning gain"
    )
    margin = f"{s['margin_used']:g}" + (" nats" if _in_nats(s) else " (a share of the gain)")
    rows = [r for st in s["strategies"].values() for r in st["sites"]]
    if not any(r.get("level") is not None for r in rows):  # unfinished, or written before Holm
        return (
            f"Costs are judged {unit} against the margin {margin}: negligible "
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
        f"Costs are judged {unit} against the margin {margin}: negligible when "
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
    return (
        f"ρ for {'; '.join(parts)} (a scan that is not exhaustive judges some sites only in "
        "groups, or not at all)."
    )


def markdown(results: dict) -> str:
    """``report.md`` of a scan, from its results alone."""
    s = summary_of(results)
    lines = [f"# Scan of `{results['model']}`", "", "## What to do next", ""]
    lines += [*(f"- {step}" for step in next_steps(results)), ""]
    lines += [
        f"{len(results['sites'])} sites, strategies {', '.join(s['strategies'])}, "
        f"{s['mode']} search, up to {seeds_read(results)} seeds, {results['steps']} SFT "
        f"steps, data `{results['data']['spec']}`; {s['runs']} runs.",
        "",
        statistics_text(results),
        "",
    ]
    lines += [said, ""] if (said := seed_plan_text(s)) else []
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
        lines += [said, ""] if (said := prior_text(s, strategy)) else []
        steps = joint_steps(s, strategy)
        if steps:
            numbered = [f"{i}. {step}" for i, step in enumerate(steps, 1)]
            lines += ["Joint check:", "", *numbered, ""]
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
    lines += ["![scores](scores.png)", ""] if drawn(s) else []
    return "\n".join(lines)


def next_steps(results: dict) -> list[str]:
    """What to do next, in plain sentences: the plan to freeze, what it saves and costs with its
    interval, and the command that measures and applies it; or why nothing can be frozen yet."""
    s, model, spec = summary_of(results), results["model"], results["data"]["spec"]
    said = []
    if not s.get("complete", True):
        said.append("This scan is not complete: rerun the same command to finish it.")
    e = s["effective"].get("frozen")
    if e and e["sites"] and e["verdict"] in NEGLIGIBLE:
        names = (s["strategies"]["frozen"].get("joint") or {}).get("sites") or []
        said.append(
            f"Freeze the plan (`plan.json`), {_matrices(names)}: {e['params']:,} parameters, "
            f"{100 * e['fraction_of_trainable']:.1f}% of the trainable ones. Their joint cost is "
            f"{_pct(e['cost'], s)} {_interval(e['interval'], s)} ({_unit(s)}), {e['verdict']}."
        )
        said.append(
            "Measure what it saves (step time, memory) against full SFT: `deadzone freeze "
            f"{model} --schedule plan:DIR/plan.json --data {spec} --out DIR2`; in your own "
            'trainer, `FreezeCallback("plan:DIR/plan.json")`.'
        )
    else:
        said.append("Nothing to freeze yet: no set of matrices was shown jointly negligible.")
    sites = [site for st in s["strategies"].values() for site in st["sites"]]
    unjudged = {site["site"] for site in sites if site.get("label") == NOT_JUDGED}
    if unjudged:
        n = len(unjudged)
        said.append(
            f"{n} {'matrix was' if n == 1 else 'matrices were'} not judged (`--rest label`): "
            "rerun with `--rest judge` into the same directory to map each of them; finished "
            "runs are reused."
        )
    costly = {site["site"] for site in sites if site.get("label") == LIKELY_COSTLY}
    if costly:
        n = len(costly)
        said.append(
            f"{n} {'matrix is' if n == 1 else 'matrices are'} likely costly by "
            f"{'its' if n == 1 else 'their'} prior, not run: `--confirm` judges "
            f"{'it' if n == 1 else 'them'}."
        )
    open_sites = {s["site"] for s in sites if s["verdict"] == "undetermined" and not s.get("label")}
    if open_sites:
        n = len(open_sites)
        said.append(
            f"{n} {'matrix is' if n == 1 else 'matrices are'} undetermined: rerun with more "
            f"seeds (`--seeds {2 * seeds_read(results)}`) into the same directory; finished "
            "runs are reused."
        )
    return said


def write_report(directory: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``heatmap.png`` and, when some score has enough single-site costs
    to scatter, ``scores.png`` in ``directory`` from its ``results.json``; returns their paths
    by name. A scan whose baselines have not all finished is a one-line DeadzoneError: nothing
    can be judged yet."""
    results = read_results(directory, "scan")
    why = not_judged(results)
    if why:
        raise DeadzoneError(f"{Path(directory) / 'results.json'}: {why}")
    plots = {"heatmap.png": lambda results, path: heatmap(results["summary"], path)}
    if drawn(results["summary"]):
        plots["scores.png"] = lambda results, path: scores_plot(results["summary"], path)
    else:
        (Path(directory) / "scores.png").unlink(missing_ok=True)  # not one of an earlier scan
    return {p.name: p for p in write_files(directory, "scan", markdown, plots)}


def _rho_cell(c: dict | None) -> str:
    if not c or c.get("rho") is None:
        return "—"
    return f"{c['rho']:+.2f} (p={c['p']:.2g}, n={c['n']})"


def html_report(directory: Path, results: dict, study: bool = False) -> html.Report:
    """Rewrite ``report.md``, ``heatmap.png`` and ``scores.png``; return the scan's section,
    its joint checks step by step as in ``report.md``."""
    write_report(directory)
    summary = results["summary"]
    blocks: list = [html.Paragraph(statistics_text(results))]
    blocks += [html.Paragraph(said)] if (said := seed_plan_text(summary)) else []
    blocks += [html.Paragraph(effective_text(summary, s)) for s in summary["strategies"]]
    blocks += html.figures(directory, (("heatmap.png", "cost of each site"),))
    for strategy in summary["strategies"]:
        inner: list = [html.from_table(sites_table(summary, strategy))]
        inner += [html.Paragraph(said)] if (said := prior_text(summary, strategy)) else []
        if steps := joint_steps(summary, strategy):
            inner += [html.Paragraph("Joint check:"), html.Items(steps, ordered=True)]
        blocks.append(html.Section(f"{strategy}: every site", inner))
    rows = [
        [score] + [_rho_cell(st.get("correlations", {}).get(score)) for st in
                   summary["strategies"].values()]
        for score in summary["scores"]
    ]  # fmt: skip
    columns = ["Score", *(f"{st}: ρ (p, n)" for st in summary["strategies"])]
    blocks.append(html.from_table(Table(columns, rows)))
    if note := rho_note(summary):
        blocks.append(html.Paragraph(note))
    blocks += html.figures(directory, (("scores.png", "scores against costs"),))
    blocks += html.provenance(results)
    title = f"Scan of `{results['model']}`"
    return html.Report(title, results["model"], results["data"]["spec"], next_steps(results),
                       [html.Section(title, blocks)])  # fmt: skip
