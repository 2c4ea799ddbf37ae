"""Task metrics on an eval set: exact match of the greedy completion, and a few samples.

An eval :class:`~deadzone.data.sft.Example` holds its prompt and its targets in one sequence:
the targets are the runs of tokens whose label is not ``-100`` (a completion, or each assistant
turn of a conversation), the prompt of a target is everything before it. For each target the
model completes its prompt greedily, up to the target's length plus :data:`SLACK` tokens or its
EOS; the example matches when every target's completion reads the same as the target once
special tokens are dropped and whitespace is normalised (runs of whitespace become one space,
none at the ends). A conversation's later turns are completed after the true earlier turns.

Plain-text examples (every token a target, no prompt) have nothing to complete: they are not
scored, and a set of them alone has ``total == 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from transformers import GenerationConfig

from deadzone.data.sft import IGNORE_INDEX, Example
from deadzone.models.checkpoints import context_length

SLACK = 8  # tokens a completion may run past its target's length (another tokenization)


@dataclass(frozen=True)
class Sample:
    """One target: the end of its prompt, the target and the greedy completion, as text."""

    prompt: str
    target: str
    completion: str
    match: bool


@dataclass
class ExactMatch:
    """``matches`` of ``total`` scored examples; ``samples``: the first targets, as text."""

    matches: int = 0
    total: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.matches / self.total if self.total else None

    def to_dict(self) -> dict:
        return {**asdict(self), "rate": self.rate}


def normalise(text: str) -> str:
    """Whitespace runs as one space, none at the ends."""
    return " ".join(text.split())


def targets(example: Example) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of labelled tokens that has a prompt before it."""
    spans, start = [], None
    labels = [*example.labels, IGNORE_INDEX]
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return [(s, e) for s, e in spans if s > 0]


@torch.no_grad()
def exact_match(
    model: torch.nn.Module,
    tokenizer,
    examples: list[Example],
    *,
    samples: int = 3,
    prompt_chars: int = 200,
) -> ExactMatch:
    """Exact match of ``model``'s greedy completions over ``examples`` (see the module).

    ``samples`` targets are kept as text (the last ``prompt_chars`` characters of each prompt).
    The model is put in eval mode for the generation and given back in its mode.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = context_length(model)
    result = ExactMatch()
    try:
        for example in examples:
            spans = targets(example)
            if not spans:
                continue
            ok = True
            for start, end in spans:
                prompt = torch.tensor([example.input_ids[:start]], device=device)
                room = (
                    end - start + SLACK
                    if limit is None
                    else min(end - start + SLACK, limit - start)
                )
                made = _greedy(model, tokenizer, prompt, room) if room > 0 else []
                target = tokenizer.decode(example.input_ids[start:end], skip_special_tokens=True)
                text = tokenizer.decode(made, skip_special_tokens=True)
                match = normalise(text) == normalise(target)
                ok = ok and match
                if len(result.samples) < samples:
                    shown = tokenizer.decode(example.input_ids[:start])[-prompt_chars:]
                    result.samples.append(Sample(shown, target, text, match))
            result.total += 1
            result.matches += ok
    finally:
        model.train(was_training)
    return result


def _greedy(model, tokenizer, prompt: torch.Tensor, max_new: int) -> list[int]:
    """Greedy continuation of ``prompt`` (1, T): at most ``max_new`` tokens, EOS excluded."""
    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), generation_config=config
    )  # (1, T + new)
    new = out[0, prompt.shape[1] :].tolist()
    return new[: new.index(eos)] if eos in new else new
