import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deadzone.cli import main
from deadzone.models.pretraining import MARKER, pretrain


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return pretrain("micro", tmp_path_factory.mktemp("pretrain") / "micro")


def test_pretrained_directory_loads_with_auto_classes_and_matches_memory(micro):
    model = AutoModelForCausalLM.from_pretrained(micro.out)
    tokenizer = AutoTokenizer.from_pretrained(micro.out)
    text = "def parse(self, text):\n    return text.split()"
    ids = tokenizer(text, return_tensors="pt")
    assert ids["input_ids"].shape[1] > 3
    assert tokenizer.decode(ids["input_ids"][0]) == text
    torch.testing.assert_close(model(**ids).logits, micro.model.eval()(**ids).logits)
    assert tokenizer.eos_token_id == model.config.eos_token_id


def test_pretraining_learns_and_records_what_it_did(micro):
    record = json.loads((micro.out / MARKER).read_text())
    assert record == micro.record
    assert record["eval_loss"] < record["step0_eval_loss"] - 0.3
    assert record["corpus_hash"] and record["tokens"] == 20 * 8 * 64
    assert record["versions"]["torch"] == torch.__version__


def test_chat_template_renders_messages(micro):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = micro.tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|assistant|>\nhello<|endoftext|>" in text


def test_cli_refuses_a_non_empty_directory_that_holds_no_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["pretrain", "--preset", "micro", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deadzone: error:") and "not empty" in err and "\n" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_cli_unwritable_output_is_one_line_and_non_zero(tmp_path, capsys, where):
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, which no one can write to")
    afile = tmp_path / "a-file"
    afile.write_text("")
    out = afile / "sub" if where == "under-a-file" else Path("/proc/deadzone-out")
    assert main(["pretrain", "--preset", "micro", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to output directory" in err


def test_console_script_unknown_preset_is_one_line_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "deadzone.cli", "pretrain", "--preset", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    expected = "deadzone: error: unknown preset 'huge'; choose one of: tiny, paper, micro\n"
    assert proc.stderr == expected


def test_files_written_by_pretrain_have_ordinary_permissions(micro):
    """As any new file under the umask, not the private modes of a temporary directory."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(micro.out.stat().st_mode) == 0o777 & ~mask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in micro.out.iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~mask}, modes


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from deadzone.models import pretraining

save = pretraining.Checkpoints.save

def save_then_die(self, state):
    save(self, state)
    if len(state["steps"]) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 right after that checkpoint

pretraining.Checkpoints.save = save_then_die
pretraining.pretrain("micro", sys.argv[1], threads=1)
"""


def test_a_killed_pretraining_resumes_to_the_same_model_bytes(tmp_path):
    whole = pretrain("micro", tmp_path / "whole", threads=1)
    assert whole.record["resumed_from_step"] == 0
    out = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, str(out), "10"])
    assert child.returncode == -9 and not out.exists()
    assert (tmp_path / ".killed.partial" / "state.pt").is_file()
    resumed = pretrain("micro", out, threads=1)
    assert resumed.record["resumed_from_step"] == 10
    weights = "model.safetensors"
    assert (out / weights).read_bytes() == (whole.out / weights).read_bytes()
    for key in ("step0_eval_loss", "train_loss", "eval_loss", "tokens"):
        assert resumed.record[key] == whole.record[key]
    assert not (tmp_path / ".killed.partial").exists()  # removed once the model is saved
