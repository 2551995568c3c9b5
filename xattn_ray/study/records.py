"""Results-store rows of one run, made from its `result.json` (or from why it has none).

Rows derive from the run's files, never from the live trial, so writing them again (a retried trial,
a resumed study, a reused parent) replaces the same rows: the store's (run_id, eval) key does the rest.
"""

from __future__ import annotations

import dataclasses
import json

from xattn_ray.study.config import Experiment
from xattn_ray.study.runs import CODESWITCH_STAGES, RunSpec, config_hash, model_options, run_config, run_id, train_config
from xattn_ray.store import make_row


def run_fields(experiment: Experiment, spec: RunSpec) -> dict:
    """The columns every row of a run shares, known before it trains."""
    if spec.stage in CODESWITCH_STAGES:
        return _codeswitch_fields(experiment, spec)
    run = run_config(experiment, spec)
    pair = run.language_pair
    parent_pair = None if spec.stage == "parent" else experiment.parent(run.parent).pair
    side = None
    if parent_pair is not None:
        side = "source" if pair.src != parent_pair.split("-")[0] else "target"
    hparams = {"train": dataclasses.asdict(train_config(experiment, spec)), "model": dataclasses.asdict(experiment.model),
               "model_options": model_options(spec), "options": spec.options, "size": run.size, "lines": run.lines,
               "tokenizer": dataclasses.asdict(experiment.tokenizer), "evaluation": dataclasses.asdict(experiment.evaluation)}
    return dict(experiment=experiment.name, run_id=run_id(experiment, spec), stage=spec.stage, parent_pair=parent_pair,
                pair=str(pair), src_lang=pair.src, tgt_lang=pair.tgt, side=side, policy=spec.policy, seed=spec.seed,
                train_size=run.size, hparams=json.dumps(hparams, sort_keys=True, default=str),
                config_hash=config_hash(experiment, spec))


def _codeswitch_fields(experiment: Experiment, spec: RunSpec) -> dict:
    """A code-switching run's columns: its attention variant and training alphas; the pair is the study's
    (`fr+de+cs-en`), each test row's `test_set` names its languages."""
    study = experiment.codeswitch
    hparams = {"train": dataclasses.asdict(train_config(experiment, spec)), "model": dataclasses.asdict(experiment.model),
               "model_options": model_options(spec), "options": spec.options, "codeswitch": dataclasses.asdict(study),
               "tokenizer": dataclasses.asdict(experiment.tokenizer), "evaluation": dataclasses.asdict(experiment.evaluation)}
    pair = f"{'+'.join(study.sources)}-{study.pivot}"
    alphas = spec.alphas or (None, None)
    return dict(experiment=experiment.name, run_id=run_id(experiment, spec), stage=spec.stage,
                parent_pair=None if spec.stage == "base" else pair, pair=pair, src_lang="+".join(study.sources),
                tgt_lang=study.pivot, policy=spec.policy, seed=spec.seed, attention=spec.attention,
                mono_alpha=alphas[0], cross_alpha=alphas[1], hparams=json.dumps(hparams, sort_keys=True, default=str),
                config_hash=config_hash(experiment, spec))


def outcome_rows(experiment: Experiment, spec: RunSpec, summary: dict, trial_id: str | None = None) -> list[dict]:
    """A `train` row (how training went) and one `test` row per test set, from `result.json`."""
    shared = dict(run_fields(experiment, spec), trainable_params=summary["trainable_params"],
                  total_params=summary["total_params"], updates=summary["updates"],
                  train_seconds=summary["train_seconds"],
                  target_tokens_per_second=summary["target_tokens_per_second"],
                  best_valid_loss=_finite(summary["best_valid_loss"]), stop_reason=summary["stop_reason"],
                  checkpoint_uri=summary["checkpoint"], status=summary["status"], ray_trial_id=trial_id,
                  error=summary["stop_reason"] if summary["status"] != "ok" else None)
    rows = [make_row(**shared, eval="train", valid_curve=json.dumps(summary["valid_curve"]),
                     bleu=summary.get("valid_bleu"), test_set="valid" if summary.get("valid_bleu") is not None else None)]
    for name, test in summary["tests"].items():
        rows.append(make_row(**shared, eval="test", test_set=name, bleu=test["bleu"], chrf=test["chrf"],
                             bleu_signature=test["bleu_signature"], chrf_signature=test["chrf_signature"],
                             n_evaluated=test["sentences"], hypotheses_uri=test["hypotheses"],
                             references_uri=test.get("references")))
    return rows


def unfinished_rows(experiment: Experiment, spec: RunSpec, status: str, error: str,
                    trial_id: str | None = None) -> list[dict]:
    """The `train` row of a run that failed or was stopped before it finished: what is missing and why."""
    return [make_row(**run_fields(experiment, spec), eval="train", status=status, error=error,
                     ray_trial_id=trial_id)]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
