"""One run of a study in one process: data, tokenizers, model (fresh or transferred), training, test BLEU.

A parent run trains a model from scratch on its pair. A child run loads its parent's best checkpoint,
trains (or reuses from the cache) a SentencePiece model for the new language on the child's training
text, keeps the parent's tokenizer for the side that does not change, builds the child with
`transfer.make_child`, trains it and scores its test sets. The Ray runner calls these functions from
its trials (`wrap_model` lets a Ray Train worker wrap the model in DDP; only rank 0 scores and writes
files); `xattn-ray train` calls them directly. A run is named by a `runs.RunSpec`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from xattn_ray.engine.batching import encode_pairs
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.study.config import Experiment
from xattn_ray.study.run_data import RunData, load_run_data
from xattn_ray.engine.evaluate import Score, TestResult, score_encoded
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import count_parameters
from xattn_ray.study.runs import RunSpec, config_hash, model_options, run_config, run_directory, run_id, train_config
from xattn_ray.engine.tokenizer import EOS_ID, Tokenizer, train_tokenizer
from xattn_ray.engine.train import Progress, Reporter, TrainingData, train
from xattn_ray.engine.transfer import changed_side, make_child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run produced: its numbers and where its files are."""

    run_id: str
    config_hash: str
    spec: RunSpec
    pair: str
    parent_pair: str | None  # a child's parent's pair
    side: str | None  # "source" / "target" for a child
    stop_reason: str
    updates: int
    train_seconds: float
    target_tokens_per_second: float
    best_valid_loss: float
    valid_curve: list[tuple[int, float]]  # (update, validation loss) of every validation
    trainable_params: int
    total_params: int
    tests: dict[str, TestResult]
    valid_bleu: Score | None  # only when asked for (a search optimising BLEU)
    checkpoint: Path

    @property
    def failed(self) -> bool:
        return self.stop_reason.startswith("non-finite")

    def summary(self) -> dict:
        """Plain values for `result.json`, from which the results store's rows are made."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("tests", "spec", "valid_bleu", "checkpoint")}
        record["spec"] = self.spec.to_dict()
        record["status"] = "failed" if self.failed else "ok"
        record["checkpoint"] = str(self.checkpoint)
        record["valid_bleu"] = None if self.valid_bleu is None else self.valid_bleu.score
        record["tests"] = {name: {"bleu": t.bleu.score, "chrf": t.chrf.score, "bleu_signature": t.bleu.signature,
                                  "chrf_signature": t.chrf.signature, "sentences": len(t.hypotheses),
                                  "sentences_per_second": t.sentences_per_second,
                                  "hypotheses": str(self.checkpoint.parent / f"hypotheses.{name}.txt"),
                                  "references": str(self.checkpoint.parent / f"references.{name}.txt")}
                           for name, t in self.tests.items()}
        return record


def read_summary(workdir: Path) -> dict | None:
    """The `result.json` of a finished run, or None when the run has not finished."""
    path = workdir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


ModelWrapper = Callable[[nn.Module], nn.Module]


def run_parent(experiment: Experiment, spec: RunSpec, storage: Path, reporter: Reporter | None = None,
               resume: bool = False, wrap_model: ModelWrapper | None = None,
               score_valid: bool = False) -> RunOutcome:
    """Train the parent `spec` names from scratch and score its test sets."""
    parent = run_config(experiment, spec)
    data = load_run_data(experiment, parent, storage / "cache")
    spm_cache = storage / "cache" / "spm"
    src_tok = train_tokenizer(data.pair.src, data.train.src, experiment.tokenizer, spm_cache)
    tgt_tok = train_tokenizer(data.pair.tgt, data.train.tgt, experiment.tokenizer, spm_cache)
    torch.manual_seed(spec.seed)
    model = Transformer(preset_config(experiment.model.preset, src_tok.vocab_size, tgt_tok.vocab_size,
                                      **experiment.model.overrides(), **model_options(spec)))
    return _train_and_score(experiment, spec, None, None, model, data, src_tok, tgt_tok, storage, reporter,
                            resume, wrap_model, score_valid)


def run_child(experiment: Experiment, spec: RunSpec, storage: Path, parent_checkpoint: Path,
              reporter: Reporter | None = None, resume: bool = False, wrap_model: ModelWrapper | None = None,
              score_valid: bool = False) -> RunOutcome:
    """Transfer the parent at `parent_checkpoint` to the child `spec` names, under its policy; train, score."""
    child = run_config(experiment, spec)
    policy = experiment.policy(spec.policy)
    parent = load_model(parent_checkpoint)
    parent_pair = experiment.parent(child.parent).language_pair
    side = changed_side(parent_pair, child.language_pair)
    data = load_run_data(experiment, child, storage / "cache")
    spm_cache = storage / "cache" / "spm"
    if side == "source":
        src_tok = train_tokenizer(data.pair.src, data.train.src, experiment.tokenizer, spm_cache)
        tgt_tok = parent.tgt_tokenizer
    else:
        src_tok = parent.src_tokenizer
        tgt_tok = train_tokenizer(data.pair.tgt, data.train.tgt, experiment.tokenizer, spm_cache)
    new_vocab = src_tok.vocab_size if side == "source" else tgt_tok.vocab_size
    torch.manual_seed(spec.seed)
    built = make_child(parent.model, side, new_vocab, policy, spec.policy)
    if model_options(spec):
        built.model.set_dropout(**model_options(spec))
    log.info("%s %s: %s", spec.run, spec.policy, count_parameters(built.model).summary())
    return _train_and_score(experiment, spec, str(parent_pair), side, built.model, data, src_tok, tgt_tok,
                            storage, reporter, resume, wrap_model, score_valid)


@dataclass(frozen=True)
class TestSet:
    """A test set ready to decode: source ids ending with EOS (segment ids for code-switched sources)
    and one raw reference per source."""

    sources: list[list[int]]
    segments: list[list[int]] | None
    references: list[str]


def text_test_set(sources: list[str], references: list[str], src_tok: Tokenizer, max_positions: int) -> TestSet:
    """Raw source sentences encoded as `decode.translate` does (too long ones truncated)."""
    ids = [pieces[:max_positions - 1] + [EOS_ID] for pieces in src_tok.encode(sources)]
    return TestSet(ids, None, list(references))


def _train_and_score(experiment: Experiment, spec: RunSpec, parent_pair: str | None, side: str | None,
                     model: Transformer, data: RunData, src_tok: Tokenizer, tgt_tok: Tokenizer, storage: Path,
                     reporter: Reporter | None, resume: bool, wrap_model: ModelWrapper | None,
                     score_valid: bool) -> RunOutcome:
    max_positions = model.config.max_positions
    training = TrainingData(encode_pairs(data.train, src_tok, tgt_tok, max_positions),
                            encode_pairs(data.valid, src_tok, tgt_tok, max_positions), src_tok, tgt_tok)
    tests = {name: text_test_set(text.src, text.tgt, src_tok, max_positions) for name, text in data.tests.items()}
    valid = text_test_set(data.valid.src, data.valid.tgt, src_tok, max_positions) if score_valid else None
    return train_and_score(experiment, spec, str(data.pair), parent_pair, side, model, training, tests, storage,
                           reporter, resume, wrap_model, valid)


def train_and_score(experiment: Experiment, spec: RunSpec, pair: str, parent_pair: str | None, side: str | None,
                    model: Transformer, training: TrainingData, tests: dict[str, TestSet], storage: Path,
                    reporter: Reporter | None, resume: bool, wrap_model: ModelWrapper | None,
                    valid: TestSet | None = None) -> RunOutcome:
    """Train `model` in the run's folder, decode every test set with its best checkpoint (and `valid`,
    when a search optimises BLEU), write translations, references and, last, `result.json`."""
    workdir = run_directory(storage, experiment, spec)
    config = train_config(experiment, spec)
    counts = count_parameters(model)
    identity = {"experiment": experiment.name, "run_id": run_id(experiment, spec), **spec.to_dict(),
                "pair": pair, "side": side}
    trained = wrap_model(model) if wrap_model is not None else model
    result = train(trained, training, config, workdir, reporter, workdir if resume else None, identity)
    scores: dict[str, TestResult] = {}
    valid_bleu = None
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not result.failed and result.best_checkpoint.is_file():
        best = load_model(result.best_checkpoint).model
        evaluation = experiment.evaluation
        decoding = dict(beam=evaluation.beam, length_penalty=evaluation.length_penalty,
                        max_len_a=evaluation.max_len_a, max_len_b=evaluation.max_len_b,
                        max_tokens=evaluation.max_tokens)
        for name, test in tests.items():
            scores[name] = score_encoded(best, training.tgt_tokenizer, test.sources, test.segments, test.references,
                                         **decoding)
            # Translations and references side by side: reports and significance tests never re-decode.
            (workdir / f"hypotheses.{name}.txt").write_text("".join(h + "\n" for h in scores[name].hypotheses))
            (workdir / f"references.{name}.txt").write_text("".join(r + "\n" for r in test.references))
        if valid is not None:
            valid_bleu = score_encoded(best, training.tgt_tokenizer, valid.sources, valid.segments, valid.references,
                                       **decoding).bleu
    progress: Progress = result.progress
    outcome = RunOutcome(
        run_id=run_id(experiment, spec), config_hash=config_hash(experiment, spec), spec=spec, pair=pair,
        parent_pair=parent_pair, side=side, stop_reason=result.stop_reason, updates=progress.update,
        train_seconds=progress.train_seconds,
        target_tokens_per_second=progress.target_tokens / max(progress.train_seconds, 1e-9),
        best_valid_loss=progress.best_valid_loss,
        valid_curve=[(m["update"], m["valid_loss"]) for m in progress.history],
        trainable_params=counts.trainable, total_params=counts.total, tests=scores, valid_bleu=valid_bleu,
        checkpoint=result.best_checkpoint)
    if rank == 0:  # written last: its presence marks the run finished
        (workdir / "result.json").write_text(json.dumps(outcome.summary(), indent=2) + "\n")
    return outcome
