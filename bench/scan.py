"""Scan: the adaptive search against the exhaustive scan, on the same model, data and seeds.

Both scans run from scratch in their own directories (under ``--out``) with the same
executor: ``adaptive`` (group testing, seeds added only where undetermined) and ``exhaustive``
(every site alone on every seed). Reported:

- agreement of the per-site verdicts on the (site, strategy) pairs the exhaustive scan decided
  (negligible / better / costly; ``better`` counts as negligible), and the confusion table;
- runs and wall time of each (every run of each results file, baselines and joint checks
  included; ``single-site runs`` is the exhaustive scan without its joint check), and the
  verdict counts and effective counts of each;
- ``alone_for_90pct``: the runs that judging 90% of the pairs the exhaustive scan decided,
  each alone on every seed, takes with the baselines: the fewest a search needs that decides no
  group of sites at once and no site on fewer seeds;
- the cost of the cheap scores against one SFT run (CPU seconds of each, in this process).

Targets (issue): >= 90% agreement using <= 30% of the exhaustive scan's runs, on
``builtin:tiny``, all 32 block matrices, frozen and random, 3 seeds, 50 steps (~200 runs).

    python bench/scan.py --workers 2                       # the full benchmark
    python bench/scan.py --workers 2 --steps 10 --sites 'L0.*,L1.*' --seeds 3   # smaller
    python bench/scan.py --json out.json
    python bench/scan.py --out DIR --compare ...   # the figures of scans already in DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run, in every process

from deadzone.experiments.execute import make_executor  # noqa: E402
from deadzone.experiments.scan import ScanConfig, scan  # noqa: E402
from deadzone.training.train import SFTConfig  # noqa: E402

DECIDED = ("negligible", "better", "costly")
ORDER = ("negligible", "costly", "undetermined")


def _word(verdict: str) -> str:
    return "negligible" if verdict == "better" else verdict


def verdicts(doc: dict) -> dict[tuple[str, str], str]:
    return {
        (strategy, s["site"]): _word(s["verdict"])
        for strategy, st in doc["summary"]["strategies"].items()
        for s in st["sites"]
    }


def compare(adaptive: dict, exhaustive: dict) -> dict:
    a, e = verdicts(adaptive), verdicts(exhaustive)
    decided = [k for k, v in e.items() if v in DECIDED]
    agree = sum(a[k] == e[k] for k in decided)
    confusion = Counter((e[k], a[k]) for k in e)
    return {
        "pairs": len(e),
        "decided_by_exhaustive": len(decided),
        "agreement": agree / len(decided) if decided else None,
        "confusion": {f"{x}->{y}": n for (x, y), n in sorted(confusion.items())},
    }


def confusion_table(confusion: dict) -> str:
    rows = ["| exhaustive \\ adaptive | " + " | ".join(ORDER) + " |", "|---|---|---|---|"]
    for x in ORDER:
        cells = [str(confusion.get(f"{x}->{y}", 0)) for y in ORDER]
        rows.append(f"| {x} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cheap_score_cost(model: str, data: str, sft: SFTConfig) -> dict:
    """CPU seconds of the cheap scores of every block matrix and of one SFT run, here."""
    from deadzone.data.sft import load_sft_data, pad_id_for
    from deadzone.experiments.runs import RunInputs, run_one
    from deadzone.experiments.scan import full_spec
    from deadzone.experiments.scan_summary import cheap_scores
    from deadzone.models.checkpoints import context_length, load_model
    from deadzone.models.sites import find_sites

    m, tokenizer = load_model(model)
    sites = find_sites(m)
    data_ = load_sft_data(data, tokenizer, max_length=min(256, context_length(m) or 256))
    inputs = RunInputs(m, {s.name: s for s in sites}, data_, pad_id_for(tokenizer), sft)
    blocks = [s for s in sites if s.layer is not None]
    t = time.process_time()
    cheap_scores(m, blocks, inputs)
    scores = time.process_time() - t
    t = time.process_time()
    run_one(inputs, full_spec(0), show_progress=False)
    run = time.process_time() - t
    return {"scores_cpu_s": scores, "one_run_cpu_s": run, "ratio": scores / run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:tiny", help="model (default: builtin:tiny)")
    p.add_argument("--data", default="builtin:docstrings", help="SFT data")
    p.add_argument("--sites", default=None, help="site globs (default: every block matrix)")
    p.add_argument("--strategies", default="frozen,random", help="strategies (frozen,random)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (3)")
    p.add_argument("--steps", type=int, default=50, help="SFT steps per run (50)")
    p.add_argument("--workers", type=int, default=None, help="pool workers (default: none)")
    p.add_argument("--out", default=None, help="scan directories (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the numbers here (default: no file)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="compare the scans already in --out: no wall times, and only the runs they lack "
        "(a resumed scan runs what is missing, such as an unfinished joint check)",
    )
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-scan-"))
    sft = SFTConfig(steps=args.steps)
    figures: dict = {"args": vars(args)}
    docs = {}
    for mode in ("adaptive", "exhaustive"):
        config = ScanConfig(
            model=args.model,
            sites=args.sites,
            strategies=tuple(args.strategies.split(",")),
            mode=mode,
            seeds=args.seeds,
            data=args.data,
            sft=sft,
        )
        if args.compare and not (root / mode / "results.json").is_file():
            raise SystemExit(f"--compare: no scan in {root / mode}")
        started = time.monotonic()
        docs[mode] = scan(
            config, root / mode, executor=make_executor("local", args.workers), show_progress=False
        )
        runs = docs[mode]["runs"]
        figures[mode] = {
            "runs": len(runs),
            "wall_s": None if args.compare else time.monotonic() - started,
            "run_s": sum(r["seconds"] or 0 for r in runs),
            "verdicts": {k: v["verdicts"] for k, v in docs[mode]["summary"]["strategies"].items()},
            "effective": docs[mode]["summary"]["effective"],
        }
    e = docs["exhaustive"]
    sites = len(e["sites"])
    figures["exhaustive"]["single_site_runs"] = args.seeds * (
        1 + len(args.strategies.split(",")) * sites
    )
    figures["comparison"] = compare(docs["adaptive"], e)
    figures["runs_ratio"] = figures["adaptive"]["runs"] / figures["exhaustive"]["single_site_runs"]
    # The runs that judging 90% of the pairs the exhaustive scan decided, each alone on every
    # seed, takes with the baselines: a search that decides no group of sites at once and no
    # site on fewer seeds needs at least this many.
    needed = math.ceil(0.9 * figures["comparison"]["decided_by_exhaustive"])
    figures["alone_for_90pct"] = args.seeds * (1 + needed)
    figures["alone_for_90pct_ratio"] = (
        figures["alone_for_90pct"] / figures["exhaustive"]["single_site_runs"]
    )
    figures["cheap_scores"] = cheap_score_cost(args.model, args.data, sft)
    print(json.dumps(figures, indent=1))
    print(confusion_table(figures["comparison"]["confusion"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
