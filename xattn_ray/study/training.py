"""Training one run and scoring it: what every study kind does once it has built its model and data.

A study kind (`study.transfer`, `study.codeswitch`) prepares a run's model, encoded training data and
test sets; `train_and_score` trains the model in the run's folder, decodes every test set with the best
checkpoint, writes translations and references beside it and, last, `result.json`. The Ray runner calls
the kind from its trials (`wrap_model` lets a Ray Train worker wrap the model in DDP; only rank 0
scores and writes files); `xattn-ray train` calls it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from xattn_ray.engine.batching import EncodedPairs
from xattn_ray.engine.checkpoint import LoadedModel, delta_base, load_model, save_model
from xattn_ray.engine.evaluate import TestResult, score_encoded
from xattn_ray.engine.model import Transformer
from xattn_ray.engine.policies import count_parameters
from xattn_ray.engine.tokenizer import EOS_ID, Tokenizer
from xattn_ray.engine.train import Reporter, TrainConfig, TrainingData, train, validation_loss
from xattn_ray.study.config import Experiment
from xattn_ray.study.run_folder import Result, RunFolder, TestScore
from xattn_ray.study.spec import RunSpec

ModelWrapper = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class RunContext:
    """Everything one run needs besides its kind's own logic: who it is, where its files go, how it runs."""

    experiment: Experiment
    spec: RunSpec
    run_id: str
    config_hash: str
    train_config: TrainConfig
    folder: RunFolder
    parent_checkpoint: Path | None  # the model a child run starts from; None for a run from scratch
    parent_checkpoint_sha256: str | None  # what `result.json` records of it: stale children are retrained
    cache: Path  # generated data and tokenizers, shared by every run of every study
    reporter: Reporter | None = None
    resume: bool = False  # continue from the folder's last checkpoint when there is one
    wrap_model: ModelWrapper | None = None  # DDP inside a Ray Train worker
    score_valid: bool = False  # also decode the validation set (a search optimising BLEU)


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


def train_and_score(context: RunContext, pair: str, parent_pair: str | None, side: str | None, model: Transformer,
                    training: TrainingData, tests: dict[str, TestSet], valid: TestSet | None = None,
                    delta_of_parent: bool = False) -> Result:
    """Train `model` in the run's folder, decode every test set with its best checkpoint (and `valid`,
    when given), write translations, references and, last, `result.json`.

    `delta_of_parent`: the run's checkpoints hold only what differs from its parent's checkpoint (a child
    that starts from its parent's weights)."""
    experiment, spec, folder = context.experiment, context.spec, context.folder
    counts = count_parameters(model)
    identity = {"experiment": experiment.name, "run_id": context.run_id, **spec.to_dict(), "pair": pair, "side": side}
    trained = context.wrap_model(model) if context.wrap_model is not None else model
    base = delta_base(context.parent_checkpoint) if delta_of_parent and context.parent_checkpoint else None
    outcome = train(trained, training, context.train_config, folder.path, context.reporter,
                    folder.path if context.resume else None, identity, base)
    rank = dist.get_rank() if dist.is_initialized() else 0
    scores: dict[str, TestScore] = {}
    valid_bleu = None
    if rank == 0 and not outcome.failed and outcome.best_checkpoint.is_file():
        scores, valid_bleu = score(context, load_model(outcome.best_checkpoint).model, training.tgt_tokenizer, tests,
                                   valid)
    progress = outcome.progress
    result = Result(
        run_id=context.run_id, config_hash=context.config_hash, spec=spec, pair=pair, parent_pair=parent_pair,
        side=side, stop_reason=outcome.stop_reason, updates=progress.update, train_seconds=progress.train_seconds,
        target_tokens_per_second=progress.target_tokens / max(progress.train_seconds, 1e-9),
        best_valid_loss=progress.best_valid_loss,
        valid_curve=[(m["update"], m["valid_loss"]) for m in progress.history],
        trainable_params=counts.trainable, total_params=counts.total, tests=scores, valid_bleu=valid_bleu,
        checkpoint=str(outcome.best_checkpoint), status="failed" if outcome.failed else "ok",
        parent_checkpoint_sha256=context.parent_checkpoint_sha256, train_size=len(training.train))
    if rank == 0:
        folder.write_result(result)
    return result


def score(context: RunContext, model: Transformer, tgt_tokenizer: Tokenizer, tests: dict[str, TestSet],
          valid: TestSet | None) -> tuple[dict[str, TestScore], float | None]:
    """Decode every test set (and `valid`, when given) with the experiment's evaluation settings; write
    translations and references into the run's folder. Returns the test scores and the valid BLEU."""
    evaluation, folder = context.experiment.evaluation, context.folder
    decoding = dict(beam=evaluation.beam, length_penalty=evaluation.length_penalty, max_len_a=evaluation.max_len_a,
                    max_len_b=evaluation.max_len_b, max_tokens=evaluation.max_tokens)
    scores: dict[str, TestScore] = {}
    for name, test in tests.items():
        scored = score_encoded(model, tgt_tokenizer, test.sources, test.segments, test.references, **decoding)
        # Translations and references side by side: reports and significance tests never re-decode.
        folder.hypotheses(name).write_text("".join(h + "\n" for h in scored.hypotheses))
        folder.references(name).write_text("".join(r + "\n" for r in test.references))
        scores[name] = _test_score(scored, folder, name)
    valid_bleu = None if valid is None else score_encoded(
        model, tgt_tokenizer, valid.sources, valid.segments, valid.references, **decoding).bleu.score
    return scores, valid_bleu


def score_imported(context: RunContext, pair: str, loaded: LoadedModel, valid: EncodedPairs,
                   tests: dict[str, TestSet]) -> Result:
    """A parent imported from a pretrained model: nothing trains. Its model is saved as the run's best
    checkpoint (children start from it), its validation loss measured, its test sets scored."""
    folder, model = context.folder, loaded.model
    folder.path.mkdir(parents=True, exist_ok=True)
    save_model(folder.best_checkpoint, model, loaded.src_tokenizer, loaded.tgt_tokenizer, extra=loaded.extra)
    loss = validation_loss(model, valid, context.train_config.max_tokens, torch.device("cpu"))
    scores, _ = score(context, model, loaded.tgt_tokenizer, tests, None)
    counts = count_parameters(model)
    result = Result(
        run_id=context.run_id, config_hash=context.config_hash, spec=context.spec, pair=pair, parent_pair=None,
        side=None, stop_reason="pretrained", updates=0, train_seconds=0.0, target_tokens_per_second=0.0,
        best_valid_loss=loss, valid_curve=[(0, loss)], trainable_params=counts.trainable, total_params=counts.total,
        tests=scores, valid_bleu=None, checkpoint=str(folder.best_checkpoint), status="ok")
    folder.write_result(result)
    return result


def _test_score(scored: TestResult, folder: RunFolder, name: str) -> TestScore:
    return TestScore(bleu=scored.bleu.score, chrf=scored.chrf.score, bleu_signature=scored.bleu.signature,
                     chrf_signature=scored.chrf.signature, sentences=len(scored.hypotheses),
                     sentences_per_second=scored.sentences_per_second, hypotheses=str(folder.hypotheses(name)),
                     references=str(folder.references(name)))
