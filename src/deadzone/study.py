"""The seed study: its tables and the claims it drew, judged on the numbers of an experiment.

An 8-layer, 10.2M-parameter GPT found layer-4 attention ``c_proj`` redundant during SFT (one
seed per strategy, 50 steps), its attention matrices' geometry, and conjectured that a model
tolerates 25–50% of its matrices frozen. This module holds those figures and, for each kind of
experiment, judges the study's claims on an experiment's ``results.json``.

The study's claims belong to the demo and to an explicit opt-in (``deadzone report --study``):
a report of a user's own experiment never opens with them (:func:`claims` is called only then).
"""

from __future__ import annotations

from deadzone.geometry.analysis import ATTN_IN_ROLES, ATTN_OUT_ROLE
from deadzone.report.crystallize import cost_text
from deadzone.report.html import Claim
from deadzone.report.scan import effective_text, seeds_read
from deadzone.report.table import Table

# --- crystallize -------------------------------------------------------------------------------

STUDY_TARGET = "L4.attn.c_proj"
STUDY_LAYER = 4  # its block
STUDY_SETUP = "1 seed, 50 SFT steps"
NO_COST, BETTER = "costs nothing", "is better"
# The study's crystallize table: each strategy's final loss against full SFT on L4 c_proj, and
# the claim it drew from it.
STUDY_CRYSTALLIZE = {
    "frozen": (-0.2, "Freezing L4 c_proj during SFT costs nothing", NO_COST),
    "crystal": (0.0, "L4 c_proj crystallized to rank 1 and frozen costs nothing", NO_COST),
    "random": (-1.6, "L4 c_proj re-drawn at random and frozen does better than full SFT", BETTER),
}
# Which comparison verdicts settle each kind of claim; any other leaves it undetermined.
CONFIRMS = {NO_COST: {"negligible", "better"}, BETTER: {"better"}}
REFUTES = {NO_COST: {"costly"}, BETTER: {"costly"}}


def _claim_numbers(results: dict, arm: dict, where: str) -> str:
    unit = results["summary"]["unit"]
    cost = arm["cost"][unit] if arm.get("cost") else None
    if not cost or cost["mean"] is None:
        return f"Here{where}: no paired comparison ({arm['n']} seed(s) finished)."
    size = cost_text(cost, unit)
    numbers = f"Here{where}: {arm['verdict']}, {size}, {arm['n']} seeds, {results['steps']} steps."
    if arm["verdict"] == "undetermined" and arm.get("seeds_needed"):
        numbers += f" About {arm['seeds_needed']:,} seeds would decide."
    if arm["strategy"] == "crystal" and arm.get("rank") != 1:
        numbers += f" Tested at rank {arm['rank']}."
    return numbers


def _judge_claim(kind: str, arm: dict, unit: str) -> str:
    """confirmed, refuted or undetermined; a claim of "better" is also refuted by an interval
    wholly above zero, even one below the margin."""
    verdict = arm["verdict"]
    if verdict in CONFIRMS[kind]:
        return "confirmed"
    interval = (arm.get("cost") or {}).get(unit, {}).get("adjusted")
    if verdict in REFUTES[kind] or (kind == BETTER and interval and interval[0] > 0):
        return "refuted"
    return "undetermined"


def crystallize_claims(results: dict) -> list[Claim]:
    """The study's crystallize claims that this experiment tested, each with its verdict."""
    where = "" if results["targets"] == [STUDY_TARGET] else f" on {', '.join(results['targets'])}"
    claims = []
    arms = results["summary"]["arms"]
    for arm in arms:
        if arm["strategy"] not in STUDY_CRYSTALLIZE:
            continue
        if arm["strategy"] == "crystal" and arm.get("rank") != min(
            a["rank"] for a in arms if a["strategy"] == "crystal"
        ):
            continue  # the study's claim is about its lowest rank
        found, claim, kind = STUDY_CRYSTALLIZE[arm["strategy"]]
        judged = _judge_claim(kind, arm, results["summary"]["unit"])
        study = f"{found:+.1f}% final loss vs full ({STUDY_SETUP})"
        claims.append(Claim(claim, study, judged, _claim_numbers(results, arm, where)))
    return claims


# --- scan --------------------------------------------------------------------------------------

