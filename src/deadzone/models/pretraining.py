"""Pretrain a builtin preset on the builtin corpus: tokenizer, token blocks, training, saving.

Pretraining keeps a checkpoint every ``checkpoint_every`` steps of its preset, beside its
output (``.<out>.partial``): after a Ctrl-C or a kill, pretraining into the same output again
resumes from it, and ends with the same model, byte for byte, as a run never interrupted (on
as many torch threads). The checkpoint is removed once the model is saved.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from deadzone.data import corpus
from deadzone.errors import DeadzoneError
from deadzone.fileio import atomic_path, ensure_dir, ordinary_permissions, write_json
from deadzone.models.device import choose_threads
from deadzone.models.presets import Preset, builtin_dir, get_preset
from deadzone.provenance import versions
from deadzone.training.train import SFTConfig, SFTLoop

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MARKER = "deadzone_pretrain.json"
STATE = "state.pt"

log = logging.getLogger(__name__)


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``docs``, as a Hugging Face fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
    )


def token_blocks(tokenizer: PreTrainedTokenizerFast, docs: list[str], context: int) -> torch.Tensor:
    """Documents joined by EOS and cut into ``(n_blocks, context)`` token blocks."""
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // context
    if n == 0:
        raise DeadzoneError(f"corpus too small for one block of {context} tokens")
    return torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)  # (n, context)


def build_model(preset: Preset, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=preset.n_layer,
        n_embd=preset.n_embd,
        n_head=preset.n_head,
        n_positions=preset.context,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(preset.seed)
    return GPT2LMHeadModel(config)


def _as_batch(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks}


def _epoch_batches(blocks: torch.Tensor, preset: Preset) -> Callable[[int], Iterator[dict]]:
    """Each epoch: every block once, in an order drawn from the preset's seed and the epoch."""

    def epoch(n: int) -> Iterator[dict]:
        order = torch.randperm(
            len(blocks), generator=torch.Generator().manual_seed(preset.seed + n)
        )
        for idx in order.split(preset.batch_size):
            if len(idx) == preset.batch_size:
                yield _as_batch(blocks[idx])  # (batch, context)

    return epoch


def sft_config(preset: Preset) -> SFTConfig:
    """The preset's recipe as a training config: AdamW, warmup, cosine to 10%, clipping."""
    return SFTConfig(
        steps=preset.steps,
        lr=preset.lr,
        batch_size=preset.batch_size,
        warmup_steps=preset.warmup_steps,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        eval_every=preset.steps,
        seed=preset.seed,
    )


@dataclass
class Checkpoints:
    """Pretraining's checkpoint, ``.<out>.partial/state.pt`` beside ``out``.

    ``identity`` (preset, corpus hash, tokenizer) says what the checkpoint trains: one of
    anything else is started over, never resumed.
    """

    directory: Path
    identity: dict

    def load(self) -> dict | None:
        """The saved state, or None (none, unreadable, or of another pretraining)."""
        file = self.directory / STATE
        if not file.is_file():
            return None
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            log.warning("ignoring the unreadable pretraining checkpoint %s: %s", file, e)
            return None
        return state if state.get("identity") == self.identity else None

    def save(self, state: dict) -> None:
        with atomic_path(self.directory / STATE) as tmp:
            torch.save({**state, "identity": self.identity}, tmp)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class _PretrainLoop(SFTLoop):
    """The SFT loop that saves its whole state every ``every`` steps, and resumes from
    ``state``: the steps before it are replayed (their batches drawn from the stream, their
    losses read back) instead of trained, and the step-0 evaluation is read back too."""

    def __init__(self, *args, checkpoints: Checkpoints, every: int, state: dict | None, **kw):
        super().__init__(*args, **kw)
        self.checkpoints, self.every, self.state = checkpoints, every, state
        self.steps: list[tuple[float, int]] = []  # (train loss, tokens) of each step
        self.step0: float | None = None
        self.train_seconds = 0.0
        self.replay_step0 = state is not None
        if state is not None:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps = [(float(loss), int(n)) for loss, n in state["steps"]]
            self.step0, self.train_seconds = state["step0_eval_loss"], state["train_seconds"]

    def evaluate(self) -> float:
        if self.replay_step0:  # made before the interruption, on the model as it was then
            self.replay_step0 = False
            return self.step0
        loss = super().evaluate()
        if self.step0 is None:
            self.step0 = loss
        return loss

    def train_step(self, stream, step: int) -> tuple[float, int]:
        if step <= len(self.steps):  # trained before the interruption
            for _ in range(self.config.grad_accum):
                next(stream)
            if step == len(self.steps):
                torch.set_rng_state(self.state["rng"])
            return self.steps[step - 1]
        t0 = time.perf_counter()
        loss, tokens = super().train_step(stream, step)
        self.train_seconds += time.perf_counter() - t0
        self.steps.append((loss, tokens))
        if step % self.every == 0 and step < self.config.steps:
            self.checkpoints.save(self._state())
        return loss, tokens

    def _state(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "steps": self.steps,
            "step0_eval_loss": self.step0,
            "train_seconds": self.train_seconds,
        }


