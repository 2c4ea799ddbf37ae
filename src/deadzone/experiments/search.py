"""The adaptive search of a scan: which sites are negligible, with as few runs as it can.

Pure logic against an oracle: ``judge(sites, seeds) -> Judgement`` says whether putting the
frozenset ``sites`` into the strategy at once, over the first ``seeds`` seeds, is negligible
(the scan implements it with SFT runs and ``deadzone.experiments.stats``; tests with a synthetic
cost function). Every decision here is a deterministic function of the judgements, so a
resumed scan asks the same questions in the same order and gets its cached answers.

Group testing (:func:`search`):

1. The groups given (all matrices of a block, one role across blocks, ...) are judged in order,
   first on ``start_seeds`` seeds. Within a group sites are ordered by ``priority`` (a cheap
   score, higher = likelier costly; then by name), so a split separates the likely costly.
2. ``negligible`` or ``better``: every site of the group is negligible (``better`` if alone).
   Group testing assumes monotone costs: a part of a negligible set is negligible; the joint
   check (below) tests the assumption on the union.
3. ``costly``: a group of one is costly; a larger one is split in two halves, judged next.
4. ``undetermined``: judged again on more seeds (``seeds_needed`` if given, at least one more,
   at most ``max_seeds``); still undetermined at ``max_seeds``, a group is split, a site is
   left ``undetermined``.
5. Once ``SWITCH_AFTER`` sites are decided, while more than ``switch_prevalence`` of them are
   not negligible, a group not accepted is split into single sites, and a group given is not
   judged whole but site by site (step ``"singles"``): where costly sites are common, halving
   would judge most of them several times.

The joint check (:func:`joint_check`): every site found negligible is judged at once on
``max_seeds`` seeds; while that is not negligible the sites with the largest single-site costs
(a site's own judgement's cost, else its group's shared out; ties: higher priority, then name)
are taken out, one at a time or as many as the costs say it takes (at most half the set per
step), and the rest judged again.
Each step is recorded.

The search by prior (:func:`prior_search`): where each site has an estimated cost (a prior,
e.g. its attribution share from the baseline runs), the sites ranked by prior (per parameter,
when their sizes are given: the order that fits the most parameters under the margin) are
judged together, the lowest first, the longest run of them that is negligible as one set found
by bisection over its length (after a refusal, the next length is the priors' guess recalibrated on
the set refused, kept inside the lengths still open); the smallest set found not negligible
calibrates the priors (its cost over its summed prior); the sites whose calibrated prior is
far above the margin are labelled ``likely costly`` without a run (a prior, never a verdict)
unless the caller asks to confirm them, and the others are judged in packs on sequential
seeds. Where priors rank well it spends about log2(n) judgements on the set that matters most
to a plan; where they mislead it spends more, never a wrong verdict (every set is judged, not
assumed).

The record (:func:`search` returns it; every value JSON-ready)::

    {"steps": [{"phase": "groups", "sites": [...], "seeds": 2, "verdict": "costly",
                "cost": 0.12, "interval": [0.08, 0.16], "seeds_needed": null,
                "action": "split"}, ...],
     "sites": {"L0.attn.c_attn": {"verdict": "negligible", "cost": 0.004,
                                  "interval": [...], "seeds_needed": null,
                                  "group_size": 4, "seeds": 2,
                                  "set": ["L0.attn.c_attn", ...]}, ...},
     "joint": {"sites": [...], "verdict": "negligible", "cost": ..., "interval": [...],
               "removed": [...], "steps": [...]} or null,
     "judgements": 17, "runs": 40}

A site's ``set`` and ``seeds`` name the judgement that decided it, so a caller can read that
judgement again at another level (the scan's final verdicts are Holm's, over every site).
``runs`` counts distinct (set of sites, seed) pairs asked for: the SFT runs the answers need,
besides the ``full`` baseline of each seed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from deadzone.errors import DeadzoneError

VERDICTS = ("negligible", "costly", "better", "undetermined")
# Share of costly sites above which a search tests sites one at a time (group testing costs
# more than testing each site where about a third or more of them are costly).
SWITCH_PREVALENCE = 0.3
SWITCH_AFTER = 4  # sites decided before the share is trusted
ACCEPTED = ("negligible", "better")


@dataclass(frozen=True)
class Judgement:
    """The answer about one set of sites: verdict, cost estimate (share of the fine-tuning gain),
    its interval ``(low, high)``, and the seeds that would decide an undetermined one."""

    verdict: str
    cost: float | None = None
    interval: tuple[float, float] | None = None
    seeds_needed: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise DeadzoneError(f"unknown verdict {self.verdict!r}; known: {', '.join(VERDICTS)}")

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "cost": self.cost,
            "interval": None if self.interval is None else list(self.interval),
            "seeds_needed": self.seeds_needed,
        }


Judge = Callable[[frozenset[str], int], Judgement]


class Asker:
    """The judge, asked each (set, seeds) once, counting judgements and distinct runs. Pass one
    to :func:`search` and then to :func:`joint_check` to count both in one tally."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.answers: dict[tuple[frozenset[str], int], Judgement] = {}
        self.seeds_run: dict[frozenset[str], int] = {}

    def __call__(self, sites: Iterable[str], seeds: int) -> Judgement:
        key = (frozenset(sites), seeds)
        if key not in self.answers:
            self.answers[key] = self.judge(*key)
            self.seeds_run[key[0]] = max(seeds, self.seeds_run.get(key[0], 0))
        return self.answers[key]

    @property
    def runs(self) -> int:
        return sum(self.seeds_run.values())


