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

import dataclasses
import itertools
import logging
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from xattn_ray.data.codeswitch import build_test_sets, build_training_set, encode_codeswitched, encode_monolingual
from xattn_ray.data.corpus import aligned_line_count, iter_lines, pair_fault, read_lines, resolve_corpus
from xattn_ray.data.options import FilterConfig
from xattn_ray.data.shards import encoded_shard
from xattn_ray.engine.batching import EncodedPairs
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import NEW_EMBED, count_parameters, freeze, select
from xattn_ray.engine.pretrained import load_pretrained, pretrained_files_sha256
from xattn_ray.engine.structured_dropout import MaskAlphas
from xattn_ray.engine.tokenizer import Tokenizer, train_tokenizer
from xattn_ray.engine.train import TrainConfig, TrainingData
from xattn_ray.engine.transfer import to_xlquery
from xattn_ray.errors import ConfigError, DataError
from xattn_ray.store import codeswitch_kind
from xattn_ray.study.config import CodeSwitchStudy, Experiment, corpus_identity
from xattn_ray.study.run_folder import Result
from xattn_ray.study.spec import RunSpec, StagePlan, model_options
from xattn_ray.study.summary import mean_std
from xattn_ray.study.training import RunContext, TestSet, score_imported, train_and_score

log = logging.getLogger(__name__)

Lines = dict[str, list[str]]  # language -> aligned lines of a multi-parallel split


@dataclass(frozen=True)
class StudyData:
    """A code-switching study's multi-parallel splits: every source language and the pivot, line-aligned."""

    base_train: Lines  # the base model's slice (`base_lines`)
    tune_train: Lines  # the fine-tuning slice (`lines`)
    valid: Lines
    tests: dict[str, Lines]  # corpus test set name -> lines (the first `test_lines`)
    train_digests: list[str]  # sha256 of each language's train file (study languages' order): shard keys


@dataclass(frozen=True)
class TrainSplit:
    """The train split's files, checked (aligned, UTF-8) by one streamed pass remembered in the cache."""

    files: list[Path]  # in the order of `languages`
    languages: list[str]  # the sources, then the pivot
    lines: int
    digests: list[str]

    def kept_rows(self, bounds: tuple[int, int] | None, key: str, filters: FilterConfig,
                  sources: int) -> Iterator[tuple[str, ...]]:
        """Lines [start, end) of every language in lockstep, streamed; a row is kept when each of the first
        `sources` languages' pair with the pivot (the last) passes the training filters."""
        start, end = bounds or (0, self.lines)
        if end > self.lines:
            raise DataError(f"codeswitch.{key}: [{start}, {end}) goes past the train split's {self.lines} lines")
        rows = itertools.islice(zip(*map(iter_lines, self.files)), start, end)
        return (row for row in rows if all(pair_fault(row[i], row[-1], filters) is None for i in range(sources)))


def source_language(study: CodeSwitchStudy) -> str:
    """The joint source tokenizer's name, e.g. `fr-de-cs` (it is trained on all of them)."""
    return "-".join(study.sources)


def study_pair(study: CodeSwitchStudy) -> str:
    """How the store names the study's runs' pair, e.g. `fr+de+cs-en`."""
    return f"{'+'.join(study.sources)}-{study.pivot}"


def train_split(experiment: Experiment, cache_dir: Path) -> TrainSplit:
    study = experiment.codeswitch
    corpus = resolve_corpus(study.corpus, experiment.corpora[study.corpus], experiment.base_dir, cache_dir)
    languages = [*study.sources, study.pivot]
    files = _split_files(corpus.train, languages, study.corpus, "train")
    try:
        lines, facts = aligned_line_count(files, cache_dir)
    except DataError as error:
        raise DataError(f"corpus {study.corpus!r}: split 'train' is not multi-parallel: {error}") from None
    return TrainSplit(files, languages, lines, [fact.sha256 for fact in facts])


def _split_files(files: dict[str, Path], languages: list[str], corpus: str, name: str) -> list[Path]:
    missing = [lang for lang in languages if lang not in files]
    if missing:
        raise DataError(f"corpus {corpus!r}: split {name!r} has no {missing[0]!r} file")
    return [files[lang] for lang in languages]


