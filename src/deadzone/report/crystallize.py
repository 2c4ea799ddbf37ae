"""``report.md`` and ``curves.png`` of a crystallize experiment, from its ``results.json`` alone."""

from __future__ import annotations

import statistics
from pathlib import Path

from deadzone.report import html, pyplot, save_png, write_files
from deadzone.report.table import Table, to_markdown

LABELS = {
    "full": "Full SFT (all params)",
    "frozen": "Frozen (pretrained values)",
    "crystal": "Crystal (rank-{rank} approximation, frozen)",
    "random": "Random (re-initialised values, frozen)",
    "zero": "Zero (zeros, frozen)",
}


# What each strategy does to the target, as a participle and as the name of a cost.
DONE = {
    "frozen": "frozen",
    "crystal": "crystallized to rank {rank}",
    "random": "replaced by random values",
    "zero": "zeroed",
}
COST = {
    "frozen": "freezing {it}",
    "crystal": "crystallizing {it} to rank {rank}",
    "random": "replacing {it} by random values",
    "zero": "zeroing {it}",
}


def label(strategy: str, rank: int | None) -> str:
    return LABELS.get(strategy, strategy).format(rank=rank)


def _loss(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def _in_unit(value: float, unit: str) -> str:
    """A cost in the summary's unit: a share of the gain as %, nats as nats, exact match in
    percentage points."""
    if unit == "rate":
        return f"{100 * value:+.1f} pts"
    return f"{100 * value:+.2f}%" if unit == "share_of_gain" else f"{value:+.4f}"


def _interval(interval: list[float] | None, unit: str) -> str:
    if interval is None:
        return "—"
    return f"[{_in_unit(interval[0], unit)}, {_in_unit(interval[1], unit)}]"


def cost_text(cost: dict, unit: str) -> str:
    """``+1.23% [+0.50%, +1.96%] of the gain`` (or in nats): a cost with its adjusted interval."""
    size = f"{_in_unit(cost['mean'], unit)} {_interval(cost['adjusted'], unit)}"
    return size + {"share_of_gain": " of the gain", "rate": " of exact match"}.get(unit, " nats")


def _unit_name(summary: dict) -> str:
    return {"share_of_gain": "share of gain", "rate": "exact match"}.get(summary["unit"], "nats")


def _has_exact_match(summary: dict) -> bool:
    return any(s.get("exact_match_mean") is not None for s in summary["arms"])


def _exact_match_cells(s: dict, unit: str) -> list[str]:
    """An arm's exact-match rate (mean ± SD) and, unless it is the verdict's unit, its cost in
    points with the unadjusted 95% interval."""
    mean, std = s.get("exact_match_mean"), s.get("exact_match_std")
    rate = "—" if mean is None else f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std else "")
    if unit == "rate":
        return [rate]
    cost = (s.get("cost") or {}).get("rate")
    if not cost or cost["mean"] is None:
        return [rate, "—"]
    return [rate, f"{_in_unit(cost['mean'], 'rate')} {_interval(cost['interval'], 'rate')}"]


def _verdict(record: dict) -> str:
    if record.get("seeds_needed"):
        return f"{record['verdict']} (~{record['seeds_needed']:,} seeds would decide)"
    return record["verdict"]


