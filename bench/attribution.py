"""Attribution: what recording it costs a ``full`` run, and the integration error it leaves.

One process, one thread: the same SFT run (a GPT-2 of ``builtin:tiny``'s shape, random init,
rows that count up by a stride, so the eval loss falls) without the hook and with it at each
``--every``, alternating. Printed per ``every``: the run's time with the hook over without
(``ratio``), the hook's own share of the run (``cost``), and each rule's measured error, the sum
over segments of ``|measured change - sum of A_p|``, as a share of the sum over segments of
``|measured change|`` (``Residuals.relative``).

    python bench/attribution.py                       # 20 steps, every 1, 5 and 10
    python bench/attribution.py --steps 50 --every 1,10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from deadzone.geometry.attribution import RULES, residuals  # noqa: E402
from deadzone.training.attribution import AttributionHook  # noqa: E402
from deadzone.training.train import SFTConfig, train  # noqa: E402


def make_model(args) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=8, n_embd=96, n_head=4, n_positions=args.seq, vocab_size=args.vocab,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def counting(n: int, args, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    rows = n * args.batch
    start = torch.randint(1, args.vocab, (rows, 1), generator=g)
    stride = torch.randint(1, 8, (rows, 1), generator=g)
    ids = (start + stride * torch.arange(args.seq)) % (args.vocab - 1) + 1
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100
    b = args.batch
    return [{"input_ids": ids[i : i + b], "attention_mask": torch.ones_like(ids[i : i + b]),
             "labels": labels[i : i + b]} for i in range(0, rows, b)]  # fmt: skip


def one_run(args, train_data, eval_data, every: int | None) -> dict:
    model = make_model(args)
    hooks = [] if every is None else [AttributionHook(eval_data[: args.eval_batches], every)]
    config = SFTConfig(steps=args.steps, lr=3e-3, eval_every=args.steps, warmup_steps=2, seed=0)
    t0 = time.perf_counter()
    result = train(model, train_data, eval_data, config, hooks=hooks, show_progress=False)
    out = {"seconds": time.perf_counter() - t0, "final_eval_loss": result.final_eval_loss}
    if hooks:
        record = hooks[0].record
        out |= {"cost": record.cost_fraction(result.seconds), "change": record.loss_change}
        out["error"] = {rule: residuals(record, rule).relative for rule in RULES}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", default="1,5,10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--eval-batches", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_data, eval_data = counting(16, args, seed=1), counting(4, args, seed=2)
    figures = {}
    for every in [int(k) for k in args.every.split(",")]:
        plain = one_run(args, train_data, eval_data, None)
        hooked = one_run(args, train_data, eval_data, every)
        assert hooked["final_eval_loss"] == plain["final_eval_loss"]  # the run is unchanged
        figures[every] = {**hooked, "ratio": hooked["seconds"] / plain["seconds"]}
        errors = "  ".join(f"{r} {e:.2%}" for r, e in hooked["error"].items())
        print(f"every {every:>3}: ratio {figures[every]['ratio']:.2f}x  cost {hooked['cost']:.0%}"
              f"  change {hooked['change']:+.4f} nats  error: {errors}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "figures": figures}, f, indent=2)


if __name__ == "__main__":
    main()
