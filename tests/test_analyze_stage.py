"""analyze as an experiment directory: results.json, reuse, refusals, the study beside the model."""

from __future__ import annotations

import pytest

from deadzone import fileio, study
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.analyze import analyze_experiment
from deadzone.geometry.analysis import analyze_checkpoint
from deadzone.report.build import write_reports
from deadzone.schema import SCHEMA_VERSION


def test_writes_results_reuses_them_and_refuses_another_analysis(gpt2_dir, tmp_path):
    model_dir, _ = gpt2_dir
    out = tmp_path / "a"
    doc = analyze_experiment(str(model_dir), "*", out, progress=False)
    saved = fileio.read_json(out / "results.json")
    assert saved == doc and saved["experiment"] == "analyze"
    assert saved["schema_version"] == SCHEMA_VERSION and saved["sites"] == "*"
    assert saved["records"] == fileio.read_json(out / "geometry.json")
    assert [r["site"] for r in saved["records"]] == [
        r["site"] for r in analyze_checkpoint(str(model_dir), progress=False)
    ]
    assert saved["summary"]["sites"] == len(saved["records"])
    assert (out / "geometry.csv").read_text().startswith("site,layer,role")

    stamp = (out / "results.json").stat().st_mtime_ns
    assert analyze_experiment(str(model_dir), "*", out, progress=False) == doc
    assert (out / "results.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(DeadzoneError, match="another sites"):
        analyze_experiment(str(model_dir), "L0.*", out, progress=False)


def test_a_directory_of_another_experiment_is_refused(gpt2_dir, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    fileio.write_json(out / "results.json", {"experiment": "crystallize"})
    with pytest.raises(DeadzoneError, match="holds another experiment"):
        analyze_experiment(str(gpt2_dir[0]), "*", out, progress=False)


def test_analyze_out_and_report_put_the_study_beside_the_model(gpt2_dir, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", str(gpt2_dir[0]), "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "202.7" not in md and "study" not in md  # a user's model: the study only when asked
    write_reports(out, study=True)
    md = (out / "report.md").read_text()
    assert "| L0 | 202.7 |" in md and "| L7 | 205.9 | — |" in md  # the study's rows, ours beside
    assert "Attention c_proj has a lower PR than c_attn" in md
    html = (out / "report.html").read_bytes()
    (out / "report.html").unlink()
    write_reports(out, study=True)
    assert (out / "report.html").read_bytes() == html
    assert (out / "geometry.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def record(site: str, layer: int, role: str, pr: float, amplitude_pr: float = 1.0) -> dict:
    return {"site": site, "layer": layer, "role": role, "finite": True, "pr": pr, "pc1": 0.2,
            "amplitude_pr": amplitude_pr, "stable_rank": 3.0, "shape": [8, 8]}  # fmt: skip


def results(pairs: list[tuple[float, float]], amplitude: float = 1.0) -> dict:
    from deadzone.geometry.analysis import summarize

    records = []
    for layer, (attn_in, attn_out) in enumerate(pairs):
        records.append(record(f"L{layer}.attn.c_attn", layer, "attn_qkv", attn_in))
        records.append(record(f"L{layer}.attn.c_proj", layer, "attn_out", attn_out, amplitude))
    return {"records": records, "summary": summarize(records)}


@pytest.mark.parametrize(
    "pairs, verdict",
    [
        ([(200, 80), (190, 90)], "confirmed"),  # lower in every layer
        ([(200, 80), (90, 190)], "undetermined"),  # in half
        ([(80, 200), (90, 190), (95, 40)], "refuted"),  # in fewer than half
    ],
)
def test_the_c_proj_claim_counts_layers(pairs, verdict):
    claim = study.geometry_claims(results(pairs))[0]
    assert claim.verdict == verdict
    lower = sum(o < i for i, o in pairs)
    assert f"lower in {lower} of {len(pairs)} layers" in claim.numbers


@pytest.mark.parametrize("amplitude, verdict", [(1.03, "confirmed"), (30.0, "refuted")])
def test_the_amplitude_claim_compares_amplitude_pr_with_a_tenth_of_pr(amplitude, verdict):
    claim = study.geometry_claims(results([(200, 84.5), (200, 90)], amplitude))[1]
    assert claim.verdict == verdict and f"amplitude PR {amplitude:.2f}" in claim.numbers
