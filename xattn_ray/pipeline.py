"""One run of a study in one process: data, tokenizers, model (fresh or transferred), training, test BLEU.

A parent run trains a model from scratch on its pair. A child run loads its parent's best checkpoint,
trains (or reuses from the cache) a SentencePiece model for the new language on the child's training
text, keeps the parent's tokenizer for the side that does not change, builds the child with
`transfer.make_child`, trains it and scores its test sets. The Ray runner calls these functions from
its trials; `xattn-ray train` calls them directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from xattn_ray.batching import encode_pairs
from xattn_ray.checkpoint import load_model
from xattn_ray.config import ChildConfig, Experiment, ParentConfig
from xattn_ray.data.run_data import RunData, load_run_data, run_name
from xattn_ray.evaluate import TestResult, score_test_set
from xattn_ray.model import Transformer, preset_config
from xattn_ray.policies import count_parameters
from xattn_ray.tokenizer import Tokenizer, train_tokenizer
from xattn_ray.train import Reporter, TrainingData, train
from xattn_ray.transfer import changed_side, make_child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run produced: its numbers and where its files are."""

    run: str
    pair: str
    policy: str | None  # None for a parent
    seed: int
    side: str | None  # "source" / "target" for a child
    stop_reason: str
    updates: int
    train_seconds: float
    target_tokens_per_second: float
    best_valid_loss: float
    trainable_params: int
    total_params: int
    tests: dict[str, TestResult]
    checkpoint: Path

    def summary(self) -> dict:
        """Plain numbers for `result.json` and the results store."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("tests",)}
        record["checkpoint"] = str(self.checkpoint)
        record["tests"] = {name: {"bleu": t.bleu.score, "chrf": t.chrf.score, "bleu_signature": t.bleu.signature,
                                  "chrf_signature": t.chrf.signature, "sentences_per_second": t.sentences_per_second}
                           for name, t in self.tests.items()}
        return record


def run_directory(storage: Path, experiment: Experiment, run: ParentConfig | ChildConfig,
                  policy: str | None, seed: int) -> Path:
    """Where a run keeps its checkpoints and translations: named by the run, never by the time."""
    label = run_name(run) if policy is None else f"{run_name(run)}-{policy}"
    return storage / experiment.name / "runs" / f"{label}-s{seed}"


def run_parent(experiment: Experiment, parent: ParentConfig, seed: int, storage: Path,
               reporter: Reporter | None = None, resume_from: Path | None = None) -> RunOutcome:
    """Train `parent` from scratch and score its test sets."""
    data = load_run_data(experiment, parent, storage / "cache")
    spm_cache = storage / "cache" / "spm"
    src_tok = train_tokenizer(data.pair.src, data.train.src, experiment.tokenizer, spm_cache)
    tgt_tok = train_tokenizer(data.pair.tgt, data.train.tgt, experiment.tokenizer, spm_cache)
    torch.manual_seed(seed)
    model = Transformer(preset_config(experiment.model.preset, src_tok.vocab_size, tgt_tok.vocab_size,
                                      **experiment.model.overrides()))
    workdir = run_directory(storage, experiment, parent, None, seed)
    return _train_and_score(experiment, parent, None, None, seed, model, data, src_tok, tgt_tok, workdir,
                            reporter, resume_from)


def run_child(experiment: Experiment, child: ChildConfig, policy_name: str, seed: int, storage: Path,
              parent_checkpoint: Path, reporter: Reporter | None = None,
              resume_from: Path | None = None) -> RunOutcome:
    """Transfer the parent at `parent_checkpoint` to `child` under `policy_name`, train, score."""
    policy = experiment.policy(policy_name)
    parent = load_model(parent_checkpoint)
    side = changed_side(experiment.parent(child.parent).language_pair, child.language_pair)
    data = load_run_data(experiment, child, storage / "cache")
    spm_cache = storage / "cache" / "spm"
    if side == "source":
        src_tok = train_tokenizer(data.pair.src, data.train.src, experiment.tokenizer, spm_cache)
        tgt_tok = parent.tgt_tokenizer
    else:
        src_tok = parent.src_tokenizer
        tgt_tok = train_tokenizer(data.pair.tgt, data.train.tgt, experiment.tokenizer, spm_cache)
    new_vocab = src_tok.vocab_size if side == "source" else tgt_tok.vocab_size
    torch.manual_seed(seed)
    built = make_child(parent.model, side, new_vocab, policy, policy_name)
    log.info("%s %s: %s", run_name(child), policy_name, count_parameters(built.model).summary())
    workdir = run_directory(storage, experiment, child, policy_name, seed)
    return _train_and_score(experiment, child, policy_name, side, seed, built.model, data, src_tok, tgt_tok,
                            workdir, reporter, resume_from)


def _train_and_score(experiment: Experiment, run: ParentConfig | ChildConfig, policy: str | None,
                     side: str | None, seed: int, model: Transformer, data: RunData, src_tok: Tokenizer,
                     tgt_tok: Tokenizer, workdir: Path, reporter: Reporter | None,
                     resume_from: Path | None) -> RunOutcome:
    config = dataclasses.replace(experiment.train_config(run), seed=seed)
    max_positions = model.config.max_positions
    training = TrainingData(encode_pairs(data.train, src_tok, tgt_tok, max_positions),
                            encode_pairs(data.valid, src_tok, tgt_tok, max_positions), src_tok, tgt_tok)
    counts = count_parameters(model)
    extra = {"experiment": experiment.name, "run": run_name(run), "pair": str(data.pair), "policy": policy,
             "seed": seed, "side": side}
    result = train(model, training, config, workdir, reporter, resume_from, extra)
    tests: dict[str, TestResult] = {}
    if not result.failed and result.best_checkpoint.is_file():
        best = load_model(result.best_checkpoint).model
        evaluation = experiment.evaluation
        for name, text in data.tests.items():
            tests[name] = score_test_set(best, src_tok, tgt_tok, text.src, text.tgt, beam=evaluation.beam,
                                         length_penalty=evaluation.length_penalty,
                                         max_tokens=evaluation.max_tokens)
            (workdir / f"hypotheses.{name}.txt").write_text("".join(h + "\n" for h in tests[name].hypotheses))
    progress = result.progress
    outcome = RunOutcome(
        run=run_name(run), pair=str(data.pair), policy=policy, seed=seed, side=side,
        stop_reason=result.stop_reason, updates=progress.update, train_seconds=progress.train_seconds,
        target_tokens_per_second=progress.target_tokens / max(progress.train_seconds, 1e-9),
        best_valid_loss=progress.best_valid_loss, trainable_params=counts.trainable, total_params=counts.total,
        tests=tests, checkpoint=result.best_checkpoint)
    (workdir / "result.json").write_text(json.dumps(outcome.summary(), indent=2) + "\n")
    return outcome
