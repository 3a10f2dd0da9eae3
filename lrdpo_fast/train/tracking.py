"""Experiment trackers (``report_to``): TensorBoard, Weights & Biases, MLflow.

``metrics.jsonl`` (and the loop's ``summary.jsonl``) stay the source of truth: a tracker receives
a copy of every row they get, under the same names and steps, on the main process only. Each
backend is an optional dependency (the ``track`` extra) and one small class behind ``Backend``;
``Tracker`` fans a row out to the chosen backends and turns a backend's failure into one warning
(that backend is dropped for the rest of the run; training never stops for a tracker).

Where they write, unless the user's environment says otherwise:
- tensorboard: ``<root>/tensorboard`` (event files; ``tensorboard --logdir <root>``);
- wandb: a run under ``<root>/wandb``; offline (``WANDB_MODE=offline``) unless ``WANDB_MODE``
  or ``WANDB_API_KEY`` is set (``wandb sync`` uploads an offline run later); project
  ``WANDB_PROJECT`` or "lrdpo-fast";
- mlflow: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``<root>/mlflow.db`` (MLflow 3
  refuses new ``file:`` stores unless ``MLFLOW_ALLOW_FILE_STORE=true``); experiment
  ``MLFLOW_EXPERIMENT_NAME`` or "lrdpo-fast".
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow")
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
EXTRA_HINT = "pip install 'lrdpo-fast[track]'"


def check_report_to(name: str, value: Any) -> list[str]:
    """``value`` (None, one tracker name or a list of them) as a list of distinct names from
    ``TRACKERS``; ValueError naming ``name`` otherwise."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} must be a list of tracker names from {TRACKERS}, got {value!r}")
    unknown = [v for v in items if v not in TRACKERS]
    if unknown:
        raise ValueError(f"{name} has unknown tracker(s) {unknown}; choose from {TRACKERS}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} names a tracker twice: {list(items)}")
    return list(items)


def require_trackers(report_to: Iterable[str]) -> None:
    """ImportError naming the ``track`` extra when a chosen tracker's package is not installed."""
    for name in report_to:
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise ImportError(f"report_to {name!r} needs the {_MODULES[name]} package: {EXTRA_HINT}")


def numeric_metrics(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``row`` (bools as 0/1) as floats, names prefixed; strings, None and
    non-finite values are left out (metrics.jsonl keeps them)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[prefix + k] = float(v)
    return out


class Backend:
    """One tracker: scalars by step, an image file by step, close. Subclasses raise freely;
    ``Tracker`` contains their failures."""

    name = "backend"

    def log(self, metrics: dict[str, float], step: int, axis: str) -> None:
        """Log ``metrics`` (name -> float) at ``step`` of the x axis named ``axis``."""
        raise NotImplementedError

    def log_image(self, name: str, path: Path, step: int) -> None:
        """Log the PNG at ``path`` as ``name`` (where the backend takes images)."""

    def close(self) -> None:
        """Flush and finish the run."""


class TensorBoardBackend(Backend):
    """Event files under ``<root>/tensorboard`` through torch's ``SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, root: Path, run_name: str, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int, axis: str) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_image(self, name: str, path: Path, step: int) -> None:
        import matplotlib.image

        img = matplotlib.image.imread(str(path))  # [H, W, C] floats in [0, 1]
        self.writer.add_image(name, img[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbBackend(Backend):
    """A W&B run in ``<root>/wandb``; each metric is plotted against its own axis (``step`` for
    training rows, ``summary/iteration`` for the loop's summary rows) via ``define_metric``."""

    name = "wandb"

    def __init__(self, root: Path, run_name: str, config: dict) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lrdpo-fast"),
            name=run_name,
            dir=str(root),
            config=config,
            mode=mode,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.defined: set[str] = set()

    def log(self, metrics: dict[str, float], step: int, axis: str) -> None:
        for k in [axis, *metrics]:
            if k not in self.defined:
                self.run.define_metric(k) if k == axis else self.run.define_metric(k, step_metric=axis)
                self.defined.add(k)
        self.run.log({**metrics, axis: step})

    def log_image(self, name: str, path: Path, step: int) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


class MLflowBackend(Backend):
    """An MLflow run (tracking URI: the environment's, else ``sqlite:///<root>/mlflow.db``)."""

    name = "mlflow"

    def __init__(self, root: Path, run_name: str, config: dict) -> None:
        import mlflow

        root.mkdir(parents=True, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        self.client = mlflow.tracking.MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lrdpo-fast")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = {k: str(v)[:500] for k, v in _flat(config).items()}
        if params:
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])

    def log(self, metrics: dict[str, float], step: int, axis: str) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _warn(name: str, what: str, e: Exception) -> None:
    warnings.warn(
        f"report_to {name!r} failed ({what}: {type(e).__name__}: {e}); it is off for the rest of the run "
        "(metrics.jsonl is complete)",
        RuntimeWarning,
        stacklevel=4,
    )


BACKEND_CLASSES: dict[str, type[Backend]] = {
    "tensorboard": TensorBoardBackend,
    "wandb": WandbBackend,
    "mlflow": MLflowBackend,
}


class Tracker:
    """The chosen backends of one run. A backend that raises (at start or mid-run) is reported
    in one ``RuntimeWarning`` and dropped; the others go on."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = list(backends)

    def _each(self, what: str, fn) -> None:
        for b in list(self.backends):
            try:
                fn(b)
            except Exception as e:  # a tracker never stops training
                self.backends.remove(b)
                _warn(b.name, what, e)

    def log_row(self, row: Mapping[str, Any], step: int, *, prefix: str = "", axis: str = "step") -> None:
        """Log the numbers of ``row`` (a metrics or summary row) at ``step``; names get ``prefix``."""
        metrics = numeric_metrics(row, prefix)
        if axis in metrics:
            del metrics[axis]  # the axis is the step itself
        self._each("log", lambda b: b.log(metrics, int(step), axis))

    def log_image(self, name: str, path: str | os.PathLike | None, step: int) -> None:
        """Log a PNG written by the run (skipped when ``path`` is None or missing)."""
        if path is not None and Path(path).is_file():
            self._each("log_image", lambda b: b.log_image(name, Path(path), int(step)))

    def close(self) -> None:
        """Finish every backend's run."""
        self._each("close", lambda b: b.close())
        self.backends = []


def build_tracker(report_to: Iterable[str], root: str | os.PathLike, *, run_name: str, config: dict) -> Tracker | None:
    """A ``Tracker`` writing under ``root`` for the names in ``report_to`` (None when empty).

    ImportError naming the ``track`` extra when a package is missing; a backend whose start
    fails otherwise (a bad URI, no network) is one warning and left out."""
    names = list(report_to)
    if not names:
        return None
    require_trackers(names)
    if "wandb" in names and not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
    backends = []
    for name in names:
        try:
            backends.append(BACKEND_CLASSES[name](Path(root), run_name, config))
        except Exception as e:  # a tracker never stops training
            _warn(name, "start", e)
    return Tracker(backends)
