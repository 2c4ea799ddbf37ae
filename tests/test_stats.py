"""Verdict statistics against published values and scipy by hand; Holm against worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from deadzone.experiments import stats

# Student's sleep data (Cushny & Peebles 1905), extra hours of sleep, drug 2 minus drug 1,
# per patient. R's t.test(extra ~ group, data = sleep, paired = TRUE) prints t = -4.0621,
# df = 9, p-value = 0.002833, 95 percent confidence interval -2.4598858 -0.7001142,
# mean difference -1.58 (for drug 1 minus drug 2).
SLEEP = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]


def test_t_interval_matches_the_published_sleep_example():
    low, high = stats.t_interval(SLEEP)
    assert math.isclose(low, 0.7001142, abs_tol=1e-7)
    assert math.isclose(high, 2.4598858, abs_tol=1e-7)
    assert math.isclose(stats.margin_pvalue(SLEEP, 0.0), 0.002833, abs_tol=1e-6)
    assert stats.t_interval([1.0]) is None and stats.t_interval([]) is None


def test_interval_at_another_level_by_hand():
    d = np.array([0.3, -0.1, 0.4, 0.2])
    half = sps.t.ppf(1 - 0.01 / 2, 3) * d.std(ddof=1) / 2
    low, high = stats.t_interval(list(d), alpha=0.01)
    assert math.isclose(low, d.mean() - half) and math.isclose(high, d.mean() + half)


def test_tost_against_scipy_by_hand():
    d = np.array(SLEEP)
    se = d.std(ddof=1) / math.sqrt(len(d))
    p_high = sps.t.cdf((d.mean() - 3.0) / se, 9)  # H0: mean >= 3
    p_low = sps.t.sf((d.mean() - 0.5) / se, 9)  # H0: mean <= 0.5
    assert math.isclose(stats.tost_pvalue(SLEEP, 0.5, 3.0), max(p_low, p_high))
    assert math.isclose(stats.tost_pvalue(SLEEP, -math.inf, 3.0), p_high)
    assert p_high < 0.01  # equivalent below 3 at 1%: the 98% interval's upper bound is below 3
    assert stats.t_interval(SLEEP, alpha=0.02)[1] < 3.0
    # Equivalence at level a <=> the 1 - 2a interval inside the bounds, on both sides of a.
    for bound in (2.2, 2.4, 2.5, 2.7):
        p = stats.tost_pvalue(SLEEP, -math.inf, bound)
        assert (p < 0.05) == (stats.t_interval(SLEEP, alpha=0.10)[1] < bound), bound


def test_holm_matches_worked_examples():
    # Wikipedia, "Holm-Bonferroni method", example: four hypotheses at alpha = 0.05.
    p = {"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005}
    adjusted = stats.holm_adjusted_pvalues(p)
    expected = {"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02}
    assert all(math.isclose(adjusted[k], v) for k, v in expected.items())
    levels = stats.holm_levels(p)
    assert math.isclose(levels["H4"], 0.05 / 4) and math.isclose(levels["H1"], 0.05 / 3)
    assert math.isclose(levels["H3"], 0.05 / 2)  # the first one Holm keeps: it stops here
    assert math.isclose(levels["H2"], 0.05 / 2)  # not 0.05, where 0.04 would pass
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    r = stats.holm_adjusted_pvalues(dict(enumerate([0.01, 0.02, 0.03, 0.04, 0.05])))
    assert np.allclose(list(r.values()), [0.05, 0.08, 0.09, 0.09, 0.09])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=12))
def test_a_holm_level_rejects_exactly_what_holm_adjusted_p_values_reject(ps):
    p = dict(enumerate(ps))
    adjusted, levels = stats.holm_adjusted_pvalues(p), stats.holm_levels(p)
    for k in p:
        assert (p[k] < levels[k]) == (adjusted[k] < 0.05)


@pytest.mark.parametrize(
    "interval, word",
    [
        ((-0.03, -0.01), "better"),  # below zero, hence below the margin too: better first
        ((-0.01, 0.019), "negligible"),
        ((0.005, 0.015), "negligible"),
        ((-0.01, 0.02), "undetermined"),  # touching the margin is not below it
        ((0.01, 0.03), "undetermined"),
        ((0.021, 0.05), "costly"),
        (None, "undetermined"),
    ],
)
def test_verdict_precedence(interval, word):
    assert stats.verdict(interval, 0.02) == word


small = st.floats(-0.05, 0.05, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(small, min_size=2, max_size=6), min_size=1, max_size=6))
def test_verdicts_agree_with_the_adjusted_intervals_and_holm(lists):
    comparisons = {f"c{i}": d for i, d in enumerate(lists)}
    judged = stats.judge(comparisons, 0.02)
    adjusted_p = stats.holm_adjusted_pvalues({k: j.p_value for k, j in judged.items()})
    for name, j in judged.items():
        assert j.verdict == stats.verdict(j.adjusted, 0.02)
        lo, hi = j.adjusted
        assert lo <= j.interval[0] + 1e-12 and j.interval[1] <= hi + 1e-12  # never narrower
        decided = j.verdict != "undetermined"
        if abs(adjusted_p[name] - 0.05) > 1e-9:  # off the boundary, where rounding decides
            assert decided == (adjusted_p[name] < 0.05)


def test_judge_fewer_than_two_seeds_and_a_zero_difference():
    judged = stats.judge({"one": [0.1], "none": [], "same": [0.0, 0.0, 0.0]}, 0.02)
    assert judged["one"].verdict == "undetermined" and "at least 2" in judged["one"].reason
    assert judged["none"].verdict == "undetermined" and judged["none"].mean is None
    same = judged["same"]
    assert same.verdict == "negligible" and same.interval == (0.0, 0.0) and same.mean == 0.0
    assert same.level == 0.05  # Holm counts only the comparisons it can test
    with pytest.raises(ValueError):
        stats.judge({"a": [1.0, 2.0]}, 0.0)


def test_seeds_needed_solves_the_t_inequality_and_grows_as_the_margin_shrinks():
    def enough(n, sd, delta, level=0.05):
        t = sps.t.ppf(1 - level / 2, n - 1) + sps.t.ppf(0.8, n - 1)
        return t * sd / math.sqrt(n) < delta

    needed = [stats.seeds_needed(0.001, 0.01, m) for m in (0.04, 0.02, 0.01, 0.005, 0.002)]
    assert needed == sorted(needed) and len(set(needed)) == len(needed), needed
    for n, m in zip(needed, (0.04, 0.02, 0.01, 0.005, 0.002), strict=True):
        assert enough(n, 0.01, m - 0.001) and not enough(n - 1, 0.01, m - 0.001)
    assert stats.seeds_needed(0.02, 0.01, 0.02) is None  # the mean sits on the margin
    assert stats.seeds_needed(0.0, 1.0, 1e-6) is None  # past MAX_SEEDS
    # A stricter level asks for more seeds.
    assert stats.seeds_needed(0.001, 0.01, 0.01, level=0.01) > stats.seeds_needed(0.001, 0.01, 0.01)


def test_an_undetermined_comparison_says_how_many_seeds_would_decide_it():
    judged = stats.judge({"a": [0.01, 0.03, 0.0]}, 0.02)["a"]
    assert judged.verdict == "undetermined" and judged.seeds_needed > 3


# --- seeds planned before a scan ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "sd"), [(2, 0.01), (3, 0.01), (5, 0.012), (8, 0.02)])
def test_negligible_power_matches_a_simulation(n, sd):
    margin, level = 0.02, 0.05
    rng = np.random.default_rng(n)
    d = rng.normal(0.0, sd, size=(200_000, n))  # true cost 0
    half = sps.t.ppf(1 - level / 2, n - 1) * d.std(axis=1, ddof=1) / math.sqrt(n)
    simulated = float(np.mean(d.mean(axis=1) + half < margin))
    assert stats.negligible_power(n, sd, margin, level) == pytest.approx(simulated, abs=0.005)


def test_seed_plan_needs_the_fewest_seeds_that_reach_the_power():
    for sd in (0.002, 0.01, 0.03):
        plan = stats.plan_seeds(3, sd, 0.02)
        assert stats.negligible_power(plan.needed, sd, 0.02) >= stats.POWER
        if plan.needed > 2:
            assert stats.negligible_power(plan.needed - 1, sd, 0.02) < stats.POWER
    # a stricter level (Holm, many comparisons) needs more seeds
    strict = stats.plan_seeds(3, 0.01, 0.02, level=0.001)
    assert strict.needed > stats.plan_seeds(3, 0.01, 0.02).needed
    assert stats.plan_seeds(2, 0.0, 0.02) == stats.SeedPlan(2, 0.0, 0.02, 0.05, 1.0, 0.8, 2, "ok")


def test_a_seed_count_that_cannot_call_anything_negligible_is_refused():
    level = 0.05 / 64  # a scan of 32 sites in two strategies
    plan = stats.plan_seeds(3, 0.01, 0.02, level)  # t_{1-level/2, 2} = 35.7
    assert plan.decision == "refuse" and plan.power < stats.REFUSE_BELOW
    with pytest.raises(stats.DeadzoneError, match="raise --seeds") as err:
        stats.check_seed_plan(plan)
    assert "\n" not in str(err.value) and f"needs {plan.needed} seeds" in str(err.value)
    warned = stats.plan_seeds(8, 0.01, 0.02, level)
    assert warned.decision == "warn" and stats.check_seed_plan(warned) is warned
    assert stats.REFUSE_BELOW <= warned.power < stats.POWER
    assert "undetermined" in warned.message()
    enough = stats.plan_seeds(warned.needed, 0.01, 0.02, level)
    assert enough.decision == "ok" and enough.power >= stats.POWER
    assert stats.plan_seeds(2, 0.02, 0.02).decision == "refuse"  # even at 5%: 9% of the time


def test_paired_sd_from_baselines():
    assert stats.paired_sd_from_baselines([2.0, 2.1]) == pytest.approx(0.1)  # sqrt(2) * 0.0707
    assert stats.paired_sd_from_baselines([2.0, 2.1], gain=0.5) == pytest.approx(0.2)
    with pytest.raises(stats.DeadzoneError, match="at least 2 baseline"):
        stats.paired_sd_from_baselines([2.0])
    with pytest.raises(stats.DeadzoneError, match="positive gain"):
        stats.paired_sd_from_baselines([2.0, 2.1], gain=-0.1)
    with pytest.raises(stats.DeadzoneError, match="seeds >= 2"):
        stats.plan_seeds(1, 0.01, 0.02)
    with pytest.raises(stats.DeadzoneError, match="margin > 0"):
        stats.plan_seeds(3, 0.01, 0.0)
