"""Checkpoints a user may hand over: every damaged or foreign file is one CheckpointError naming it.

A real tiny checkpoint is saved once; each case writes a corrupted copy (bytes cut off, keys removed,
shapes or config changed, objects no checkpoint holds) and loads it as `translate`, `stitch` and the
runs do, or resumes training from it as `--resume` does.
"""

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from xattn_ray.engine.checkpoint import CheckpointError, load_model, save_model
from xattn_ray.engine.batching import EncodedPairs
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import EOS_ID
from xattn_ray.engine.train import LAST_CHECKPOINT, TrainConfig, TrainingData, train


@pytest.fixture(scope="module")
def good(tmp_path_factory, toy_tokenizers) -> Path:
    """A real checkpoint of a tiny model with the toy tokenizers."""
    src, tgt = toy_tokenizers
    path = tmp_path_factory.mktemp("checkpoint") / "good.pt"
    save_model(path, Transformer(preset_config("tiny", src.vocab_size, tgt.vocab_size)), src, tgt, {"run": "x"})
    return path


def edited(good: Path, change) -> dict:
    """The good checkpoint's payload after `change(payload)`."""
    payload = torch.load(good, weights_only=True)
    change(payload)
    return payload


def widened(payload: dict) -> None:
    """The config of a wider model than the weights: every tensor has the wrong shape."""
    payload["model_config"].update(d_model=64, ffn_dim=128)


def without_first_weight(payload: dict) -> None:
    payload["state_dict"].pop("src_embed.tokens.weight")


def with_junk_tokenizer(payload: dict) -> None:
    payload["tokenizers"]["source"]["model"] = b"not a sentencepiece model"


# name -> (how the file is made from the good checkpoint's bytes and payload, what the error says)
CASES = {
    "truncated": (lambda good, path: path.write_bytes(good.read_bytes()[:5000]), "a torch file cut short or damaged"),
    "empty": (lambda good, path: path.write_bytes(b""), "empty file, not a checkpoint"),
    "text": (lambda good, path: path.write_text("hello\n"), "not a file that torch.save wrote"),
    "folder": (lambda good, path: path.mkdir(), "a folder, not a checkpoint file"),
    "missing": (lambda good, path: None, "checkpoint not found"),
    "foreign object": (lambda good, path: torch.save({"state_dict": Path("x")}, path),
                       "refused: it holds a `pathlib.PosixPath` object, which no checkpoint holds"),
    "plain pickle": (lambda good, path: path.write_bytes(pickle.dumps({"x": Path("a")}, protocol=4)),
                     "not a readable checkpoint: not a file that torch.save wrote"),
    "a list": (lambda good, path: torch.save([1, 2], path), "it holds a list, not a dict"),
    "no format": (lambda good, path: torch.save({"model": {}}, path), "no format (it holds 'model')"),
    "other format": (lambda good, path: torch.save(edited(good, lambda p: p.update(format=7)), path), "format 7"),
    "no state_dict": (lambda good, path: torch.save(edited(good, lambda p: p.pop("state_dict")), path),
                      "no state_dict in the checkpoint"),
    "config not a dict": (lambda good, path: torch.save(edited(good, lambda p: p.update(model_config=[3])), path),
                          "model_config is a list, not a dict"),
    "unknown config field": (lambda good, path: torch.save(
        edited(good, lambda p: p["model_config"].update(colour="red")), path), "unknown fields: colour"),
    "config lacks a field": (lambda good, path: torch.save(
        edited(good, lambda p: p["model_config"].pop("src_vocab_size")), path), "model_config lacks src_vocab_size"),
    "config value of a wrong type": (lambda good, path: torch.save(
        edited(good, lambda p: p["model_config"].update(d_model="32")), path), "d_model must be a number, got '32'"),
    "heads do not divide": (lambda good, path: torch.save(
        edited(good, lambda p: p["model_config"].update(heads=3)), path), "model_config: heads"),
    "negative size": (lambda good, path: torch.save(
        edited(good, lambda p: p["model_config"].update(ffn_dim=-8)), path), "model_config: ffn_dim"),
    "wrong shapes": (lambda good, path: torch.save(edited(good, widened), path),
                     "state_dict does not fit the model: 96 of the wrong shape (first: src_embed.tokens.weight (60, 32) "
                     "instead of (60, 64))"),
    "missing weight": (lambda good, path: torch.save(edited(good, without_first_weight), path),
                       "1 missing (first: src_embed.tokens.weight)"),
    "junk tokenizer": (lambda good, path: torch.save(edited(good, with_junk_tokenizer), path),
                       "tokenizers.source: not a SentencePiece model"),
    "no tokenizers": (lambda good, path: torch.save(edited(good, lambda p: p.update(tokenizers={})), path),
                      "tokenizers.source is missing or malformed"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_checkpoint_is_one_line_naming_the_file(case, good, tmp_path):
    make, expected = CASES[case]
    path = tmp_path / "bad.pt"
    make(good, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warnings about foreign files would be a second line
        with pytest.raises(CheckpointError) as info:
            load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "weights_only" not in message  # torch's advice to load the file unsafely is not repeated
    assert expected in message


def test_the_good_checkpoint_loads(good):
    loaded = load_model(good)
    assert loaded.extra == {"run": "x"} and loaded.src_tokenizer.language == "aa"


def test_checkpoint_that_cannot_be_written_is_one_line(good, tmp_path):
    (tmp_path / "a-file").write_text("")
    loaded = load_model(good)
    with pytest.raises(CheckpointError, match=r"^cannot write .*a-file/m\.pt: ") as info:
        save_model(tmp_path / "a-file" / "m.pt", loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer)
    assert "\n" not in str(info.value)
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="cannot write"):
        save_model(tmp_path / "folder.pt", loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer)
    assert list((tmp_path / "folder.pt").iterdir()) == []  # no temporary file left beside or inside


# -- resuming training from a damaged last.pt ---------------------------------------------------

VOCAB = 40


def reversal_pairs(n: int) -> EncodedPairs:
    """Target = source reversed, every sentence the same few ids."""
    sources = [[4 + (i + j) % (VOCAB - 4) for j in range(3 + i % 5)] for i in range(n)]
    return EncodedPairs([s + [EOS_ID] for s in sources], [s[::-1] + [EOS_ID] for s in sources])


def fresh_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset_config("tiny", VOCAB, VOCAB))


RESUME = TrainConfig(lr=3e-3, warmup_updates=2, max_tokens=200, max_updates=4, validate_every=2, patience=0, seed=3)


@pytest.fixture(scope="module")
def last_checkpoint(tmp_path_factory, toy_tokenizers) -> Path:
    """A real `last.pt` from a few updates of the training loop."""
    workdir = tmp_path_factory.mktemp("resume")
    train(fresh_model(), TrainingData(reversal_pairs(60), reversal_pairs(10), *toy_tokenizers), RESUME, workdir)
    return workdir / LAST_CHECKPOINT


def other_model_state(last: Path, path: Path) -> None:
    """A training state whose weights belong to a wider model."""
    state = torch.load(last, weights_only=True)
    state["model"] = Transformer(preset_config("tiny", VOCAB, VOCAB, d_model=64, ffn_dim=128)).state_dict()
    torch.save(state, path)


RESUME_CASES = {
    "truncated": (lambda last, path: path.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2]),
                  "a torch file cut short or damaged"),
    "a model checkpoint": (lambda last, path: path.write_bytes((last.parent / "best.pt").read_bytes()),
                           "no model, optimizer, progress, torch_rng in the checkpoint"),
    "another model": (other_model_state, "model does not fit the model: "),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resuming_from_a_bad_last_checkpoint_is_one_line(case, last_checkpoint, tmp_path, toy_tokenizers):
    make, expected = RESUME_CASES[case]
    folder = tmp_path / "run"
    folder.mkdir()
    make(last_checkpoint, folder / LAST_CHECKPOINT)
    before = sorted(folder.iterdir())
    with pytest.raises(CheckpointError) as info:
        train(fresh_model(), TrainingData(reversal_pairs(60), reversal_pairs(10), *toy_tokenizers), RESUME,
              folder, resume_from=folder)
    message = str(info.value)
    assert message.startswith(f"{folder / LAST_CHECKPOINT}: ") and expected in message and "\n" not in message
    assert sorted(folder.iterdir()) == before  # nothing trained, nothing written


