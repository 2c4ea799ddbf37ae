"""Scan report pieces from a summary shaped as results.json holds it."""

from __future__ import annotations

import pytest

from deadzone import fileio
from deadzone.report import scan as report
from deadzone.report.table import to_markdown
from deadzone.schema import SCHEMA_VERSION

ROLES = ("attn_qkv", "attn_out", "mlp_in", "mlp_out")


def summary(layers: int = 4) -> dict:
    sites = []
    for layer in range(layers):
        for i, role in enumerate(ROLES):
            cost = 0.001 * (layer + i) if (layer + i) % 3 else 0.1
            sites.append({
                "site": f"L{layer}.{role}", "layer": layer, "role": role, "params": 1024,
                "verdict": "negligible" if cost < 0.02 else "costly", "cost": cost,
                "interval": [cost - 0.005, cost + 0.005], "single": layer != 0,
            })  # fmt: skip
    names = [s["site"] for s in sites]
    return {
        "margin": 0.02,
        "strategies": {
            "frozen": {
                "sites": sites,
                "correlations": {
                    "pr": {"rho": -0.125, "p": 0.51, "n": 12},
                    "snr": {"rho": None, "p": None, "n": 2},
                },
            },  # fmt: skip
            "random": {"sites": [dict(s, cost=2 * s["cost"]) for s in sites]},
        },
        "scores": {
            "pr": {n: float(i) for i, n in enumerate(names)},
            "snr": {n: (None if i % 2 else 0.1 * i) for i, n in enumerate(names)},
        },
    }


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


@pytest.mark.parametrize("layers", [4, 40])
def test_heatmap_and_scores_plot_are_written(tmp_path, layers: int) -> None:
    s = summary(layers)
    report.heatmap(s, tmp_path / "heatmap.png")
    report.scores_plot(s, tmp_path / "scores.png")
    assert is_png(tmp_path / "heatmap.png") and is_png(tmp_path / "scores.png")


def test_plots_of_a_summary_without_single_site_costs(tmp_path) -> None:
    s = summary()
    for st in s["strategies"].values():
        for site in st["sites"]:
            site["single"] = False
    report.heatmap(s, tmp_path / "heatmap.png")
    report.scores_plot(s, tmp_path / "scores.png")
    assert is_png(tmp_path / "heatmap.png") and is_png(tmp_path / "scores.png")


def test_pairs_take_single_sites_with_a_defined_score() -> None:
    xs, ys = report._pairs(summary(), "frozen", "snr")
    # layers 1-3 are single; every other site's snr is defined (roles 0 and 2)
    assert xs == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    assert ys == pytest.approx([0.1, 10.0, 0.2, 0.4, 10.0, 0.5])  # percent of the gain


def test_rho_table() -> None:
    assert report.rho_table(summary()) == (
        "| Score | frozen: ρ (p, n) | random: ρ (p, n) |\n"
        "|---|---|---|\n"
        "| pr | -0.12 (p=0.51, n=12) | — |\n"
        "| snr | — (n=2) | — |\n"
    )


def test_statistics_text_says_holm_once_the_levels_are_in_and_the_search_level_before():
    s = summary() | {"unit": "share_of_gain", "margin_used": 0.02, "alpha": 0.05 / 32}
    s |= {"comparisons": 32, "mode": "adaptive"}
    before = report.statistics_text({"summary": s})
    assert "so far at 0.00156 = 0.05 / 32" in before and "step-down over" not in before
    for row in s["strategies"]["frozen"]["sites"]:
        row["level"] = 0.05
    after = report.statistics_text({"summary": s})
    assert "Holm's step-down over the site claims (32 = sites x strategies" in after
    assert "steered by intervals at 0.00156" in after


