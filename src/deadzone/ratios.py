"""Ratios and their intervals, on the log scale.

A ratio of two positive measures (a schedule's wall time over full SFT's, seed by seed) is
summarised by the geometric mean of the paired ratios, and its Student-t interval is computed on
the logarithms and mapped back: ``exp(mean(log r) ± t · sd(log r) / √n)``. Both bounds are
positive, a ratio and its inverse get mirrored intervals, and one slow seed cannot pull the lower
bound below zero, as an arithmetic mean's interval can (``1.37× [-2.34, 5.08]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as sps

ALPHA = 0.05


def geometric(ratios: Sequence[float], alpha: float = ALPHA) -> dict:
    """``{"mean", "sd", "interval", "n", "scale"}`` of positive paired ratios: the geometric
    mean, the standard deviation of the log ratios, the ``1 - alpha`` interval (None under two
    ratios), ``scale: "log"`` (so a report can say how the interval was made); everything None
    without a ratio. A ratio that is not positive and finite is refused."""
    if any(not (math.isfinite(r) and r > 0) for r in ratios):
        raise ValueError(f"a ratio must be positive and finite, got {list(ratios)}")
    n = len(ratios)
    if n == 0:
        return {"mean": None, "sd": None, "interval": None, "n": 0, "scale": "log"}
    logs = [math.log(r) for r in ratios]
    centre = math.fsum(logs) / n
    if n < 2:
        return {"mean": math.exp(centre), "sd": None, "interval": None, "n": 1, "scale": "log"}
    sd = math.sqrt(math.fsum((x - centre) ** 2 for x in logs) / (n - 1))
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    interval = [math.exp(centre - half), math.exp(centre + half)]
    return {"mean": math.exp(centre), "sd": sd, "interval": interval, "n": n, "scale": "log"}
