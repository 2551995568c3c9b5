"""The paper's analyses of finished runs: forgetting, zero-shot by stitching, lexicon induction.

Each analysis is a list of `AnalysisTask`s worked out from the experiment (which child runs, which
policies and seeds), and each task, run on the children's best checkpoints, returns results-store rows:

- forgetting (`eval = forgetting`): plug the parent's embedding group for the child's new side back
  into the child and score the parent's test sets; `reference_bleu` is the parent's own BLEU there;
- zero-shot (`eval = zeroshot`): the body of one child with the new embeddings of another child of the
  same parent (e.g. Fr-Cs body + De-En source embeddings = De-Cs), scored on the zero-shot pair's tests;
- lexicon induction (`eval = bli`): the child's new embedding matrix against the parent's matrix of the
  language it replaced, P@1 by cosine, dot product and CSLS, one row each.

Plain Python: the runner schedules the tasks as a Ray Tune stage; tests call `run_task` directly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.data.corpus import resolve_corpus
from xattn_ray.data.options import LanguagePair, stitched_pair
from xattn_ray.engine.checkpoint import LoadedModel, load_model
from xattn_ray.engine.evaluate import score_test_set
from xattn_ray.engine.lexicon import find_dictionary, lexicon_induction
from xattn_ray.engine.transfer import graft_embeddings
from xattn_ray.store import make_row
from xattn_ray.study.config import Experiment
from xattn_ray.study.records import run_fields
from xattn_ray.study.run_folder import Result
from xattn_ray.study.runs import parent_spec, run_folder, run_id
from xattn_ray.study.spec import RunSpec
from xattn_ray.study.transfer import child_side, run_config


@dataclass(frozen=True)
class AnalysisTask:
    """One analysis of one run (forgetting, bli) or of one stitched pair of runs (zeroshot)."""

    kind: str  # forgetting | bli | zeroshot
    spec: RunSpec  # the child analysed; for zeroshot, the child whose body is kept
    donor: RunSpec | None = None  # zeroshot: the child whose embeddings are plugged in
    zeroshot: int | None = None  # zeroshot: index into analyses.zeroshot
    selection: str = "grid"  # the analysed runs': grid runs, or a search's confirmed configurations

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec.to_dict(), "donor": self.donor and self.donor.to_dict(),
                "zeroshot": self.zeroshot, "selection": self.selection}

    @classmethod
    def from_dict(cls, data: dict) -> AnalysisTask:
        return cls(data["kind"], RunSpec.from_dict(data["spec"]),
                   data["donor"] and RunSpec.from_dict(data["donor"]), data["zeroshot"], data["selection"])


def task_id(experiment: Experiment, task: AnalysisTask) -> str:
    """Names the task by the run ids it reads (so a changed run config is a new task)."""
    donor = f"-{run_id(experiment, task.donor)}" if task.donor is not None else ""
    return f"{task.kind}-{run_id(experiment, task.spec)}{donor}"


def task_marker(storage: Path, experiment: Experiment, task: AnalysisTask) -> Path:
    """Written once the task's rows are stored. It lives in the analysed run's folder, so retraining
    that run (its folder deleted) also forgets its analyses."""
    return run_folder(storage, experiment, task.spec).analysis_marker(task_id(experiment, task))


def analysis_tasks(experiment: Experiment, child_runs: list[RunSpec], selection: str = "grid") -> list[AnalysisTask]:
    """The tasks the experiment's `analyses` section asks for, over the study's child runs (of one
    `selection`: the grid's runs, or the configurations a search chose)."""
    analyses = experiment.analyses
    policies = analyses.policies or [p for p in experiment.grid.policies if p != "scratch"]
    runs = [spec for spec in child_runs if spec.stage == "child" and spec.policy in policies]
    tasks = []
    if analyses.forgetting:
        tasks += [AnalysisTask("forgetting", spec, selection=selection) for spec in runs]
    if analyses.lexicon is not None:
        tasks += [AnalysisTask("bli", spec, selection=selection) for spec in runs
                  if spec.run in analyses.lexicon.children]
    for index, stitch in enumerate(analyses.zeroshot):
        for body in (spec for spec in runs if spec.run == stitch.body):
            # The donor is the same grid cell of the other child; a search may have chosen other options for it.
            cell = _grid_cell(experiment, dataclasses.replace(body, run=stitch.embeddings))
            donor = next((spec for spec in runs if _grid_cell(experiment, spec) == cell), None)
            if donor is not None:
                tasks.append(AnalysisTask("zeroshot", body, donor, index, selection))
    return tasks


def _grid_cell(experiment: Experiment, spec: RunSpec) -> RunSpec:
    """`spec` without the options a search chose (the grid's own option axes stay)."""
    return dataclasses.replace(spec, options={name: value for name, value in spec.options.items()
                                              if name in experiment.grid.options})


def run_task(experiment: Experiment, task: AnalysisTask, storage: Path) -> list[dict]:
    """Run one task on the finished runs under `storage`; returns its results-store rows."""
    storage = Path(storage)
    if task.kind == "forgetting":
        return _forgetting(experiment, task, storage)
    if task.kind == "bli":
        return _lexicon(experiment, task, storage)
    return _zeroshot(experiment, task, storage)


@dataclass
class _Finished:
    """A finished run: its spec, its best model, its result."""

    spec: RunSpec
    loaded: LoadedModel
    result: Result


def _finished(experiment: Experiment, spec: RunSpec, storage: Path) -> _Finished:
    folder = run_folder(storage, experiment, spec)
    result = folder.result()
    if result is None or not result.ok:
        raise FileNotFoundError(f"run {folder.run_id} has not finished successfully")
    return _Finished(spec, load_model(folder.best_checkpoint), result)


def _decoding(experiment: Experiment) -> dict:
    e = experiment.evaluation
    return dict(beam=e.beam, length_penalty=e.length_penalty, max_len_a=e.max_len_a, max_len_b=e.max_len_b,
                max_tokens=e.max_tokens)


def _test_sets(experiment: Experiment, corpus_name: str, pair: LanguagePair, names: list[str] | None,
               storage: Path) -> dict:
    corpus = resolve_corpus(corpus_name, experiment.corpora[corpus_name], experiment.base_dir, storage / "cache")
    chosen = names if names is not None else list(corpus.tests)
    return {name: corpus.read_test(name, pair) for name in chosen}


def _write_lines(folder: Path, name: str, lines: list[str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _forgetting(experiment: Experiment, task: AnalysisTask, storage: Path) -> list[dict]:
    """Child with the parent's embeddings back, on the parent's test sets."""
    child = _finished(experiment, task.spec, storage)
    parent = _finished(experiment, parent_spec(experiment, task.spec), storage)
    plugged = graft_embeddings(child.loaded, parent.loaded, child_side(experiment, task.spec))
    parent_run = run_config(experiment, parent.spec)
    tests = _test_sets(experiment, parent_run.corpus, parent_run.language_pair, parent_run.test_sets, storage)
    folder = run_folder(storage, experiment, task.spec).analyses
    rows = []
    for name, text in tests.items():
        result = score_test_set(plugged.model, plugged.src_tokenizer, plugged.tgt_tokenizer, text.src, text.tgt,
                                **_decoding(experiment))
        rows.append(make_row(**task_fields(experiment, task), eval="forgetting", test_set=name,
                             bleu=result.bleu.score, chrf=result.chrf.score, bleu_signature=result.bleu.signature,
                             chrf_signature=result.chrf.signature, n_evaluated=len(text.src),
                             reference_bleu=parent.result.tests[name].bleu if name in parent.result.tests else None,
                             hypotheses_uri=_write_lines(folder, f"forgetting.{name}.txt", result.hypotheses),
                             references_uri=_write_lines(folder, f"references.{parent_run.pair}.{name}.txt", text.tgt),
                             status="ok"))
    return rows


def _lexicon(experiment: Experiment, task: AnalysisTask, storage: Path) -> list[dict]:
    """P@1 of the child's new words against the parent's words of the language they replaced."""
    child = _finished(experiment, task.spec, storage)
    parent = _finished(experiment, parent_spec(experiment, task.spec), storage)
    side = child_side(experiment, task.spec)
    child_pair = run_config(experiment, task.spec).language_pair
    parent_pair = run_config(experiment, parent.spec).language_pair
    new, old = (child_pair.src, parent_pair.src) if side == "source" else (child_pair.tgt, parent_pair.tgt)
    dictionary, described = find_dictionary(_dictionary_folders(experiment, task.spec, storage), new, old)
    rows = []
    for result in lexicon_induction(child.loaded, parent.loaded, side, dictionary):
        rows.append(make_row(**task_fields(experiment, task), eval="bli", bli_p1=result.p_at_1,
                             bli_method=result.method, n_evaluated=result.evaluated, dictionary=described,
                             test_set=f"{new}-{old}", status="ok"))
    return rows


def _dictionary_folders(experiment: Experiment, spec: RunSpec, storage: Path) -> list[Path]:
    folders = [experiment.base_dir / folder for folder in experiment.analyses.lexicon.dictionaries]
    corpus_name = experiment.child_corpus(run_config(experiment, spec))
    synthetic = experiment.corpora[corpus_name].synthetic
    if synthetic is not None:  # the generator's gold dictionaries sit beside its corpus
        corpus = resolve_corpus(corpus_name, experiment.corpora[corpus_name], experiment.base_dir, storage / "cache")
        folders.append(next(iter(corpus.train.values())).parent / "dictionaries")
    return folders


def _zeroshot(experiment: Experiment, task: AnalysisTask, storage: Path) -> list[dict]:
    """The body child's model with the donor child's new embeddings, on the zero-shot pair."""
    stitch = experiment.analyses.zeroshot[task.zeroshot]
    body = _finished(experiment, task.spec, storage)
    donor = _finished(experiment, task.donor, storage)
    donor_side = child_side(experiment, task.donor)
    stitched = graft_embeddings(body.loaded, donor.loaded, donor_side)
    pair = zeroshot_pair(experiment, task)
    corpus = stitch.corpus or experiment.child_corpus(run_config(experiment, task.spec))
    tests = _test_sets(experiment, corpus, pair, stitch.test_sets, storage)
    folder = run_folder(storage, experiment, task.spec).analyses
    provenance = json.dumps({"body": body.result.run_id, "embeddings": donor.result.run_id,
                             "side": donor_side, "baselines": stitch.baselines})
    fields = task_fields(experiment, task)
    rows = []
    for name, text in tests.items():
        result = score_test_set(stitched.model, stitched.src_tokenizer, stitched.tgt_tokenizer, text.src, text.tgt,
                                **_decoding(experiment))
        rows.append(make_row(**fields, eval="zeroshot", test_set=name, bleu=result.bleu.score,
                             chrf=result.chrf.score, bleu_signature=result.bleu.signature,
                             chrf_signature=result.chrf.signature, n_evaluated=len(text.src),
                             stitched_from=provenance, status="ok",
                             hypotheses_uri=_write_lines(folder, f"zeroshot-{pair}.{name}.txt", result.hypotheses),
                             references_uri=_write_lines(folder, f"references.{pair}.{name}.txt", text.tgt)))
    return rows


def zeroshot_pair(experiment: Experiment, task: AnalysisTask) -> LanguagePair:
    """The pair a stitched model translates: the donor's new side with the body child's other side."""
    body, donor = run_config(experiment, task.spec), run_config(experiment, task.donor)
    return stitched_pair(body.language_pair, donor.language_pair, child_side(experiment, task.donor))


def task_fields(experiment: Experiment, task: AnalysisTask) -> dict:
    """The identity columns of a task's rows (also of the row recording that it failed)."""
    fields = _analysis_fields(experiment, task.spec, task.selection)
    if task.kind == "zeroshot":
        pair = zeroshot_pair(experiment, task)
        fields.update(run_id=f"zeroshot-{pair}-{run_id(experiment, task.spec)}-{run_id(experiment, task.donor)[-8:]}",
                      pair=str(pair), src_lang=pair.src, tgt_lang=pair.tgt, side=None)
    return fields


def _analysis_fields(experiment: Experiment, spec: RunSpec, selection: str) -> dict:
    """The analysed run's identity, with stage `analysis` (its rows live beside, not over, the run's)."""
    fields = run_fields(experiment, spec, selection)
    fields["stage"] = "analysis"
    return fields
