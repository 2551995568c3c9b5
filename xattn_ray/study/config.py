"""The experiment file: a typed, strict description of one study.

An experiment names its corpora, the tokenizer options, the parent runs (e.g. Fr-En) and the child
runs that transfer from them (e.g. De-En, new source). `load_experiment(path)` parses and checks the
whole file, including references between sections (a child's parent, a run's corpus and test sets),
and raises a one-line `ConfigError` naming the file, line and key at fault.

Relative data paths are relative to the experiment file; `${NAME}` and `${NAME:-default}` take values
from the environment, so one file serves a laptop and a cluster.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xattn_ray.data.options import (CorpusConfig, FilterConfig, LanguagePair, SplitFiles, TrainingSlice, changed_side,
                                    check_language, stitched_pair)
from xattn_ray.data.sacrebleu_sets import SacrebleuTestSet
from xattn_ray.engine.evaluate import ScoringError, bleu_metric
from xattn_ray.engine.model import PRESETS, preset_config
from xattn_ray.engine.pretrained import PRETRAINED_ARCHITECTURE, is_hub_id
from xattn_ray.engine.policies import POLICIES, Policy, PolicyError, Side, embedding_group, select
from xattn_ray.engine.tokenizer import TokenizerOptions
from xattn_ray.engine.train import TrainConfig
from xattn_ray.errors import ConfigError, XattnError
from xattn_ray.schema import Invalid, YamlDocument, build, check_file_name, expand_environment, load_yaml
from xattn_ray.study.sweep import (TUNABLE_MODEL_FIELDS, TUNABLE_TRAIN_FIELDS, GridConfig, ResourcesConfig, SearchConfig,
                                   check_seed)
from xattn_ray.study.tracking import TrackingConfig


class _RunFields:
    """What parent and child runs share: a language pair and a slice of the training split."""

    pair: str
    lines: tuple[int, int] | None
    size: int | None

    def __post_init__(self) -> None:
        LanguagePair.parse(self.pair)
        TrainingSlice(self.lines, self.size)
        if self.name is not None:
            check_file_name(self.name, "name")  # run ids, and so run folders, start with it

    @property
    def language_pair(self) -> LanguagePair:
        return LanguagePair.parse(self.pair)

    @property
    def training_slice(self) -> TrainingSlice:
        return TrainingSlice(self.lines, self.size)


@dataclass(frozen=True)
class ParentConfig(_RunFields):
    """A parent run: a model trained from scratch on one pair, or imported from a pretrained model
    (`pretrained`: a Marian model's folder or hub id, scored on the corpus's test sets, never trained)."""

    name: str  # how children refer to it
    pair: str  # e.g. "fr-en"
    corpus: str  # a key of `corpora`
    lines: tuple[int, int] | None = None
    size: int | None = None
    test_sets: list[str] | None = None  # names from the corpus's `test`; None: all
    seed: int = 1  # children of every grid seed start from this parent
    train: TrainConfig | None = None  # this parent's own training options; None: the experiment's `train`
    pretrained: str | None = None  # a folder (relative to the experiment file) or a Hugging Face hub id

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seed(self.seed, "seed")
        if self.pretrained is not None:
            if not self.pretrained.strip():
                raise Invalid("pretrained", "names a model folder or hub id; it is empty")
            for key in ("lines", "size", "train"):
                if getattr(self, key) is not None:
                    raise Invalid(key, "a pretrained parent is imported, not trained: it takes no " + key)


@dataclass(frozen=True)
class ChildConfig(_RunFields):
    """A child run: the parent's model moved to a pair with one new language (source or target)."""

    pair: str  # e.g. "de-en": new source when the parent is fr-en
    parent: str  # a parent's `name`
    corpus: str | None = None  # default: the parent's corpus
    lines: tuple[int, int] | None = None
    size: int | None = None
    test_sets: list[str] | None = None
    name: str | None = None  # default: the pair

    @property
    def run_name(self) -> str:
        return self.name or self.pair


