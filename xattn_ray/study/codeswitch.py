"""The runs of a code-switching study (config.CodeSwitchStudy): base model, Q_cross pretraining, fine-tuning.

Foroutan et al. (2023) fine-tune a multilingual model on inputs that mix two languages and find that a
cross-lingual query (Q_cross) with structured attention dropout transfers better to language pairs
never mixed in training. Here the multilingual model is a translation model:

    base        sources (e.g. fr, de, cs) -> pivot (en), one joint source vocabulary, standard attention,
                trained from scratch on single sentences `BOS x EOS` (data.codeswitch.encode_monolingual);
    pretrain    (optional) the base turned xlquery (Q_cross := Q), only Q_cross trains, on code-switched
                examples with the run's training alphas (the authors pretrain Q_cross before fine-tuning);
    codeswitch  the grid's runs: the base (or its pretrained xlquery version) fine-tuned under a policy
                (body, bitfit, ...) on code-switched plus monolingual two-sentence examples.

Every run's test sets are named `<corpus test set>.<kind>.<languages>`:

    test_2016_flickr.mono.fr        single French sentences
    test_2016_flickr.seen.fr+de     French sentence then German sentence: a training pair
    test_2016_flickr.unseen.de+cs   a pair held out of training (an unseen combination)

The base is scored on the monolingual sets only, the pretraining run on none (on single sentences it
translates exactly as the base does: Q_cross is unused there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from xattn_ray.engine.batching import EncodedPairs
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.study.config import CodeSwitchStudy, Experiment, FilterConfig
from xattn_ray.data.codeswitch import (build_test_sets, build_training_set, encode_codeswitched,
                                       encode_monolingual)
from xattn_ray.data.corpus import pair_fault, read_lines, resolve_corpus
from xattn_ray.errors import DataError
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.study.training import ModelWrapper, RunOutcome, TestSet, train_and_score
from xattn_ray.engine.policies import NEW_EMBED, count_parameters, freeze, select
from xattn_ray.study.runs import RunSpec, model_options, parent_spec, run_directory
from xattn_ray.engine.structured_dropout import MaskAlphas
from xattn_ray.engine.tokenizer import Tokenizer, train_tokenizer
from xattn_ray.engine.train import Reporter, TrainingData
from xattn_ray.engine.transfer import to_xlquery

log = logging.getLogger(__name__)

Lines = dict[str, list[str]]  # language -> aligned lines of a multi-parallel split


@dataclass(frozen=True)
class StudyData:
    """A code-switching study's multi-parallel splits: every source language and the pivot, line-aligned."""

    base_train: Lines  # the base model's slice (`base_lines`)
    tune_train: Lines  # the fine-tuning slice (`lines`)
    valid: Lines
    tests: dict[str, Lines]  # corpus test set name -> lines (the first `test_lines`)


def source_language(study: CodeSwitchStudy) -> str:
    """The joint source tokenizer's name, e.g. `fr-de-cs` (it is trained on all of them)."""
    return "-".join(study.sources)


def study_pair(study: CodeSwitchStudy) -> str:
    """How the store names the study's runs' pair, e.g. `fr+de+cs-en`."""
    return f"{'+'.join(study.sources)}-{study.pivot}"


def load_study_data(experiment: Experiment, cache_dir: Path) -> StudyData:
    """Read every language of the study's corpus; training lines failing the filters in any language go."""
    study = experiment.codeswitch
    corpus = resolve_corpus(study.corpus, experiment.corpora[study.corpus], experiment.base_dir, cache_dir)
    languages = [*study.sources, study.pivot]

    def split(files: dict[str, Path], name: str) -> Lines:
        missing = [lang for lang in languages if lang not in files]
        if missing:
            raise DataError(f"corpus {study.corpus!r}: split {name!r} has no {missing[0]!r} file")
        lines = {lang: list(read_lines(files[lang])) for lang in languages}
        counts = {len(text) for text in lines.values()}
        if len(counts) != 1:
            raise DataError(f"corpus {study.corpus!r}: split {name!r} is not multi-parallel (line counts "
                            f"{ {lang: len(text) for lang, text in lines.items()} })")
        return lines

    train = split(corpus.train, "train")
    test_names = study.test_sets if study.test_sets is not None else list(corpus.tests)
    tests = {}
    for name in test_names:
        lines = split(corpus.tests[name], f"test {name}")
        tests[name] = {lang: text[:study.test_lines] for lang, text in lines.items()}
    return StudyData(base_train=_clean(_slice(train, study.base_lines, "base_lines"), study, experiment.filters),
                     tune_train=_clean(_slice(train, study.lines, "lines"), study, experiment.filters),
                     valid=split(corpus.valid, "valid"), tests=tests)


def _slice(lines: Lines, bounds: tuple[int, int] | None, key: str) -> Lines:
    total = len(next(iter(lines.values())))
    start, end = bounds or (0, total)
    if end > total:
        raise DataError(f"codeswitch.{key}: [{start}, {end}) goes past the train split's {total} lines")
    return {lang: text[start:end] for lang, text in lines.items()}


def _clean(lines: Lines, study: CodeSwitchStudy, filters: FilterConfig) -> Lines:
    """Keep line i only when every source's pair with the pivot passes the training filters."""
    pivot = lines[study.pivot]
    kept = [i for i in range(len(pivot))
            if all(pair_fault(lines[src][i], pivot[i], filters) is None for src in study.sources)]
    if len(kept) < 2:
        raise DataError(f"corpus {study.corpus!r}: fewer than 2 training lines pass the filters")
    return {lang: [text[i] for i in kept] for lang, text in lines.items()}


