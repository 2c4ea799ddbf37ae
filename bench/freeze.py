"""What freezing saves per SFT step, with deadzone's own loop, on two shapes: ``tiny`` (the
builtin:tiny GPT-2: 8 blocks x 96, vocabulary 4096) and ``smollm`` (a Llama of SmolLM2-135M's
configuration: 30 blocks x 576, 9 heads / 3 KV heads, MLP 1536, vocabulary 49,152, tied
embeddings), both randomly initialised (timing needs no pretrained weights), sequence 128,
batch 4, fp32 on CPU, one thread.

Variants, each frozen before the first step:

- ``full``: everything trains;
- ``scattered``: half of the block-matrix parameters frozen, spread over every block and role
  (GPT-2: ``attn.c_attn`` and ``mlp.c_fc`` in even blocks, ``attn.c_proj`` and ``mlp.c_proj`` in
  odd ones; Llama: attention and ``gate_proj`` in even blocks, ``up_proj`` and ``down_proj`` in
  odd ones): each saves its weight-gradient product, the gradient still flows through it;
- ``prefix``: the embeddings and the first half of the blocks frozen whole, so no backward pass
  runs below the middle (``deadzone.training.prefix``); the tied head is frozen with the
  embedding;
- ``prefix-untied``: the same, the head untied into a trainable copy first;
- ``prefix-cached``: the same as ``prefix`` with the prefix's outputs cached: the data is one
  batch, so the first step (epoch 1) fills the cache and the timed steps (epoch 2 on) skip the
  prefix's forward pass.

Each variant runs in a fresh process: ``--warmup`` untimed steps, then ``--repeats`` timed ones
(CPU time of the process on one thread, so other work on a shared machine does not count; the
median); its peak resident set, less what the process held before the model was built, is its
training memory. ``--rounds N`` repeats the five processes N times and reports, per variant,
the median over rounds of its ratio to the same round's ``full``. Beside them: the savings
model's predicted ratio (matmul FLOPs, ``deadzone.training.savings``), the ceiling at the
variant's frozen share phi (scattered 1 - phi/3, prefix 1 - 2 phi/3, cached 1 - phi), and the
predicted memory ratio (full's measured training memory less the modelled gradient, optimizer and
activation bytes).

    python bench/freeze.py --shape tiny,smollm --rounds 2 --json out.json

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
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

from deadzone.models.presets import get_preset
from deadzone.training.memory import PeakMemory
from deadzone.training.prefix import blocks, prefix_parameters, untie_head
from deadzone.training.savings import ceilings, savings
from deadzone.training.train import SFTConfig, SFTLoop, batch_stream

VARIANTS = ("full", "scattered", "prefix", "prefix-untied", "prefix-cached")
CEILING = {"full": None, "scattered": "scattered", "prefix": "prefix",
           "prefix-untied": "prefix", "prefix-cached": "cached"}  # fmt: skip
# Targets of the issue: step-time ratios, and the prefix's memory ratio on the Llama shape.
TIME_TARGETS = {"prefix": 0.70, "prefix-cached": 0.55}
MEMORY_TARGET = 0.60


def gpt2_tiny() -> torch.nn.Module:
    preset = get_preset("tiny")
    config = GPT2Config(
        n_layer=preset.n_layer, n_embd=preset.n_embd, n_head=preset.n_head,
        n_positions=preset.context, vocab_size=preset.vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def llama_smollm() -> torch.nn.Module:
    config = LlamaConfig(
        num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=2048,
    )  # fmt: skip
    return LlamaForCausalLM(config)


SHAPES = {"tiny": gpt2_tiny, "smollm": llama_smollm}


def make_model(shape: str) -> torch.nn.Module:
    """The shape with random weights: N(0, 0.02) matrices, unit norms, zero biases (drawn here:
    transformers' own initialisation of 135M parameters takes longer than a step)."""
    torch.manual_seed(0)
    with no_init_weights():
        model = SHAPES[shape]()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
    model.tie_weights()  # skipped with the initialisation
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def frozen_names(model: torch.nn.Module, variant: str) -> list[str]:
    count = len(blocks(model))
    if variant == "full":
        return []
    if variant == "scattered":
        if model.config.model_type == "gpt2":
            even, odd = ("attn.c_attn", "mlp.c_fc"), ("attn.c_proj", "mlp.c_proj")
            stem = "transformer.h"
        else:
            attn = tuple(f"self_attn.{m}_proj" for m in "qkvo")
            even, odd, stem = (
                (*attn, "mlp.gate_proj"),
                ("mlp.up_proj", "mlp.down_proj"),
                "model.layers",
            )
        return [
            f"{stem}.{i}.{path}.weight"
            for i in range(count)
            for path in (even if i % 2 == 0 else odd)
        ]
    return [n for n, _ in prefix_parameters(model, count // 2)]


def one_variant(shape: str, variant: str, args: argparse.Namespace) -> dict:
    """Build, freeze and time one variant in this process; its figures."""
    peak = PeakMemory(torch.device("cpu"))
    before, _ = peak.read()  # the resident set now: the peak was just reset to it
    model = make_model(shape)
    untied = untie_head(model).numel() * 16 if variant == "prefix-untied" else 0
    names = frozen_names(model, variant)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    steps = args.warmup + args.repeats
    config = SFTConfig(steps=steps, lr=1e-4, warmup_steps=0, eval_every=steps, cpu=True,
                       cache_prefix=variant == "prefix-cached")  # fmt: skip
    for n, p in model.named_parameters():
        p.requires_grad_(n not in names)
    loop = SFTLoop(model, [batch], [batch], config, show_progress=False)
    stream, times = batch_stream([batch]), []
    for step in range(1, steps + 1):
        t0 = time.process_time()
        loop.train_step(stream, step)
        if step > args.warmup:
            times.append(time.process_time() - t0)
    predicted = savings(model, args.batch, args.seq, frozen=names, cached=config.cache_prefix)
    peak_bytes, scope = peak.read()
    return {
        "shape": shape, "variant": variant, "trainable_params": loop.trainable_count(),
        "cpu_seconds_per_step": statistics.median(times), "step_seconds": times,
        "peak_bytes": peak_bytes, "peak_scope": scope, "baseline_bytes": before,
        "training_bytes": peak_bytes - before, "cache_hits": loop.prefix.hits,
        "untied_bytes": untied,
        "savings": predicted.to_dict(),
    }  # fmt: skip


def run_rounds(args: argparse.Namespace) -> list[dict]:
    """Every (shape, variant) in a fresh process, ``args.rounds`` times."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for shape in args.shape.split(","):
                for variant in VARIANTS:
                    out = os.path.join(tmp, f"{r}-{shape}-{variant}.json")
                    argv = [sys.executable, __file__, "--one", f"{shape}:{variant}", "--json", out]
                    for key in ("batch", "seq", "repeats", "warmup"):
                        argv += [f"--{key}", str(getattr(args, key))]
                    print(f"round {r + 1}/{args.rounds}: {shape} {variant}", flush=True)
                    subprocess.run(argv, check=True)
                    rows.append(json.loads(Path(out).read_text()) | {"round": r})
    return rows


def summarise(rows: list[dict], shape: str) -> list[dict]:
    """Per variant: the median over rounds of its time and memory ratios to full's."""
    full = {r["round"]: r for r in rows if r["shape"] == shape and r["variant"] == "full"}
    out = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["shape"] == shape and r["variant"] == variant]
        time_ratios = [
            r["cpu_seconds_per_step"] / full[r["round"]]["cpu_seconds_per_step"] for r in mine
        ]
        mem_ratios = [r["training_bytes"] / full[r["round"]]["training_bytes"] for r in mine]
        s = mine[0]["savings"]
        full_bytes = statistics.median(f["training_bytes"] for f in full.values())
        # an untied head is a parameter full does not have: its weight, gradient and moments
        saved = s["state_bytes_saved"] + s["activation_bytes_saved"] - mine[0]["untied_bytes"]
        kind = CEILING[variant]
        out.append({
            "variant": variant, "trainable_params": mine[0]["trainable_params"],
            "cpu_seconds_per_step": statistics.median(r["cpu_seconds_per_step"] for r in mine),
            "time_ratio": statistics.median(time_ratios), "time_ratios": time_ratios,
            "predicted_time_ratio": s["flops_ratio"], "frozen_share": s["frozen_share"],
            "ceiling": ceilings(s["frozen_share"])[kind] if kind else 1.0,
            "training_mib": statistics.median(r["training_bytes"] for r in mine) / 2**20,
            "memory_ratio": statistics.median(mem_ratios),
            "predicted_memory_ratio": (full_bytes - saved) / full_bytes,
        })  # fmt: skip
    return out


def print_table(shape: str, summary: list[dict]) -> None:
    print(f"\n{shape}: median over rounds of each variant's ratio to full")
    print(
        f"{'variant':<14} {'trainable':>11} {'CPU s/step':>10} {'time':>7} {'model':>7} "
        f"{'ceiling':>7} {'phi':>5} {'train MiB':>9} {'memory':>7} {'model':>7}"
    )
    for row in summary:
        print(
            f"{row['variant']:<14} {row['trainable_params']:>11,} "
            f"{row['cpu_seconds_per_step']:>10.3f} {row['time_ratio']:>6.3f}x "
            f"{row['predicted_time_ratio']:>6.3f}x {row['ceiling']:>6.3f}x "
            f"{row['frozen_share']:>5.2f} {row['training_mib']:>9.0f} {row['memory_ratio']:>6.3f}x "
            f"{row['predicted_memory_ratio']:>6.3f}x"
        )
    for row in summary:
        target = TIME_TARGETS.get(row["variant"])
        if target is not None:
            met = "met" if row["time_ratio"] <= target else "MISSED"
            print(f"target {row['variant']} time <= {target}x: {met} ({row['time_ratio']:.3f}x)")
        if shape == "smollm" and row["variant"] == "prefix":
            met = "met" if row["memory_ratio"] <= MEMORY_TARGET else "MISSED"
            print(f"target prefix memory <= {MEMORY_TARGET}x: {met} ({row['memory_ratio']:.3f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny,smollm", help="tiny, smollm or both (default)")
    parser.add_argument("--batch", type=int, default=4, help="examples per step (default: 4)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per example (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps, epoch 1 (default: 1)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of processes (default: 1)")
    parser.add_argument("--json", help="also write the figures to this file (default: none)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SHAPE:VARIANT, in a child process
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
    if args.one:
        shape, variant = args.one.split(":")
        Path(args.json).write_text(json.dumps(one_variant(shape, variant, args)))
        return
    rows = run_rounds(args)
    summaries = {shape: summarise(rows, shape) for shape in args.shape.split(",")}
    for shape, summary in summaries.items():
        print_table(shape, summary)
    if args.json:
        setup = {k: getattr(args, k) for k in ("shape", "batch", "seq", "repeats", "warmup")}
        setup |= {"rounds": args.rounds, "threads": 1}
        Path(args.json).write_text(
            json.dumps({"setup": setup, "rows": rows, "summary": summaries}, indent=2)
        )


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
