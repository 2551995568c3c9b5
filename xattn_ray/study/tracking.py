"""The experiment file's `tracking:` section: which experiment tracker records the study's trials.

    tracking: {backend: mlflow, uri: mlruns, experiment: multi30k}
    tracking: {backend: wandb, project: multi30k, mode: offline}

Each trial (one run) becomes one tracker run named by its run id, with the run's resolved
configuration as its parameters and its reports as metrics (runner/tracking.py attaches Ray Tune's own
callbacks). Tracking only watches: it is no part of a run's hash, so a study keeps its run ids, folders
and results with or without it. The backends are optional packages (the `tracking` extra); asking for
one that is not installed is an error at the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from xattn_ray.errors import ConfigError
from xattn_ray.schema import Invalid

INSTALL = "pip install 'xattn-ray[tracking]'"
# Each backend: the module it needs, its name for people, and the keys of the section it reads.
BACKENDS = {
    "mlflow": ("mlflow", "MLflow", ("uri", "experiment")),
    "wandb": ("wandb", "Weights & Biases", ("project", "entity", "mode", "dir")),
}
_WANDB_NAME_FORBIDS = set("/\\#?%:")  # characters W&B refuses in project and entity names


@dataclass(frozen=True)
class TrackingConfig:
    """Where the study's trials are tracked. Keys left out take the environment's setting (MLFLOW_TRACKING_URI,
    WANDB_DIR, ...), else the defaults below; a key of the other backend is an error."""

    backend: Literal["mlflow", "wandb"]
    # MLflow: a tracking URI (http://..., file:///...) or a folder, relative to the experiment file, for a
    # file store; default: STORAGE/mlruns. The experiment's runs go to MLflow experiment `experiment`
    # (default: the study's name).
    uri: str | None = None
    experiment: str | None = None
    # W&B: the project (default: the study's name) and entity (default: your W&B default); `mode` online,
    # offline (files only, `wandb sync` later) or disabled; `dir`, relative to the experiment file, holds
    # the W&B run files (default: STORAGE/wandb).
    project: str | None = None
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    dir: str | None = None

    def __post_init__(self) -> None:
        module, name, keys = BACKENDS[self.backend]
        for field in dataclasses.fields(self):
            if field.name not in ("backend", *keys) and getattr(self, field.name) is not None:
                raise Invalid(field.name, f"not a key of {name} tracking (it takes: {', '.join(keys)})")
        for key in ("uri", "experiment", "project", "entity", "dir"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise Invalid(key, "is empty; leave the key out for the default")
        for key in ("project", "entity"):
            value = getattr(self, key)
            if value is not None and _WANDB_NAME_FORBIDS & set(value):
                raise Invalid(key, f"{value!r}: W&B names cannot hold any of {''.join(sorted(_WANDB_NAME_FORBIDS))}")
        if self.uri is not None:
            parsed = urlparse(self.uri)
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise Invalid("uri", f"{self.uri} names the host {parsed.netloc!r}: write file:///an/absolute/path, "
                                     f"or a folder relative to the experiment file")
        if importlib.util.find_spec(module) is None:
            raise Invalid("backend", f"tracking with {name} needs the {module} package, which is not installed: "
                                     f"{INSTALL}")

    def file_store(self, base_dir: Path) -> Path | None:
        """The folder of an MLflow file store that `uri` names (a folder, or a `file:` URI), made absolute
        against `base_dir` (the experiment file's folder); None for another kind of store or no `uri`."""
        if self.uri is None:
            return None
        if not is_file_store(self.uri):
            return None
        return (base_dir / Path(unquote(urlparse(self.uri).path)).expanduser()).resolve()

    def run_files(self, base_dir: Path) -> Path | None:
        """The W&B `dir`, made absolute against `base_dir`; None when not given."""
        return None if self.dir is None else (base_dir / Path(self.dir).expanduser()).resolve()


def is_file_store(uri: str) -> bool:
    """Whether the MLflow tracking URI `uri` names a file store: a `file:` URI or a plain folder."""
    return urlparse(uri).scheme in ("", "file") and uri != "databricks"  # MLflow's one URI without a scheme


def with_tracking(experiment, backend: str):
    """`experiment` with the tracking that `xattn-ray run --tracking BACKEND` asks for: its own section when
    that names the same backend, else the backend's defaults; `none`: no tracking."""
    if backend == "none":
        tracking = None
    elif experiment.tracking is not None and experiment.tracking.backend == backend:
        return experiment
    else:
        try:
            tracking = TrackingConfig(backend=backend)
        except Invalid as err:
            raise ConfigError(f"--tracking {backend}: {err.why}") from None
    changed = dataclasses.replace(experiment, tracking=tracking)
    for field in dataclasses.fields(experiment):  # what `replace` leaves at its default (where the file was)
        if not field.init:
            object.__setattr__(changed, field.name, getattr(experiment, field.name))
    return changed
