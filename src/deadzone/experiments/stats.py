"""Verdicts on paired comparisons: Student-t intervals, TOST, Holm, seeds needed (pure math).

An experiment compares each of its arms with a baseline that saw the same batches under the
same seed, so each comparison is a list of per-seed paired differences (arm minus baseline;
positive is a cost). :func:`judge` takes every comparison of one experiment at once, by name,
and returns one :class:`Judgement` each:

- ``interval``: the unadjusted two-sided ``1 - alpha`` Student-t interval of the mean difference;
- ``adjusted``: the same at the level Holm's step-down procedure tested the comparison at
  (:func:`holm_levels`), from which the verdict is read, so verdict and interval never disagree;
- ``verdict`` (:func:`verdict`): ``better`` if the adjusted interval lies below zero, else
  ``negligible`` if it lies below the margin, else ``costly`` if it lies above the margin, else
  ``undetermined``; with ``seeds_needed`` for an undetermined one (:func:`seeds_needed`).

Reading ``negligible`` off a two-sided ``1 - alpha`` interval is the one-sided half of TOST
(:func:`tost_pvalue` with no lower bound) at level ``alpha / 2``; reading ``costly`` off it is
the opposite one-sided test at the same level. ``docs/statistics.md`` explains the choices.

Seeds are planned before a scan (:func:`plan_seeds`): from the seed-to-seed spread of the
baseline runs (:func:`paired_sd_from_baselines`), the chance that ``seeds`` seeds call a site
that costs nothing ``negligible`` (:func:`negligible_power`, exact) and the seeds that chance
needs to reach ``power``. A seed count under which that chance is below ``REFUSE_BELOW`` cannot
call anything negligible and is refused (:func:`check_seed_plan`); below ``power`` it is a
warning the caller prints.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as sps

from deadzone.errors import DeadzoneError

ALPHA = 0.05
POWER = 0.8
BASELINE = "baseline"
VERDICTS = ("baseline", "better", "negligible", "costly", "undetermined")
MAX_SEEDS = 1_000_000  # a seeds estimate past this is reported as none
# A seed count whose chance of calling a cost-free site negligible is below this is refused.
REFUSE_BELOW = 0.1
PLAN_DECISIONS = ("ok", "warn", "refuse")


@dataclass(frozen=True)
class Judgement:
    """The verdict on one comparison and the numbers it rests on (in the units of its diffs)."""

    n: int
    mean: float | None
    sd: float | None
    interval: tuple[float, float] | None
    p_value: float | None  # two-sided, of "the mean difference is the margin"
    level: float | None  # the alpha of ``adjusted``: alpha / (m - i + 1) in Holm's order
    adjusted: tuple[float, float] | None
    verdict: str
    reason: str | None = None
    seeds_needed: int | None = None


def mean_sd(diffs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not diffs:
        return None, None
    return statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else None


def t_interval(diffs: Sequence[float], alpha: float = ALPHA) -> tuple[float, float] | None:
    """Two-sided ``1 - alpha`` Student-t interval of the mean, or None for fewer than two."""
    if len(diffs) < 2:
        return None
    mean, sd = mean_sd(diffs)
    half = float(sps.t.ppf(1 - alpha / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return mean - half, mean + half


def _t_stat(diffs: Sequence[float], value: float) -> float:
    """Student's t of the mean against ``value``; +-inf when the diffs do not vary."""
    mean, sd = mean_sd(diffs)
    if sd == 0:
        return 0.0 if mean == value else math.copysign(math.inf, mean - value)
    return (mean - value) / (sd / math.sqrt(len(diffs)))


def tost_pvalue(diffs: Sequence[float], low: float, high: float) -> float:
    """TOST p-value of equivalence, H0: mean <= low or mean >= high (``low`` may be -inf).

    The larger of the two one-sided p-values; equivalence at level a when it is below a, which
    happens exactly when the two-sided ``1 - 2a`` interval lies inside ``(low, high)``.
    """
    if len(diffs) < 2:
        raise ValueError("TOST needs at least two differences")
    df = len(diffs) - 1
    p_high = sps.t.cdf(_t_stat(diffs, high), df)  # H0: mean >= high
    p_low = 0.0 if low == -math.inf else sps.t.sf(_t_stat(diffs, low), df)  # H0: mean <= low
    return float(max(p_low, p_high))


def margin_pvalue(diffs: Sequence[float], margin: float) -> float:
    """Two-sided p-value of H0: mean == margin, twice the smaller one-sided p-value.

    It is below a exactly when the ``1 - a`` interval excludes the margin, i.e. when the verdict
    at level a is ``negligible`` / ``better`` or ``costly``; Holm orders comparisons by it.
    """
    t = _t_stat(diffs, margin)
    return float(min(1.0, 2 * sps.t.sf(abs(t), len(diffs) - 1)))


