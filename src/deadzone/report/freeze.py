"""``report.md``, ``pareto.png`` and ``timeline.png`` of a freeze experiment, from its
``results.json`` alone."""

from __future__ import annotations

import statistics
from pathlib import Path

from deadzone.report import html, pyplot, save_png, write_files
from deadzone.report.crystallize import (
    _in_unit,
    _interval,
    _loss,
    _unit_name,
    _verdict,
    cost_text,
)
from deadzone.report.table import Table, to_markdown


def _estimate(estimate: dict | None, fmt: str, unit: str = "") -> str:
    """A mean with its 95% interval when there is one, each as ``fmt``: ``0.71× [0.65, 0.77]``
    (``fmt`` ``.2f``, ``unit`` ×), ``+0.0123 [-0.0040, +0.0286]`` (``fmt`` ``+.4f``)."""
    if not estimate or estimate["mean"] is None:
        return "—"
    interval = estimate["interval"]
    said = f"{estimate['mean']:{fmt}}{unit}"
    return said + (f" [{interval[0]:{fmt}}, {interval[1]:{fmt}}]" if interval else "")


def _ratio(saving: dict | None) -> str:
    """``0.71× [0.65, 0.77]``: a paired ratio against full with its 95% interval. A ratio is
    positive: an interval made on the arithmetic scale that reaches zero or below is not shown
    as one (the ratio alone, and why)."""
    if saving and saving.get("interval") and saving["interval"][0] <= 0:
        return f"{saving['mean']:.2f}× (arithmetic interval reaches 0: none shown)"
    return _estimate(saving, ".2f", "×")


def ratio_words(results: dict) -> str:
    """How the × columns were made: geometric means with log-scale intervals (``scale: log``
    in the results), else arithmetic means of the per-seed ratios."""
    savings = [a["savings"]["wall_time"] for a in results["summary"]["arms"] if a.get("savings")]
    if any(s and s.get("scale") == "log" for s in savings):
        return (
            "geometric means of the per-seed ratios against full, with 95% t intervals of the "
            "log ratios mapped back (a ratio's interval is never below zero)"
        )
    return "means of per-seed ratios against full with their 95% t intervals"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def table_model(results: dict) -> Table:
    """Per schedule: final eval loss, vs full, cost in the verdict's unit with its
    Holm-adjusted interval, verdict, wall time, CPU time and optimizer-state peak against
    full, and the share of block-matrix parameters frozen at the end (and on average)."""
    summary = results["summary"]
    unit = summary["unit"]
    columns = [
        "Schedule", "Final eval loss", "vs full", f"Cost ({_unit_name(summary)})",
        "Holm-adjusted 95% CI", "Verdict", "Wall time × full", "CPU time × full",
        "Optimizer peak × full", "Optimizer mean × full", "Frozen at end (mean)",
        "vs random (nats)",
    ]  # fmt: skip
    rows = []
    for arm in summary["arms"]:
        base = arm["verdict"] == "baseline"
        n = f" (n={arm['n']}" + (f", {arm['failed']} failed)" if arm["failed"] else ")")
        judged = None if base or not arm.get("cost") else arm["cost"][unit]
        s = arm["savings"]
        rows.append(
            [
                arm["schedule"] + n,
                _loss(arm["eval_loss_mean"], arm["eval_loss_std"]),
                "baseline" if base else _pct(arm["delta_eval_pct"]),
                "—" if not judged or judged["mean"] is None else _in_unit(judged["mean"], unit),
                "—" if not judged else _interval(judged["adjusted"], unit),
                _verdict(arm),
                "1.00×" if base else _ratio(s["wall_time"]),
                "1.00×" if base else _ratio(s["cpu_time"]),
                "1.00×" if base else _ratio(s["optimizer_peak"]),
                "1.00×" if base else _ratio(s["optimizer_mean"]),
                f"{_share(s['frozen_fraction'])} ({_share(s['frozen_fraction_mean'])})",
                _estimate(arm.get("vs_random"), "+.4f"),
            ]
        )
    return Table(columns, rows, right=frozenset({1, 2, 3, 6, 7, 8, 9, 10}))


