"""Builtin model presets and the pretraining recipe of the embedded default.

``builtin:tiny`` is pretrained on the builtin corpus on first use (a few minutes on a laptop
CPU), then cached under ``$XDG_CACHE_HOME/deadzone`` (or ``~/.cache/deadzone``), keyed by the
corpus hash and the preset, and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deadzone.errors import DeadzoneError
from deadzone.fileio import cache_root


@dataclass(frozen=True)
class Preset:
    """A GPT-2-architecture model and the recipe that pretrains it on the builtin corpus."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    context: int
    vocab_size: int
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    eval_blocks: int
    checkpoint_every: int = 100  # steps between the checkpoints an interrupted run resumes from
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise DeadzoneError(f"preset {self.name}: n_embd {self.n_embd} not divisible by n_head")
        if self.steps <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            raise DeadzoneError(
                f"preset {self.name}: steps, batch_size and checkpoint_every must be positive"
            )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny", n_layer=8, n_embd=96, n_head=4, context=128, vocab_size=4096,
            steps=600, batch_size=16, lr=3e-3, warmup_steps=30, eval_blocks=128,
            checkpoint_every=50,
            description="8 blocks, 96 wide: pretrains on 2 CPU cores in a few minutes",
        ),
        Preset(
            "paper", n_layer=8, n_embd=288, n_head=6, context=256, vocab_size=7424,
            steps=3000, batch_size=32, lr=1e-3, warmup_steps=100, eval_blocks=256,
            checkpoint_every=200,
            description="the study's model: 8 blocks, about 10.2M parameters (wants a GPU)",
        ),
        Preset(
            "micro", n_layer=2, n_embd=32, n_head=2, context=64, vocab_size=512,
            steps=20, batch_size=8, lr=3e-3, warmup_steps=2, eval_blocks=16, checkpoint_every=5,
            description="2 blocks, 32 wide: seconds, for smoke tests",
        ),
    )
}  # fmt: skip


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise DeadzoneError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None


def builtin_dir(name: str, corpus_hash: str) -> Path:
    """Where the builtin model of preset ``name`` pretrained on corpus ``corpus_hash`` lives."""
    return cache_root() / "models" / f"{name}-{corpus_hash[:12]}"
