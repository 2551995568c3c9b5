"""Transfer studies (Gheini et al. 2021): parents trained from scratch, children moved to a new language.

A parent run trains a model on its pair, or imports a pretrained one (`engine.pretrained`: a Marian
model, scored on the corpus's test sets, never trained). A child run loads its parent's best checkpoint, trains (or
reuses from the cache) a SentencePiece model for the new language on the child's training text, keeps
the parent's tokenizer for the side that does not change, builds the child with
`engine.transfer.make_child` under its freeze policy, trains it and scores its test sets.

    stages      parents (one run each, its own seed), then children: child x policy x size x grid
                option values x seed (seeds innermost); a `search` section searches each such cell
    analyses    forgetting, zero-shot stitching and lexicon induction on the finished children
                (`study.analyses`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from xattn_ray.data.corpus import ParallelText, TrainingText, read_parallel, resolve_corpus, training_text
from xattn_ray.data.options import LanguagePair, changed_side
from xattn_ray.data.sacrebleu_sets import SacrebleuTestSet
from xattn_ray.data.shards import pair_shard
from xattn_ray.engine.batching import encode_pairs
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.engine.model import Transformer, config_differences, preset_config
from xattn_ray.engine.policies import count_parameters
from xattn_ray.engine.pretrained import load_pretrained, pretrained_config, pretrained_files_sha256
from xattn_ray.engine.tokenizer import Tokenizer, train_tokenizer
from xattn_ray.engine.train import TrainConfig, TrainingData
from xattn_ray.engine.transfer import make_child
from xattn_ray.errors import ConfigError
from xattn_ray.study.config import ChildConfig, Experiment, ParentConfig, corpus_identity
from xattn_ray.study.run_folder import Result
from xattn_ray.study.spec import RunSpec, StagePlan, model_options
from xattn_ray.study.summary import mean_std
from xattn_ray.study.training import RunContext, score_imported, text_test_set, train_and_score

log = logging.getLogger(__name__)

Run = ParentConfig | ChildConfig


def run_name(run: Run) -> str:
    return run.name if isinstance(run, ParentConfig) else run.run_name


def experiment_runs(experiment: Experiment) -> list[Run]:
    """Parents first, then children: the order in which they can train."""
    return [*experiment.parents, *experiment.children]


def run_config(experiment: Experiment, spec: RunSpec) -> Run:
    """The parent or child section of `spec`, with the grid's size applied."""
    runs = {p.name: p for p in experiment.parents} if spec.stage == "parent" else \
        {c.run_name: c for c in experiment.children}
    if spec.run not in runs:
        raise ConfigError(f"experiment {experiment.name!r} has no {spec.stage} run named {spec.run!r} "
                          f"({spec.stage} runs: {', '.join(runs) or 'none'})")
    run = runs[spec.run]
    return dataclasses.replace(run, size=spec.size) if spec.size is not None else run


def run_corpus(experiment: Experiment, run: Run) -> str:
    return run.corpus if isinstance(run, ParentConfig) else experiment.child_corpus(run)


def child_side(experiment: Experiment, spec: RunSpec) -> str:
    """The side of its parent's pair that a child run replaces: `source` or `target`."""
    child = run_config(experiment, spec)
    return changed_side(experiment.parent(child.parent).language_pair, child.language_pair)


def check_parent_checkpoint(experiment: Experiment, spec: RunSpec, path: Path) -> None:
    """A checkpoint given by hand as the parent of the child run `spec` must load, have the experiment's
    architecture and translate the parent's pair; a one-line error says which does not hold."""
    loaded = load_model(path)
    config = loaded.model.config
    parent = experiment.parent(run_config(experiment, spec).parent)
    expected = preset_config(experiment.model.preset, config.src_vocab_size, config.tgt_vocab_size,
                             **experiment.model.overrides())
    # a pretrained parent has its own architecture, not the experiment's `model`
    if not parent.pretrained and (differences := config_differences(expected, config)):
        raise ConfigError(f"{path}: architecture differs from the model of experiment {experiment.name!r}: "
                          f"{'; '.join(differences)}")
    pair = parent.language_pair
    found = f"{loaded.src_tokenizer.language}-{loaded.tgt_tokenizer.language}"
    if found != str(pair):
        raise ConfigError(f"{path}: a {found} model, but run {spec.run!r} starts from a {pair} parent")


