"""Shared fixtures and helpers: tiny models of each named family, built from configs (no
downloads); a real crystallize experiment of a micro GPT-2; headless Chromium for the browser
tier; and every fixture, helper or constant that more than one test module uses (test modules
import from here, never from each other)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from scipy import stats
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from deadzone import fileio
from deadzone.experiments import scan, search
from deadzone.experiments.crystallize import CrystallizeConfig
from deadzone.experiments.scan import ScanConfig
from deadzone.training.train import Hook, SFTConfig, computed

try:
    import fcntl
except ImportError:  # not POSIX: the browser client cannot hand Chromium its pipe
    fcntl = None

VOCAB = 96

# Tests of other modules moved out of the fast tier, by their durations in a full run of the suite
# on 2 shared cores (pytest --durations): whole files, or file::test (every parametrization).
TIERS = {
    "e2e": (  # a command run end to end: processes, pools, Ray, kills, resumes, trackers
        "test_scan_cli.py",
        "test_execute.py::test_ctrl_c_keeps_finished_runs_and_exits_130_with_one_line",  # 102 s
        "test_execute.py::test_a_killed_worker_is_retried_then_its_run_fails_and_the_others_go_on",
        "test_execute.py::test_the_pool_and_a_local_ray_cluster_give_the_records_of_the_in_process_run",
        "test_execute.py::test_a_pool_entered_once_serves_every_experiment_inside_it_with_the_drivers_data",
        "test_execute.py::test_a_killed_driver_resumes_losing_and_repeating_nothing",  # 25 s
        "test_execute.py::test_more_seeds_and_another_strategy_reuse_the_finished_runs",  # 10 s
        "test_tracking.py::test_runs_in_a_worker_process_report_too",  # 39 s
        "test_tracking.py::test_a_scan_reports_each_of_its_runs",  # 21 s
        "test_tracking.py::test_tracking_changes_no_result_and_is_no_part_of_the_identity",
        "test_tracking.py::test_mlflow_metrics_and_params_match_each_runs_curve",  # 18 s
        "test_pretrain.py::test_pretrained_directory_loads_with_auto_classes_and_matches_memory",
        "test_pretrain.py::test_console_script_unknown_preset_is_one_line_without_traceback",
        "test_examples.py::test_example_runs_and_freezes",  # 31 s
        "test_freeze_cmd.py::test_cli_writes_results_report_plots",  # 12 s
        # loaded-machine durations (2 cores, load ~6), about three times an idle run's
        "test_crystallize.py::test_cli_rank_sweep_writes_results_report_verdicts_and_curves",  # 77
        "test_crystallize.py::test_crystal_at_a_rank_at_least_the_true_rank_reproduces_the_matrix_and_frozen",  # noqa: E501 41 s
        "test_crystallize.py::test_zeroing_the_attention_of_a_trained_model_is_costly",  # 43 s
        "test_crystallize.py::test_runs_meeting_nan_fail_with_a_reason_while_the_others_go_on",
        "test_pretrain.py::test_pretraining_learns_and_records_what_it_did",  # 31 s
        "test_bad_input.py::test_a_resumed_experiment_says_what_it_reused",  # 29 s
        "test_cli_config.py::test_only_the_main_process_takes_the_out_lock",  # 26 s
        "test_freeze_cmd.py::test_saved_model_loads_and_is_the_trained_one",  # 24 s
        "test_crystallize.py::test_resume_skips_finished_runs_and_reproduces_a_missing_one",
        "test_crystallize.py::test_another_margin_rejudges_the_same_runs_without_training_again",
        "test_crystallize.py::test_a_strategy_identical_to_full_costs_exactly_zero_and_is_negligible",  # noqa: E501 17 s
        "test_bad_input.py::test_a_nan_target_fails_the_crystal_runs_with_a_reason_and_the_others_go_on",  # noqa: E501 18 s
        "test_wiring.py::test_exact_match_endpoint_judges_the_rates",  # 15 s
        "test_analyze_stage.py::test_analyze_out_and_report_put_the_study_beside_the_model",  # 14 s
    ),
    "slow": (
        "test_scores.py::test_spearman_permutation_p_agrees_with_scipy_and_is_calibrated",  # 53 s
        "test_sft_data.py::test_builtin_docstrings_uses_its_own_eval_split",  # 13 s
        "test_pretrain.py::test_a_killed_pretraining_resumes_to_the_same_model_bytes",  # 82 s
        "test_corpus.py::test_built_twice_gives_the_same_corpus_and_hash",  # 59 s
        "test_metrics.py::test_the_builtin_data_is_scored_example_by_example",  # 24 s
    ),
}


def pytest_collection_modifyitems(items):
    """Mark the tests :data:`TIERS` lists (their own files mark the rest)."""
    for item in items:
        names = (item.path.name, f"{item.path.name}::{item.originalname}")
        for marker, listed in TIERS.items():
            if any(name in listed for name in names):
                item.add_marker(marker)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models train fastest on one thread, and other work on the machine cannot stall it.
    ``OMP_NUM_THREADS=1`` too, so that every run deadzone starts here takes one thread whatever
    the machine's load: in-process references then give the records of one-thread drivers."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def tiny_gpt2(n_layer: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=n_layer, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def tiny_mistral() -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return MistralForCausalLM(config)


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def tiny_neox() -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPTNeoXForCausalLM(config)


def tiny_opt() -> OPTForCausalLM:
    torch.manual_seed(0)
    config = OPTConfig(
        num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
        vocab_size=VOCAB, word_embed_proj_dim=32, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    return OPTForCausalLM(config)


FAMILIES = {
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "mistral": tiny_mistral,
    "qwen2": tiny_qwen2,
    "gpt_neox": tiny_neox,
    "opt": tiny_opt,
}


@pytest.fixture
def gpt2_dir(tmp_path):
    """A tiny GPT-2 saved in Hugging Face format, and the model in memory."""
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", model


def save_micro_experiment(root, rows: list[dict]):
    """A ``micro`` GPT-2 with a tokenizer trained on ``rows`` (prompt/completion dicts), saved
    in Hugging Face format in ``root / "model"``, and the rows as ``root / "data.jsonl"``."""
    import json

    from deadzone.models.presets import get_preset
    from deadzone.models.pretraining import build_model, train_tokenizer

    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in rows], 300)
    model = build_model(get_preset("micro"), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", path


# --- a real crystallize experiment, for the report tests ---------------------------------------


def prompt_rows(n: int) -> list[dict]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    return [
        {"prompt": f"Say {words[i % 9]} then {words[(2 * i) % 9]}:",
         "completion": f" {words[i % 9]} {words[(2 * i) % 9]}."}
        for i in range(n)
    ]  # fmt: skip


def run_crystallize(root, strategies: tuple[str, ...], rows: int = 40):
    """A real crystallize experiment of a micro GPT-2 on L1.attn.c_proj (2 steps, 2 seeds) in
    ``root/exp``, on ``rows`` prompt/completion rows."""
    from deadzone.experiments.crystallize import crystallize

    model, data = save_micro_experiment(root, prompt_rows(rows))
    config = CrystallizeConfig(
        model=str(model), targets="L1.attn.c_proj", strategies=strategies, seeds=2,
        data=str(data), max_length=48,
        sft=SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2),
    )  # fmt: skip
    crystallize(config, root / "exp", show_progress=False)
    return root / "exp"


@pytest.fixture(scope="session")
def crystallize_experiment():
    """:func:`run_crystallize`, for module fixtures that build their own experiment."""
    return run_crystallize


# --- headless Chromium, for the browser tier ---------------------------------------------------

# DEADZONE_CHROMIUM names another browser binary (or a missing one, to see the tier skip or fail).
CHROMIUM = os.environ.get("DEADZONE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]  # fmt: skip
TIMEOUT = 30.0


# --- a small CDP client over a pipe ------------------------------------------------------------


def above_9(fd: int) -> int:
    """``fd`` moved to a number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium and its DevTools pipe; every message it sends is kept in ``log``."""

    def __init__(self, profile):
        ours_r, its_w = os.pipe()  # Chromium writes replies on its fd 4
        its_r, ours_w = os.pipe()  # and reads requests on its fd 3
        its_r, its_w = (above_9(fd) for fd in (its_r, its_w))  # clear of 3 and 4
        self.stderr = profile / "chromium.log"
        # bash puts the pipe ends at fds 3 and 4, then becomes Chromium.
        at_3_and_4 = f'exec "$0" "$@" 3<&{its_r} 4>&{its_w} {its_r}<&- {its_w}>&-'
        args = [*FLAGS, f"--user-data-dir={profile / 'profile'}", "about:blank"]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", at_3_and_4, CHROMIUM, *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(its_r, its_w),
            )  # fmt: skip
        os.close(its_r)
        os.close(its_w)
        self.rfd, self.wfd = ours_r, ours_w
        self.buffer, self.pending, self.log, self.next_id = b"", [], [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.wfd, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, i=self.next_id: m.get("id") == i)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, match, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.pending):
                if match(message):
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.stderr.read_text(errors="replace")[-2000:]
                pytest.fail(f"chromium did not answer (exit {self.proc.poll()}): {tail}")
            if select.select([self.rfd], [], [], left)[0]:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    continue  # the pipe closed: poll() tells on the next turn
                *messages, self.buffer = (self.buffer + chunk).split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    self.log.append(message)
                    self.pending.append(message)

    def open(self, url: str, width: int, height: int) -> str:
        """A new tab showing ``url`` at a ``width`` × ``height`` viewport, once it has loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = session["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.resize(session, width, height)
        self.send("Page.navigate", {"url": url}, session)
        loaded = {"method": "Page.loadEventFired", "sessionId": session}
        self.wait(lambda m: loaded.items() <= m.items())
        return session

    def resize(self, session: str, width: int, height: int) -> None:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session)

    def evaluate(self, session: str, expression: str):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.send("Runtime.evaluate", params, session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"]["value"]

    def problems(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions, failed or non-local requests of a tab."""
        found = []
        for m in self.log:
            method, p = m.get("method"), m.get("params", {})
            if m.get("sessionId") != session:
                continue
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                found.append(f"console.{p['type']}: {p['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"log: {p['entry']['text']}")
            elif method == "Network.loadingFailed":
                found.append(f"failed request: {p.get('errorText')}")
            elif method == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file:", "data:")):
                    found.append(f"request: {url}")
        return found

    def facts(self, session: str) -> dict:
        """What the page shows: image widths, claim verdicts, tables, widths (``PAGE_FACTS``)."""
        return self.evaluate(session, PAGE_FACTS)

    def screenshot(self, session: str) -> np.ndarray:
        """The viewport in grey levels, ``(height, width)``."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        image = PILImage.open(io.BytesIO(base64.b64decode(data))).convert("L")
        return np.asarray(image, dtype=float)

    def close(self) -> None:
        try:
            os.write(self.wfd, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.rfd)
        os.close(self.wfd)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium. Without it the test is skipped with the reason, except on CI
    (``CI=true``), where the browser tier must run: there it fails."""
    if not os.access(CHROMIUM, os.X_OK) or fcntl is None:
        why = f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    b = Browser(tmp_path)
    yield b
    b.close()


PAGE_FACTS = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode()));
  return {
    images: images.map(i => i.naturalWidth),
    claims: [...document.querySelectorAll('#claims table tbody tr td:nth-child(3)')]
      .map(td => td.textContent),
    tables: document.querySelectorAll('table').length,
    shownImages: images.map(i => i.getBoundingClientRect().width),
    columns: new Set(images.map(i => Math.round(i.getBoundingClientRect().left))).size,
    contents: document.querySelectorAll('nav#contents li').length,
    pageWidth: document.scrollingElement.scrollWidth,
    innerWidth: innerWidth,
    scrollingTables: [...document.querySelectorAll('.scroll')]
      .filter(d => d.scrollWidth > d.clientWidth).length,
  };
})()"""


# --- plots -------------------------------------------------------------------------------------


@pytest.fixture
def drawn_figures(monkeypatch):
    """The figures the report modules draw, kept instead of saved, in order."""
    from deadzone.report import crystallize, freeze, geometry, scan

    figures = []
    for module in (crystallize, freeze, geometry, scan):
        monkeypatch.setattr(module, "save_png", lambda fig, path: figures.append(fig))
    return figures


@pytest.fixture
def legends_on_data():
    """A check of a figure: the legends on an axes' plotting area, named (none is right)."""
    return _legends_on_data


def _legends_on_data(fig) -> list[str]:
    """The legends of ``fig`` (its own and its axes') that overlap the plotting area of an axes."""
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    found = []
    for legend in legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            if ax.get_visible() and ax.get_label() != "<colorbar>" and box.overlaps(ax.bbox):
                found.append(f"legend {[t.get_text() for t in legend.texts]} on {ax.get_title()}")
    return found


# --- the crystallize experiment's micro GPT-2, for the modules that run commands on it ---------

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
WORDS += ["iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"]


def rows(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Say {WORDS[i % 15]} then {WORDS[(3 * i) % 15]}:",
            "completion": f" {WORDS[i % 15]} {WORDS[(3 * i) % 15]} {WORDS[(i + 1) % 15]}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A micro GPT-2 and its tokenizer in Hugging Face format, and a prompt/completion file."""
    model, path = save_micro_experiment(tmp_path_factory.mktemp("crystallize"), rows(48))
    return str(model), str(path)


def config(setup, **kwargs) -> CrystallizeConfig:
    model, data = setup
    sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3, **kwargs.pop("sft", {}))
    base = dict(model=model, targets="L1.attn.c_proj", seeds=2, data=data, max_length=48, sft=sft)
    return CrystallizeConfig(**(base | kwargs))


def build_micro(root):
    """A micro GPT-2 with its tokenizer in ``root / "model"``, and a prompt/completion file."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    data = [
        {"prompt": f"Say {words[i % 9]}:", "completion": f" {words[(2 * i) % 9]} {words[i % 9]}."}
        for i in range(24)
    ]
    return save_micro_experiment(root, data)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro(tmp_path_factory.mktemp("micro"))


# --- commands run in another process -----------------------------------------------------------

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


def by_key(doc: dict) -> dict[str, dict]:
    return {r["key"]: computed(r) for r in doc["runs"]}


# --- the SFT loop on tiny GPT-2s with random-token batches -------------------------------------

SEQ = 16


def gpt2(n_layer: int = 4) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ)
    return GPT2LMHeadModel(config)


def no_dropout_gpt2() -> GPT2LMHeadModel:
    model = gpt2(2)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def make_batch(gen: torch.Generator, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Random tokens; a random prompt (no loss) and right padding per row."""
    input_ids = torch.randint(0, VOCAB, (batch_size, SEQ), generator=gen)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (batch_size,), generator=gen)
    prompts = torch.randint(1, SEQ // 4, (batch_size,), generator=gen)
    pos = torch.arange(SEQ)
    attention_mask = (pos < lengths[:, None]).long()
    labels = input_ids.masked_fill((attention_mask == 0) | (pos < prompts[:, None]), -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [make_batch(gen) for _ in range(n)]


TRAIN, EVAL = batches(6, seed=1), batches(2, seed=2)

# Freezing mid-run under two processes (test_freezing runs it, and its launched script imports it).
DDP_CONFIG = SFTConfig(steps=5, lr=3e-3, eval_every=5, warmup_steps=1, seed=0, cpu=True)
BLOCK0 = [
    "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
    "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
    "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
    "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
    "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
    "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
]  # fmt: skip


class FreezeAtStep(Hook):
    """Block 0 whole and one matrix of block 1 at step 3, and the matrix back at step 5."""

    def on_step_start(self, loop, step):
        if step == 3:
            loop.freeze([*BLOCK0, "transformer.h.1.mlp.c_fc.weight"])
        if step == 5:
            loop.unfreeze(["transformer.h.1.mlp.c_fc.weight"])


# --- SFT data: a chat template and sentences to train a tokenizer on ---------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SENTENCES = [
    "What is two plus two? Four.",
    "The quick brown fox jumps over the lazy dog.",
    "Write the docstring for this function: def add(a, b): Return the sum of a and b.",
    "Hello world, hello tokenizer, hello deadzone.",
]


# --- the scan's judging, from synthetic run records --------------------------------------------

TIGHT = (0.001, 0.0012, 0.0008)  # per-seed costs: p far below 0.05/4


def record(key: str, final: float, step0: float | None = None, status: str = "ok") -> dict:
    return {"key": key, "status": status, "final_eval_loss": final, "step0_eval_loss": step0}


def judging_config(**kwargs) -> ScanConfig:
    return ScanConfig(model="m", **kwargs)


def claims_runs(costs: dict[tuple[str, tuple[str, ...]], tuple[float, ...]]) -> dict:
    """Baselines of gain 1 on 3 seeds and one run per (strategy, set of sites) and seed."""
    out = {f"full/seed{s}": record(f"full/seed{s}", 2.0, 3.0) for s in range(3)}
    for (strategy, names), per_seed in costs.items():
        for seed, c in enumerate(per_seed):
            key = scan.set_key(strategy, names, seed)
            out[key] = record(key, 2.0 + c)
    return out


def searched(names: list[str], group: list[str], verdict: str = "undetermined") -> dict:
    site = {"verdict": verdict, "cost": None, "interval": None, "seeds_needed": None,
            "group_size": len(group), "seeds": 3, "set": group}  # fmt: skip
    return {n: dict(site) for n in names}


# --- the adaptive search against a synthetic oracle --------------------------------------------

MARGIN = 0.02  # share of the fine-tuning gain


class Oracle:
    """Per-seed paired costs ``cost(sites) + noise``; the noise of a (set, seed) pair is drawn
    from a hash of both, so the same question always gets the same answer."""

    def __init__(self, costs: dict[str, float], noise: float, interactions=(), seed: int = 0):
        self.costs, self.noise, self.seed = costs, noise, seed
        self.interactions = interactions  # ((site, site, extra cost), ...)
        self.asked: list[tuple[frozenset[str], int]] = []

    def true_cost(self, sites: frozenset[str]) -> float:
        extra = sum(c for a, b, c in self.interactions if a in sites and b in sites)
        return sum(self.costs[s] for s in sites) + extra

    def per_seed(self, sites: frozenset[str], seed: int) -> float:
        key = f"{self.seed}|{','.join(sorted(sites))}|{seed}".encode()
        return self.true_cost(sites) + random.Random(zlib.crc32(key)).gauss(0.0, self.noise)

    def __call__(self, sites: frozenset[str], seeds: int) -> search.Judgement:
        self.asked.append((sites, seeds))
        return t_judgement([self.per_seed(sites, k) for k in range(seeds)])


def t_judgement(diffs: list[float], level: float = 0.95) -> search.Judgement:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = stats.t.ppf(0.5 + level / 2, n - 1)
    lo, hi = mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)
    if hi < 0:
        verdict = "better"
    elif hi < MARGIN:
        verdict = "negligible"
    elif lo > MARGIN:
        verdict = "costly"
    else:
        verdict = "undetermined"
    needed = None
    if verdict == "undetermined" and mean != MARGIN:
        needed = math.ceil((stats.t.ppf(0.5 + level / 2, 20) * sd / abs(mean - MARGIN)) ** 2)
    return search.Judgement(verdict, mean, (lo, hi), needed)


def kill_after_runs(code: str, model: str, data: str, out, runs: int = 4) -> None:
    """Run ``python -c code MODEL DATA OUT`` (a driver writing ``out/results.json``) and kill it
    (SIGKILL) once ``runs`` runs are recorded; fails if it finished first."""
    env = {"PYTHONPATH": f"{SRC}:{TESTS}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    driver = subprocess.Popen([sys.executable, "-c", code, model, data, str(out)], env=env)
    seen, deadline = 0, time.monotonic() + 120
    while seen < runs and time.monotonic() < deadline and driver.poll() is None:
        if (out / "results.json").is_file():
            seen = len(fileio.read_json(out / "results.json")["runs"])
        time.sleep(0.01)
    driver.kill()
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the driver finished before it was killed"