def table_model(results: dict) -> Table:
    """The study's columns (strategy, final loss, vs full), then the cost in nats and, when the
    verdicts are judged in another unit, in that unit too, with the Holm-adjusted interval
    in the verdict's unit, the verdict, and the exact match where it was measured."""
    summary = results["summary"]
    unit = summary["unit"]
    in_nats = unit == "nats"  # then the verdict's cost is the nats column: print it once
    em = _has_exact_match(summary)
    em_columns = ["Exact match", *([] if unit == "rate" else ["Exact-match cost, 95% CI"])]
    columns = [
        "Strategy", "Final train loss", "vs full", "Final eval loss", "vs full", "Cost (nats)",
        *([] if in_nats else [f"Cost ({_unit_name(summary)})"]), "Holm-adjusted 95% CI",
        "Verdict", *(em_columns if em else []), "Trainable params",
    ]  # fmt: skip
    rows = []
    for s in summary["arms"]:
        base = s["verdict"] == "baseline"
        n = f" (n={s['n']}" + (f", {s['failed']} failed)" if s["failed"] else ")")
        params = "—" if s["trainable_params"] is None else f"{s['trainable_params']:,}"
        cost = None if base else s["cost"]
        judged = cost[unit] if cost else None
        nats = "—" if not cost or cost["nats"]["mean"] is None else f"{cost['nats']['mean']:+.4f}"
        share = "—" if not judged or judged["mean"] is None else _in_unit(judged["mean"], unit)
        if unit == "rate" and cost and cost["nats"]["interval"]:  # eval loss beside the verdict's
            nats += " " + _interval(cost["nats"]["interval"], "nats")
        rows.append(
            [
                label(s["strategy"], s["rank"]) + n,
                _loss(s["train_loss_mean"], s["train_loss_std"]),
                "baseline" if base else _pct(s["delta_train_pct"]),
                _loss(s["eval_loss_mean"], s["eval_loss_std"]),
                "baseline" if base else _pct(s["delta_eval_pct"]),
                nats,
                *([] if in_nats else [share]),
                "—" if not judged else _interval(judged["adjusted"], unit),
                _verdict(s),
                *(_exact_match_cells(s, unit) if em else []),
                params,
            ]
        )
    left = ("Strategy", "Verdict", "Holm-adjusted 95% CI")
    right = {i for i, c in enumerate(columns) if c not in left}
    return Table(columns, rows, right=frozenset(right))


def table(results: dict) -> str:
    """The table in Markdown."""
    return to_markdown(table_model(results))


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _done(strategy: str, rank: int | None) -> str:
    return DONE.get(strategy, f"given strategy {strategy}").format(rank=rank)


def _cost(strategy: str, rank: int | None, n_targets: int) -> str:
    it = "it" if n_targets == 1 else "them"
    return COST.get(strategy, f"strategy {strategy}").format(rank=rank, it=it)


def _margin(summary: dict) -> str:
    """The margin the verdicts used, in words."""
    gain = summary["gain"]
    if summary["unit"] == "rate":
        return (
            "Verdicts are judged on exact match of greedy completions (--endpoint exact_match): "
            "a cost is full SFT's exact-match rate minus the strategy's, paired by seed, against "
            f"a margin of {100 * summary['margin_rate']:g} points."
        )
    if summary["unit"] == "share_of_gain":
        return (
            f"Fine-tuning lowered the eval loss by {gain['mean']:.4f} nats "
            f"[{gain['interval'][0]:.4f}, {gain['interval'][1]:.4f}] (the gain); a cost is "
            f"judged as a share of it, against a margin of {100 * summary['margin']:g}% of the "
            f"gain ({summary['margin'] * gain['mean']:.4f} nats)."
        )
    why = (
        "could not be measured (fewer than two seeds of full SFT)"
        if gain["interval"] is None
        else f"is not clearly positive ({gain['mean']:+.4f} nats "
        f"[{gain['interval'][0]:+.4f}, {gain['interval'][1]:+.4f}])"
    )
    return (
        f"The fine-tuning gain {why}, so a cost is judged in nats, against a margin of "
        f"{summary['margin_nats']:g} nats."
    )


def _said(s: dict, summary: dict, target: str, n_targets: int) -> str:
    """One sentence on one arm's cost and verdict."""
    unit, cost = summary["unit"], s["cost"]
    what = _cost(s["strategy"], s["rank"], n_targets).capitalize()
    judged = cost[unit]
    if judged["adjusted"] is None:
        return f"{what}: undetermined ({s['reason']})."
    size = cost_text(judged, unit)
    if s["verdict"] == "negligible" and s["strategy"] == "crystal":
        return f"{what} costs {size}: negligible — rank {s['rank']} suffices for {target}."
    if s["verdict"] == "negligible":
        return (
            f"{what} costs {size}: negligible — {target} is redundant when "
            f"{_done(s['strategy'], s['rank'])}."
        )
    if s["verdict"] == "better":
        return f"{what} lowers the eval loss, {size}: better than full SFT."
    if s["verdict"] == "costly":
        return f"{what} costs {size}: costly."
    needed = s.get("seeds_needed")
    more = f"; about {needed:,} seeds would decide it" if needed else ""
    return f"{what} costs {size}: undetermined (the interval straddles the margin{more})."


