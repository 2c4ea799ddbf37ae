"""``deadzone scan`` end to end on a micro GPT-2: every file, the freeze plan applied, resume
after a killed driver, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
import yaml
from conftest import SRC, by_key, kill_after_runs
from transformers import AutoModelForCausalLM

from deadzone import fileio
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.scan import ScanConfig, scan
from deadzone.plans import apply_plan, load_plan
from deadzone.report.build import build
from deadzone.report.scan import drawn
from deadzone.schema import SCHEMA_VERSION
from deadzone.study import STUDY_SCAN
from deadzone.training import strategies
from deadzone.training.schedules import ScheduleContext, make_schedule, model_units
from deadzone.training.train import SFTConfig

RUN = ["--steps", "3", "--seeds", "2", "--lr", "3e-3", "--batch-size", "4", "--eval-every", "3"]
RUN += ["--max-length", "48", "--mode", "adaptive"]
FILES = ("results.json", "report.md", "heatmap.png", "scores.png", "plan.json", "axolotl.yaml")
FILES += ("frozen_parameters.txt",)


def test_a_free_strategy_is_found_negligible_in_few_runs_and_its_plan_freezes_exactly_it(
    setup,
    tmp_path,
    capsys,
    monkeypatch,
):
    """``frozen`` made to train (cost exactly zero): one judgement of the block's group decides
    all four sites, the joint set is that group, and the plan holds exactly them."""
    model, data = setup
    monkeypatch.setitem(strategies.STRATEGIES, "frozen", strategies.full)
    out = tmp_path / "scan"
    rc = main(["scan", model, "--sites", "L1.*", *RUN, "--data", data, "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "one run takes" in printed and "about" not in printed
    assert re.search(r"runs left, at most \S+ s with 1 at a time", printed)
    # one line per round: runs done of the bound, time left, the verdicts so far
    rounds = [x for x in printed.splitlines() if x.startswith("scan: round ")]
    assert rounds and all(re.search(r"done of at most \d+ \(at most .* left\)", x) for x in rounds)
    assert "; frozen 4 negligible; random " in rounds[-1] and rounds[-1].endswith(" so far")
    for name in FILES:
        assert (out / name).is_file(), name
    results = fileio.read_json(out / "results.json")
    assert results["schema_version"] == SCHEMA_VERSION and results["experiment"] == "scan"
    summary = results["summary"]
    assert summary["complete"] and set(summary["strategies"]) == {"frozen", "random"}
    names = ["L1.attn.c_attn", "L1.attn.c_proj", "L1.mlp.c_fc", "L1.mlp.c_proj"]
    frozen = summary["strategies"]["frozen"]
    assert [s["site"] for s in frozen["sites"]] == names
    assert all(s["verdict"] == "negligible" and s["cost"] == 0.0 for s in frozen["sites"])
    assert frozen["search"]["runs"] == 2  # the group of four, on two seeds; exhaustive: 8
    assert sorted(frozen["joint"]["sites"]) == names
    effective = summary["effective"]["frozen"]
    assert effective["sites"] == 4 and effective["verdict"] == "negligible"
    assert effective["params"] == sum(s["params"] for s in frozen["sites"])
    assert 0 < effective["fraction_of_trainable"] < effective["fraction_of_block_params"] < 1
    assert set(summary["scores"]) >= {"pr", "snr", "grad_norm", "block_influence"}
    rho = frozen["correlations"]["grad_norm"]
    assert rho["rho"] is None  # every cost is zero: no ranking to correlate with
    keys = [r["key"] for r in results["runs"]]
    assert len(keys) == len(set(keys)) and {"full/seed0", "full/seed1"} <= set(keys)
    report = (out / "report.md").read_text()
    assert "Effective parameter count" in report and "| snr |" in report

    # The plan, applied to a fresh copy of the model, freezes exactly its parameters.
    monkeypatch.undo()
    plan = load_plan(out / "plan.json")
    assert sorted(e["site"] for e in plan["sites"]) == names
    fresh = AutoModelForCausalLM.from_pretrained(model)
    apply_plan(fresh, plan)
    frozen_params = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    listed = (out / "frozen_parameters.txt").read_text().split()
    assert frozen_params == {e["param_name"] for e in plan["sites"]} == set(listed)

    # axolotl's matcher: dots literal, re.match on each name, keep what any pattern matches.
    patterns = yaml.safe_load((out / "axolotl.yaml").read_text())["unfrozen_parameters"]
    compiled = [re.compile(p.replace(".", "\\.")) for p in patterns]
    trainable = {n for n, _ in fresh.named_parameters() if any(c.match(n) for c in compiled)}
    assert trainable == {n for n, p in fresh.named_parameters() if p.requires_grad}

    # A plan is refused by a model it was not made for, in one line.
    other = AutoModelForCausalLM.from_pretrained(model)
    other.lm_head.weight.data.add_(1.0)
    with pytest.raises(DeadzoneError, match="made for another model"):
        apply_plan(other, plan)

    # The report rebuilds from results.json alone, as HTML too.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Scan of" in page and "What to do next" in page and "The study" not in page
    # ... and, asked for, with the study's scan claims, both confirmed by the joint set.
    assert build([out], study=True).errors == []
    page = (out / "report.html").read_text()
    for claim, study in STUDY_SCAN:
        row = f'{escape(claim)}</td><td data-label="The study">{escape(study)}</td>'
        assert f'{row}<td class="confirmed"' in page, claim
    assert "need not train" in page.split('<section id="claims">')[1].split("</section>")[0]


def wrote(printed: str) -> list[str]:
    """The file names of the scan's closing ``wrote ...`` line."""
    line = [x for x in printed.splitlines() if x.startswith("wrote ")][-1]
    return [Path(p).name for p in line[len("wrote ") :].split(", ")]


