"""The data one run trains and is scored on: a cleaned training slice, a validation set, test sets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.study.config import ChildConfig, Experiment, LanguagePair, ParentConfig
from xattn_ray.data.corpus import (CleaningReport, ParallelText, clean_training_pairs, read_parallel,
                                   resolve_corpus, slice_lines)

log = logging.getLogger(__name__)

Run = ParentConfig | ChildConfig


@dataclass(frozen=True)
class RunData:
    """Everything a run reads, already checked: training pairs, validation pairs, named test sets."""

    pair: LanguagePair
    train: ParallelText
    cleaning: CleaningReport
    valid: ParallelText
    tests: dict[str, ParallelText]


def run_name(run: Run) -> str:
    return run.name if isinstance(run, ParentConfig) else run.run_name


def experiment_runs(experiment: Experiment) -> list[Run]:
    """Parents first, then children: the order in which they can train."""
    return [*experiment.parents, *experiment.children]


def load_run_data(experiment: Experiment, run: Run, cache_dir: Path) -> RunData:
    """Read, check and clean the data of `run`; any problem is a DataError naming the file."""
    corpus_name = run.corpus if isinstance(run, ParentConfig) else experiment.child_corpus(run)
    corpus = resolve_corpus(corpus_name, experiment.corpora[corpus_name], experiment.base_dir, cache_dir)
    pair = run.language_pair
    train = read_parallel(*corpus.pair_files(corpus.train, pair, "train"))
    train, cleaning = clean_training_pairs(slice_lines(train, run.training_slice), experiment.filters)
    if cleaning.empty or cleaning.too_long or cleaning.bad_ratio:
        log.info("%s: %s: dropped %d empty, %d too long, %d bad length ratio; kept %d training pairs",
                 run_name(run), train.origin, cleaning.empty, cleaning.too_long, cleaning.bad_ratio,
                 cleaning.kept)
    valid = read_parallel(*corpus.pair_files(corpus.valid, pair, "valid"))
    test_names = run.test_sets if run.test_sets is not None else list(corpus.tests)
    tests = {name: read_parallel(*corpus.pair_files(corpus.tests[name], pair, f"test {name}"))
             for name in test_names}
    return RunData(pair=pair, train=train, cleaning=cleaning, valid=valid, tests=tests)