@dataclass(frozen=True)
class RunData:
    """Everything a run reads, already checked: the training slice (streamed from disk at each use, never
    held), validation pairs, named test sets."""

    pair: LanguagePair
    train: TrainingText | None  # None for a pretrained parent, which does not train
    valid: ParallelText
    tests: dict[str, ParallelText]


def load_run_data(experiment: Experiment, run: Run, cache_dir: Path) -> RunData:
    """Check the data of `run` and read its valid and test sets; any problem is a DataError naming the file.

    The training files are checked whole (aligned, UTF-8, holding the slice) by one streamed pass,
    remembered in the cache's digests, so only the first run on a corpus reads it.
    """
    corpus_name = run_corpus(experiment, run)
    corpus = resolve_corpus(corpus_name, experiment.corpora[corpus_name], experiment.base_dir, cache_dir)
    pair = run.language_pair
    train = None if getattr(run, "pretrained", None) else training_text(
        *corpus.pair_files(corpus.train, pair, "train"), run.training_slice, experiment.filters, cache_dir)
    valid = read_parallel(*corpus.pair_files(corpus.valid, pair, "valid"))
    test_names = run.test_sets if run.test_sets is not None else list(corpus.tests)
    tests = {name: corpus.read_test(name, pair) for name in test_names}
    return RunData(pair=pair, train=train, valid=valid, tests=tests)