def measures_model(results: dict) -> Table:
    """Per schedule, the means over its finished runs of what each run measured: tokens per
    second, peak memory (the run's own; a lifetime peak of the process is left out), and the
    share of all parameters trainable at the last step; the first two also against full."""
    summary = results["summary"]
    columns = [
        "Schedule", "Tokens/s", "× full", "Peak memory (MiB)", "× full", "Trainable at end",
    ]  # fmt: skip
    rows = []
    for arm in summary["arms"]:
        base = arm["verdict"] == "baseline"
        runs = [
            r for r in results["runs"]
            if r.get("schedule") == arm["schedule"] and r.get("status") == "ok"
        ]  # fmt: skip
        peaks = [r["peak_memory_bytes"] for r in runs if r.get("peak_memory_scope") != "process"]
        ends = [r["curve"][-1]["trainable_params"] / r["total_params"] for r in runs if r["curve"]]
        s = arm["savings"]
        rows.append(
            [
                arm["schedule"],
                _mean((r["tokens_per_second"] for r in runs), ",.0f"),
                "1.00×" if base else _ratio(s["tokens_per_second"]),
                _mean((b / 2**20 for b in peaks), ",.0f"),
                "1.00×" if base else _ratio(s["peak_memory"]),
                _mean((100 * e for e in ends), ".0f", "%"),
            ]
        )
    return Table(columns, rows, right=frozenset({1, 2, 3, 4, 5}))


def _mean(values, fmt: str, unit: str = "") -> str:
    values = list(values)
    return f"{statistics.fmean(values):{fmt}}{unit}" if values else "—"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def conclusion(results: dict) -> str:
    """Which schedules save time at a negligible cost, and how the others fare against the
    random control; in the words of the verdicts."""
    summary = results["summary"]
    arms = [a for a in summary["arms"] if a["verdict"] != "baseline"]
    if not arms:
        return "Only full SFT ran: there is nothing to compare."
    said = []
    for arm in arms:
        wall = arm["savings"]["wall_time"]["mean"]
        time = f"{wall:.2f}× full's wall time" if wall is not None else "no paired time"
        said.append(f"`{arm['schedule']}` is {arm['verdict']} at {time}")
    free = [a for a in arms if a["verdict"] in ("negligible", "better") and _saves_time(a)]
    text = "; ".join(said) + "."
    if free:
        best = min(free, key=lambda a: a["savings"]["wall_time"]["mean"])
        text += (
            f" The cheapest schedule whose cost is within the margin is `{best['schedule']}` "
            f"({best['savings']['wall_time']['mean']:.2f}× wall time, "
            f"{_ratio(best['savings']['optimizer_peak'])} optimizer state)."
        )
    else:
        text += " No schedule both saved time and had a cost shown to be within the margin."
    versus = [a for a in arms if a.get("vs_random") and a["vs_random"]["mean"] is not None]
    if versus:
        ahead = [f"`{a['schedule']}`" for a in versus if a["vs_random"]["ahead"]]
        text += (
            f" Ahead of the random control by more than the noise: {', '.join(ahead)}."
            if ahead
            else " No schedule is ahead of the random control by more than the noise."
        )
    return text


def _saves_time(arm: dict) -> bool:
    wall = arm["savings"]["wall_time"]["mean"]
    return wall is not None and wall < 1


def title(results: dict) -> str:
    """The report's title, with the share frozen (two freeze reports on one page differ)."""
    return f"Freeze schedules on `{results['model']}`, {_share(results['target_fraction'])} frozen"


