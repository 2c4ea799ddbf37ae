"""Peak memory of one full SFT run, as a multiple of the float32 checkpoint it trains.

A Llama of the SmolLM2-135M shape (30 blocks, 576 wide, MLP 1536, 9 heads / 3 KV heads,
vocabulary 49,152, tied embeddings), built from its config and saved as safetensors, is
loaded with ``load_model`` and trained for ``--steps`` full-SFT steps at batch 4 x 64 tokens
through ``run_one``, as every experiment runs it. Side by side, each in a fresh process:

- ``deepcopy``: the run trains a deep copy of the loaded model (what ``run_one`` did);
- ``reread``: the run trains a copy read back from the checkpoint's files
  (``deadzone.models.checkpoints.pristine_copy``), the loaded model's pages left unread;
- ``reread-ckpt``: ``reread`` with ``SFTConfig(gradient_checkpointing=True)``: each block keeps
  only its input, and its activations are recomputed in the backward pass;
- ``reread-bf16``: ``reread`` with the model loaded in bfloat16 (``load_model(dtype=...)``).

Printed per variant: the process's peak resident set (VmHWM) over the run, that peak / the
checkpoint's size, and (peak - resident set before the model was loaded) / checkpoint size:
the Python interpreter and torch's libraries alone hold about 0.4 GB, which is no part of what
the model costs. Weights, gradients and AdamW's two moments are 4x the checkpoint in float32.
Then where the peak goes, in MiB: the interpreter (resident before the model was loaded), what
loading the model added (its code's modules; its weights are a memory map left unread), the
weights, gradients and moments by their sizes, the resident set once the last backward pass
ended (the activations freed, every gradient and moment held), and what the peak held beyond
that point: the activations and the loss's buffers of a backward pass, and freed memory the
allocator had not yet returned.

    python bench/memory.py                 # 135M shape, about 2 minutes per variant on a core
    python bench/memory.py --layers 8      # a smaller model of the same width
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("deepcopy", "reread", "reread-ckpt", "reread-bf16")


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(variant: str, directory: Path, steps: int) -> dict:
    """One variant in this (fresh) process; returns its figures."""
    import torch

    from deadzone.data.sft import Example, SFTData
    from deadzone.experiments.runs import RunInputs, RunSpec, run_one
    from deadzone.models.checkpoints import load_model
    from deadzone.models.sites import find_sites
    from deadzone.training.train import Hook, SFTConfig

    class AfterBackward(Hook):
        """The resident set once each backward pass ended (the last one's is kept)."""

        rss = 0

        def on_after_backward(self, loop, step: int) -> None:
            self.rss = status_kib("VmRSS") * 1024

    torch.set_num_threads(1)
    before = status_kib("VmRSS") * 1024
    dtype = torch.bfloat16 if "bf16" in variant else torch.float32
    model, _ = load_model(str(directory), dtype=dtype)
    loaded = status_kib("VmRSS") * 1024  # the model's code imported, its weights' map unread
    if variant == "deepcopy":
        model.name_or_path = ""  # not read back from files: run_one deep-copies it
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)

    def example() -> Example:
        ids = torch.randint(0, vocab, (64,), generator=g).tolist()
        return Example(ids, ids)

    data = SFTData([example() for _ in range(4 * steps)], [example() for _ in range(4)], {})
    config = SFTConfig(
        steps=steps, batch_size=4, eval_every=steps, lr=1e-4,
        gradient_checkpointing="ckpt" in variant,
    )  # fmt: skip
    inputs = RunInputs(model, {s.name: s for s in find_sites(model)}, data, 0, config)
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    after = AfterBackward()
    record = run_one(inputs, RunSpec("full", {}, seed=0), show_progress=False, hooks=[after])
    assert record["status"] == "ok", record["error"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "peak": status_kib("VmHWM") * 1024, "before": before, "seconds": record["seconds"],
        "weights": weights, "after_backward": after.rss, "loaded": loaded,
    }  # fmt: skip


def save_model(directory: Path, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
        tie_word_embeddings=True, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = save_model(Path(tmp), args.layers)
        print(f"{args.layers} blocks, checkpoint {size / 2**20:.0f} MiB (float32), "
              f"batch 4 x 64, {args.steps} steps")  # fmt: skip
        for variant in args.variants.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--child", variant, tmp],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{variant:12s} peak {r['peak'] / 2**20:6.0f} MiB = {r['peak'] / size:.2f}x, "
                f"above the interpreter {(r['peak'] - r['before']) / size:.2f}x "
                f"({r['seconds']:.0f} s)"
            )
            print(profile(r))


def profile(r: dict) -> str:
    """Where the peak goes, in MiB (see the module's docstring)."""
    mib = 2**20
    w = r["weights"]  # the gradients as large (every parameter trains), AdamW's moments twice
    held = r["after_backward"] - r["before"]
    return (
        f"{'':12s} interpreter {r['before'] / mib:.0f}, loading the model "
        f"{(r['loaded'] - r['before']) / mib:.0f}; weights {w / mib:.0f}, gradients "
        f"{w / mib:.0f}, moments {2 * w / mib:.0f}; after the last backward pass "
        f"{held / mib:.0f} above the interpreter; beyond it at the peak "
        f"{(r['peak'] - r['after_backward']) / mib:.0f}"
    )


if __name__ == "__main__":
    main()
