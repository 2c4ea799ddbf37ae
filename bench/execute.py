"""Executors: one crystallize experiment in-process, on a process pool, and on Ray.

The experiment: ``--seeds`` x 4 strategies (full, frozen, crystal, random) on one target of a
model of the ``builtin:tiny`` shape (the cached ``builtin:tiny`` if it is there, else a model of
its config with a tokenizer trained on the SFT data), on ``builtin:docstrings``. It runs three
times, each run on one torch thread:

1. in this process, one run after another;
2. ``--workers 2`` (a pool of two spawned processes);
3. Ray with two workers, on a local cluster started first (its start-up timed apart).

Efficiency = in-process wall time / (2 x parallel wall time): 1.0 when two workers halve the
time. Targets on 2 cores: >= 0.85 for the pool, >= 0.80 for Ray (without its start-up). The
three give the same records (less their timings), which the script checks.

    python bench/execute.py               # 8 runs of 50 steps
    python bench/execute.py --quick       # 4 runs of 3 steps: does it work
    python bench/execute.py --json out.json
    python bench/execute.py --repeat 3    # three rounds, and the median efficiencies
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run, in every process

import torch  # noqa: E402
import transformers  # noqa: E402

from deadzone.experiments.crystallize import CrystallizeConfig, crystallize  # noqa: E402
from deadzone.experiments.execute import Pool, Ray, import_ray  # noqa: E402
from deadzone.training.train import SFTConfig, computed  # noqa: E402


def tiny_shaped_model(root: Path) -> str:
    """``builtin:tiny`` if cached, else a model of its config, tokenizer trained on SFT data."""
    from deadzone.data import corpus
    from deadzone.data.sources import read_spec
    from deadzone.models.presets import builtin_dir, get_preset
    from deadzone.models.pretraining import build_model, train_tokenizer

    preset = get_preset("tiny")
    if (builtin_dir("tiny", corpus.corpus_hash()) / "config.json").is_file():
        return "builtin:tiny"
    texts = [
        " ".join(str(v) for v in row.values())
        for table in read_spec("builtin:docstrings", "train")
        for row in table.rows
    ]
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    model = build_model(preset, tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return str(root / "model")


def records(doc: dict) -> dict:
    """Each run's record less what it measured of the machine (clocks, memory peaks)."""
    return {r["key"]: computed(r) for r in doc["runs"]}


def mean_run_seconds(doc: dict) -> float:
    """Mean wall seconds of a run, as its process measured it (training and evaluation)."""
    return sum(r["seconds"] for r in doc["runs"]) / len(doc["runs"])


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(config: CrystallizeConfig, root: Path, ray) -> dict:
    """One round: the experiment in-process, on the pool, on Ray; its figures."""
    runs = 4 * config.seeds

    def experiment(name, executor=None):
        return lambda: crystallize(config, root / name, executor=executor, show_progress=False)

    t_in, doc_in = timed(experiment("inprocess"))
    t_pool, doc_pool = timed(experiment("pool", Pool(2)))
    t_start, _ = timed(
        lambda: ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    )
    try:
        t_ray, doc_ray = timed(experiment("ray", Ray(workers=2)))
    finally:
        ray.shutdown()
    run_s = {
        name: mean_run_seconds(doc)
        for name, doc in (("inprocess", doc_in), ("pool2", doc_pool), ("ray2", doc_ray))
    }
    return {
        "inprocess_s": round(t_in, 2),
        "pool2_s": round(t_pool, 2),
        "ray2_s": round(t_ray, 2),
        "ray_startup_s": round(t_start, 2),
        "pool_efficiency": round(t_in / (2 * t_pool), 3),
        "ray_efficiency": round(t_in / (2 * t_ray), 3),
        "ray_efficiency_with_startup": round(t_in / (2 * (t_ray + t_start)), 3),
        "identical_records": records(doc_in) == records(doc_pool) == records(doc_ray),
        # what a run took inside its process: two at once on two cores, each may be slower
        "mean_run_s": {k: round(v, 2) for k, v in run_s.items()},
        # the time that is not the runs themselves (for the parallel ones, shared over 2)
        "inprocess_rest_s": round(t_in - runs * run_s["inprocess"], 2),
        "pool2_rest_s": round(t_pool - runs * run_s["pool2"] / 2, 2),
        "ray2_rest_s": round(t_ray - runs * run_s["ray2"] / 2, 2),
    }


def show(f: dict) -> None:
    print(f"  in-process        {f['inprocess_s']:8.2f} s")
    print(f"  --workers 2       {f['pool2_s']:8.2f} s   efficiency {f['pool_efficiency']:.3f}")
    print(
        f"  ray, 2 workers    {f['ray2_s']:8.2f} s   efficiency {f['ray_efficiency']:.3f} "
        f"(start-up {f['ray_startup_s']:.2f} s apart; "
        f"{f['ray_efficiency_with_startup']:.3f} with it)"
    )
    print(f"  identical records across the three: {f['identical_records']}")
    print(
        "  mean seconds per run inside its process: "
        + ", ".join(f"{k} {v:.2f}" for k, v in f["mean_run_s"].items())
    )
    print(
        f"  time besides the runs: in-process {f['inprocess_rest_s']:.2f} s, "
        f"pool {f['pool2_rest_s']:.2f} s, ray {f['ray2_rest_s']:.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="SFT steps per run (default: 50)")
    p.add_argument("--seeds", type=int, default=2, help="seeds; 4 runs each (default: 2)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the three (default: 1)")
    p.add_argument("--quick", action="store_true", help="3 steps, 1 seed: a smoke test")
    p.add_argument("--model", help="model spec (default: builtin:tiny or a model of its shape)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.quick:
        args.steps, args.seeds = 3, 1
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    ray = import_ray()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or tiny_shaped_model(root)
        config = CrystallizeConfig(
            model=model,
            targets="L4.attn.c_proj",
            seeds=args.seeds,
            max_length=128,
            sft=SFTConfig(steps=args.steps, eval_every=args.steps),
        )
        print(f"{4 * args.seeds} runs of {args.steps} steps on {model}, one torch thread per run")
        for i in range(args.repeat):
            rounds.append(measure(config, root / f"round{i}", ray))
            print(f"round {i + 1} of {args.repeat}")
            show(rounds[-1])
    figures = {
        "model": model,
        "runs": 4 * args.seeds,
        "steps": args.steps,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "rounds": rounds,
        "median_pool_efficiency": statistics.median(r["pool_efficiency"] for r in rounds),
        "median_ray_efficiency": statistics.median(r["ray_efficiency"] for r in rounds),
    }
    if args.repeat > 1:
        print(
            f"median over {args.repeat} rounds: pool efficiency "
            f"{figures['median_pool_efficiency']:.3f}, Ray {figures['median_ray_efficiency']:.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not all(r["identical_records"] for r in rounds):
        raise SystemExit("the executors gave different records")


if __name__ == "__main__":
    main()