def load_study_data(experiment: Experiment, cache_dir: Path) -> StudyData:
    """Read the study's slices of every language (training lines failing the filters in any language go),
    its valid and test sets; only the slices are read into memory, not the whole train split."""
    study = experiment.codeswitch
    split = train_split(experiment, cache_dir)

    def train(bounds: tuple[int, int] | None, key: str) -> Lines:
        rows = list(split.kept_rows(bounds, key, experiment.filters, len(study.sources)))
        if len(rows) < 2:
            raise DataError(f"corpus {study.corpus!r}: fewer than 2 training lines pass the filters")
        return {lang: [row[i] for row in rows] for i, lang in enumerate(split.languages)}

    valid, tests = held_out(experiment, cache_dir)
    return StudyData(base_train=train(study.base_lines, "base_lines"), tune_train=train(study.lines, "lines"),
                     valid=valid, tests=tests, train_digests=split.digests)


def held_out(experiment: Experiment, cache_dir: Path) -> tuple[Lines, dict[str, Lines]]:
    """The valid split and the test sets (the first `test_lines` of each), read into memory: they are small."""
    study = experiment.codeswitch
    corpus = resolve_corpus(study.corpus, experiment.corpora[study.corpus], experiment.base_dir, cache_dir)
    languages = [*study.sources, study.pivot]

    def split(files: dict[str, Path], name: str) -> Lines:
        paths = _split_files(files, languages, study.corpus, name)
        lines = {lang: read_lines(path) for lang, path in zip(languages, paths)}
        counts = {len(text) for text in lines.values()}
        if len(counts) != 1:
            raise DataError(f"corpus {study.corpus!r}: split {name!r} is not multi-parallel (line counts "
                            f"{ {lang: len(text) for lang, text in lines.items()} })")
        return lines

    test_names = study.test_sets if study.test_sets is not None else list(corpus.tests)
    tests = {}
    for name in test_names:
        lines = split(corpus.tests[name], f"test {name}")
        tests[name] = {lang: text[:study.test_lines] for lang, text in lines.items()}
    return split(corpus.valid, "valid"), tests


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


def _run(context: RunContext) -> Result:
    """Train and score the base, pretraining or fine-tuning run (its parent must be finished)."""
    experiment, spec = context.experiment, context.spec
    study = experiment.codeswitch
    data = load_study_data(experiment, context.cache)
    if spec.stage == "base" and study.pretrained:
        return _import_base(context, data)
    torch.manual_seed(spec.seed)
    if context.parent_checkpoint is None:
        src_tok, tgt_tok = study_tokenizers(experiment, data, context.cache / "spm")
        model = Transformer(preset_config(experiment.model.preset, src_tok.vocab_size, tgt_tok.vocab_size,
                                          **experiment.model.overrides(), **model_options(spec)))
        parent_pair = None
    else:  # the base's tokenizers, as its checkpoint carries them (trained here or imported)
        parent = load_model(context.parent_checkpoint)
        src_tok, tgt_tok = parent.src_tokenizer, parent.tgt_tokenizer
        model = _prepared(parent.model, spec, experiment)
        parent_pair = study_pair(study)
    log.info("%s: %s", spec.stage, count_parameters(model).summary())
    max_positions = model.config.max_positions
    # The training examples from their shard (built by the first run that needs it), valid ones in memory.
    recipe = {"train": data.train_digests, "sources": study.sources, "pivot": study.pivot,
              "filters": dataclasses.asdict(experiment.filters)}
    if spec.stage == "base":
        recipe["base_lines"] = study.base_lines
        shard = encoded_shard(recipe, lambda: iter([_monolingual(data.base_train, study, src_tok, tgt_tok,
                                                                 max_positions)]),
                              src_tok, tgt_tok, max_positions, context.cache)
        training = TrainingData(shard, _monolingual(data.valid, study, src_tok, tgt_tok, max_positions),
                                src_tok, tgt_tok)
    else:
        recipe.update(lines=study.lines, options=dataclasses.asdict(study.options()))
        shard = encoded_shard(recipe, lambda: iter([_codeswitched(data.tune_train, study, src_tok, tgt_tok,
                                                                  max_positions)]),
                              src_tok, tgt_tok, max_positions, context.cache)
        training = TrainingData(shard, _codeswitched(data.valid, study, src_tok, tgt_tok, max_positions),
                                src_tok, tgt_tok)
    # Pretraining is not scored: on single sentences Q_cross is unused, so it translates them as the base does.
    tests = {} if spec.stage == "pretrain" else \
        test_sets(data, study, src_tok, tgt_tok, max_positions, codeswitched=spec.stage == "codeswitch")
    return train_and_score(context, study_pair(study), parent_pair, None, model, training, tests)


