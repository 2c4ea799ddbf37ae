"""The crystallize experiment: results file, resume, refusals, summary statistics, report, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from deadzone import fileio, strategies
from deadzone.checkpoints import model_fingerprint
from deadzone.cli import build_parser, main
from deadzone.errors import DeadzoneError
from deadzone.experiments.crystallize import (
    CrystallizeConfig,
    crystallize,
    paired_ci,
    summarize,
    t975,
    verdict,
)
from deadzone.presets import get_preset
from deadzone.pretraining import build_model, train_tokenizer
from deadzone.report.crystallize import markdown, write_report
from deadzone.train import SFTConfig

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
WORDS += ["iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"]


def rows(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Say {WORDS[i % 15]} then {WORDS[(3 * i) % 15]}:",
            "completion": f" {WORDS[i % 15]} {WORDS[(3 * i) % 15]} {WORDS[(i + 1) % 15]}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A micro GPT-2 and its tokenizer in Hugging Face format, and a prompt/completion file."""
    root = tmp_path_factory.mktemp("crystallize")
    data = rows(48)
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in data], 300)
    model = build_model(get_preset("micro"), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(root / "model"), str(path)


def config(setup, **kwargs) -> CrystallizeConfig:
    model, data = setup
    sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3, **kwargs.pop("sft", {}))
    base = dict(model=model, targets="L1.attn.c_proj", seeds=2, data=data, max_length=48, sft=sft)
    return CrystallizeConfig(**(base | kwargs))


TOP_KEYS = ["experiment", "model", "targets", "rank", "steps", "seeds", "data", "config"]
RUN_KEYS = [
    "strategy", "seed", "status", "error", "trainable_params", "seconds", "step0_eval_loss",
    "final_train_loss", "final_eval_loss", "curve",
]  # fmt: skip
SUMMARY_KEYS = [
    "strategy", "n", "train_loss_mean", "train_loss_std", "eval_loss_mean", "eval_loss_std",
    "delta_train_pct", "delta_eval_pct", "ci95_eval_pct", "verdict",
]  # fmt: skip


