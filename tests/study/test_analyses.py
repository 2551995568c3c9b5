"""The analyses on real tiny runs (no Ray): forgetting, zero-shot stitching, lexicon induction tasks."""

import json

import pytest
import torch

from xattn_ray.study.analyses import AnalysisTask, analysis_tasks, run_task, task_id
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.study.config import load_experiment
from xattn_ray.engine.lexicon import induce_lexicon
from xattn_ray.study.runs import all_specs, run, run_folder
from xattn_ray.study.spec import RunSpec
from xattn_ray.store import ResultsStore
from xattn_ray.engine.transfer import graft_embeddings

@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_study):
    root = tmp_path_factory.mktemp("analyses")
    experiment = load_experiment(tiny_study(root, "analyses"))  # ana.yaml: 3 languages, grid, analyses
    storage = root / "runs"
    parent = run(experiment, RunSpec("parent", "la-pv", 1), storage)
    for spec in all_specs(experiment)[1:]:
        run(experiment, spec, storage)
    return experiment, storage, parent


def test_tasks_cover_every_analysed_policy_but_scratch(study):
    experiment, storage, _ = study
    tasks = analysis_tasks(experiment, all_specs(experiment))
    kinds = sorted((t.kind, t.spec.run, t.spec.policy) for t in tasks)
    assert kinds == [("bli", "lb-pv", "embed"), ("bli", "lb-pv", "xattn"),
                     ("forgetting", "la-lc", "embed"), ("forgetting", "la-lc", "xattn"),
                     ("forgetting", "lb-pv", "embed"), ("forgetting", "lb-pv", "xattn"),
                     ("zeroshot", "la-lc", "embed"), ("zeroshot", "la-lc", "xattn")]
    assert all(AnalysisTask.from_dict(t.to_dict()) == t for t in tasks)
    assert len({task_id(experiment, t) for t in tasks}) == len(tasks)


def test_forgetting_of_an_embed_child_is_exactly_the_parent(study):
    """`embed` trains only the new embeddings: with the parent's plugged back, the model IS the parent."""
    experiment, storage, parent = study
    spec = RunSpec("child", "lb-pv", 1, "embed")
    child = load_model(run_folder(storage, experiment, spec).best_checkpoint)
    parent_model = load_model(parent.checkpoint)
    plugged = graft_embeddings(child, parent_model, "source")
    for name, tensor in parent_model.model.state_dict().items():
        assert torch.equal(plugged.model.state_dict()[name], tensor), name
    (row,) = run_task(experiment, AnalysisTask("forgetting", spec), storage)
    assert row["eval"] == "forgetting" and row["stage"] == "analysis" and row["status"] == "ok"
    assert row["bleu"] == pytest.approx(parent.tests["test"].bleu)  # same model, same hypotheses
    assert row["reference_bleu"] == pytest.approx(parent.tests["test"].bleu)
    hypotheses = open(row["hypotheses_uri"]).read().splitlines()
    assert hypotheses == open(parent.tests["test"].hypotheses).read().splitlines()
    assert len(open(row["references_uri"]).read().splitlines()) == row["n_evaluated"] == 20


def test_zeroshot_stitches_the_donors_source_onto_the_bodys_model(study):
    experiment, storage, _ = study
    body, donor = RunSpec("child", "la-lc", 1, "xattn"), RunSpec("child", "lb-pv", 1, "xattn")
    (row,) = run_task(experiment, AnalysisTask("zeroshot", body, donor, 0), storage)
    assert (row["pair"], row["src_lang"], row["tgt_lang"], row["eval"]) == ("lb-lc", "lb", "lc", "zeroshot")
    provenance = json.loads(row["stitched_from"])
    assert provenance["side"] == "source" and provenance["body"].startswith("la-lc-xattn-s1-")
    assert provenance["embeddings"].startswith("lb-pv-xattn-s1-")
    assert 0.0 <= row["bleu"] <= 100.0 and row["n_evaluated"] == 20


def test_lexicon_rows_one_per_method_with_the_generators_dictionary(study):
    experiment, storage, _ = study
    rows = run_task(experiment, AnalysisTask("bli", RunSpec("child", "lb-pv", 1, "xattn")), storage)
    assert sorted(r["bli_method"] for r in rows) == ["cosine", "csls", "dot"]
    assert all(0.0 <= r["bli_p1"] <= 1.0 and r["n_evaluated"] > 0 for r in rows)
    assert all("lb-la" in r["dictionary"] and r["test_set"] == "lb-la" for r in rows)
    ResultsStore(storage / "results").write(rows)  # the rows fit the store's schema
    assert len(ResultsStore(storage / "results").read(experiment="ana")) == 3


def test_lexicon_induction_recovers_a_noisy_copy_of_the_parent_embeddings():
    """Each new word's row is its translation's parent row plus small noise: P@1 = 1 for every method.

    Parent rows have unit norm: with rows of different lengths the dot product may prefer a long wrong
    row (that is the difference between the paper's cosine and the authors' dot product).
    """
    generator = torch.Generator().manual_seed(0)
    old = torch.nn.functional.normalize(torch.randn(50, 32, generator=generator), dim=1)
    old_words = {f"w{i}": i for i in range(50)}
    permutation = torch.randperm(50, generator=generator)
    new = old[permutation] + 0.01 * torch.randn(50, 32, generator=generator)
    new_words = {f"n{i}": i for i in range(50)}
    dictionary = {f"n{i}": {f"w{int(permutation[i])}"} for i in range(50)}
    for method in ("cosine", "dot", "csls"):
        result = induce_lexicon(new, new_words, old, old_words, dictionary, method)
        assert result.p_at_1 == 1.0 and result.evaluated == 50, method
