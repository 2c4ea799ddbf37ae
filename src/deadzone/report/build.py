"""``deadzone report``: rebuild ``report.md`` and ``report.html`` from results files alone.

The one place that reads an experiment directory for a report: :func:`load_results` checks its
``results.json``, whose ``experiment`` key names a reporter in :data:`REPORTERS` (each lives
beside its experiment's ``report.md``: ``report.crystallize.html_report`` …). A reporter rewrites
the directory's ``report.md`` and plots and returns what the experiment puts on a page. Nothing
is recomputed: a reporter reads only the results file.

Every page opens with what to do next. The seed study's claims (:mod:`deadzone.study`) appear
only on a demo's pages and where asked for (``study=True``, ``deadzone report --study``), never
on a report of a user's own experiment by default.

Several directories also give one combined page: ``out``, by default ``report.html`` in the
directories' nearest common parent. Each section there says its model and data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deadzone import fileio
from deadzone import study as seed_study
from deadzone.errors import DeadzoneError
from deadzone.experiments.results import check_schema, read_results
from deadzone.report import analyze, crystallize, demo, freeze, plan, scan
from deadzone.report.html import Items, Page, Paragraph, Report, Section, write

RESULTS = "results.json"
HTML = "report.html"
NEXT = "What to do next"

Reporter = Callable[[Path, dict, bool], Report]


def demo_report(directory: Path, results: dict, study: bool = True) -> Report:
    """Report every stage of a demo (their own report.md and report.html too, with the study's
    claims: the demo is the study's); return the demo's page: the claims of all stages, the
    stages, then each stage's sections."""
    claims, sections, steps = [], [demo.stages_section(results)], []
    for stage in results["stages"]:
        if stage["directory"]:
            _, report = report_directory(directory / stage["directory"], study=True)
            claims += report.claims
            sections += report.sections
            steps += [f"{stage['title']}: {s}" for s in report.next_steps]
    claims += seed_study.skipped_claims(results)
    demo.write_markdown(directory, results, claims, steps)
    budget = results["budget"]
    title = f"deadzone demo on `{budget['model']}`"
    return Report(title, budget["model"], budget["data"], steps, sections, claims)


REPORTERS: dict[str, Reporter] = {
    "crystallize": crystallize.html_report,
    "analyze": analyze.html_report,
    "scan": scan.html_report,
    "freeze": freeze.html_report,
    "plan": plan.html_report,
    "demo": demo_report,
}


def load_results(directory: str | Path) -> dict:
    """``directory/results.json``, checked to be a results file this deadzone can report."""
    directory = Path(directory)
    if not directory.exists():
        raise DeadzoneError(f"{directory} does not exist")
    if not directory.is_dir():
        raise DeadzoneError(f"{directory} is not a directory")
    results = read_results(directory, schema=False)
    path = directory / RESULTS
    if results["experiment"] not in REPORTERS:
        raise DeadzoneError(
            f"{path} holds a {results['experiment']!r} experiment; this deadzone reports "
            f"{', '.join(REPORTERS)}"
        )
    check_schema(path, results)
    return results


def _where(report: Report) -> str:
    """``model `m`, data `d.jsonl``` (no data for an experiment that read none)."""
    return f"model `{report.model}`" + (f", data `{report.data}`" if report.data else "")


def _page(reports: list[tuple[Path, Report]], title: str, at: Path, with_study: bool) -> Page:
    """One page of ``reports``: what to do next, the study's claims (``with_study``), then each
    report's sections, the first saying which results file, model and data it comes from. The
    claims name the experiment they were judged on when the reports differ in model or data."""
    page = Page(title, study=with_study)
    models = {r.model for _, r in reports}
    several = len(models) > 1 or len({r.data for _, r in reports if r.data}) > 1
    nested = []
    for directory, report in reports:
        source = Path(os.path.relpath(directory / RESULTS, at.parent)).as_posix()
        said = f"From `{source}`: {_where(report)}."
        for i, section in enumerate(report.sections):
            blocks = [Paragraph(said), *section.blocks] if i == 0 else section.blocks
            page.sections.append(Section(section.title, blocks))
        for claim in report.claims:
            where = _where(report) if several else ""
            page.claims.append(dataclasses.replace(claim, where=where))
        if report.next_steps:
            nested.append(Section(report.title, [Items(report.next_steps)]))
    if len(reports) == 1 and nested:
        page.summary = [Section(NEXT, nested[0].blocks)]
    elif nested:
        page.summary = [Section(NEXT, nested)]
    return page


def report_directory(directory: str | Path, study: bool = False) -> tuple[Path, Report]:
    """Rebuild ``report.md`` and ``report.html`` in ``directory``; return the HTML path and the
    experiment's report, for a combined page. ``study``: the pages carry the seed study's
    claims that the experiment judges (a demo's always do)."""
    directory = Path(directory)
    results = load_results(directory)
    experiment = results["experiment"]
    with_study = study or experiment == "demo"
    try:
        report = REPORTERS[experiment](directory, results, with_study)
        if with_study and experiment != "demo":
            report.claims = seed_study.claims(experiment, results)
    except (KeyError, TypeError) as e:
        raise DeadzoneError(
            f"{directory / RESULTS} is not a complete {experiment} results file "
            f"(missing or malformed: {e})"
        ) from None
    page = _page([(directory, report)], report.title, directory / HTML, with_study)
    return write(page, directory / HTML), report


def write_reports(directory: str | Path, study: bool = False) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` of any experiment directory (what every
    experiment command does when it ends); return their paths."""
    html, _ = report_directory(directory, study)
    return html.with_name("report.md"), html


def combined_path(directories: list[Path], out: str | Path | None) -> Path:
    """Where the combined page of several directories goes: ``out``, else ``report.html`` in
    their nearest common parent, never over one of their own pages; checked to be writable."""
    own = {(d / HTML).resolve() for d in directories}
    if out is not None:
        path = Path(out)
        if path.is_dir():
            raise DeadzoneError(f"--out {out} is a directory; give a file, e.g. {path / HTML}")
        if path.resolve() in own:
            raise DeadzoneError(f"--out {out} is one of the experiments' own reports")
    else:
        path = Path(os.path.commonpath([d.resolve() for d in directories])) / HTML
        if path in own:
            raise DeadzoneError(
                f"{path.parent} is one of the directories and their common parent: give --out "
                "FILE for the combined report"
            )
        if (path.parent / RESULTS).is_file():  # a demo's stages: its page is not ours to replace
            raise DeadzoneError(
                f"{path.parent}, the directories' common parent, is an experiment directory with "
                "its own report: give --out FILE for the combined report"
            )
    fileio.ensure_dir(path.parent)
    return path


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def build(
    directories: list[str | Path], out: str | Path | None = None, study: bool = False
) -> Outcome:
    """Report every directory, then (for several) the combined page of those that worked. A bad
    directory is an error in ``Outcome.errors``; the others are still reported. ``study``: the
    pages carry the seed study's claims."""
    dirs = list(dict.fromkeys(Path(d) for d in directories))
    combined = combined_path(dirs, out) if len(dirs) > 1 or out is not None else None
    outcome, reports, with_study = Outcome(), [], study
    for directory in dirs:
        try:
            path, report = report_directory(directory, study)
        except DeadzoneError as e:
            outcome.errors.append(str(e))
            continue
        outcome.written += [directory / "report.md", path]
        reports.append((directory, report))
        with_study = with_study or bool(report.claims)  # a demo's
    if combined is not None and reports:
        title = f"deadzone report: {len(reports)} experiment(s)"
        outcome.written.append(write(_page(reports, title, combined, with_study), combined))
    return outcome
