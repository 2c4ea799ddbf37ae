"""What freezing saves per SFT step, on the builtin:tiny shape (GPT-2, 8 blocks x 96, vocab 4096,
context 128), with deadzone's own loop.

Variants, each frozen before the first step:

- ``full``: everything trains;
- ``scattered``: half of the block-matrix parameters frozen, spread over every block and role
  (``attn.c_attn`` and ``mlp.c_fc`` in even blocks, ``attn.c_proj`` and ``mlp.c_proj`` in odd
  ones): each saves its weight-gradient product, the gradient still flows through it
  (target <= 0.88x of ``full``);
- ``prefix``: the first half of the blocks frozen whole (biases and norms too) with the
  embeddings, so no backward pass runs below block 4. The builtin model ties its head to the
  token embedding, so the head is frozen with it (target <= 0.70x);
- ``prefix-no-wte``: the same blocks and the position embedding, the tied token embedding (and
  head) still training: its gradient needs the backward pass all the way down, so this saves
  only the weight gradients of the frozen blocks — the price of a trainable embedding.

Time is the process's CPU time of one optimizer step on one thread (other work on a shared
machine does not count), the median over ``--repeats`` steps per variant after ``--warmup``;
the variants alternate step by step in one process. Beside it, each variant's FLOPs per step
(its matrix products, forward and backward, counted by ``torch.utils.flop_counter``): their
ratio to ``full`` is the time ratio a step made of nothing but those products would have.
How a process's memory happens to be laid out moves its time ratios by several hundredths, so
``--rounds N`` runs N fresh processes one after the other and reports the median of their
ratios per variant.

    python bench/freeze.py --rounds 5 --json out.json  # figures of docs/benchmarks.md
    python bench/freeze.py                             # one round

Part 2, ``--schedules DIR``: the schedules themselves, through ``deadzone freeze`` on
``builtin:tiny`` (target fraction 0.5, 3 seeds, whole blocks, all reached by half of training),
into ``DIR``; then, per schedule, CPU and wall time and optimizer-state peak against ``full``,
the cost with its interval, and the issue's two goals checked: a schedule at <= 0.75x of full's
wall time whose cost is negligible, and the geometry-driven schedule ahead of the random control by
more than the noise (the 95% interval of their paired difference below zero).

    python bench/freeze.py --schedules bench-freeze --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone.models.presets import get_preset
from deadzone.training.freezing import optimizer_state_bytes
from deadzone.training.train import SFTConfig, SFTLoop, batch_stream

EMBEDDINGS = ("transformer.wte.weight", "transformer.wpe.weight")


def make_model(
    preset_name: str, activation: str = "gelu_new", attention: str = "sdpa"
) -> GPT2LMHeadModel:
    preset = get_preset(preset_name)
    config = GPT2Config(
        n_layer=preset.n_layer, n_embd=preset.n_embd, n_head=preset.n_head,
        n_positions=preset.context, vocab_size=preset.vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function=activation,
        attn_implementation=attention,
    )  # fmt: skip
    torch.manual_seed(preset.seed)
    return GPT2LMHeadModel(config)


def frozen_names(model: GPT2LMHeadModel, variant: str) -> list[str]:
    n_layer = model.config.n_layer
    names = [n for n, _ in model.named_parameters()]
    if variant == "full":
        return []
    if variant == "scattered":
        even, odd = ("attn.c_attn", "mlp.c_fc"), ("attn.c_proj", "mlp.c_proj")
        return [
            f"transformer.h.{i}.{path}.weight"
            for i in range(n_layer)
            for path in (even if i % 2 == 0 else odd)
        ]
    blocks = [
        n for n in names if any(n.startswith(f"transformer.h.{i}.") for i in range(n_layer // 2))
    ]
    if variant == "prefix":
        return [*EMBEDDINGS, *blocks]
    if variant == "prefix-no-wte":
        return ["transformer.wpe.weight", *blocks]
    raise ValueError(variant)


VARIANTS = ("full", "scattered", "prefix", "prefix-no-wte")


def step_flops(args: argparse.Namespace, batch: dict, config: SFTConfig) -> dict[str, int]:
    """FLOPs of one SFT step's products (forward, backward) per variant, counted by PyTorch's
    ``FlopCounterMode`` on a model with eager attention: its counter has no formula for the CPU
    SDPA kernel, so eager attention's ``bmm`` s stand in for it. Elementwise work is not counted:
    the ratio to ``full`` is what freezing could save if the products were the whole step."""
    flops = {}
    for variant in VARIANTS:
        model = make_model(args.preset, args.activation, attention="eager")
        loop = SFTLoop(model, [batch], [batch], config, show_progress=False)
        loop.freeze(frozen_names(loop.module, variant))
        with FlopCounterMode(display=False) as counter:
            loop.train_step(batch_stream([batch]), 1)
        flops[variant] = counter.get_total_flops()
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="model shape (default: tiny)")
    parser.add_argument("--batch", type=int, default=16, help="examples per step (default: 16)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps (default: 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (default: 2)")
    parser.add_argument(
        "--activation",
        default="gelu_new",
        help="GPT-2 activation_function: gelu_new as the builtin model is pretrained (five "
        "elementwise kernels), or gelu_pytorch_tanh, the same function in one kernel "
        "(default: gelu_new)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="fresh processes, one after another (default: 1)"
    )
    parser.add_argument("--json", help="also write the figures to this file (default: none)")
    parser.add_argument(
        "--schedules",
        metavar="DIR",
        help="run part 2 (the schedules, through deadzone freeze) into DIR (default: part 1)",
    )
    parser.add_argument("--steps", type=int, default=50, help="part 2: SFT steps (default: 50)")
    parser.add_argument("--seeds", type=int, default=3, help="part 2: seeds (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.schedules:
        schedules(args.schedules, args.steps, args.seeds)
        return
    if args.rounds > 1:
        rounds(args)
        return

    preset = get_preset(args.preset)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, preset.vocab_size, (args.batch, preset.context), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    steps = args.warmup + args.repeats
    config = SFTConfig(steps=steps, lr=1e-4, warmup_steps=0, eval_every=steps, cpu=True)
    loops, streams, times = {}, {}, {v: [] for v in VARIANTS}
    for variant in VARIANTS:
        loop = SFTLoop(
            make_model(args.preset, args.activation), [batch], [batch], config, show_progress=False
        )
        loop.freeze(frozen_names(loop.module, variant))
        loops[variant], streams[variant] = loop, batch_stream([batch])
    for step in range(1, steps + 1):
        for variant in VARIANTS:
            t0 = time.process_time()
            loops[variant].train_step(streams[variant], step)
            if step > args.warmup:
                times[variant].append(time.process_time() - t0)

    full = statistics.median(times["full"])
    flops = step_flops(args, batch, config)
    rows = []
    print(
        f"{'variant':<15} {'trainable':>10} {'CPU s/step':>11} {'vs full':>8} {'opt. state':>11}"
        f" {'GFLOP/step':>11} {'vs full':>8}"
    )
    for variant in VARIANTS:
        loop, median = loops[variant], statistics.median(times[variant])
        row = {
            "variant": variant,
            "trainable_params": loop.trainable_count(),
            "cpu_seconds_per_step": median,
            "ratio_to_full": median / full,
            "optimizer_state_bytes": optimizer_state_bytes(loop.optimizer),
            "flops_per_step": flops[variant],
            "flops_ratio_to_full": flops[variant] / flops["full"],
        }
        rows.append(row)
        print(
            f"{variant:<15} {row['trainable_params']:>10,} {median:>11.4f} "
            f"{row['ratio_to_full']:>7.3f}x {row['optimizer_state_bytes'] / 2**20:>8.2f} MiB"
            f" {flops[variant] / 1e9:>11.2f} {row['flops_ratio_to_full']:>7.3f}x"
        )
    if args.json:
        meta = {
            "preset": args.preset,
            "activation": args.activation,
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": 1,
        }
        with open(args.json, "w") as f:
            json.dump({"setup": meta, "variants": rows}, f, indent=2)


def rounds(args: argparse.Namespace) -> None:
    """Part 1 in ``args.rounds`` fresh processes; the median of their ratios per variant."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            print(f"round {i + 1} of {args.rounds}", flush=True)
            out = os.path.join(tmp, f"round{i}.json")
            argv = [sys.executable, __file__, "--json", out]
            for key in ("preset", "batch", "repeats", "warmup", "activation"):
                argv += [f"--{key}", str(getattr(args, key))]
            subprocess.run(argv, check=True)
            with open(out) as f:
                figures.append(json.load(f))
    print(f"\nmedian over {args.rounds} processes (each: median of {args.repeats} steps)")
    print(f"{'variant':<15} {'vs full':>8} {'min':>7} {'max':>7} {'FLOPs':>7}   per round")
    summary = []
    for variant in VARIANTS:
        ratios = [
            row["ratio_to_full"] for fig in figures for row in fig["variants"]
            if row["variant"] == variant
        ]  # fmt: skip
        median = statistics.median(ratios)
        flops = next(r for r in figures[0]["variants"] if r["variant"] == variant)
        flops = flops["flops_ratio_to_full"]  # the same in every round: a count, not a time
        summary.append({"variant": variant, "median_ratio_to_full": median, "ratios": ratios,
                        "flops_ratio_to_full": flops})  # fmt: skip
        spread = f"{min(ratios):>7.3f} {max(ratios):>7.3f} {flops:>6.3f}x"
        print(f"{variant:<15} {median:>7.3f}x {spread}   {' '.join(f'{r:.3f}' for r in ratios)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": figures[0]["setup"], "rounds": figures, "median": summary}, f,
                      indent=2)  # fmt: skip


