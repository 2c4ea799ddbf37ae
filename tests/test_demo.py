"""deadzone demo --quick end to end: every stage's files, both reports, resume, bad --out, and
the demo's report.html in headless Chromium."""

from __future__ import annotations

import json
import time
from html import escape

import pytest

from deadzone import fileio
from deadzone.cli import main
from deadzone.study import STUDY_SCAN

pytestmark = pytest.mark.e2e  # the quick demo, end to end

STAGE_FILES = {
    "analyze": ["results.json", "geometry.json", "geometry.csv", "geometry.png", "report.md",
                "report.html"],
    "crystallize": ["results.json", "report.md", "report.html", "curves.png", "verdicts.png"],
    "scan": ["results.json", "report.md", "report.html", "heatmap.png", "plan.json",
             "axolotl.yaml", "frozen_parameters.txt"],
    "freeze-25": ["results.json", "report.md", "report.html", "pareto.png"],
    "freeze-50": ["results.json", "report.md", "report.html", "pareto.png"],
}  # fmt: skip
STAGES = ["pretrain", "analyze", "crystallize", "scan", "freeze-25", "freeze-50"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick demo run twice into one directory: (directory, first and second outputs)."""
    out = tmp_path_factory.mktemp("demo") / "d"
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        assert main(["demo", "--quick", "--out", str(out)]) == 0
        seconds = time.perf_counter() - t0
        runs.append((seconds, fileio.read_json(out / "results.json"), snapshot(out)))
    return out, runs


def snapshot(out) -> dict:
    runs = {
        d: {r["key"]: r for r in fileio.read_json(out / d / "results.json")["runs"]}
        for d in STAGES[2:]
    }
    return {"runs": runs, "html": (out / "report.html").read_bytes()}


def test_quick_demo_writes_every_stages_files_and_both_reports(demo):
    out, [(_, results, _), _] = demo
    for stage, files in STAGE_FILES.items():
        for name in files:
            path = out / stage / name
            empty = name == "frozen_parameters.txt"  # empty when no site is jointly negligible
            assert path.is_file() and (empty or path.stat().st_size), name
    assert results["experiment"] == "demo" and results["budget"]["name"] == "quick"
    by = {s["name"]: s for s in results["stages"]}
    assert list(by) == STAGES
    assert by["analyze"]["directory"] == "analyze" and by["crystallize"]["runs"] == 8
    assert all(by[name]["status"] == "ran" for name in STAGES[1:])
    assert all(by[name]["directory"] == name for name in STAGES[1:])
    crystallized = fileio.read_json(out / "crystallize" / "results.json")
    assert crystallized["targets"] == ["L1.attn.c_proj"] and crystallized["seeds"] == [0, 1]
    assert all(r["status"] == "ok" for r in crystallized["runs"])
    assert fileio.read_json(out / "analyze" / "results.json")["experiment"] == "analyze"

    html = (out / "report.html").read_text()
    assert (
        '<section id="claims">' in html
        and html.count('<td class="confirmed"')
        + html.count('<td class="refuted"')
        + html.count('<td class="undetermined"')
        >= 5
    )
    assert "Attention c_proj has a lower PR than c_attn" in html
    assert "re-drawn at random and frozen" in html  # the crystallize claims
    for claim, study in STUDY_SCAN:  # the scan ran: its claims are judged, not "not run here"
        row = f'{escape(claim)}</td><td data-label="The study">{escape(study)}</td><td class="'
        assert html.count(row) == 1, claim
        assert "Not run here" not in html.split(row)[1].split("</tr>")[0]
    assert html.count("<img ") >= 6 and "http" not in html.split("<body>", 1)[1]
    headings = [h.split("</h")[0] for h in html.split("<h")[1:] if h[0] in "123456"]
    assert len(headings) == len(set(headings)), headings  # freeze at 25% and 50% differ
    assert "What to do next" in html.split('<section id="claims">')[0]
    assert "Judged on" not in html  # one model, one data set: the claims are this model's
    report = (out / "report.md").read_text()
    assert "## The study's claims" in report and "(crystallize/report.md)" in report
    assert "(scan/report.md)" in report and "(freeze-50/report.md)" in report


def test_the_scan_is_adaptive_over_the_budgets_sites_and_jointly_checked(demo):
    out, _ = demo
    scan = fileio.read_json(out / "scan" / "results.json")
    assert scan["experiment"] == "scan" and scan["mode"] == "adaptive"
    assert scan["summary"]["complete"] and set(scan["summary"]["strategies"]) == {
        "frozen",
        "random",
    }
    sites = {e["site"] for r in scan["runs"] for e in r["sites"] if e["strategy"] != "full"}
    assert sites and sites <= {"L1.attn.c_attn", "L1.attn.c_proj"}
    assert set(scan["summary"]["effective"]) == {"frozen", "random"}
    plan = fileio.read_json(out / "scan" / "plan.json")
    assert {e["site"] for e in plan["sites"]} <= sites


def test_freeze_runs_the_plan_or_geometry_against_random_and_full_at_25_and_50(demo):
    out, [(_, results, _), _] = demo
    plan = fileio.read_json(out / "scan" / "plan.json")
    schedule = f"plan:{out / 'scan' / 'plan.json'}" if plan["sites"] else "geometry:pr"
    for name, fraction in (("freeze-25", 0.25), ("freeze-50", 0.5)):
        frozen = fileio.read_json(out / name / "results.json")
        assert frozen["experiment"] == "freeze" and frozen["target_fraction"] == fraction
        assert frozen["schedules"] == ["full", schedule, "random"]
        assert len(frozen["runs"]) == 6 and all(r["status"] == "ok" for r in frozen["runs"])
    by = {s["name"]: s for s in results["stages"]}
    assert by["freeze-25"]["runs"] == by["freeze-50"]["runs"] == 6


def test_a_second_run_resumes_every_stage_and_trains_nothing(demo):
    out, [(first_s, first, before), (second_s, second, after)] = demo
    assert after["runs"] == before["runs"]  # the same records, clocks too
    by = {s["name"]: s for s in second["stages"]}
    for name in STAGES[2:]:
        assert by[name]["status"] == "reused" and by[name]["runs"] == 0, name
    assert by["analyze"]["status"] == "reused" and by["pretrain"]["status"] == "reused"
    assert second["seconds"] < first["seconds"]


def test_deadzone_report_rebuilds_the_same_html_byte_for_byte(demo, capsys):
    out, _ = demo
    pages = {p: p.read_bytes() for p in [out / "report.html", *out.glob("*/report.html")]}
    assert len(pages) == 6
    for page in pages:
        page.unlink()
    assert main(["report", str(out)]) == 0
    for page, data in pages.items():
        assert page.read_bytes() == data, page
    stages = [str(out / d) for d in STAGES[1:]]
    assert main(["report", *stages]) == 2  # their common parent is the demo: its page stays
    assert "is an experiment directory with its own report" in capsys.readouterr().err
    assert (out / "report.html").read_bytes() == pages[out / "report.html"]
    combined = out.parent / "stages.html"
    assert main(["report", *stages, "--out", str(combined)]) == 0  # each alone, and together


@pytest.mark.parametrize(
    "prepare, message",
    [
        (lambda d: d.write_text("x"), "is a file"),
        (lambda d: (d.mkdir(), (d / "notes.txt").write_text("mine")), "holds files but no demo"),
        (
            lambda d: (d.mkdir(), (d / "results.json").write_text('{"experiment": "crystallize"}')),
            "holds a 'crystallize' experiment, not a demo",
        ),
        (
            lambda d: (
                d.mkdir(),
                (d / "results.json").write_text(
                    json.dumps({"experiment": "demo", "budget": {"name": "full"}})
                ),
            ),
            "holds a demo of another size",
        ),
        (lambda d: (d.mkdir(), (d / "results.json").write_text("{trunc")), "is not valid JSON"),
    ],
)
def test_bad_out_is_a_one_line_error_and_touches_nothing(tmp_path, capsys, prepare, message):
    out = tmp_path / "out"
    prepare(out)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_an_out_that_cannot_be_created_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--quick", "--out", str(tmp_path / "file" / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: deadzone-demo)" in text and "(default: the full demo" in text
    assert "(default: none)" in text and "(default: OUT/tracking)" in text


@pytest.mark.browser
def test_the_demo_report_opens_in_chromium_whole_and_readable_on_a_phone(demo, browser):
    out, _ = demo
    session = browser.open((out / "report.html").as_uri(), 1280, 900)
    facts = browser.facts(session)
    assert browser.problems(session) == []
    assert len(facts["images"]) >= 6 and all(width > 0 for width in facts["images"]), facts
    assert len(facts["claims"]) >= 9  # analyze 2, crystallize 3, scan 2, freeze at 25% and 50%
    assert set(facts["claims"]) <= {"confirmed", "refuted", "undetermined"}
    assert facts["scrollingTables"] == 0, facts  # at 1280 px no table is cut
    pixels = browser.screenshot(session)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.005  # text and lines, not blank
    browser.resize(session, 390, 844)
    phone = browser.facts(session)
    assert phone["innerWidth"] == 390 and phone["pageWidth"] <= 390, phone
    assert max(phone["shownImages"]) <= 390 and phone["columns"] == 1, phone
    assert browser.problems(session) == []


def test_freeze_reports_each_run_to_tensorboard_where_the_schedule_freezes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "freeze"
    args = ["freeze", "builtin:micro", "--schedule", "random", "--seeds", "1", "--steps", "4",
            "--batch-size", "4", "--eval-every", "2", "--out", str(out)]  # fmt: skip
    assert main([*args, "--report-to", "tensorboard"]) == 0
    results = fileio.read_json(out / "results.json")
    assert [r["key"] for r in results["runs"]] == ["full/seed0", "random/seed0"]
    for run in results["runs"]:
        events = EventAccumulator(str(out / "tracking" / "tensorboard" / run["key"]))
        events.Reload()
        trainable = [e.value for e in events.Scalars("trainable_params")]
        assert trainable == [p["trainable_params"] for p in run["curve"] if p["step"] > 0]
    full, frozen = ([e for e in r["curve"] if e["step"] == 4][0] for r in results["runs"])
    assert frozen["trainable_params"] < full["trainable_params"]  # the tracker saw it freeze
