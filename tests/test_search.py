"""The adaptive search against a synthetic oracle: a cost function with a known negligible set
and known seed noise, judged with plain Student-t intervals against a margin."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from conftest import MARGIN, Oracle
from hypothesis import given
from hypothesis import strategies as st

from deadzone.errors import DeadzoneError
from deadzone.experiments import search as S


def model_sites(layers: int = 8, roles=("attn_qkv", "attn_out", "mlp_in", "mlp_out")):
    return [(f"L{layer}.{role}", layer, role) for layer in range(layers) for role in roles]


def by_layer(names: list[tuple]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, layer, _ in names:
        groups.setdefault(layer, []).append(name)
    return list(groups.values())


def planted(costly: set[str], sites, low=0.001, high=0.2) -> dict[str, float]:
    return {n: (high if n in costly else low) for n, _, _ in sites}


def test_finds_the_negligible_set_with_fewer_evaluations_than_sites() -> None:
    sites = model_sites()
    costly = {"L1.mlp_out", "L2.attn_out", "L5.mlp_in", "L6.mlp_out"}
    oracle = Oracle(planted(costly, sites), noise=0.002)
    record = S.search(oracle, by_layer(sites), max_seeds=3, margin=MARGIN)
    found = {n for n, s in record["sites"].items() if s["verdict"] == "negligible"}
    assert found == {n for n, _, _ in sites} - costly
    assert {n for n, s in record["sites"].items() if s["verdict"] == "costly"} == costly
    assert len([s for s in record["steps"] if s["phase"] == "groups"]) < len(sites)
    exhaustive = S.exhaustive(Oracle(planted(costly, sites), noise=0.002), [n for n, *_ in sites],
                              seeds=3)  # fmt: skip
    assert record["runs"] < exhaustive["runs"] == 3 * len(sites)
    # the joint check of 28 sites at 0.001 each: 0.028 > margin, so it shrinks to 19 or fewer
    joint = record["joint"]
    assert joint["verdict"] == "negligible" and len(joint["sites"]) <= 19
    assert oracle.true_cost(frozenset(joint["sites"])) < MARGIN
    assert len(joint["steps"]) < len(joint["removed"])  # the margin sizes the steps
    json.dumps(record)  # plain data


def test_joint_check_without_a_margin_takes_one_site_at_a_time() -> None:
    sites = {f"s{i}": {"verdict": "negligible", "cost": 0.001 * (i + 1), "group_size": 1}
             for i in range(6)}  # fmt: skip
    oracle = Oracle({n: s["cost"] * 4 for n, s in sites.items()}, noise=0.0005)
    joint = S.joint_check(oracle, sites, max_seeds=3)
    # 0.084 in all; taking out s5 (0.024), s4, s3 leaves 0.024, s2 then 0.012
    assert joint["removed"] == ["s5", "s4", "s3", "s2"]
    assert joint["sites"] == ["s0", "s1"] and joint["verdict"] == "negligible"
    assert [s["action"] for s in joint["steps"]] == ["shrink"] * 4 + ["decided"]


def test_cheap_scores_order_the_splits() -> None:
    """With a score that ranks the costly sites last, a split separates them at once."""
    sites = model_sites(layers=1, roles=[f"r{i}" for i in range(16)])
    costly = {"L0.r3", "L0.r11"}
    costs = planted(costly, sites)
    names = [n for n, *_ in sites]
    blind = S.search(Oracle(costs, 0.001), [names], max_seeds=2, joint=False)
    scored = S.search(Oracle(costs, 0.001), [names], max_seeds=2, joint=False,
                      priority={n: float(n in costly) for n in names})  # fmt: skip
    for record in (blind, scored):
        assert S.verdict_counts(record) == {"negligible": 14, "costly": 2, "better": 0,
                                            "undetermined": 0}  # fmt: skip
    assert scored["judgements"] < blind["judgements"]


@pytest.mark.parametrize("trial", range(12))
def test_never_calls_a_costly_site_negligible_when_noise_is_small(trial: int) -> None:
    rng = random.Random(trial)
    sites = model_sites(layers=6)
    costly = set(rng.sample([n for n, *_ in sites], rng.randint(1, 10)))
    costs = {n: (rng.uniform(2, 10) * MARGIN if n in costly else rng.uniform(-0.002, 0.003))
             for n, *_ in sites}  # fmt: skip
    oracle = Oracle(costs, noise=0.003, seed=trial)
    record = S.search(oracle, by_layer(sites), max_seeds=4,
                      priority={n: rng.random() for n in costs})  # fmt: skip
    negligible = {n for n, s in record["sites"].items() if s["verdict"] in S.ACCEPTED}
    assert not negligible & costly
    assert not set(record["joint"]["sites"]) & costly
    assert all(seeds <= 4 for _, seeds in oracle.asked)


def test_undetermined_comparisons_get_more_seeds_up_to_the_maximum() -> None:
    sites = model_sites(layers=2, roles=("a", "b"))
    costs = {"L0.a": 0.001, "L0.b": 0.001, "L1.a": 0.02, "L1.b": 0.2}
    oracle = Oracle(costs, noise=0.01)
    record = S.search(oracle, [[n] for n, *_ in sites], max_seeds=6)
    more = [s for s in record["steps"] if s["action"] == "more_seeds"]
    assert more and all(s["verdict"] == "undetermined" for s in more)
    assert max(seeds for _, seeds in oracle.asked) <= 6
    # the site right at the margin stays undetermined after 6 seeds
    assert record["sites"]["L1.a"] == {**record["sites"]["L1.a"], "verdict": "undetermined",
                                       "seeds": 6}  # fmt: skip
    assert record["sites"]["L1.b"]["verdict"] == "costly"
    # a costly site is decided on the first seeds; no seeds are added to decided comparisons
    assert record["sites"]["L1.b"]["seeds"] == 2


def test_joint_check_shrinks_a_set_whose_members_interact() -> None:
    sites = model_sites(layers=4, roles=("a", "b"))
    costs = {n: 0.001 for n, *_ in sites} | {"L0.a": 0.004, "L3.b": 0.003}
    oracle = Oracle(costs, noise=0.001, interactions=[("L0.a", "L3.b", 0.1)])
    record = S.search(oracle, [[n] for n, *_ in sites], max_seeds=3)
    assert S.verdict_counts(record)["negligible"] == 8  # each site alone is negligible
    joint = record["joint"]
    assert joint["removed"] == ["L0.a"]  # the most costly first, and that is enough
    assert [s["action"] for s in joint["steps"]] == ["shrink", "decided"]
    assert joint["steps"][0]["verdict"] == "costly" and joint["verdict"] == "negligible"
    assert set(joint["sites"]) == {n for n, *_ in sites} - {"L0.a"}


def test_decisions_are_a_function_of_the_judgements() -> None:
    """A resumed search asks the same questions in the same order and records the same."""
    sites = model_sites(layers=4)
    costs = planted({"L1.mlp_out", "L3.attn_qkv"}, sites)
    first, second = Oracle(costs, 0.004), Oracle(costs, 0.004)
    a = S.search(first, by_layer(sites), max_seeds=4)
    b = S.search(second, by_layer(sites), max_seeds=4)
    assert a == b and first.asked == second.asked
    assert len(set(first.asked)) == len(first.asked)  # each question asked once


def test_bad_input() -> None:
    oracle = Oracle({"a": 0.0, "b": 0.0}, 0.001)
    with pytest.raises(DeadzoneError, match="start seeds"):
        S.search(oracle, [["a"]], max_seeds=1)
    with pytest.raises(DeadzoneError, match="share a site"):
        S.search(oracle, [["a", "b"], ["b"]], max_seeds=2)
    with pytest.raises(DeadzoneError, match="unknown verdict"):
        S.Judgement("fine")


def test_groups_by_layer_and_role() -> None:
    class Site:
        def __init__(self, name, layer, role):
            self.name, self.layer, self.role = name, layer, role

    sites = [Site(n, layer, role) for n, layer, role in model_sites(layers=2, roles=("a", "b"))]
    sites.append(Site("embed", None, "embed"))
    assert S.groups_by(sites, "layer") == [["L0.a", "L0.b"], ["L1.a", "L1.b"], ["embed"]]
    assert S.groups_by(sites, "role") == [["L0.a", "L1.a"], ["L0.b", "L1.b"], ["embed"]]
    with pytest.raises(DeadzoneError):
        S.groups_by(sites, "shape")


def test_where_costly_sites_are_common_it_tests_them_one_at_a_time() -> None:
    sites = model_sites()
    names = [n for n, *_ in sites]
    costs = dict.fromkeys(names, 0.2)
    switched = S.search(Oracle(costs, 0.002), by_layer(sites), max_seeds=3, joint=False)
    halving = S.search(Oracle(costs, 0.002), by_layer(sites), max_seeds=3, joint=False,
                       switch_prevalence=None)  # fmt: skip
    for record in (switched, halving):
        assert S.verdict_counts(record)["costly"] == len(names)
    assert halving["judgements"] == 8 * 7  # a group of 4, its halves, its sites
    assert switched["judgements"] < len(names) + 8
    assert any(s["action"] == "singles" for s in switched["steps"])


def test_joint_check_removes_at_most_half_the_set_when_costs_do_not_add_up() -> None:
    sites = {f"s{i:02d}": {"verdict": "negligible", "cost": 0.001, "group_size": 1}
             for i in range(20)}  # fmt: skip

    def judge(chosen: frozenset[str], seeds: int) -> S.Judgement:  # 20 x 0.001 costs 0.1
        if len(chosen) > 5:
            return S.Judgement("costly", 0.1, (0.08, 0.12))
        return S.Judgement("negligible", 0.004, (0.0, 0.01))

    joint = S.joint_check(judge, sites, max_seeds=3, margin=MARGIN)
    assert [len(s["sites"]) for s in joint["steps"]] == [20, 10, 5]
    assert joint["verdict"] == "negligible" and len(joint["sites"]) == 5


def test_joint_check_keeps_the_claim_of_a_set_already_decided_on_every_seed() -> None:
    # one site left, decided negligible by a looser level than the judge reads at
    sites = {"a": {"verdict": "negligible", "cost": 0.005, "interval": [0.0, 0.015],
                   "group_size": 1, "seeds": 3, "set": ["a"]}}  # fmt: skip

    def strict(chosen: frozenset[str], seeds: int) -> S.Judgement:
        raise AssertionError("a set already decided is judged again")

    joint = S.joint_check(strict, sites, max_seeds=3, margin=MARGIN)
    assert joint["sites"] == ["a"] and joint["verdict"] == "negligible"
    assert joint["interval"] == [0.0, 0.015]


def test_a_judge_that_stops_the_search_leaves_the_sites_decided_before_it():
    """``decided`` holds each site as it is decided, so a caller whose judge raises (the scan,
    missing runs) can say how far the search got."""
    oracle = Oracle({"a": 0.0, "b": 0.0, "c": 0.5, "d": 0.0}, 0.001)

    def judge(sites: frozenset[str], seeds: int) -> S.Judgement:
        if "c" in sites:
            raise LookupError("not run yet")
        return oracle(sites, seeds)

    decided: dict[str, dict] = {}
    with pytest.raises(LookupError):
        S.search(judge, [["a", "b"], ["c", "d"]], max_seeds=3, decided=decided)
    assert {n: s["verdict"] for n, s in decided.items()} == {"a": "negligible", "b": "negligible"}
    record = S.search(oracle, [["a", "b"], ["c", "d"]], max_seeds=3, decided=decided)
    assert record["sites"] == decided and decided["c"]["verdict"] == "costly"
    assert S.single_cost(decided["a"]) == pytest.approx(decided["a"]["cost"] / 2)


# --- the search by prior ---------------------------------------------------------------------


def informative(costs: dict[str, float], rng: random.Random, spread: float = 0.3) -> dict:
    """Priors that know each cost up to a factor (log-normal, ``spread`` on the log scale)."""
    return {n: c * math.exp(rng.gauss(0.0, spread)) for n, c in costs.items()}


def mixed_costs(rng: random.Random, sites, share_costly: float = 0.4) -> tuple[dict, set]:
    names = [n for n, *_ in sites]
    costly = set(rng.sample(names, round(share_costly * len(names))))
    costs = {n: (rng.uniform(2, 10) * MARGIN if n in costly else rng.uniform(0.0, 0.001))
             for n in names}  # fmt: skip
    return costs, costly


@pytest.mark.parametrize("trial", range(8))
def test_informative_priors_spend_fewer_runs_than_one_per_site(trial: int) -> None:
    rng = random.Random(trial)
    sites = model_sites()  # 32 sites, 40% of them costly: where group testing saves nothing
    costs, costly = mixed_costs(rng, sites)
    oracle = Oracle(costs, noise=0.003, seed=trial)
    names = [n for n, *_ in sites]
    record = S.prior_search(oracle, names, informative(costs, rng), margin=MARGIN, max_seeds=3)
    assert record["runs"] < len(names) < S.exhaustive(Oracle(costs, 0.003), names, seeds=3)["runs"]
    accepted = {n for n, s in record["sites"].items() if s["verdict"] in S.ACCEPTED}
    assert not accepted & costly
    assert accepted == set(names) - costly  # every negligible site found, none left undecided
    labelled = {n for n, s in record["sites"].items() if s.get("label") == S.LIKELY_COSTLY}
    assert labelled <= costly and labelled == set(record["priors"]["likely_costly"])
    assert all(record["sites"][n]["verdict"] == "undetermined" for n in labelled)  # no verdict
    joint = record["joint"]
    assert joint["verdict"] == "negligible" and oracle.true_cost(frozenset(joint["sites"])) < MARGIN
    json.dumps(record)


@pytest.mark.parametrize("trial", range(8))
def test_misleading_priors_never_call_a_costly_site_negligible(trial: int) -> None:
    rng = random.Random(100 + trial)
    sites = model_sites(layers=6)
    costs, costly = mixed_costs(rng, sites, share_costly=rng.uniform(0.05, 0.4))
    prior = {n: rng.choice([0.0, 0.5 * MARGIN, 10 * MARGIN]) for n in costs}  # unrelated
    oracle = Oracle(costs, noise=0.003, seed=trial)
    record = S.prior_search(oracle, list(costs), prior, margin=MARGIN, max_seeds=4, confirm=True)
    accepted = {n for n, s in record["sites"].items() if s["verdict"] in S.ACCEPTED}
    assert not accepted & costly
    assert not set(record["joint"]["sites"]) & costly
    assert all(seeds <= 4 for _, seeds in oracle.asked)
    assert not any(s.get("label") for s in record["sites"].values())  # confirmed: all judged


def test_sequential_seeds_stop_early_on_a_planted_large_effect() -> None:
    costs = {"large": 10 * MARGIN, "edge": MARGIN, "tiny": 0.0005}
    prior = dict.fromkeys(costs, MARGIN)  # every site in the middle: judged one by one
    oracle = Oracle(costs, noise=0.01)
    record = S.prior_search(oracle, list(costs), prior, margin=MARGIN, max_seeds=8, joint=False)
    large, edge = record["sites"]["large"], record["sites"]["edge"]
    assert large["verdict"] == "costly" and large["seeds"] == 2
    assert {seeds for sites, seeds in oracle.asked if sites == {"large"}} == {2}
    assert edge["seeds"] == 8 and edge["verdict"] == "undetermined"  # at the margin: every seed
    assert any(s["action"] == "more_seeds" and s["sites"] == ["edge"] for s in record["steps"])


def test_priors_ten_times_a_cost_are_ranked_then_calibrated() -> None:
    """Priors on the wrong scale (ten times each cost, as an attribution share is against a
    freezing cost): no threshold on them finds a candidate, the ranking does, and the smallest
    set refused puts the rest back on the cost's scale."""
    low = [f"n{i}" for i in range(6)]
    costs = {n: 0.002 for n in low} | {"m0": 0.015, "m1": 0.03, "c0": 0.2, "c1": 0.5}
    prior = {n: 10 * c for n, c in costs.items()}  # every prior above the margin
    oracle = Oracle(costs, noise=0.0005)
    record = S.prior_search(oracle, list(costs), prior, margin=MARGIN, max_seeds=3)
    part = record["priors"]
    assert part["ranked"] == [*low, "m0", "m1", "c0", "c1"]
    # 6 x 0.002 = 0.012 together, 0.027 with m0: the bisection stops at the six
    assert part["candidates"] == low
    assert all(record["sites"][n]["set"] == low for n in low)
    assert part["calibrated_on"] == [*low, "m0"]
    assert part["factor"] == pytest.approx(0.1, rel=0.1)  # cost / prior of that set
    assert part["likely_costly"] == ["c0", "c1"]  # 0.2 and 0.5 > 4 x margin, calibrated
    assert all(record["sites"][n].get("label") == S.LIKELY_COSTLY for n in ("c0", "c1"))
    assert frozenset({"c0"}) not in {sites for sites, _ in oracle.asked}  # never run
    assert record["sites"]["m0"]["verdict"] == "negligible"  # judged alone: 0.015 < 0.02
    assert record["sites"]["m1"]["verdict"] == "costly"
    assert len({sites for sites, _ in oracle.asked if len(sites) > 1}) <= 5  # 2, 4, 8, 6, 7
    assert set(record["joint"]["sites"]) <= {*low, "m0"}