class Transfer:
    """The `StudyKind` of transfer studies."""

    name = "transfer"

    def stages(self, experiment: Experiment) -> list[StagePlan]:
        grid = experiment.grid
        names = sorted(grid.options)
        children = []
        for child in experiment.children:
            for policy in grid.policies:
                for size in grid.sizes or [None]:
                    for values in itertools.product(*(grid.options[name] for name in names)):
                        children += [RunSpec("child", child.run_name, seed, policy, size, dict(zip(names, values)))
                                     for seed in grid.seeds]
        parents = [RunSpec("parent", parent.name, parent.seed) for parent in experiment.parents]
        return [StagePlan("parents", parents), StagePlan("children", children)]

    def parent_spec(self, experiment: Experiment, spec: RunSpec) -> RunSpec | None:
        if spec.stage == "parent":
            return None
        parent = experiment.parent(run_config(experiment, spec).parent)
        return RunSpec("parent", parent.name, parent.seed)

    def base_train_config(self, experiment: Experiment, spec: RunSpec) -> TrainConfig:
        return experiment.train_config(run_config(experiment, spec))

    def hash_payload(self, experiment: Experiment, spec: RunSpec) -> dict:
        run = run_config(experiment, spec)
        payload = {"pair": run.pair, "lines": run.lines, "size": run.size, "test_sets": run.test_sets,
                   "corpus": corpus_identity(experiment, run_corpus(experiment, run))}
        if spec.stage == "child":
            payload["policy"] = {"name": spec.policy, **experiment.policy(spec.policy).identity()}
            payload["init"] = CHILD_INIT  # runs from before it started at their parent's initial values
        elif run.pretrained:  # another model, or the same name with other files, is another parent
            payload["pretrained"] = pretrained_provenance(run)
        return payload

    def row_fields(self, experiment: Experiment, spec: RunSpec) -> dict:
        run = run_config(experiment, spec)
        pair = run.language_pair
        parent_pair = None if spec.stage == "parent" else experiment.parent(run.parent).pair
        side = None if parent_pair is None else ("source" if pair.src != parent_pair.split("-")[0] else "target")
        origin = run if spec.stage == "parent" else experiment.parent(run.parent)
        provenance = pretrained_provenance(origin) if origin.pretrained else {"model": None, "files_sha256": None}
        return dict(parent_pair=parent_pair, pair=str(pair), src_lang=pair.src, tgt_lang=pair.tgt, side=side,
                    pretrained=provenance["model"], pretrained_sha256=provenance["files_sha256"])

    def hparams(self, experiment: Experiment, spec: RunSpec) -> dict:
        run = run_config(experiment, spec)
        return {"size": run.size, "lines": run.lines}

    def run(self, context: RunContext) -> Result:
        if context.spec.stage == "parent":
            return _run_parent(context)
        return _run_child(context)

    def check_data(self, experiment: Experiment, cache: Path) -> list[str]:
        # Streams every training slice to count what cleaning keeps: constant memory, whatever the corpus.
        runs = experiment_runs(experiment)
        for parent in experiment.parents:  # its config and vocabularies are read (from the hub's cache, for an id)
            if parent.pretrained:
                pretrained_config(parent.pretrained)
        loaded = {run_name(run): load_run_data(experiment, run, cache) for run in runs}
        cleaning = {name: data.train.scan() for name, data in loaded.items() if data.train is not None}
        lines = [f"{'run':<14} {'pair':<8} {'from':<22} {'train pairs':>11} {'dropped':>8} {'valid':>6}  tests"]
        for run in runs:
            data = loaded[run_name(run)]
            origin = "scratch" if isinstance(run, ParentConfig) else f"{run.parent} ({_side_words(experiment, run)})"
            kept, dropped = "-", "-"
            if run_name(run) in cleaning:
                report = cleaning[run_name(run)]
                kept, dropped = report.kept, report.empty + report.too_long + report.bad_ratio
            else:
                origin = "pretrained"
            tests = ", ".join(_test_label(experiment, run, name, len(text)) for name, text in data.tests.items())
            lines.append(f"{run_name(run):<14} {str(data.pair):<8} {origin:<22} {kept:>11} {dropped:>8} "
                         f"{len(data.valid):>6}  {tests}")
        return lines

    def plan_lines(self, experiment: Experiment) -> list[str]:
        grid, search = experiment.grid, experiment.search
        cells = self.stages(experiment)[1].specs
        axes = [f"{len(experiment.children)} children", f"{len(grid.policies)} policies ({', '.join(grid.policies)})"]
        if grid.sizes:
            axes.append(f"{len(grid.sizes)} sizes")
        axes += [f"{len(values)} {name}" for name, values in grid.options.items()]
        if not search:
            return [f"plan: {len(experiment.parents)} parent run(s), then {len(cells)} child runs = "
                    f"{' x '.join(axes)} x {len(grid.seeds)} seeds"]
        searched = len(cells) // len(grid.seeds)  # the search runs at the grid's first seed only
        others = ", ".join(str(seed) for seed in grid.seeds[1:])
        return [f"plan: {len(experiment.parents)} parent run(s), then {searched * search.samples} search trials = "
                f"{' x '.join(axes)} x {search.samples} {search.metric} search samples at seed {grid.seeds[0]}"
                + (f", then {searched * (len(grid.seeds) - 1)} confirmation runs (each cell's best configuration "
                   f"with seed{'s' if len(grid.seeds) > 2 else ''} {others})" if len(grid.seeds) > 1 else "")]

    def summary_lines(self, results: list[Result], analyses: list[dict]) -> list[str]:
        """BLEU on each run's first test set: a row per policy, a column per pair, mean ± std over seeds."""
        cells: dict[tuple[str, str], list[float]] = {}
        pairs: list[str] = []
        for result in results:
            if not result.ok or not result.tests:
                continue
            spec = result.spec
            policy = spec.policy or "(parent)"
            label = result.pair + "".join(f" {k}={v:.3g}" for k, v in sorted(spec.options.items()))
            if spec.size is not None:
                label += f" n={spec.size}"
            if label not in pairs:
                pairs.append(label)
            cells.setdefault((policy, label), []).append(next(iter(result.tests.values())).bleu)
        policies = sorted({policy for policy, _ in cells}, key=lambda p: (p != "(parent)", p))
        width = max([len(p) for p in pairs] + [12])
        lines = ["BLEU on each run's first test set (mean ± std over seeds)",
                 f"{'policy':<10} " + " ".join(f"{pair:>{width}}" for pair in pairs)]
        for policy in policies:
            lines.append(f"{policy:<10} " + " ".join(f"{mean_std(cells.get((policy, pair), [])):>{width}}"
                                                       for pair in pairs))
        return lines + _analysis_lines(analyses)