# The study's claims a scan judges: what it concluded from L4 c_proj's redundancy.
STUDY_EFFECTIVE = (
    "The model's effective parameter count is lower than its trainable count",
    "concluded from one matrix's redundancy (no scan)",
)
STUDY_OTHERS = (
    "If L4 c_proj is redundant, other layers may be too",
    "conjectured from L4 c_proj alone (no other matrix tested)",
)
STUDY_SCAN = (STUDY_EFFECTIVE, STUDY_OTHERS)
REDUNDANT = ("negligible", "better")


def _verdicts(summary: dict, strategy: str) -> dict[str, str]:
    return {s["site"]: s["verdict"] for s in summary["strategies"][strategy]["sites"]}


def _counts(summary: dict, strategy: str, names: list[str]) -> str:
    """``frozen: 2 negligible, 1 costly`` over ``names``; a site without a verdict is
    ``not decided``, a site the scan labelled by its prior and did not run ``likely costly
    (prior, not run)``."""
    sites, counts = {s["site"]: s for s in summary["strategies"][strategy]["sites"]}, {}
    for name in names:
        site = sites.get(name)
        verdict = "not decided" if site is None else site["verdict"]
        if site is not None and site.get("label"):
            verdict = f"{site['label']} (prior, not run)"
        counts[verdict] = counts.get(verdict, 0) + 1
    return f"{strategy}: " + ", ".join(f"{n} {v}" for v, n in counts.items())


def _all_costly(summary: dict, strategy: str, names: list[str]) -> bool:
    verdicts = _verdicts(summary, strategy)
    return bool(names) and all(verdicts.get(n) == "costly" for n in names)


def _here(claim: tuple[str, str], verdict: str, said: str, results: dict) -> Claim:
    """A scan claim whose numbers are ``said`` and what the scan covered: ``Scanned: 4 site(s)
    in block(s) L1 (48.4% of the block parameters), up to 2 seeds, 3 steps.``"""
    by_name = {
        s["site"]: s for st in results["summary"]["strategies"].values() for s in st["sites"]
    }
    known = [by_name[n] for n in results["sites"] if n in by_name]
    blocks = sorted({s["layer"] for s in known if s["layer"] is not None})
    scope = f"{len(results['sites'])} site(s)"
    if blocks:
        scope += " in block(s) " + ", ".join(f"L{b}" for b in blocks)
    in_blocks = results["model_info"].get("block_params")
    if in_blocks and len(known) == len(results["sites"]):
        share = sum(s["params"] for s in known) / in_blocks
        scope += f" ({100 * share:.1f}% of the block parameters)"
    scope += f", up to {seeds_read(results)} seeds, {results['steps']} steps"
    return Claim(*claim, verdict, f"Here: {said} Scanned: {scope}.")


def _effective_claim(results: dict) -> Claim:
    """Confirmed by a strategy whose jointly checked set is negligible and not empty (its
    parameters need not train); refuted when every scanned site is costly in every strategy."""
    summary, names = results["summary"], results["sites"]
    strategies = list(summary["strategies"])
    found = [
        st
        for st in strategies
        if summary["effective"][st]["sites"] and summary["effective"][st]["verdict"] in REDUNDANT
    ]
    if found:
        joints = [summary["strategies"][st].get("joint") or {} for st in found]
        seeds = sorted({j["seeds"] for j in joints if j.get("seeds")})
        said = " ".join(effective_text(summary, st) for st in found)
        checked = f" Joint check on {', '.join(map(str, seeds))} seeds." if seeds else ""
        return _here(STUDY_EFFECTIVE, "confirmed", said + checked, results)
    counts = "; ".join(_counts(summary, st, names) for st in strategies)
    if all(_all_costly(summary, st, names) for st in strategies):
        said = f"every site scanned is costly, so none can be frozen ({counts})."
        return _here(STUDY_EFFECTIVE, "refuted", said, results)
    why = "no set of sites was found jointly negligible"
    if not summary.get("complete", True):
        why += " and the scan is not complete"
    return _here(STUDY_EFFECTIVE, "undetermined", f"{why} ({counts}).", results)


