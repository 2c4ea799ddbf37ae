"""The study's scan claims judged from hand-written scan results: every verdict is reachable, the
numbers come from the results, and a skipped scan stage shows the same claims."""

from __future__ import annotations

import pytest

from deadzone.study import STUDY_EFFECTIVE, STUDY_OTHERS, scan_claims, skipped_claims

SITES = ["L3.attn.c_proj", "L4.attn.c_attn", "L4.attn.c_proj", "L4.mlp.c_fc"]
PARAMS = 1024


def results(verdicts: dict[str, list[str]], joint: dict[str, list[str]] | None = None) -> dict:
    """A scan of ``SITES`` whose sites got ``verdicts[strategy]`` (in ``SITES`` order, a missing
    tail: not decided) and whose joint check accepted ``joint[strategy]``."""
    joint = joint or {}
    strategies, effective = {}, {}
    for strategy, got in verdicts.items():
        sites = [
            {"site": n, "layer": int(n[1]), "role": "r", "params": PARAMS, "verdict": v,
             "cost": 0.001, "interval": [-0.004, 0.006], "single": True}
            for n, v in zip(SITES, got, strict=False)
        ]  # fmt: skip
        chosen = joint.get(strategy, [])
        record = {"sites": chosen, "verdict": "negligible", "cost": 0.003,
                  "interval": [-0.002, 0.011], "seeds": 3} if chosen else None  # fmt: skip
        strategies[strategy] = {"sites": sites, "joint": record}
        effective[strategy] = {
            "sites": len(chosen), "params": PARAMS * len(chosen),
            "fraction_of_trainable": len(chosen) / 40, "fraction_of_block_params": len(chosen) / 8,
            "cost": record and record["cost"], "interval": record and record["interval"],
            "verdict": record and record["verdict"],
        }  # fmt: skip
    summary = {"complete": True, "unit": "share_of_gain", "strategies": strategies,
               "effective": effective}  # fmt: skip
    info = {"block_params": 8 * PARAMS, "trainable_params": 40 * PARAMS}
    return {"sites": SITES, "seeds": [0, 1, 2], "steps": 20, "summary": summary, "model_info": info}


def judged(doc: dict) -> tuple[str, str]:
    effective, others = scan_claims(doc)
    assert (effective.claim, effective.study) == STUDY_EFFECTIVE
    assert (others.claim, others.study) == STUDY_OTHERS
    return effective.verdict, others.verdict


N, C, U = "negligible", "costly", "undetermined"


def test_a_jointly_negligible_frozen_set_confirms_the_effective_count_with_its_numbers():
    doc = results({"frozen": [N, N, C, U], "random": [C, C, C, C]}, {"frozen": SITES[:2]})
    effective, others = scan_claims(doc)
    assert (effective.verdict, others.verdict) == ("confirmed", "confirmed")
    said = effective.numbers
    # the count, and which matrices it speaks of
    assert "2,048 parameters in 2 matrices (L3.attn.c_proj, L4.attn.c_attn) need not train" in said
    assert "5.0% of the trainable parameters" in said and "25.0% of those in the blocks" in said
    assert "interval [-0.20, +1.10]" in said and "Joint check on 3 seeds" in said
    assert "4 site(s) in block(s) L3, L4 (50.0% of the block parameters)" in said
    assert "up to 3 seeds, 20 steps" in said
    assert "random" not in said  # only the strategy whose set was accepted speaks
    assert "of the 1 site(s) in blocks other than L4, frozen: 1 negligible." in others.numbers
    assert "Redundant: L3.attn.c_proj." in others.numbers


