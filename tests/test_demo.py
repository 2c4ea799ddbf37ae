"""deadzone demo --quick end to end: every stage's files, both reports, resume, bad --out."""

from __future__ import annotations

import json
import time

import pytest

from deadzone import fileio
from deadzone.cli import main

STAGE_FILES = {
    "analyze": ["results.json", "geometry.json", "geometry.csv", "geometry.png", "report.md",
                "report.html"],
    "crystallize": ["results.json", "report.md", "report.html", "curves.png", "verdicts.png"],
}  # fmt: skip


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
    return {
        "crystallize": fileio.read_json(out / "crystallize" / "results.json"),
        "html": (out / "report.html").read_bytes(),
    }


def test_quick_demo_writes_every_stages_files_and_both_reports(demo):
    out, [(_, results, _), _] = demo
    for stage, files in STAGE_FILES.items():
        for name in files:
            assert (out / stage / name).is_file() and (out / stage / name).stat().st_size, name
    assert results["experiment"] == "demo" and results["budget"]["name"] == "quick"
    by = {s["name"]: s for s in results["stages"]}
    assert list(by) == ["pretrain", "analyze", "crystallize", "scan", "freeze"]
    assert by["analyze"]["directory"] == "analyze" and by["crystallize"]["runs"] == 8
    for name in ("scan", "freeze"):  # not in the library yet: skipped, and said why
        assert by[name]["status"] == "skipped" and by[name]["note"]
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
    assert "A model tolerates 25–50% of its matrices frozen" in html  # skipped: undetermined
    assert html.count("<img ") >= 3 and "http" not in html.split("<body>", 1)[1]
    report = (out / "report.md").read_text()
    assert "## The study's claims" in report and "(crystallize/report.md)" in report


def test_a_second_run_resumes_every_stage_and_trains_nothing(demo):
    out, [(first_s, first, before), (second_s, second, after)] = demo
    assert after["crystallize"]["runs"] == before["crystallize"]["runs"]  # same records, clocks too
    by = {s["name"]: s for s in second["stages"]}
    assert by["crystallize"]["status"] == "reused" and by["crystallize"]["runs"] == 0
    assert by["analyze"]["status"] == "reused" and by["pretrain"]["status"] == "reused"
    assert second["seconds"] < first["seconds"]


def test_deadzone_report_rebuilds_the_same_html_byte_for_byte(demo, capsys):
    out, _ = demo
    pages = {p: p.read_bytes() for p in [out / "report.html", *out.glob("*/report.html")]}
    assert len(pages) == 3
    for page in pages:
        page.unlink()
    assert main(["report", str(out)]) == 0
    for page, data in pages.items():
        assert page.read_bytes() == data, page
    assert main(["report", str(out / "analyze"), str(out / "crystallize")]) == 0  # each alone


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
        (lambda d: (d.mkdir(), (d / "results.json").write_text("{trunc")), "cannot read"),
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