def _crystallization(summary: dict, ranks: list[int]) -> str:
    found = summary.get("crystallization_rank")
    if found is None:
        tried = ", ".join(map(str, ranks))
        return f"No rank tried ({tried}) costs less than the margin: no crystallization rank."
    k = found["rank"]
    if found["factor_params"] is None:
        return f"Crystallization rank: {k}."
    return (
        f"Crystallization rank: {k}, the smallest rank whose cost is below the margin; its "
        f"factors take {found['factor_params']:,} parameters (k·(out + in)) against "
        f"{found['dense_params']:,} dense (out·in)."
    )


def conclusion(results: dict) -> str:
    """The result in plain words, arm by arm, from the verdicts and adjusted intervals."""
    summary = results["summary"]
    compared = [s for s in summary["arms"] if s["verdict"] != "baseline"]
    target, n_targets = _names(results["targets"]), len(results["targets"])
    said = [_margin(summary)] + [_said(s, summary, target, n_targets) for s in compared]
    if any(s["strategy"] == "crystal" for s in compared):
        said.append(_crystallization(summary, results["ranks"]))
    failed = sum(s["failed"] for s in summary["arms"])
    if failed:
        said.append(f"{failed} run(s) failed; see `results.json` for the reasons.")
    tested = sum(s["level"] is not None for s in compared)
    if tested > 1:
        said.append(
            f"The intervals are Holm-adjusted over the {tested} comparisons (family-wise "
            f"error {100 * summary['alpha']:g}%)."
        )
    return f"Over {len(results['seeds'])} seed(s): " + " ".join(said)


def shared_note(results: dict) -> str:
    """A sentence for targets whose storage other parameters share (a tied embedding)."""
    shared = {}
    for run in results["runs"]:
        for site in run.get("sites", []):
            if site.get("shared_with"):
                shared[site["site"]] = site["shared_with"]
    notes = [
        f"`{site}` shares its storage with {', '.join(f'`{n}`' for n in names)}: every "
        "strategy applied to it applies to them too."
        for site, names in shared.items()
    ]
    return " ".join(notes) + "\n\n" if notes else ""


def setup_text(results: dict) -> str:
    """One sentence: steps, optimizer, ranks, seeds and data of the experiment."""
    data, cfg = results["data"], results["config"]
    counts = data.get("counts", {})
    return (
        f"{results['steps']} SFT steps (lr {cfg['lr']:g}, batch {cfg['batch_size']}"
        f" × {cfg['grad_accum']}), crystal rank(s) {', '.join(map(str, results['ranks']))}, "
        f"seeds {', '.join(str(s) for s in results['seeds'])}; data `{data['spec']}` "
        f"({counts.get('train_examples', '?')} train / {counts.get('eval_examples', '?')} eval "
        f"examples, sha256 {data['content_hash'][:12]})."
    )


FREE = ("negligible", "better")


def command(results: dict, seeds: int | None = None) -> str:
    """The ``deadzone crystallize`` command of this experiment, with ``seeds`` seeds."""
    arms = results["summary"]["arms"]
    strategies = results.get("strategies") or list(dict.fromkeys(a["strategy"] for a in arms))
    ranks = f" --rank {','.join(map(str, results['ranks']))}" if "crystal" in strategies else ""
    return (
        f"deadzone crystallize {results['model']} --target {','.join(results['targets'])} "
        f"--strategies {','.join(strategies)}{ranks} --steps {results['steps']} "
        f"--seeds {seeds or len(results['seeds'])} --data {results['data']['spec']} --out DIR"
    )


def next_steps(results: dict) -> list[str]:
    """What to do next, in plain sentences: what to freeze, what it saves and costs (with its
    interval), and the command to run next."""
    summary, unit = results["summary"], results["summary"]["unit"]
    target = _names(results["targets"])
    arms = [a for a in summary["arms"] if a["verdict"] != "baseline"]
    full = next((a for a in summary["arms"] if a["verdict"] == "baseline"), None)
    free = [a for a in arms if a["verdict"] in FREE]
    said = []
    for a in free:
        saved = ""
        if full and full["trainable_params"] and a["trainable_params"] is not None:
            fewer = full["trainable_params"] - a["trainable_params"]
            saved = f", and trains {fewer:,} fewer parameters ({_share(fewer, full)} of full's)"
        what = _cost(a["strategy"], a["rank"], len(results["targets"]))
        said.append(
            f"Freeze {target}: {what} costs {cost_text(a['cost'][unit], unit)}, "
            f"{a['verdict']}{saved}."
        )
    if not free:
        said.append(f"Keep {target} training: no strategy was shown to cost less than the margin.")
    needed = [a["seeds_needed"] for a in arms if a["verdict"] == "undetermined" and
              a.get("seeds_needed")]  # fmt: skip
    if needed:
        n = min(needed)
        said.append(
            f"To decide the undetermined, rerun with about {n:,} seeds into the same directory "
            f"(finished runs are reused): `{command(results, n)}`."
        )
    said.append(
        f"Next, map the whole model: `deadzone scan {results['model']} --data "
        f"{results['data']['spec']} --out DIR` ends in a freeze plan with its joint cost."
    )
    return said


