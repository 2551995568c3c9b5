"""The seam between study kinds: what a kind of study must say, and which kind an experiment is.

A transfer study (parents, then children under freeze policies; Gheini et al. 2021) and a
code-switching study (a base model, Q_cross pretraining, code-switched fine-tuning; Foroutan et al.
2023) differ in their stages, their runs and what a run does; everything else (hashing, run folders,
the results store, the runner, resume) is shared and asks the kind through this interface instead of
branching on it. A third kind is one more module implementing `StudyKind` and one line in `kind_of`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from xattn_ray.engine.train import TrainConfig
from xattn_ray.study.codeswitch import CODESWITCH
from xattn_ray.study.config import Experiment
from xattn_ray.study.run_folder import Result
from xattn_ray.study.spec import RunSpec, StagePlan
from xattn_ray.study.training import RunContext
from xattn_ray.study.transfer import TRANSFER


class StudyKind(Protocol):
    """What differs between kinds of study."""

    name: str

    def stages(self, experiment: Experiment) -> list[StagePlan]:
        """The study's runs, stage by stage, in the order they can train (a stage may be empty)."""

    def parent_spec(self, experiment: Experiment, spec: RunSpec) -> RunSpec | None:
        """The run `spec` starts from, or None for a run trained from scratch."""

    def base_train_config(self, experiment: Experiment, spec: RunSpec) -> TrainConfig:
        """The run's training options before its grid/search options and seed are applied."""

    def hash_payload(self, experiment: Experiment, spec: RunSpec) -> dict:
        """What the run's result depends on beyond what every run shares (`runs.config_hash` adds the
        model, tokenizer, filters, training and evaluation options, and the parent's hash)."""

    def row_fields(self, experiment: Experiment, spec: RunSpec) -> dict:
        """The kind's own results-store columns of the run (pair, languages, side, attention, ...)."""

    def hparams(self, experiment: Experiment, spec: RunSpec) -> dict:
        """The kind's own part of the run's resolved configuration (the `hparams` column)."""

    def run(self, context: RunContext) -> Result:
        """Build the run's model and data, train, score, write `result.json` (the parent must be finished)."""

    def check_data(self, experiment: Experiment, cache: Path) -> list[str]:
        """Read and check every data file the study uses; lines for `xattn-ray validate` to print."""

    def plan_lines(self, experiment: Experiment) -> list[str]:
        """What `xattn-ray run` would train, in words."""

    def summary_lines(self, results: list[Result], analyses: list[dict]) -> list[str]:
        """The console summary of finished runs (and analysis rows) at the end of a study."""


def kind_of(experiment: Experiment) -> StudyKind:
    """The experiment's kind: a `codeswitch` section makes a code-switching study."""
    return CODESWITCH if experiment.codeswitch is not None else TRANSFER