def _step(phase: str, sites: list[str], seeds: int, j: Judgement, action: str) -> dict:
    return {"phase": phase, "sites": list(sites), "seeds": seeds, **j.as_dict(), "action": action}


def _check_seeds(start_seeds: int, max_seeds: int) -> None:
    if not 2 <= start_seeds <= max_seeds:
        raise DeadzoneError(
            f"the search needs 2 <= start seeds <= max seeds, got {start_seeds} and {max_seeds}"
        )


def sequential(
    ask: Judge, sites: list[str], start_seeds: int, max_seeds: int, steps: list, phase: str
) -> tuple[Judgement, int]:
    """Judge ``sites`` on ``start_seeds`` seeds, then, while undetermined, on more (its
    ``seeds_needed`` if given, at least one more, at most ``max_seeds``): the last judgement and
    its seeds. A set whose interval already lies wholly on one side stops at ``start_seeds``.
    Each look that asks for more is recorded in ``steps`` (action ``more_seeds``)."""
    seeds = start_seeds
    while True:
        j = ask(frozenset(sites), seeds)
        if j.verdict != "undetermined" or seeds >= max_seeds:
            return j, seeds
        steps.append(_step(phase, sites, seeds, j, "more_seeds"))
        seeds = min(max_seeds, max(seeds + 1, j.seeds_needed or 0))


def search(
    judge: Judge,
    groups: list[list[str]],
    *,
    max_seeds: int,
    start_seeds: int = 2,
    priority: dict[str, float] | None = None,
    joint: bool = True,
    margin: float | None = None,
    switch_prevalence: float | None = SWITCH_PREVALENCE,
    decided: dict[str, dict] | None = None,
) -> dict:
    """Group-test ``groups`` of site names, then (if ``joint``) check the negligible set jointly
    (``margin``: see :func:`joint_check`; ``switch_prevalence``: step 5 of the module docstring,
    None never switches).

    Returns the record described in the module docstring. ``decided``, if given, is filled with
    each site's entry as it is decided: a caller whose judge raises reads there the sites
    decided so far.
    """
    _check_seeds(start_seeds, max_seeds)
    names = [n for g in groups for n in g]
    if len(set(names)) != len(names):
        raise DeadzoneError("the groups of a search must not share a site")
    priority = priority or {}

    def order(group: Iterable[str]) -> list[str]:
        return sorted(group, key=lambda n: (priority.get(n, 0.0), n))

    ask = judge if isinstance(judge, Asker) else Asker(judge)
    steps: list[dict] = []
    sites: dict[str, dict] = {} if decided is None else decided
    queue = deque((order(g), True) for g in groups if g)  # (group, one of the groups given)

    def dense() -> bool:
        """The share of costly sites among those decided so far is above the switch."""
        if switch_prevalence is None or len(sites) < SWITCH_AFTER:
            return False
        costly = sum(s["verdict"] not in ACCEPTED for s in sites.values())
        return costly / len(sites) > switch_prevalence

    while queue:
        group, top = queue.popleft()
        if top and len(group) > 1 and dense():
            steps.append({"phase": "groups", "sites": group, "seeds": 0, "verdict": None,
                          "action": "singles"})  # not judged: split before it  # fmt: skip
            queue.extendleft([([n], False) for n in reversed(group)])
            continue
        j, seeds = sequential(ask, group, start_seeds, max_seeds, steps, "groups")
        if j.verdict in ACCEPTED or len(group) == 1:
            verdict = j.verdict if len(group) == 1 or j.verdict != "better" else "negligible"
            steps.append(_step("groups", group, seeds, j, "decided"))
            for n in group:
                sites[n] = {**j.as_dict(), "verdict": verdict, "group_size": len(group),
                            "seeds": seeds, "set": list(group)}  # fmt: skip
            continue
        if dense():  # costly sites are common: halving would judge most of them twice
            steps.append(_step("groups", group, seeds, j, "singles"))
            queue.extendleft([([n], False) for n in reversed(group)])
            continue
        steps.append(_step("groups", group, seeds, j, "split"))
        half = len(group) // 2
        queue.extendleft([(group[half:], False), (group[:half], False)])  # lower half first
    record = {"steps": steps, "sites": {n: sites[n] for n in names}, "joint": None}
    if joint:
        record["joint"] = joint_check(
            ask,
            record["sites"],
            max_seeds=max_seeds,
            priority=priority,
            names=names,
            margin=margin,
        )
    record["judgements"] = len(ask.answers)
    record["runs"] = ask.runs
    return record