TRANSFER = Transfer()


def _side_words(experiment: Experiment, child: ChildConfig) -> str:
    """Which side of the parent's pair the child replaces, in words for `validate`'s table."""
    parent, pair = experiment.parent(child.parent).language_pair, child.language_pair
    if pair.src != parent.src and pair.tgt == parent.tgt:
        return f"new src {pair.src}"
    if pair.tgt != parent.tgt and pair.src == parent.src:
        return f"new tgt {pair.tgt}"
    return "both sides" if pair.src != parent.src else "same pair"


def _test_label(experiment: Experiment, run: Run, name: str, lines: int) -> str:
    """A test set in `validate`'s table: its name and lines, and which sacreBLEU set it is if it is one."""
    test = experiment.corpora[run_corpus(experiment, run)].test.get(name)
    if not isinstance(test, SacrebleuTestSet):
        return f"{name} {lines}"
    documents = f" origlang {test.origlang}" if test.origlang else ""
    return f"{name} {lines} (sacreBLEU {test.sacrebleu}{documents})"


def _side_tokenizer(experiment: Experiment, data: RunData, index: int, cache: Path) -> Tokenizer:
    """The tokenizer of one side (0 source, 1 target) of the run's training text, trained once per text:
    the slice's identity lets a warm trial find it without reading the text again."""
    text = data.train.side(index)
    language = data.pair.src if index == 0 else data.pair.tgt
    return train_tokenizer(language, text, experiment.tokenizer, cache / "spm", text_identity=text.identity)


def pretrained_provenance(parent: ParentConfig) -> dict:
    """What names a pretrained parent's model: as the experiment gives it, and the hash of its files."""
    return {"model": parent.pretrained, "files_sha256": pretrained_files_sha256(parent.pretrained)}


def _run_parent(context: RunContext) -> Result:
    """Train the parent from scratch (or import its pretrained model) and score its test sets."""
    experiment, spec = context.experiment, context.spec
    parent = run_config(experiment, spec)
    data = load_run_data(experiment, parent, context.cache)
    if parent.pretrained:
        return _import_parent(context, parent, data)
    src_tok = _side_tokenizer(experiment, data, 0, context.cache)
    tgt_tok = _side_tokenizer(experiment, data, 1, context.cache)
    torch.manual_seed(spec.seed)
    model = Transformer(preset_config(experiment.model.preset, src_tok.vocab_size, tgt_tok.vocab_size,
                                      **experiment.model.overrides(), **model_options(spec)))
    return _train_and_score(context, None, None, model, data, src_tok, tgt_tok)


def _import_parent(context: RunContext, parent: ParentConfig, data: RunData) -> Result:
    """The pretrained model as the parent run's best checkpoint, scored; its files must still be the ones
    the run's hash was made from."""
    loaded, provenance = load_pretrained(parent.pretrained, data.pair.src, data.pair.tgt)
    planned = pretrained_provenance(parent)["files_sha256"]
    if provenance.files_sha256 != planned:
        raise ConfigError(f"{parent.pretrained}: the model's files changed while the study ran (sha256 "
                          f"{provenance.files_sha256[:12]}, planned {planned[:12]}); run it again")
    max_positions = loaded.model.config.max_positions
    valid = encode_pairs(data.valid.src, data.valid.tgt, loaded.src_tokenizer, loaded.tgt_tokenizer, max_positions)
    tests = {name: text_test_set(text.src, text.tgt, loaded.src_tokenizer, max_positions)
             for name, text in data.tests.items()}
    return score_imported(context, str(data.pair), loaded, valid, tests)


CHILD_INIT = "own stream"


