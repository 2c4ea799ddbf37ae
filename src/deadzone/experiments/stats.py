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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
BASELINE = "baseline"
VERDICTS = ("baseline", "better", "negligible", "costly", "undetermined")
MAX_SEEDS = 1_000_000  # a seeds estimate past this is reported as none


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
