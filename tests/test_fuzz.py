"""Fuzzing: random rows, option values, safetensors headers and configs, and a disk that fills.

Each input either succeeds or ends in deadzone's one-line error (exit 2 from the CLI), never
another exception, and never leaves a half-written file. The examples are fixed
(``derandomize=True``) and few, so this file runs in the default test command in seconds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import CHAT_TEMPLATE, SENTENCES, tiny_gpt2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deadzone import fileio
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.runs import RESULTS, ResultsDir

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)``'s exit status and stderr; argparse's exit counts as an exit status."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def assert_clean_exit(rc: int, err: str) -> None:
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        errors = [line for line in err.splitlines() if line.startswith("deadzone: error: ")]
        assert len(errors) == 1 and "Traceback" not in err, err


def assert_no_partial_files(directory: Path) -> None:
    leftovers = [
        p for p in directory.rglob(".*") if p.suffix == ".tmp" or ".deadzone-probe" in p.name
    ]
    assert not leftovers, leftovers
    for file in directory.rglob("*.json"):
        json.loads(file.read_text(encoding="utf-8"))  # complete, or not there at all


# --- data rows ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]), "content": values}
)
KEYS = ["text", "prompt", "completion", "messages", "other"]
row = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(values, st.lists(message, max_size=3), st.text(max_size=200)),
    max_size=4,
)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@settings(FUZZ, max_examples=40)
@given(
    rows=st.lists(row, max_size=5),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]),
    encoding=st.sampled_from(ENCODINGS),
    noise=st.binary(max_size=16),
)
def test_random_rows_load_or_fail_in_one_line(scratch, tokenizer, rows, suffix, encoding, noise):
    from deadzone.data.sft import load_sft_data

    directory = fresh(scratch)
    path = directory / f"rows{suffix}"
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False)
    elif suffix == ".csv":
        columns = sorted({k for r in rows for k in r}) or ["text"]
        lines = [",".join(columns)] + [
            ",".join(json.dumps(r.get(c)) for c in columns) for r in rows
        ]
        text = "\n".join(lines) + "\n"
    else:
        text = "\n\n".join(str(r.get("text", r)) for r in rows)
    path.write_bytes(encoded(text, encoding) + noise)
    try:
        data = load_sft_data(str(path), tokenizer, eval_fraction=0, max_length=32)
    except DeadzoneError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
    else:
        assert data.train and all(e.trained_tokens > 0 for e in data.train)
    shutil.rmtree(directory)


# --- option values of every command -------------------------------------------------------------

junk = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", " ", ",", ",,", "1,2", "-1", "0"]),
    st.text(max_size=12),
)


def small(low: int, high: int):
    return st.integers(low, high).map(str)


CRYSTALLIZE_OPTIONS = {
    "--rank": small(1, 3),
    "--steps": small(1, 2),
    "--seeds": small(1, 2),
    "--lr": st.sampled_from(["1e-3", "0.01"]),
    "--batch-size": small(1, 8),
    "--grad-accum": small(1, 2),
    "--eval-every": small(1, 3),
    "--max-length": small(2, 64),
    "--strategies": st.sampled_from(["full", "full,frozen", "full,zero"]),
    "--target": st.sampled_from(["L1.attn.c_proj", "L0.*,L1.mlp.c_fc", "*.c_proj"]),
}


@settings(FUZZ, max_examples=12)
@given(
    chosen=st.dictionaries(
        st.sampled_from(list(CRYSTALLIZE_OPTIONS)),
        st.booleans(),  # True: a valid value, False: junk
        min_size=1,
        max_size=3,
    ).filter(lambda d: not all(d.values())),  # mostly refusals: a run that trains takes seconds
    data=st.data(),
)
def test_crystallize_options_succeed_or_fail_in_one_line(scratch, micro, capsys, chosen, data):
    model, rows = micro
    out = fresh(scratch)
    argv = {"--target": "L1.attn.c_proj", "--steps": "1", "--seeds": "1", "--strategies": "full"}
    argv |= {"--batch-size": "8", "--max-length": "24"}
    for option, valid in chosen.items():
        argv[option] = data.draw(CRYSTALLIZE_OPTIONS[option] if valid else junk, label=option)
    flat = [f"{k}={v}" for k, v in argv.items()]  # "=" so that "-1" is a value, not an option
    rc, err = cli(
        ["crystallize", str(model), *flat, "--data", str(rows), "--out", str(out)], capsys
    )
    assert_clean_exit(rc, err)
    assert_no_partial_files(out)
    if rc == 2 and "every full run failed" not in err:
        assert not (out / RESULTS).exists()  # refused before the first run
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2") / "model"
    tiny_gpt2().save_pretrained(path)
    return path


@settings(FUZZ, max_examples=30)
@given(
    sites=st.one_of(junk, st.sampled_from(["L0.*", "*", "embed,L1.mlp.*", "*.c_proj,"])),
    kind=st.sampled_from(["--json", "--csv", "--plot", None]),
    name=st.one_of(st.sampled_from(["g.json", "", ".", "sub/g", "g.csv/"]), st.text(max_size=8)),
)
def test_analyze_options_succeed_or_fail_in_one_line(
    scratch, gpt2_model, capsys, sites, kind, name
):
    out = fresh(scratch)
    argv = ["analyze", str(gpt2_model), f"--sites={sites}"]
    if kind is not None:
        argv.append(f"{kind}={out / name}" if name.strip("/") else f"{kind}={out}/{name}")
    rc, err = cli(argv, capsys)
    assert_clean_exit(rc, err)
    assert_no_partial_files(out)
    shutil.rmtree(out)


@settings(FUZZ, max_examples=15)
@given(preset=st.one_of(junk, st.sampled_from(["TINY", "micro ", "paper,tiny"])))
def test_pretrain_preset_values_fail_in_one_line(scratch, capsys, preset):
    out = fresh(scratch)
    rc, err = cli(["pretrain", f"--preset={preset}", "--out", str(out / "m")], capsys)
    if preset == "micro":  # the one valid value drawn here trains for seconds
        assert rc == 0
    else:
        assert_clean_exit(rc, err)
        assert rc == 2 and not (out / "m").exists()
    shutil.rmtree(out)


# --- random bytes as a safetensors header and as config.json ------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "X"]
tensor_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(st.integers(-1, 9), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 600), min_size=0, max_size=3),
    }
)
header = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(
            ["h.0.attn.c_attn.weight", "wte.weight", "model.layers.0.mlp.up_proj.weight", "x"]
        ),
        st.one_of(tensor_entry, values),
        max_size=3,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(FUZZ, max_examples=40)
@given(head=header, declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       body=st.binary(max_size=600))  # fmt: skip
def test_random_safetensors_headers_fail_in_one_line(scratch, capsys, head, declared, body):
    directory = fresh(scratch)
    path = directory / "w.safetensors"
    length = len(head) if declared is None else declared
    path.write_bytes(struct.pack("<Q", length) + head + body)
    rc, err = cli(["analyze", str(path)], capsys)
    assert_clean_exit(rc, err)
    from deadzone.models.checkpoints import check_checkpoint

    try:  # what load_model checks before from_pretrained
        check_checkpoint(path)
    except DeadzoneError as e:
        assert "\n" not in str(e)
    shutil.rmtree(directory)


config_value = st.one_of(
    values,
    st.dictionaries(
        st.sampled_from(["model_type", "tie_word_embeddings", "text_config", "n_layer", "x"]),
        values,
        max_size=4,
    ),
)


@settings(FUZZ, max_examples=30)
@given(config=st.one_of(st.binary(max_size=40), config_value.map(lambda v: json.dumps(v).encode())))
def test_random_config_json_fails_in_one_line(scratch, gpt2_model, capsys, config):
    directory = fresh(scratch)
    model = directory / "model"
    shutil.copytree(gpt2_model, model)
    (model / "config.json").write_bytes(config)
    rc, err = cli(["analyze", str(model), "--sites", "L0.attn.*"], capsys)
    assert_clean_exit(rc, err)
    shutil.rmtree(directory)


# --- a disk that fills while results.json is written --------------------------------------------

IDENTITY = {"experiment": "fuzz", "config": {"a": 1}}


def first_results(out: Path) -> ResultsDir:
    results = ResultsDir(out, IDENTITY)
    results.add({"key": "run0", "status": "ok", "loss": 1.5})
    return results


def check_intact(out: Path) -> None:
    saved = json.loads((out / RESULTS).read_text())
    assert [r["key"] for r in saved["runs"]] == ["run0"]
    assert not [p for p in out.iterdir() if p.name != RESULTS]


def test_a_failing_write_leaves_the_previous_results_intact(tmp_path, monkeypatch):
    """Fault injection: the write of the new file's bytes fails as on a full disk."""
    results = first_results(tmp_path)

    def no_space(self, *args, **kwargs):
        self.open("w").close()  # the file exists, empty, as after a failed write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", no_space)
        with pytest.raises(DeadzoneError, match="No space left on device"):
            results.add({"key": "run1", "status": "ok", "loss": 1.4})
    check_intact(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs where this machine lets us mount one (as root), else skip."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the fault-injection test covers this)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_leaves_the_previous_results_intact(small_disk):
    results = first_results(small_disk)
    with pytest.raises(DeadzoneError, match="No space left on device"):
        results.add({"key": "run1", "status": "ok", "text": "x" * 200_000})
    check_intact(small_disk)
    fileio.write_text(small_disk / "after.txt", "space is back")  # nothing was left behind
