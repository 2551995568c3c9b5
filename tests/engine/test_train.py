"""The training loop: determinism, exact resume after a SIGKILL, two DDP workers, early stopping, non-finite
losses."""

import dataclasses
import json
import math
import multiprocessing
import os
import random
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from xattn_ray.engine.batching import EncodedPairs, collate, make_batches
from xattn_ray.engine.checkpoint import load_model
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.policies import POLICIES
from xattn_ray.engine.tokenizer import EOS_ID, PAD_ID
from xattn_ray.engine.train import TrainConfig, TrainingData, learning_rate, train
from xattn_ray.engine.transfer import make_child

VOCAB = 40


def reversal_pairs(n: int, seed: int) -> EncodedPairs:
    """Target = source reversed: learnable, with lengths 3..9 so batches differ in shape."""
    rng = random.Random(seed)
    src = [[rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 10))] for _ in range(n)]
    return EncodedPairs([s + [EOS_ID] for s in src], [s[::-1] + [EOS_ID] for s in src])


def toy_data(toy_tokenizers) -> TrainingData:
    return TrainingData(reversal_pairs(300, 1), reversal_pairs(40, 2), *toy_tokenizers)


def fresh_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset_config("tiny", VOCAB, VOCAB))


CONFIG = TrainConfig(lr=3e-3, warmup_updates=10, max_tokens=200, max_updates=40, validate_every=8, patience=0,
                     seed=3)


TIMING = ("train_seconds", "target_tokens_per_second")


def numbers(history: list[dict]) -> list[dict]:
    """Metrics without wall-clock figures, which differ between identical runs."""
    return [{k: v for k, v in metrics.items() if k not in TIMING} for metrics in history]


class Recorder:
    def __init__(self):
        self.calls = []

    def report(self, metrics, checkpoint_dir):
        self.calls.append((metrics, checkpoint_dir))


def test_batches_respect_max_tokens_and_depend_only_on_seed_and_epoch():
    pairs = reversal_pairs(300, 1)
    batches = make_batches(pairs, max_tokens=100, seed=1, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    for batch in batches:
        tensors = collate(pairs, batch)
        assert tensors.src.numel() <= 100 and tensors.tgt_out.numel() <= 100
    assert make_batches(pairs, 100, seed=1, epoch=0).tolist() == batches.tolist()
    assert make_batches(pairs, 100, seed=1, epoch=1).tolist() != batches.tolist()
    first = collate(pairs, batches[0])
    assert (first.tgt_in[:, 0] == 1).all() and torch.equal(first.tgt_in[:, 1:] != PAD_ID,
                                                           first.tgt_out[:, :-1] != PAD_ID)


def test_learning_rate_schedules():
    config = TrainConfig(lr=1e-3, warmup_updates=100, warmup_init_lr=0.0)
    assert learning_rate(config, 50) == pytest.approx(5e-4)
    assert learning_rate(config, 100) == pytest.approx(1e-3)
    assert learning_rate(config, 400) == pytest.approx(5e-4)  # inverse sqrt: sqrt(100/400)
    poly = TrainConfig(lr=1e-3, warmup_updates=100, warmup_init_lr=0.0, schedule="polynomial", max_updates=300)
    assert learning_rate(poly, 200) == pytest.approx(5e-4) and learning_rate(poly, 300) == pytest.approx(0.0)


def test_training_learns_reports_and_is_deterministic(tmp_path, toy_tokenizers):
    recorder = Recorder()
    first = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, tmp_path / "a", recorder)
    second = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, tmp_path / "b")
    assert first.stop_reason == "max_updates" and first.progress.update == 40
    assert [m["update"] for m, _ in recorder.calls] == [8, 16, 24, 32, 40]
    assert all(directory == tmp_path / "a" for _, directory in recorder.calls)
    losses = [m["valid_loss"] for m, _ in recorder.calls]
    assert losses[-1] < losses[0] < math.log(VOCAB) + 1
    assert numbers(first.progress.history) == numbers(second.progress.history)  # same seed, same numbers
    best = load_model(first.best_checkpoint)
    assert best.extra["update"] == first.progress.best_update