def test_the_plan_orders_the_other_sites_by_single_cost_and_a_rerun_claims_only_its_files(
    setup,
    tmp_path,
    capsys,
    monkeypatch,
):
    """``frozen`` made free on two sites (they train) and dear on the other two (zeroed): the
    plan holds the free two, its ``order`` the others by their single-site cost, and ``freeze``'s
    ``plan:FILE`` schedule freezes in that order. Each round says the verdicts so far. A rerun
    with ``--strategies random`` into the same directory writes no plan and says so."""
    model, data = setup
    free = {"L1.attn.c_attn", "L1.mlp.c_proj"}

    def mixed(m, site, ctx) -> None:
        (strategies.full if site.name in free else strategies.zero)(m, site, ctx)

    monkeypatch.setitem(strategies.STRATEGIES, "frozen", mixed)
    monkeypatch.setitem(strategies.STRATEGIES, "random", strategies.full)
    out = tmp_path / "scan"
    args = ["scan", model, "--sites", "L1.*", *RUN, "--data", data, "--out", str(out)]
    assert main([*args, "--strategies", "frozen"]) == 0
    printed = capsys.readouterr().out
    rounds = [x for x in printed.splitlines() if x.startswith("scan: round ")]
    assert len(rounds) > 1 and all(x.endswith(" so far") for x in rounds)
    assert rounds[0].endswith("; frozen none decided so far")
    counts = re.search(r"; frozen ((?:\d+ \w+(?:, )?)+) so far$", rounds[-1])
    assert counts and sum(int(n) for n in re.findall(r"\d+", counts.group(1))) >= 3
    assert "about" not in printed
    plan_files = ["plan.json", "axolotl.yaml", "frozen_parameters.txt", "lora_config.json"]
    assert wrote(printed)[-4:] == plan_files

    rows = fileio.read_json(out / "results.json")["summary"]["strategies"]["frozen"]["sites"]
    plan = load_plan(out / "plan.json")
    assert {e["site"] for e in plan["sites"]} == free
    dear = [r for r in rows if r["site"] not in free]
    assert all(r["single"] for r in dear)  # so each one's cost is its own
    assert plan["order"] == [r["site"] for r in sorted(dear, key=lambda r: r["cost"])]
    assert len({r["cost"] for r in dear}) == 2

    fresh = AutoModelForCausalLM.from_pretrained(model)
    units, embed = model_units(fresh, "matrix")
    ctx = ScheduleContext(units=units, embed=embed, steps=8, model=fresh)
    order = [u.name for u in make_schedule(f"plan:{out / 'plan.json'}", ctx).order()]
    assert set(order[:2]) == free and order[2:4] == plan["order"]

    assert main([*args, "--strategies", "random"]) == 0
    again = capsys.readouterr().out
    summary = fileio.read_json(out / "results.json")["summary"]
    scores = ["scores.png"] if drawn(summary) else []  # none with under 3 single-site costs
    assert wrote(again) == ["results.json", "report.md", "report.html", "heatmap.png", *scores]
    assert load_plan(out / "plan.json") == plan  # the earlier plan, left as it was


def test_exhaustive_mode_reuses_the_adaptive_runs_and_runs_every_site_alone(
    setup,
    tmp_path,
):
    model, data = setup
    sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3)
    base = dict(model=model, sites="L0.mlp.*", strategies=("frozen",), seeds=2, data=data)
    base |= dict(max_length=48, sft=sft, mode="adaptive")
    adaptive = scan(ScanConfig(**base), tmp_path, show_progress=False, say=lambda _: None)
    ran: list[dict] = []
    exhaustive = scan(
        ScanConfig(**(base | {"mode": "exhaustive"})),
        tmp_path,
        show_progress=False,
        on_record=ran.append,
        say=lambda _: None,
    )
    singles = {"frozen/L0.mlp.c_fc/seed0", "frozen/L0.mlp.c_fc/seed1"}
    singles |= {"frozen/L0.mlp.c_proj/seed0", "frozen/L0.mlp.c_proj/seed1"}
    assert singles <= set(by_key(exhaustive))
    assert {r["key"] for r in ran}.isdisjoint(by_key(adaptive))  # nothing run twice
    assert all(s["single"] for s in exhaustive["summary"]["strategies"]["frozen"]["sites"])
    for doc in (adaptive, exhaustive):  # both read by Holm over the scan's 2 claims
        rows = doc["summary"]["strategies"]["frozen"]["sites"]
        assert len(rows) == 2 and {r["level"] for r in rows} <= {0.025, 0.05}


