"""Token shards: a run's training data encoded once, on disk, memory-mapped by every trial that reads it.

A shard is a folder `CACHE/shards/<key>/`, in the layout of Megatron's and fairseq's indexed datasets
(a flat file of token ids and an index of offsets and sizes), written with plain numpy:

    tokens.bin       [T] uint16 (uint32 when a vocabulary has more than 65536 pieces): per example, the
                     source ids (ending with EOS) then the target ids (ending with EOS)
    offsets.bin      [N+1] int64: example i is tokens[offsets[i]:offsets[i+1]]
    src_lengths.bin  [N] int32, tgt_lengths.bin [N] int32: lengths with EOS (all that batching reads)
    segments.bin     [T] int8, code-switched examples only: the segment id of each source token (target
                     positions hold PADDING), beside tokens.bin
    shard.json       format version, dtype, counts and byte sizes, what cleaning dropped, the key's inputs

Its key is the sha256 of everything that determines the tokens: the text's identity (file digests and
slice bounds, or the examples' recipe), the cleaning filters, `max_positions` and both tokenizers' model
bytes. The first process to need a shard builds it under a file lock, in blocks of `BLOCK` examples
(SentencePiece encodes each block on all cores), into a temporary folder renamed into place; the others
wait, then map it. A shard whose files disagree with its `shard.json` (a truncated copy, another format)
is rebuilt, with a warning. About 2 bytes per token (uint16) and 16 bytes per example on disk; in memory
only the pages being read.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from xattn_ray.data.corpus import TrainingText, cleaning_report
from xattn_ray.engine.batching import EncodedPairs, encode_pairs
from xattn_ray.engine.structured_dropout import PADDING
from xattn_ray.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout or the encoding changes: old shards are then rebuilt under new keys
BLOCK = 50_000  # examples encoded and appended at once: bounds the text and ids held while building
_ARRAYS = {"tokens": "tokens.bin", "offsets": "offsets.bin", "src_lengths": "src_lengths.bin",
           "tgt_lengths": "tgt_lengths.bin"}


class TokenShard:
    """A built shard, memory-mapped: the `engine.batching.PairSource` of a run's training data.

    Reading example i touches only its pages; pickling sends the folder, not the arrays (Ray workers
    map the same files).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.info = _read_info(folder)
        if problem := _problem(folder, self.info):
            raise _InvalidShard(problem)
        dtype = np.dtype(self.info["dtype"])
        self.tokens = _map(folder / _ARRAYS["tokens"], dtype)
        self.offsets = _map(folder / _ARRAYS["offsets"], np.int64)
        self.src_lengths = _map(folder / _ARRAYS["src_lengths"], np.int32)
        self.tgt_lengths = _map(folder / _ARRAYS["tgt_lengths"], np.int32)
        self.segments = _map(folder / "segments.bin", np.int8) if self.info["segments"] else None
        self.dropped_too_long: int = self.info["dropped_too_long"]

    def __reduce__(self):
        return TokenShard, (self.folder,)

    def __len__(self) -> int:
        return self.info["examples"]

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return self.src_lengths, self.tgt_lengths

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        start, src_len, tgt_len = int(self.offsets[index]), int(self.src_lengths[index]), int(self.tgt_lengths[index])
        middle = start + src_len
        segments = None if self.segments is None else self.segments[start:middle]
        return self.tokens[start:middle], self.tokens[middle:middle + tgt_len], segments

    @property
    def has_segments(self) -> bool:
        return self.segments is not None

    @property
    def cleaning(self) -> dict:
        """What cleaning dropped while the shard was built: {"kept", "empty", "too_long", "bad_ratio"}."""
        return self.info["cleaning"]