def run_until_killed(workdir: str, tokenizer_blobs) -> None:
    """Child process: the same training, to be killed mid-run (same thread count: same float sums)."""
    from xattn_ray.engine.tokenizer import Tokenizer

    tokenizers = tuple(Tokenizer.from_bytes(blob) for blob in tokenizer_blobs)
    train(fresh_model(), toy_data(tokenizers), CONFIG, Path(workdir))


def test_killed_run_resumes_to_the_same_result(tmp_path, toy_tokenizers):
    reference = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, tmp_path / "reference")
    workdir = tmp_path / "killed"
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_until_killed,
                              args=(str(workdir), [t.to_bytes() for t in toy_tokenizers]))
    process.start()
    deadline = time.monotonic() + 120
    while not (workdir / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # at an arbitrary moment after the first checkpoint
    process.join()
    assert (workdir / "last.pt").exists()
    resumed = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, workdir, resume_from=workdir)
    assert resumed.progress.update == 40
    assert numbers(resumed.progress.history) == numbers(reference.progress.history)
    final = load_model(workdir / "best.pt").model.state_dict()
    for name, value in load_model(reference.best_checkpoint).model.state_dict().items():
        assert torch.equal(final[name], value), name


# Two workers splitting each global batch of CONFIG's size: one validation halfway, one at the end.
SPLIT_CONFIG = dataclasses.replace(CONFIG, max_updates=8, validate_every=4)


def model_without_dropout() -> Transformer:
    """The same start every time; without dropout, one and two workers compute the same updates."""
    torch.manual_seed(0)
    return Transformer(preset_config("tiny", VOCAB, VOCAB, dropout=0.0, attention_dropout=0.0))


