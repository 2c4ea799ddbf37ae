"""`deadzone report`: reports rebuilt from results files alone, the same bytes every time, a
combined page for several directories, and bad directories named in one line each."""

from __future__ import annotations

import json
import shutil

import pytest
from test_report_html import run_experiment

from deadzone import fileio
from deadzone.cli import build_parser, main
from deadzone.report.build import SCHEMA_VERSION
from deadzone.report.crystallize import markdown

OUTPUTS = ("report.md", "report.html", "curves.png")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return run_experiment(tmp_path_factory.mktemp("cli_report"), ("full", "frozen"))


def copy(experiment, to):
    shutil.copytree(experiment, to)
    for name in OUTPUTS:
        (to / name).unlink(missing_ok=True)
    return to


def test_report_rebuilds_from_results_alone_and_twice_gives_the_same_bytes(
    experiment, tmp_path, capsys
):
    exp = copy(experiment, tmp_path / "exp")
    results = (exp / "results.json").read_bytes()
    assert main(["report", str(exp)]) == 0
    assert capsys.readouterr().out == f"wrote {exp / 'report.md'}, {exp / 'report.html'}\n"
    first = {name: (exp / name).read_bytes() for name in OUTPUTS}
    assert first["report.md"].decode() == markdown(fileio.read_json(exp / "results.json"))
    page = first["report.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and '<section id="claims">' in page
    assert "Freezing L4 c_proj during SFT costs nothing" in page
    assert "Here on L1.attn.c_proj" in page
    assert "data:image/png;base64," in page
    assert any(
        f'<td class="{v}">' in page for v in ("negligible", "better", "costly", "undetermined")
    )
    assert 'src="http' not in page and 'href="http' not in page and "<script" not in page

    assert main(["report", str(exp)]) == 0
    assert {name: (exp / name).read_bytes() for name in OUTPUTS} == first
    assert (exp / "results.json").read_bytes() == results  # read, never written


def test_several_directories_give_a_combined_page_in_their_common_parent(experiment, tmp_path):
    a, b = copy(experiment, tmp_path / "a"), copy(experiment, tmp_path / "b")
    assert main(["report", str(a), str(b)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "<title>deadzone report: 2 experiment(s)</title>" in page
    assert "From <code>a/results.json</code>." in page
    assert "From <code>b/results.json</code>." in page
    assert page.count('data-label="Claim">Freezing L4 c_proj') == 2  # one claim per experiment
    assert (a / "report.html").is_file() and (b / "report.html").is_file()

    out = tmp_path / "elsewhere" / "all.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert "From <code>../a/results.json</code>." in out.read_text()


def test_a_combined_page_never_replaces_an_experiments_own(experiment, tmp_path, capsys):
    outer = copy(experiment, tmp_path / "outer")
    inner = copy(experiment, outer / "inner")
    assert main(["report", str(outer), str(inner)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"deadzone: error: {outer} is one of the directories and their common parent: "
        "give --out FILE for the combined report\n"
    )
    assert not (outer / "report.html").exists()
    assert main(["report", str(outer), str(inner), "--out", str(inner / "report.html")]) == 2
    assert "is one of the experiments' own reports" in capsys.readouterr().err


def test_an_unusable_out_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["report", a, b, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"deadzone: error: --out {tmp_path} is a directory; give a file, e.g. "
        f"{tmp_path / 'report.html'}\n"
    )
    assert main(["report", a, b, "--out", str(tmp_path / "a_file" / "all.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deadzone: error: cannot write to output directory ") and (
        err.count("\n") == 1
    )


def _newer(path):
    doc = fileio.read_json(path)
    fileio.write_json(path, doc | {"schema_version": SCHEMA_VERSION + 1})


def _truncated(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


BAD = {
    "no results file": (lambda p: p.unlink(), "has no results.json: not an experiment directory"),
    "newer schema": (
        _newer,
        f"results.json has schema_version {SCHEMA_VERSION + 1}, newer than this deadzone reads "
        f"(up to {SCHEMA_VERSION}): upgrade deadzone",
    ),
    "truncated": (_truncated, "results.json is not valid JSON (truncated?): "),
    "not JSON": (lambda p: p.write_text("hello\n"), "results.json is not valid JSON"),
    "not results": (lambda p: p.write_text("[1, 2]\n"), "is not a deadzone results file"),
    "other experiment": (
        lambda p: p.write_text(json.dumps({"experiment": "melt"})),
        "holds a 'melt' experiment; this deadzone reports crystallize",
    ),
    "incomplete": (
        lambda p: p.write_text(
            json.dumps({"experiment": "crystallize", "schema_version": SCHEMA_VERSION})
        ),
        "is not a complete crystallize results file (missing or malformed: ",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_directory_is_one_line_and_the_others_are_still_reported(
    experiment, tmp_path, capsys, case
):
    spoil, message = BAD[case]
    good, bad = copy(experiment, tmp_path / "good"), copy(experiment, tmp_path / "bad")
    spoil(bad / "results.json")
    assert main(["report", str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"deadzone: error: {bad}") and captured.err.count("\n") == 1
    assert message in captured.err
    assert (good / "report.html").is_file() and (good / "report.md").is_file()
    assert not (bad / "report.html").exists()
    combined = (tmp_path / "report.html").read_text()  # of the good one alone
    assert "From <code>good/results.json</code>." in combined and "bad/" not in combined


def test_each_bad_directory_gets_its_line_and_a_missing_one_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"deadzone: error: {tmp_path / 'empty'} has no results.json: not an experiment directory",
        f"deadzone: error: {tmp_path / 'gone'} does not exist",
    ]
    assert not (tmp_path / "report.html").exists()


def test_the_current_schema_is_read(experiment, tmp_path):
    exp = copy(experiment, tmp_path / "exp")
    doc = fileio.read_json(exp / "results.json")
    fileio.write_json(exp / "results.json", doc | {"schema_version": SCHEMA_VERSION})
    assert main(["report", str(exp)]) == 0


def test_help_states_the_default_of_out(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--out FILE the combined page (default: with several DIRs, report.html in their " in text
    assert "None" not in text