def test_a_jointly_negligible_random_set_confirms_it_too():
    doc = results({"frozen": [U, U, U, U], "random": [N, U, U, U]}, {"random": SITES[:1]})
    effective, _ = scan_claims(doc)
    assert effective.verdict == "confirmed"
    said = "1,024 parameters in 1 matrix (L3.attn.c_proj) carry nothing in their values"
    assert said in effective.numbers  # one matrix, named


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        ({"frozen": [C, C, C, C], "random": [C, C, C, C]}, ("refuted", "refuted")),
        # L4.attn.c_proj itself redundant says nothing of the others
        ({"frozen": [C, C, N, C], "random": [C, C, C, C]}, ("undetermined", "refuted")),
        ({"frozen": [C, C, C, C], "random": [C, C, C, U]}, ("undetermined", "refuted")),
        # only the other block's site judges the second claim
        ({"frozen": [C, U, C, C]}, ("undetermined", "refuted")),
        ({"frozen": [U, C, C, C]}, ("undetermined", "undetermined")),
        ({"frozen": [C, C, C]}, ("undetermined", "refuted")),  # one site not decided
        ({"random": [C, C, C, C]}, ("refuted", "undetermined")),  # frozen was not scanned
    ],
)
def test_without_a_joint_set_the_claims_are_refuted_only_when_every_site_is_costly(
    verdicts, expected
):
    assert judged(results(verdicts)) == expected


def test_the_numbers_say_why_a_claim_is_undetermined():
    effective, others = scan_claims(results({"frozen": [C, U, C], "random": [C, C, C, C]}))
    assert "no set of sites was found jointly negligible" in effective.numbers
    assert "frozen: 2 costly, 1 undetermined, 1 not decided; random: 4 costly" in effective.numbers
    assert "of the 1 site(s) in blocks other than L4" in others.numbers

    doc = results({"frozen": [C, C, C, C], "random": [C, C, C, C]})
    assert "every site scanned is costly, so none can be frozen" in scan_claims(doc)[0].numbers
    doc["summary"]["complete"] = False
    doc["summary"]["strategies"]["frozen"]["sites"][0]["verdict"] = U
    assert "the scan is not complete" in scan_claims(doc)[0].numbers


def test_a_scan_of_l4_c_proj_alone_says_nothing_of_other_layers():
    doc = results({"frozen": [N, N, N, N]})
    doc["sites"] = ["L4.attn.c_proj"]
    frozen = doc["summary"]["strategies"]["frozen"]
    frozen["sites"] = [s for s in frozen["sites"] if s["site"] == "L4.attn.c_proj"]
    _, others = scan_claims(doc)
    assert others.verdict == "undetermined"
    assert "no block but L4" in others.numbers
    assert "1 site(s) in block(s) L4 (12.5% of the block parameters)" in others.numbers


def test_a_scan_of_block_4_alone_says_nothing_of_other_layers_either():
    doc = results({"frozen": [C, C, C, C]})  # L4's matrices all costly: other layers unknown
    doc["sites"] = SITES[1:]
    frozen = doc["summary"]["strategies"]["frozen"]
    frozen["sites"] = frozen["sites"][1:]
    _, others = scan_claims(doc)
    assert others.verdict == "undetermined" and "no block but L4" in others.numbers


def test_a_skipped_scan_shows_the_same_claims_undetermined():
    demo = {"stages": [{"name": "scan", "status": "skipped", "note": "no time"}]}
    skipped = skipped_claims(demo)
    ran = scan_claims(results({"frozen": [C, C, C, C]}))
    assert [(c.claim, c.study) for c in skipped] == [(c.claim, c.study) for c in ran]
    assert {c.verdict for c in skipped} == {"undetermined"}
    assert all(c.numbers == "Not run here: no time." for c in skipped)


def test_a_site_labelled_by_its_prior_is_counted_as_a_label_not_a_verdict():
    doc = results({"frozen": [C, U, U, C]})
    sites = doc["summary"]["strategies"]["frozen"]["sites"]
    sites[1]["label"] = "likely costly"
    effective, others = scan_claims(doc)
    said = "frozen: 2 costly, 1 likely costly (prior, not run), 1 undetermined"
    assert said in effective.numbers and effective.verdict == "undetermined"
