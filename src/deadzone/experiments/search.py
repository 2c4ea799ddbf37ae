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
e.g. its attribution share from the baseline runs), the sites far below the margin are judged
as one set (halved in prior order if it is not negligible, grown by the next priors if it is
and its interval leaves room), the sites in between one at a time on sequential seeds, and the
sites far above are labelled ``likely costly`` without a run (a prior, never a verdict) unless
the caller asks to confirm them. Where priors are informative it spends fewer runs than one per
site whatever the share of costly sites; where they mislead it spends more, never a wrong
verdict (the candidate set is judged, not assumed).

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

BELOW = 0.25  # a prior under this share of the margin is "far below": a candidate
ABOVE = 4.0  # a prior over this multiple of the margin is "far above": likely costly
LIKELY_COSTLY = "likely costly"  # the label of a prior, never a verdict


@dataclass(frozen=True)
class PriorSplit:
    """Sites sorted by prior (each list in ascending prior, then name): ``candidates`` (prior
    below ``below``), ``likely_costly`` (above ``above``), ``middle`` (the rest, and every site
    without a prior); ``below`` and ``above`` are in the units of the costs."""

    candidates: list[str]
    middle: list[str]
    likely_costly: list[str]
    below: float
    above: float


def split_by_prior(
    names: list[str],
    prior: dict[str, float | None],
    margin: float,
    below: float = BELOW,
    above: float = ABOVE,
) -> PriorSplit:
    """Sort ``names`` by ``prior`` (an estimate of each site's cost, in the units of the
    margin) against ``below * margin`` and ``above * margin``."""
    if not margin > 0 or not 0 <= below < 1 < above:
        raise DeadzoneError(
            f"a prior split needs margin > 0 and 0 <= below < 1 < above, got {margin!r}, "
            f"{below!r}, {above!r}"
        )
    low, high = below * margin, above * margin
    known = sorted((n for n in names if prior.get(n) is not None), key=lambda n: (prior[n], n))
    return PriorSplit(
        candidates=[n for n in known if prior[n] < low],
        middle=[n for n in known if low <= prior[n] <= high]
        + [n for n in names if prior.get(n) is None],
        likely_costly=[n for n in known if prior[n] > high],
        below=low,
        above=high,
    )


def prior_search(
    judge: Judge,
    names: list[str],
    prior: dict[str, float | None],
    *,
    margin: float,
    max_seeds: int,
    start_seeds: int = 2,
    below: float = BELOW,
    above: float = ABOVE,
    confirm: bool = False,
    joint: bool = True,
    decided: dict[str, dict] | None = None,
) -> dict:
    """Spend judgements by prior (``prior``: an estimated cost per site, in the margin's units,
    e.g. a site's attribution share; :func:`split_by_prior` sorts the sites):

    1. the candidates (prior far below the margin) are judged as one set, on sequential seeds;
       a set not negligible is halved in prior order, lower half first (:func:`search`);
    2. a candidate set accepted whole grows: the middle sites, in ascending prior, are added
       as many at a time as their priors fit under the room its interval leaves below the
       margin, and the grown set judged, until a grown set is not negligible or none fits;
    3. the other middle sites (and the likely costly ones if ``confirm``) are judged one at a
       time on sequential seeds: 2 when the interval already lies on one side, else more, up
       to ``max_seeds``;
    4. unless ``confirm``, the likely costly sites (prior far above) are not judged: their
       entry says ``verdict: undetermined``, ``label: "likely costly"`` (a prior, never a
       verdict) and ``seeds: 0``;
    5. if ``joint``, every site found negligible is checked jointly (:func:`joint_check`).

    Returns :func:`search`'s record, each site's entry with its ``prior``, and ``priors``: the
    split. Every decision is a function of the judgements (a replay asks the same questions).
    Seeds are looked at sequentially, each look at the judge's level: a caller that wants the
    error rate of one look for the whole sequence reads the judgements at a stricter level.
    """
    _check_seeds(start_seeds, max_seeds)
    if len(set(names)) != len(names):
        raise DeadzoneError("the sites of a search must be distinct")
    part = split_by_prior(names, prior, margin, below, above)
    ask = judge if isinstance(judge, Asker) else Asker(judge)
    sites: dict[str, dict] = {} if decided is None else decided
    seeds = {"max_seeds": max_seeds, "start_seeds": start_seeds, "joint": False}
    order = {n: p for n, p in prior.items() if p is not None}
    first = search(ask, [part.candidates], priority=order, decided=sites, **seeds)
    steps = [{**step, "phase": "candidates"} for step in first["steps"]]
    rest = list(part.middle)
    if part.candidates and all(sites[n].get("set") == part.candidates for n in part.candidates):
        rest = _grow(ask, part.candidates, rest, prior, margin, sites, steps, start_seeds,
                     max_seeds)  # fmt: skip
    singles = rest + (part.likely_costly if confirm else [])
    second = search(ask, [[n] for n in singles], priority=order, decided=sites, **seeds)
    steps += [{**step, "phase": "singles"} for step in second["steps"]]
    for n in [] if confirm else part.likely_costly:
        sites[n] = {"verdict": "undetermined", "cost": None, "interval": None,
                    "seeds_needed": None, "group_size": 1, "seeds": 0, "set": [n],
                    "label": LIKELY_COSTLY}  # fmt: skip
    for n in names:
        sites[n]["prior"] = prior.get(n)
    record = {"steps": steps, "sites": {n: sites[n] for n in names}, "joint": None}
    if joint:
        record["joint"] = joint_check(
            ask, record["sites"], max_seeds=max_seeds, priority=order, names=names, margin=margin
        )
    record |= {"judgements": len(ask.answers), "runs": ask.runs, "priors": asdict(part)}
    return record


def _grow(ask, base, pool, prior, margin, sites, steps, start_seeds, max_seeds) -> list[str]:
    """Step 2 of :func:`prior_search`: grow the accepted set ``base`` from ``pool`` (middle
    sites, ascending prior); returns the sites of ``pool`` not taken in."""
    j = ask(frozenset(base), sites[base[0]]["seeds"])
    while pool and j.interval is not None and prior.get(pool[0]) is not None:
        room, count, total = margin - j.interval[1], 0, 0.0
        while count < len(pool) and prior.get(pool[count]) is not None:
            if total + max(prior[pool[count]], 0.0) > room:
                break
            total += max(prior[pool[count]], 0.0)
            count += 1
        if count == 0:
            break
        trial = base + pool[:count]
        j_trial, seeds = sequential(ask, trial, start_seeds, max_seeds, steps, "grow")
        accepted = j_trial.verdict in ACCEPTED
        steps.append(_step("grow", trial, seeds, j_trial, "grown" if accepted else "stop"))
        if not accepted:
            break
        base, pool, j = trial, pool[count:], j_trial
        for n in base:
            sites[n] = {**j.as_dict(), "verdict": "negligible", "group_size": len(base),
                        "seeds": seeds, "set": list(base)}  # fmt: skip
    return pool


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
    """How many sites of a search record got each verdict; the sites a prior labelled likely
    costly (never judged) are counted under :data:`PRIOR_COUNT`, not as a verdict."""
    counts = dict.fromkeys(VERDICTS, 0)
    for s in record["sites"].values():
        if s.get("label") == LIKELY_COSTLY:
            counts[PRIOR_COUNT] = counts.get(PRIOR_COUNT, 0) + 1
        else:
            counts[s["verdict"]] += 1
    return counts
