"""The one reader of ``results.json``, with the one schema check.

Every experiment writes ``DIR/results.json`` (``deadzone.experiments.runs.ResultsDir``, or its
own writer for ``analyze`` and ``demo``); every reader, the experiments resuming a directory as
much as the reports, reads it with :func:`read_results`. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.schema import SCHEMA_VERSION

RESULTS = "results.json"


def read_results(
    directory: str | Path,
    experiment: str | None = None,
    *,
    missing_ok: bool = False,
    schema: bool = True,
) -> dict | None:
    """``directory/results.json``: a JSON object naming its ``experiment`` (``experiment``, if
    given) in the schema version this deadzone writes; else a one-line error. A missing file is
    None with ``missing_ok``, an error otherwise. ``schema=False`` leaves :func:`check_schema`
    to the caller (who first says, in its own words, which experiment the file holds)."""
    path = Path(directory) / RESULTS
    if not path.is_file():
        if missing_ok and not path.exists():
            return None
        raise DeadzoneError(f"{directory} has no {RESULTS}: not an experiment directory")
    try:
        results = fileio.read_json(path)
    except OSError as e:
        raise DeadzoneError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DeadzoneError(f"{path} is not valid JSON (truncated?): {e}") from None
    if not isinstance(results, dict) or not isinstance(results.get("experiment"), str):
        raise DeadzoneError(f"{path} is not a deadzone results file (no 'experiment' key)")
    if experiment is not None and results["experiment"] != experiment:
        raise DeadzoneError(
            f"{directory} holds another experiment ({results['experiment']!r}), not a "
            f"{experiment} results file; choose another output directory"
        )
    if schema:
        check_schema(path, results)
    return results


def check_schema(path: Path, results: dict) -> None:
    """The file's ``schema_version`` (1 when absent) is the one this deadzone writes."""
    version = results.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DeadzoneError(f"{path} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise DeadzoneError(
            f"{path} has schema_version {version}, newer than this deadzone reads "
            f"(up to {SCHEMA_VERSION}): upgrade deadzone"
        )
    if version < SCHEMA_VERSION:
        raise DeadzoneError(
            f"{path} has schema version {version}; this deadzone reads version "
            f"{SCHEMA_VERSION}: rerun the experiment into a new directory"
        )
