"""Scan report pieces from a summary shaped as results.json holds it."""

from __future__ import annotations

import pytest

from deadzone.report import scan as report

ROLES = ("attn_qkv", "attn_out", "mlp_in", "mlp_out")


def summary(layers: int = 4) -> dict:
    sites = []
    for layer in range(layers):
        for i, role in enumerate(ROLES):
            cost = 0.001 * (layer + i) if (layer + i) % 3 else 0.1
            sites.append({
                "site": f"L{layer}.{role}", "layer": layer, "role": role, "params": 1024,
                "verdict": "negligible" if cost < 0.02 else "costly", "cost": cost,
                "interval": [cost - 0.005, cost + 0.005], "single": layer != 0,
            })  # fmt: skip
    names = [s["site"] for s in sites]
    return {
        "margin": 0.02,
        "strategies": {
            "frozen": {
                "sites": sites,
                "correlations": {
                    "pr": {"rho": -0.125, "p": 0.51, "n": 12},
                    "snr": {"rho": None, "p": None, "n": 2},
                },
            },  # fmt: skip
            "random": {"sites": [dict(s, cost=2 * s["cost"]) for s in sites]},
        },
        "scores": {
            "pr": {n: float(i) for i, n in enumerate(names)},
            "snr": {n: (None if i % 2 else 0.1 * i) for i, n in enumerate(names)},
        },
    }


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


@pytest.mark.parametrize("layers", [4, 40])
def test_heatmap_and_scores_plot_are_written(tmp_path, layers: int) -> None:
    s = summary(layers)
    report.heatmap(s, tmp_path / "heatmap.png")
    report.scores_plot(s, tmp_path / "scores.png")
    assert is_png(tmp_path / "heatmap.png") and is_png(tmp_path / "scores.png")


def test_plots_of_a_summary_without_single_site_costs(tmp_path) -> None:
    s = summary()
    for st in s["strategies"].values():
        for site in st["sites"]:
            site["single"] = False
    report.heatmap(s, tmp_path / "heatmap.png")
    report.scores_plot(s, tmp_path / "scores.png")
    assert is_png(tmp_path / "heatmap.png") and is_png(tmp_path / "scores.png")


def test_pairs_take_single_sites_with_a_defined_score() -> None:
    xs, ys = report._pairs(summary(), "frozen", "snr")
    # layers 1-3 are single; every other site's snr is defined (roles 0 and 2)
    assert xs == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    assert ys == pytest.approx([0.1, 10.0, 0.2, 0.4, 10.0, 0.5])  # percent of the gain


def test_rho_table() -> None:
    assert report.rho_table(summary()) == (
        "| Score | frozen: ρ (p, n) | random: ρ (p, n) |\n"
        "|---|---|---|\n"
        "| pr | -0.12 (p=0.51, n=12) | — |\n"
        "| snr | — (n=2) | — |\n"
    )


def test_statistics_text_says_holm_once_the_levels_are_in_and_the_search_level_before():
    s = summary() | {"unit": "share_of_gain", "margin_used": 0.02, "alpha": 0.05 / 32}
    s |= {"comparisons": 32, "mode": "adaptive"}
    before = report.statistics_text({"summary": s})
    assert "so far at 0.00156 = 0.05 / 32" in before and "step-down over" not in before
    for row in s["strategies"]["frozen"]["sites"]:
        row["level"] = 0.05
    after = report.statistics_text({"summary": s})
    assert "Holm's step-down over the site claims (32 = sites x strategies" in after
    assert "steered by intervals at 0.00156" in after