def document(s: dict, seeds: list[int]) -> dict:
    """A finished scan's results around the summary ``s``, its runs left out."""
    s |= {"unit": "share_of_gain", "margin_used": 0.02, "alpha": 0.05 / 32, "comparisons": 32}
    s |= {"mode": "adaptive", "runs": 40, "complete": True}
    s["effective"] = {st: {"sites": 0} for st in s["strategies"]}
    for st in s["strategies"].values():
        st |= {"verdicts": {"negligible": 1}, "search": {"judgements": 3, "runs": 6}}
        for row in st["sites"]:
            row["level"] = 0.05
    names = [r["site"] for r in s["strategies"]["frozen"]["sites"]]
    return {"model": "m", "sites": names, "steps": 3, "data": {"spec": "d"}, "seeds": seeds,
            "summary": s}  # fmt: skip


def test_report_reads_the_seeds_of_the_verdicts_not_every_seed_run_into_the_directory():
    """A rerun with fewer --seeds: results.json lists the earlier seeds too."""
    text = report.markdown(document(summary() | {"seeds": 2}, seeds=[0, 1, 2, 3]))
    assert "up to 2 seeds" in text and "up to 4 seeds" not in text


def test_rho_says_it_covers_only_the_sites_judged_alone():
    s = summary()  # layer 0 judged in a group, layers 1-3 alone
    note = "ρ for frozen over the 12 of 16 sites judged alone; random over the 12 of 16 sites "
    note += "judged alone (a scan that is not exhaustive judges some sites only in groups, or not "
    note += "at all)."
    assert report.rho_note(s) == note
    assert note in report.markdown(document(s, seeds=[0, 1]))
    for st in s["strategies"].values():
        for row in st["sites"]:
            row["single"] = True
    assert report.rho_note(s) == ""
    assert "judged alone" not in report.markdown(document(s, seeds=[0, 1]))


def test_statistics_text_says_which_joint_sets_are_read_at_bonferroni():
    text = report.statistics_text(document(summary(), seeds=[0, 1]))
    assert "joint sets at 0.00156 (Bonferroni), except one that is exactly a set some site " in text
    assert "decided with on every seed, whose claim stands as Holm read it." in text


def baseline(seed: int, status: str = "ok") -> dict:
    error = None if status == "ok" else "non-finite loss"
    return {"key": f"full/seed{seed}", "status": status, "error": error, "final_eval_loss": 2.0}


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([], "nothing can be judged yet: 0 of its 3 baseline runs finished before the scan "
             "stopped; rerun the scan to continue"),
        ([baseline(0)], "nothing can be judged yet: 1 of its 3 baseline runs finished"),
        ([baseline(0), baseline(1, "failed")],
         "the baseline run full/seed1 failed (non-finite loss), so nothing can be judged"),
    ],
)  # fmt: skip
def test_a_scan_stopped_in_its_baselines_is_reported_as_judging_nothing_yet(
    tmp_path, capsys, runs, message
):
    """What a scan killed (or failed) before its baselines finished leaves in results.json."""
    from deadzone.cli import main
    from deadzone.experiments.scan import ScanConfig, _summary

    state = {"scale": None, "records": {}, "pending": True}
    summary = _summary(state, {"scores": {"pr": {}}}, ScanConfig(model="m", seeds=3), runs)
    doc = {"schema_version": SCHEMA_VERSION, "experiment": "scan", "model": "m",
           "sites": ["L0.attn.c_attn"], "steps": 3, "data": {"spec": "d"},
           "seeds": [0, 1, 2], "runs": runs, "summary": summary}  # fmt: skip
    fileio.write_json(tmp_path / "results.json", doc)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deadzone: error: {tmp_path / 'results.json'}: ")
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "report.md").exists()


