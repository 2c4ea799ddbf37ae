"""Tables and plots, built only from results files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.schema import SCHEMA_VERSION


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
    """``directory/results.json``, checked to be a results file of ``experiment`` written in the
    layout this deadzone writes."""
    path = Path(directory) / "results.json"
    try:
        results = fileio.read_json(path)
    except (OSError, ValueError) as e:
        raise DeadzoneError(f"cannot read {path}: {e}") from None
    if not isinstance(results, dict) or results.get("experiment") != experiment:
        raise DeadzoneError(f"{path} is not a {experiment} results file")
    if results.get("schema_version", 1) != SCHEMA_VERSION:
        raise DeadzoneError(
            f"{path} has schema version {results.get('schema_version', 1)}; this deadzone "
            f"reads version {SCHEMA_VERSION}: rerun the experiment"
        )
    return results


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
