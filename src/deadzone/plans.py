"""Freeze plans: which sites to put into which strategy, as files deadzone and other trainers read.

``plan.json`` (written by a scan, read by ``freeze`` and by :func:`apply_plan`)::

    {"plan_version": 1,
     "model": {"fingerprint": "<sha256>", "fingerprint_bf16": "<sha256>",
               "fingerprint_fp16": "<sha256>", "model_type": "gpt2", "source": "builtin:tiny"},
     "seed": 0,
     "sites": [{"site": "L4.attn.c_proj", "param_name": "transformer.h.4.attn.c_proj.weight",
                "strategy": "frozen", "rank": null}, ...],
     "order": ["L2.mlp.c_fc", "L0.attn.c_proj", ...],
     "prefix_depth": 4, "untie_head": true}

``rank`` is the rank of a ``crystal`` site (an integer >= 1); every other strategy ignores it,
and it may be ``null`` or left out. ``seed`` seeds the draws of ``random`` sites. ``order``
(optional) names other sites of the model, none of them in ``sites``, by increasing single-site
cost: a scan lists there the sites it did not find jointly negligible, so that a schedule
freezing more than the plan's sites (``freeze --schedule plan:FILE``) takes the cheapest next.

``prefix_depth`` (optional, 0 by default): the embeddings and blocks ``0 .. prefix_depth-1``
are frozen whole, biases and norms too (their matrices may also be listed in ``sites``), so the
prefix runs without autograd (``deadzone.training.prefix``). ``untie_head`` (optional, false by
default): a head tied to the input embedding gets its own trainable copy first, so that a
frozen embedding does not freeze the head; the saved model's config then says
``tie_word_embeddings: false``. A plan that unties a model without tied weights is refused.
``savings`` (optional): what the plan saves per step, as ``deadzone.training.savings`` models it.

The fingerprint (:func:`weights_fingerprint`) identifies the weights of the model in memory, so a
plan is refused by a model it was not made for. It hashes dtypes and exact values, so the same
checkpoint loaded in bfloat16 or float16 (to fine-tune) is recognised by ``fingerprint_bf16`` or
``fingerprint_fp16`` instead (:func:`rounded_fingerprint`: no dtypes, the values rounded to that
dtype; one per dtype, as float32 to float16 to bfloat16 rounds some values otherwise than float32
to bfloat16). A plan without them (an older file) is checked against the exact one alone.

Two more files for other trainers (both freeze only; ``random``, ``crystal`` and ``zero`` sites
also need their values rewritten, which :func:`apply_plan` does):

- ``axolotl.yaml``: ``unfrozen_parameters:``, one anchored pattern per parameter that stays
  trainable. Axolotl compiles each pattern with every ``.`` made literal and keeps a parameter
  trainable when ``re.match`` finds the pattern in its name, so ``^name$`` selects that name
  alone.
- ``frozen_parameters.txt``: the parameter names to set ``requires_grad=False``, one a line.
- ``lora_config.json``: the keyword arguments of a peft ``LoraConfig`` whose ``target_modules``
  are exactly the block matrices (``Linear`` / GPT-2 ``Conv1D`` modules) the plan keeps
  trainable: ``LoraConfig(**json.load(f))`` adapts only what is not dead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.models.fingerprints import (  # noqa: F401 (plans.weights_fingerprint et al.)
    ROUNDED,
    parameters_fingerprint,
    rounded_fingerprint,
    same_weights,
    sample_indices,
    weights_fingerprint,
)
from deadzone.models.sites import CONV1D_MODEL_TYPES, Site, find_sites
from deadzone.training import prefix
from deadzone.training.strategies import STRATEGIES, apply_strategies

PLAN_VERSION = 1
PLAN, AXOLOTL, FROZEN_LIST = "plan.json", "axolotl.yaml", "frozen_parameters.txt"
LORA = "lora_config.json"
# The LoraConfig written beside a plan: peft's usual rank and scale.
LORA_RANK, LORA_ALPHA = 8, 16
# Characters of parameter names a pattern can hold as they are (axolotl escapes only dots).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def make_plan(
    model: torch.nn.Module,
    strategies: Mapping[str, str],
    *,
    rank: int | None = None,
    seed: int = 0,
    source: str | None = None,
    order: Iterable[str] = (),
    prefix_depth: int = 0,
    untie_head: bool = False,
    savings: dict | None = None,
) -> dict:
    """The plan putting each site named in ``strategies`` (site name -> strategy) into its
    strategy (``rank`` for ``crystal`` sites), fingerprinted from ``model``; ``order``: other
    sites by increasing single-site cost (the plan's ``order``); ``prefix_depth`` and
    ``untie_head`` as the module's docstring says; ``savings``: what the plan saves per step
    (``deadzone.training.savings.Savings.to_dict``), recorded as it is."""
    by_name = {s.name: s for s in find_sites(model)}
    order = list(order)
    for name in [*strategies, *order]:
        if name not in by_name:
            raise DeadzoneError(f"no site {name!r} in this model")
    entries = [
        {
            "site": name,
            "param_name": by_name[name].param_name,
            "strategy": strategy,
            "rank": rank if strategy == "crystal" else None,
        }
        for name, strategy in strategies.items()
    ]
    plan = {
        "plan_version": PLAN_VERSION,
        "model": {
            "fingerprint": weights_fingerprint(model),
            **{key: rounded_fingerprint(model, dtype) for key, dtype in ROUNDED.items()},
            "model_type": getattr(model.config, "model_type", None),
            "source": source,
        },
        "seed": seed,
        "sites": entries,
        "order": order,
        "prefix_depth": prefix_depth,
        "untie_head": untie_head,
    }
    if savings is not None:
        plan["savings"] = savings
    validate(plan)
    _check_prefix(model, plan)
    return plan


def validate(plan: object, where: str = "plan") -> dict:
    """``plan`` if it is a well-formed plan, else a one-line DeadzoneError naming the fault."""

    def bad(why: str) -> DeadzoneError:
        return DeadzoneError(f"{where} is not a valid deadzone plan: {why}")

    if not isinstance(plan, dict):
        raise bad("not a JSON object")
    version = plan.get("plan_version")
    if version != PLAN_VERSION:
        raise bad(f"plan_version {version!r} (this deadzone reads {PLAN_VERSION})")
    model = plan.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
        raise bad("no model fingerprint")
    for key in ROUNDED:
        if not isinstance(model.get(key, ""), str):
            raise bad(f"{key} must be a string")
    if not _is_int(plan.get("seed")):
        raise bad("seed must be an integer")
    sites = plan.get("sites")
    if not isinstance(sites, list):
        raise bad("sites must be a list")
    seen = set()
    for i, entry in enumerate(sites):
        if not isinstance(entry, dict):
            raise bad(f"site {i} is not an object")
        for key in ("site", "param_name", "strategy"):
            if not isinstance(entry.get(key), str):
                raise bad(f"site {i} has no {key}")
        strategy, rank = entry["strategy"], entry.get("rank")
        if strategy not in STRATEGIES or strategy == "full":
            raise bad(f"site {entry['site']}: strategy {strategy!r} is not one a plan applies")
        if strategy == "crystal" and not (_is_int(rank) and rank >= 1):
            raise bad(f"site {entry['site']}: a crystal site needs an integer rank >= 1")
        if entry["param_name"] in seen:
            raise bad(f"parameter {entry['param_name']} is listed twice")
        seen.add(entry["param_name"])
    _validate_order(plan.get("order", []), {e["site"] for e in sites}, bad)
    depth = plan.get("prefix_depth", 0)
    if not (_is_int(depth) and depth >= 0):
        raise bad(f"prefix_depth must be an integer >= 0, got {depth!r}")
    if not isinstance(plan.get("untie_head", False), bool):
        raise bad("untie_head must be true or false")
    if not isinstance(plan.get("savings", {}), dict):
        raise bad("savings must be an object")
    return plan


def _validate_order(order: object, planned: set[str], bad: Callable[[str], Exception]) -> None:
    """The plan's optional ``order``: site names, each once, none of them the plan's own."""
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise bad("order must be a list of site names")
    twice = [n for n, count in Counter(order).items() if count > 1]
    if twice:
        raise bad(f"order lists {twice[0]} twice")
    both = [n for n in order if n in planned]
    if both:
        raise bad(f"order lists {both[0]}, which is one of the plan's sites")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_plan(path: str | Path) -> dict:
    """Read and validate ``plan.json``; any fault is a one-line DeadzoneError."""
    path = Path(path)
    try:
        plan = fileio.read_json(path)
    except FileNotFoundError:
        raise DeadzoneError(f"no plan file {path}") from None
    except (OSError, ValueError) as e:
        raise DeadzoneError(f"cannot read plan {path}: {e}") from None
    return validate(plan, str(path))


def _check_matches(model: torch.nn.Module, plan: dict, check_fingerprint: bool) -> list[Site]:
    """The model's sites for the plan's entries, or a DeadzoneError naming the mismatch."""
    by_param = {s.param_name: s for s in find_sites(model)}
    sites = []
    for entry in plan["sites"]:
        site = by_param.get(entry["param_name"])
        if site is None:
            raise DeadzoneError(
                f"the plan names parameter {entry['param_name']}, which this model does not have"
            )
        if site.name != entry["site"]:
            raise DeadzoneError(
                f"the plan calls {entry['param_name']} {entry['site']!r}; this model, {site.name!r}"
            )
        sites.append(site)
    names = {s.name for s in by_param.values()}
    unknown = [n for n in plan.get("order", []) if n not in names]
    if unknown:
        raise DeadzoneError(f"the plan's order names site {unknown[0]!r}, which this model lacks")
    _check_prefix(model, plan)
    if check_fingerprint and not same_weights(model, plan["model"]):
        source = plan["model"].get("source")
        made_for = f" (it was made for {source})" if source else ""
        raise DeadzoneError(
            f"the plan was made for another model{made_for}: its fingerprint differs"
        )
    return sites


def check_model(model: torch.nn.Module, plan: dict) -> list[Site]:
    """The model's sites for ``plan``'s entries, or a one-line DeadzoneError if the plan names
    parameters or sites this model lacks, or was made for other weights (its fingerprint)."""
    return _check_matches(model, validate(plan), check_fingerprint=True)


def apply_plan(
    model: torch.nn.Module, plan: dict | str | Path, *, check_fingerprint: bool = True
) -> list[dict]:
    """Put ``model``'s sites into the strategies of ``plan`` (a plan or the path of plan.json).

    A plan made for other weights (its fingerprint), or naming parameters or sites this model
    does not have, is refused before the model is touched (``check_fingerprint=False`` applies
    it to another checkpoint of the same architecture). The plan's parameters end frozen;
    nothing else is changed. Returns one record per site, as
    :func:`deadzone.training.strategies.apply_strategies` does.
    """
    plan = load_plan(plan) if isinstance(plan, (str, Path)) else validate(plan)
    sites = _check_matches(model, plan, check_fingerprint)
    if plan.get("untie_head"):
        prefix.untie_head(model)
    for _, p in _prefix_parameters(model, plan):
        p.requires_grad_(False)
    records = []
    for rank in sorted({_rank(e) for e in plan["sites"]}):  # apply_strategies takes one rank
        part = {
            site: e["strategy"]
            for site, e in zip(sites, plan["sites"], strict=True)
            if _rank(e) == rank
        }
        records += apply_strategies(model, part, rank=rank, seed=plan["seed"])
    return records


def _rank(entry: dict) -> int:
    """The rank to apply an entry at: a crystal site's own; any other strategy ignores it."""
    return entry["rank"] if entry["strategy"] == "crystal" else 1


def _prefix_parameters(model: torch.nn.Module, plan: dict) -> list:
    depth = plan.get("prefix_depth", 0)
    return prefix.prefix_parameters(model, depth) if depth else []


def _check_prefix(model: torch.nn.Module, plan: dict) -> None:
    """A one-line DeadzoneError if the plan's prefix or untying does not fit ``model``."""
    depth = plan.get("prefix_depth", 0)
    if depth:
        count = len(prefix.blocks(model))
        if depth > count:
            raise DeadzoneError(
                f"the plan freezes a prefix of {depth} blocks; this model has {count}"
            )
    if plan.get("untie_head"):
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is None or embed is None or head.weight is not embed.weight:
            raise DeadzoneError(
                "the plan unties the head, but this model's head is not tied to its embedding"
            )


def frozen_after(model: torch.nn.Module, plan: dict) -> list[str]:
    """Names of the model's parameters (tied ones once) that the plan freezes: its sites' and
    its prefix's, in model order."""
    frozen = {e["param_name"] for e in plan["sites"]} | {
        n for n, _ in _prefix_parameters(model, plan)
    }
    return [name for name, _ in model.named_parameters() if name in frozen]


def trainable_after(model: torch.nn.Module, plan: dict) -> list[str]:
    """Names of the model's parameters (tied ones once) that the plan leaves trainable; an
    untied head's own name (``lm_head.weight``) last where the plan unties it."""
    frozen = set(frozen_after(model, plan))
    names = [name for name, _ in model.named_parameters() if name not in frozen]
    if plan.get("untie_head"):
        head = model.get_output_embeddings()
        names += [f"{n}.weight" for n, m in model.named_modules() if m is head]
    return names


def lora_config(model: torch.nn.Module, plan: dict) -> dict:
    """The keyword arguments of a peft ``LoraConfig`` adapting exactly the block matrices the
    plan keeps trainable (by full module name; GPT-2's ``Conv1D`` with ``fan_in_fan_out``)."""
    trainable = set(trainable_after(model, plan))
    targets = [
        s.param_name.removesuffix(".weight")
        for s in find_sites(model)
        if s.layer is not None and s.param_name in trainable
    ]
    if not targets:
        raise DeadzoneError("the plan keeps no block matrix trainable: nothing for LoRA to adapt")
    return {
        "task_type": "CAUSAL_LM",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": getattr(model.config, "model_type", None) in CONV1D_MODEL_TYPES,
        "target_modules": targets,
    }


def prefix_sites(model: torch.nn.Module, depth: int) -> list[str]:
    """The site names (matrices, embeddings) inside the first ``depth`` blocks and below."""
    names = {n for n, _ in prefix.prefix_parameters(model, depth)}
    return [s.name for s in find_sites(model) if s.param_name in names]


def axolotl_patterns(names: list[str]) -> list[str]:
    """``^name$`` for each parameter name: with its dots literal, as axolotl compiles it, it
    matches that name alone."""
    for name in names:
        if not _PLAIN_NAME.match(name):
            raise DeadzoneError(f"parameter name {name!r} cannot be written as an axolotl pattern")
    return [f"^{name}$" for name in names]


def axolotl_yaml(model: torch.nn.Module, plan: dict) -> str:
    strategies = sorted({e["strategy"] for e in plan["sites"]})
    lines = [
        f"# deadzone freeze plan ({', '.join(strategies) or 'no sites'}): "
        f"{len(plan['sites'])} matrices frozen.",
        "# Parameters that stay trainable; every other parameter is frozen.",
    ]
    if plan.get("prefix_depth"):
        lines.append(f"# The embeddings and blocks below {plan['prefix_depth']} are frozen whole.")
    if plan.get("untie_head"):
        lines.append("# The head is untied from the embedding first: tie_word_embeddings: false.")
    if set(strategies) - {"frozen"}:
        lines.append("# Sites that are not 'frozen' also need their values rewritten: apply_plan.")
    lines.append("unfrozen_parameters:")
    lines += [f"  - '{p}'" for p in axolotl_patterns(trainable_after(model, plan))]
    return "\n".join(lines) + "\n"


def write_plan(directory: str | Path, model: torch.nn.Module, plan: dict) -> dict[str, Path]:
    """Write ``plan.json``, ``axolotl.yaml``, ``frozen_parameters.txt`` and
    ``lora_config.json`` into ``directory`` (each atomically); returns their paths."""
    validate(plan)
    _check_matches(model, plan, check_fingerprint=True)
    lora = lora_config(model, plan)
    directory = fileio.ensure_dir(directory)
    paths = {name: directory / name for name in (PLAN, AXOLOTL, FROZEN_LIST, LORA)}
    fileio.write_json(paths[PLAN], plan)
    fileio.write_text(paths[AXOLOTL], axolotl_yaml(model, plan))
    fileio.write_text(paths[FROZEN_LIST], "".join(f"{n}\n" for n in frozen_after(model, plan)))
    fileio.write_json(paths[LORA], lora)
    return paths