@dataclass(frozen=True)
class ModelSection:
    """A model preset and the fields that override it (None keeps the preset's value)."""

    preset: str = "small"  # base | small | tiny (model.PRESETS)
    d_model: int | None = None
    ffn_dim: int | None = None
    heads: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    max_positions: int | None = None
    dropout: float | None = None
    attention_dropout: float | None = None
    activation_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise Invalid("preset", f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        try:  # the model's own checks (heads divide d_model, dropout in [0, 1), ...); vocabularies come later
            preset_config(self.preset, 1, 1, **self.overrides())
        except Invalid as err:
            # Blame the key the file sets; a preset's own value is not the user's to fix.
            raise Invalid(err.key if err.key in self.overrides() else None, err.why) from None

    def overrides(self) -> dict[str, int | float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "preset" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class EvaluationConfig:
    """How test sets are decoded (the paper: beam 5, length penalty 1.2)."""

    beam: int = 5
    length_penalty: float = 1.2
    max_len_a: float = 1.2  # hypotheses stop at max_len_a * source length + max_len_b tokens
    max_len_b: int = 10
    max_tokens: int = 4096  # source tokens per decoding batch

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise Invalid("beam", "must be at least 1")
        if self.max_tokens < 1:
            raise Invalid("max_tokens", "must be at least 1")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise Invalid("max_len_a" if self.max_len_a < 0 else "max_len_b", "must not be negative")
        if self.max_len_a == 0 and self.max_len_b < 1:
            raise Invalid("max_len_b", "with max_len_a 0, hypotheses need max_len_b of at least 1 token")


@dataclass(frozen=True)
class LexiconAnalysis:
    """Bilingual lexicon induction: each listed child's new embeddings against the parent's replaced ones."""

    children: list[str]  # child run names
    dictionaries: list[str] = field(default_factory=list)  # folders of MUSE-format `a-b.txt` files
    # (synthetic corpora bring their generator's gold dictionaries; these folders are searched first)


@dataclass(frozen=True)
class ZeroShotAnalysis:
    """A stitched model: the body of one child with the new embeddings of another child of the same parent.

    E.g. body `fr-cs` (new target) + embeddings `de-en` (new source) = a De-Cs model, never trained on
    De-Cs, scored on the corpus's De-Cs test sets beside scratch `baselines` trained on a little De-Cs.
    """

    body: str  # child run whose body and own new side are kept
    embeddings: str  # child run whose new side's embedding group is plugged in
    corpus: str | None = None  # where the zero-shot pair's test sets are; None: the body child's corpus
    test_sets: list[str] | None = None
    baselines: list[str] = field(default_factory=list)  # parent runs (from scratch) on the zero-shot pair


@dataclass(frozen=True)
class AnalysesConfig:
    """What is measured after the children train (all on the children's best checkpoints)."""

    forgetting: bool = False  # the parent's test sets after plugging the parent's embeddings back
    lexicon: LexiconAnalysis | None = None
    zeroshot: list[ZeroShotAnalysis] = field(default_factory=list)
    policies: list[str] | None = None  # policies analysed; None: the grid's, except scratch


@dataclass(frozen=True)
class CodeSwitchStudy:
    """A code-switching study (Foroutan et al. 2023, for translation), instead of parents and children.

    Three kinds of run, all from one multi-parallel corpus:
      base:       one model translating every language of `sources` into `pivot` (one joint source
                  vocabulary), trained from scratch on single sentences of `base_lines`;
      pretrain:   (optional) the base turned xlquery, training only Q_cross on code-switched examples;
      codeswitch: the grid's fine-tuning runs on two-sentence examples of `lines` (code-switched pairs
                  `train_pairs` plus monolingual ones), scored on single sentences of each source
                  language, on the training pairs' code-switched test sets (seen) and on `test_pairs'
                  (unseen combinations).
    """

    corpus: str  # a key of `corpora`: a multi-parallel corpus with every language named here
    sources: list[str]  # the base model's source languages
    pivot: str  # the target language of every example
    train_pairs: list[tuple[str, str]]  # code-switched training pairs (L1 sentence first)
    test_pairs: list[tuple[str, str]] = field(default_factory=list)  # held out: unseen combinations
    code_switched_share: float = 0.5  # of fine-tuning examples; the rest are monolingual (L1 + L1)
    order: Literal["as_given", "both", "random"] = "both"  # the languages' order in a training example
    base_lines: tuple[int, int] | None = None  # [start, end) of the train split for the base model
    lines: tuple[int, int] | None = None  # [start, end) of the train split for code-switched fine-tuning
    test_sets: list[str] | None = None  # the corpus's test sets to build test examples from; None: all
    test_lines: int | None = None  # the first N lines of each test set (decoding is the slow part)
    seed: int = 1  # the base model's seed and the examples' pairing
    base_train: TrainConfig | None = None  # None: the experiment's `train`
    pretrain: TrainConfig | None = None  # Q_cross pretraining; None: Q_cross starts as a copy of Q
    # The base imported from a pretrained Marian model (a folder or hub id) instead of trained: it must
    # translate every source into the pivot; its joint vocabulary serves all of them.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.pretrained is not None and self.base_train is not None:
            raise Invalid("base_train", "a pretrained base is imported, not trained: it takes no base_train")
        for i, code in enumerate(self.sources):
            check_language(code, ("sources", i))
        check_language(self.pivot, "pivot")
        check_seed(self.seed, "seed")
        if len(self.sources) < 2 or len(set(self.sources)) != len(self.sources):
            raise Invalid("sources", "list at least two different source languages")
        if self.pivot in self.sources:
            raise Invalid("pivot", f"{self.pivot!r} is also a source language")
        for key in ("train_pairs", "test_pairs"):
            for i, pair in enumerate(getattr(self, key)):
                for lang in pair:
                    if lang not in self.sources:
                        raise Invalid(key, f"entry {i}: {lang!r} is not one of the sources ({', '.join(self.sources)})")
        for key in ("base_lines", "lines"):
            if getattr(self, key) is not None:
                try:
                    TrainingSlice(getattr(self, key))
                except Invalid as err:
                    raise Invalid(key, err.why) from None
        if self.test_lines is not None and self.test_lines < 2:
            raise Invalid("test_lines", "two-sentence examples need at least 2 lines")
        self.options()  # the builder's own checks: overlapping pairs, the share, the order

    def options(self):
        """The code-switched example builder's options (data/codeswitch.py)."""
        from xattn_ray.data.codeswitch import CodeSwitchOptions

        return CodeSwitchOptions(train_pairs=[tuple(p) for p in self.train_pairs],
                                 test_pairs=[tuple(p) for p in self.test_pairs],
                                 code_switched_share=self.code_switched_share, order=self.order, seed=self.seed)


@dataclass(frozen=True)
class Experiment:
    """One study: corpora, tokenization, parents and the children that transfer from them."""

    name: str
    corpora: dict[str, CorpusConfig]
    parents: list[ParentConfig] = field(default_factory=list)
    children: list[ChildConfig] = field(default_factory=list)
    codeswitch: CodeSwitchStudy | None = None  # a code-switching study instead of parents and children
    tokenizer: TokenizerOptions = field(default_factory=TokenizerOptions)
    filters: FilterConfig = field(default_factory=FilterConfig)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)  # parents' training options
    child_train: TrainConfig | None = None  # children's; None: the same as `train`
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    policies: dict[str, Policy] = field(default_factory=dict)  # the user's own, beside POLICIES
    grid: GridConfig = field(default_factory=GridConfig)
    search: SearchConfig | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    tracking: TrackingConfig | None = None  # an experiment tracker for the trials (no part of any run's hash)
    # Where the file was read from: relative data paths resolve against it.
    base_dir: Path = field(default=Path("."), init=False, compare=False)

    def __post_init__(self) -> None:
        check_file_name(self.name, "name")  # the study's folder under --storage
        for name in self.policies:
            check_file_name(name, ("policies", name))  # part of run ids

    def parent(self, name: str) -> ParentConfig:
        return next(p for p in self.parents if p.name == name)

    def child_corpus(self, child: ChildConfig) -> str:
        return child.corpus or self.parent(child.parent).corpus

    def policy(self, name: str) -> Policy:
        """A built-in or user-defined policy by name."""
        table = {**POLICIES, **self.policies}
        if name not in table:
            raise ConfigError(f"unknown policy {name!r} (known: {', '.join(table)})")
        return table[name]

    def train_config(self, run: ParentConfig | ChildConfig) -> TrainConfig:
        if isinstance(run, ChildConfig):
            return self.child_train or self.train
        return run.train or self.train


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every mistake is a one-line ConfigError."""
    path = Path(path)
    document = load_yaml(path)
    experiment = build(Experiment, document)
    _check_references(experiment, document)
    experiment = _with_environment_expanded(experiment, document, path.resolve().parent)
    object.__setattr__(experiment, "base_dir", path.resolve().parent)
    models = [(("parents", i, "pretrained"), parent.pretrained) for i, parent in enumerate(experiment.parents)]
    if experiment.codeswitch is not None:
        models.append((("codeswitch", "pretrained"), experiment.codeswitch.pretrained))
    for key_path, model in models:
        if model and not is_hub_id(model) and not Path(model).is_dir():
            raise_at(document, key_path, f"{model}: no such folder (a pretrained model is a folder or a hub id, "
                                         f"owner/name)")
    return experiment


def _check_references(experiment: Experiment, doc: YamlDocument) -> None:
    """Names that must refer to something defined elsewhere in the file."""
    for name in experiment.policies:
        if name in POLICIES:
            raise_at(doc, ("policies", name), f"{name!r} is a built-in policy; give yours another name")
    if experiment.codeswitch is not None:
        _check_codeswitch(experiment, doc)
    elif not experiment.parents:
        raise_at(doc, ("parents",), "at least one parent run is required (or a `codeswitch` study)")
    elif experiment.grid.attention != ["standard"] or ("grid", "alphas") in doc.lines:
        raise_at(doc, ("grid", "attention"), "attention variants and alphas are axes of a `codeswitch` study")
    for i, name in enumerate(experiment.grid.policies):
        if name not in POLICIES and name not in experiment.policies:
            known = ", ".join([*POLICIES, *experiment.policies])
            raise_at(doc, ("grid", "policies", i), f"unknown policy {name!r} (known: {known})")
    child_train = experiment.child_train or experiment.train
    for name, values in experiment.grid.options.items():
        for i, value in enumerate(values):
            _check_option(doc, ("grid", "options", name, i), child_train, name, value)
    if experiment.search is not None:
        _check_search_space(experiment.search, child_train, doc)
    run_names: dict[str, tuple] = {}
    runs = [(("parents", i), p.name, p.corpus, p) for i, p in enumerate(experiment.parents)]
    for i, child in enumerate(experiment.children):
        if child.parent not in {p.name for p in experiment.parents}:
            known = ", ".join(p.name for p in experiment.parents)
            raise_at(doc, ("children", i, "parent"), f"no parent named {child.parent!r} (parents: {known})")
        try:
            changed_side(experiment.parent(child.parent).language_pair, child.language_pair)
        except XattnError as err:
            raise_at(doc, ("children", i, "pair"), str(err))
        runs.append((("children", i), child.run_name, experiment.child_corpus(child), child))
    for key_path, name, corpus_name, run in runs:
        if name in run_names:
            raise_at(doc, key_path, f"run name {name!r} is used twice (give one of them a `name`)")
        run_names[name] = key_path
        if corpus_name not in experiment.corpora:
            known = ", ".join(experiment.corpora) or "none"
            raise_at(doc, key_path + ("corpus",), f"no corpus named {corpus_name!r} (corpora: {known})")
        corpus = experiment.corpora[corpus_name]
        if corpus.synthetic is None:
            languages = corpus.declared_languages()
            for language in (run.language_pair.src, run.language_pair.tgt):
                if language not in languages:
                    raise_at(doc, key_path + ("pair",),
                             f"corpus {corpus_name!r} has no language {language!r} "
                             f"(it has: {', '.join(sorted(languages))})")
            for test_name in run.test_sets or []:
                if test_name not in corpus.test:
                    known = ", ".join(corpus.test) or "none"
                    raise_at(doc, key_path + ("test_sets",),
                             f"corpus {corpus_name!r} has no test set {test_name!r} (it has: {known})")
            _check_sacrebleu_pair(doc, corpus_name, corpus, run.test_sets, run.language_pair, f"run {name!r}")
        _check_bleu_tokenizer(doc, key_path + ("pair",), run.language_pair.tgt)
    _check_analyses(experiment, doc)  # after the runs: the analyses name them and their corpora
    _check_policies(experiment, doc)


def _check_codeswitch(experiment: Experiment, doc: YamlDocument) -> None:
    """A code-switching study stands alone, names a corpus with its languages, and a grid it can run."""
    study = experiment.codeswitch
    for key in ("parents", "children"):
        if getattr(experiment, key):
            raise_at(doc, (key,), "an experiment is a transfer study (parents, children) or a `codeswitch` "
                                  "study, not both: put them in two files")
    analyses = experiment.analyses
    if analyses.forgetting or analyses.lexicon is not None or analyses.zeroshot:
        raise_at(doc, ("analyses",), "the transfer analyses do not apply to a `codeswitch` study")
    if experiment.search is not None:
        raise_at(doc, ("search",), "a `codeswitch` study has no search yet: list values as grid axes instead")
    if study.corpus not in experiment.corpora:
        raise_at(doc, ("codeswitch", "corpus"), f"no corpus named {study.corpus!r} "
                                                f"(corpora: {', '.join(experiment.corpora) or 'none'})")
    corpus = experiment.corpora[study.corpus]
    if corpus.synthetic is None:
        languages = corpus.declared_languages()
        for lang in [*study.sources, study.pivot]:
            if lang not in languages:
                raise_at(doc, ("codeswitch", "sources" if lang != study.pivot else "pivot"),
                         f"corpus {study.corpus!r} has no language {lang!r} (it has: {', '.join(sorted(languages))})")
        for i, name in enumerate(study.test_sets or []):
            if name not in corpus.test:
                raise_at(doc, ("codeswitch", "test_sets", i), f"corpus {study.corpus!r} has no test set {name!r} "
                                                              f"(it has: {', '.join(corpus.test)})")
        for name in study.test_sets if study.test_sets is not None else corpus.test:
            if isinstance(corpus.test[name], SacrebleuTestSet):
                raise_at(doc, ("corpora", study.corpus, "test", name, "sacrebleu"),
                         "a code-switching study needs multi-parallel test sets (every source language and the "
                         "pivot, line by line); a sacreBLEU test set is one pair: give files instead")
    _check_bleu_tokenizer(doc, ("codeswitch", "pivot"), study.pivot)
    if "xlquery" not in experiment.grid.attention and study.pretrain is not None:
        raise_at(doc, ("codeswitch", "pretrain"), "Q_cross pretraining needs `xlquery` in grid.attention")
    for i, name in enumerate(experiment.grid.policies):
        policy = experiment.policy(name)
        if policy.init != "parent" or not [entry for entry in policy.train if entry != "new_embed"]:
            raise_at(doc, ("grid", "policies", i), f"policy {name!r} cannot fine-tune a base model on code-switched "
                                                   f"data (it must start from the base and train more than new "
                                                   f"embeddings, e.g. body or bitfit)")


def _check_analyses(experiment: Experiment, doc: YamlDocument) -> None:
    """Analyses name children, parents and corpora that exist, and stitch children of one parent."""
    children = {child.run_name: child for child in experiment.children}
    parents = {parent.name: parent for parent in experiment.parents}
    analyses = experiment.analyses
    for i, name in enumerate(analyses.policies or []):
        if name not in experiment.grid.policies:
            raise_at(doc, ("analyses", "policies", i), f"policy {name!r} is not in grid.policies")
    if analyses.lexicon is not None:
        for i, name in enumerate(analyses.lexicon.children):
            if name not in children:
                raise_at(doc, ("analyses", "lexicon", "children", i),
                         f"no child named {name!r} (children: {', '.join(children) or 'none'})")
    for i, stitch in enumerate(analyses.zeroshot):
        at = ("analyses", "zeroshot", i)
        for key in ("body", "embeddings"):
            if getattr(stitch, key) not in children:
                raise_at(doc, at + (key,), f"no child named {getattr(stitch, key)!r} "
                                           f"(children: {', '.join(children) or 'none'})")
        body, donor = children[stitch.body], children[stitch.embeddings]
        if body.parent != donor.parent:
            raise_at(doc, at, f"{stitch.body!r} and {stitch.embeddings!r} come from different parents "
                              f"({body.parent}, {donor.parent}); stitching needs one parent's children")
        corpus = stitch.corpus or experiment.child_corpus(body)
        if corpus not in experiment.corpora:
            raise_at(doc, at + ("corpus",), f"no corpus named {corpus!r}")
        pair = stitched_pair(body.language_pair, donor.language_pair,
                             changed_side(experiment.parent(donor.parent).language_pair, donor.language_pair))
        _check_sacrebleu_pair(doc, corpus, experiment.corpora[corpus], stitch.test_sets, pair,
                              f"zero-shot {stitch.body} + {stitch.embeddings}")
        for j, name in enumerate(stitch.baselines):
            if name not in parents:
                raise_at(doc, at + ("baselines", j), f"no parent run named {name!r} (a baseline is a parent "
                                                     f"run trained from scratch on the zero-shot pair)")


def _check_sacrebleu_pair(doc: YamlDocument, corpus_name: str, corpus: CorpusConfig, test_sets: list[str] | None,
                          pair: LanguagePair, user: str) -> None:
    """Each sacreBLEU test set among `test_sets` (None: all the corpus's) has the pair `user` translates."""
    for name in test_sets if test_sets is not None else corpus.test:
        test = corpus.test.get(name)
        if isinstance(test, SacrebleuTestSet) and (why := test.missing_pair(str(pair))):
            raise_at(doc, ("corpora", corpus_name, "test", name, "sacrebleu"), f"{user} translates {pair}: {why}")


def _check_bleu_tokenizer(doc: YamlDocument, key_path: tuple, language: str) -> None:
    """sacreBLEU can score translations into `language` here (Japanese and Korean need MeCab's packages)."""
    try:
        bleu_metric(language)
    except ScoringError as err:
        raise_at(doc, key_path, str(err))


def _check_option(doc: YamlDocument, key_path: tuple, train: TrainConfig, name: str, value: float) -> None:
    """A grid value must make a valid training config (e.g. no negative learning rate)."""
    if name in TUNABLE_MODEL_FIELDS:
        if not 0 <= value < 1:
            raise_at(doc, key_path, f"{name} must be in [0, 1), got {value!r}")
        return
    if isinstance(getattr(train, name), int) and not float(value).is_integer():
        raise_at(doc, key_path, f"{name} takes whole numbers, got {value!r}")
    try:
        apply_options(train, {name: value})
    except Invalid as err:
        raise_at(doc, key_path, err.why)


def _check_search_space(search: SearchConfig, train: TrainConfig, doc: YamlDocument) -> None:
    """Every value a search domain can give must make a valid config: its bounds and choices are checked
    like grid values (no negative learning rate or warmup). Within the bounds every value is valid, as
    each option's valid range is an interval."""
    for name, domain in search.space.items():
        at = ("search", "space", name)
        if domain.choice is not None:
            for i, value in enumerate(domain.choice):
                _check_option(doc, at + ("choice", i), train, name, value)
            if len(set(domain.choice)) != len(domain.choice):
                raise_at(doc, at + ("choice",), "lists a value twice")
        elif domain.randint is not None:
            low, high = domain.randint  # [low, high)
            for i, value in enumerate((low, high - 1)):
                _check_option(doc, at + ("randint", i), train, name, value)
        else:
            key = "uniform" if domain.uniform is not None else "loguniform"
            for i, value in enumerate(domain.uniform or domain.loguniform):
                if isinstance(getattr(train, name, None), int):
                    value = int(value)  # what apply_options makes of a drawn value
                _check_option(doc, at + (key, i), train, name, value)


def _check_policies(experiment: Experiment, doc: YamlDocument) -> None:
    """The policies apply to the model they will meet: every pattern of a user's policy matches a
    parameter, and no policy touches a child's unchanged side (its embeddings stay frozen and, on the
    target side, tied to the output layer), so a policy that trains or re-initialises only that side is
    an error here rather than a crash, or silent damage, inside a trial after the parent trained."""
    import torch

    from xattn_ray.engine.model import Transformer

    def where(name: str, key: str, j: int) -> tuple:
        if name in experiment.policies:
            return ("policies", name, key, j)
        return ("grid", "policies", experiment.grid.policies.index(name))

    attentions = experiment.grid.attention if experiment.codeswitch is not None else ["standard"]
    # A pretrained parent's children have its architecture's names (no embedding norm or final norms,
    # a logits bias): policies are checked against those too.
    architectures = [(attention, {}) for attention in attentions] + (
        [(attention, PRETRAINED_ARCHITECTURE) for attention in attentions]
        if any(p.pretrained for p in experiment.parents) or (experiment.codeswitch and experiment.codeswitch.pretrained)
        else [])
    for attention, options in architectures:
        with torch.device("meta"):  # names only: no weights are allocated
            model = Transformer(preset_config(experiment.model.preset, 8, 8, **{
                **experiment.model.overrides(), **options}, attention=attention))
        names = [name for name, _ in model.named_parameters()]
        for name, policy in experiment.policies.items():  # each pattern names something, used or not
            for key in ("train", "reinit"):
                for j, entry in enumerate(getattr(policy, key)):
                    try:
                        select(names, [entry], "source", name)
                    except PolicyError as err:
                        raise_at(doc, ("policies", name, key, j), f"{err} in a {attention} model")
    if experiment.codeswitch is not None:
        return  # no side changes in a code-switching study: nothing is left frozen by transfer
    for i, child in enumerate(experiment.children):
        side = changed_side(experiment.parent(child.parent).language_pair, child.language_pair)
        unchanged: Side = "target" if side == "source" else "source"
        frozen = set(select(names, [embedding_group(unchanged)], None, ""))
        for name in experiment.grid.policies:
            policy = experiment.policy(name)
            if policy.init != "parent":
                continue  # a random start trains everything; nothing is transferred to protect
            what = f"policy {name!r} on child {child.run_name!r} (new {side})"
            for j, entry in enumerate(policy.train):
                if set(select(names, [entry], side, name)) <= frozen:
                    raise_at(doc, where(name, "train", j),
                             f"{what}: {entry!r} selects only the unchanged {unchanged} embeddings, which "
                             f"stay frozen under transfer")
            for j, entry in enumerate(policy.reinit):
                if set(select(names, [entry], side, name)) & frozen:
                    raise_at(doc, where(name, "reinit", j),
                             f"{what}: {entry!r} would re-initialise the unchanged {unchanged} embeddings, "
                             f"which stay frozen under transfer")


def apply_options(train: TrainConfig, options: dict[str, float]) -> TrainConfig:
    """`train` with the training fields among `options` replaced (model fields are left to the model)."""
    changes = {}
    for name, value in options.items():
        if name in TUNABLE_TRAIN_FIELDS:
            changes[name] = type(getattr(train, name))(value)
    return dataclasses.replace(train, **changes)




def _with_environment_expanded(experiment: Experiment, doc: YamlDocument, base_dir: Path) -> Experiment:
    """Expand `${NAME}` in every data path (corpora, dictionaries, pretrained models), naming the key when
    one is missing; a pretrained model's folder becomes absolute (`base_dir` is the file's folder)."""

    def expand(files: SplitFiles | SacrebleuTestSet | None, key_path: tuple) -> SplitFiles | SacrebleuTestSet | None:
        if files is None or isinstance(files, SacrebleuTestSet):  # a sacreBLEU test set names no path
            return files
        if isinstance(files, str):
            return expand_environment(files, doc.where(key_path))
        return {lang: expand_environment(p, doc.where(key_path + (lang,))) for lang, p in files.items()}

    corpora = {}
    for name, corpus in experiment.corpora.items():
        at = ("corpora", name)
        corpora[name] = dataclasses.replace(
            corpus,
            train=expand(corpus.train, at + ("train",)),
            valid=expand(corpus.valid, at + ("valid",)),
            test={t: expand(f, at + ("test", t)) for t, f in corpus.test.items()},
        )
    parents = [dataclasses.replace(parent, pretrained=_model_location(
        expand_environment(parent.pretrained, doc.where(("parents", i, "pretrained"))), base_dir))
        if parent.pretrained else parent for i, parent in enumerate(experiment.parents)]
    codeswitch = experiment.codeswitch
    if codeswitch is not None and codeswitch.pretrained:
        codeswitch = dataclasses.replace(codeswitch, pretrained=_model_location(
            expand_environment(codeswitch.pretrained, doc.where(("codeswitch", "pretrained"))), base_dir))
    analyses = experiment.analyses
    if analyses.lexicon is not None:
        at = ("analyses", "lexicon", "dictionaries")
        folders = [expand_environment(folder, doc.where(at + (i,)))
                   for i, folder in enumerate(analyses.lexicon.dictionaries)]
        analyses = dataclasses.replace(analyses, lexicon=dataclasses.replace(analyses.lexicon, dictionaries=folders))
    return dataclasses.replace(experiment, corpora=corpora, parents=parents, codeswitch=codeswitch, analyses=analyses)


def _model_location(value: str, base_dir: Path) -> str:
    """A pretrained model's folder as an absolute path (relative ones are relative to the experiment file),
    or a hub id as it is: `owner/name` that is no folder beside the file."""
    folder = base_dir / Path(value).expanduser()
    if folder.is_dir() or not is_hub_id(value):
        return os.path.normpath(folder)
    return value


def corpus_identity(experiment: Experiment, name: str) -> dict:
    """The corpus section `name` with every file path absolute, for config hashes: moving the experiment
    file alone changes no hash, pointing it at other data does."""

    def resolve(files):
        if isinstance(files, str):
            return os.path.normpath(experiment.base_dir / files)
        if isinstance(files, dict):
            return {key: resolve(value) for key, value in files.items()}
        return files

    config = experiment.corpora[name]
    corpus = dataclasses.asdict(config)
    identity = {key: resolve(value) if key in ("train", "valid") else value for key, value in corpus.items()}
    # A sacreBLEU test set is named by what identifies its text (its name, documents, release checksums).
    identity["test"] = {test: files.identity() if isinstance(files, SacrebleuTestSet) else resolve(files)
                        for test, files in config.test.items()}
    return identity


def raise_at(doc: YamlDocument, key_path: tuple, why: str) -> None:
    """Raise a ConfigError located at `key_path` of the experiment file."""
    raise ConfigError(f"{doc.where(key_path)}: {why}")