def scan_doc(unit: str = "share_of_gain") -> dict:
    """A complete scan results file over :func:`summary`'s sites, whose frozen joint check went
    4 -> 2 -> 1 sites."""
    s = summary()
    names = [site["site"] for site in s["strategies"]["frozen"]["sites"]]
    steps = [
        {"sites": names[4:8], "seeds": 2, "verdict": "undetermined", "cost": 0.01,
         "interval": [-0.01, 0.03], "action": "split"},
        {"sites": names[4:6], "seeds": 3, "verdict": "costly", "cost": 0.05,
         "interval": [0.03, 0.07], "action": "split"},
        {"sites": names[4:5], "seeds": 3, "verdict": "negligible", "cost": 0.001,
         "interval": [-0.004, 0.006], "action": "accept"},
    ]  # fmt: skip
    for name, st in s["strategies"].items():
        st["verdicts"] = {"negligible": 10, "costly": 6}
        st["search"] = {"judgements": 20, "runs": 30}
        st["joint"] = (
            {"sites": names[4:5], "steps": steps, "seeds": 3} if name == "frozen" else None
        )
    joint = s["strategies"]["frozen"]["joint"]
    s["effective"] = {
        "frozen": {"sites": 1, "params": 1024, "fraction_of_trainable": 0.01,
                   "fraction_of_block_params": 0.02, "cost": 0.001, "interval": [-0.004, 0.006],
                   "verdict": "negligible"},
        "random": {"sites": 0, "params": 0, "fraction_of_trainable": 0.0,
                   "fraction_of_block_params": 0.0, "cost": None, "interval": None,
                   "verdict": None},
    }  # fmt: skip
    assert joint["sites"] == [names[4]]
    s |= {"unit": unit, "margin_used": 0.02, "alpha": 0.05 / 32, "comparisons": 32,
          "mode": "adaptive", "complete": True, "runs": 64, "seeds": 3}  # fmt: skip
    return {"schema_version": SCHEMA_VERSION, "experiment": "scan", "model": "m",
            "sites": names, "steps": 3, "data": {"spec": "d.jsonl"}, "seeds": [0, 1, 2],
            "runs": [], "summary": s, "model_info": {}}  # fmt: skip


def test_a_scan_judged_in_nats_says_so_and_shows_nats():
    doc = scan_doc("nats")
    text = report.markdown(doc)
    assert "judged as a nats" not in text and "0.01 nats" not in text
    assert "Costs are judged in nats (the fine-tuning gain was not clearly positive)" in text
    table = report.sites_table(doc["summary"], "frozen")
    assert table.columns[2] == "Cost (nats)" and table.rows[1][2] == "+0.0010"
    shares = report.sites_table(scan_doc()["summary"], "frozen")
    assert shares.columns[2] == "Cost (% of the fine-tuning gain)" and shares.rows[1][2] == "+0.10"


def test_the_heatmaps_colours_span_the_costs_it_shows():
    s = summary()
    for st in s["strategies"].values():  # costs of 0.3-1.3% of the gain, the margin 2%
        for i, site in enumerate(st["sites"]):
            site["cost"] = 0.003 + 0.01 * i / (len(st["sites"]) - 1)
    assert report.colour_limit(s) == pytest.approx(1.3)  # not 5 margins (±10%)
    assert report.colour_limit(summary()) == pytest.approx(20.0)  # a cost of 10%, doubled
    for st in s["strategies"].values():
        for site in st["sites"]:
            site["single"] = False
    assert report.colour_limit(s) == pytest.approx(2.0)  # nothing coloured: the margin


def test_scores_with_fewer_than_three_single_site_costs_are_not_plotted(tmp_path):
    doc = scan_doc()
    for st in doc["summary"]["strategies"].values():
        for site in st["sites"][3:]:
            site["single"] = False  # two single sites left
    assert not report.drawn(doc["summary"])
    fileio.write_json(tmp_path / "results.json", doc)
    (tmp_path / "scores.png").write_bytes(b"an earlier scan's")
    written = report.write_report(tmp_path)
    assert "scores.png" not in written and not (tmp_path / "scores.png").exists()
    assert "scores.png" not in (tmp_path / "report.md").read_text()
    assert report.drawn(scan_doc()["summary"])