def test_cli_writes_results_report_and_curves(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    argv = [
        "crystallize", model, "--target", "L1.attn.c_proj",
        "--steps", "2", "--seeds", "2", "--data", data,
        "--eval-every", "2", "--batch-size", "4", "--lr", "3e-3",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Full SFT (all params)" in printed and "results.json" in printed

    results = fileio.read_json(out / "results.json")
    for key in [*TOP_KEYS, "versions", "git", "runs", "summary"]:
        assert key in results, key
    assert results["experiment"] == "crystallize"
    assert results["targets"] == ["L1.attn.c_proj"] and results["rank"] == 1
    assert results["steps"] == 2 and results["seeds"] == [0, 1]
    assert {"spec", "content_hash", "counts"} <= set(results["data"])
    assert results["data"]["max_length"] == 64  # capped at the model's context
    assert set(results["versions"]) == {"python", "torch", "transformers", "deadzone"}
    assert len(results["runs"]) == 8
    for run in results["runs"]:
        assert set(RUN_KEYS) <= set(run), run.keys()
        assert run["status"] == "ok", run["error"]
        assert [p["step"] for p in run["curve"]] == [0, 1, 2]
    by = {(r["strategy"], r["seed"]): r for r in results["runs"]}
    for seed in (0, 1):  # the target is untouched before step 0 for full and frozen
        assert by["full", seed]["step0_eval_loss"] == by["frozen", seed]["step0_eval_loss"]
        assert (
            by["full", seed]["trainable_params"] - by["frozen", seed]["trainable_params"] == 32 * 32
        )
    summary = results["summary"]
    assert [s["strategy"] for s in summary] == ["full", "frozen", "crystal", "random"]
    for s in summary:
        assert set(SUMMARY_KEYS) <= set(s)
        assert s["n"] == 2
    assert summary[0]["verdict"] == "baseline" and summary[0]["delta_eval_pct"] == 0.0
    assert all(s["verdict"] in ("better", "worse", "within noise") for s in summary[1:])

    report = (out / "report.md").read_text()
    assert "| Crystal (rank-1 approximation, frozen)" in report and "**Conclusion.**" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs_and_reproduces_a_missing_one(setup, tmp_path):
    cfg = config(setup, strategies=("full", "zero"), seeds=1)
    first = crystallize(cfg, tmp_path, show_progress=False)
    assert len(first["runs"]) == 2

    ran = []
    again = crystallize(cfg, tmp_path, show_progress=False, on_record=ran.append)
    assert ran == [] and again["runs"] == first["runs"]

    # Drop one finished run: only it runs again, with bit-identical numbers (same seed).
    doc = fileio.read_json(tmp_path / "results.json")
    dropped = doc["runs"].pop(1)
    fileio.write_json(tmp_path / "results.json", doc)
    resumed = crystallize(cfg, tmp_path, show_progress=False, on_record=ran.append)
    assert [r["key"] for r in ran] == [dropped["key"]]
    strip = ("seconds", "tokens_per_second")
    assert {k: v for k, v in ran[0].items() if k not in strip} == {
        k: v for k, v in dropped.items() if k not in strip
    }
    assert len(resumed["runs"]) == 2


def test_a_different_config_or_experiment_is_refused(setup, tmp_path):
    crystallize(config(setup, strategies=("full",), seeds=1), tmp_path, show_progress=False)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(
        DeadzoneError,
        match="experiment with config.weight_decay 0.0 \\(0.1 now\\); choose another output",
    ):
        crystallize(
            config(setup, strategies=("full",), seeds=1, sft={"weight_decay": 0.1}),
            tmp_path,
            show_progress=False,
        )
    with pytest.raises(DeadzoneError, match='experiment with targets \\["L1.attn.c_proj"\\]'):
        crystallize(config(setup, strategies=("full",), seeds=1, targets="L1.mlp.c_fc"), tmp_path)
    assert (tmp_path / "results.json").read_text() == before

    other = tmp_path / "other"
    fileio.write_json(other / "results.json", {"experiment": "scan", "runs": []})
    with pytest.raises(DeadzoneError, match="holds another experiment \\('scan'\\)"):
        crystallize(config(setup), other)

    (tmp_path / "a_file").write_text("")
    with pytest.raises(DeadzoneError, match="is a file"):
        crystallize(config(setup), tmp_path / "a_file")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "L1.attn.c_prj"], "no site matches 'L1.attn.c_prj'; closest: L1.attn.c_proj"),
        (["--target", "L1.attn.c_proj", "--rank", "0"], "rank must be an integer >= 1, got 0"),
        (["--target", "L1.attn.c_proj", "--rank", "32"], "rank 32 must be >= 1 and < 32"),
        (["--target", "L1.attn.c_proj", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--target", "L1.*", "--strategies", "full,melt"], "unknown strategy 'melt'"),
        (["--target", "L1.*", "--strategies", "frozen,crystal"], "must include full"),
        (["--target", "L1.*", "--seeds", "0"], "seeds must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, args, message):
    model, data = setup
    rc = main(["crystallize", model, *args, "--data", data, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no rows"),
        (
            '{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": ""}\n',
            "every completion is empty",
        ),
    ],
)
def test_bad_data_is_an_error(setup, tmp_path, capsys, content, message):
    model, _ = setup
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    rc = main(["crystallize", model, "--target", "L1.attn.c_proj", "--data", str(path),
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert message in capsys.readouterr().err


# --- statistics and report, from synthetic records ---------------------------------------------


def test_t_quantiles_and_paired_interval():
    assert t975(1) == 12.7062 and t975(2) == 4.3027
    assert abs(t975(60) - 2.0003) < 2e-4 and abs(t975(10_000) - 1.9602) < 2e-4
    lo, hi = paired_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    assert abs(lo - (2 - 4.3027 / 3**0.5)) < 1e-9 and abs(hi - (2 + 4.3027 / 3**0.5)) < 1e-9
    assert paired_ci([1.0]) is None
    assert verdict((-3.0, -1.0)) == "better" and verdict((0.5, 2.0)) == "worse"
    assert verdict((-1.0, 1.0)) == "within noise" and verdict(None) == "undetermined"


def run(strategy, seed, train, evaluation, status="ok"):
    if status != "ok":
        return {"strategy": strategy, "seed": seed, "status": status, "trainable_params": 10,
                "final_train_loss": None, "final_eval_loss": None, "curve": []}  # fmt: skip
    return {
        "strategy": strategy, "seed": seed, "status": status, "trainable_params": 10,
        "final_train_loss": train, "final_eval_loss": evaluation,
        "curve": [{"step": 0, "train_loss": None, "eval_loss": evaluation + 1},
                  {"step": 1, "train_loss": train, "eval_loss": evaluation}],
    }  # fmt: skip


SYNTHETIC = [
    run("full", 0, 2.0, 2.00), run("full", 1, 2.2, 2.20), run("full", 2, 2.1, 2.10),
    # 1% worse on every seed, give or take 0.1%: worse.
    run("zero", 0, 2.1, 2.02), run("zero", 1, 2.3, 2.2242), run("zero", 2, 2.2, 2.1189),
    # +0.5%, -0.5%, +0.1%: within noise.
    run("frozen", 0, 2.0, 2.01), run("frozen", 1, 2.2, 2.189), run("frozen", 2, 2.1, 2.1021),
    # one seed failed, one left beside full: undetermined.
    run("random", 0, 2.0, 1.9), run("random", 1, None, None, status="failed"),
]  # fmt: skip


def test_summary_deltas_intervals_and_verdicts():
    summary = {s["strategy"]: s for s in summarize(SYNTHETIC)}
    assert list(summary) == ["full", "zero", "frozen", "random"]
    full, zero, frozen, rnd = (summary[k] for k in ("full", "zero", "frozen", "random"))
    assert full["verdict"] == "baseline" and full["n"] == 3
    assert abs(full["eval_loss_mean"] - 2.1) < 1e-12 and abs(full["eval_loss_std"] - 0.1) < 1e-12
    assert zero["verdict"] == "worse" and zero["ci95_eval_pct"][0] > 0
    paired = [100 * 0.1 / 2.0, 100 * 0.1 / 2.2, 100 * 0.1 / 2.1]  # per seed, vs full
    assert math.isclose(zero["delta_train_pct"], sum(paired) / 3, rel_tol=1e-12)
    assert frozen["verdict"] == "within noise"
    assert rnd["verdict"] == "undetermined" and rnd["n"] == 1 and rnd["failed"] == 1
    assert rnd["eval_loss_std"] is None and rnd["ci95_eval_pct"] is None


def test_report_is_built_from_results_alone(tmp_path):
    results = {
        "experiment": "crystallize", "model": "m", "targets": ["L4.attn.c_proj"], "rank": 1,
        "steps": 1, "seeds": [0, 1, 2], "runs": SYNTHETIC, "summary": summarize(SYNTHETIC),
        "data": {"spec": "d.jsonl", "content_hash": "ab" * 32, "counts": {}},
        "config": {"lr": 3e-4, "batch_size": 8, "grad_accum": 1},
    }  # fmt: skip
    text = markdown(results)
    assert "| Zero (zeros, frozen) (n=3) |" in text
    assert "| Random (re-initialised values, frozen) (n=1, 1 failed) |" in text
    frozen = summarize(SYNTHETIC)[2]
    assert (
        "L4.attn.c_proj can be frozen at no measurable cost (eval loss within "
        f"{frozen['ci95_eval_pct'][1]:+.2f}% of full SFT, upper 95% bound)." in text
    )
    assert "Zeroing it cost +1.00% [+0.75%, +1.25%] in eval loss." in text
    assert "For random, fewer than two seeds finished beside full SFT: no verdict." in text
    assert "1 run(s) failed" in text and "not corrected for multiplicity" in text
    assert "not redundant" not in text and "*undetermined* when fewer than two seeds" in text
    assert "shares its storage" not in text
    tied = [
        r | {"sites": [{"site": "embed", "shared_with": ["lm_head.weight"]}]} for r in SYNTHETIC
    ]
    assert "`embed` shares its storage with `lm_head.weight`" in markdown(results | {"runs": tied})
    fileio.write_json(tmp_path / "results.json", results)
    report, curves = write_report(tmp_path)
    assert report.read_text() == text and curves.stat().st_size > 1000
    fileio.write_json(tmp_path / "results.json", {"experiment": "scan"})
    with pytest.raises(DeadzoneError, match="not a crystallize results file"):
        write_report(tmp_path)


def test_delta_is_the_mean_of_paired_differences_so_it_lies_in_its_interval():
    # full failed on seed 2, where the other strategy did unusually badly: comparing means
    # over every finished run would say +17%, outside the paired interval [+1%, +1%].
    runs = [
        run("full", 0, 2.0, 2.0), run("full", 1, 2.0, 2.0), run("full", 2, None, None, "failed"),
        run("zero", 0, 2.02, 2.02), run("zero", 1, 2.02, 2.02), run("zero", 2, 3.0, 3.0),
    ]  # fmt: skip
    zero = summarize(runs)[1]
    lo, hi = zero["ci95_eval_pct"]
    assert math.isclose(zero["delta_eval_pct"], 1.0) and math.isclose(zero["delta_train_pct"], 1.0)
    assert lo <= zero["delta_eval_pct"] <= hi
    assert zero["n"] == 3 and math.isclose(zero["eval_loss_mean"], 7.04 / 3)


def nan_strategy(model, site, ctx):
    """A strategy whose runs meet a NaN loss: the site's weight is all NaN."""
    strategies.zero(model, site, ctx)
    strategies.get_parameter(model, site).data.fill_(float("nan"))


def test_runs_meeting_nan_fail_with_a_reason_while_the_others_go_on(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, "zero", nan_strategy)
    results = crystallize(
        config(setup, strategies=("full", "frozen", "zero")), tmp_path, show_progress=False
    )
    by = {(r["strategy"], r["seed"]): r for r in results["runs"]}
    assert len(by) == 6
    for (strategy, _), r in by.items():
        if strategy == "zero":
            assert r["status"] == "failed" and "non-finite eval loss" in r["error"]
            assert r["final_eval_loss"] is None
        else:
            assert r["status"] == "ok" and r["error"] is None
    summary = {s["strategy"]: s for s in results["summary"]}
    assert (summary["zero"]["n"], summary["zero"]["failed"]) == (0, 2)
    assert summary["zero"]["verdict"] == "undetermined"
    assert (summary["frozen"]["n"], summary["frozen"]["failed"]) == (2, 0)
    assert fileio.read_json(tmp_path / "results.json")["summary"] == results["summary"]
    write_report(tmp_path)
    assert "2 run(s) failed" in (tmp_path / "report.md").read_text()


def test_cli_exits_nonzero_after_writing_results_when_every_full_run_failed(
    setup, tmp_path, capsys, monkeypatch, recwarn
):
    monkeypatch.setitem(strategies.STRATEGIES, "full", nan_strategy)
    model, data = setup
    out = tmp_path / "out"
    argv = ["crystallize", model, "--target", "L1.attn.c_proj", "--strategies", "full",
            "--steps", "1", "--seeds", "1", "--data", data, "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("deadzone: warning: with one seed there is no confidence interval")
    assert len(err) == 2 and err[1].startswith("deadzone: error: every full run failed (")
    assert fileio.read_json(out / "results.json")["runs"][0]["status"] == "failed"
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
    assert not [w for w in recwarn if "No artists with labels" in str(w.message)]


def test_help_gives_every_option_its_default_or_says_it_is_required(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["crystallize", "--help"])
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
    defaults = {
        "--strategies": "full,frozen,crystal,random", "--rank": "1", "--steps": "50",
        "--seeds": "3", "--data": "builtin:docstrings", "--lr": "0.0003", "--batch-size": "8",
        "--grad-accum": "1", "--eval-every": "10", "--max-length": "256", "--backend": "local",
    }  # fmt: skip
    explained = {"--eval-data", "--workers", "--ray-address"}
    assert set(helps) == {"-h", "--target", "--out", *explained, *defaults}
    for option, default in defaults.items():
        assert helps[option].endswith(f"(default: {default})"), helps[option]
    assert helps["--target"].endswith("(required)") and helps["--out"].endswith("(required)")
    assert (
        "(default: the builtin's own eval split, else a held-out 10% of --data)"
        in (helps["--eval-data"])
    )
    assert "capped at the model's context length" in helps["--max-length"]
    assert helps["--workers"].endswith("(default: one run after another in this process)")
    assert helps["--ray-address"].endswith("(default: start a local cluster on this machine)")
    for form in (".txt", ".jsonl", ".json", ".csv", ".parquet", "directory", "hub id"):
        assert form in helps["--data"], form
    assert "None" not in options


def test_a_model_resaved_with_other_weights_is_refused(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, data = setup
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    print_ = model_fingerprint(tmp_path / "model")
    assert print_ == model_fingerprint(source)  # the same weights, saved again
    cfg = config((str(tmp_path / "model"), data), strategies=("full",), seeds=1)
    crystallize(cfg, tmp_path / "out", show_progress=False)

    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.add_(1e-3)
    model.save_pretrained(tmp_path / "model")
    assert model_fingerprint(tmp_path / "model") != print_
    with pytest.raises(DeadzoneError, match="with model_info.fingerprint"):
        crystallize(cfg, tmp_path / "out", show_progress=False)


TWO_PROCESS_SCRIPT = """
import sys, torch
from deadzone.experiments.crystallize import CrystallizeConfig, crystallize
from deadzone.train import SFTConfig

torch.set_num_threads(1)
model, data, out = sys.argv[1:4]
sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2, cpu=True)
cfg = CrystallizeConfig(
    model=model, targets="L1.attn.c_proj", strategies=("full", "frozen"), seeds=2, data=data,
    max_length=48, sft=sft,
)
assert len(crystallize(cfg, out, show_progress=False)["runs"]) == 4
"""


@pytest.mark.slow
def test_two_processes_write_every_run_once(setup, tmp_path):
    model, data = setup
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    out = tmp_path / "out"
    subprocess.run([*launch, str(script), model, data, str(out)], check=True, timeout=600)
    results = fileio.read_json(out / "results.json")
    assert len(results["runs"]) == 4
    assert all(r["status"] == "ok" and r["processes"] == 2 for r in results["runs"])
    assert [s["n"] for s in results["summary"]] == [2, 2]
