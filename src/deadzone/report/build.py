"""``deadzone report``: rebuild ``report.md`` and ``report.html`` from results files alone.

Each experiment directory holds a ``results.json`` whose ``experiment`` key names a reporter
in :data:`REPORTERS`. A reporter rewrites the directory's ``report.md`` (and the plots it
shows) and returns what the experiment puts on an HTML page: its claims and sections. Nothing
is recomputed: a reporter reads only the results file.

Several directories also give one combined page: ``--out FILE``, by default ``report.html``
in the directories' nearest common parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.report import analyze as analyze_md
from deadzone.report import crystallize as crystallize_md
from deadzone.report import freeze as freeze_md
from deadzone.report.html import Claim, Image, Page, Paragraph, Section, Table, from_table, write
from deadzone.schema import SCHEMA_VERSION

# The newest results-file layout this deadzone reads. A file without ``schema_version`` is 1.
RESULTS = "results.json"
HTML = "report.html"


@dataclass
class Report:
    """What one experiment puts on a page: its claims and its sections."""

    title: str
    claims: list[Claim] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


Reporter = Callable[[Path, dict], Report]


# --- crystallize -------------------------------------------------------------------------------

STUDY_TARGET = "L4.attn.c_proj"
STUDY_LAYER = 4  # its block
STUDY_SETUP = "1 seed, 50 SFT steps"
NO_COST, BETTER = "costs nothing", "is better"
# The study's crystallize table: each strategy's final loss against full SFT on L4 c_proj, and
# the claim it drew from it (see DESIGN.md).
STUDY_CRYSTALLIZE = {
    "frozen": (-0.2, "Freezing L4 c_proj during SFT costs nothing", NO_COST),
    "crystal": (0.0, "L4 c_proj crystallized to rank 1 and frozen costs nothing", NO_COST),
    "random": (-1.6, "L4 c_proj re-drawn at random and frozen does better than full SFT", BETTER),
}
# Which comparison verdicts settle each kind of claim; any other leaves it undetermined.
CONFIRMS = {NO_COST: {"negligible", "better"}, BETTER: {"better"}}
REFUTES = {NO_COST: {"costly"}, BETTER: {"costly"}}


def crystallize_table(results: dict) -> Table:
    """The crystallize table model (``report.crystallize.table_model``) as an HTML table."""
    return from_table(crystallize_md.table_model(results))


def _claim_numbers(results: dict, arm: dict, where: str) -> str:
    unit = results["summary"]["unit"]
    cost = arm["cost"][unit] if arm.get("cost") else None
    if not cost or cost["mean"] is None:
        return f"Here{where}: no paired comparison ({arm['n']} seed(s) finished)."
    size = crystallize_md.cost_text(cost, unit)
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


def _provenance(results: dict) -> list[Paragraph]:
    """What wrote the results (versions, git revision) as a paragraph; none when unrecorded."""
    versions = results.get("versions", {})
    said = [f"{name} {versions[name]}" for name in sorted(versions)]
    git = results.get("git") or {}
    if git.get("revision"):
        said.append(f"git {git['revision'][:12]}" + (" (dirty)" if git.get("dirty") else ""))
    return [Paragraph("Written by " + ", ".join(said) + ".")] if said else []


def _figures(directory: Path, figures: tuple[tuple[str, str], ...]) -> list[Image]:
    """The ``(file name, alt text)`` figures that ``directory`` holds, as images."""
    return [Image(directory / name, alt) for name, alt in figures if (directory / name).is_file()]


def crystallize_report(directory: Path, results: dict) -> Report:
    """Rewrite ``report.md`` and its plots; return the crystallize section and claims."""
    crystallize_md.write_report(directory)
    targets = ", ".join(results["targets"])
    blocks: list = [Paragraph(crystallize_md.setup_text(results)), crystallize_table(results)]
    blocks.append(Paragraph(f"Conclusion. {crystallize_md.conclusion(results)}"))
    note = crystallize_md.shared_note(results).strip()
    if note:
        blocks.append(Paragraph(note))
    blocks += _figures(directory, (("curves.png", "loss curves"), ("verdicts.png", "verdicts")))
    blocks += _provenance(results)
    title = f"Crystallize {targets} of `{results['model']}`"
    return Report(title, crystallize_claims(results), [Section(title, blocks)])


# --- scan --------------------------------------------------------------------------------------

# The study's claims a scan judges (DESIGN.md): what it concluded from L4 c_proj's redundancy.
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
    ``not decided``."""
    verdicts, counts = _verdicts(summary, strategy), {}
    for name in names:
        verdict = verdicts.get(name, "not decided")
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
    from deadzone.report import scan as scan_md

    scope += f", up to {scan_md.seeds_read(results)} seeds, {results['steps']} steps"
    return Claim(*claim, verdict, f"Here: {said} Scanned: {scope}.")


