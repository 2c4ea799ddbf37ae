"""Report of an ``analyze`` results directory: every matrix's geometry, and, asked for, the
study's beside it.

Built from ``results.json`` alone (``deadzone.experiments.analyze``). Geometry is a prior, not
a verdict: the report says which experiment would test it. With ``study``, the study's table of
attention PR and PC1 per layer beside this model's and its two geometry claims judged here
(:mod:`deadzone.study`).
"""

from __future__ import annotations

from pathlib import Path

from deadzone import fileio
from deadzone.report import html
from deadzone.report.table import Table, to_markdown

DASH = "—"


def _num(value: float | None, fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


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


def setup_text(results: dict) -> str:
    n = results["summary"]["sites"]
    return (
        f"Geometry of {n} weight matrices of `{results['model']}` (sites `{results['sites']}`, "
        f"fingerprint {results['model_info']['fingerprint'][:12]}); PR and PC1 of the "
        "row-centred matrix, amplitude PR over K = 8 Gaussians (definitions: docs/definitions.md)."
    )


def next_steps(results: dict) -> list[str]:
    """What to do next, in plain sentences: geometry ranks matrices, it decides nothing."""
    model = results["model"]
    return [
        "Nothing to freeze yet: geometry is a cheap prior, not a verdict on any matrix.",
        f"Next, test the matrices causally: `deadzone scan {model} --out DIR` (a freeze plan "
        f"with its joint cost), or one matrix: `deadzone crystallize {model} --target SITE "
        "--out DIR`.",
    ]


def markdown(results: dict, study: bool = False) -> str:
    lines = [f"# Geometry of `{results['model']}`", "", "## What to do next", ""]
    lines += [*(f"- {s}" for s in next_steps(results)), "", setup_text(results), ""]
    if study:
        from deadzone import study as seed_study

        lines += ["## The study's attention geometry beside this model's", ""]
        lines += [to_markdown(seed_study.study_table(results)), ""]
        lines += ["## The study's claims, on this model", ""]
        for c in seed_study.geometry_claims(results):
            lines.append(f"- **{c.claim}** — study: {c.study}. **{c.verdict}.** {c.numbers}")
        lines.append("")
    lines += ["![geometry](geometry.png)", "", "## Every matrix", ""]
    lines += [to_markdown(matrices_table(results)), ""]
    return "\n".join(lines)


def write_report(directory: str | Path, results: dict, study: bool = False) -> Path:
    """``directory/report.md`` and its plot ``geometry.png``, from ``results``."""
    from deadzone.report.geometry import write_plot

    directory = Path(directory)
    write_plot(directory / "geometry.png", results["records"])
    path = directory / "report.md"
    fileio.write_text(path, markdown(results, study))
    return path


def html_report(directory: Path, results: dict, study: bool = False) -> html.Report:
    """Rewrite ``report.md`` and ``geometry.png``; return the geometry section for a page, the
    study's table beside this model's when ``study``."""
    write_report(directory, results, study)
    blocks: list = [html.Paragraph(setup_text(results))]
    if study:
        from deadzone.study import study_table

        blocks.append(html.from_table(study_table(results)))
    blocks.append(html.Image(directory / "geometry.png", "PR and PC1 per layer"))
    blocks.append(html.Section("Every matrix", [html.from_table(matrices_table(results))]))
    blocks += html.provenance(results)
    title = f"Geometry of `{results['model']}`"
    return html.Report(title, results["model"], "", next_steps(results),
                       [html.Section(title, blocks)])  # fmt: skip
