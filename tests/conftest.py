"""Tiny models of each named family, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
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

VOCAB = 96


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models train fastest on one thread, and other work on the machine cannot stall it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