def test_prior_search_is_a_function_of_the_judgements() -> None:
    rng = random.Random(7)
    costs, _ = mixed_costs(rng, model_sites(layers=4))
    prior = informative(costs, rng, spread=1.0)
    first, second = Oracle(costs, 0.004), Oracle(costs, 0.004)
    a = S.prior_search(first, list(costs), prior, margin=MARGIN, max_seeds=4)
    b = S.prior_search(second, list(costs), prior, margin=MARGIN, max_seeds=4)
    assert a == b and first.asked == second.asked


def test_prior_search_bad_input() -> None:
    oracle = Oracle({"a": 0.0, "b": 0.0}, 0.001)
    with pytest.raises(DeadzoneError, match="above > 1"):
        S.prior_search(oracle, ["a", "b"], {}, margin=MARGIN, max_seeds=3, above=0.5)
    with pytest.raises(DeadzoneError, match="distinct"):
        S.prior_search(oracle, ["a", "a"], {}, margin=MARGIN, max_seeds=3)
    with pytest.raises(DeadzoneError, match="start seeds"):
        S.prior_search(oracle, ["a"], {}, margin=MARGIN, max_seeds=1)
    record = S.prior_search(oracle, ["a", "b"], {"a": 0.0}, margin=MARGIN, max_seeds=3)
    assert record["priors"]["ranked"] == ["a"] and record["priors"]["middle"] == ["b"]