def _effective_claim(results: dict) -> Claim:
    """Confirmed by a strategy whose jointly checked set is negligible and not empty (its
    parameters need not train); refuted when every scanned site is costly in every strategy."""
    from deadzone.report import scan as scan_md

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
        said = " ".join(scan_md.effective_text(summary, st) for st in found)
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


def scan_report(directory: Path, results: dict) -> Report:
    """Rewrite ``report.md``, ``heatmap.png`` and ``scores.png``; return the scan's section."""
    from deadzone.report import scan as scan_md
    from deadzone.report.table import Table as TableModel

    scan_md.write_report(directory)
    summary = results["summary"]
    blocks: list = [Paragraph(scan_md.statistics_text(results))]
    blocks += [Paragraph(scan_md.effective_text(summary, s)) for s in summary["strategies"]]
    blocks += _figures(directory, (("heatmap.png", "cost of each site"),))
    for strategy in summary["strategies"]:
        table = from_table(scan_md.sites_table(summary, strategy))
        blocks.append(Section(strategy, [table]))
    rows = [
        [score]
        + [
            _rho_cell(summary["strategies"][st].get("correlations", {}).get(score))
            for st in summary["strategies"]
        ]
        for score in summary["scores"]
    ]
    columns = ["Score", *(f"{st}: ρ (p, n)" for st in summary["strategies"])]
    blocks.append(from_table(TableModel(columns, rows)))
    if note := scan_md.rho_note(summary):
        blocks.append(Paragraph(note))
    blocks += _figures(directory, (("scores.png", "scores against costs"),))
    blocks += _provenance(results)
    title = f"Scan of `{results['model']}`"
    return Report(title, scan_claims(results), [Section(title, blocks)])


def _rho_cell(c: dict | None) -> str:
    if not c or c.get("rho") is None:
        return "—"
    return f"{c['rho']:+.2f} (p={c['p']:.2g}, n={c['n']})"


def analyze_report(directory: Path, results: dict) -> Report:
    """Rewrite ``report.md`` and ``geometry.png``; return the geometry section and claims."""
    analyze_md.write_report(directory, results)
    blocks: list = [Paragraph(analyze_md.setup_text(results))]
    blocks.append(from_table(analyze_md.study_table(results)))
    blocks.append(Image(directory / "geometry.png", "PR and PC1 per layer"))
    blocks.append(Section("Every matrix", [from_table(analyze_md.matrices_table(results))]))
    blocks += _provenance(results)
    claims = [Claim(c.claim, c.study, c.verdict, c.numbers) for c in analyze_md.claims(results)]
    title = f"Geometry of `{results['model']}`"
    return Report(title, claims, [Section(title, blocks)])


def demo_report(directory: Path, results: dict) -> Report:
    """Report every stage of a demo (their own report.md and report.html too); return the
    demo's page: the claims of all stages, the stages, then each stage's sections."""
    from deadzone.report import demo as demo_md

    claims, sections = [], [demo_md.stages_section(results)]
    for stage in results["stages"]:
        if stage["directory"]:
            _, report = report_directory(directory / stage["directory"])
            claims += report.claims
            sections += report.sections
    claims += demo_md.skipped_claims(results)
    demo_md.write_markdown(directory, results, claims)
    return Report(f"deadzone demo on `{results['budget']['model']}`", claims, sections)


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