def _others_claim(results: dict) -> Claim:
    """Judged by ``frozen`` on the sites of blocks other than L4: confirmed when one of them is
    negligible, refuted when every one scanned is costly (the numbers say how many)."""
    summary = results["summary"]
    if "frozen" not in summary["strategies"]:
        return _here(STUDY_OTHERS, "undetermined", "frozen was not scanned.", results)
    layer = {s["site"]: s["layer"] for s in summary["strategies"]["frozen"]["sites"]}
    others = [n for n in results["sites"] if layer.get(n) not in (None, STUDY_LAYER)]
    if not others:
        said = f"the scan covered no block but L{STUDY_LAYER}."
        return _here(STUDY_OTHERS, "undetermined", said, results)
    verdicts = _verdicts(summary, "frozen")
    redundant = [n for n in others if verdicts.get(n) in REDUNDANT]
    counts = _counts(summary, "frozen", others)
    said = f"of the {len(others)} site(s) in blocks other than L{STUDY_LAYER}, {counts}."
    if redundant:
        listed = ", ".join(redundant[:5]) + (", …" if len(redundant) > 5 else "")
        return _here(STUDY_OTHERS, "confirmed", f"{said} Redundant: {listed}.", results)
    judged = "refuted" if _all_costly(summary, "frozen", others) else "undetermined"
    return _here(STUDY_OTHERS, judged, said, results)


def scan_claims(results: dict) -> list[Claim]:
    """The study's scan claims, each with its verdict here and the numbers behind it."""
    return [_effective_claim(results), _others_claim(results)]


# --- freeze ------------------------------------------------------------------------------------

STUDY_FREEZE = (
    "The model tolerates 25–50% of its weight matrices frozen progressively during SFT",
    "a proposal of the study, not measured there",
)


def freeze_claims(results: dict) -> list[Claim]:
    """The study's proposal, judged by the schedules other than full and the random control:
    confirmed if one is negligible (or better), refuted if all are costly."""
    arms = [a for a in results["summary"]["arms"] if a["schedule"] not in ("full", "random")]
    if not arms or not 0.25 <= results["target_fraction"] <= 0.5:
        return []
    verdicts = {a["verdict"] for a in arms}
    if verdicts & {"negligible", "better"}:
        judged = "confirmed"
    elif verdicts == {"costly"}:
        judged = "refuted"
    else:
        judged = "undetermined"
    share = f"{100 * results['target_fraction']:.0f}%"
    said = "; ".join(f"{a['schedule']} {a['verdict']}" for a in arms)
    numbers = (
        f"Here: {share} of the block-matrix parameters frozen, {len(results['seeds'])} seeds, "
        f"{results['steps']} steps: {said}."
    )
    return [Claim(STUDY_FREEZE[0], STUDY_FREEZE[1], judged, numbers)]


# --- analyze -----------------------------------------------------------------------------------

# The study's figures: layer -> (c_attn PR, c_proj PR, c_proj PC1 %).
STUDY_GEOMETRY = {
    0: (202.7, 145.3, 12.0),
    3: (198.6, 75.8, 21.7),
    4: (196.8, 84.5, 22.4),
    6: (205.4, 86.6, 29.6),
    7: (205.9, 94.9, 36.6),
}
STUDY_AMPLITUDE = ("L4.attn.c_proj", 1.03, 84.5)  # site, amplitude PR, PR
FAR_BELOW = 0.1  # "far below": under a tenth
DASH = "—"


def _by_layer(records: list[dict], roles: tuple[str, ...]) -> dict[int, dict]:
    found = {}
    for r in records:
        if r["role"] in roles and r["layer"] is not None and r["finite"]:
            found.setdefault(r["layer"], r)
    return found


