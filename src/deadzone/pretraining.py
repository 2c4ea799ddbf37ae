"""Pretrain a builtin preset on the builtin corpus: tokenizer, token blocks, training, saving."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from deadzone.data import corpus
from deadzone.errors import DeadzoneError
from deadzone.fileio import ensure_dir, write_json
from deadzone.presets import Preset, builtin_dir, get_preset
from deadzone.progress import make_progress
from deadzone.provenance import versions

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MARKER = "deadzone_pretrain.json"


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


@torch.no_grad()
def eval_loss(model: GPT2LMHeadModel, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over ``blocks`` (every block has the same number of targets)."""
    model.eval()
    losses = [model(input_ids=b, labels=b).loss.item() for b in blocks.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _lr_at(step: int, preset: Preset) -> float:
    if step < preset.warmup_steps:
        return preset.lr * (step + 1) / preset.warmup_steps
    progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: GPT2LMHeadModel, blocks: torch.Tensor, preset: Preset) -> dict:
    """Train on random batches of ``blocks``; return the mean loss of the last 10% of steps."""
    opt = _optimizer(model, preset.lr)
    gen = torch.Generator().manual_seed(preset.seed)
    tokens_per_step = preset.batch_size * preset.context
    losses: list[float] = []
    start = time.perf_counter()
    with make_progress("loss {task.fields[loss]:.3f}", "{task.fields[tps]:,.0f} tok/s") as bar:
        task = bar.add_task(f"pretraining {preset.name}", total=preset.steps, loss=math.nan, tps=0)
        for step in range(preset.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, preset)
            idx = torch.randint(len(blocks), (preset.batch_size,), generator=gen)
            batch = blocks[idx]  # (batch, context)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tps = (step + 1) * tokens_per_step / (time.perf_counter() - start)
            bar.update(task, advance=1, loss=loss.item(), tps=tps)
    tail = losses[-max(1, len(losses) // 10) :]
    return {"train_loss": sum(tail) / len(tail), "tokens": preset.steps * tokens_per_step}


def _prepare_out(out: Path) -> None:
    """Refuse to overwrite anything but an earlier pretraining output."""
    if out.exists() and not out.is_dir():
        raise DeadzoneError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DeadzoneError(f"output directory {out} is not empty and holds no deadzone model")
    ensure_dir(out.parent)


def _save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, record: dict, out: Path):
    """Write the model, tokenizer and record to a temporary directory, then move it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, record)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Pretrained:
    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerFast
    record: dict  # also saved as deadzone_pretrain.json beside the model
    out: Path


def pretrain(preset_name: str, out: str | Path | None = None) -> Pretrained:
    """Pretrain preset ``preset_name`` on the builtin corpus and save it in Hugging Face format.

    Without ``out`` the model goes to the user cache, where ``builtin:<preset>`` finds it.
    """
    preset = get_preset(preset_name)
    chash = corpus.corpus_hash()
    out = Path(out) if out is not None else builtin_dir(preset.name, chash)
    _prepare_out(out)
    start = time.perf_counter()
    train_docs, eval_docs = (
        corpus.pretraining_documents("train"),
        corpus.pretraining_documents("eval"),
    )
    tokenizer = train_tokenizer(train_docs, preset.vocab_size)
    train_blocks = token_blocks(tokenizer, train_docs, preset.context)
    eval_blocks = token_blocks(tokenizer, eval_docs, preset.context)[: preset.eval_blocks]
    torch.manual_seed(preset.seed)
    model = build_model(preset, tokenizer)
    step0 = eval_loss(model, eval_blocks, preset.batch_size)
    trained = train(model, train_blocks, preset)
    record = {
        "preset": preset.name,
        "corpus_hash": chash,
        "params": sum(p.numel() for p in model.parameters()),
        "train_blocks": len(train_blocks),
        "eval_blocks": len(eval_blocks),
        "context": preset.context,
        "steps": preset.steps,
        "tokens": trained["tokens"],
        "step0_eval_loss": step0,
        "train_loss": trained["train_loss"],
        "eval_loss": eval_loss(model, eval_blocks, preset.batch_size),
        "seconds": round(time.perf_counter() - start, 1),
        "versions": versions(),
    }
    _save(model, tokenizer, record, out)
    return Pretrained(model, tokenizer, record, out)
