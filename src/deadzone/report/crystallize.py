"""``report.md`` and ``curves.png`` of a crystallize experiment, from its ``results.json`` alone."""

from __future__ import annotations

import statistics
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError

LABELS = {
    "full": "Full SFT (all params)",
    "frozen": "Frozen (pretrained values)",
    "crystal": "Crystal (rank-{rank} approximation, frozen)",
    "random": "Random (re-initialised values, frozen)",
    "zero": "Zero (zeros, frozen)",
}


SMALL_PCT = 1.0  # a cost below 1% eval loss is called small in the conclusion


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


def conclusion(results: dict) -> str:
    """The result in plain words, from the verdicts."""
    summary = [s for s in results["summary"] if s["verdict"] != "baseline"]
    target = _names(results["targets"])
    seeds = len(results["seeds"])
    groups: dict[str, list[dict]] = {}
    for s in summary:
        groups.setdefault(s["verdict"], []).append(s)
    said = []
    if "within noise" in groups:
        names = _names([s["strategy"] for s in groups["within noise"]])
        said.append(
            f"{names.capitalize()} changed the eval loss by less than the seed-to-seed noise "
            f"can resolve (the paired 95% interval contains zero)."
        )
    for kind in ("better", "worse"):
        for s in groups.get(kind, []):
            lo, hi = s["ci95_eval_pct"]
            said.append(
                f"{s['strategy'].capitalize()} is {kind} than full SFT: eval loss "
                f"{s['delta_eval_pct']:+.2f}% (95% interval {lo:+.2f}% to {hi:+.2f}%)."
            )
    if "undetermined" in groups:
        names = _names([s["strategy"] for s in groups["undetermined"]])
        said.append(f"For {names} fewer than two seeds finished beside full SFT: no verdict.")
    failed = sum(s["failed"] for s in results["summary"])
    if failed:
        said.append(f"{failed} run(s) failed; see `results.json` for the reasons.")
    if summary and all(s["verdict"] in ("within noise", "better") for s in summary):
        said.append(
            f"So, on this data, {target} carries nothing that SFT cannot do without: it can be "
            "replaced and frozen at no measurable cost."
        )
    elif "worse" in groups:
        worst = max(s["ci95_eval_pct"][1] for s in groups["worse"])
        names = _names([s["strategy"] for s in groups["worse"]])
        size = "small but measurable" if worst < SMALL_PCT else "measurable"
        said.append(
            f"So {target} is not redundant for this fine-tuning: {names} cost {size} quality "
            f"(at most {worst:+.2f}% eval loss at the upper 95% bound)."
        )
    return f"Over {seeds} seed(s): " + " ".join(said)


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
        "seeds. *vs full* compares means; the 95% interval is that of the per-seed (paired) "
        "eval-loss difference against full SFT, which saw the same batches.\n\n"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{_names(results['targets'])} — mean ± std over {len(results['seeds'])} seeds")
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
