"""Experiment tracking: each SFT run's config and curves in TensorBoard, MLflow or W&B.

A :class:`Tracking` (the choice and where local trackers write) travels in a run task, never in
the SFT config: tracking changes nothing a run computes. :func:`tracker_hook` turns it into a
:class:`TrackerHook` for one run, through ``accelerate``'s tracker integration: one tracker run
per SFT run, named by the run key, holding the run's config (SFT hyperparameters, strategy,
seed, targets, model fingerprint) and, per step, its train loss, learning rate and trainable
parameter count, and its eval loss where evaluated. Only the main process logs.

TensorBoard writes event files under ``DIR/tensorboard/<key>``; MLflow a file store at
``DIR/mlflow`` (``file:`` tracking URI, no server); W&B runs offline (``WANDB_MODE=offline``,
files under ``DIR/wandb``) unless the user's environment says otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from deadzone.errors import DeadzoneError
from deadzone.training.train import Hook, lr_factor

NONE = "none"
# tracker name -> (module it needs, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'deadzone[tracking]'"),
    "mlflow": ("mlflow", "pip install 'deadzone[tracking]'"),
    "wandb": ("wandb", "pip install wandb"),
}
CHOICES = (NONE, *TRACKERS)
DIRECTORY = "tracking"  # under the experiment's output directory, unless given


@dataclass(frozen=True)
class Tracking:
    """Where a run reports: ``report_to`` (a tracker name or ``none``), into ``directory``."""

    report_to: str = NONE
    directory: str | None = None

    def __post_init__(self) -> None:
        if self.report_to not in CHOICES:
            raise DeadzoneError(
                f"unknown tracker {self.report_to!r}; choose from {', '.join(CHOICES)}"
            )
        if self.enabled and not self.directory:
            raise DeadzoneError(f"--report-to {self.report_to} needs a tracking directory")

    @property
    def enabled(self) -> bool:
        return self.report_to != NONE


NO_TRACKING = Tracking()


def tracking_of(config, out: str | Path) -> Tracking:
    """The ``Tracking`` a ``deadzone.config.TrackingConfig`` describes for an experiment into
    ``out``, checked before any run starts."""
    return tracking_for(config.report_to, out, config.tracking_dir)


def tracking_for(report_to: str, out: str | Path, directory: str | Path | None = None) -> Tracking:
    """The :class:`Tracking` of an experiment into ``out``: ``directory`` or ``out/tracking``,
    checked (the tracker's package is installed) before any run starts."""
    if report_to == NONE:
        return NO_TRACKING
    where = Path(directory) if directory else Path(out) / DIRECTORY
    tracking = Tracking(report_to, str(where.absolute()))
    check_installed(report_to)
    return tracking


def check_installed(report_to: str) -> None:
    module, install = TRACKERS[report_to]
    if importlib.util.find_spec(module) is None:
        raise DeadzoneError(
            f"--report-to {report_to} needs {module}, not installed here: {install}"
        )


def _tracker(tracking: Tracking, key: str):
    """The accelerate tracker for the run ``key``, started."""
    from accelerate import tracking as acc

    directory = Path(tracking.directory)
    name = tracking.report_to
    if name == "tensorboard":
        tracker = acc.TensorBoardTracker(key, directory / "tensorboard")
    elif name == "mlflow":
        import mlflow

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store, no server
        mlflow.set_tracking_uri((directory / "mlflow").absolute().as_uri())
        tracker = acc.MLflowTracker(experiment_name="deadzone", run_name=key)
    else:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(directory))
        (directory / "wandb").mkdir(parents=True, exist_ok=True)
        tracker = acc.WandBTracker("deadzone", name=key, dir=str(directory))
    tracker.start()
    return tracker


def flat_config(config: dict) -> dict:
    """A run's config as the flat ``str | int | float | bool`` values trackers accept."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat |= {f"{k}.{kk}": vv for kk, vv in flat_config(v).items()}
        elif isinstance(v, bool | int | float | str):
            flat[k] = v
        elif v is None:
            flat[k] = "none"
        else:
            flat[k] = ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return flat


class TrackerHook(Hook):
    """Logs one SFT run to ``tracker`` (an accelerate tracker): its config at the start, then
    ``train_loss``, ``lr`` and ``trainable_params`` after each step and ``eval_loss`` after
    each evaluation (step 0 too), at the step they belong to. :meth:`close` ends the run."""

    def __init__(self, tracker, config: dict) -> None:
        self.tracker = tracker
        self.config = flat_config(config)
        self._stored = False

    def _store(self) -> None:
        if not self._stored:
            self.tracker.store_init_configuration(self.config)
            self._stored = True

    def on_evaluate(self, loop, step: int, eval_loss: float) -> None:
        if not loop.accelerator.is_main_process:
            return
        self._store()
        self.tracker.log({"eval_loss": eval_loss}, step=step)

    def on_step_end(self, loop, step: int, loss: float) -> None:
        if not loop.accelerator.is_main_process:
            return
        lr = loop.config.lr * lr_factor(step - 1, loop.config)  # the lr this step trained at
        values = {"train_loss": loss, "lr": lr, "trainable_params": loop.trainable_count()}
        self.tracker.log(values, step=step)

    def close(self) -> None:
        self.tracker.finish()


def tracker_hook(tracking: Tracking, key: str, config: dict, main_process: bool = True):
    """A started :class:`TrackerHook` for the run ``key``, or None (no tracking, or not the
    main process)."""
    if not tracking.enabled or not main_process:
        return None
    return TrackerHook(_tracker(tracking, key), config)