def next_steps(results: dict) -> list[str]:
    """What to do next: the schedule to use, what it saves and costs with their intervals, and
    the command; or what would decide."""
    summary, unit = results["summary"], results["summary"]["unit"]
    arms = [a for a in summary["arms"] if a["verdict"] != "baseline"]
    free = [a for a in arms if a["verdict"] in ("negligible", "better") and _saves_time(a)]
    said = []
    if free:
        best = min(free, key=lambda a: a["savings"]["wall_time"]["mean"])
        s = best["savings"]
        said.append(
            f"Freeze with `{best['schedule']}`: {_ratio(s['wall_time'])} full's wall time, "
            f"{_ratio(s['optimizer_peak'])} its optimizer state; it costs "
            f"{cost_text(best['cost'][unit], unit)}, {best['verdict']}."
        )
        said.append(
            f"Use it in your trainer: `FreezeCallback({best['schedule']!r})`; before a long run, "
            f"check it over more steps: `deadzone freeze {results['model']} --schedule "
            f"{best['schedule']} --steps {2 * results['steps']} --data {results['data']['spec']} "
            "--out DIR`."
        )
    else:
        said.append(
            "Keep full SFT for now: no schedule both saved time and had a cost shown to be "
            "within the margin."
        )
    needed = [a["seeds_needed"] for a in arms if a.get("seeds_needed")]
    if needed:
        said.append(
            f"About {min(needed):,} seeds would decide the undetermined schedules: rerun with "
            f"`--seeds {min(needed)}` into the same directory (finished runs are reused)."
        )
    return said


def markdown(results: dict) -> str:
    data, cfg = results["data"], results["config"]
    counts = data.get("counts", {})
    steps = "".join(f"- {s}\n" for s in next_steps(results))
    return (
        f"# {title(results)}\n\n## What to do next\n\n{steps}\n"
        f"{results['steps']} SFT steps (lr {cfg['lr']:g}, batch {cfg['batch_size']} × "
        f"{cfg['grad_accum']}); {_share(results['target_fraction'])} of the block-matrix "
        f"parameters frozen by {_by(results)}, unit `{results['unit']}`; seeds "
        f"{', '.join(str(s) for s in results['seeds'])}; data `{data['spec']}` "
        f"({counts.get('train_examples', '?')} train / {counts.get('eval_examples', '?')} eval "
        f"examples, sha256 {data['content_hash'][:12]}).\n\n"
        f"{to_markdown(table_model(results))}\n\n{explained(results)}\n\n"
        f"Measured per run (means over the seeds; × full: {ratio_words(results)}):\n\n"
        f"{to_markdown(measures_model(results))}\n\n"
        f"**Conclusion.** {conclusion(results)}\n\n"
        "![saving against cost](pareto.png)\n\n![frozen share and step time](timeline.png)\n"
    )


def _by(results: dict) -> str:
    by = results["freeze_by"]
    return f"step {by}" if isinstance(by, int) else f"{100 * by:.0f}% of training"


def explained(results: dict) -> str:
    """The table's columns in words."""
    return EXPLAINED.format(ratios=ratio_words(results))


EXPLAINED = (
    "Each schedule ran once per seed beside full SFT on the same batches. *vs full* and the "
    "cost are means of the per-seed paired differences in final eval loss; the cost is judged "
    "as in `crystallize` (share of full's fine-tuning gain against the margin, Holm over the "
    "schedules; *negligible* means the whole interval lies below the margin). The × columns "
    "are {ratios}: wall time (noisy "
    "on a shared machine), this process's CPU time (the fair clock there), the peak of the "
    "optimizer's state and its mean over the steps (a staggered schedule freezes nothing at "
    "step 1, so its peak is full's). *Frozen*: share of block-matrix parameters frozen at the "
    "last step (and averaged over the steps). *vs random*: paired difference in final eval "
    "loss against the random control, with its 95% interval; a schedule is ahead of it when "
    "the whole interval is below zero. The control freezes the units of `plan` and `geometry` "
    "on their ramp to the target, in a seeded random order (`plan` also freezes its sites at "
    "step 1); `freezeout`, `autofreeze` and `lisa` keep times of their own."
)