def pair_shard(text: TrainingText, src_tok: Tokenizer, tgt_tok: Tokenizer, max_positions: int,
               cache_dir: Path) -> TokenShard:
    """The shard of a training slice of sentence pairs: cleaned, encoded, too-long pairs dropped."""
    key = {"kind": "pairs", "text": text.identity, "max_positions": max_positions,
           "tokenizers": [_model_digest(src_tok), _model_digest(tgt_tok)]}

    def fill(writer: _Writer) -> dict:
        faults: collections.Counter = collections.Counter()
        kept = 0
        for block in _blocks(text.pairs(faults), BLOCK):
            kept += len(block)
            writer.append(encode_pairs([src for src, _ in block], [tgt for _, tgt in block], src_tok, tgt_tok,
                                       max_positions))
        report = cleaning_report(kept, faults, text.origin)
        if report.empty or report.too_long or report.bad_ratio:
            log.info("%s: dropped %d empty, %d too long, %d bad length ratio; kept %d training pairs",
                     text.origin, report.empty, report.too_long, report.bad_ratio, report.kept)
        return {"kept": report.kept, "empty": report.empty, "too_long": report.too_long,
                "bad_ratio": report.bad_ratio}

    return _shard(cache_dir, key, max(src_tok.vocab_size, tgt_tok.vocab_size), fill)


def encoded_shard(recipe: dict, blocks: Callable[[], Iterator[EncodedPairs]], src_tok: Tokenizer,
                  tgt_tok: Tokenizer, max_positions: int, cache_dir: Path) -> TokenShard:
    """The shard of examples that the caller encodes (code-switched and one-segment examples, with segment
    ids): `recipe` identifies them (corpus digests, slice, options), `blocks` yields them, encoded with
    these tokenizers for `max_positions`, and is called only when the shard must be built."""
    key = {"kind": "encoded", "recipe": recipe, "max_positions": max_positions,
           "tokenizers": [_model_digest(src_tok), _model_digest(tgt_tok)]}

    def fill(writer: _Writer) -> dict:
        offered = 0
        for block in blocks():
            offered += len(block) + block.dropped_too_long
            writer.append(block)
        return {"kept": offered, "empty": 0, "too_long": 0, "bad_ratio": 0}

    return _shard(cache_dir, key, max(src_tok.vocab_size, tgt_tok.vocab_size), fill)


def _model_digest(tokenizer: Tokenizer) -> str:
    """What fixes a tokenizer's ids: its SentencePiece model, and the piece list of an imported one."""
    digest = hashlib.sha256(tokenizer.to_bytes()["model"])
    if tokenizer.vocabulary is not None:
        digest.update("\n".join(tokenizer.vocabulary).encode())
    return digest.hexdigest()


def _blocks(items: Iterator, size: int) -> Iterator[list]:
    while block := list(itertools.islice(items, size)):
        yield block


def _shard(cache_dir: Path, key: dict, vocab_size: int, fill: Callable[[_Writer], dict]) -> TokenShard:
    """The shard of `key`, mapped; built by `fill` under the key's lock when it is missing or invalid."""
    identity = {"format": FORMAT, **key}
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    shards = cache_dir / "shards"
    folder = shards / name
    with contextlib.suppress(_InvalidShard):  # the common case, without waiting on the lock
        shard = TokenShard(folder)
        log.info("shard reused: %s", folder)
        return shard
    shards.mkdir(parents=True, exist_ok=True)
    with open(shards / f"{name}.lock", "a") as lock:  # the lock file stays: see engine.tokenizer's cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shard = TokenShard(folder)  # built by another process while this one waited
            log.info("shard reused: %s", folder)
            return shard
        except _InvalidShard as invalid:
            if folder.exists():
                log.warning("shard %s is invalid (%s); rebuilding it", folder, invalid)
                _remove(folder)
        started = time.perf_counter()
        temporary = Path(tempfile.mkdtemp(dir=shards, prefix=f".{name}-"))
        writer = _Writer(temporary, np.uint16 if vocab_size <= 1 << 16 else np.uint32)
        try:
            writer.finish(fill(writer), identity)
            os.rename(temporary, folder)
        finally:
            writer.close()
            shutil.rmtree(temporary, ignore_errors=True)
    shard = TokenShard(folder)
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in folder.iterdir())
    log.info("shard built: %d pairs, %d tokens, %d bytes in %.1f s (%.0f pairs/s): %s", len(shard),
             len(shard.tokens), size, seconds, len(shard) / max(seconds, 1e-9), folder)
    return shard