@given(st.integers(0, 64), st.integers(0, 64), st.integers(0, 70))
def test_deepest_finds_the_largest_accepted_count_from_any_guess(high, answer, first) -> None:
    answer = min(answer, high)
    found, judged = S.deepest(lambda n: n <= answer, high, first=first)
    assert found == answer and len(set(judged)) == len(judged) and all(judged)
    if 0 < first == answer < high:  # the guess right: it, and one more refused
        assert judged == [answer, answer + 1]


def test_without_judging_the_rest_only_sets_of_the_lowest_priors_are_run() -> None:
    low = [f"n{i}" for i in range(6)]
    costs = {n: 0.002 for n in low} | {"m0": 0.015, "m1": 0.03, "c0": 0.2, "c1": 0.5}
    prior = {n: 10 * c for n, c in costs.items()}
    oracle = Oracle(costs, noise=0.0005)
    record = S.prior_search(
        oracle, list(costs), prior, margin=MARGIN, max_seeds=3, judge_rest=False
    )
    ranked = record["priors"]["ranked"]
    assert all(sorted(sites) == sorted(ranked[: len(sites)]) for sites, _ in oracle.asked)
    assert record["priors"]["groups"] == [] and set(record["joint"]["sites"]) == set(low)
    labels = {n: s.get("label") for n, s in record["sites"].items()}
    unjudged = dict.fromkeys(("m0", "m1"), S.NOT_JUDGED)
    assert labels == dict.fromkeys(low) | unjudged | dict.fromkeys(("c0", "c1"), S.LIKELY_COSTLY)
    assert all(record["sites"][n]["verdict"] == "undetermined" for n in ("m0", "m1", "c0"))
    counts = S.verdict_counts(record)
    assert counts[S.NOT_JUDGED] == 2 and counts[S.PRIOR_COUNT] == 2 and counts["undetermined"] == 0


