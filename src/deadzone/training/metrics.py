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
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as hf_logging

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


BATCH = 64  # prompts completed at once, left-padded


@dataclass(frozen=True)
class _Target:
    """One target to complete: its example, span and the tokens it may generate."""

    example: int
    start: int
    end: int
    room: int


@torch.no_grad()
def exact_match(
    model: torch.nn.Module,
    tokenizer,
    examples: list[Example],
    *,
    samples: int = 3,
    prompt_chars: int = 200,
    batch_size: int = BATCH,
) -> ExactMatch:
    """Exact match of ``model``'s greedy completions over ``examples`` (see the module).

    The prompts are completed ``batch_size`` at a time, left-padded with an attention mask (a
    row's greedy tokens are those it gets alone, the padding masked); a completion stops at
    its first token that departs from the target (:class:`_Departed`: it could no longer
    match), so a sample shows the completion up to there. ``samples`` targets are
    kept as text (the last ``prompt_chars`` characters of each prompt). The model is put in
    eval mode for the generation and given back in its mode.
    """
    limit = context_length(model)
    todo = []
    for i, example in enumerate(examples):
        for start, end in targets(example):
            room = end - start + SLACK if limit is None else min(end - start + SLACK, limit - start)
            todo.append(_Target(i, start, end, room))
    was_training = model.training
    model.eval()
    try:
        made = _complete(model, tokenizer, examples, todo, batch_size)
    finally:
        model.train(was_training)
    result, ok = ExactMatch(), {}
    for t, tokens in zip(todo, made, strict=True):
        ids = examples[t.example].input_ids
        target = tokenizer.decode(ids[t.start : t.end], skip_special_tokens=True)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        match = normalise(text) == normalise(target)
        ok[t.example] = ok.get(t.example, True) and match
        if len(result.samples) < samples:
            shown = tokenizer.decode(ids[: t.start])[-prompt_chars:]
            result.samples.append(Sample(shown, target, text, match))
    result.total, result.matches = len(ok), sum(ok.values())
    return result


def _complete(model, tokenizer, examples, todo: list[_Target], batch_size: int) -> list[list[int]]:
    """The greedy tokens of each target of ``todo`` (EOS and what follows dropped), prompts of
    similar length batched together."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    made: list[list[int]] = [[] for _ in todo]
    for rows in _batches(todo, batch_size, context_length(model)):
        width = max(todo[k].start for k in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, k in enumerate(rows):
            t = todo[k]
            ids[r, width - t.start :] = torch.tensor(examples[t.example].input_ids[: t.start])
            mask[r, width - t.start :] = 1
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(todo[k].room for k in rows),
            eos_token_id=eos,
            pad_token_id=pad,
        )
        wanted = [examples[todo[k].example].input_ids[todo[k].start : todo[k].end] for k in rows]
        departed = _Departed(tokenizer, width, wanted, [todo[k].room for k in rows])
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a finished row's pad token is no unmasked padding
        try:
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([departed]),
            )  # (rows, width + new)
        finally:
            hf_logging.set_verbosity(level)
        for r, k in enumerate(rows):
            new = out[r, width:].tolist()[: todo[k].room]
            made[k] = new[: new.index(eos)] if eos in new else new
    return made


def _bare(text: str) -> str:
    """``text`` without whitespace: what a completion must share with its target, token by
    token, whatever the decoder does with spaces."""
    return "".join(text.split())


class _Departed(StoppingCriteria):
    """Per row: done at its ``room``, at EOS, or once its completion so far (whitespace and a
    trailing incomplete character dropped) is no prefix of its target's text: it could not
    match any more."""

    def __init__(self, tokenizer, width: int, wanted: list[list[int]], rooms: list[int]):
        self.tokenizer, self.width, self.rooms = tokenizer, width, rooms
        self.targets = [_bare(tokenizer.decode(w, skip_special_tokens=True)) for w in wanted]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        eos = self.tokenizer.eos_token_id
        done = []
        for r, row in enumerate(input_ids[:, self.width :].tolist()):
            text = _bare(self.tokenizer.decode(row, skip_special_tokens=True)).rstrip("\ufffd")
            over = len(row) >= self.rooms[r] or eos in row
            done.append(over or not self.targets[r].startswith(text))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _batches(todo: list[_Target], size: int, limit: int | None) -> list[list[int]]:
    """Indices of ``todo`` (those with room) in batches of at most ``size``, by prompt length;
    within the context ``limit``, every row of a batch has room for the batch's longest
    completion (a row generates as many positions as the longest)."""
    order = sorted((k for k, t in enumerate(todo) if t.room > 0), key=lambda k: todo[k].start)
    batches: list[list[int]] = []
    for k in order:
        batch = batches[-1] if batches else None
        fits = batch is not None and len(batch) < size
        if fits and limit is not None:
            longest = max(todo[j].room for j in [*batch, k])
            fits = todo[k].start + longest <= limit  # the prompts so far are no longer
        if fits:
            batch.append(k)
        else:
            batches.append([k])
    return batches