def freeze_report(directory: Path, results: dict) -> Report:
    """Rewrite ``report.md`` and its plots; return the freeze section and claim."""
    freeze_md.write_report(directory)
    blocks: list = [from_table(freeze_md.table_model(results))]
    blocks.append(Paragraph(f"Conclusion. {freeze_md.conclusion(results)}"))
    blocks.append(Paragraph(freeze_md.EXPLAINED))
    blocks += _figures(
        directory, (("pareto.png", "saving against cost"), ("timeline.png", "timeline"))
    )
    blocks += _provenance(results)
    title = f"Freeze schedules on `{results['model']}`"
    return Report(title, freeze_claims(results), [Section(title, blocks)])


REPORTERS: dict[str, Reporter] = {
    "crystallize": crystallize_report,
    "analyze": analyze_report,
    "scan": scan_report,
    "freeze": freeze_report,
    "demo": demo_report,
}


# --- reading results and writing pages ---------------------------------------------------------


def load_results(directory: str | Path) -> dict:
    """``directory/results.json``, checked to be a results file this deadzone can report."""
    directory = Path(directory)
    path = directory / RESULTS
    if not directory.exists():
        raise DeadzoneError(f"{directory} does not exist")
    if not directory.is_dir():
        raise DeadzoneError(f"{directory} is not a directory")
    if not path.is_file():
        raise DeadzoneError(f"{directory} has no {RESULTS}: not an experiment directory")
    try:
        results = fileio.read_json(path)
    except OSError as e:
        raise DeadzoneError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DeadzoneError(f"{path} is not valid JSON (truncated?): {e}") from None
    if not isinstance(results, dict) or not isinstance(results.get("experiment"), str):
        raise DeadzoneError(f"{path} is not a deadzone results file (no 'experiment' key)")
    version = results.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DeadzoneError(f"{path} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise DeadzoneError(
            f"{path} has schema_version {version}, newer than this deadzone reads "
            f"(up to {SCHEMA_VERSION}): upgrade deadzone"
        )
    if results["experiment"] not in REPORTERS:
        raise DeadzoneError(
            f"{path} holds a {results['experiment']!r} experiment; this deadzone reports "
            f"{', '.join(REPORTERS)}"
        )
    return results


def _page(reports: list[tuple[Path, Report]], title: str, at: Path) -> Page:
    """One page of ``reports``; each section says which results file it comes from."""
    page = Page(title)
    for directory, report in reports:
        source = Path(os.path.relpath(directory / RESULTS, at.parent)).as_posix()
        page.claims += report.claims
        for i, section in enumerate(report.sections):
            blocks = [Paragraph(f"From `{source}`."), *section.blocks] if i == 0 else section.blocks
            page.sections.append(Section(section.title, blocks))
    return page


def report_directory(directory: str | Path) -> tuple[Path, Report]:
    """Rebuild ``report.md`` and ``report.html`` in ``directory``; return the HTML path and the
    experiment's report, for a combined page."""
    directory = Path(directory)
    results = load_results(directory)
    try:
        report = REPORTERS[results["experiment"]](directory, results)
    except (KeyError, TypeError) as e:
        raise DeadzoneError(
            f"{directory / RESULTS} is not a complete {results['experiment']} results file "
            f"(missing or malformed: {e})"
        ) from None
    path = write(_page([(directory, report)], report.title, directory / HTML), directory / HTML)
    return path, report


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
    fileio.ensure_dir(path.parent)
    return path


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def build(directories: list[str | Path], out: str | Path | None = None) -> Outcome:
    """Report every directory, then (for several) the combined page of those that worked. A bad
    directory is an error in ``Outcome.errors``; the others are still reported."""
    dirs = list(dict.fromkeys(Path(d) for d in directories))
    combined = combined_path(dirs, out) if len(dirs) > 1 or out is not None else None
    outcome, reports = Outcome(), []
    for directory in dirs:
        try:
            path, report = report_directory(directory)
        except DeadzoneError as e:
            outcome.errors.append(str(e))
            continue
        outcome.written += [directory / "report.md", path]
        reports.append((directory, report))
    if combined is not None and reports:
        title = f"deadzone report: {len(reports)} experiment(s)"
        outcome.written.append(write(_page(reports, title, combined), combined))
    return outcome
