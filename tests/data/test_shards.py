"""Token shards: built once under a lock however many processes ask, memory-mapped, rebuilt when damaged;
batches, DDP shares and code-switched segment ids over a shard are those over the same pairs in memory,
and training over a shard resumes exactly."""

import dataclasses
import hashlib
import json
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from xattn_ray.data.codeswitch import CodeSwitchOptions, build_training_set, encode_codeswitched
from xattn_ray.data.corpus import training_text
from xattn_ray.data.options import FilterConfig, TrainingSlice
from xattn_ray.data.shards import TokenShard, encoded_shard, pair_shard
from xattn_ray.engine.batching import collate, encode_pairs, make_batches, rank_share
from xattn_ray.engine.model import Transformer, preset_config
from xattn_ray.engine.tokenizer import PAD_ID, Tokenizer
from xattn_ray.engine.train import TrainConfig, TrainingData, train

LINES = 3000


def write_text(root: Path) -> tuple[Path, Path]:
    """Aligned toy files (one empty source line, dropped by cleaning); `toy_tokenizers`' vocabulary."""
    sources = [f"word{i % 37} thing{i % 11} more{i % 5}" + " word3" * (i % 7) for i in range(LINES)]
    sources[10] = ""
    (root / "train.aa").write_text("".join(line + "\n" for line in sources))
    (root / "train.bb").write_text("".join(line.upper() + "\n" for line in sources))
    return root / "train.aa", root / "train.bb"


def shard_of(root: Path, tokenizers, cache: Path) -> TokenShard:
    if not (root / "train.bb").exists():
        write_text(root)
    text = training_text(root / "train.aa", root / "train.bb", TrainingSlice(lines=(0, 2500)), FilterConfig(), cache)
    return pair_shard(text, *tokenizers, 16, cache)


def files_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def build_in_process(root: str, blobs, barrier) -> list[str]:
    """One of the concurrent builders: waits for the others, asks for the shard, returns its log lines."""
    handler = Messages()
    logger = logging.getLogger("xattn_ray.data.shards")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    barrier.wait()
    shard = shard_of(Path(root), [Tokenizer.from_bytes(blob) for blob in blobs], Path(root) / "cache")
    return handler.messages + [files_digest(shard.folder)]


def test_concurrent_builds_build_once_and_agree(tmp_path, toy_tokenizers):
    context = multiprocessing.get_context("spawn")
    blobs = [tokenizer.to_bytes() for tokenizer in toy_tokenizers]
    write_text(tmp_path)
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        results = pool.starmap(build_in_process, [(str(tmp_path), blobs, barrier)] * 4)
    messages = [line for result in results for line in result[:-1]]
    assert sum(line.startswith("shard built: ") for line in messages) == 1, messages
    assert sum(line.startswith("shard reused: ") for line in messages) == 3, messages
    assert len({result[-1] for result in results}) == 1  # the same bytes for everyone
    assert len(list((tmp_path / "cache" / "shards").iterdir())) == 2  # the shard and its lock file


