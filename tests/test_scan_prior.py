"""The scan's prior mode: priors from the baselines' attribution, the seed plan, likely costly
sites labelled (never judged, never a verdict); end to end on a micro GPT-2 (slow)."""

from __future__ import annotations

import pytest
from conftest import TIGHT, by_key, claims_runs, judging_config, kill_after_runs, record, searched
from transformers import AutoModelForCausalLM

from deadzone import fileio
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments import scan, search
from deadzone.experiments.scan import ScanConfig, _scale, _seed_plans
from deadzone.experiments.scan_summary import priors
from deadzone.geometry.scores import ScoreData, compute_scores
from deadzone.plans import apply_plan, load_plan
from deadzone.training.attribution import AttributionHook
from deadzone.training.train import SFTConfig

LABELLED = {"verdict": "undetermined", "cost": None, "interval": None, "seeds_needed": None,
            "group_size": 1, "seeds": 0, "set": ["c"], "label": search.LIKELY_COSTLY}  # fmt: skip


def test_a_site_labelled_likely_costly_is_no_claim_of_holm_and_is_counted_as_a_prior():
    rs = claims_runs({("frozen", ("a",)): TIGHT, ("frozen", ("b",)): TIGHT})
    scale = _scale(rs, 3, judging_config(), comparisons=3) | {"retried": set()}
    sites = {**searched(["a"], ["a"]), **searched(["b"], ["b"]), "c": dict(LABELLED)}
    records = {"frozen": {"sites": sites}}
    scan.holm_verdicts(records, rs, scale)
    assert sites["a"]["verdict"] == sites["b"]["verdict"] == "negligible"
    assert sites["c"] == LABELLED  # untouched: no interval, no level, no verdict of its own
    counts = search.verdict_counts(records["frozen"])
    assert counts["negligible"] == 2 and counts["undetermined"] == 0
    assert counts[search.PRIOR_COUNT] == 1 and search.PRIOR_COUNT == "likely costly (prior)"


def test_priors_are_in_the_margins_units():
    scores = {"attribution": {"a": 0.1, "b": None}, "grad_weight": {"a": 0.3, "b": 0.6}}
    share = {"unit": "share_of_gain", "gains": {"0": 2.0, "1": 4.0}}
    nats = {"unit": "nats", "gains": {"0": 2.0, "1": 4.0}}
    assert priors("frozen", scores, share) == {"a": 0.1, "b": None}
    assert priors("frozen", scores, nats) == pytest.approx({"a": 0.3, "b": None})
    assert priors("random", scores, share) == pytest.approx({"a": 0.1, "b": 0.2})
    assert priors("random", scores, nats) == pytest.approx({"a": 0.3, "b": 0.6})
    assert priors("random", {}, share) == {}  # no score: no prior, every site judged alone


def test_the_seed_plan_reads_the_baselines_spread_at_the_scans_strictest_level():
    rs = {f"full/seed{s}": record(f"full/seed{s}", 2.0 + d, 3.0 + d)
          for s, d in enumerate((0.0, 0.0005, -0.0005))}  # fmt: skip
    scale = _scale(rs, 3, judging_config(), comparisons=8)
    plan, best = _seed_plans(rs, 3, scale)
    assert plan.level == pytest.approx(0.05 / 8) and plan.sd == pytest.approx(0.0005 * 2**0.5)
    assert plan.decision == "ok" and best.level == 0.05 and best.sd == pytest.approx(plan.sd / 10)
    wide = {k: {**r, "final_eval_loss": 2.0 + 20 * (r["final_eval_loss"] - 2.0)}
            for k, r in rs.items()}  # fmt: skip
    worst, best = _seed_plans(wide, 3, _scale(wide, 3, judging_config(), comparisons=8))
    assert worst.decision == "refuse" and best.decision == "ok"  # pairing may still decide
    worst, best = _seed_plans(wide, 2, _scale(wide, 2, judging_config(margin=0.001), comparisons=8))
    assert best.decision == "refuse"


def test_attribution_of_a_run_without_eval_data_and_an_unknown_score_are_refused():
    with pytest.raises(DeadzoneError, match="attribution needs evaluation batches"):
        AttributionHook([])
    with pytest.raises(DeadzoneError, match="unknown score 'clever'"):
        compute_scores(None, [], ScoreData(), ("clever",))


def test_unknown_mode_is_refused_in_one_line():
    with pytest.raises(DeadzoneError, match="unknown mode 'bayes'; choose prior, adaptive"):
        ScanConfig(model="m", mode="bayes")
    assert ScanConfig(model="m").mode == "prior" and not ScanConfig(model="m").confirm


# --- end to end ------------------------------------------------------------------------------

