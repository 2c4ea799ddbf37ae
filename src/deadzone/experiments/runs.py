"""Runs and results directories, shared by every experiment.

A run is one SFT of a fresh copy of the model with one strategy per site and one seed. An
experiment plans its runs as :class:`RunSpec` s, executes them with :func:`execute`, and keeps
their records in a :class:`ResultsDir`, whose ``results.json`` is rewritten atomically after
every run. Rerunning the same experiment into the same directory skips the runs already
recorded; a different experiment or configuration is refused, never mixed in.

Under several processes every process runs every run (each holds a shard of the batches) and
keeps every record, but only the main process writes ``results.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from deadzone import fileio, strategies
from deadzone.data.sft import SFTData, eval_batches, train_batches
from deadzone.errors import DeadzoneError
from deadzone.provenance import git_state, versions
from deadzone.sites import Site
from deadzone.train import Batch, RunFailed, RunResult, SFTConfig, SFTLoop, make_accelerator

RESULTS = "results.json"


@dataclass(frozen=True)
class RunSpec:
    """One planned run: ``plan`` maps site names to strategies; other sites train (``full``).

    ``key`` names the run uniquely within its experiment; ``labels`` are copied into its record.
    ``rank`` is the rank of every ``crystal`` site of the run.
    """

    key: str
    plan: dict[str, str]
    seed: int
    rank: int = 1
    labels: dict = field(default_factory=dict)


@dataclass
class RunInputs:
    """What every run of an experiment shares: the pristine model, its sites, data and config.

    Every run trains a deep copy of ``model``, which itself is never modified. For a given seed
    every run sees the same training batches in the same order and the same eval batches.
    """

    model: torch.nn.Module
    sites: dict[str, Site]
    data: SFTData
    pad_id: int
    config: SFTConfig
    eval: list[Batch] = field(init=False)

    def __post_init__(self) -> None:
        # Eval loss is a token-weighted sum, so order is free: batch by length, pad little.
        by_length = sorted(self.data.eval, key=lambda e: len(e.input_ids))
        self.eval = eval_batches(by_length, self.config.batch_size, pad_id=self.pad_id)
        if not self.eval:
            raise DeadzoneError("no evaluation examples")

    def train_data(self, seed: int):
        return train_batches(self.data.train, self.config.batch_size, seed=seed, pad_id=self.pad_id)


def run_one(inputs: RunInputs, spec: RunSpec, *, accelerator=None, show_progress=True) -> dict:
    """Train one run and return its record: ``labels``, the run result and the site records."""
    model = copy.deepcopy(inputs.model)
    plan = {inputs.sites[name]: strategy for name, strategy in spec.plan.items()}
    try:
        site_records = strategies.apply_strategies(model, plan, rank=spec.rank, seed=spec.seed)
    except RunFailed as e:  # a strategy that cannot be applied fails this run only
        failed = RunResult(status="failed", error=str(e)).to_dict()
        return {**spec.labels, "key": spec.key, **failed, "sites": []}
    config = replace(inputs.config, seed=spec.seed)
    loop = SFTLoop(
        model,
        inputs.train_data(spec.seed),
        inputs.eval,
        config,
        accelerator=accelerator,
        description=spec.key,
        show_progress=show_progress,
    )
    result = loop.run()
    return {**spec.labels, "key": spec.key, **result.to_dict(), "sites": site_records}


def execute(
    inputs: RunInputs,
    specs: Iterable[RunSpec],
    results: ResultsDir,
    *,
    on_record: Callable[[dict], None] | None = None,
    show_progress: bool = True,
) -> None:
    """Run every spec not already in ``results``, saving after each one."""
    pending = [s for s in specs if not results.finished(s.key)]
    if not pending:
        return
    accelerator = make_accelerator(inputs.config)
    for spec in pending:
        record = run_one(inputs, spec, accelerator=accelerator, show_progress=show_progress)
        accelerator.free_memory()  # drop its references to this run's model and optimizer
        results.add(record)  # every process keeps it; only the writer saves it
        if on_record is not None:
            on_record(record)


class ResultsDir:
    """``results.json`` in ``out``: a header identifying the experiment, then run records.

    ``identity`` is what must match for a rerun to resume (experiment name, model, data hash,
    configuration, ...); ``header`` adds what is merely recorded (versions, git state).
    ``summarize`` turns the records into the ``summary`` saved beside them. Only a ``writer``
    (the main process of a multi-process launch) writes the file; the others keep their
    records in memory, so that they never overwrite it with a stale copy.
    """

    def __init__(
        self,
        out: str | Path,
        identity: dict,
        header: dict | None = None,
        summarize: Callable[[list[dict]], object] | None = None,
        *,
        writer: bool = True,
    ) -> None:
        self.out = Path(out)
        self.writer = writer
        self.path = self.out / RESULTS
        self.identity = _normalise(identity)
        self.header = _normalise(header or {})
        self.summarize = summarize
        self.runs: dict[str, dict] = self._load()
        fileio.ensure_dir(self.out)  # fail now, not after the first run

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            if self.out.is_file():
                raise DeadzoneError(f"output directory {self.out} is a file")
            return {}
        try:
            old = fileio.read_json(self.path)
        except (OSError, ValueError) as e:
            raise DeadzoneError(f"cannot read {self.path}: {e}") from None
        if not isinstance(old, dict):
            raise DeadzoneError(f"{self.path} is not a deadzone results file")
        _check_same(self.path, old, self.identity)
        return {r["key"]: r for r in old.get("runs", []) if isinstance(r, dict) and "key" in r}

    def finished(self, key: str) -> bool:
        return key in self.runs

    def add(self, record: dict) -> None:
        self.runs[record["key"]] = _normalise(record)
        self.save()

    def document(self) -> dict:
        runs = list(self.runs.values())
        doc = {**self.identity, **self.header, "runs": runs}
        if self.summarize is not None:
            doc["summary"] = self.summarize(runs)
        return doc

    def save(self) -> None:
        if not self.writer:
            return
        fileio.ensure_dir(self.out)
        fileio.write_json(self.path, self.document())


def _check_same(path: Path, old: dict, identity: dict) -> None:
    """Refuse a results file from another experiment or configuration, naming a difference."""
    if old.get("experiment") != identity.get("experiment"):
        raise DeadzoneError(
            f"{path.parent} holds another experiment ({old.get('experiment')!r}); "
            "choose another output directory"
        )
    difference = _first_difference(old, identity)
    if difference is not None:
        key, there, here = difference
        raise DeadzoneError(
            f"{path.parent} holds a {identity['experiment']} experiment with {key} "
            f"{_short(there)} ({_short(here)} now); choose another output directory"
        )


def _first_difference(old: dict, new: dict, prefix: str = "") -> tuple | None:
    """``(dotted key, old value, new value)`` of the first key of ``new`` that differs."""
    for key, value in new.items():
        there = old.get(key)
        if there == value:
            continue
        if isinstance(there, dict) and isinstance(value, dict):
            return _first_difference(there, value, f"{prefix}{key}.")
        return f"{prefix}{key}", there, value
    return None


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples become lists), with NaN refused."""
    return json.loads(json.dumps(obj, allow_nan=False))


