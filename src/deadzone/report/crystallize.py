"""``report.md`` and ``curves.png`` of a crystallize experiment, from its ``results.json`` alone."""

from __future__ import annotations

import statistics
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.report import pyplot, save_png

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
    "random": "random values",
    "zero": "zeroing {it}",
}


def label(strategy: str, rank: int) -> str:
    return LABELS.get(strategy, strategy).format(rank=rank)


def _loss(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def _ci(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}%, {ci[1]:+.2f}%]"


def table(results: dict) -> str:
    """The study's table (strategy, final loss, vs full) plus eval loss, CI and verdict."""
    rows = [
        "| Strategy | Final train loss | vs full | Final eval loss | vs full | "
        "95% CI (eval, paired) | Verdict | Trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        base = s["strategy"] == "full"
        n = f" (n={s['n']}" + (f", {s['failed']} failed)" if s["failed"] else ")")
        params = "—" if s["trainable_params"] is None else f"{s['trainable_params']:,}"
        rows.append(
            f"| {label(s['strategy'], results['rank'])}{n} "
            f"| {_loss(s['train_loss_mean'], s['train_loss_std'])} "
            f"| {'baseline' if base else _pct(s['delta_train_pct'])} "
            f"| {_loss(s['eval_loss_mean'], s['eval_loss_std'])} "
            f"| {'baseline' if base else _pct(s['delta_eval_pct'])} "
            f"| {'—' if base else _ci(s['ci95_eval_pct'])} | {s['verdict']} | {params} |"
        )
    return "\n".join(rows)


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _done(strategy: str, rank: int) -> str:
    return DONE.get(strategy, f"given strategy {strategy}").format(rank=rank)


def _cost(strategy: str, rank: int, n_targets: int) -> str:
    it = "it" if n_targets == 1 else "them"
    return COST.get(strategy, f"strategy {strategy}").format(rank=rank, it=it)


def conclusion(results: dict) -> str:
    """The result in plain words, strategy by strategy, from the verdicts and intervals."""
    compared = [s for s in results["summary"] if s["verdict"] != "baseline"]
    target, rank = _names(results["targets"]), results["rank"]
    said = []
    free = [s for s in compared if s["verdict"] == "within noise"]
    if free:
        bounds = _names([f"{s['ci95_eval_pct'][1]:+.2f}%" for s in free])
        said.append(
            f"{target} can be {_or([_done(s['strategy'], rank) for s in free])} at no "
            f"measurable cost (eval loss within {bounds} of full SFT"
            f"{' respectively' if len(free) > 1 else ''}, upper 95% bound)."
        )
    for s in compared:
        if s["verdict"] in ("better", "worse"):
            lo, hi = s["ci95_eval_pct"]
            cost = _cost(s["strategy"], rank, len(results["targets"])).capitalize()
            size = f"{s['delta_eval_pct']:+.2f}% [{lo:+.2f}%, {hi:+.2f}%]"
            if s["verdict"] == "worse":
                said.append(f"{cost} cost {size} in eval loss.")
            else:
                said.append(f"{cost} lowered the eval loss: {size}.")
    undetermined = [s["strategy"] for s in compared if s["verdict"] == "undetermined"]
    if undetermined:
        said.append(
            f"For {_names(undetermined)}, fewer than two seeds finished beside full SFT: "
            "no verdict."
        )
    failed = sum(s["failed"] for s in results["summary"])
    if failed:
        said.append(f"{failed} run(s) failed; see `results.json` for the reasons.")
    tested = sum(s["verdict"] != "undetermined" for s in compared)
    if tested > 1:
        said.append(f"These are {tested} separate 95% comparisons, not corrected for multiplicity.")
    seeds = len(results["seeds"])
    return f"Over {seeds} seed(s): " + " ".join(said)


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


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


def markdown(results: dict) -> str:
    data, cfg = results["data"], results["config"]
    counts = data.get("counts", {})
    return (
        f"# Crystallize {_names(results['targets'])} of `{results['model']}`\n\n"
        f"{results['steps']} SFT steps (lr {cfg['lr']:g}, batch {cfg['batch_size']}"
        f" × {cfg['grad_accum']}), rank {results['rank']}, seeds "
        f"{', '.join(str(s) for s in results['seeds'])}; data `{data['spec']}` "
        f"({counts.get('train_examples', '?')} train / {counts.get('eval_examples', '?')} eval "
        f"examples, sha256 {data['content_hash'][:12]}).\n\n"
        f"{table(results)}\n\n"
        "Final train loss: mean training loss over the last 10% of steps; final eval loss: on the "
        "held-out set after the last step; both token-weighted, mean ± standard deviation over "
        "seeds. *vs full* is the mean of the per-seed (paired) differences against full SFT, "
        "which saw the same batches, over the seeds where both finished; the 95% interval is "
        "Student's t interval of the same eval-loss differences. The verdict is *better* or "
        "*worse* when the interval excludes zero, *within noise* when it contains it, and "
        "*undetermined* when fewer than two seeds finished for both (no interval can be "
        "drawn). Each strategy is a separate comparison against full SFT; the intervals are "
        "not corrected for multiplicity.\n\n"
        f"{shared_note(results)}"
        f"**Conclusion.** {conclusion(results)}\n\n"
        "![loss curves](curves.png)\n"
    )


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

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    ok = [r for r in results["runs"] if r["status"] == "ok"]
    full = {r["seed"]: r for r in ok if r["strategy"] == "full"}
    for i, strategy in enumerate(s["strategy"] for s in results["summary"]):
        runs = [r for r in ok if r["strategy"] == strategy]
        if not runs:
            continue
        style = {"label": label(strategy, results["rank"]), "color": f"C{i}"}
        _band(axes[0], *_series(runs, "train_loss"), **style)
        _band(axes[1], *_series(runs, "eval_loss"), **style)
        if strategy != "full":
            _band(axes[2], *_paired_series(runs, full), **style)
    axes[2].axhline(0.0, color="C0", lw=1, ls="--", label="full SFT")
    titles = ("train loss", "eval loss", "eval loss vs full SFT, same seed (%)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:  # no run finished: nothing to label
        axes[1].legend(fontsize=8)
    fig.suptitle(f"{_names(results['targets'])} — mean ± std over {len(results['seeds'])} seeds")
    save_png(fig, path)


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``curves.png`` in ``out`` from ``out/results.json``."""
    out = Path(out)
    try:
        results = fileio.read_json(out / "results.json")
    except (OSError, ValueError) as e:
        raise DeadzoneError(f"cannot read {out / 'results.json'}: {e}") from None
    if not isinstance(results, dict) or results.get("experiment") != "crystallize":
        raise DeadzoneError(f"{out / 'results.json'} is not a crystallize results file")
    fileio.write_text(out / "report.md", markdown(results))
    plot_curves(results, out / "curves.png")
    return out / "report.md", out / "curves.png"
