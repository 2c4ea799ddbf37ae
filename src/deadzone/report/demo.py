"""Report of a demo directory: the study's claims from every stage, the stages, their sections.

Built from ``DIR/results.json`` (``experiment: "demo"``) and the stages' own results files,
each reported by its experiment's reporter (``report.build`` runs them and calls the pieces
here): nothing is recomputed. Stages the demo skipped appear with the reason, and the study's
claims they would have judged stay undetermined (``study.skipped_claims``).
"""

from __future__ import annotations

from pathlib import Path

from deadzone import fileio
from deadzone.report.html import Claim, Paragraph, Section, from_table
from deadzone.report.table import Table as TableModel
from deadzone.report.table import to_markdown


def stage_table(results: dict) -> TableModel:
    rows = []
    for s in results["stages"]:
        where = f"{s['directory']}/" if s["directory"] else "—"
        seconds = f"{s['seconds']:.0f} s"
        runs = f", {s['runs']} SFT run(s)" if s["runs"] else ""
        rows.append([s["title"], s["what"], f"{s['status']}{runs}", seconds, where, s["note"]])
    columns = ["Stage", "What it runs", "Status", "Time", "Directory", "Note"]
    return TableModel(columns, rows, right=frozenset({3}))


def summary_text(results: dict) -> str:
    total = results.get("seconds")
    took = f" in {total:.0f} s" if total is not None else " (unfinished)"
    budget = results["budget"]
    return (
        f"`deadzone demo` ({budget['name']} budget) on `{budget['model']}` and "
        f"`{budget['data']}`{took}. {budget['cut']}"
    )


def markdown(results: dict, claims: list[Claim], steps: list[str] = ()) -> str:
    lines = ["# deadzone demo", "", summary_text(results), ""]
    if steps:
        lines += ["## What to do next", "", *(f"- {s}" for s in steps), ""]
    lines += ["## The study's claims", ""]
    claims_model = TableModel(
        ["Claim", "The study", "On this model", "The numbers"],
        [[c.claim, c.study, f"**{c.verdict}**", c.numbers] for c in claims],
    )
    lines += [to_markdown(claims_model), "", "## Stages", "", to_markdown(stage_table(results))]
    lines += ["", "Each stage's own report:", ""]
    for s in results["stages"]:
        if s["directory"]:
            lines.append(f"- [{s['title']}]({s['directory']}/report.md)")
    return "\n".join(lines) + "\n"


def stages_section(results: dict) -> Section:
    blocks = [Paragraph(summary_text(results)), from_table(stage_table(results))]
    return Section("The demo's stages", blocks)


def write_markdown(
    directory: Path, results: dict, claims: list[Claim], steps: list[str] = ()
) -> Path:
    path = directory / "report.md"
    fileio.write_text(path, markdown(results, claims, steps))
    return path
