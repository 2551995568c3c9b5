"""A run's folder: the only place that knows its file names, and its `result.json` as a typed `Result`.

    <storage>/<experiment>/runs/<run id>/
        last.pt                       full training state (resume), written by the training loop
        best.pt                       the model with the lowest validation loss, with its tokenizers
        hypotheses.<test set>.txt     translations of a test set, one per line
        references.<test set>.txt     the references they were scored against, same order
        result.json                   written last: its presence marks the run finished; it names
                                      the parent checkpoint the run started from by its sha256
        analyses/<task id>.done       an analysis of this run whose rows are stored

A run with `last.pt` but no `result.json` was interrupted; `--resume` continues it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.engine.train import BEST_CHECKPOINT, LAST_CHECKPOINT
from xattn_ray.errors import XattnError
from xattn_ray.files import write_atomically
from xattn_ray.study.spec import RunSpec

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TestScore:
    """One test set's scores and where its translations and references are."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int
    sentences_per_second: float
    hypotheses: str  # path of the translations
    references: str  # path of the references, same order


@dataclass(frozen=True)
class Result:
    """What a finished run produced (`result.json`): its numbers and where its files are."""

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
    tests: dict[str, TestScore]
    valid_bleu: float | None  # only when asked for (a search optimising BLEU)
    checkpoint: str  # the best checkpoint
    status: str  # ok | failed (a non-finite loss)
    # sha256 of the checkpoint the run started from (its parent's best.pt); None for a run from scratch,
    # and in results written before runs recorded it
    parent_checkpoint_sha256: str | None = None
    # training pairs the run trained on: what cleaning kept, less pairs too long for the model's positions;
    # None for a parent imported from a pretrained model, and in results written before runs recorded it
    train_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["spec"] = self.spec.to_dict()
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: Path) -> Result:
        """Parse `result.json`; a file of another shape is an error naming it and the missing field."""
        try:
            record = json.loads(text)
            record["spec"] = RunSpec.from_dict(record["spec"])
            record["tests"] = {name: TestScore(**test) for name, test in record["tests"].items()}
            record["valid_curve"] = [tuple(point) for point in record["valid_curve"]]
            return cls(**record)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise XattnError(f"{origin}: not a result file of this version of xattn-ray "
                             f"({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class RunFolder:
    """The files of one run, by what they are."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def analyses(self) -> Path:
        """Where analyses of this run keep their translations and done-markers."""
        return self.path / "analyses"

    def hypotheses(self, test_set: str) -> Path:
        return self.path / f"hypotheses.{test_set}.txt"

    def references(self, test_set: str) -> Path:
        return self.path / f"references.{test_set}.txt"

    def analysis_marker(self, task_id: str) -> Path:
        return self.analyses / f"{task_id}.done"

    @property
    def finished(self) -> bool:
        return self.result_file.is_file()

    @property
    def interrupted(self) -> bool:
        """Checkpoints but no result: an earlier invocation stopped while the run trained."""
        return self.last_checkpoint.is_file() and not self.finished

    def result(self) -> Result | None:
        """The run's `Result`, or None when it has not finished."""
        if not self.finished:
            return None
        return Result.from_json(self.result_file.read_text(), self.result_file)

    def write_result(self, result: Result) -> None:
        """Written last, atomically: a reader sees a finished run or none."""
        write_atomically(self.result_file, result.to_json().encode())