def child_init_seed(spec: RunSpec) -> int:
    """The seed of a child's fresh parameters (new embeddings, re-initialised groups): a stream of its own.

    Seeding them with the run's seed alone would draw, for a child of seed s, exactly the initial values
    its parent of seed s started from (same shapes, same draws): the "new" embeddings would begin at the
    parent's initial embeddings, which training only partly moved, and a re-initialised cross-attention
    at the parent's initial one. In the quickstart that gave seed-1 children a head start (la-lc BLEU
    52 at seed 1 against 40-44 at seeds 2 and 3; randxattn's lexicon induction 80% against 0%).
    Every policy of one child and seed still starts from the same fresh values, so policies stay paired.
    """
    digest = hashlib.sha256(f"xattn-ray child init {spec.run} {spec.seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are at most 64 bits


def _run_child(context: RunContext) -> Result:
    """Transfer the parent checkpoint to the child under its policy; train, score."""
    experiment, spec = context.experiment, context.spec
    child = run_config(experiment, spec)
    policy = experiment.policy(spec.policy)
    parent = load_model(context.parent_checkpoint)
    parent_pair = experiment.parent(child.parent).language_pair
    side = changed_side(parent_pair, child.language_pair)
    data = load_run_data(experiment, child, context.cache)
    if side == "source":
        src_tok, tgt_tok = _side_tokenizer(experiment, data, 0, context.cache), parent.tgt_tokenizer
    else:
        src_tok, tgt_tok = parent.src_tokenizer, _side_tokenizer(experiment, data, 1, context.cache)
    new_tok, parent_tok = (src_tok, parent.src_tokenizer) if side == "source" else (tgt_tok, parent.tgt_tokenizer)
    torch.manual_seed(child_init_seed(spec))
    built = make_child(parent.model, side, new_tok.vocab_size, policy, spec.policy,
                       pieces=(parent_tok.pieces(), new_tok.pieces()))
    if model_options(spec):
        built.model.set_dropout(**model_options(spec))
    log.info("%s %s: %s", spec.run, spec.policy, count_parameters(built.model).summary())
    return _train_and_score(context, str(parent_pair), side, built.model, data, src_tok, tgt_tok,
                            delta_of_parent=policy.init == "parent")


def _train_and_score(context: RunContext, parent_pair: str | None, side: str | None, model: Transformer,
                     data: RunData, src_tok: Tokenizer, tgt_tok: Tokenizer, delta_of_parent: bool = False) -> Result:
    max_positions = model.config.max_positions
    # The training pairs from their shard (built by the first run that needs it), valid pairs in memory.
    training = TrainingData(pair_shard(data.train, src_tok, tgt_tok, max_positions, context.cache),
                            encode_pairs(data.valid.src, data.valid.tgt, src_tok, tgt_tok, max_positions),
                            src_tok, tgt_tok)
    tests = {name: text_test_set(text.src, text.tgt, src_tok, max_positions) for name, text in data.tests.items()}
    valid = text_test_set(data.valid.src, data.valid.tgt, src_tok, max_positions) if context.score_valid else None
    return train_and_score(context, str(data.pair), parent_pair, side, model, training, tests, valid,
                           delta_of_parent)


def _analysis_lines(rows: list[dict]) -> list[str]:
    """One line per analysed pair and policy, means over seeds (first test set for BLEU)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        if row["eval"] == "bli":
            key = ("lexicon induction P@1", f"{row['pair']} ({row['dictionary']}, {int(row['n_evaluated'])} words)",
                   f"{row['policy']} {row['bli_method']}")
            groups.setdefault(key, []).append(100 * row["bli_p1"])
        else:
            title = {"forgetting": "forgetting: parent's test BLEU with its embeddings plugged back",
                     "zeroshot": "zero-shot BLEU of stitched models"}[row["eval"]]
            reference = f", parent {row['reference_bleu']:.2f}" if row["eval"] == "forgetting" else ""
            key = (title, f"{row['pair']} on {row['test_set']}{reference}", row["policy"])
            groups.setdefault(key, []).append(row["bleu"])
    lines = []
    for title in sorted({key[0] for key in groups}):
        lines.append(title)
        for (_, subject, label), values in sorted((k, v) for k, v in groups.items() if k[0] == title):
            lines.append(f"  {subject:<44} {label:<18} {statistics.mean(values):6.2f}")
    return lines
