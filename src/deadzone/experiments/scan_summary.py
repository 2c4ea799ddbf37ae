"""What a scan writes of each strategy, from its search record: the sites with their verdicts,
Spearman's ρ of each cheap score against the single-site costs, the effective counts of the
joint set, and the other sites by cost for the plan's ``order``; and the cheap scores
themselves (:func:`cheap_scores`). Plain data in, plain data out, except the scores, which
measure the model."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable

from deadzone.errors import DeadzoneError
from deadzone.experiments import search as search_mod
from deadzone.experiments.runs import RunInputs
from deadzone.geometry.scores import spearman_permutation
from deadzone.models import sites as sites_mod
from deadzone.models.sites import Site

log = logging.getLogger(__name__)

# Permutations behind each rho's p-value.
PERMUTATIONS = 9999
_IN_BLOCK = re.compile(r"^(?:[A-Za-z_]\w*\.)+?\d+\.")


def cost_order(record: dict, names: list[str]) -> list[str]:
    """The sites of ``names`` that a search record judged and its joint set left out, by
    increasing single-site cost (:func:`deadzone.experiments.search.single_cost`), ties by name,
    sites without a cost last: a plan's ``order``."""
    joint = set(record["joint"]["sites"]) if record["joint"] else set()

    def key(name: str) -> tuple:
        cost = search_mod.single_cost(record["sites"][name])
        return (cost is None, cost or 0.0, name)

    rest = [n for n in names if n in record["sites"] and n not in joint]
    return sorted(rest, key=key)


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
                "level": r.get("level"),
                "search_verdict": r.get("search_verdict"),
                "single": r["group_size"] == 1 and r["seeds"] > 0,
                "prior": r.get("prior"),
                "label": r.get("label"),
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


def cheap_scores(model, sites: list[Site], inputs: RunInputs) -> dict[str, dict]:
    """``{score: {site: value}}``: every ``analyze`` metric (``snr`` among them), the step-0
    gradient norm on a few training batches of seed 0, and the sub-layer Block Influence on the
    eval batches (left out, with a warning, for a model it is not defined for)."""
    from deadzone.geometry.analysis import analyze
    from deadzone.geometry.scores import GRAD_BATCHES, ScoreData, block_influence, geometry_scores
    from deadzone.geometry.scores import grad_norm as grad_norm_score

    records = analyze(
        ((s, sites_mod.site_matrix(model, s)) for s in sites), total=len(sites), progress=False
    )
    scores = geometry_scores(records)
    data = ScoreData(list(itertools.islice(inputs.train_data(0), GRAD_BATCHES)), inputs.eval)
    scores["grad_norm"] = grad_norm_score(model, sites, data)
    try:
        scores["block_influence"] = block_influence(model, sites, data)
    except DeadzoneError as e:
        log.warning("block_influence left out: %s", e)
    return scores


# --- the prior mode: scores read from the baselines' attribution records -----------------------

# The score whose value is each strategy's prior. ``frozen``: the attribution (a site's own
# updates' share of the eval-loss decrease: what freezing it forgoes, before the rest of the
# network compensates). ``random``, ``zero``, ``crystal`` replace the pretrained values, which
# the attribution does not see: |grad . weight| (the first-order change of the training loss if
# the matrix were zeroed, nats per step) over the gain.
PRIOR_SCORE = {"frozen": "attribution", "random": "grad_weight", "zero": "grad_weight",
               "crystal": "grad_weight"}  # fmt: skip


def run_scores(model, sites: list[Site], records: list[dict]) -> dict[str, dict]:
    """``{score: {site: value}}`` of the scores read from the baselines' attribution
    ``records`` (attribution, fisher, grad_weight, each the mean over the records); a score
    that cannot be read (a run that did not lower its eval loss) is left out, with a warning."""
    from deadzone.geometry.attribution import AttributionRecord
    from deadzone.geometry.scores import RUN_SCORES, SCORES, ScoreData

    data = ScoreData(runs=[AttributionRecord.from_dict(r) for r in records])
    out = {}
    for name in RUN_SCORES:
        try:
            out[name] = SCORES[name](model, sites, data)
        except DeadzoneError as e:
            log.warning("%s left out: %s", name, e)
    return out


def priors(strategy: str, scores: dict[str, dict], scale: dict) -> dict[str, float | None]:
    """Each site's prior cost in ``strategy``, in the units of the scan's margin: the score of
    :data:`PRIOR_SCORE` as a share of the gain (the attribution is one already), or in nats
    when the scan's unit is nats. ``{}`` when the score could not be read."""
    name = PRIOR_SCORE[strategy]
    values = scores.get(name)
    if values is None:
        return {}
    gains = [float(g) for g in scale["gains"].values()]
    gain = sum(gains) / len(gains)
    if name == "attribution":  # a share of the decrease: in nats, times the gain
        factor = gain if scale["unit"] == "nats" else 1.0
    else:  # nats: as a share, over the gain
        factor = 1.0 if scale["unit"] == "nats" else 1.0 / gain
    return {n: None if v is None else v * factor for n, v in values.items()}


def attribution_cost(runs: dict[str, dict], seeds: int) -> dict:
    """What recording the attribution cost the baselines (mean share of a run's seconds) and
    the Simpson rule's relative residual (mean over the baselines)."""
    from deadzone.geometry.attribution import AttributionRecord, residuals

    shares, errors = [], []
    for s in range(seeds):
        run = runs[f"full/seed{s}"]
        record = AttributionRecord.from_dict(run["attribution"])
        shares.append(record.cost_fraction(run.get("seconds") or 0.0))
        errors.append(residuals(record).relative)
    first = runs["full/seed0"]["attribution"]
    return {
        "every": first["every"],
        "eval_batches": first["eval_batches"],
        "rule": first["rule"],
        "cost_fraction": sum(shares) / len(shares),
        "relative_residual": sum(errors) / len(errors),
    }
