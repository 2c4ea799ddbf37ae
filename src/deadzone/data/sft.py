"""SFT data: a ``--data`` spec and a tokenizer in, tokenized train and eval examples out.

Rows are read by :mod:`deadzone.data.sources` and rendered by :mod:`deadzone.data.formats`;
this module turns them into :class:`Example` s with TRL ``SFTTrainer``'s defaults, but one:
for ``messages`` rows only the assistant turns carry loss, where ``SFTTrainer``'s default
(``assistant_only_loss=False``) trains every token of the conversation:

- labels are the input ids where a token carries loss and ``-100`` elsewhere (a token carries
  loss if its characters overlap a completion, an assistant turn, or, for ``text`` rows, the
  text, counting the spaces a byte-level post-processor trimmed off its offsets; special
  tokens the tokenizer adds never do); the model shifts labels itself;
- EOS is appended to ``text`` and ``prompt`` + ``completion`` rows when the tokenized row does
  not already end with it, and is trained; conversations end as their chat template ends them;
- examples longer than ``max_length`` are truncated, keeping the start;
- an example left with no token to predict is dropped and counted (the first token is never
  predicted: nothing comes before it).

Evaluation data come from ``eval_spec`` when given, else from the builtin's own eval split,
else from a held-out fraction of the examples drawn with ``seed``. That seed fixes only the
split: keep it the same across training seeds for the eval set to stay the same.

Batches are made by :func:`train_batches` and :func:`eval_batches`
(:mod:`deadzone.data.batching`), re-exported here.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from deadzone.data.batching import IGNORE_INDEX, Example, collate, eval_batches, train_batches
from deadzone.data.formats import Rendered, render_table
from deadzone.data.sources import Table, is_builtin, read_spec, update_hash
from deadzone.errors import DeadzoneError

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "SFTData",
    "collate",
    "eval_batches",
    "load_sft_data",
    "pad_id_for",
    "train_batches",
]

TOKENIZE_CHUNK = 512  # rows per tokenizer call


@dataclass
class SFTData:
    """Tokenized train and eval examples, and ``info`` for results files.

    ``info`` holds ``spec``, ``eval_spec``, ``eval_source`` (``"eval_spec"``,
    ``"builtin_eval_split"`` or ``"held_out"``, with ``eval_fraction`` and ``split_seed``),
    ``format`` (row shapes, ``+``-joined), ``content_hash`` (sha256 of the raw rows, train
    then eval), ``max_length`` and ``counts``: ``rows``, ``examples`` (kept, train + eval),
    ``train_examples``, ``eval_examples``, ``dropped_no_target``, ``truncated``.
    """

    train: list[Example]
    eval: list[Example]
    info: dict = field(default_factory=dict)


def load_sft_data(
    spec: str,
    tokenizer: Any,
    *,
    max_length: int = 256,
    eval_spec: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> SFTData:
    """Read, check and tokenize ``spec`` (and the eval data) for ``tokenizer``."""
    if max_length < 2:
        raise DeadzoneError(f"max_length must be at least 2 tokens, got {max_length}")
    if not 0 <= eval_fraction < 1:
        raise DeadzoneError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise DeadzoneError("the tokenizer has no EOS token")
    hasher, counts, formats = hashlib.sha256(), Counter(), set()

    def examples_of(source: str, split: str) -> list[Example]:
        tables = read_spec(source, split)
        for table in tables:
            update_hash(hasher, table)
        return _examples(tables, source, tokenizer, max_length, eos_id, counts, formats)

    train = examples_of(spec, "train")
    if eval_spec is not None:
        hasher.update(b"\0eval\0")
        evaluation, eval_source = examples_of(eval_spec, "eval"), "eval_spec"
    elif is_builtin(spec):
        hasher.update(b"\0eval\0")
        evaluation, eval_source = examples_of(spec, "eval"), "builtin_eval_split"
    else:
        train, evaluation = hold_out(train, eval_fraction, seed)
        eval_source = "held_out"
    counts.update(train_examples=len(train), eval_examples=len(evaluation))
    info = {
        "spec": spec,
        "eval_spec": eval_spec,
        "eval_source": eval_source,
        "eval_fraction": eval_fraction if eval_source == "held_out" else None,
        "split_seed": seed if eval_source == "held_out" else None,
        "format": "+".join(sorted(formats)),
        "content_hash": hasher.hexdigest(),
        "max_length": max_length,
        "counts": {key: counts[key] for key in _COUNT_KEYS},
    }
    return SFTData(train, evaluation, info)


_COUNT_KEYS = (
    "rows",
    "examples",
    "train_examples",
    "eval_examples",
    "dropped_no_target",
    "truncated",
)


def hold_out(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, eval)``: a ``fraction`` of ``examples`` (at least one if ``fraction`` > 0),
    drawn with ``seed``; both keep the examples' original order."""
    if fraction == 0:
        return examples, []
    n_eval = max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise DeadzoneError(
            f"too few examples ({len(examples)}) to hold out {fraction:.0%} for evaluation; "
            "give evaluation data explicitly"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


def pad_id_for(tokenizer: Any) -> int:
    """The tokenizer's pad token id, or its EOS id when it has none (as for GPT-2)."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else getattr(tokenizer, "eos_token_id", None)
    if pad_id is None:
        raise DeadzoneError("the tokenizer has neither a pad nor an EOS token")
    return pad_id


def _examples(
    tables: list[Table],
    spec: str,
    tokenizer: Any,
    max_length: int,
    eos_id: int,
    counts: Counter,
    formats: set[str],
) -> list[Example]:
    """The examples of ``tables`` (``spec``'s files); empty data is an error."""
    rows = sum(len(t.rows) for t in tables)
    if rows == 0:
        raise DeadzoneError(f"no rows in {spec}")
    examples: list[Example] = []
    dropped_before = counts["dropped_no_target"]
    for table in tables:
        if not table.rows:
            continue
        fmt, rendered = render_table(table, tokenizer)
        formats.add(fmt)
        for start in range(0, len(rendered), TOKENIZE_CHUNK):
            chunk = rendered[start : start + TOKENIZE_CHUNK]
            examples += _tokenize(chunk, tokenizer, max_length, eos_id, counts)
    counts.update(rows=rows, examples=len(examples))
    if not examples:
        dropped = counts["dropped_no_target"] - dropped_before
        raise DeadzoneError(
            f"no example in {spec} has a token to train on within {max_length} tokens "
            f"({dropped} dropped)"
        )
    return examples


def _tokenize(
    rendered: list[Rendered], tokenizer: Any, max_length: int, eos_id: int, counts: Counter
) -> list[Example]:
    """Tokenize rows of one table (all chat-rendered or none), label, truncate and filter."""
    chat = rendered[0].chat
    try:
        encoded = tokenizer(
            [r.text for r in rendered],
            add_special_tokens=not chat,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    except NotImplementedError:
        raise DeadzoneError(
            "the tokenizer cannot map tokens to characters; use a fast tokenizer"
        ) from None
    examples = []
    for row, ids, offsets, special in zip(
        rendered,
        encoded["input_ids"],
        encoded["offset_mapping"],
        encoded["special_tokens_mask"],
        strict=True,
    ):
        add_eos = not chat and (not ids or ids[-1] != eos_id)
        if len(ids) + add_eos > max_length:
            counts["truncated"] += 1
            ids, offsets, special = ids[:max_length], offsets[:max_length], special[:max_length]
            add_eos = False
        tokens = tokenizer.convert_ids_to_tokens(ids)
        carries = _carries_loss(_untrimmed(offsets, tokens), special, row.spans)
        labels = [t if c else IGNORE_INDEX for t, c in zip(ids, carries, strict=True)]
        example = Example([*ids, eos_id], [*labels, eos_id]) if add_eos else Example(ids, labels)
        if example.trained_tokens == 0:
            counts["dropped_no_target"] += 1
        else:
            examples.append(example)
    return examples


BYTE_LEVEL_SPACE = "\u0120"  # how a byte-level vocabulary writes the space byte ("Ġ")


def _trimmable(c: str) -> bool:
    return c == BYTE_LEVEL_SPACE or c.isspace()


def _untrimmed(offsets: list[tuple[int, int]], tokens: list[str]) -> list[tuple[int, int]]:
    """Offsets with the spaces a byte-level post-processor (``trim_offsets=True``) took off
    each end of a token given back, never past its neighbours' offsets.

    The trimming counts the token's leading and trailing spaces; a token of spaces alone is
    trimmed to nothing and is left so (:func:`_carries_loss` places it). For tokenizers that
    do not trim, offsets touch their neighbours and nothing changes.
    """
    n = len(offsets)
    before, after = [0] * n, [0] * n  # end of the last token before i, start of the next after
    last = 0
    for i, (start, end) in enumerate(offsets):
        before[i] = last
        last = max(last, end) if start < end else last
    nxt = None
    for i in range(n - 1, -1, -1):
        after[i] = nxt if nxt is not None else -1
        start, end = offsets[i]
        nxt = start if start < end else nxt
    out = list(offsets)
    for i, ((start, end), token) in enumerate(zip(offsets, tokens, strict=True)):
        if start >= end or not token or not (_trimmable(token[0]) or _trimmable(token[-1])):
            continue  # nothing trimmed off either end
        lead = next((j for j, c in enumerate(token) if not _trimmable(c)), len(token))
        trail = next((j for j, c in enumerate(reversed(token)) if not _trimmable(c)), len(token))
        if lead or trail:
            limit = end + trail if after[i] < 0 else max(after[i], end)
            out[i] = (max(start - lead, min(before[i], start)), min(end + trail, limit))
    return out


def _carries_loss(
    offsets: list[tuple[int, int]], special: list[int], spans: tuple[tuple[int, int], ...]
) -> list[bool]:
    """Per token, whether its characters overlap a span.

    Tokens the tokenizer adds (BOS; ``special`` is 1) have empty offsets and never carry loss.
    A byte-level post-processor that trims offsets gives a whitespace-only token (indentation,
    a run of spaces) an empty offset at the end of its characters, which began where the
    previous token ended: the token is taken to cover that stretch, or, where the stretch is
    empty too, to sit at its offset, inside a span ``(lo, hi)`` when ``lo <= start < hi``.
    """
    carries, prev_end = [], 0
    for (start, end), is_special in zip(offsets, special, strict=True):
        if start < end:
            carries.append(any(start < hi and end > lo for lo, hi in spans))
            prev_end = max(prev_end, end)
        elif is_special:
            carries.append(False)
        elif prev_end < start:
            carries.append(any(prev_end < hi and start > lo for lo, hi in spans))
            prev_end = start
        else:
            carries.append(any(lo <= start < hi for lo, hi in spans))
    return carries