def joint_check(
    judge: Judge,
    sites: dict[str, dict],
    *,
    max_seeds: int,
    priority: dict[str, float] | None = None,
    names: list[str] | None = None,
    margin: float | None = None,
) -> dict | None:
    """Judge every negligible site of ``sites`` (a search record's ``sites``) at once; shrink the
    set, most costly first, until it is negligible. None when no site is negligible.

    A site's single-site cost is its own judgement's cost, or its group's divided by the group's
    size. Without ``margin`` one site is taken out per step; with it, as many (most costly
    first, at least one) as the single-site costs say it takes to bring the upper end of the
    interval under the margin, but never more than half of the set: costs need not add up (on
    ``builtin:tiny`` 20 frozen matrices negligible alone cost 10% of the gain together, twice the
    sum of their single costs), and past half the estimate would empty the set.

    A set that is exactly the set some site was decided with, on ``max_seeds``, is not judged
    again: its claim stands as ``sites`` gives it (a caller may have read it at a looser level
    than ``judge``'s, as the scan's Holm step does).
    """
    priority = priority or {}
    names = names or list(sites)
    chosen = [n for n in names if sites[n]["verdict"] in ACCEPTED]
    if not chosen:
        return None

    def single(n: str) -> float:
        cost = single_cost(sites[n])
        return 0.0 if cost is None else cost

    def decided(names: list[str]) -> Judgement | None:
        """The judgement that decided exactly ``names`` on ``max_seeds`` seeds, if one did."""
        site = sites[names[0]]
        if site.get("seeds") != max_seeds or sorted(site.get("set", ())) != sorted(names):
            return None
        interval = site["interval"]
        return Judgement(site["verdict"], site["cost"], interval and tuple(interval))

    removal = sorted(chosen, key=lambda n: (-single(n), -priority.get(n, 0.0), n))
    steps, removed = [], []
    while True:
        j = decided(chosen) or judge(frozenset(chosen), max_seeds)
        done = j.verdict in ACCEPTED or len(chosen) == 1
        steps.append(_step("joint", chosen, max_seeds, j, "decided" if done else "shrink"))
        if done:
            break
        most = max(1, len(chosen) // 2)  # single costs need not add up: halve at most
        count = _to_remove(j, [single(n) for n in removal], margin, most)
        out, removal = removal[:count], removal[count:]
        removed += out
        chosen = [n for n in chosen if n not in out]
    final = j.verdict in ACCEPTED
    return {
        "sites": chosen if final else [],
        **j.as_dict(),
        "seeds": max_seeds,
        "removed": removed + ([] if final else chosen),
        "steps": steps,
    }


def single_cost(site: dict) -> float | None:
    """A site's single-site cost from its entry in a search record: its own judgement's cost, or
    its group's divided by the group's size; None without a cost (a failed run)."""
    cost = site["cost"]
    return None if cost is None else cost / site["group_size"]


def _to_remove(j: Judgement, costs: list[float], margin: float | None, most: int) -> int:
    """How many of the most costly sites (``costs``, in removal order) to take out at once."""
    high = j.interval[1] if j.interval is not None else j.cost
    if margin is None or high is None:
        return 1
    excess, count, total = high - margin, 0, 0.0
    while count < most and (count == 0 or total < excess):
        total += max(costs[count], 0.0)
        count += 1
    return count


def exhaustive(
    judge: Judge, names: list[str], *, seeds: int, decided: dict[str, dict] | None = None
) -> dict:
    """Every site alone on ``seeds`` seeds (no joint check): the record :func:`search` gives
    (``decided``: as there)."""
    return search(
        judge,
        [[n] for n in names],
        max_seeds=seeds,
        start_seeds=seeds,
        joint=False,
        decided=decided,
    )


# --- the search by prior -------------------------------------------------------------------------

ABOVE = 4.0  # a calibrated prior over this multiple of the margin is "far above": likely costly
PACK = 0.5  # the rest is judged in groups whose calibrated priors sum to at most this x margin
LIKELY_COSTLY = "likely costly"  # the label of a prior, never a verdict
NOT_JUDGED = "not judged"  # the label of a site left unjudged by choice (``judge_rest=False``)


def deepest(
    accepted: Callable[[int], bool],
    high: int,
    first: int = 0,
    after_refusal: Callable[[int], int] | None = None,
) -> tuple[int, list[int]]:
    """The largest ``n`` in ``0 .. high`` for which ``accepted(n)`` holds, taking ``accepted``
    monotone (true up to some ``n``, false above) and true at 0; returns it and the values
    judged, in order. From a guess ``first`` (0: none), up by steps that double while accepted,
    then by bisection (about log2(high) judgements without a guess, fewer near a good one).

    ``after_refusal(n)``, if given, proposes a new guess once ``n`` was refused (e.g. the first
    one recalibrated by what ``n`` cost): kept inside the values still open, it is judged next,
    and followed as a guess is; a refused proposal is followed by bisection, never by another
    proposal, so proposals that mislead cost a few judgements, never a wrong answer."""
    low, judged = 0, []
    guess = first if 0 < first <= high else None  # the value judged next, then stepped up from
    step, proposed = 0, False  # step: while positive, an accepted value is followed by +step
    while low < high:
        is_guess, is_proposal = guess is not None, proposed
        if is_guess:
            mid, guess, proposed = guess, None, False
        else:
            mid = min(high, low + step) if step else (low + high + 1) // 2
        judged.append(mid)
        if accepted(mid):
            low, step = mid, 1 if is_guess else 2 * step
        else:
            high, step = mid - 1, 0
            if after_refusal is not None and not is_proposal and low < high:
                guess, proposed = min(high, max(low + 1, after_refusal(mid))), True
    return low, judged


@dataclass(frozen=True)
class PriorSplit:
    """What the priors did: ``ranked`` (the sites with a prior, by ascending prior, or prior
    per parameter if ``per_parameter``), ``candidates`` (the longest run of the first found
    negligible together), the calibration ``factor`` (a measured cost over the summed prior of
    the set it was measured on, ``calibrated_on``), and the rest split by calibrated prior:
    ``likely_costly`` (above ``above``, in the costs' units) and ``middle`` (judged; every site
    without a prior is there), judged in ``groups`` (:func:`pack`)."""

    ranked: list[str]
    per_parameter: bool
    candidates: list[str]
    factor: float
    calibrated_on: list[str]
    middle: list[str]
    groups: list[list[str]]
    likely_costly: list[str]
    above: float


def pack(names: list[str], cost: dict[str, float | None], room: float) -> list[list[str]]:
    """``names`` (in ascending ``cost``) in consecutive groups whose estimated ``cost`` sums to
    at most ``room``; a site over ``room`` alone, or without an estimate, is a group of one."""
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0.0
    for n in names:
        c = cost.get(n)
        if c is None or c > room or total + max(c, 0.0) > room:
            if current:
                groups.append(current)
            current, total = [], 0.0
        if c is None or c > room:
            groups.append([n])
            continue
        current.append(n)
        total += max(c, 0.0)
    return groups + ([current] if current else [])


def calibration(prior: dict[str, float | None], refused: Judgement | None, sites) -> float:
    """The factor that puts ``prior`` on the scale of a cost: the cost of the smallest set found
    not negligible (``refused``, of ``sites``) over its summed prior; 1 without such a set or
    when either is not positive. An attribution share is what a site's own updates did; frozen,
    the rest of the network makes up for part of it, so the factor is often well below 1."""
    if refused is None or refused.cost is None:
        return 1.0
    total = sum(max(prior[n] or 0.0, 0.0) for n in sites)
    return refused.cost / total if refused.cost > 0 and total > 0 else 1.0


def prior_search(
    judge: Judge,
    names: list[str],
    prior: dict[str, float | None],
    *,
    margin: float,
    max_seeds: int,
    start_seeds: int = 2,
    above: float = ABOVE,
    confirm: bool = False,
    judge_rest: bool = True,
    joint: bool = True,
    decided: dict[str, dict] | None = None,
    size: dict[str, int] | None = None,
) -> dict:
    """Spend judgements by prior (``prior``: an estimated cost per site, e.g. its attribution
    share; ranked here, calibrated by the judgements, never taken for a verdict):

    1. by rank: the sites are ranked by ascending prior, or, given each site's ``size`` (its
       parameters), by ascending prior per parameter (the greedy order for the most parameters
       under the margin, a knapsack's: a large matrix of a small prior comes before a small one
       of a slightly smaller prior); of them, the largest ``k`` whose ``k`` first are
       negligible together (:func:`deepest`, from the guess "as many as the priors, summed, fit
       under the margin", then by doubling steps or bisection, and after a set is refused by
       that guess again with the priors calibrated on it, its cost over its summed prior: a few
       sets judged, each on sequential seeds, costs taken monotone in the set, as group testing
       takes them); each of those sites is negligible, decided by that set;
    2. calibration: the smallest of those sets found not negligible gives the factor that puts
       the priors on a cost's scale (:func:`calibration`);
    3. the rest, by calibrated prior: above ``above`` times the margin, unless ``confirm``, a
       site is labelled ``likely costly`` without a run (its entry says ``verdict:
       undetermined``, ``label: "likely costly"``, ``seeds: 0``: a prior, never a verdict);
       the others, in ascending prior, are group-tested (:func:`search`) in groups whose
       calibrated priors sum to at most :data:`PACK` times the margin (:func:`pack`: a site
       above that alone), on sequential seeds (2 when the interval already lies on one side,
       else more, up to ``max_seeds``); without ``judge_rest`` none of them is run, each is
       labelled ``not judged`` (a few runs for the set of step 1, no map of the rest);
    4. if ``joint``, every site found negligible is checked jointly (:func:`joint_check`).

    Returns :func:`search`'s record, each site's entry with its ``prior``, and ``priors``: the
    split (:class:`PriorSplit`). Every decision is a function of the judgements (a replay asks
    the same questions). Seeds are looked at sequentially, each look at the judge's level: a
    caller that wants the error rate of one look for the whole sequence reads the judgements
    at a stricter level.
    """
    _check_seeds(start_seeds, max_seeds)
    if len(set(names)) != len(names):
        raise DeadzoneError("the sites of a search must be distinct")
    if not margin > 0 or not above > 1:
        raise DeadzoneError(
            f"a prior split needs margin > 0 and above > 1, got {margin!r}, {above!r}"
        )
    ask = judge if isinstance(judge, Asker) else Asker(judge)
    sites: dict[str, dict] = {} if decided is None else decided
    per = dict.fromkeys(names, 1) if size is None else size
    if not all(per.get(n, 0) > 0 for n in names):
        raise DeadzoneError("every site of a search by size needs a positive size")
    ranked = sorted(
        (n for n in names if prior.get(n) is not None), key=lambda n: (prior[n] / per[n], n)
    )
    steps: list[dict] = []
    judged: dict[int, tuple[Judgement, int]] = {}

    def together(k: int) -> bool:
        judged[k] = sequential(ask, ranked[:k], start_seeds, max_seeds, steps, "rank")
        j, seeds = judged[k]
        accepted = j.verdict in ACCEPTED
        steps.append(_step("rank", ranked[:k], seeds, j, "accepted" if accepted else "refused"))
        return accepted

    def fit(factor: float) -> int:  # how many of the lowest priors, calibrated, fit the margin
        return len(list(itertools.takewhile(lambda total: total <= margin, itertools.accumulate(
            factor * max(prior[n], 0.0) for n in ranked))))  # fmt: skip

    def recalibrated(n: int) -> int:  # the guess again, with the priors calibrated on n
        return fit(calibration(prior, judged[n][0], ranked[:n]))

    k, _ = deepest(together, len(ranked), first=fit(1.0), after_refusal=recalibrated)
    for n in ranked[:k]:
        j, seeds = judged[k]
        verdict = j.verdict if k == 1 else "negligible"
        sites[n] = {**j.as_dict(), "verdict": verdict, "group_size": k, "seeds": seeds,
                    "set": ranked[:k]}  # fmt: skip
    refused = min((n for n in judged if judged[n][0].verdict not in ACCEPTED), default=None)
    on = ranked[:refused] if refused else []
    factor = calibration(prior, judged[refused][0] if refused else None, on)
    rest = ranked[k:]
    calibrated = {n: prior[n] * factor for n in rest}
    high = [n for n in rest if calibrated[n] > above * margin]
    middle = sorted((n for n in rest if n not in high), key=lambda n: (prior[n], n))
    middle += [n for n in names if prior.get(n) is None]
    judged_rest = (middle + (high if confirm else [])) if judge_rest else []
    part = PriorSplit(
        ranked=ranked, per_parameter=size is not None, candidates=ranked[:k], factor=factor,
        calibrated_on=on, middle=middle, groups=pack(judged_rest, calibrated, PACK * margin),
        likely_costly=high, above=above * margin,
    )  # fmt: skip
    order = {n: p for n, p in prior.items() if p is not None}
    seeds = {"max_seeds": max_seeds, "start_seeds": start_seeds, "joint": False}
    second = search(ask, part.groups, priority=order, decided=sites, **seeds)
    steps += [{**step, "phase": "rest"} for step in second["steps"]]
    labels = {} if judge_rest else dict.fromkeys(middle, NOT_JUDGED)
    labels |= {} if confirm and judge_rest else dict.fromkeys(high, LIKELY_COSTLY)
    for n, label in labels.items():
        sites[n] = {"verdict": "undetermined", "cost": None, "interval": None,
                    "seeds_needed": None, "group_size": 1, "seeds": 0, "set": [n],
                    "label": label}  # fmt: skip
    for n in names:
        sites[n]["prior"] = prior.get(n)
    record = {"steps": steps, "sites": {n: sites[n] for n in names}, "joint": None}
    if joint:
        record["joint"] = joint_check(
            ask, record["sites"], max_seeds=max_seeds, priority=order, names=names, margin=margin
        )
    record |= {"judgements": len(ask.answers), "runs": ask.runs, "priors": asdict(part)}
    return record


def groups_by(sites: Iterable, key: str) -> list[list[str]]:
    """Names of ``sites`` (objects with ``name``, ``layer``, ``role``) grouped by ``layer`` or
    ``role``, in the order first met; sites outside the blocks form one group of their own."""
    if key not in ("layer", "role"):
        raise DeadzoneError(f"sites are grouped by 'layer' or 'role', not {key!r}")
    groups: dict[object, list[str]] = {}
    for s in sites:
        value = getattr(s, key) if s.layer is not None else ("outside the blocks",)
        groups.setdefault(value, []).append(s.name)
    return list(groups.values())


PRIOR_COUNT = LIKELY_COSTLY + " (prior)"  # how the sites labelled by a prior are counted


def verdict_counts(record: dict) -> dict[str, int]:
    """How many sites of a search record got each verdict; the sites labelled and never judged
    are counted under their label (:data:`PRIOR_COUNT` for likely costly, ``not judged``), not
    as a verdict."""
    counts = dict.fromkeys(VERDICTS, 0)
    for s in record["sites"].values():
        label = {LIKELY_COSTLY: PRIOR_COUNT, NOT_JUDGED: NOT_JUDGED}.get(s.get("label"))
        key = label or s["verdict"]
        counts[key] = counts.get(key, 0) + 1
    return counts