def _num(value: float | None, fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


def study_table(results: dict) -> Table:
    """Per layer (the study's and this model's): c_attn PR, c_proj PR, c_proj PC1 %, the study's
    figure beside this model's."""
    records = results["records"]
    attn_in, attn_out = _by_layer(records, ATTN_IN_ROLES), _by_layer(records, (ATTN_OUT_ROLE,))
    rows = []
    for layer in sorted(set(STUDY_GEOMETRY) | set(attn_in) | set(attn_out)):
        study = STUDY_GEOMETRY.get(layer)
        here_in, here_out = attn_in.get(layer, {}), attn_out.get(layer, {})
        pc1 = here_out.get("pc1")
        rows.append(
            [
                f"L{layer}",
                DASH if study is None else f"{study[0]:.1f}",
                _num(here_in.get("pr"), ".1f"),
                DASH if study is None else f"{study[1]:.1f}",
                _num(here_out.get("pr"), ".1f"),
                DASH if study is None else f"{study[2]:.1f}%",
                DASH if pc1 is None else f"{100 * pc1:.1f}%",
            ]
        )
    columns = [
        "Layer", "c_attn PR (study)", "c_attn PR (here)", "c_proj PR (study)",
        "c_proj PR (here)", "c_proj PC1 (study)", "c_proj PC1 (here)",
    ]  # fmt: skip
    return Table(columns, rows, right=frozenset(range(1, 7)))


def _lower_claim(results: dict) -> Claim:
    claim = "Attention c_proj has a lower PR than c_attn"
    study = "lower in 5 of the 5 layers shown (L0, L3, L4, L6, L7)"
    cmp = results["summary"].get("attn_out_vs_in")
    if not cmp:
        return Claim(claim, study, "undetermined", "Here: no layer holds both matrices.")
    lower, layers = cmp["layers_out_lower"], cmp["layers"]
    verdict = "confirmed" if lower == layers else "undetermined"
    if 2 * lower < layers:
        verdict = "refuted"  # lower in fewer than half the layers
    numbers = (
        f"Here: lower in {lower} of {layers} layers; mean c_proj PR "
        f"{cmp['attn_out_mean_pr']:.1f} against c_attn PR {cmp['attn_in_mean_pr']:.1f}."
    )
    return Claim(claim, study, verdict, numbers)


def _amplitude_claim(results: dict, K: int = 8) -> Claim:
    site, amp, pr = STUDY_AMPLITUDE
    claim = "The amplitude PR of the attention output projections is far below their PR"
    study = f"{site}: amplitude PR {amp:.2f} against PR {pr:.1f}"
    outs = [
        r
        for r in results["records"]
        if r["role"] == ATTN_OUT_ROLE and r["finite"] and None not in (r["pr"], r["amplitude_pr"])
    ]
    if not outs:
        return Claim(claim, study, "undetermined", "Here: no attention output measured.")
    below = sum(r["amplitude_pr"] < FAR_BELOW * r["pr"] for r in outs)
    verdict = "confirmed" if below == len(outs) else "refuted" if below == 0 else "undetermined"
    shown = next((r for r in outs if r["site"] == site), outs[len(outs) // 2])
    numbers = (
        f"Here: {shown['site']} amplitude PR {shown['amplitude_pr']:.2f} against PR "
        f"{shown['pr']:.1f}; below a tenth of PR in {below} of {len(outs)} attention output "
        f"projections (amplitude PR is at most K = {K} by construction)."
    )
    return Claim(claim, study, verdict, numbers)


def geometry_claims(results: dict) -> list[Claim]:
    """The study's geometry claims, judged on this model."""
    return [_lower_claim(results), _amplitude_claim(results)]


# --- a demo's skipped stages -------------------------------------------------------------------

# The study's claims a skipped stage would have judged: the same claims its experiment judges
# when the stage runs.
STAGE_CLAIMS = {"scan": STUDY_SCAN, "freeze": (STUDY_FREEZE,)}


def skipped_claims(results: dict) -> list[Claim]:
    """The claims of the stages a demo skipped, undetermined, with the reason."""
    claims = []
    for s in results["stages"]:
        kind = s["name"].partition("-")[0]  # freeze-25, freeze-50: freeze
        if s["status"] == "skipped" and kind in STAGE_CLAIMS:
            for claim, study in STAGE_CLAIMS[kind]:
                claims.append(Claim(claim, study, "undetermined", f"Not run here: {s['note']}."))
    return claims


CLAIMS = {
    "crystallize": crystallize_claims,
    "scan": scan_claims,
    "freeze": freeze_claims,
    "analyze": geometry_claims,
}


def claims(experiment: str, results: dict) -> list[Claim]:
    """The study's claims that an ``experiment``'s results judge (none for other kinds)."""
    judge = CLAIMS.get(experiment)
    return judge(results) if judge else []