def study_tokenizers(experiment: Experiment, data: StudyData, cache_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    """The joint source tokenizer (all sources' base lines) and the pivot's, from the cache when trained."""
    study = experiment.codeswitch
    source_text = [line for src in study.sources for line in data.base_train[src]]
    src_tok = train_tokenizer(source_language(study), source_text, experiment.tokenizer, cache_dir)
    tgt_tok = train_tokenizer(study.pivot, data.base_train[study.pivot], experiment.tokenizer, cache_dir)
    return src_tok, tgt_tok


def _monolingual(lines: Lines, study: CodeSwitchStudy, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 max_positions: int) -> EncodedPairs:
    """Every source's sentences with their pivot translations, as one-segment examples."""
    sources = [line for src in study.sources for line in lines[src]]
    targets = [line for _ in study.sources for line in lines[study.pivot]]
    return encode_monolingual(sources, targets, src_tok, tgt_tok, max_positions)


def _codeswitched(lines: Lines, study: CodeSwitchStudy, src_tok: Tokenizer, tgt_tok: Tokenizer,
                  max_positions: int) -> EncodedPairs:
    """The two-sentence training mix of `lines` (code-switched and monolingual examples)."""
    examples = build_training_set(lines, study.pivot, study.options())
    return encode_codeswitched(examples, src_tok, tgt_tok, max_positions)


def test_sets(data: StudyData, study: CodeSwitchStudy, src_tok: Tokenizer, tgt_tok: Tokenizer, max_positions: int,
              codeswitched: bool) -> dict[str, TestSet]:
    """Monolingual test sets of every source, and (`codeswitched`) the seen and unseen pairs' sets."""
    tests = {}
    for name, lines in data.tests.items():
        for src in study.sources:
            encoded = encode_monolingual(lines[src], lines[study.pivot], src_tok, tgt_tok, max_positions)
            tests[f"{name}.mono.{src}"] = _test_set(encoded, lines[study.pivot], f"{name}.mono.{src}", tgt_tok)
        if not codeswitched:
            continue
        for kind, sets in build_test_sets(lines, study.pivot, study.options()).items():
            for (first, second), examples in sets.items():
                label = f"{name}.{kind}.{first}+{second}"
                encoded = encode_codeswitched(examples, src_tok, tgt_tok, max_positions)
                tests[label] = _test_set(encoded, [example.tgt for example in examples], label, tgt_tok)
    return tests


def _test_set(encoded: EncodedPairs, references: Sequence[str], label: str, tgt_tok: Tokenizer) -> TestSet:
    if encoded.dropped_too_long:  # a test set is scored whole or not at all
        raise DataError(f"test set {label}: {encoded.dropped_too_long} examples exceed the model's max_positions; "
                        f"raise model.max_positions or lower codeswitch.test_lines")
    return TestSet(encoded.src, encoded.segments, list(references))


def run_codeswitch(experiment: Experiment, spec: RunSpec, storage: Path, reporter: Reporter | None = None,
                   resume: bool = False, wrap_model: ModelWrapper | None = None) -> RunOutcome:
    """Train and score the base, pretraining or fine-tuning run `spec` names (its parent must be finished)."""
    study = experiment.codeswitch
    cache = storage / "cache"
    data = load_study_data(experiment, cache)
    src_tok, tgt_tok = study_tokenizers(experiment, data, cache / "spm")
    torch.manual_seed(spec.seed)
    if spec.stage == "base":
        model = Transformer(preset_config(experiment.model.preset, src_tok.vocab_size, tgt_tok.vocab_size,
                                          **experiment.model.overrides(), **model_options(spec)))
        parent_pair = None
    else:
        parent = load_model(run_directory(storage, experiment, parent_spec(experiment, spec)) / "best.pt").model
        model = _prepared(parent, spec, experiment)
        parent_pair = study_pair(study)
    log.info("%s: %s", spec.stage, count_parameters(model).summary())
    max_positions = model.config.max_positions
    if spec.stage == "base":
        training = TrainingData(_monolingual(data.base_train, study, src_tok, tgt_tok, max_positions),
                                _monolingual(data.valid, study, src_tok, tgt_tok, max_positions), src_tok, tgt_tok)
    else:
        training = TrainingData(_codeswitched(data.tune_train, study, src_tok, tgt_tok, max_positions),
                                _codeswitched(data.valid, study, src_tok, tgt_tok, max_positions), src_tok, tgt_tok)
    # Pretraining is not scored: on single sentences Q_cross is unused, so it translates them as the base does.
    tests = {} if spec.stage == "pretrain" else \
        test_sets(data, study, src_tok, tgt_tok, max_positions, codeswitched=spec.stage == "codeswitch")
    return train_and_score(experiment, spec, study_pair(study), parent_pair, None, model, training, tests, storage,
                           reporter, resume, wrap_model)


def _prepared(parent: Transformer, spec: RunSpec, experiment: Experiment) -> Transformer:
    """The model a pretraining or fine-tuning run trains: its attention variant, alphas and frozen groups."""
    model = parent
    if spec.attention == "xlquery" and parent.config.attention == "standard":
        model = to_xlquery(parent, MaskAlphas(*spec.alphas))
    names = [name for name, _ in model.named_parameters()]
    if spec.stage == "pretrain":
        trainable = select(names, ["xlquery"], None, "pretrain")
    else:
        # No language is new here: a policy's groups without `new_embed` (body: the encoder and decoder).
        policy = experiment.policy(spec.policy)
        trainable = select(names, [entry for entry in policy.train if entry != NEW_EMBED], None, spec.policy)
    freeze(model, trainable)
    if model_options(spec):
        model.set_dropout(**model_options(spec))
    return model
