"""A study whose parent is a pretrained Marian model, through `xattn-ray run` on a local Ray instance.

The parent is a tiny random MarianMTModel saved by transformers with real SentencePiece files trained on
the study's own synthetic corpus (marian_models.py); its children replace the source (lb-pv) and the
target (la-lc) under every built-in policy and a user policy that starts the new embeddings from the
pieces both vocabularies share.
"""

import gzip
import json
from pathlib import Path

import pytest
import torch

from conftest import CODESWITCH_PRETRAIN
from marian_models import save_tiny_marian
from support import EXPERIMENTS, SHARED_DATA, requires_multi30k, summaries, xattn_ray
from xattn_ray.data.synthetic import FamilySpec, generate_family
from xattn_ray.engine.checkpoint import file_sha256, load_model, read_checkpoint
from xattn_ray.engine.policies import POLICIES, trainable_names
from xattn_ray.store import ResultsStore
from xattn_ray.study.config import load_experiment

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

SPEC = dict(languages=3, sentences=400, seed=3, valid=30, test=20)
POLICY_NAMES = [*POLICIES, "xattn-shared"]

STUDY = f"""\
name: opus
corpora:
  synth:
    synthetic: {json.dumps(SPEC)}
tokenizer: {{vocab_size: 120}}
model: {{preset: tiny}}
train: {{lr: 0.003, warmup_updates: 2, max_tokens: 600, max_updates: 8, validate_every: 4, patience: 0}}
evaluation: {{beam: 2, max_tokens: 2000}}
parents:
  - {{name: la-pv, pair: la-pv, corpus: synth, pretrained: opus-mt-la-pv}}
children:
  - {{pair: lb-pv, parent: la-pv, lines: [250, 400]}}
  - {{pair: la-lc, parent: la-pv, lines: [250, 400]}}
policies:
  xattn-shared: {{train: [new_embed, xattn], embed_init: shared}}
grid: {{policies: {json.dumps(POLICY_NAMES)}, seeds: [1]}}
analyses:
  policies: [body, xattn]
  forgetting: true
  lexicon: {{children: [lb-pv]}}
  zeroshot:
    - {{body: la-lc, embeddings: lb-pv}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The finished study: (its folder, its experiment, the parent's Marian folder)."""
    folder = tmp_path_factory.mktemp("opus")
    family = generate_family(FamilySpec(**SPEC), folder / "family")
    text = [line for language in ("la", "pv") for line in (family / f"train.{language}").read_text().splitlines()]
    save_tiny_marian(folder / "opus-mt-la-pv", text, vocab_size=150)
    (folder / "opus.yaml").write_text(STUDY)
    done = xattn_ray("run", "opus.yaml", "--storage", "st", "--num-cpus", "2", cwd=folder, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, load_experiment(folder / "opus.yaml"), folder / "opus-mt-la-pv"


def test_the_pretrained_parent_is_imported_and_scored_not_trained(study):
    folder, _, marian = study
    rows = ResultsStore(folder / "st" / "results").read(experiment="opus")
    parent = rows[(rows["stage"] == "parent")]
    assert set(parent["eval"]) == {"train", "test"} and (parent["updates"] == 0).all()
    assert (parent["pretrained"] == str(marian)).all() and parent["pretrained_sha256"].str.len().eq(64).all()
    assert (parent["stop_reason"] == "pretrained").all() and parent["bleu"].notna().any()
    children = rows[rows["stage"] == "child"]
    assert (children["pretrained_sha256"] == parent["pretrained_sha256"].iloc[0]).all()
    assert set(children["policy"]) == set(POLICY_NAMES) and (children["status"] == "ok").all()


def test_the_analyses_run_on_children_of_a_pretrained_parent(study):
    folder, _, _ = study
    rows = ResultsStore(folder / "st" / "results").read(experiment="opus")
    analysed = rows[rows["eval"].isin(["forgetting", "zeroshot", "bli"])]
    assert {(row.eval, row.policy) for row in analysed.itertuples()} >= {
        (kind, policy) for kind in ("forgetting", "zeroshot", "bli") for policy in ("body", "xattn")}
    assert analysed[analysed["eval"] != "bli"]["bleu"].notna().all() and (analysed["status"] == "ok").all()


def test_frozen_tensors_stay_bitwise_and_trained_ones_move(study):
    folder, _, _ = study
    runs = summaries(folder / "st", "opus")
    parent_run = next(run for run in runs.values() if run["spec"]["stage"] == "parent")
    parent = load_model(parent_run["checkpoint"]).model.state_dict()
    checked = 0
    for run in runs.values():
        spec = run["spec"]
        if spec["stage"] != "child" or spec["policy"] == "scratch":
            continue
        child = load_model(run["checkpoint"])
        side = run["side"]
        policy = POLICIES.get(spec["policy"]) or POLICIES["xattn"]
        trainable = trainable_names(child.model, policy, side, spec["policy"])
        new_group = "src_embed." if side == "source" else "tgt_embed."
        for name, tensor in child.model.named_parameters():
            if name.startswith(new_group) or (spec["policy"] == "randxattn" and ".cross_attn" in name):
                continue  # not the parent's values to begin with
            if name in trainable:
                assert not torch.equal(tensor, parent[name]), f"{run['run_id']}: {name} did not train"
            else:
                assert torch.equal(tensor, parent[name]), f"{run['run_id']}: frozen {name} changed"
            checked += 1
        # a delta of the parent's checkpoint: only what the policy trained and the new embeddings are stored
        stored = read_checkpoint(Path(run["checkpoint"]), ("base",))
        assert stored["base"]["sha256"] == file_sha256(Path(parent_run["checkpoint"]))
        assert set(stored["state_dict"]) <= trainable | {n for n in parent if n.startswith(new_group)} | {
            n for n in parent if ".cross_attn" in n}
        # the unchanged side keeps the pretrained model's own vocabulary
        kept = child.tgt_tokenizer if side == "source" else child.src_tokenizer
        assert kept.vocabulary is not None and kept.vocabulary[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert checked > 100


def test_shared_embed_init_starts_shared_pieces_at_the_parents_rows(study):
    """`embed_init: shared` is part of the run's hash (another run id than xattn's), and its new target
    embeddings began at the parent's rows: after 8 updates the shared rows are still closer to them."""
    folder, _, _ = study
    runs = summaries(folder / "st", "opus")
    by_policy = {(run["pair"], run["spec"]["policy"]): run for run in runs.values() if run["spec"]["stage"] == "child"}
    shared, plain = by_policy[("la-lc", "xattn-shared")], by_policy[("la-lc", "xattn")]
    assert shared["config_hash"] != plain["config_hash"]
    parent_run = next(run for run in runs.values() if run["spec"]["stage"] == "parent")
    parent = load_model(parent_run["checkpoint"])
    ids = {piece: i for i, piece in enumerate(parent.tgt_tokenizer.pieces())}

    def distance(run):
        child = load_model(run["checkpoint"])
        pairs = [(i, ids[p]) for i, p in enumerate(child.tgt_tokenizer.pieces()) if p in ids and i > 3]
        rows, sources = (torch.tensor(column) for column in zip(*pairs))
        weight = child.model.tgt_embed.tokens.weight
        return float((weight[rows] - parent.model.tgt_embed.tokens.weight[sources]).detach().norm())

    assert distance(shared) < 0.5 * distance(plain)


@requires_multi30k
def test_the_opus_mt_experiment_validates_with_a_local_model_for_the_hub_id(tmp_path):
    """experiments/opus-mt.yaml names Helsinki-NLP/opus-mt-fr-en; a tiny local Marian model stands in."""
    text = [line.strip() for language in ("fr", "en")
            for line in gzip.open(SHARED_DATA / "multi30k" / f"train.{language}.gz", "rt").readlines()[:2000]]
    save_tiny_marian(tmp_path / "opus-mt-fr-en", text, vocab_size=500)
    result = xattn_ray("validate", EXPERIMENTS / "opus-mt.yaml", "--storage", tmp_path / "st", cwd=tmp_path,
                       env={"OPUS_MT_FR_EN": str(tmp_path / "opus-mt-fr-en")})
    assert result.returncode == 0, result.stderr
    assert "fr-en          fr-en    pretrained" in result.stdout
    assert "30 child runs = 2 children x 5 policies" in result.stdout
    experiment = load_experiment(EXPERIMENTS / "opus-mt.yaml")
    assert experiment.parents[0].pretrained == "Helsinki-NLP/opus-mt-fr-en"  # a hub id stays one
    missing = xattn_ray("validate", EXPERIMENTS / "opus-mt.yaml", "--storage", tmp_path / "st", cwd=tmp_path,
                        env={"OPUS_MT_FR_EN": str(tmp_path / "nowhere")})
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "opus-mt.yaml:" in missing.stderr and "nowhere: no such folder" in missing.stderr


@pytest.mark.slow
def test_a_code_switching_study_starts_from_a_pretrained_base(tmp_path, tiny_study):
    """The base of a code-switching study imported from a Marian model: scored, not trained; Q_cross
    pretraining and the grid (standard and xlquery) fine-tune it."""
    family = generate_family(FamilySpec(languages=3, sentences=1200, seed=2, valid=60, test=30), tmp_path / "family")
    text = [line for language in ("la", "lb", "lc", "pv")
            for line in (family / f"train.{language}").read_text().splitlines()]
    save_tiny_marian(tmp_path / "opus-mt-mul-pv", text, vocab_size=200)
    study = tiny_study(tmp_path, "codeswitch", pretrain=CODESWITCH_PRETRAIN + "\n  pretrained: opus-mt-mul-pv")
    done = xattn_ray("run", study, "--storage", "st", "--num-cpus", "2", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = ResultsStore(tmp_path / "st" / "results").read(experiment="cs")
    base = rows[rows["stage"] == "base"]
    assert (base["updates"] == 0).all() and (base["pretrained"] == str(tmp_path / "opus-mt-mul-pv")).all()
    tuned = rows[(rows["stage"] == "codeswitch") & (rows["eval"] == "train")]
    assert set(tuned["attention"]) == {"standard", "xlquery"} and (tuned["status"] == "ok").all()
    assert (tuned["updates"] > 0).all() and tuned["pretrained_sha256"].notna().all()
