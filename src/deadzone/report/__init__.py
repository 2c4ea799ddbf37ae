"""Tables and plots, built only from results files."""

from __future__ import annotations

from collections.abc import Callable
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


def read_results(directory: str | Path, experiment: str) -> dict:
    """``directory/results.json``, checked to be a results file of ``experiment`` in the schema
    this deadzone writes (the one reader, :func:`deadzone.experiments.results.read_results`)."""
    from deadzone.experiments.results import read_results as read

    return read(directory, experiment)


Plot = Callable[[dict, Path], None]


def write_files(
    directory: str | Path, experiment: str, markdown: Callable[[dict], str], plots: dict[str, Plot]
) -> tuple[Path, ...]:
    """Write ``report.md`` (``markdown(results)``) and each plot (``plots[name](results, path)``)
    in ``directory`` from its ``results.json`` (checked by :func:`read_results`); return the
    paths, ``report.md`` first."""
    directory = Path(directory)
    results = read_results(directory, experiment)
    fileio.write_text(directory / "report.md", markdown(results))
    for name, plot in plots.items():
        plot(results, directory / name)
    return (directory / "report.md", *(directory / name for name in plots))
