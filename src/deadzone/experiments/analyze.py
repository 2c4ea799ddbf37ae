"""The ``analyze`` experiment: the geometry of a model's matrices as a results directory.

``deadzone analyze MODEL --out DIR`` (and the demo's analyze stage) writes ``DIR/results.json``
(``experiment: "analyze"``, the schema version, what was analysed, the geometry records and
their summary) beside the records as ``geometry.json`` and ``geometry.csv``; the report
(``deadzone report DIR``) adds the plot ``geometry.png``. Analysing the same model and sites
into the same directory again reuses the file; another model or selection there is refused.
"""

from __future__ import annotations

from pathlib import Path

from deadzone import __version__, fileio
from deadzone.errors import DeadzoneError
from deadzone.experiments.results import read_results
from deadzone.experiments.runs import RESULTS, provenance, writing
from deadzone.geometry import analysis
from deadzone.schema import SCHEMA_VERSION

EXPERIMENT = "analyze"
FILES = ("geometry.json", "geometry.csv")


def _identity(model: str, sites: str, fingerprint: str) -> dict:
    return {
        "experiment": EXPERIMENT,
        "deadzone_version": __version__,
        "model": model,
        "model_info": {"fingerprint": fingerprint},
        "sites": sites,
    }


def _reusable(out: Path, identity: dict) -> dict | None:
    """The results already in ``out`` for ``identity``; None if there are none; an error for
    another experiment or another model or selection."""
    old = read_results(out, EXPERIMENT, missing_ok=True)
    if old is None:
        return None
    for key, value in identity.items():
        if old.get(key) != value:
            raise DeadzoneError(
                f"{out} holds an analyze experiment with another {key} ({old.get(key)!r}, "
                f"{value!r} now); choose another output directory"
            )
    return old if "records" in old and all((out / f).is_file() for f in FILES) else None


def analyze_experiment(
    model: str, sites: str | None, out: str | Path, *, progress: bool = True
) -> dict:
    """Analyse ``model``'s sites matching ``sites`` (default all) into ``out``, or reuse what
    ``out`` holds for them; return the ``results.json`` document."""
    from deadzone.models.checkpoints import files_fingerprint, resolve
    from deadzone.report import geometry

    out, sites = Path(out), sites or "*"
    with writing(out):
        path = resolve(model)
        fingerprint = files_fingerprint(path if path.is_dir() else path.parent)
        identity = _identity(model, sites, fingerprint)
        done = _reusable(out, identity)
        if done is not None:
            return done
        records = analysis.analyze_checkpoint(str(path), sites, progress=progress)
        if not records:
            raise DeadzoneError(f"{model} has no weight matrices matching {sites!r}")
        geometry.write_json(out / "geometry.json", records)
        geometry.write_csv(out / "geometry.csv", records)
        document = {
            "schema_version": SCHEMA_VERSION,
            **identity,
            **provenance(),
            "records": records,
            "summary": analysis.summarize(records),
        }
        fileio.write_json(out / RESULTS, document)  # last: its presence means the stage is done
    return document