SCHEDULES = "geometry:pr,freezeout,autofreeze,lisa,random"
TIME_GOAL = 0.75


def schedules(out: str, steps: int, seeds: int) -> None:
    """Part 2: every schedule beside full on builtin:tiny; the goals checked from results.json."""
    from deadzone import fileio
    from deadzone.cli import main as deadzone

    argv = [
        "freeze", "builtin:tiny", "--schedule", SCHEDULES, "--unit", "block",
        "--target-fraction", "0.5", "--freeze-by", "0.5", "--steps", str(steps),
        "--seeds", str(seeds), "--out", out,
    ]  # fmt: skip
    print("deadzone " + " ".join(argv))
    if deadzone(argv) != 0:
        raise SystemExit(2)
    summary = fileio.read_json(f"{out}/results.json")["summary"]
    arms = {a["schedule"]: a for a in summary["arms"]}
    print(f"\ncost unit: {summary['unit']}, margin {summary['margin_used']}")
    for name, arm in arms.items():
        s = arm["savings"]
        print(
            f"{name:<12} cpu {s['cpu_time']['mean']:.3f}x {s['cpu_time']['interval']}  "
            f"wall {s['wall_time']['mean']:.3f}x  optimizer peak {s['optimizer_peak']['mean']:.3f}x"
            f"  verdict {arm['verdict']}"
        )
    cheap = [
        n
        for n, a in arms.items()
        if a["verdict"] in ("negligible", "better")
        and a["savings"]["wall_time"]["mean"] <= TIME_GOAL
    ]
    print(f"goal 1 (<= {TIME_GOAL}x wall time and negligible): {cheap or 'not reached'}")
    versus = arms["geometry:pr"].get("vs_random") or {}
    print(
        f"goal 2 (geometry:pr ahead of random): {versus.get('ahead')}, paired difference "
        f"{versus.get('mean')} nats, 95% interval {versus.get('interval')}"
    )


if __name__ == "__main__":
    main()
