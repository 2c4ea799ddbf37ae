"""SFT throughput: deadzone's loop against Hugging Face ``Trainer``, and what freezing saves.

1. tokens/s of ``deadzone.training.train`` vs ``transformers.Trainer`` on the same GPT-2 model,
   data,
   batch and schedule (target: ratio >= 1.0);
2. step time and optimizer-state bytes with every matrix trained (``full``) vs half of the
   block matrices frozen (the lower half of the blocks).

Time is the process's CPU time by default (``--clock cpu``), so that other work on a shared
machine does not count; ``--clock wall`` uses wall-clock time (use it with several threads or
on a GPU). Each run is timed by the median duration of its steps after the first ``--skip``; each
measurement is repeated ``--repeats`` times, alternating the contenders, and the median of the
repeats is reported.

    python bench/sft.py                 # the builtin:tiny shape, one CPU thread
    python bench/sft.py --json out.json # also write the figures
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from deadzone.models import sites
from deadzone.training import strategies
from deadzone.training.train import SFTConfig, SFTLoop


def make_model(args: argparse.Namespace) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_positions=args.seq,
        vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def make_examples(args: argparse.Namespace, n: int) -> list[dict[str, torch.Tensor]]:
    """Fixed-length random-token examples, loss on every token (no padding for either side)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (n, args.seq), generator=gen)
    return [
        {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()}
        for row in ids
    ]


def batches(examples: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [
        {k: torch.stack([e[k] for e in examples[i : i + batch_size]]) for k in examples[0]}
        for i in range(0, len(examples) - batch_size + 1, batch_size)
    ]


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class StepClock(TrainerCallback):
    """The clock's time at the end of every optimizer step of a ``Trainer``."""

    def __init__(self, now) -> None:
        self.now = now
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self.now())


def sft_config(args: argparse.Namespace) -> SFTConfig:
    return SFTConfig(
        steps=args.steps, lr=3e-4, batch_size=args.batch, warmup_steps=2, min_lr_ratio=0.0,
        eval_every=args.steps, max_grad_norm=1.0, seed=0,
    )  # fmt: skip


def run_ours(args, examples, eval_batch, freeze: list[str] | None = None) -> dict:
    """Tokens/s and step time of deadzone's loop over the timed steps; optimizer-state bytes."""
    model = make_model(args)
    named = {s.name: s for s in sites.find_sites(model)}
    strategies.apply_strategies(model, {named[n]: "frozen" for n in freeze or []})
    ends: list[float] = []
    loop = SFTLoop(model, batches(examples, args.batch), [eval_batch], sft_config(args),
                   show_progress=False)  # fmt: skip
    step = loop.train_step

    def timed(stream, i):
        out = step(stream, i)
        ends.append(CLOCKS[args.clock]())
        return out

    loop.train_step = timed
    result = loop.run()
    assert result.status == "ok", result.error
    state = sum(
        t.numel() * t.element_size()
        for s in loop.optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return _rates(args, ends) | {"optimizer_state_bytes": state,
                                 "trainable_params": result.trainable_params}  # fmt: skip


def run_trainer(args, examples) -> dict:
    """Tokens/s of ``transformers.Trainer`` with the same model, data, batch and schedule."""
    model = make_model(args)
    step_clock = StepClock(CLOCKS[args.clock])
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
            learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine", max_grad_norm=1.0,
            weight_decay=0.0, logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
            disable_tqdm=True, seed=0, bf16=torch.cuda.is_available(),
        )  # fmt: skip
        trainer = Trainer(model=model, args=targs, train_dataset=examples, callbacks=[step_clock])
        trainer.train()
    return _rates(args, step_clock.ends)


def _rates(args, ends: list[float]) -> dict:
    """Rates from the median duration of the timed steps (robust to a busy shared CPU)."""
    durations = [b - a for a, b in zip(ends[args.skip - 1 : -1], ends[args.skip :], strict=True)]
    step = statistics.median(durations)
    return {"tokens_per_second": args.batch * args.seq / step, "step_seconds": step}


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="steps left out of the timing (>= 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what time to count")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    examples = make_examples(args, args.steps * args.batch)
    eval_batch = batches(make_examples(args, args.batch), args.batch)[0]
    block = [s.name for s in sites.find_sites(make_model(args)) if s.layer is not None]
    frozen = [n for n in block if int(n[1 : n.index(".")]) < args.layers // 2]

    ours, hf, full, half = [], [], [], []
    for _ in range(args.repeats):
        ours.append(run_ours(args, examples, eval_batch))
        hf.append(run_trainer(args, examples))
        full.append(ours[-1])
        half.append(run_ours(args, examples, eval_batch, freeze=frozen))
    ours_m, hf_m, full_m, half_m = map(median_of, (ours, hf, full, half))
    figures = {
        "setup": vars(args)
        | {
            "torch": torch.__version__,
            "frozen_sites": len(frozen),
            "block_sites": len(block),
        },  # fmt: skip
        "deadzone_tokens_per_second": ours_m["tokens_per_second"],
        "trainer_tokens_per_second": hf_m["tokens_per_second"],
        "ratio_vs_trainer": ours_m["tokens_per_second"] / hf_m["tokens_per_second"],
        "each_repeat_tokens_per_second": {
            "deadzone": [round(r["tokens_per_second"]) for r in ours],
            "trainer": [round(r["tokens_per_second"]) for r in hf],
            "half_frozen": [round(r["tokens_per_second"]) for r in half],
        },
        "full": full_m,
        "half_frozen": half_m,
        "step_time_ratio_half_over_full": half_m["step_seconds"] / full_m["step_seconds"],
        "optimizer_state_ratio_half_over_full": half_m["optimizer_state_bytes"]
        / full_m["optimizer_state_bytes"],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
