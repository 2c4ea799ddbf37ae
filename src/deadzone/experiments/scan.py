"""A scan's runs and numbers, as plain data (the command that executes them comes on top).

Runs are :class:`deadzone.experiments.runs.RunSpec` s with keys a rerun recomputes:

- ``full/seed{k}``: the baseline of seed ``k`` (every site trains);
- ``{strategy}/{site}/seed{k}``: one site in the strategy;
- ``{strategy}/{n}x{sha256[:12]}/seed{k}``: a set of ``n`` sites at once (a group of the search,
  or a joint set), the hash over the sorted names; the names are in its labels.

A judgement of a set on ``seeds`` seeds needs the set's runs and the baselines of seeds
``0 .. seeds-1`` (:func:`judgement_specs`); the results directory skips the ones it holds, so
adding a seed costs one run of the set (and a baseline if no set had that seed yet).

:func:`strategy_summary` turns a search record and the scores into the ``summary`` entry the
report reads (see :mod:`deadzone.report.scan`); :func:`effective_counts` counts the parameters
of a joint set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from deadzone.errors import DeadzoneError
from deadzone.experiments.runs import RunSpec
from deadzone.scores import spearman_permutation
from deadzone.sites import Site

# Strategies a scan can put sites into (``full`` is the baseline, not a strategy to scan).
SCAN_STRATEGIES = ("frozen", "crystal", "random", "zero")
# Permutations behind each rho's p-value.
PERMUTATIONS = 9999
_IN_BLOCK = re.compile(r"^(?:[A-Za-z_]\w*\.)+?\d+\.")


def check_strategies(strategies: Iterable[str]) -> tuple[str, ...]:
    """The strategies to scan, validated: at least one, none ``full``, none unknown."""
    chosen = tuple(dict.fromkeys(s.strip() for s in strategies if s.strip()))
    unknown = [s for s in chosen if s not in SCAN_STRATEGIES and s != "full"]
    if unknown:
        raise DeadzoneError(
            f"unknown strategy {unknown[0]!r}; a scan takes {', '.join(SCAN_STRATEGIES)}"
        )
    chosen = tuple(s for s in chosen if s != "full")
    if not chosen:
        raise DeadzoneError(
            "a scan needs a strategy besides full (the baseline is always run): "
            f"one of {', '.join(SCAN_STRATEGIES)}"
        )
    return chosen


def set_key(strategy: str, sites: Iterable[str], seed: int) -> str:
    names = sorted(sites)
    if not names:
        raise DeadzoneError("a run needs at least one site")
    if len(names) == 1:
        return f"{strategy}/{names[0]}/seed{seed}"
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:12]
    return f"{strategy}/{len(names)}x{digest}/seed{seed}"


def full_spec(seed: int) -> RunSpec:
    return RunSpec(f"full/seed{seed}", {}, seed, labels={"strategy": "full", "sites": []})


def set_spec(strategy: str, sites: Iterable[str], seed: int, rank: int = 1) -> RunSpec:
    """One run with every site of ``sites`` in ``strategy``."""
    names = sorted(sites)
    return RunSpec(
        set_key(strategy, names, seed),
        dict.fromkeys(names, strategy),
        seed,
        rank=rank,
        labels={"strategy": strategy, "sites": names},
    )


def judgement_specs(
    strategy: str, sites: Iterable[str], seeds: int, rank: int = 1
) -> list[RunSpec]:
    """The runs a judgement of ``sites`` on ``seeds`` seeds needs: per seed, baseline then set."""
    names = sorted(sites)
    specs = []
    for seed in range(seeds):
        specs += [full_spec(seed), set_spec(strategy, names, seed, rank)]
    return specs


def exhaustive_specs(
    sites: list[str], strategies: Iterable[str], seeds: int, rank: int = 1
) -> list[RunSpec]:
    """``full`` per seed, then one run per (strategy, site, seed): the exhaustive scan."""
    specs = [full_spec(seed) for seed in range(seeds)]
    for strategy in strategies:
        for name in sites:
            specs += [set_spec(strategy, [name], seed, rank) for seed in range(seeds)]
    return specs


def adaptive_bounds(groups: list[list[str]], strategies: int, start: int, seeds: int) -> dict:
    """Runs of an adaptive scan at the fewest (every group negligible on ``start`` seeds, then
    the joint set on every seed) and of the exhaustive scan, baselines included in both."""
    sites = sum(len(g) for g in groups)
    joint = seeds if len(groups) > 1 else seeds - start  # one group: the joint set is that group
    return {
        "fewest": seeds + strategies * (start * len(groups) + joint),
        "exhaustive": seeds * (1 + strategies * sites),
    }


def summary_sites(record: dict, sites: list[Site]) -> list[dict]:
    """The summary's ``sites`` of one strategy from its search record (in site order)."""
    out = []
    for site in sites:
        r = record["sites"].get(site.name)
        if r is None:
            continue
        out.append(
            {
                "site": site.name,
                "layer": site.layer,
                "role": site.role,
                "params": site.params,
                "verdict": r["verdict"],
                "cost": r["cost"],
                "interval": r["interval"],
                "single": r["group_size"] == 1,
            }
        )
    return out


def correlations(
    sites: list[dict], scores: dict[str, dict[str, float | None]], seed: int = 0
) -> dict[str, dict]:
    """Spearman's rho of each score against the single-site costs, with its permutation p."""
    single = [s for s in sites if s["single"] and s["cost"] is not None]
    out = {}
    for name, values in scores.items():
        xs = [values.get(s["site"]) for s in single]
        ys = [s["cost"] for s in single]
        rho, p = spearman_permutation(xs, ys, n_perm=PERMUTATIONS, seed=seed)
        n = sum(x is not None and x == x for x in xs)  # x == x: not NaN
        out[name] = {"rho": rho, "p": p, "n": n}
    return out


def strategy_summary(
    record: dict, sites: list[Site], scores: dict[str, dict[str, float | None]]
) -> dict:
    """``{"sites", "correlations", "joint"}`` of one strategy, as the report reads it."""
    rows = summary_sites(record, sites)
    return {"sites": rows, "correlations": correlations(rows, scores), "joint": record["joint"]}


def block_params(named_params: Iterable[tuple[str, int]]) -> int:
    """Parameter values inside the numbered blocks, from ``(name, numel)`` pairs."""
    return sum(n for name, n in named_params if _IN_BLOCK.match(name))


def effective_counts(
    joint: dict | None, sites: list[Site], *, trainable: int, in_blocks: int
) -> dict:
    """Parameters of the joint set: how many, and as fractions of the trainable parameters and
    of those inside the blocks; with the joint judgement's cost and interval."""
    chosen = set(joint["sites"]) if joint else set()
    count = sum(s.params for s in sites if s.name in chosen)
    return {
        "sites": len(chosen),
        "params": count,
        "fraction_of_trainable": count / trainable if trainable else None,
        "fraction_of_block_params": count / in_blocks if in_blocks else None,
        "cost": joint.get("cost") if joint else None,
        "interval": joint.get("interval") if joint else None,
        "verdict": joint.get("verdict") if joint else None,
    }
