"""Report of an ``analyze`` results directory: the study's geometry beside this model's.

Built from ``results.json`` alone (``deadzone.experiments.analyze``): the study's table of
attention PR and PC1 per layer side by side with this model's, the study's two geometry claims
judged on this model with the numbers behind them, and every matrix's geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deadzone import fileio
from deadzone.geometry.analysis import ATTN_IN_ROLES, ATTN_OUT_ROLE
from deadzone.report.table import Table, to_markdown

# The study's figures (DESIGN.md): layer -> (c_attn PR, c_proj PR, c_proj PC1 %).
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


@dataclass(frozen=True)
class GeometryClaim:
    """A claim of the study about the weights, its verdict here and the numbers behind it."""

    claim: str
    study: str
    verdict: str  # confirmed | refuted | undetermined
    numbers: str


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


def matrices_table(results: dict) -> Table:
    """Every analysed matrix: shape, PR, PC1 %, stable rank, amplitude PR."""
    rows = []
    for r in results["records"]:
        ok = r["finite"]
        rows.append(
            [
                r["site"],
                f"{r['shape'][0]}×{r['shape'][1]}",
                _num(r["pr"] if ok else None, ".1f"),
                DASH if not ok or r["pc1"] is None else f"{100 * r['pc1']:.1f}%",
                _num(r["stable_rank"] if ok else None, ".1f"),
                _num(r["amplitude_pr"] if ok else None, ".2f"),
            ]
        )
    columns = ["Matrix", "Shape", "PR", "PC1", "Stable rank", "Amplitude PR"]
    return Table(columns, rows, right=frozenset(range(1, 6)))


def _lower_claim(results: dict) -> GeometryClaim:
    claim = "Attention c_proj has a lower PR than c_attn"
    study = "lower in 5 of the 5 layers shown (L0, L3, L4, L6, L7)"
    cmp = results["summary"].get("attn_out_vs_in")
    if not cmp:
        return GeometryClaim(claim, study, "undetermined", "Here: no layer holds both matrices.")
    lower, layers = cmp["layers_out_lower"], cmp["layers"]
    verdict = "confirmed" if lower == layers else "undetermined"
    if 2 * lower < layers:
        verdict = "refuted"  # lower in fewer than half the layers
    numbers = (
        f"Here: lower in {lower} of {layers} layers; mean c_proj PR "
        f"{cmp['attn_out_mean_pr']:.1f} against c_attn PR {cmp['attn_in_mean_pr']:.1f}."
    )
    return GeometryClaim(claim, study, verdict, numbers)


def _amplitude_claim(results: dict, K: int = 8) -> GeometryClaim:
    site, amp, pr = STUDY_AMPLITUDE
    claim = "The amplitude PR of the attention output projections is far below their PR"
    study = f"{site}: amplitude PR {amp:.2f} against PR {pr:.1f}"
    outs = [
        r
        for r in results["records"]
        if r["role"] == ATTN_OUT_ROLE and r["finite"] and None not in (r["pr"], r["amplitude_pr"])
    ]
    if not outs:
        return GeometryClaim(claim, study, "undetermined", "Here: no attention output measured.")
    below = sum(r["amplitude_pr"] < FAR_BELOW * r["pr"] for r in outs)
    verdict = "confirmed" if below == len(outs) else "refuted" if below == 0 else "undetermined"
    shown = next((r for r in outs if r["site"] == site), outs[len(outs) // 2])
    numbers = (
        f"Here: {shown['site']} amplitude PR {shown['amplitude_pr']:.2f} against PR "
        f"{shown['pr']:.1f}; below a tenth of PR in {below} of {len(outs)} attention output "
        f"projections (amplitude PR is at most K = {K} by construction)."
    )
    return GeometryClaim(claim, study, verdict, numbers)


def claims(results: dict) -> list[GeometryClaim]:
    """The study's geometry claims, judged on this model."""
    return [_lower_claim(results), _amplitude_claim(results)]


def setup_text(results: dict) -> str:
    n = results["summary"]["sites"]
    return (
        f"Geometry of {n} weight matrices of `{results['model']}` (sites `{results['sites']}`, "
        f"fingerprint {results['model_info']['fingerprint'][:12]}); PR and PC1 of the "
        "row-centred matrix, amplitude PR over K = 8 Gaussians (definitions: DESIGN.md)."
    )


def markdown(results: dict) -> str:
    lines = [f"# Geometry of `{results['model']}`", "", setup_text(results), ""]
    lines += ["## The study's attention geometry beside this model's", ""]
    lines += [to_markdown(study_table(results)), ""]
    lines += ["## The study's claims, on this model", ""]
    for c in claims(results):
        lines.append(f"- **{c.claim}** — study: {c.study}. **{c.verdict}.** {c.numbers}")
    lines += ["", "![geometry](geometry.png)", "", "## Every matrix", ""]
    lines += [to_markdown(matrices_table(results)), ""]
    return "\n".join(lines)


def write_report(directory: str | Path, results: dict) -> Path:
    """``directory/report.md`` and its plot ``geometry.png``, from ``results``."""
    from deadzone.report.geometry import write_plot

    directory = Path(directory)
    write_plot(directory / "geometry.png", results["records"])
    path = directory / "report.md"
    fileio.write_text(path, markdown(results))
    return path