def provenance() -> dict:
    """``versions`` and ``git`` for a results header."""
    return {"versions": versions(), "git": git_state()}


# Files of a model directory that decide what a run computes, besides the weights. (Not
# tokenizer_config.json: saving a tokenizer again adds keys to it that change nothing.)
FINGERPRINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# Keys of config.json that record who saved it, not what the model is.
CONFIG_NOISE = ("transformers_version", "_name_or_path")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAMPLES, SAMPLE_BYTES = 16, 4096


def model_fingerprint(directory: str | Path) -> str:
    """sha256 identifying the model in ``directory``, cheap on multi-gigabyte checkpoints.

    It covers the config (less the keys that only say who saved it) and tokenizer files
    whole, and of each weight file its name, size, safetensors header (names, dtypes, shapes,
    offsets) and ``SAMPLES`` blocks of ``SAMPLE_BYTES`` spread evenly over its tensor data.
    Not every byte is read, but training
    changes nearly every weight, so a model re-saved at the same path after more training
    gets another fingerprint, while the same weights saved again keep theirs.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        file = directory / name
        if file.is_file():
            h.update(f"{name}\0".encode())
            h.update(_config_bytes(file) if name == "config.json" else file.read_bytes())
    weights = sorted(f for f in directory.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    for file in weights:
        size = file.stat().st_size
        h.update(f"\0{file.name}\0{size}\0".encode())
        with file.open("rb") as f:
            start = 0
            if file.suffix == ".safetensors" and size >= 8:
                header_len = int.from_bytes(f.read(8), "little")
                h.update(f.read(header_len))
                start = min(size, 8 + header_len)
            span = max(0, size - start - SAMPLE_BYTES)
            for i in range(SAMPLES):
                f.seek(start + span * i // max(1, SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _config_bytes(file: Path) -> bytes:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return file.read_bytes()
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in CONFIG_NOISE}
    return json.dumps(config, sort_keys=True).encode()