def test_a_shard_holds_the_encoded_pairs(tmp_path, toy_tokenizers, caplog):
    caplog.set_level(logging.INFO, "xattn_ray.data.shards")
    shard = shard_of(tmp_path, toy_tokenizers, tmp_path / "cache")
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard built: ")]
    assert len(built) == 1 and built[0].endswith(f"pairs/s): {shard.folder}")
    sources = [f"word{i % 37} thing{i % 11} more{i % 5}" + " word3" * (i % 7) for i in range(2500)]
    del sources[10]
    reference = encode_pairs(sources, [s.upper() for s in sources], *toy_tokenizers, 16)
    assert len(shard) == len(reference) and shard.tokens.dtype == np.uint16
    assert shard.cleaning == {"kept": 2499, "empty": 1, "too_long": 0, "bad_ratio": 0}
    assert shard.dropped_too_long == reference.dropped_too_long > 0  # `word3` x 4 or more is over 16 pieces
    for index in (0, 1, len(shard) // 2, len(shard) - 1):
        src, tgt, segments = shard.example(index)
        assert src.tolist() == reference.src[index] and tgt.tolist() == reference.tgt[index] and segments is None
    assert all(np.array_equal(a, b) for a, b in zip(shard.lengths(), reference.lengths()))
    batches = make_batches(shard, 300, seed=4, epoch=2)
    assert batches.tolist() == make_batches(reference, 300, seed=4, epoch=2).tolist()
    for ours, theirs in zip(vars(collate(shard, batches[0])).values(), vars(collate(reference, batches[0])).values()):
        assert ours is theirs is None or torch.equal(ours, theirs)


@pytest.mark.parametrize("damage", ["truncated tokens", "bad json", "other format", "missing offsets"])
def test_a_damaged_shard_is_rebuilt_with_a_warning(tmp_path, toy_tokenizers, caplog, damage):
    shard = shard_of(tmp_path, toy_tokenizers, tmp_path / "cache")
    folder, intact = shard.folder, files_digest(shard.folder)
    del shard
    if damage == "truncated tokens":
        data = (folder / "tokens.bin").read_bytes()
        (folder / "tokens.bin").write_bytes(data[: len(data) // 2])
    elif damage == "bad json":
        (folder / "shard.json").write_text("{not json")
    elif damage == "other format":
        info = json.loads((folder / "shard.json").read_text())
        (folder / "shard.json").write_text(json.dumps({**info, "format": 99}))
    else:
        (folder / "offsets.bin").unlink()
    caplog.set_level(logging.INFO, "xattn_ray.data.shards")
    rebuilt = shard_of(tmp_path, toy_tokenizers, tmp_path / "cache")
    assert rebuilt.folder == folder and files_digest(folder) == intact
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is invalid" in warnings[0] and "rebuilding" in warnings[0]


def test_ddp_ranks_read_disjoint_shares_of_each_global_batch(tmp_path, toy_tokenizers):
    shard = shard_of(tmp_path, toy_tokenizers, tmp_path / "cache")
    for batch in make_batches(shard, 400, seed=1, epoch=0).group(0, 20):
        shares = [rank_share(batch, rank, 3) for rank in range(3)]
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
        assert not set(shares[0].tolist()) & set(shares[1].tolist())
        def unpadded(indices) -> list[str]:
            return [str([token for token in row if token != PAD_ID]) for row in collate(shard, indices).src.tolist()]

        assert sorted(sum((unpadded(share) for share in shares if len(share)), [])) == sorted(unpadded(batch))


def test_training_over_a_shard_resumes_exactly(tmp_path, toy_tokenizers):
    shard = shard_of(tmp_path, toy_tokenizers, tmp_path / "cache")
    valid = encode_pairs(["word1 thing2 more3"] * 8, ["WORD1 THING2 MORE3"] * 8, *toy_tokenizers, 16)
    data = TrainingData(shard, valid, *toy_tokenizers)
    config = TrainConfig(lr=3e-3, warmup_updates=5, max_tokens=300, max_updates=6, validate_every=3, patience=0)

    def model() -> Transformer:
        torch.manual_seed(0)
        return Transformer(preset_config("tiny", toy_tokenizers[0].vocab_size, toy_tokenizers[1].vocab_size))

    whole = train(model(), data, config, tmp_path / "whole")
    train(model(), data, dataclasses.replace(config, max_updates=3), tmp_path / "halves")
    resumed = train(model(), data, config, tmp_path / "halves", resume_from=tmp_path / "halves")
    timing = ("train_seconds", "target_tokens_per_second")
    numbers = [[{k: v for k, v in m.items() if k not in timing} for m in r.progress.history] for r in (whole, resumed)]
    assert numbers[0] == numbers[1] and resumed.progress.update == 6


def test_code_switched_examples_keep_their_segment_ids(tmp_path, toy_tokenizers):
    corpus = {"x": [f"word{i % 37} thing{i % 11}" for i in range(300)],
              "y": [f"more{i % 5} word{i % 13}" for i in range(300)],
              "z": [f"WORD{i % 37} THING{i % 11}" for i in range(300)]}
    examples = build_training_set(corpus, "z", CodeSwitchOptions(train_pairs=[("x", "y")]))
    reference = encode_codeswitched(examples, *toy_tokenizers, 24)
    shard = encoded_shard({"test": 1}, lambda: iter([reference]), *toy_tokenizers, 24, tmp_path)
    assert shard.has_segments and len(shard) == len(reference) and shard.dropped_too_long == reference.dropped_too_long
    batch = make_batches(shard, 200, seed=1, epoch=0)[0]
    ours, theirs = collate(shard, batch), collate(reference, batch)
    assert all(torch.equal(getattr(ours, name), getattr(theirs, name))
               for name in ("src", "tgt_in", "tgt_out", "src_segments"))