KILLED = """
import sys, time
from deadzone.experiments.scan import ScanConfig, scan
from deadzone.training.train import SFTConfig
model, data, out = sys.argv[1:4]
sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3)
config = ScanConfig(model=model, sites="L1.mlp.*", seeds=2, data=data, max_length=48, sft=sft,
                    mode="adaptive")
scan(config, out, show_progress=False, on_record=lambda r: time.sleep(0.5))
"""


def scan_config(setup) -> ScanConfig:
    model, data = setup
    sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3)
    return ScanConfig(
        model=model, sites="L1.mlp.*", seeds=2, data=data, max_length=48, sft=sft, mode="adaptive"
    )


def test_a_killed_scan_resumes_losing_and_repeating_nothing(setup, tmp_path):
    model, data = setup
    out = tmp_path / "killed"
    kill_after_runs(KILLED, model, data, out)
    kept = by_key(fileio.read_json(out / "results.json"))
    assert len(kept) >= 4

    ran: list[dict] = []
    quiet = dict(show_progress=False, say=lambda _: None)
    resumed = scan(scan_config(setup), out, on_record=ran.append, **quiet)
    assert {r["key"] for r in ran}.isdisjoint(kept)
    reference = scan(scan_config(setup), tmp_path / "whole", **quiet)
    assert by_key(resumed) == by_key(reference)
    assert resumed["summary"]["strategies"] == reference["summary"]["strategies"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sites", "L9.*"], "no site matches 'L9.*'"),
        (["--strategies", "full"], "a scan needs a strategy besides full"),
        (["--strategies", "frozen,melt"], "unknown strategy 'melt'"),
        (["--mode", "clever"], "unknown mode 'clever'; choose prior, adaptive, exhaustive"),
        (["--seeds", "1"], "a scan needs --seeds >= 2"),
        (["--groups", "head"], "groups must be 'layer' or 'role'"),
        (["--margin", "2"], "margin must be a share of the gain"),
        (["--rest", "label", "--mode", "adaptive"], "--rest label is for --mode prior"),
        (["--rest", "label", "--confirm"], "--confirm judges the likely costly sites; --rest"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, args, message):
    model, data = setup
    rc = main(["scan", model, *args, "--data", data, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o").exists()


def test_help_gives_every_option_its_default(capsys):
    from deadzone.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["scan", "--help"])
    text = capsys.readouterr().out
    options = text[text.index("options:") :]
    helps = {}  # option -> its help text, joined over lines
    for line in options.splitlines()[1:]:
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            helps[name] = line.strip()[len(name) :]
        else:
            helps[name] += " " + line.strip()
    helps = {k: " ".join(v.split()) for k, v in helps.items()}
    for option, default in {
        "--strategies": "frozen,random", "--mode": "prior", "--groups": "layer",
        "--margin": "0.02", "--margin-nats": "0.01", "--seeds": "3", "--steps": "50",
    }.items():  # fmt: skip
        assert helps[option].endswith(f"(default: {default})"), helps[option]
    assert helps["--sites"].endswith("(default: every matrix inside the blocks)")
    assert "at least 2" in helps["--seeds"]
    assert helps["--out"].endswith("(required)") and "None" not in options


@pytest.mark.slow
def test_scan_under_a_two_process_launch_on_cpu_gives_the_records_of_one_process(
    setup,
    tmp_path,
):
    """Two processes of one micro-batch each per step take the batches one process takes with
    two micro-batches per step: the same runs, the same losses (up to the order of the sums),
    the same verdicts; the main process alone holds the lock and writes."""
    model, data = setup
    common = ["scan", model, "--sites", "L1.mlp.c_fc", "--seeds", "2", "--data", data]
    common += ["--mode", "adaptive"]  # the mode whose search this launch was shown to match
    common += ["--max-length", "48", "--steps", "2", "--lr", "3e-3", "--batch-size", "4"]
    common += ["--eval-every", "2", "--cpu"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*launch, "-m", "deadzone.cli", *common, "--out", str(two)],
        check=True, timeout=900, env=env, capture_output=True,
    )  # fmt: skip
    assert main([*common, "--grad-accum", "2", "--out", str(one)]) == 0
    launched, alone = fileio.read_json(two / "results.json"), fileio.read_json(one / "results.json")
    assert [r["key"] for r in launched["runs"]] == [r["key"] for r in alone["runs"]]
    for a, b in zip(launched["runs"], alone["runs"], strict=True):
        assert a["processes"] == 2 and b["processes"] == 1
        for loss in ("step0_eval_loss", "final_train_loss", "final_eval_loss"):
            assert a[loss] == pytest.approx(b[loss], rel=1e-4), (a["key"], loss)
    verdicts = [
        {name: st["verdicts"] for name, st in r["summary"]["strategies"].items()}
        for r in (launched, alone)
    ]
    assert verdicts[0] == verdicts[1]
