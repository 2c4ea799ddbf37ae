"""Find and name the weight matrices ("sites") of any causal LM; select them by glob.

A site is named as the study names it: ``L{block}.{path inside the block}`` for matrices inside
numbered transformer blocks (``L4.attn.c_proj`` for GPT-2, ``L4.self_attn.o_proj`` for Llama),
``embed`` / ``pos_embed`` for embeddings and ``lm_head`` for an untied output head.

Discovery works from parameter names, shapes and the model config alone, so the same names come
out whether a model was built in memory or its tensors are streamed from safetensors shards.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from deadzone.errors import DeadzoneError

# Model types whose block matrices are GPT-2 ``Conv1D`` modules, stored ``in x out``.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})

# Where a checkpoint's orientation comes from: its config's ``model_type``, tensor names (and
# shapes) that tell the architecture, or nothing (read as ``out x in``, the nn.Linear layout).
FROM_CONFIG, FROM_NAMES, ASSUMED = "config", "tensor names", "assumed"
# GPT-2's name for the fused attention input: a Conv1D there, an nn.Linear in GPTBigCode (its
# shape against the embedding width tells which).
_GPT2_QKV = re.compile(r"(?:^|\.)h\.\d+\.attn\.c_attn\.weight$")
_GPT2_PATHS = ("c_attn", "c_proj", "c_fc")

# Role of a matrix by its path inside the block (the last two name components).
ROLES: dict[str, str] = {
    # GPT-2
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_out",
    "crossattention.c_attn": "attn_qkv",
    "crossattention.c_proj": "attn_out",
    "mlp.c_fc": "mlp_in",
    "mlp.c_proj": "mlp_out",
    # Llama / Mistral / Qwen2 / Gemma / Phi-3 style
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_out",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "mlp_gate",
    "mlp.up_proj": "mlp_in",
    "mlp.down_proj": "mlp_out",
    "mlp.gate_up_proj": "mlp_gate_in",
    # OPT
    "self_attn.out_proj": "attn_out",
    "fc1": "mlp_in",
    "fc2": "mlp_out",
    # GPT-NeoX / Pythia
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_out",
    "mlp.dense_h_to_4h": "mlp_in",
    "mlp.dense_4h_to_h": "mlp_out",
}

# Parameter names (without ``.weight``) of input embeddings, position embeddings and heads.
EMBED_NAMES = ("wte", "embed_tokens", "embed_in", "word_embeddings", "tok_embeddings")
POS_EMBED_NAMES = ("wpe", "embed_positions", "position_embeddings")
HEAD_NAMES = ("lm_head", "embed_out")

# Canonical order: embeddings, then blocks by layer and role (as a forward pass meets them), head.
ROLE_ORDER = (
    "embed", "pos_embed", "attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out",
    "mlp_gate_in", "mlp_gate", "mlp_in", "mlp_out", "other", "lm_head",
)  # fmt: skip

_BLOCK = re.compile(r"^(?P<prefix>(?:[A-Za-z_]\w*\.)+?)(?P<layer>\d+)\.(?P<path>.+)\.weight$")


@dataclass(frozen=True)
class Site:
    """One weight matrix of a model.

    ``shape`` is ``(out, in)``; ``transposed`` says the stored tensor is ``in x out``.
    """

    name: str
    param_name: str
    layer: int | None
    role: str
    shape: tuple[int, int]
    transposed: bool

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    def matrix(self, stored: torch.Tensor) -> torch.Tensor:
        """The stored tensor seen in ``out x in`` orientation (a view, no copy)."""
        return stored.T if self.transposed else stored


def _classify(param_name: str) -> tuple[str, int | None, str] | None:
    """(site name, layer, role) for a ``*.weight`` parameter name, or None if it is no site."""
    m = _BLOCK.match(param_name)
    if m:
        path = m["path"]
        role = ROLES.get(".".join(path.split(".")[-2:])) or ROLES.get(path.split(".")[-1], "other")
        return f"L{int(m['layer'])}.{path}", int(m["layer"]), role
    stem = param_name.removesuffix(".weight").split(".")[-1]
    if stem in EMBED_NAMES:
        return "embed", None, "embed"
    if stem in POS_EMBED_NAMES:
        return "pos_embed", None, "pos_embed"
    if stem in HEAD_NAMES:
        return "lm_head", None, "lm_head"
    return None


def discover(
    named_shapes: Iterable[tuple[str, tuple[int, ...]]],
    model_type: str,
    *,
    conv1d: bool | None = None,
) -> list[Site]:
    """Sites from ``(parameter name, stored shape)`` pairs and the config's ``model_type``.

    Block matrices are stored ``in x out`` when ``conv1d`` says so, or, when it is None, when
    ``model_type`` is a GPT-2 family type. Only 2-D ``*.weight`` tensors become sites. A head
    whose weight is tied to the embedding must already be absent from ``named_shapes`` (tied
    weights are listed once, as ``embed``).
    """
    if conv1d is None:
        conv1d = model_type in CONV1D_MODEL_TYPES
    sites: list[Site] = []
    for param_name, shape in named_shapes:
        if len(shape) != 2 or not param_name.endswith(".weight"):
            continue
        found = _classify(param_name)
        if found is None:
            continue
        name, layer, role = found
        transposed = layer is not None and conv1d
        out_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
        sites.append(
            Site(name, param_name, layer, role, (int(out_in[0]), int(out_in[1])), transposed)
        )
    sites.sort(key=_order)
    names = [s.name for s in sites]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DeadzoneError(f"ambiguous site names in this model: {', '.join(sorted(dupes))}")
    return sites


def orientation(
    named_shapes: list[tuple[str, tuple[int, ...]]], model_type: str | None
) -> tuple[bool, str]:
    """``(conv1d, source)``: whether block matrices are stored ``in x out``, and how that is known.

    From ``model_type`` when there is one (:data:`FROM_CONFIG`). Without it, from the tensors
    (:data:`FROM_NAMES`): GPT-2's ``h.N.attn.c_attn`` is a Conv1D, stored ``in x out`` when its
    first dimension is the embedding width and its second is not (the fused q, k, v output),
    ``out x in`` the other way round (GPTBigCode uses the name for an nn.Linear); the other
    block names of :data:`ROLES` belong to architectures built of nn.Linear. When neither
    tells, block matrices are read ``out x in`` and the source is :data:`ASSUMED`.
    """
    if model_type:
        return model_type in CONV1D_MODEL_TYPES, FROM_CONFIG
    shapes = [(n, s) for n, s in named_shapes if len(s) == 2]
    qkv = [s for n, s in shapes if _GPT2_QKV.search(n)]
    if qkv:
        width = next((s[1] for n, s in shapes if _classify(n) and _classify(n)[2] == "embed"), None)
        rows, cols = qkv[0]
        if width is not None and rows == width != cols:
            return True, FROM_NAMES
        if width is not None and cols == width != rows:
            return False, FROM_NAMES
        return False, ASSUMED
    for name, _ in shapes:
        found = _classify(name) if name.endswith(".weight") else None
        linear = found and found[1] is not None and found[2] != "other"
        if linear and not found[0].split(".")[-1].startswith(_GPT2_PATHS):
            return False, FROM_NAMES
    return False, ASSUMED


def _order(site: Site) -> tuple[int, int, int, str]:
    group = {"embed": 0, "pos_embed": 0, "lm_head": 2}.get(site.role, 1)
    return group, site.layer or 0, ROLE_ORDER.index(site.role), site.name


def find_sites(model: torch.nn.Module) -> list[Site]:
    """Every weight matrix of a loaded Hugging Face model, tied weights once."""
    named = [(name, tuple(p.shape)) for name, p in model.named_parameters()]  # ties removed
    return discover(named, getattr(model.config, "model_type", ""))


def get_parameter(model: torch.nn.Module, site: Site) -> torch.nn.Parameter:
    """The stored parameter behind ``site``."""
    return model.get_parameter(site.param_name)


def site_matrix(model: torch.nn.Module, site: Site) -> torch.Tensor:
    """The site's matrix in ``out x in`` orientation (a view of the stored parameter)."""
    return site.matrix(get_parameter(model, site).detach())


def select(sites: list[Site], pattern: str | None) -> list[Site]:
    """Sites matching ``pattern``: comma-separated exact names or globs; None selects all.

    A pattern that matches nothing is an error listing the closest names.
    """
    if pattern is None or pattern.strip() in ("", "*"):
        return list(sites)
    names = [s.name for s in sites]
    chosen: set[str] = set()
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        hits = [n for n in names if fnmatch.fnmatchcase(n, part)]
        if not hits:
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.3) or names[:5]
            raise DeadzoneError(f"no site matches {part!r}; closest: {', '.join(close)}")
        chosen.update(hits)
    return [s for s in sites if s.name in chosen]
