"""Results-store rows of one run, made from its `Result` (or from why it has none).

Rows derive from the run's files, never from the live trial, so writing them again (a retried trial,
a resumed study, a reused parent) replaces the same rows: the store's (run_id, eval) key does the rest.
"""

from __future__ import annotations

import dataclasses
import json

from xattn_ray.store import make_row
from xattn_ray.study.config import Experiment
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.run_folder import Result
from xattn_ray.study.runs import config_hash, run_id, train_config
from xattn_ray.study.spec import RunSpec, model_options


def run_fields(experiment: Experiment, spec: RunSpec, selection: str = "grid") -> dict:
    """The columns every row of a run shares, known before it trains; `selection` says whether a report
    counts the run (`store.SELECTIONS`)."""
    kind = kind_of(experiment)
    hparams = {"train": dataclasses.asdict(train_config(experiment, spec)), "model": dataclasses.asdict(experiment.model),
               "model_options": model_options(spec), "options": spec.options,
               "tokenizer": dataclasses.asdict(experiment.tokenizer),
               "evaluation": dataclasses.asdict(experiment.evaluation), **kind.hparams(experiment, spec)}
    if selection in ("search", "confirmed"):  # how the run's configuration was chosen, for the report
        hparams["search"] = {**dataclasses.asdict(experiment.search), "trial_seed": experiment.grid.seeds[0]}
    return dict(experiment=experiment.name, run_id=run_id(experiment, spec), stage=spec.stage, policy=spec.policy,
                seed=spec.seed, options=dict(sorted(spec.options.items())),
                hparams=json.dumps(hparams, sort_keys=True, default=str),
                config_hash=config_hash(experiment, spec), selection=selection, **kind.row_fields(experiment, spec))


def outcome_rows(experiment: Experiment, spec: RunSpec, result: Result, trial_id: str | None = None,
                 selection: str = "grid") -> list[dict]:
    """A `train` row (how training went) and one `test` row per test set."""
    shared = dict(run_fields(experiment, spec, selection), trainable_params=result.trainable_params,
                  total_params=result.total_params, updates=result.updates, train_seconds=result.train_seconds,
                  target_tokens_per_second=result.target_tokens_per_second,
                  best_valid_loss=_finite(result.best_valid_loss), stop_reason=result.stop_reason,
                  train_size=result.train_size,
                  checkpoint_uri=result.checkpoint, parent_checkpoint_sha256=result.parent_checkpoint_sha256,
                  status=result.status, ray_trial_id=trial_id,
                  error=None if result.ok else result.stop_reason)
    valid_losses = [{"update": update, "valid_loss": loss} for update, loss in result.valid_curve]
    rows = [make_row(**shared, eval="train", valid_losses=valid_losses, bleu=result.valid_bleu,
                     test_set="valid" if result.valid_bleu is not None else None)]
    for name, test in result.tests.items():
        rows.append(make_row(**shared, eval="test", test_set=name, bleu=test.bleu, chrf=test.chrf,
                             bleu_signature=test.bleu_signature, chrf_signature=test.chrf_signature,
                             n_evaluated=test.sentences, hypotheses_uri=test.hypotheses,
                             references_uri=test.references))
    return rows


def stale_rows(experiment: Experiment, spec: RunSpec, result: Result, why: str,
               selection: str = "grid") -> list[dict]:
    """The rows of a finished run that trains again because its parent changed: its numbers, marked
    `stopped` with why, so no report counts them; the new run's rows replace them."""
    return [{**row, "status": "stopped", "error": why}
            for row in outcome_rows(experiment, spec, result, selection=selection)]


def unfinished_rows(experiment: Experiment, spec: RunSpec, status: str, error: str,
                    trial_id: str | None = None, selection: str = "grid") -> list[dict]:
    """The `train` row of a run that failed or was stopped before it finished: what is missing and why."""
    return [make_row(**run_fields(experiment, spec, selection), eval="train", status=status, error=error,
                     ray_trial_id=trial_id)]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
