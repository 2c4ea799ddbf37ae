"""Scan: the prior mode against the exhaustive scan, on the same model, data and seeds.

The prior scan runs (or resumes) in ``--out``; the exhaustive scan (every site alone on every
seed) is read from ``--against DIR``'s ``results.json``, and run there first when DIR holds no
complete one (the same scan as ``deadzone scan MODEL --mode exhaustive --strategies ...
--seeds S --steps N --workers W --out DIR``). Without ``--against`` only the prior scan's own
figures are printed. Reported:

- SFT steps spent (runs x steps, baselines and joint checks included) by each, and the prior
  scan's as a share of the exhaustive scan's single-site steps (its ``seeds x (1 + strategies x
  sites)`` runs);
- the jointly negligible ``frozen`` set of each (matrices, parameters, interval);
- agreement of the per-site verdicts on the pairs the exhaustive scan decided (``better``
  counts as negligible); a site the prior labelled (``likely costly``, ``not judged``) is no
  verdict and is counted apart (how many of them the exhaustive scan found costly, negligible,
  undetermined);
  and how many sites the exhaustive scan found costly the prior scan called negligible;
- Spearman's rho (with its permutation p) of each score of the prior scan (the baselines'
  attribution, fisher, grad_weight besides the geometry and grad_norm) against the exhaustive
  scan's single-site costs, per strategy;
- the prior scan's seed plan, what recording the attribution cost its baselines, and wall and
  CPU seconds of its runs.

Targets (issue): <= 10% of the exhaustive scan's SFT steps; a jointly negligible ``frozen``
set at least as large in parameters; no costly site called negligible.

    python bench/scan.py --workers 2 --out PRIOR --against EXHAUSTIVE --json figures.json
    python bench/scan.py --workers 2 --rest label --out PRIOR2 --against EXHAUSTIVE
    python bench/scan.py --workers 2 --out PRIOR          # the prior scan's figures only
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run, in every process

from deadzone import fileio  # noqa: E402
from deadzone.experiments.execute import make_executor  # noqa: E402
from deadzone.experiments.scan import ScanConfig, scan  # noqa: E402
from deadzone.experiments.search import LIKELY_COSTLY, NOT_JUDGED  # noqa: E402
from deadzone.geometry.scores import spearman_permutation  # noqa: E402
from deadzone.training.train import SFTConfig  # noqa: E402

DECIDED = ("negligible", "costly")
PRIOR = "likely costly (prior)"
LABELS = {LIKELY_COSTLY: PRIOR, NOT_JUDGED: NOT_JUDGED}  # a label is no verdict
ORDER = ("negligible", "costly", "undetermined", PRIOR, NOT_JUDGED)


def verdicts(doc: dict) -> dict[tuple[str, str], str]:
    """``{(strategy, site): verdict}``, ``better`` read as negligible, a site labelled and never
    run by its label (:data:`LABELS`)."""
    out = {}
    for strategy, st in doc["summary"]["strategies"].items():
        for s in st["sites"]:
            word = "negligible" if s["verdict"] == "better" else s["verdict"]
            out[(strategy, s["site"])] = LABELS.get(s.get("label"), word)
    return out


def own_figures(doc: dict, steps: int, wall: float | None) -> dict:
    """What one scan spent and found."""
    summary, runs = doc["summary"], doc["runs"]
    frozen = summary["effective"].get("frozen") or {}
    return {
        "runs": len(runs),
        "sft_steps": len(runs) * steps,
        "wall_s": wall,
        "run_s": sum(r.get("seconds") or 0 for r in runs),
        "run_cpu_s": sum(r.get("cpu_seconds") or 0 for r in runs),
        "verdicts": {k: v["verdicts"] for k, v in summary["strategies"].items()},
        "frozen_set": {k: frozen.get(k) for k in ("sites", "params", "interval", "verdict")},
        "seed_plan": summary.get("seed_plan"),
        "attribution": summary.get("attribution"),
    }


def rho_against(prior: dict, exhaustive: dict) -> dict:
    """Spearman's rho of each score of ``prior`` against ``exhaustive``'s single-site costs."""
    out = {}
    scores = prior["summary"]["scores"]
    for strategy, st in exhaustive["summary"]["strategies"].items():
        single = [s for s in st["sites"] if s["single"] and s["cost"] is not None]
        costs = [s["cost"] for s in single]
        out[strategy] = {}
        for name, values in scores.items():
            rho, p = spearman_permutation([values.get(s["site"]) for s in single], costs)
            out[strategy][name] = {"rho": rho, "p": p, "n": len(single)}
    return out


def compare(prior: dict, exhaustive: dict, steps: int, seeds: int) -> dict:
    p, e = verdicts(prior), verdicts(exhaustive)
    pairs = Counter((e[k], p[k]) for k in e)
    decided = [k for k, v in e.items() if v in DECIDED]
    judged = [k for k in decided if p[k] not in LABELS.values()]
    strategies = len(exhaustive["summary"]["strategies"])
    single_steps = seeds * (1 + strategies * len(exhaustive["sites"])) * steps
    return {
        "single_site_sft_steps": single_steps,
        "steps_share": len(prior["runs"]) * steps / single_steps,
        "pairs": len(e),
        "decided_by_exhaustive": len(decided),
        "judged_of_decided": len(judged),
        "agreement": sum(p[k] == e[k] for k in judged) / len(judged) if judged else None,
        "costly_called_negligible": sum(e[k] == "costly" and p[k] == "negligible" for k in e),
        "labelled": {label: dict(Counter(e[k] for k in e if p[k] == label)) for label in ORDER[3:]},
        "confusion": {f"{x}->{y}": n for (x, y), n in sorted(pairs.items())},
        "rho": rho_against(prior, exhaustive),
    }


def confusion_table(confusion: dict) -> str:
    rows = ["| exhaustive \\ prior | " + " | ".join(ORDER) + " |", "|---" * (len(ORDER) + 1) + "|"]
    for x in ORDER[:3]:
        cells = [str(confusion.get(f"{x}->{y}", 0)) for y in ORDER]
        rows.append(f"| {x} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def exhaustive_doc(args, base: dict, executor) -> dict:
    """The exhaustive scan of ``--against``: read when complete, else run (or resumed) there."""
    path = Path(args.against) / "results.json"
    if path.is_file():
        doc = fileio.read_json(path)
        if doc.get("summary", {}).get("complete"):
            return doc
    return scan(ScanConfig(**base, mode="exhaustive"), args.against, executor=executor,
                show_progress=False)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:tiny", help="model (default: builtin:tiny)")
    p.add_argument("--data", default="builtin:docstrings", help="SFT data")
    p.add_argument("--sites", default=None, help="site globs (default: every block matrix)")
    p.add_argument("--strategies", default="frozen,random", help="strategies (frozen,random)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (3)")
    p.add_argument("--steps", type=int, default=50, help="SFT steps per run (50)")
    p.add_argument(
        "--rest",
        default="judge",
        choices=("judge", "label"),
        help="the prior scan's sites above its negligible set: judge or label (judge)",
    )
    p.add_argument("--workers", type=int, default=None, help="pool workers (default: none)")
    p.add_argument("--out", default=None, help="the prior scan's directory (default: temp)")
    p.add_argument("--against", default=None, help="the exhaustive scan's directory")
    p.add_argument("--json", default=None, help="write the numbers here (default: no file)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-scan-"))
    strategies = tuple(args.strategies.split(","))
    base = dict(model=args.model, sites=args.sites, seeds=args.seeds, data=args.data,
                strategies=strategies, sft=SFTConfig(steps=args.steps))  # fmt: skip
    executor = make_executor("local", args.workers)
    started = time.monotonic()
    config = ScanConfig(**base, mode="prior", rest=args.rest)
    prior = scan(config, out, executor=executor, show_progress=False)
    figures: dict = {"args": vars(args)}
    figures["prior"] = own_figures(prior, args.steps, time.monotonic() - started)
    if args.against:
        exhaustive = exhaustive_doc(args, base, executor)
        figures["exhaustive"] = own_figures(exhaustive, args.steps, None)
        figures["comparison"] = compare(prior, exhaustive, args.steps, args.seeds)
    print(json.dumps(figures, indent=1))
    if args.against:
        print(confusion_table(figures["comparison"]["confusion"]))
    if args.json:
        fileio.write_json(args.json, figures)


if __name__ == "__main__":
    main()
