"""`deadzone report`: reports rebuilt from results files alone, the same bytes every time, a
combined page for several directories, and bad directories named in one line each."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from deadzone import fileio, study
from deadzone.cli import build_parser, main
from deadzone.report.build import build, write_reports
from deadzone.report.crystallize import markdown, table_model
from deadzone.schema import SCHEMA_VERSION

pytestmark = pytest.mark.e2e  # a real experiment, then `deadzone report` on copies of it

OUTPUTS = ("report.md", "report.html", "curves.png")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, crystallize_experiment):
    return crystallize_experiment(tmp_path_factory.mktemp("cli_report"), ("full", "frozen"))


STUDY_CLAIMS = [claim for _, claim, _ in study.STUDY_CRYSTALLIZE.values()] + [
    claim for claim, _ in (*study.STUDY_SCAN, study.STUDY_FREEZE)
]


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
    assert page.startswith("<!DOCTYPE html>") and "What to do next" in page
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
    assert "From <code>a/results.json</code>: model <code>" in page
    assert "From <code>b/results.json</code>: model <code>" in page
    assert "Freezing L4 c_proj" not in page  # the study's claims only when asked for
    assert (a / "report.html").is_file() and (b / "report.html").is_file()
    assert build([a, b], study=True).errors == []
    page = (tmp_path / "report.html").read_text()
    assert page.count('data-label="Claim">Freezing L4 c_proj') == 2  # one claim per experiment
    assert "On this model" in page  # one model, one data set: framed as one model's claims

    out = tmp_path / "elsewhere" / "all.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert "From <code>../a/results.json</code>: model" in out.read_text()


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
    assert "From <code>good/results.json</code>:" in combined and "bad/" not in combined


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


def test_a_users_crystallize_of_l1_opens_with_what_to_do_and_states_no_study_claim(
    experiment, tmp_path
):
    exp = copy(experiment, tmp_path / "exp")
    md, page = write_reports(exp)
    text = md.read_text()
    html = re.sub(r'src="data:[^"]*"', "", page.read_text())  # the text, not the images
    assert text.startswith("# Crystallize L1.attn.c_proj of ") and "## What to do next" in text
    assert text.index("## What to do next") < text.index("| Strategy")
    assert "deadzone scan " in text  # the command to run next
    for said in (text, html):
        assert not [claim for claim in STUDY_CLAIMS if claim in said]
        assert "L4" not in said and "the study" not in said.lower()
    assert '<section id="claims">' not in html
    assert html.index("What to do next") < html.index("<h2>Crystallize")

    write_reports(exp, study=True)  # asked for: the study's claims, judged on L1's numbers
    html = page.read_text()
    assert '<section id="claims">' in html and "Freezing L4 c_proj during SFT costs nothing" in html
    assert "Here on L1.attn.c_proj" in html


def test_with_a_gain_judged_in_nats_the_cost_in_nats_is_printed_once(experiment):
    results = fileio.read_json(experiment / "results.json")
    by_share = table_model(results | {"summary": results["summary"] | {"unit": "share_of_gain"}})
    assert by_share.columns.count("Cost (nats)") == 1 and "Cost (share of gain)" in by_share.columns
    in_nats = table_model(results | {"summary": results["summary"] | {"unit": "nats"}})
    assert in_nats.columns.count("Cost (nats)") == 1
    assert not [c for c in in_nats.columns if c.startswith("Cost (") and c != "Cost (nats)"]
    assert all(len(row) == len(in_nats.columns) for row in in_nats.rows)
    assert "| Cost (nats) | Holm-adjusted" in markdown(
        results | {"summary": results["summary"] | {"unit": "nats"}}
    )


def test_a_combined_page_of_runs_on_different_data_names_each_model_and_data(
    experiment, tmp_path, crystallize_experiment
):
    other = crystallize_experiment(tmp_path / "other", ("full", "frozen"), rows=48)
    mine = copy(experiment, tmp_path / "mine")
    assert build([mine, other], study=True).errors == []
    page = (tmp_path / "report.html").read_text()
    assert "On this model" not in page and "The study&#x27;s claims here" not in page
    assert page.count('<td data-label="Judged on">') == 2 * 1  # frozen's claim, per experiment
    for directory in (mine, other):
        spec = fileio.read_json(directory / "results.json")["data"]["spec"]
        assert f"data <code>{spec}</code>" in page


def test_the_crystallize_plots_keep_their_legends_off_the_curves(
    experiment, drawn_figures, legends_on_data
):
    from deadzone.report.crystallize import plot_curves, plot_verdicts

    results = fileio.read_json(experiment / "results.json")
    plot_curves(results, experiment / "unused.png")
    plot_verdicts(results, experiment / "unused.png")
    assert len(drawn_figures) == 2
    assert [legends_on_data(fig) for fig in drawn_figures] == [[], []]
