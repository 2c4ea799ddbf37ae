"""Padded batches of SFT examples, in an order fixed by a seed.

Examples are padded on the right to the longest one in their batch: ``input_ids`` with the
pad id, ``attention_mask`` with 0, ``labels`` with ``-100``. No packing, so examples never
attend to one another.

:func:`train_batches` depends only on the examples, the batch size and the seed, so every
strategy trained with one seed sees exactly the same batches in the same order (the paired
design); :func:`eval_batches` are the same for every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from deadzone.errors import DeadzoneError

IGNORE_INDEX = -100  # label of a token without loss, as torch's cross-entropy expects


@dataclass(frozen=True)
class Example:
    """One tokenized example; ``labels[i]`` is ``input_ids[i]`` or ``IGNORE_INDEX``."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss is computed on (the first one is never predicted)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch: ``input_ids``, ``attention_mask``, ``labels``, each (B, T)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_batches(
    examples: Sequence[Example], batch_size: int, *, seed: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches of exactly ``batch_size`` examples.

    The examples are walked epoch after epoch, each epoch in a fresh order drawn from
    ``seed``; a batch may span the end of one epoch and the start of the next, so every
    batch is full and every example is seen once per epoch.
    """
    if batch_size < 1:
        raise DeadzoneError(f"batch size must be at least 1, got {batch_size}")
    if not examples:
        raise DeadzoneError("no training examples to batch")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order += epoch
        chosen, order = order[:batch_size], order[batch_size:]
        yield collate([examples[i] for i in chosen], pad_id)


def eval_batches(
    examples: Sequence[Example], batch_size: int, *, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """The examples in their order, ``batch_size`` at a time (the last batch may be smaller;
    no examples, no batches)."""
    if batch_size < 1:
        raise DeadzoneError(f"batch size must be at least 1, got {batch_size}")
    return [
        collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)
    ]