def test_a_delta_checkpoint_follows_its_parent_and_refuses_a_changed_or_missing_one(tmp_path, toy_tokenizers):
    import shutil

    from xattn_ray.engine.checkpoint import delta_base
    from xattn_ray.engine.policies import POLICIES
    from xattn_ray.engine.transfer import make_child

    torch.manual_seed(0)
    parent = Transformer(preset_config("base", 8000, 8000))
    save_model(tmp_path / "runs" / "parent" / "best.pt", parent, *toy_tokenizers)
    child = make_child(parent, "source", 8000, POLICIES["xattn"], "xattn").model
    with torch.no_grad():
        for name, tensor in child.named_parameters():
            if tensor.requires_grad:
                tensor.add_(0.01)  # as if trained
    delta_file = tmp_path / "runs" / "child" / "best.pt"
    save_model(delta_file, child, *toy_tokenizers, base=delta_base(tmp_path / "runs" / "parent" / "best.pt"))
    save_model(tmp_path / "full.pt", child, *toy_tokenizers)
    # An xattn child of `base` stores its new source embeddings and cross-attention: a fifth of the file
    # (44 MB of 214 MB).
    share = delta_file.stat().st_size / (tmp_path / "full.pt").stat().st_size
    assert 0.15 < share < 0.22, share
    # The whole storage folder moves: the parent is found beside it (a relative path), bit for bit.
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    loaded = load_model(tmp_path / "moved" / "child" / "best.pt").model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in child.state_dict().items())
    # A changed parent is refused, in one line naming the delta
    save_model(tmp_path / "moved" / "parent" / "best.pt", Transformer(preset_config("tiny", 80, 80)), *toy_tokenizers)
    with pytest.raises(CheckpointError) as changed:
        load_model(tmp_path / "moved" / "child" / "best.pt")
    assert str(changed.value).startswith(f"{tmp_path / 'moved' / 'child' / 'best.pt'}: its parent checkpoint")
    assert "changed since this delta was written" in str(changed.value) and "\n" not in str(changed.value)
    (tmp_path / "moved" / "parent" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match="a delta checkpoint whose parent checkpoint is missing"):
        load_model(tmp_path / "moved" / "child" / "best.pt")