def test_the_joint_checks_steps_are_on_the_page_as_in_report_md(tmp_path):
    from deadzone.report.build import report_directory

    fileio.write_json(tmp_path / "results.json", scan_doc())
    page, _ = report_directory(tmp_path)
    text, md = page.read_text(), (tmp_path / "report.md").read_text()
    steps = report.joint_steps(scan_doc()["summary"], "frozen")
    assert [s[:6] for s in steps] == ["4 site", "2 site", "1 site"]
    for i, step in enumerate(steps, 1):
        assert f"{i}. {step}" in md
        assert f"<li>{step.replace('->', '-&gt;')}</li>" in text
    assert "<ol><li>4 sites on 2 seeds" in text
    assert "1 matrix (L1.attn_qkv)" in text and "(1 matrices)" not in text
    assert text.index("What to do next") < text.index("<h2>Scan of")
    assert "Freeze the plan (<code>plan.json</code>), 1 matrix: L1.attn_qkv" in text


def test_no_legend_covers_data(tmp_path, drawn_figures, legends_on_data):
    report.scores_plot(scan_doc()["summary"], tmp_path / "scores.png")
    report.heatmap(scan_doc()["summary"], tmp_path / "heatmap.png")
    assert drawn_figures and all(legends_on_data(fig) == [] for fig in drawn_figures)
    from deadzone.report.geometry import write_plot

    records = [
        {"site": f"L{layer}.{role}", "layer": layer, "role": role, "finite": True,
         "pr": 10.0 + layer, "pc1": 0.1 * (layer + 1)}
        for layer in range(4) for role in ("attn_qkv", "attn_out", "mlp_in", "mlp_out")
    ]  # fmt: skip
    write_plot(tmp_path / "geometry.png", records)
    assert legends_on_data(drawn_figures[-1]) == []


def test_a_prior_scan_shows_priors_labels_its_seed_plan_and_how_it_spent_the_runs():
    doc = scan_doc()
    s = doc["summary"]
    sites = s["strategies"]["frozen"]["sites"]
    for i, site in enumerate(sites):
        site["prior"] = 0.01 * i
    sites[-1] |= {"verdict": "undetermined", "cost": None, "interval": None, "single": False,
                  "label": "likely costly"}  # fmt: skip
    names = [site["site"] for site in sites]
    s["strategies"]["frozen"]["search"]["priors"] = {
        "ranked": names, "per_parameter": True, "candidates": names[:3], "factor": 0.21,
        "calibrated_on": names[:5], "middle": names[3:-1],
        "groups": [names[3:6], *([n] for n in names[6:-1])], "likely_costly": names[-1:],
        "above": 0.08,
    }  # fmt: skip
    plan = {"seeds": 3, "sd": 0.03, "margin": 0.02, "level": 0.05, "power": 0.4,
            "power_wanted": 0.8, "needed": 9, "decision": "warn"}  # fmt: skip
    s |= {"mode": "prior", "seed_plan": {"worst": plan, "best": plan | {"power": 0.97}}}
    text = report.markdown(doc)
    assert "the 3 lowest of 16 sites ranked by prior per parameter were negligible together" in text
    assert "times 0.21" in text and "1 labelled likely costly (a prior, not run)" in text
    assert "chance 40%" in text and "with the spread pairing removes, 97%" in text
    table = report.sites_table(s, "frozen")
    assert table.columns[4] == "Prior (% of the fine-tuning gain)" and table.rows[2][4] == "+2.00"
    assert table.rows[-1][1] == "undetermined"  # a label is never a verdict
    assert table.rows[-1][-1] == "not run: likely costly (a prior, not a verdict)"
    assert "Prior (" not in to_markdown(report.sites_table(scan_doc()["summary"], "random"))


def test_what_to_do_next_names_the_sites_left_unjudged_by_choice():
    doc = scan_doc()
    sites = doc["summary"]["strategies"]["frozen"]["sites"]
    sites[0] |= {"verdict": "undetermined", "label": "not judged", "cost": None}
    sites[1] |= {"verdict": "undetermined", "label": "likely costly", "cost": None}
    steps = " ".join(report.next_steps(doc))
    assert "1 matrix was not judged (`--rest label`): rerun with `--rest judge`" in steps
    assert "1 matrix is likely costly by its prior, not run: `--confirm` judges it" in steps
    assert "undetermined: rerun with more seeds" not in steps