def plot_pareto(results: dict, path: str | Path) -> None:
    """Saving (1 - CPU time × full) against cost, one point per schedule, with intervals."""
    plt = pyplot()
    summary = results["summary"]
    unit = summary["unit"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for arm in summary["arms"]:
        if arm["verdict"] == "baseline" or not arm.get("cost"):
            continue
        cost, clock = arm["cost"][unit], arm["savings"]["cpu_time"]
        if cost["mean"] is None or clock["mean"] is None:
            continue
        scale = 100 if unit == "share_of_gain" else 1
        x, y = scale * cost["mean"], 1 - clock["mean"]
        xerr = yerr = None
        if cost["adjusted"]:
            lo, hi = cost["adjusted"]
            xerr = [[x - scale * lo], [scale * hi - x]]
        if clock["interval"]:
            lo, hi = clock["interval"]
            yerr = [[y - (1 - hi)], [(1 - lo) - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=arm["schedule"])
    margin = summary["margin_used"] * (100 if unit == "share_of_gain" else 1)
    ax.axvline(margin, color="grey", ls="--", lw=1, label="margin")
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("cost, " + ("% of the fine-tuning gain" if unit == "share_of_gain" else "nats"))
    ax.set_ylabel("CPU time saved (1 − × full)")
    ax.set_title(f"{results['model']}: saving against cost, {len(results['seeds'])} seeds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    save_png(fig, path)


def _mean_by_step(runs: list[dict], value) -> tuple[list[int], list[float]]:
    steps = sorted({p["step"] for r in runs for p in r["curve"] if p["step"] > 0})
    means = [
        statistics.fmean(value(r, p) for r in runs for p in r["curve"] if p["step"] == s)
        for s in steps
    ]
    return steps, means


def _frozen_share(run: dict, point: dict) -> float:
    """Share of block-matrix parameters frozen during ``point``'s step (from the timeline)."""
    share = 0.0
    for entry in run.get("timeline") or []:
        if entry["step"] <= point["step"]:
            share = entry["fraction"]
    return share


def plot_timeline(results: dict, path: str | Path) -> None:
    """Share of block-matrix parameters frozen and step time against step, mean over seeds."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, layout="constrained")
    ok = [r for r in results["runs"] if r.get("status") == "ok"]
    for name in dict.fromkeys(r["schedule"] for r in ok):
        runs = [r for r in ok if r["schedule"] == name]
        steps, frozen = _mean_by_step(runs, _frozen_share)
        top.step(steps, [100 * f for f in frozen], where="post", label=name)
        steps, seconds = _mean_by_step(runs, lambda r, p: 1000 * p["step_seconds"])
        bottom.plot(steps, seconds, label=name, lw=1)
    top.set_ylabel("block matrices frozen (%)")
    bottom.set_ylabel("step wall time (ms)")
    bottom.set_xlabel("step")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    top.set_title(f"{results['model']}: mean over {len(results['seeds'])} seeds")
    save_png(fig, path)


# Every report module has write_report and html_report of this shape: report/build.py's
# registry calls them by experiment.
def write_report(out: str | Path) -> tuple[Path, ...]:
    """Write ``report.md``, ``pareto.png`` and ``timeline.png`` in ``out`` from
    ``out/results.json``."""
    plots = {"pareto.png": plot_pareto, "timeline.png": plot_timeline}
    return write_files(out, "freeze", markdown, plots)


def html_report(directory: Path, results: dict, study: bool = False) -> html.Report:
    """Rewrite ``report.md`` and its plots; return the freeze section for a page."""
    write_report(directory)
    blocks: list = [html.from_table(table_model(results))]
    blocks.append(html.Paragraph(f"Conclusion. {conclusion(results)}"))
    blocks.append(html.Paragraph(explained(results)))
    shown = (("pareto.png", "saving against cost"), ("timeline.png", "timeline"))
    blocks += html.figures(directory, shown) + html.provenance(results)
    section = html.Section(title(results), blocks)
    return html.Report(title(results), results["model"], results["data"]["spec"],
                       next_steps(results), [section])  # fmt: skip