@given(st.integers(0, 64), st.integers(0, 64), st.integers(0, 70), st.lists(st.integers(-5, 80)))
def test_deepest_with_any_proposals_after_refusals_finds_the_same_count(
    high, answer, first, proposals
) -> None:
    answer = min(answer, high)
    queue = list(proposals)

    def propose(refused: int) -> int:
        return queue.pop() if queue else 0

    found, judged = S.deepest(lambda n: n <= answer, high, first=first, after_refusal=propose)
    assert found == answer and len(set(judged)) == len(judged) and all(judged)


def test_a_right_proposal_after_a_refusal_ends_the_search() -> None:
    found, judged = S.deepest(lambda n: n <= 3, 40, first=16, after_refusal=lambda n: 3)
    assert (found, judged) == (3, [16, 3, 4])
    found, judged = S.deepest(lambda n: n <= 0, 40, first=16, after_refusal=lambda n: 0)
    assert (found, judged) == (0, [16, 1])


def test_a_refused_costly_set_recalibrates_the_next_guess() -> None:
    # priors rank right but are 50x too small: the first guess (every site) is refused, and its
    # measured cost puts the next guess on the right count at once
    costs = {f"s{i:02d}": 0.0015 * (i + 1) for i in range(20)}
    prior = {n: c / 50 for n, c in costs.items()}
    record = S.prior_search(Oracle(costs, noise=0.0001), list(costs), prior, margin=MARGIN,
                            max_seeds=3, judge_rest=False, joint=False)  # fmt: skip
    sizes = [len(s["sites"]) for s in record["steps"] if s["action"] in ("accepted", "refused")]
    fit = sum(1 for t in itertools.accumulate(costs.values()) if t <= MARGIN)
    assert sizes[0] == 20 and sizes[1:] == [fit, fit + 1]