def train_as_one_of_two_workers(rank: int, rendezvous: str, workdir: str, tokenizer_blobs) -> None:
    """Child process: worker `rank` of 2 (gloo, DDP), half of every global batch; rank 0 writes what
    the run reported to workdir/progress.json."""
    from torch.nn.parallel import DistributedDataParallel

    from xattn_ray.engine.tokenizer import Tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        tokenizers = tuple(Tokenizer.from_bytes(blob) for blob in tokenizer_blobs)
        config = dataclasses.replace(SPLIT_CONFIG, max_tokens=SPLIT_CONFIG.max_tokens // 2)
        result = train(DistributedDataParallel(model_without_dropout()), toy_data(tokenizers), config, Path(workdir))
        if rank == 0:
            (Path(workdir) / "progress.json").write_text(json.dumps(
                {"history": result.progress.history, "target_tokens": result.progress.target_tokens}))
    finally:
        dist.destroy_process_group()


def test_two_workers_report_the_losses_and_token_count_of_one(tmp_path, toy_tokenizers):
    """Two CPU workers (gloo) over the same global batches report one worker's train and validation
    losses and target tokens (only the order of float sums differs)."""
    one = train(model_without_dropout(), toy_data(toy_tokenizers), SPLIT_CONFIG, tmp_path / "one")
    torch.multiprocessing.spawn(train_as_one_of_two_workers, nprocs=2, args=(
        str(tmp_path / "rendezvous"), str(tmp_path / "two"), [t.to_bytes() for t in toy_tokenizers]))
    two = json.loads((tmp_path / "two" / "progress.json").read_text())
    assert two["target_tokens"] == one.progress.target_tokens
    assert [m["update"] for m in two["history"]] == [m["update"] for m in one.progress.history] == [4, 8]
    for split, whole in zip(two["history"], one.progress.history):
        assert split["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
        assert split["valid_loss"] == pytest.approx(whole["valid_loss"], rel=1e-5)


def test_early_stopping_after_patience_validations_without_improvement(tmp_path, toy_tokenizers):
    config = TrainConfig(lr=1e-20, warmup_updates=1, max_tokens=200, max_updates=1000, validate_every=2,
                         patience=3)
    result = train(fresh_model(), toy_data(toy_tokenizers), config, tmp_path)
    assert result.stop_reason == "early_stopping"
    assert result.progress.update == 8 and result.progress.best_update == 2  # 1 improvement + 3 without


def test_max_epochs(tmp_path, toy_tokenizers):
    config = TrainConfig(lr=1e-3, warmup_updates=5, max_tokens=400, max_epochs=2, validate_every=1000, patience=0)
    result = train(fresh_model(), toy_data(toy_tokenizers), config, tmp_path)
    per_epoch = len(make_batches(reversal_pairs(300, 1), 400, seed=1, epoch=0))
    assert result.stop_reason == "max_epochs" and result.progress.update == 2 * per_epoch
    assert len(result.progress.history) == 1  # the final validation


def test_non_finite_loss_stops_with_a_reason(tmp_path, toy_tokenizers):
    model = fresh_model()
    with torch.no_grad():
        model.decoder.final_norm.weight.fill_(float("nan"))
    result = train(model, toy_data(toy_tokenizers), CONFIG, tmp_path)
    assert result.failed and result.stop_reason.startswith("non-finite loss (nan) at update 1")


def test_optimizer_steps_only_trainable_parameters(tmp_path, toy_tokenizers):
    parent = fresh_model()
    child = make_child(parent, "target", VOCAB, POLICIES["xattn"], "xattn")
    before = {n: p.detach().clone() for n, p in child.model.named_parameters()}
    train(child.model, toy_data(toy_tokenizers), CONFIG, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    trainable_count = sum(1 for p in child.model.parameters() if p.requires_grad)
    assert len(state["optimizer"]["state"]) == trainable_count
    for name, p in child.model.named_parameters():
        assert torch.equal(p, before[name]) == (name not in child.trainable), name


def test_resuming_a_finished_run_does_no_more_updates(tmp_path, toy_tokenizers):
    first = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, tmp_path)
    again = train(fresh_model(), toy_data(toy_tokenizers), CONFIG, tmp_path, resume_from=tmp_path)
    assert again.progress.update == first.progress.update == 40
    assert numbers(again.progress.history) == numbers(first.progress.history)


def child_of_saved_parent(tmp_path, toy_tokenizers):
    """(the parent's saved checkpoint, an `xattn` child of it with a new source side)."""
    from xattn_ray.engine.checkpoint import save_model

    parent_file = tmp_path / "parent" / "best.pt"
    save_model(parent_file, fresh_model(), *toy_tokenizers)
    torch.manual_seed(5)
    child = make_child(load_model(parent_file).model, "source", VOCAB, POLICIES["xattn"], "xattn").model
    return parent_file, child


def test_a_delta_checkpoint_holds_only_what_differs_and_resumes_exactly(tmp_path, toy_tokenizers):
    from xattn_ray.engine.checkpoint import delta_base, read_checkpoint

    parent_file, child = child_of_saved_parent(tmp_path, toy_tokenizers)
    reference = train(child, toy_data(toy_tokenizers), CONFIG, tmp_path / "full")
    parent_file, child = child_of_saved_parent(tmp_path, toy_tokenizers)
    short = dataclasses.replace(CONFIG, max_updates=24)
    train(child, toy_data(toy_tokenizers), short, tmp_path / "delta", base=delta_base(parent_file))
    for name in ("best.pt", "last.pt"):  # the stored tensors: the new source embeddings and the xattn group
        payload = read_checkpoint(tmp_path / "delta" / name, ())
        stored = payload["state_dict" if name == "best.pt" else "model"]
        assert payload["base"]["sha256"] and all(n.startswith("src_embed.") or ".cross_attn" in n for n in stored)
    _, resumed_child = child_of_saved_parent(tmp_path, toy_tokenizers)
    resumed = train(resumed_child, toy_data(toy_tokenizers), CONFIG, tmp_path / "delta", resume_from=tmp_path / "delta",
                    base=delta_base(parent_file))
    assert numbers(resumed.progress.history) == numbers(reference.progress.history)
    final = load_model(tmp_path / "delta" / "best.pt").model.state_dict()
    for name, value in load_model(reference.best_checkpoint).model.state_dict().items():
        assert torch.equal(final[name], value), name