RUN = ["--steps", "6", "--seeds", "3", "--lr", "3e-3", "--batch-size", "4", "--eval-every", "3"]
RUN += ["--max-length", "48", "--sites", "L1.*"]
FILES = ("results.json", "report.md", "plan.json", "axolotl.yaml", "frozen_parameters.txt")


@pytest.mark.slow
def test_seeds_that_cannot_decide_anything_are_refused_before_any_scan_run(
    setup,
    tmp_path,
    capsys,
):
    model, data = setup  # its baselines differ by ~2% of the gain: 2 seeds cannot call 0.01%
    out = tmp_path / "o"
    argv = [*RUN, "--seeds", "2", "--margin", "0.0001", "--data", data, "--out", str(out)]
    rc = main(["scan", model, *argv])
    err = capsys.readouterr().err.splitlines()  # the baselines' progress, then one line
    assert rc == 2 and err[-1].startswith("deadzone: error: even if pairing divides the spread")
    assert sum(line.startswith("deadzone: error") for line in err) == 1  # one line of error
    assert err[-1].endswith("nothing could be called negligible; raise --seeds or the margin")
    doc = fileio.read_json(out / "results.json")  # the baselines only, kept for a rerun
    assert sorted(by_key(doc)) == ["full/seed0", "full/seed1"]
    assert not doc["summary"]["complete"] and not (out / "plan.json").exists()


@pytest.mark.slow
def test_prior_mode_writes_every_file_labels_priors_and_its_plan_applies(
    setup,
    tmp_path,
    capsys,
):
    model, data = setup
    out = tmp_path / "scan"
    rc = main(["scan", model, *RUN, "--margin", "0.5", "--data", data, "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "seeds call a site that costs nothing negligible with chance" in printed
    assert "frozen by prior (attribution):" in printed
    assert "random by prior (grad_weight):" in printed
    for name in FILES:
        assert (out / name).is_file(), name
    summary = fileio.read_json(out / "results.json")["summary"]
    assert summary["complete"] and summary["mode"] == "prior"
    assert summary["seed_plan"]["best"]["decision"] in ("ok", "warn")
    assert summary["attribution"]["every"] == scan.ATTRIBUTION_EVERY
    assert 0 < summary["attribution"]["cost_fraction"] < 1
    assert {"attribution", "fisher", "grad_weight"} <= set(summary["scores"])
    runs = by_key(fileio.read_json(out / "results.json"))
    assert all("attribution" in runs[f"full/seed{s}"] for s in range(3))
    assert not any("attribution" in r for k, r in runs.items() if not k.startswith("full/"))
    for strategy in ("frozen", "random"):
        rows = summary["strategies"][strategy]["sites"]
        assert all(r["prior"] is not None for r in rows)
        for r in rows:  # a label is a prior: never with a verdict other than undetermined
            if r["label"] is not None:
                assert r["verdict"] == "undetermined" and r["cost"] is None
    plan = load_plan(out / "plan.json")
    joint = summary["strategies"]["frozen"]["joint"]
    fresh = AutoModelForCausalLM.from_pretrained(model)
    apply_plan(fresh, plan)
    frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    assert len(frozen) == len(joint["sites"] if joint else [])


KILLED = """
import sys, time
from deadzone.experiments.scan import ScanConfig, scan
from deadzone.training.train import SFTConfig
model, data, out = sys.argv[1:4]
sft = SFTConfig(steps=6, lr=3e-3, batch_size=4, eval_every=3)
config = ScanConfig(model=model, sites="L1.*", seeds=3, data=data, max_length=48, sft=sft,
                    margin=0.5)
scan(config, out, show_progress=False, on_record=lambda r: time.sleep(0.5))
"""


def prior_config(setup) -> ScanConfig:
    model, data = setup
    sft = SFTConfig(steps=6, lr=3e-3, batch_size=4, eval_every=3)
    return ScanConfig(
        model=model, sites="L1.*", seeds=3, data=data, max_length=48, sft=sft, margin=0.5
    )


@pytest.mark.slow
def test_a_killed_prior_scan_resumes_losing_and_repeating_nothing(setup, tmp_path):
    model, data = setup
    out = tmp_path / "killed"
    kill_after_runs(KILLED, model, data, out)
    kept = by_key(fileio.read_json(out / "results.json"))
    assert len(kept) >= 4
    ran: list[dict] = []
    quiet = dict(show_progress=False, say=lambda _: None)
    resumed = scan.scan(prior_config(setup), out, on_record=ran.append, **quiet)
    assert {r["key"] for r in ran}.isdisjoint(kept)
    reference = scan.scan(prior_config(setup), tmp_path / "whole", **quiet)
    assert by_key(resumed).keys() == by_key(reference).keys()
    for strategy, st in reference["summary"]["strategies"].items():
        got = resumed["summary"]["strategies"][strategy]
        assert got["verdicts"] == st["verdicts"] and got["joint"] == st["joint"]
