"""Exact match of greedy completions: a planted task a tiny model learns, and the builtin data."""

from __future__ import annotations

import json

import pytest
import torch

from deadzone.data.sft import Example, eval_batches, load_sft_data, pad_id_for, train_batches
from deadzone.models.presets import get_preset
from deadzone.models.pretraining import build_model, train_tokenizer
from deadzone.training.metrics import exact_match, normalise, targets
from deadzone.training.train import SFTConfig, train

COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]
FRUITS = ["apple", "plum", "lime", "cherry", "pear", "fig", "kiwi", "date"]


def test_targets_are_the_labelled_runs_after_a_prompt():
    ex = Example([1, 2, 3, 4, 5, 6, 7], [-100, -100, 3, 4, -100, 6, 7])
    assert targets(ex) == [(2, 4), (5, 7)]
    assert targets(Example([1, 2, 3], [1, 2, 3])) == []  # plain text: no prompt to complete
    assert normalise("  a \n\t b  ") == "a b"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A micro GPT-2 and a tokenizer, and a colour -> fruit table as prompt/completion rows."""
    rows = [
        {"prompt": f"{c} ->", "completion": f" {f}"} for c, f in zip(COLOURS, FRUITS, strict=True)
    ]
    path = tmp_path_factory.mktemp("planted") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in rows] * 4, 300)
    data = load_sft_data(str(path), tokenizer, max_length=32, eval_spec=str(path))
    return build_model(get_preset("micro"), tokenizer), tokenizer, data


def test_a_tiny_model_learns_to_exact_match_a_planted_task(planted):
    model, tokenizer, data = planted
    before = exact_match(model, tokenizer, data.eval)
    assert before.total == len(COLOURS) and before.matches == 0
    batches = train_batches(data.train, 8, seed=0, pad_id=pad_id_for(tokenizer))
    evals = eval_batches(data.eval, 8, pad_id=pad_id_for(tokenizer))
    config = SFTConfig(steps=150, lr=1e-2, batch_size=8, eval_every=150, warmup_steps=10)
    assert train(model, batches, evals, config, show_progress=False).status == "ok"
    after = exact_match(model, tokenizer, data.eval, samples=2)
    assert after.total == len(COLOURS) and after.rate == 1.0
    assert [s.target for s in after.samples] == [f" {f}" for f in FRUITS[:2]]
    assert all(s.match and normalise(s.completion) == s.target.strip() for s in after.samples)
    assert after.samples[0].prompt.endswith("red ->")
    assert after.to_dict()["rate"] == 1.0


def test_the_builtin_data_is_scored_example_by_example():
    from transformers import GPT2Config, GPT2LMHeadModel

    from deadzone.data import corpus

    tokenizer = train_tokenizer(corpus.pretraining_documents("train")[:200], 1000)
    data = load_sft_data("builtin:docstrings", tokenizer, max_length=256)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=512, vocab_size=len(tokenizer))
    examples = data.eval[:4]
    result = exact_match(GPT2LMHeadModel(config), tokenizer, examples, samples=4)
    assert result.total == 4 and len(result.samples) == 4
    for ex, sample in zip(examples, result.samples, strict=True):
        (start, end), *_ = targets(ex)
        assert sample.target == tokenizer.decode(ex.input_ids[start:end], skip_special_tokens=True)
        assert sample.target.strip() and sample.prompt.strip()
        assert sample.match == (normalise(sample.completion) == normalise(sample.target))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_completions_are_those_of_one_prompt_at_a_time(family):
    """Left-padded batches of prompts of different lengths give each prompt its own greedy
    tokens: the padding is masked and the positions start at each prompt's first token."""
    from conftest import tiny_gpt2, tiny_llama
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_gpt2() if family == "gpt2" else tiny_llama()
    with torch.no_grad():  # sharper logits than at init: greedy choices far from ties
        for p in model.parameters():
            p.mul_(4.0)
    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")), eos_token="t0"
    )
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (3, 9, 5, 17, 12, 4, 8):
        ids = torch.randint(2, model.config.vocab_size, (n + 6,), generator=g).tolist()
        examples.append(Example(ids, [-100] * n + ids[n:]))
    one = exact_match(model, tokenizer, examples, samples=len(examples), batch_size=1)
    batched = exact_match(model, tokenizer, examples, samples=len(examples), batch_size=4)
    assert [s.completion for s in batched.samples] == [s.completion for s in one.samples]
    assert any(s.completion for s in one.samples)