def _import_base(context: RunContext, data: StudyData) -> Result:
    """The pretrained base, imported and scored on the monolingual test sets (read as the study reads
    them: `BOS sentence EOS`, a start the pretrained model never saw, so it scores below its own format)."""
    study = context.experiment.codeswitch
    loaded, provenance = load_pretrained(study.pretrained, source_language(study), study.pivot)
    planned = pretrained_files_sha256(study.pretrained)
    if provenance.files_sha256 != planned:
        raise ConfigError(f"{study.pretrained}: the model's files changed while the study ran (sha256 "
                          f"{provenance.files_sha256[:12]}, planned {planned[:12]}); run it again")
    max_positions = loaded.model.config.max_positions
    valid = _monolingual(data.valid, study, loaded.src_tokenizer, loaded.tgt_tokenizer, max_positions)
    tests = test_sets(data, study, loaded.src_tokenizer, loaded.tgt_tokenizer, max_positions, codeswitched=False)
    return score_imported(context, study_pair(study), loaded, valid, tests)


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


def _base_spec(study: CodeSwitchStudy) -> RunSpec:
    return RunSpec("base", "base", study.seed, attention="standard")


class CodeSwitching:
    """The `StudyKind` of code-switching studies."""

    name = "codeswitch"

    def stages(self, experiment: Experiment) -> list[StagePlan]:
        study, grid = experiment.codeswitch, experiment.grid
        pretraining = []
        if study.pretrain is not None and "xlquery" in grid.attention:
            pretraining = [RunSpec("pretrain", "pretrain", study.seed, attention="xlquery", alphas=tuple(alphas))
                           for alphas in grid.alphas]
        names = sorted(grid.options)
        runs = []
        for policy in grid.policies:
            for attention in grid.attention:
                for alphas in grid.alphas if attention == "xlquery" else [None]:
                    for values in itertools.product(*(grid.options[name] for name in names)):
                        runs += [RunSpec("codeswitch", "cs", seed, policy, None, dict(zip(names, values)), attention,
                                         None if alphas is None else tuple(alphas))
                                 for seed in grid.seeds]
        return [StagePlan("parents", [_base_spec(study)]), StagePlan("pretrain", pretraining),
                StagePlan("children", runs)]

    def parent_spec(self, experiment: Experiment, spec: RunSpec) -> RunSpec | None:
        study = experiment.codeswitch
        if spec.stage == "base":
            return None
        if spec.stage == "codeswitch" and spec.attention == "xlquery" and study.pretrain is not None:
            return RunSpec("pretrain", "pretrain", study.seed, attention="xlquery", alphas=spec.alphas)
        return _base_spec(study)

    def base_train_config(self, experiment: Experiment, spec: RunSpec) -> TrainConfig:
        study = experiment.codeswitch
        return {"base": study.base_train or experiment.train, "pretrain": study.pretrain,
                "codeswitch": experiment.child_train or experiment.train}[spec.stage]

    def hash_payload(self, experiment: Experiment, spec: RunSpec) -> dict:
        study = experiment.codeswitch
        examples = {key: value for key, value in dataclasses.asdict(study).items()
                    if key not in ("base_train", "pretrain", "pretrained")}
        payload = {"codeswitch": examples, "attention": spec.attention, "alphas": spec.alphas,
                   "corpus": corpus_identity(experiment, study.corpus)}
        if study.pretrained:  # left out otherwise, so runs from before the option keep their hashes
            payload["pretrained"] = {"model": study.pretrained,
                                     "files_sha256": pretrained_files_sha256(study.pretrained)}
        if spec.stage == "codeswitch":
            payload["policy"] = {"name": spec.policy, **experiment.policy(spec.policy).identity()}
        return payload

    def row_fields(self, experiment: Experiment, spec: RunSpec) -> dict:
        """The pair is the study's (`fr+de+cs-en`); each test row's `test_set` names its languages."""
        study = experiment.codeswitch
        pair = study_pair(study)
        alphas = spec.alphas or (None, None)
        provenance = {"pretrained": study.pretrained, "pretrained_sha256": pretrained_files_sha256(
            study.pretrained)} if study.pretrained else {}
        return dict(parent_pair=None if spec.stage == "base" else pair, pair=pair, src_lang="+".join(study.sources),
                    tgt_lang=study.pivot, attention=spec.attention, mono_alpha=alphas[0], cross_alpha=alphas[1],
                    **provenance)

    def hparams(self, experiment: Experiment, spec: RunSpec) -> dict:
        return {"codeswitch": dataclasses.asdict(experiment.codeswitch)}

    def run(self, context: RunContext) -> Result:
        return _run(context)

    def check_data(self, experiment: Experiment, cache: Path) -> list[str]:
        # Streams the training slices to count what the filters keep: constant memory, whatever the corpus.
        study = experiment.codeswitch
        split = train_split(experiment, cache)
        base, tune = (sum(1 for _ in split.kept_rows(bounds, key, experiment.filters, len(study.sources)))
                      for bounds, key in ((study.base_lines, "base_lines"), (study.lines, "lines")))
        if min(base, tune) < 2:
            raise DataError(f"corpus {study.corpus!r}: fewer than 2 training lines pass the filters")
        valid, held_out_tests = held_out(experiment, cache)

        def lines(split: Lines) -> int:  # every language has as many
            return len(split[study.pivot])

        tests = ", ".join(f"{name} {lines(test)}" for name, test in held_out_tests.items())
        return [f"code-switching study {study_pair(study)} on corpus {study.corpus!r}: base model "
                f"{base} lines x {len(study.sources)} sources; fine-tuning {tune} "
                f"two-sentence examples ({study.code_switched_share:.0%} code-switched: "
                f"{', '.join('+'.join(p) for p in study.train_pairs)}, order {study.order}); valid {lines(valid)}",
                f"tests: {tests}; each as mono.<source>, seen.<pair> ({len(study.train_pairs)}), "
                f"unseen.<pair> ({', '.join('+'.join(p) for p in study.test_pairs) or 'none'})"]

    def plan_lines(self, experiment: Experiment) -> list[str]:
        grid = experiment.grid
        _, pretraining, runs = self.stages(experiment)
        return [f"plan: 1 base run, {len(pretraining.specs)} Q_cross pretraining run(s), then {len(runs.specs)} "
                f"fine-tuning runs = {len(grid.policies)} policies ({', '.join(grid.policies)}) x attention "
                f"({', '.join(grid.attention)}; xlquery x {len(grid.alphas)} alphas) x {len(grid.seeds)} seeds"]

    def summary_lines(self, results: list[Result], analyses: list[dict]) -> list[str]:
        """Mean BLEU over each kind's test sets, a row per policy and attention variant."""
        kinds = ("mono", "seen", "unseen")
        cells: dict[tuple[str, str], list[float]] = {}
        for result in results:
            spec = result.spec
            if not result.ok or spec.stage == "pretrain":
                continue
            label = "base" if spec.stage == "base" else f"{spec.policy} {spec.attention}" + (
                "" if spec.alphas is None else f" {spec.alphas[0]:g}/{spec.alphas[1]:g}")
            for kind in kinds:
                scores = [test.bleu for name, test in result.tests.items() if codeswitch_kind(name) == kind]
                if scores:
                    cells.setdefault((label, kind), []).append(statistics.mean(scores))
        labels = sorted({label for label, _ in cells}, key=lambda label: (label != "base", label))
        lines = ["BLEU, mean over each kind's test sets (mean ± std over seeds): single sentences (mono), "
                 "code-switched training pairs (seen), held-out pairs (unseen)",
                 f"{'run':<26} " + " ".join(f"{kind:>14}" for kind in kinds)]
        for label in labels:
            lines.append(f"{label:<26} " + " ".join(f"{mean_std(cells.get((label, kind), [])):>14}" for kind in kinds))
        return lines


CODESWITCH = CodeSwitching()
