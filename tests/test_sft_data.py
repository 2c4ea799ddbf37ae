"""SFT data: every input shape from a local file, loss masks, EOS, truncation, batches, errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import datasets
import pytest
import torch
from conftest import CHAT_TEMPLATE, SENTENCES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from deadzone.data.sft import (
    IGNORE_INDEX,
    Example,
    eval_batches,
    load_sft_data,
    pad_id_for,
    train_batches,
)
from deadzone.errors import DeadzoneError

SPECIALS = ["<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with an EOS, a pad token and a chat template, trained here."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the format of ``path``'s suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


TEXT_ROWS = [{"text": s} for s in SENTENCES]
PC_ROWS = [
    {"prompt": "What is two plus two?", "completion": " Four."},
    {"prompt": "Write the docstring for this function: def add(a, b):", "completion": " Return"},
    {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."},
]
CONVERSATION = [
    {"role": "system", "content": "Hello deadzone."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "The quick brown fox"},
    {"role": "assistant", "content": "jumps over the lazy dog."},
]


# --------------------------------------------------------------------------- formats


def test_txt_is_split_into_paragraphs_with_loss_on_every_token(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("Hello world,\nhello tokenizer.\n\n\n\nThe quick brown fox.\n\n  \n\nFour.\n")
    data = load_sft_data(str(path), tokenizer, eval_fraction=0)
    texts = ["Hello world,\nhello tokenizer.", "The quick brown fox.", "Four."]
    assert [e.input_ids for e in data.train] == [ids(tokenizer, t) + [0] for t in texts]
    assert all(e.labels == e.input_ids for e in data.train)
    assert data.info["format"] == "text"
    assert data.info["counts"]["rows"] == 3
    assert data.eval == []


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_text_column_in_every_file_type(tmp_path, tokenizer, suffix):
    data = load_sft_data(str(write(tmp_path / f"d{suffix}", TEXT_ROWS)), tokenizer, eval_fraction=0)
    assert [e.input_ids for e in data.train] == [ids(tokenizer, s) + [0] for s in SENTENCES]
    assert all(e.labels == e.input_ids for e in data.train)
    assert data.info["format"] == "text"


def test_same_rows_in_any_file_type_have_the_same_content_hash(tmp_path, tokenizer):
    hashes = {
        load_sft_data(str(write(tmp_path / f"d{s}", PC_ROWS)), tokenizer).info["content_hash"]
        for s in (".jsonl", ".json", ".csv", ".parquet")
    }
    assert len(hashes) == 1
    other = write(tmp_path / "other.jsonl", PC_ROWS[:2] + [{"prompt": "x", "completion": "y"}])
    assert load_sft_data(str(other), tokenizer).info["content_hash"] not in hashes


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_completion_only_loss_masks_the_prompt_exactly(tmp_path, tokenizer, suffix):
    data = load_sft_data(str(write(tmp_path / f"pc{suffix}", PC_ROWS)), tokenizer, eval_fraction=0)
    assert data.info["format"] == "prompt_completion"
    for row, example in zip(PC_ROWS, data.train, strict=True):
        prompt, completion = ids(tokenizer, row["prompt"]), ids(tokenizer, row["completion"])
        assert example.input_ids == prompt + completion + [tokenizer.eos_token_id]
        assert example.labels == [IGNORE_INDEX] * len(prompt) + completion + [0]


CODE = ["def f(x):\n    if x:\n        return x;    y = 2\n", "x = 1;    y = 2  # two"]


def trimming_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE whose post-processor trims offsets (as GPT-2 and RoBERTa's do) and adds
    a BOS: whitespace-only tokens get empty offsets."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    bpe.train_from_iterator(CODE, trainer)
    bos = bpe.token_to_id("<bos>")
    bpe.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)]),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", bos_token="<bos>")


def test_whitespace_tokens_with_trimmed_offsets_carry_loss(tmp_path):
    tok = trimming_tokenizer()
    prompt, completion = "Write f:\n", CODE[0]
    offsets = tok(prompt + completion, return_offsets_mapping=True)["offset_mapping"]
    assert any(a == b for a, b in offsets[1:])  # a whitespace token has empty offsets
    path = write(tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": completion}])
    (example,) = load_sft_data(str(path), tok, eval_fraction=0).train
    n_prompt = 1 + len(ids(tok, prompt))  # BOS, then the prompt
    assert example.input_ids[:n_prompt] == tok(prompt)["input_ids"]
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]  # every completion token
    text = write(tmp_path / "t.jsonl", [{"text": CODE[1]}])
    (row,) = load_sft_data(str(text), tok, eval_fraction=0).train
    assert row.labels == [IGNORE_INDEX, *row.input_ids[1:]]  # all but the added BOS


def test_messages_train_on_assistant_turns_only(tmp_path, tokenizer):
    path = write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION, "source": "x"}])
    (example,) = load_sft_data(str(path), tokenizer, eval_fraction=0).train
    assert example.input_ids == ids(
        tokenizer, tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    )
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert trained == ids(tokenizer, "Four.<|end|>jumps over the lazy dog.<|end|>")
    # No EOS is appended to a conversation: the template ends each turn itself.
    assert tokenizer.eos_token_id not in example.input_ids
    # A label is its token or masked, never another token.
    for token, label in zip(example.input_ids, example.labels, strict=True):
        assert label in (token, IGNORE_INDEX)


def test_conversation_without_an_assistant_turn_is_dropped(tmp_path, tokenizer):
    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}]
    data = load_sft_data(str(write(tmp_path / "chat.jsonl", rows)), tokenizer, eval_fraction=0)
    assert len(data.train) == 1
    assert data.info["counts"]["dropped_no_target"] == 1
    assert data.info["format"] == "messages"


def test_a_chat_template_that_rewrites_earlier_turns_is_refused(tmp_path, tokenizer):
    odd = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>")
    odd.chat_template = "{{ messages | length }}" + CHAT_TEMPLATE
    path = write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(DeadzoneError, match=r"chat\.jsonl, line 1: the chat template does not"):
        load_sft_data(str(path), odd, eval_fraction=0)


def test_conversational_prompt_completion_trains_on_the_completion(tmp_path, tokenizer):
    row = {"prompt": CONVERSATION[:2], "completion": [CONVERSATION[2]]}
    (example,) = load_sft_data(
        str(write(tmp_path / "c.jsonl", [row])), tokenizer, eval_fraction=0
    ).train
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert trained == ids(tokenizer, "Four.<|end|>")
    text = tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert example.input_ids == ids(tokenizer, text)


def test_eos_is_appended_once(tmp_path, tokenizer):
    rows = [{"text": "Four."}, {"text": "Four.<eos>"}, {"prompt": "x", "completion": "y"}]
    path = write(tmp_path / "t.jsonl", rows[:2])
    data = load_sft_data(str(path), tokenizer, eval_fraction=0)
    assert [e.input_ids for e in data.train] == [ids(tokenizer, "Four.") + [0]] * 2
    pc = load_sft_data(str(write(tmp_path / "pc.jsonl", rows[2:] * 2)), tokenizer, eval_fraction=0)
    assert all(e.input_ids.count(0) == 1 and e.labels[-1] == 0 for e in pc.train)


def test_truncation_keeps_the_start(tmp_path, tokenizer):
    text = " ".join(SENTENCES)
    path = write(tmp_path / "long.jsonl", [{"text": text}, {"text": "Four."}])
    data = load_sft_data(str(path), tokenizer, max_length=8, eval_fraction=0)
    assert data.train[0].input_ids == ids(tokenizer, text)[:8]
    assert data.train[0].labels == data.train[0].input_ids
    assert data.info["counts"]["truncated"] == 1


def test_examples_without_a_trained_token_are_dropped_and_counted(tmp_path, tokenizer):
    rows = [
        {"prompt": " ".join(SENTENCES), "completion": " Four."},  # prompt fills max_length
        {"prompt": "What is two plus two?", "completion": " Four."},
    ]
    path = write(tmp_path / "pc.jsonl", rows)
    data = load_sft_data(str(path), tokenizer, max_length=12, eval_fraction=0)
    assert len(data.train) == 1
    counts = data.info["counts"]
    assert counts["dropped_no_target"] == 1
    assert (counts["rows"], counts["examples"], counts["truncated"]) == (2, 1, 1)
    # A lone token is never predicted: an empty text (EOS alone) is dropped too.
    texts = write(tmp_path / "t.jsonl", [{"text": ""}, {"text": "Four."}])
    assert load_sft_data(str(texts), tokenizer, eval_fraction=0).info["counts"] == {
        "rows": 2,
        "examples": 1,
        "train_examples": 1,
        "eval_examples": 0,
        "dropped_no_target": 1,
        "truncated": 0,
    }


def test_directory_of_files(tmp_path, tokenizer):
    folder = tmp_path / "data"
    (folder / "more").mkdir(parents=True)
    write(folder / "a.jsonl", PC_ROWS)
    (folder / "more" / "b.txt").write_text("Four.\n\nHello world.\n")
    (folder / ".hidden.jsonl").write_text("not json\n")
    (folder / "notes.md").write_text("ignored\n")
    data = load_sft_data(str(folder), tokenizer, eval_fraction=0)
    assert data.info["counts"]["rows"] == len(PC_ROWS) + 2
    assert data.info["format"] == "prompt_completion+text"
    assert data.train[-1].input_ids == ids(tokenizer, "Hello world.") + [0]


# --------------------------------------------------------------------------- evaluation data


def test_held_out_fraction_is_deterministic_by_seed(tmp_path, tokenizer):
    rows = [{"text": f"{s} {i}"} for i in range(10) for s in SENTENCES[:2]]
    path = str(write(tmp_path / "t.jsonl", rows))
    a = load_sft_data(path, tokenizer, eval_fraction=0.25, seed=0)
    b = load_sft_data(path, tokenizer, eval_fraction=0.25, seed=0)
    c = load_sft_data(path, tokenizer, eval_fraction=0.25, seed=1)
    assert (len(a.train), len(a.eval)) == (15, 5)
    assert a.train == b.train and a.eval == b.eval
    assert a.eval != c.eval
    train = {tuple(e.input_ids) for e in a.train}
    assert not train & {tuple(e.input_ids) for e in a.eval}
    assert a.info["counts"]["train_examples"] == 15
    assert (a.info["eval_source"], a.info["eval_fraction"], a.info["split_seed"]) == (
        "held_out",
        0.25,
        0,
    )


def test_explicit_eval_spec(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", PC_ROWS)
    evaluation = write(tmp_path / "eval.csv", [{"text": "Four."}])
    data = load_sft_data(str(train), tokenizer, eval_spec=str(evaluation))
    assert len(data.train) == len(PC_ROWS)
    assert [e.input_ids for e in data.eval] == [ids(tokenizer, "Four.") + [0]]
    assert data.info["eval_source"] == "eval_spec"
    assert data.info["counts"]["rows"] == len(PC_ROWS) + 1


def test_builtin_docstrings_uses_its_own_eval_split(tokenizer):
    from deadzone.data.corpus import docstring_pairs

    data = load_sft_data("builtin:docstrings", tokenizer, max_length=64)
    n_train, n_eval = len(docstring_pairs("train")), len(docstring_pairs("eval"))
    counts = data.info["counts"]
    assert counts["rows"] == n_train + n_eval
    assert counts["train_examples"] + counts["eval_examples"] + counts["dropped_no_target"] == (
        n_train + n_eval
    )
    assert data.info["eval_source"] == "builtin_eval_split"
    assert data.info["format"] == "prompt_completion"
    assert data.train and data.eval


# --------------------------------------------------------------------------- batches


def examples(n: int) -> list[Example]:
    return [Example([i + 10] * (1 + i % 4), [IGNORE_INDEX] + [i + 10] * (i % 4)) for i in range(n)]


def take(iterator, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(iterator) for _ in range(n)]


def test_train_batches_are_fixed_by_the_seed():
    data = examples(10)
    first = take(train_batches(data, 4, seed=3, pad_id=1), 6)
    again = take(train_batches(data, 4, seed=3, pad_id=1), 6)
    other = take(train_batches(data, 4, seed=4, pad_id=1), 6)
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(first, again, strict=True)]
    assert all(same)
    assert not all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other, strict=True)
    )


def test_train_batches_cycle_epochs_each_reshuffled():
    data = examples(6)
    batches = take(train_batches(data, 3, seed=0, pad_id=1), 6)  # three epochs
    firsts = [int(row[0]) for b in batches for row in b["input_ids"]]
    epochs = [firsts[i : i + 6] for i in range(0, 18, 6)]
    assert all(sorted(e) == list(range(10, 16)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    assert all(b["input_ids"].shape[0] == 3 for b in batches)


def test_batches_are_padded_with_masked_labels():
    data = examples(4)
    (batch,) = eval_batches(data, 4, pad_id=1)
    assert batch["input_ids"].shape == (4, 4)
    mask = batch["attention_mask"].bool()
    assert mask.sum(1).tolist() == [1, 2, 3, 4]
    assert (batch["input_ids"][~mask] == 1).all()
    assert (batch["labels"][~mask] == IGNORE_INDEX).all()
    for row, e in enumerate(data):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert batch["labels"][row, :n].tolist() == e.labels


def test_eval_batches_keep_order_and_last_partial_batch(tokenizer):
    data = examples(5)
    batches = eval_batches(data, 2, pad_id=pad_id_for(tokenizer))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert [int(b["input_ids"][r, 0]) for b in batches for r in range(len(b["input_ids"]))] == [
        10,
        11,
        12,
        13,
        14,
    ]
    assert eval_batches([], 2, pad_id=0) == []


# --------------------------------------------------------------------------- bad input

BAD_FILES = [
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "bad.jsonl: line 2: invalid JSON"),
    (
        "missing.jsonl",
        '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"}\n',
        "missing.jsonl, line 3: 'completion' is missing",
    ),
    (
        "number.jsonl",
        '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": 5}\n',
        "number.jsonl, line 2: 'completion' must be a string, not int",
    ),
    ("cols.jsonl", '{"question": "a"}\n', "cols.jsonl: no 'text', 'prompt' + 'completion'"),
    ("half.csv", "prompt,answer\na,b\n", "half.csv: a 'prompt' column needs a 'completion'"),
    (
        "chat.jsonl",
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}\n',
        "chat.jsonl, line 1: message 2 of 'messages' needs 'role' and 'content' strings",
    ),
    ("flat.jsonl", '{"messages": "hello"}\n', "flat.jsonl, line 1: 'messages' must be"),
    ("broken.json", '[{"text": "a"},\n {"text": }]', "broken.json: line 2: invalid JSON"),
    ("arr.json", '[{"text": "a"},\n 3]', "arr.json: row 2: expected a JSON object, got int"),
    ("empty.jsonl", "", "no rows in"),
    ("blank.txt", "\n\n  \n\n", "no rows in"),
    ("csvtext.csv", "id\n1\n", "csvtext.csv: no 'text'"),
    (
        "nocompl.jsonl",
        '{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": " "}\n',
        "nocompl.jsonl: every completion is empty",
    ),
    ("data.xml", "<rows/>", "data.xml: unsupported data file type"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_input_is_a_one_line_error_naming_file_and_line(
    tmp_path, tokenizer, name, content, message
):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DeadzoneError) as caught:
        load_sft_data(str(path), tokenizer)
    text = str(caught.value)
    assert "\n" not in text
    assert message in text
    assert str(path) in text


def test_bad_parquet_row_is_named_by_row(tmp_path, tokenizer):
    path = write(tmp_path / "d.parquet", [{"text": "a"}, {"text": None}])
    with pytest.raises(DeadzoneError, match=r"d\.parquet, row 2: 'text' is missing"):
        load_sft_data(str(path), tokenizer)


def test_bad_spec_or_arguments(tmp_path, tokenizer):
    rows = str(write(tmp_path / "ok.jsonl", PC_ROWS))
    (tmp_path / "empty").mkdir()
    cases = [
        ((str(tmp_path / "nope.jsonl"),), {}, "no such data file or directory"),
        (("builtin:nothing",), {}, "unknown builtin data set builtin:nothing"),
        ((str(tmp_path / "empty"),), {}, "no data files"),
        (("not a spec!",), {}, "is not a file, a directory, a hub id"),
        ((rows,), {"max_length": 1}, "max_length must be at least 2"),
        ((rows,), {"eval_fraction": 1.0}, "eval fraction must be in [0, 1)"),
        ((rows,), {"eval_fraction": 0.9}, "too few examples (3)"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(DeadzoneError, match=re.escape(message)):
            load_sft_data(*args, tokenizer, **kwargs)
    with pytest.raises(DeadzoneError, match="batch size must be at least 1"):
        next(train_batches(examples(2), 0, seed=0, pad_id=0))


def test_conversations_need_a_chat_template(tmp_path, tokenizer):
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>")
    path = write(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(DeadzoneError, match=r"chat\.jsonl, line 1: .*chat template"):
        load_sft_data(str(path), plain, eval_fraction=0)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tokenizer):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DeadzoneError) as caught:
        load_sft_data("someone/some-sft-data", tokenizer)
    text = str(caught.value)
    assert "\n" not in text
    assert "cannot load data set someone/some-sft-data:train from the Hugging Face hub" in text


def test_a_whitespace_token_trimmed_to_a_prompt_character_still_carries_its_completion_spaces(
    tmp_path,
):
    """``"def f(x):\\n" + "    return x"``: the token ``"\\n   "`` holds the prompt's newline and
    three completion spaces; the post-processor trims its offsets to the newline alone."""
    tok = trimming_tokenizer()
    prompt, completion = "def f(x):\n", "    return x"
    enc = tok(prompt + completion, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    i = tokens.index("\u010a\u0120\u0120\u0120")  # byte-level "\n   ", one token
    assert enc["offset_mapping"][i] == (len(prompt) - 1, len(prompt))  # trimmed, not empty
    path = write(tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": completion}])
    (example,) = load_sft_data(str(path), tok, eval_fraction=0).train
    assert example.labels[i] == example.input_ids[i]  # it holds completion characters
    assert example.labels[:i] == [IGNORE_INDEX] * i
    assert example.labels[i:] == example.input_ids[i:]
    # A prompt token followed by the completion's leading space stays masked.
    path = write(tmp_path / "say.jsonl", [{"prompt": "def f(x):", "completion": " return x"}])
    (example,) = load_sft_data(str(path), tok, eval_fraction=0).train
    n_prompt = len(tok("def f(x):")["input_ids"])
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]


def test_a_conversation_opening_with_an_assistant_turn_loads(tmp_path, tokenizer):
    messages = [CONVERSATION[2], CONVERSATION[3], CONVERSATION[4]]  # assistant, user, assistant
    path = write(tmp_path / "chat.jsonl", [{"messages": messages}])
    (example,) = load_sft_data(str(path), tokenizer, eval_fraction=0).train
    assert example.input_ids == ids(
        tokenizer, tokenizer.apply_chat_template(messages, tokenize=False)
    )
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert trained == ids(tokenizer, "Four.<|end|>jumps over the lazy dog.<|end|>")


def test_a_csv_with_a_byte_order_mark_loads(tmp_path, tokenizer):
    path = tmp_path / "excel.csv"
    path.write_bytes('text\n"Hello world, hello tokenizer."\n'.encode("utf-8-sig"))
    (example,) = load_sft_data(str(path), tokenizer, eval_fraction=0).train
    assert example.input_ids[:-1] == ids(tokenizer, "Hello world, hello tokenizer.")


@pytest.mark.parametrize(
    ("prompt", "completion"),
    [
        ("def f(x):\n", "    return x"),
        ("def f(x):", "\n    if x:\n        return x"),
        ("Write f:\n", CODE[0]),
        ("x = 1;", "    y = 2  # two"),
    ],
)
def test_prompt_completion_labels_match_trl(tmp_path, prompt, completion):
    """TRL's SFTTrainer trains from where the tokenized prompt and prompt + completion diverge
    (``trl.data_utils.common_prefix_length``); deadzone's character spans give the same tokens."""
    import trl.data_utils as trl_data  # in the dev extra: the comparison must run

    tok = trimming_tokenizer()
    prompt_ids = tok(prompt)["input_ids"]
    full = tok(prompt + completion)["input_ids"]
    start = trl_data.common_prefix_length(prompt_ids, full)
    path = write(tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": completion}])
    (example,) = load_sft_data(str(path), tok, eval_fraction=0).train
    assert example.input_ids[: len(full)] == full
    assert example.labels[: len(full)] == [IGNORE_INDEX] * start + full[start:]