def _prepare_out(out: Path) -> None:
    """Refuse to overwrite anything but an earlier pretraining output."""
    if out.exists() and not out.is_dir():
        raise DeadzoneError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DeadzoneError(f"output directory {out} is not empty and holds no deadzone model")
    ensure_dir(out.parent)


def _save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, record: dict, out: Path):
    """Write the model, tokenizer and record to a temporary directory, then move it into place."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise DeadzoneError(f"cannot write to {out.parent}: {e.strerror}") from None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, record)
        ordinary_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as e:
        raise DeadzoneError(f"cannot save the model to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Pretrained:
    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerFast
    record: dict  # also saved as deadzone_pretrain.json beside the model
    out: Path


def pretrain(
    preset_name: str, out: str | Path | None = None, *, threads: int | None = None
) -> Pretrained:
    """Pretrain preset ``preset_name`` on the builtin corpus and save it in Hugging Face format.

    Without ``out`` the model goes to the user cache, where ``builtin:<preset>`` finds it. It
    trains on ``threads`` torch threads, else on :func:`deadzone.models.device.choose_threads`'
    choice (the cores other work leaves idle); the caller's setting is restored after. A
    checkpoint left by an interrupted pretraining into ``out`` is resumed.
    """
    preset = get_preset(preset_name)
    if out is not None:  # check a given directory before the corpus is built
        _prepare_out(out := Path(out))
    chash = corpus.corpus_hash()
    if out is None:
        _prepare_out(out := builtin_dir(preset.name, chash))
    before = torch.get_num_threads()
    torch.set_num_threads(choose_threads(threads))
    try:
        return _pretrain(preset, chash, out)
    finally:
        torch.set_num_threads(before)


def _pretrain(preset: Preset, chash: str, out: Path) -> Pretrained:
    start = time.perf_counter()
    train_docs, eval_docs = (
        corpus.pretraining_documents("train"),
        corpus.pretraining_documents("eval"),
    )
    tokenizer = train_tokenizer(train_docs, preset.vocab_size)
    train_blocks = token_blocks(tokenizer, train_docs, preset.context)
    eval_blocks = token_blocks(tokenizer, eval_docs, preset.context)[: preset.eval_blocks]
    model = build_model(preset, tokenizer)
    evals = [_as_batch(b) for b in eval_blocks.split(preset.batch_size)]
    identity = {"preset": preset, "corpus_hash": chash, "vocab": tokenizer.get_vocab()}
    checkpoints = Checkpoints(out.parent / f".{out.name}.partial", _plain(identity))
    state = checkpoints.load()
    if state is not None:
        log.warning("resuming pretraining %s from step %d", preset.name, len(state["steps"]))
    loop = _PretrainLoop(
        model, _epoch_batches(train_blocks, preset), evals, sft_config(preset),
        description=f"pretraining {preset.name}", checkpoints=checkpoints,
        every=preset.checkpoint_every, state=state,
    )  # fmt: skip
    run = loop.run()
    if run.status != "ok":
        raise DeadzoneError(f"pretraining {preset.name} failed: {run.error}")
    run.tokens_per_second = run.train_tokens / max(loop.train_seconds, 1e-9)
    record = {
        "preset": preset.name,
        "corpus_hash": chash,
        "params": sum(p.numel() for p in model.parameters()),
        "train_blocks": len(train_blocks),
        "eval_blocks": len(eval_blocks),
        "context": preset.context,
        "steps": preset.steps,
        "tokens": run.train_tokens,
        "tokens_per_second": round(run.tokens_per_second),
        "step0_eval_loss": run.step0_eval_loss,
        "train_loss": run.final_train_loss,
        "eval_loss": run.final_eval_loss,
        "seconds": round(time.perf_counter() - start, 1),
        "resumed_from_step": 0 if state is None else len(state["steps"]),
        "versions": versions(),
    }
    _save(model, tokenizer, record, out)
    checkpoints.remove()
    return Pretrained(model, tokenizer, record, out)


def _plain(identity: dict) -> dict:
    """``identity`` as plain values a checkpoint holds (``torch.load(weights_only=True)``)."""
    preset = identity["preset"]
    return {**identity, "preset": {k: getattr(preset, k) for k in preset.__dataclass_fields__}}