def _share(part: int, full: dict) -> str:
    return f"{100 * part / full['trainable_params']:.2f}%"


def markdown(results: dict) -> str:
    steps = "".join(f"- {s}\n" for s in next_steps(results))
    return (
        f"# Crystallize {_names(results['targets'])} of `{results['model']}`\n\n"
        f"## What to do next\n\n{steps}\n"
        f"{setup_text(results)}\n\n"
        f"{table(results)}\n\n"
        f"{EXPLAINED}\n\n"
        f"{shared_note(results)}"
        f"**Conclusion.** {conclusion(results)}\n\n"
        f"{samples_text(results)}"
        "![verdicts](verdicts.png)\n\n"
        "![loss curves](curves.png)\n"
    )


def samples_text(results: dict) -> str:
    """A few greedy completions of full SFT (its first seed), if its runs scored exact match."""
    full = next((s for s in results["summary"]["arms"] if s["verdict"] == "baseline"), None)
    samples = (full or {}).get("exact_match_samples") or []
    if not samples:
        return ""
    shown = "".join(
        f"- {'match' if x['match'] else 'no match'}: …`{_one_line(x['prompt'][-80:])}` → "
        f"`{_one_line(x['completion'])}` (target `{_one_line(x['target'])}`)\n"
        for x in samples
    )
    n = results.get("exact_match_examples")
    return f"Exact match is scored on the first {n} eval examples; full SFT's samples:\n\n{shown}\n"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("`", "'")


EXPLAINED = (
    "Final train loss: mean training loss over the last 10% of steps; final eval loss: on the "
    "held-out set after the last step; both token-weighted, mean ± standard deviation over "
    "seeds. *vs full* and the costs are means of the per-seed (paired) differences against full "
    "SFT, which saw the same batches, over the seeds where both finished. The share of the gain "
    "divides each seed's cost by that seed's fine-tuning gain (full SFT's step-0 eval loss minus "
    "its final one). The interval is Student's t interval of the paired costs at the level "
    "Holm's step-down procedure tested the comparison at (the unadjusted 95% intervals are in "
    "`results.json`). Verdict: *better* if the whole interval is below zero, else *negligible* "
    "if it is below the margin, *costly* if it is above it, *undetermined* if it straddles it "
    "(with the seeds that would likely decide it) or if fewer than two seeds were paired."
)