def _remove(folder: Path) -> None:
    """Move an invalid shard aside, then delete it (a reader that mapped it keeps its open files)."""
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-invalid-"))
    os.rename(folder, aside / folder.name)
    shutil.rmtree(aside, ignore_errors=True)


class _Writer:
    """Appends encoded blocks to the files of a shard being built (module docstring: the layout)."""

    def __init__(self, folder: Path, dtype: type) -> None:
        self.folder, self.dtype = folder, np.dtype(dtype)
        self.files = {name: open(folder / file, "wb") for name, file in _ARRAYS.items()}
        self.segments = None
        self.examples = self.total = self.dropped = 0
        self.files["offsets"].write(np.zeros(1, np.int64).tobytes())

    def append(self, block: EncodedPairs) -> None:
        self.dropped += block.dropped_too_long
        if not len(block):
            return
        src_len, tgt_len = (np.array(lengths, dtype=np.int32) for lengths in block.lengths())
        sizes = src_len.astype(np.int64) + tgt_len
        tokens = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(zip(block.src, block.tgt))),
                             self.dtype, int(sizes.sum()))
        self.files["tokens"].write(tokens.tobytes())
        self.files["offsets"].write((self.total + np.cumsum(sizes)).tobytes())
        self.files["src_lengths"].write(src_len.tobytes())
        self.files["tgt_lengths"].write(tgt_len.tobytes())
        if block.segments is not None:
            if self.segments is None:
                if self.examples:
                    raise ValueError("a shard's examples all have segment ids or none do")
                self.segments = open(self.folder / "segments.bin", "wb")
            pads = ([PADDING] * len(tgt) for tgt in block.tgt)
            ids = itertools.chain.from_iterable(itertools.chain.from_iterable(zip(block.segments, pads)))
            self.segments.write(np.fromiter(ids, np.int8, len(tokens)).tobytes())
        self.examples += len(block)
        self.total += len(tokens)

    def close(self) -> None:
        for file in [*self.files.values(), *([self.segments] if self.segments else [])]:
            file.close()

    def finish(self, cleaning: dict, identity: dict) -> None:
        """Close the arrays and write `shard.json` (sizes that `_problem` checks on every open)."""
        self.close()
        info = {"format": FORMAT, "dtype": self.dtype.name, "examples": self.examples, "tokens": self.total,
                "segments": self.segments is not None, "dropped_too_long": self.dropped, "cleaning": cleaning,
                "bytes": {file.name: file.stat().st_size for file in sorted(self.folder.iterdir())},
                "key": identity}
        (self.folder / "shard.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


class _InvalidShard(Exception):
    """A shard folder that is missing or does not match its `shard.json`."""


def _read_info(folder: Path) -> dict:
    try:
        info = json.loads((folder / "shard.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _InvalidShard("no shard.json") from None
    except (OSError, ValueError) as err:
        raise _InvalidShard(f"unreadable shard.json: {err}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise _InvalidShard(f"format {info.get('format') if isinstance(info, dict) else '?'}, expected {FORMAT}")
    return info


def _problem(folder: Path, info: dict) -> str | None:
    """Why the files do not match `shard.json` (truncated, foreign), or None."""
    try:
        count, total, dtype = int(info["examples"]), int(info["tokens"]), np.dtype(info["dtype"])
        expected = {"tokens.bin": total * dtype.itemsize, "offsets.bin": (count + 1) * 8,
                    "src_lengths.bin": count * 4, "tgt_lengths.bin": count * 4}
        if info["segments"]:
            expected["segments.bin"] = total
        recorded = dict(info["bytes"])
        if missing := {"dropped_too_long", "cleaning"} - info.keys():
            return f"shard.json lacks {sorted(missing)}"
    except (KeyError, TypeError, ValueError) as err:
        return f"shard.json lacks or garbles {err}"
    for name, size in expected.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size or recorded.get(name) != size:
            return f"{name} has {actual} bytes, expected {size}"
    return None


def _map(path: Path, dtype) -> np.ndarray:
    """A read-only memory map of a flat array file (an empty file maps to an empty array)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")
