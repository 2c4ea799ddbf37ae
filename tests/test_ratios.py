"""Ratios on the log scale: positive bounds, mirrored for the inverse, numpy as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from deadzone.ratios import geometric


def test_a_noisy_wall_time_ratio_never_gets_a_negative_bound():
    ratios = [0.4, 3.9, 0.6]  # a shared machine: one seed slow, two fast
    arithmetic_low = np.mean(ratios) - sps.t.ppf(0.975, 2) * np.std(ratios, ddof=1) / math.sqrt(3)
    assert arithmetic_low < 0  # what an arithmetic interval of these ratios says
    got = geometric(ratios)
    assert got["interval"][0] > 0 and got["interval"][0] < got["mean"] < got["interval"][1]


def test_the_geometric_mean_and_interval_are_those_of_the_logs():
    rng = np.random.default_rng(0)
    ratios = list(np.exp(rng.normal(-0.3, 0.2, size=7)))
    logs = np.log(ratios)
    half = sps.t.ppf(0.975, 6) * logs.std(ddof=1) / math.sqrt(7)
    got = geometric(ratios)
    assert got["mean"] == pytest.approx(math.exp(logs.mean()), rel=1e-12)
    assert got["interval"] == pytest.approx(list(np.exp([logs.mean() - half, logs.mean() + half])))
    assert got["n"] == 7 and got["sd"] == pytest.approx(logs.std(ddof=1))
    inverse = geometric([1 / r for r in ratios])  # mirrored: the same claim read backwards
    assert inverse["mean"] == pytest.approx(1 / got["mean"])
    assert inverse["interval"] == pytest.approx([1 / got["interval"][1], 1 / got["interval"][0]])


def test_few_ratios_and_bad_ratios():
    assert geometric([]) == {"mean": None, "sd": None, "interval": None, "n": 0, "scale": "log"}
    one = geometric([0.8])
    assert one["mean"] == pytest.approx(0.8) and one["interval"] is None
    for bad in ([1.0, 0.0], [1.0, -2.0], [math.inf]):
        with pytest.raises(ValueError, match="positive and finite"):
            geometric(bad)