def test_sizes_rank_by_prior_per_parameter_and_free_more_parameters() -> None:
    """Given each site's parameters, the ranking is the knapsack's greedy order: four large
    matrices whose priors are a little higher than four small ones' but far lower per
    parameter come first, and the set found negligible holds more parameters."""
    small = {f"s{i}": 0.004 for i in range(4)}  # 1,000 parameters each
    large = {f"l{i}": 0.006 for i in range(4)}  # 4,000 parameters each
    costs = small | large
    size = dict.fromkeys(small, 1000) | dict.fromkeys(large, 4000)
    kwargs = {"margin": MARGIN, "max_seeds": 3, "judge_rest": False, "joint": False}
    by_share = S.prior_search(Oracle(costs, 0.0002), list(costs), costs, **kwargs)
    by_param = S.prior_search(Oracle(costs, 0.0002), list(costs), costs, size=size, **kwargs)
    assert by_share["priors"]["candidates"] == ["s0", "s1", "s2", "s3"]  # 0.016: 4,000 params
    assert by_param["priors"]["ranked"][:4] == ["l0", "l1", "l2", "l3"]
    assert by_param["priors"]["candidates"] == ["l0", "l1", "l2"]  # 0.018: 12,000 params
    for record in (by_share, by_param):
        chosen = record["priors"]["candidates"]
        assert all(record["sites"][n]["verdict"] == "negligible" for n in chosen)
    with pytest.raises(DeadzoneError, match="size"):
        S.prior_search(Oracle(costs, 0.0002), list(costs), costs, size={"s0": 0}, **kwargs)