def holm_adjusted_pvalues(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's (1979) adjusted p-values: ``max_{j<=i} min(1, (m - j + 1) p_(j))``."""
    order = sorted(p_values, key=p_values.get)
    m, running, adjusted = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        adjusted[name] = running
    return adjusted


def holm_levels(p_values: Mapping[str, float], alpha: float = ALPHA) -> dict[str, float]:
    """The level Holm's step-down procedure tests each comparison at.

    In ascending order of p, the i-th (from 0) of m is tested at ``alpha / (m - i)`` while every
    earlier one was rejected; from the first one not rejected on, every later one keeps that
    first one's level (Holm stops there, and a later interval at a looser level could exclude
    the margin although Holm does not reject it). Rejected means ``p < level``.
    """
    order = sorted(p_values, key=p_values.get)
    levels, stopped = {}, None
    for i, name in enumerate(order):
        level = stopped if stopped is not None else alpha / (len(order) - i)
        levels[name] = level
        if stopped is None and not p_values[name] < level:
            stopped = level
    return levels


def verdict(interval: tuple[float, float] | None, margin: float) -> str:
    """``better`` (below 0) before ``negligible`` (below the margin), ``costly`` (above it),
    else ``undetermined``."""
    if interval is None:
        return "undetermined"
    low, high = interval
    if high < 0:
        return "better"
    if high < margin:
        return "negligible"
    if low > margin:
        return "costly"
    return "undetermined"


def seeds_needed(
    mean: float, sd: float, margin: float, level: float = ALPHA, power: float = POWER
) -> int | None:
    """Seeds for the ``1 - level`` interval to exclude the margin with probability ``power``,
    if the true mean and SD of the differences were the observed ones.

    The smallest n with ``(t_{1-level/2, n-1} + t_{power, n-1}) * sd / sqrt(n) < |mean - margin|``:
    the left side falls as n grows, and exceeds its normal approximation (z for t), so the search
    walks the degrees of freedom up from the normal approximation's answer, a few steps. None
    when the mean is the margin or the answer passes ``MAX_SEEDS``.
    """
    delta = abs(mean - margin)
    if delta == 0:
        return None
    if sd == 0:
        return 2

    def enough(n: int) -> bool:
        t = sps.t.ppf(1 - level / 2, n - 1) + sps.t.ppf(power, n - 1)
        return t * sd / math.sqrt(n) < delta

    z = sps.norm.ppf(1 - level / 2) + sps.norm.ppf(power)
    n = max(2, math.floor((z * sd / delta) ** 2))
    while n <= MAX_SEEDS and not enough(n):
        n += 1
    return n if n <= MAX_SEEDS else None


def judge(
    comparisons: Mapping[str, Sequence[float]], margin: float, alpha: float = ALPHA
) -> dict[str, Judgement]:
    """Judge every comparison of one experiment against ``margin``, Holm over those with at
    least two differences (the others cannot be tested: ``undetermined``, with a reason)."""
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    testable = {k: list(d) for k, d in comparisons.items() if len(d) >= 2}
    p_values = {k: margin_pvalue(d, margin) for k, d in testable.items()}
    levels = holm_levels(p_values, alpha)
    out = {}
    for name, diffs in comparisons.items():
        mean, sd = mean_sd(diffs)
        if name not in testable:
            out[name] = Judgement(
                len(diffs), mean, sd, None, None, None, None, "undetermined",
                reason=f"{len(diffs)} paired seed(s); an interval needs at least 2",
            )  # fmt: skip
            continue
        adjusted = t_interval(diffs, levels[name])
        word = verdict(adjusted, margin)
        needed = seeds_needed(mean, sd, margin, levels[name]) if word == "undetermined" else None
        out[name] = Judgement(
            len(diffs), mean, sd, t_interval(diffs, alpha), p_values[name], levels[name],
            adjusted, word, seeds_needed=needed,
        )  # fmt: skip
    return out


# --- seeds planned before a scan ---------------------------------------------------------------


def paired_sd_from_baselines(final_losses: Sequence[float], gain: float | None = None) -> float:
    """The SD of one paired difference (arm minus baseline), estimated from the final eval
    losses of baseline runs on different seeds: ``sqrt(2)`` times their SD (two independent
    runs' difference; pairing on the same batches usually makes it smaller, so this errs on the
    side of more seeds), divided by ``gain`` when costs are shares of the fine-tuning gain."""
    if len(final_losses) < 2:
        raise DeadzoneError(
            f"planning seeds needs the final losses of at least 2 baseline runs, got "
            f"{len(final_losses)}"
        )
    if gain is not None and not gain > 0:
        raise DeadzoneError(f"a share of the gain needs a positive gain, got {gain!r}")
    sd = math.sqrt(2.0) * statistics.stdev(final_losses)
    return sd / gain if gain is not None else sd


def negligible_power(n: int, sd: float, margin: float, level: float = ALPHA) -> float:
    """Chance that ``n`` paired differences of true mean 0 and SD ``sd`` give a ``1 - level``
    interval wholly below ``margin`` (a ``negligible`` verdict), exactly: the statistic
    ``(mean - margin) / (s / sqrt(n))`` is noncentral t with ``n - 1`` degrees of freedom and
    noncentrality ``-margin sqrt(n) / sd``, and the verdict is its falling below ``-t_crit``."""
    if sd == 0:
        return 1.0
    t_crit = sps.t.ppf(1 - level / 2, n - 1)
    return float(sps.nct.cdf(-t_crit, n - 1, -margin * math.sqrt(n) / sd))


@dataclass(frozen=True)
class SeedPlan:
    """How well ``seeds`` seeds can call a site that costs nothing negligible, with paired
    differences of SD ``sd`` against ``margin`` at ``level``: the chance (``power``), the seeds
    ``power_wanted`` needs (``needed``, None past ``MAX_SEEDS``), and the ``decision``
    (``ok``: enough; ``warn``: under-powered; ``refuse``: a chance below ``REFUSE_BELOW``)."""

    seeds: int
    sd: float
    margin: float
    level: float
    power: float
    power_wanted: float
    needed: int | None
    decision: str

    def message(self) -> str:
        """One line for the user."""
        needs = f"{self.needed}" if self.needed is not None else f"more than {MAX_SEEDS:,}"
        head = (
            f"{self.seeds} seeds call a site that costs nothing negligible with chance "
            f"{self.power:.0%} (paired SD {self.sd:.3g} against margin {self.margin:.3g}); "
            f"{self.power_wanted:.0%} needs {needs} seeds"
        )
        if self.decision == "refuse":
            return head + ": nothing could be called negligible; raise --seeds or the margin"
        return head if self.decision == "ok" else head + ": verdicts will often be undetermined"


def plan_seeds(
    seeds: int, sd: float, margin: float, level: float = ALPHA, power: float = POWER
) -> SeedPlan:
    """The :class:`SeedPlan` of ``seeds`` seeds (``sd`` and ``margin`` in the same units)."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 2:
        raise DeadzoneError(f"a seed plan needs seeds >= 2, got {seeds!r}")
    if not margin > 0 or not sd >= 0 or not 0 < level < 1 or not 0 < power < 1:
        raise DeadzoneError(
            f"a seed plan needs margin > 0, sd >= 0 and level, power in (0, 1); got "
            f"{margin!r}, {sd!r}, {level!r}, {power!r}"
        )
    chance = negligible_power(seeds, sd, margin, level)
    needed = 2
    if sd > 0:  # walk up from the normal approximation (the exact t answer is never below it)
        z = sps.norm.ppf(1 - level / 2) + sps.norm.ppf(power)
        needed = max(2, math.floor((z * sd / margin) ** 2))
        while needed <= MAX_SEEDS and negligible_power(needed, sd, margin, level) < power:
            needed += 1
    decision = "ok" if chance >= power else "warn" if chance >= REFUSE_BELOW else "refuse"
    return SeedPlan(
        seeds, sd, margin, level, chance, power, needed if needed <= MAX_SEEDS else None, decision
    )


def check_seed_plan(plan: SeedPlan) -> SeedPlan:
    """The plan back, or a one-line :class:`DeadzoneError` when it is ``refuse``."""
    if plan.decision == "refuse":
        raise DeadzoneError(plan.message())
    return plan


def gain_scale(full: Mapping[int, dict], margin: float, margin_nats: float) -> dict:
    """The unit an experiment's costs are judged in, from its ``full`` baseline record per
    seed: a share of each seed's fine-tuning gain (step-0 eval loss minus final) when the gain
    is clearly positive, else nats, with the margin that goes with it; a failed baseline is a
    one-line error (nothing to compare against)."""
    failed = [r for r in full.values() if r.get("status") != "ok"]
    if failed:
        raise DeadzoneError(
            f"the baseline run {failed[0]['key']} failed ({failed[0].get('error')}): nothing to "
            "compare against"
        )
    gains = {s: r["step0_eval_loss"] - r["final_eval_loss"] for s, r in full.items()}
    interval = t_interval(list(gains.values()))
    clear = interval is not None and interval[0] > 0 and all(g > 0 for g in gains.values())
    return {
        "unit": "share_of_gain" if clear else "nats",
        "margin_used": margin if clear else margin_nats,
        "gains": {str(s): g for s, g in gains.items()},
        "gain_interval": list(interval) if interval else None,
    }
