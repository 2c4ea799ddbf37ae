"""Tables and plots, built only from results files."""

from __future__ import annotations

from pathlib import Path

from deadzone import fileio


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and release it."""
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