def plot_verdicts(results: dict, path: str | Path) -> None:
    """A forest plot: per arm its mean cost with the Holm-adjusted (thick, light) and unadjusted
    (thin) intervals, the margin as a band from zero, zero as a line."""
    plt = pyplot()
    summary = results["summary"]
    unit, scale = summary["unit"], 100.0 if summary["unit"] in ("share_of_gain", "rate") else 1.0
    arms = [s for s in summary["arms"] if s["verdict"] != "baseline"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(1, len(arms))), constrained_layout=True)
    ax.axvspan(0, scale * summary["margin_used"], color="C2", alpha=0.15, label="0 to the margin")
    ax.axvline(0, color="k", lw=1)
    for y, s in enumerate(reversed(arms)):
        cost = s["cost"][unit]
        if cost["mean"] is None:
            continue
        styles = (
            (cost["adjusted"], "Holm-adjusted", 6, 0.4),
            (cost["interval"], "unadjusted 95%", 1.5, 1),
        )
        for interval, name, lw, alpha in styles:
            if interval is not None:
                ax.plot([scale * v for v in interval], [y, y], color="C0", lw=lw, alpha=alpha,
                        label=None if y else name)  # fmt: skip
        ax.plot(scale * cost["mean"], y, "o", color="C0")
        ax.annotate(
            s["verdict"], (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=9
        )
    ax.set_yticks(range(len(arms)), [label(s["strategy"], s["rank"]) for s in reversed(arms)])
    ax.set_ylim(-0.7, len(arms) - 0.3)
    xlabel = {"share_of_gain": "% of the fine-tuning gain", "rate": "exact-match points"}
    ax.set_xlabel(f"cost, {xlabel.get(unit, 'nats')}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=3, frameon=False)
    ax.set_title(f"{_names(results['targets'])}: cost vs full SFT, {len(results['seeds'])} seeds")
    save_png(fig, path)


def _series(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard deviation over runs of ``key`` where every run has it."""
    steps = [p["step"] for p in runs[0]["curve"] if p[key] is not None]
    by_run = [{p["step"]: p[key] for p in r["curve"] if p[key] is not None} for r in runs]
    steps = [s for s in steps if all(s in values for values in by_run)]
    values = [[values[s] for values in by_run] for s in steps]
    mean = [statistics.fmean(v) for v in values]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
    return steps, mean, std


def _paired_series(runs: list[dict], full: dict[int, dict]) -> tuple[list, list, list]:
    """Per eval step, mean and std over seeds of the eval loss vs full SFT's, in percent."""
    pct = []
    for r in runs:
        if r["seed"] not in full:
            continue
        base = {p["step"]: p["eval_loss"] for p in full[r["seed"]]["curve"]}
        pct.append(
            {
                "curve": [
                    {"step": p["step"], "eval_loss": 100 * (p["eval_loss"] / base[p["step"]] - 1)}
                    for p in r["curve"]
                    if p["eval_loss"] is not None and base.get(p["step"])
                ]
            }
        )
    return _series(pct, "eval_loss") if pct and pct[0]["curve"] else ([], [], [])


def _band(ax, steps, mean, std, **kwargs) -> None:
    (line,) = ax.plot(steps, mean, lw=1.5, **kwargs)
    lo = [m - s for m, s in zip(mean, std, strict=True)]
    hi = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def plot_curves(results: dict, path: str | Path) -> None:
    """Train loss, eval loss, and eval loss vs full SFT (paired by seed), per strategy: the mean
    over seeds with a ±1 std band."""
    plt = pyplot()

    # One column: legible on a phone's width too; the legend beside the axes, never on a curve.
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True, layout="constrained")
    ok = [r for r in results["runs"] if r["status"] == "ok"]
    full = {r["seed"]: r for r in ok if r["strategy"] == "full"}
    for i, a in enumerate(results["summary"]["arms"]):
        strategy = a["strategy"]
        runs = [r for r in ok if (r["strategy"], r.get("rank")) == (strategy, a["rank"])]
        if not runs:
            continue
        style = {"label": label(strategy, a["rank"]), "color": f"C{i}"}
        _band(axes[0], *_series(runs, "train_loss"), **style)
        _band(axes[1], *_series(runs, "eval_loss"), **style)
        if strategy != "full":
            _band(axes[2], *_paired_series(runs, full), **style)
    axes[2].axhline(0.0, color="C0", lw=1, ls="--", label="full SFT")
    axes[2].set_xlabel("step")
    titles = ("train loss", "eval loss", "eval loss vs full SFT, same seed (%)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title)
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:  # no run finished: nothing to label
        handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(f"{_names(results['targets'])} — mean ± std over {len(results['seeds'])} seeds")
    save_png(fig, path)


# Every report module has write_report and html_report of this shape: report/build.py's
# registry calls them by experiment.
def write_report(out: str | Path) -> tuple[Path, ...]:
    """Write ``report.md``, ``verdicts.png`` and ``curves.png`` in ``out`` from
    ``out/results.json``."""
    plots = {"verdicts.png": plot_verdicts, "curves.png": plot_curves}
    return write_files(out, "crystallize", markdown, plots)


def html_report(directory: Path, results: dict, study: bool = False) -> html.Report:
    """Rewrite ``report.md`` and its plots; return the crystallize section for a page."""
    write_report(directory)
    blocks: list = [html.Paragraph(setup_text(results)), html.from_table(table_model(results))]
    blocks.append(html.Paragraph(f"Conclusion. {conclusion(results)}"))
    if note := shared_note(results).strip():
        blocks.append(html.Paragraph(note))
    blocks += html.figures(directory, (("verdicts.png", "verdicts"), ("curves.png", "curves")))
    blocks += html.provenance(results)
    title = f"Crystallize {', '.join(results['targets'])} of `{results['model']}`"
    section = html.Section(title, blocks)
    return html.Report(title, results["model"], results["data"]["spec"], next_steps(results),
                       [section])  # fmt: skip
