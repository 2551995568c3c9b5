"""Subword tokenizers: one SentencePiece BPE model per language, trained once and cached on disk.

Every language has its own vocabulary (separate source and target vocabularies, as in Gheini et al.
2021), trained on that language's training text and shared by every language pair that uses it. A
model is cached under a hash of its text and options, so all trials of an experiment grid, in any
number of processes, reuse one model.

The vocabulary size is an integer or `"auto"`: the largest size at which at least 95% of the learned
subword types occur at least 100 times in the training text (Gowda & May 2020, "Finding the optimal
vocabulary size for neural machine translation"), so that the model sees enough examples of every type.

Text round-trips: byte fallback spells any character outside the vocabulary as UTF-8 bytes, and the
identity normalisation keeps characters as they are, so `decode(encode(lines)) == lines` except that
runs of spaces collapse to one and leading and trailing spaces are dropped.

The training text may be far larger than memory (tens of millions of sentences): it is streamed, never
held whole. One pass hashes it for the cache key; only on a cache miss does a second pass draw the
sample that is trained on, at most `max_sentences` (default 2M) lines evenly spaced through the text,
written to a file. The `auto` search trains and counts pieces on that same sample. SentencePiece trains
in a child process (`spm_training.py`), so its memory goes back to the system when it is done.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from xattn_ray.engine import spm_training
from xattn_ray.errors import ConfigError, DataError
from xattn_ray.files import write_atomically
from xattn_ray.schema import Invalid

logger = logging.getLogger(__name__)

# The same special ids in every model, so batching and decoding code never asks a tokenizer.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

WORD_START = "\u2581"  # "▁": SentencePiece's mark on a piece that begins a word

# Sizes tried by `vocab_size: auto`, about four steps per doubling from 200 to 64000. The small end
# matters: on 20k Multi30k sentences the criterion holds only up to about 250 pieces.
AUTO_VOCAB_SIZE_CANDIDATES = (
    200, 250, 300, 350, 420, 500, 600, 700, 850, 1000, 1200, 1400, 1700, 2000, 2400, 2800, 3400, 4000, 4800, 5600, 6800,
    8000, 9500, 11000, 13500, 16000, 19000, 22500, 27000, 32000, 38000, 45000, 54000, 64000,
)

# The trainer stores its thread count in the model, so a fixed count keeps models byte-identical
# across machines; it does not change the pieces learned.
_TRAINER_THREADS = 8
_ENCODE_BATCH = 50_000  # sentences encoded at once when counting pieces, to bound memory
_CACHE_FORMAT = 2  # bump when a change here makes cached models stale


@dataclass(frozen=True)
class TokenizerOptions:
    """SentencePiece options shared by every language of an experiment (the `tokenizer:` section)."""

    vocab_size: int | str = "auto"  # pieces per language, or "auto" (Gowda & May 2020)
    auto_min_count: int = 100  # "auto": a type is frequent when it occurs this many times ...
    auto_type_share: float = 0.95  # ... and at least this share of the types must be frequent
    character_coverage: float = 1.0  # share of character occurrences with their own piece
    # Unknown characters as UTF-8 byte pieces (exact round trip of any text) instead of UNK; costs 256
    # pieces, a large part of the small vocabularies that Multi30k-sized data gets.
    byte_fallback: bool = False
    max_sentences: int = 2_000_000  # train on at most this many sentences, evenly spaced through the text

    def __post_init__(self) -> None:
        if self.vocab_size != "auto" and not _is_positive_int(self.vocab_size):
            raise Invalid("vocab_size", f'must be a positive integer or "auto", got {self.vocab_size!r}')
        if not _is_positive_int(self.auto_min_count):
            raise Invalid("auto_min_count", "must be at least 1")
        if not 0 < self.auto_type_share <= 1:
            raise Invalid("auto_type_share", "must be in (0, 1]")
        if not 0 < self.character_coverage <= 1:
            raise Invalid("character_coverage", "must be in (0, 1]")
        if not _is_positive_int(self.max_sentences):
            raise Invalid("max_sentences", "must be at least 1")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class Tokenizer:
    """A trained subword model of one language: batched encoding and decoding, and its vocabulary.

    `metadata` records how the model was made (options, chosen size, the `auto` search, text hash).

    A tokenizer imported with a pretrained model (`pretrained.py`) keeps the model's own `vocabulary`:
    SentencePiece only cuts text into pieces, and the vocabulary (pieces by id, PAD BOS EOS UNK first)
    gives their ids; a piece it lacks is UNK. Marian's vocabularies work this way, one list shared by
    the languages of a model.
    """

    def __init__(self, language: str, model: bytes, metadata: dict, vocabulary: Sequence[str] | None = None) -> None:
        self.language = language
        self.metadata = metadata
        self._model = model
        self._processor = spm.SentencePieceProcessor(model_proto=model)
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self._ids = None if vocabulary is None else {piece: index for index, piece in enumerate(vocabulary)}
        self.vocab_size: int = self._processor.get_piece_size() if vocabulary is None else len(vocabulary)

    def __repr__(self) -> str:
        return f"Tokenizer(language={self.language!r}, vocab_size={self.vocab_size})"

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids of each line, without BOS or EOS (the model adds those)."""
        if self._ids is None:
            return self._processor.encode(list(lines))
        return [[self._ids.get(piece, UNK_ID) for piece in pieces]
                for pieces in self._processor.encode(list(lines), out_type=str)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenised text of each id sequence, read up to its first EOS, ignoring PAD and BOS."""
        batch = [_content_ids(sequence) for sequence in ids]
        if not batch:
            return []  # SentencePiece reads [] as one empty line
        if self.vocabulary is None:
            return self._processor.decode(batch)
        return [self._processor.decode_pieces([self.vocabulary[index] for index in sequence]) for sequence in batch]

    def pieces(self) -> list[str]:
        """Every piece of the vocabulary, indexed by id."""
        if self.vocabulary is not None:
            return list(self.vocabulary)
        return [self._processor.id_to_piece(piece_id) for piece_id in range(self.vocab_size)]

    def to_bytes(self) -> dict:
        """The tokenizer as plain data (str, bytes, dict, list, numbers) for a checkpoint."""
        blob = {"language": self.language, "model": self._model, "metadata": copy.deepcopy(self.metadata)}
        if self.vocabulary is not None:
            blob["vocabulary"] = list(self.vocabulary)
        return blob

    @classmethod
    def from_bytes(cls, blob: dict) -> Tokenizer:
        """The tokenizer that `to_bytes` stored."""
        return cls(blob["language"], blob["model"], blob["metadata"], blob.get("vocabulary"))


def _content_ids(sequence: Sequence[int]) -> list[int]:
    """The ids before the first EOS, without PAD and BOS; accepts tensors' rows as well as lists."""
    content = []
    for token in map(int, sequence):
        if token == EOS_ID:
            break
        if token not in (PAD_ID, BOS_ID):
            content.append(token)
    return content


def starts_word(piece: str) -> bool:
    """Whether `piece` begins a word (it carries the "▁" mark), e.g. for lexicon induction."""
    return piece.startswith(WORD_START)


def train_tokenizer(language: str, lines: Iterable[str], options: TokenizerOptions,
                    cache_dir: Path, text_identity: str | None = None) -> Tokenizer:
    """The tokenizer of `language` trained on `lines`, from the cache or trained into it.

    `lines` is a sequence, or any re-iterable object whose every `iter(lines)` yields the same lines
    again from the first (e.g. one that re-opens the corpus files). It is iterated at most twice: once
    to hash it (all a cache hit needs), and on a cache miss once more to draw the training sample.

    `text_identity`, when the caller can name the text without reading it (e.g. a hash of its files'
    digests and the slice), lets a later call skip the hashing pass: the digest of the text it names is
    remembered in the cache. A slice of tens of millions of lines is then not read again by every trial.

    Safe for concurrent callers in any number of processes: the first trains under a per-model file
    lock while the others wait and then load its result; a model appears in the cache complete or
    not at all.
    """
    _check_language_code(language)
    if isinstance(lines, Iterator):  # a second `iter()` would find it spent
        raise TypeError(f"the text of {language!r} must be re-iterable (a list, or an object whose iter() "
                        f"starts again), not a one-pass {type(lines).__name__}")
    text = _remembered_digest(cache_dir, text_identity, lines)
    if not text.has_text:
        raise DataError(f"no training text for language {language!r}: its sentence list is empty")
    entry = _CacheEntry.of(cache_dir, language, _cache_key(language, options, text.sha256))
    if not entry.model.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(entry.lock):
            if not entry.model.exists():  # another process may have trained it while we waited
                _train_into_cache(language, lines, text, options, entry)
    return entry.load()


def _check_language_code(language: str) -> None:
    """Language codes name cache files, so they must be plain (e.g. "fr", "pt_BR", "zh-Hant")."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", language):
        raise ConfigError(f"language code {language!r} must consist of letters, digits, '_' and '-'")


class _TextDigest:
    """A text summed up line by line: its SHA-256, its number of lines, whether it has any words.

    Each line is length-prefixed in the hash so that ["a b"] and ["a", "b"] differ.
    """

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.num_lines = 0
        self.has_text = False  # some line is more than spaces

    @classmethod
    def of(cls, lines: Iterable[str]) -> _TextDigest:
        """The digest of `lines`, read once and kept nowhere."""
        digest = cls()
        for _ in digest.read(lines):
            pass
        return digest

    def read(self, lines: Iterable[str]) -> Iterator[str]:
        """Each line of `lines`, added to the digest as it passes."""
        for line in lines:
            data = line.encode("utf-8")
            self._sha256.update(len(data).to_bytes(8, "little"))
            self._sha256.update(data)
            self.num_lines += 1
            if not self.has_text and line.strip():
                self.has_text = True
            yield line

    @property
    def sha256(self) -> str:
        """The hexadecimal SHA-256 of the lines read so far."""
        return self._sha256.hexdigest()


@dataclass(frozen=True)
class _KnownDigest:
    """A `_TextDigest`'s result, read back from the cache: what a cache hit needs of a text."""

    sha256: str
    num_lines: int
    has_text: bool


def _remembered_digest(cache_dir: Path, text_identity: str | None,
                       lines: Iterable[str]) -> _TextDigest | _KnownDigest:
    """The digest of `lines`: remembered under `text_identity` in the cache, or computed (and remembered)."""
    if text_identity is None:
        return _TextDigest.of(lines)
    memo = cache_dir / "text-digests" / f"{hashlib.sha256(text_identity.encode()).hexdigest()}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # absent or damaged: compute it again
        known = json.loads(memo.read_text(encoding="utf-8"))
        return _KnownDigest(str(known["sha256"]), int(known["num_lines"]), bool(known["has_text"]))
    text = _TextDigest.of(lines)
    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {"identity": text_identity, "sha256": text.sha256, "num_lines": text.num_lines, "has_text": text.has_text}
    write_atomically(memo, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
    return text


def _cache_key(language: str, options: TokenizerOptions, text_sha256: str) -> str:
    """SHA-256 of everything that determines a model, including the SentencePiece version."""
    identity = {
        "format": _CACHE_FORMAT,
        "sentencepiece": spm.__version__,
        "auto_candidates": AUTO_VOCAB_SIZE_CANDIDATES,
        "language": language,
        "options": dataclasses.asdict(options),
        "text_sha256": text_sha256,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _CacheEntry:
    """The files of one cached model: the model, its metadata, and the lock that guards training.

    A lock file stays after use: deleting it could let a waiting process lock a file that is no
    longer the one the next process opens.
    """

    model: Path
    metadata: Path
    lock: Path

    @classmethod
    def of(cls, cache_dir: Path, language: str, key: str) -> _CacheEntry:
        """The entry named `<language>-<key prefix>.*` in `cache_dir`."""
        stem = cache_dir / f"{language}-{key[:24]}"
        return cls(stem.with_suffix(".model"), stem.with_suffix(".json"), stem.with_suffix(".lock"))

    def load(self) -> Tokenizer:
        """The cached tokenizer; its metadata was written before its model, so both are there."""
        metadata = json.loads(self.metadata.read_text(encoding="utf-8"))
        return Tokenizer(metadata["language"], self.model.read_bytes(), metadata)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (across processes); closing the file releases it."""
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _train_into_cache(language: str, lines: Iterable[str], text: _TextDigest | _KnownDigest,
                      options: TokenizerOptions,
                      entry: _CacheEntry) -> None:
    """Train the model in a temporary folder beside the cache, then rename it into place."""
    with tempfile.TemporaryDirectory(dir=entry.model.parent, prefix=f".{entry.model.stem}-") as tmp:
        workdir = Path(tmp)
        sample = workdir / "sample.jsonl"
        sentences = _write_training_sample(language, lines, text, options.max_sentences, sample)
        if options.vocab_size == "auto":
            try:
                vocab_size, search = _search_vocab_size(sample, options, workdir)
            except DataError as error:
                raise DataError(f"tokenizer for {language!r}: {error}") from None
            _log_auto_choice(language, vocab_size, search, options)
        else:
            vocab_size, search = options.vocab_size, []
        try:
            model_file = _trained_model_file(sample, vocab_size, options, workdir)
        except _VocabularySizeError as error:
            raise ConfigError(f"tokenizer.vocab_size {vocab_size} does not fit the {language!r} text: "
                              f"{error}") from None
        metadata = {
            "language": language,
            "options": dataclasses.asdict(options),
            "vocab_size": vocab_size,
            "auto_search": [[size, share] for size, share in search],
            "text_sha256": text.sha256,
            "num_sentences": text.num_lines,
            "num_training_sentences": sentences,
            "sentencepiece_version": spm.__version__,
        }
        metadata_file = workdir / "metadata.json"
        metadata_file.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The model is renamed last: a cached model always has its metadata beside it.
        os.replace(metadata_file, entry.metadata)
        os.replace(model_file, entry.model)


def _log_auto_choice(language: str, vocab_size: int, search: list[tuple[int, float]],
                     options: TokenizerOptions) -> None:
    """Log the `auto` choice with every share tried; a warning when no size met the criterion."""
    tried = ", ".join(f"{size}: {share:.3f}" for size, share in search)
    if dict(search)[vocab_size] >= options.auto_type_share:
        logger.info("%s: vocabulary size %d (share of types seen %d+ times: %s)",
                    language, vocab_size, options.auto_min_count, tried)
    else:
        logger.warning("%s: no vocabulary size has %.0f%% of its types seen %d+ times (%s); "
                       "using the smallest, %d", language, 100 * options.auto_type_share,
                       options.auto_min_count, tried, vocab_size)


def _write_training_sample(language: str, lines: Iterable[str], text: _TextDigest | _KnownDigest,
                           max_sentences: int, sample_file: Path) -> int:
    """Write the sentences to train on into `sample_file` (`_write_sample`), from a second pass over
    `lines`, which must still be the `text` hashed; returns how many.

    The model is cached under the first pass's hash, so a text that changed in between (a corpus file
    rewritten meanwhile) is refused rather than cached under a hash that is not its own.
    """
    reread = _TextDigest()
    count = _write_sample(_evenly_spaced(reread.read(lines), text.num_lines, max_sentences), sample_file)
    if reread.sha256 != text.sha256:
        raise DataError(f"the training text of {language!r} changed while its tokenizer was trained "
                        f"(read again, it has {reread.num_lines} lines and another hash)")
    return count


def _write_sample(sentences: Iterable[str], sample_file: Path) -> int:
    """Sentences as JSON strings one per line, streamed: the file the trainer process reads. Returns how many."""
    count = 0
    with open(sample_file, "w", encoding="utf-8") as file:
        for sentence in sentences:
            file.write(json.dumps(sentence, ensure_ascii=False) + "\n")
            count += 1
    return count


def _read_sample(sample_file: Path) -> Iterator[str]:
    with open(sample_file, encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)


def _evenly_spaced(lines: Iterable[str], num_lines: int, size: int) -> Iterator[str]:
    """`size` of the `num_lines` lines, evenly spaced and in order (all when there are no more); reads all.

    The lines at positions ⌊i·num_lines/size⌋ are kept, so that a corpus sorted or concatenated from
    several sources is still sampled whole; the sample is deterministic, so models are reproducible.
    """
    if num_lines <= size:
        yield from lines
        return
    kept, wanted = 0, 0  # wanted: the position of the next line to keep; past the end once the sample is full
    for position, line in enumerate(lines):
        if position == wanted:
            yield line
            kept += 1
            wanted = kept * num_lines // size


def choose_vocab_size(lines: Sequence[str], options: TokenizerOptions,
                      workdir: Path) -> tuple[int, list[tuple[int, float]]]:
    """The `auto` vocabulary size of `lines` and the (size, share of frequent types) of every size tried,
    trained and counted on at most `options.max_sentences` of them, evenly spaced (`_search_vocab_size`)."""
    sample = workdir / "sample.jsonl"
    _write_sample(_evenly_spaced(lines, len(lines), options.max_sentences), sample)
    return _search_vocab_size(sample, options, workdir)


def _search_vocab_size(sample: Path, options: TokenizerOptions,
                       workdir: Path) -> tuple[int, list[tuple[int, float]]]:
    """The `auto` vocabulary size of the sentences in `sample` (a `_write_sample` file), and the (size,
    share of frequent types) of every size tried.

    The share of frequent types falls as the size grows (more, rarer pieces), so a binary search over
    `AUTO_VOCAB_SIZE_CANDIDATES` finds the largest passing size in a few trainings. A size that the
    text cannot fill counts as failing. If no size passes, the smallest trainable one is returned.
    Trial models stay in `workdir` as `<size>.model`, where `train_tokenizer` reuses the chosen one.
    """
    candidates = AUTO_VOCAB_SIZE_CANDIDATES
    shares: dict[int, float] = {}
    # Invariant: candidates[:low] pass or are smaller than the alphabet; candidates[high:] fail.
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        size = candidates[middle]
        try:
            model_file = _trained_model_file(sample, size, options, workdir)
        except _VocabularyTooSmall:
            low = middle + 1
            continue
        except _VocabularyTooLarge:
            high = middle
            continue
        processor = spm.SentencePieceProcessor(model_file=str(model_file))
        shares[size] = _frequent_type_share(processor, sample, options.auto_min_count)
        logger.debug("vocabulary size %d: %.3f of types seen %d+ times", size, shares[size],
                     options.auto_min_count)
        if shares[size] >= options.auto_type_share:
            low = middle + 1
        else:
            high = middle
    search = sorted(shares.items())
    largest_passing = candidates[low - 1] if low > 0 else None
    if largest_passing in shares:
        return largest_passing, search
    smallest_trainable = candidates[low] if low < len(candidates) else None
    if smallest_trainable in shares:
        return smallest_trainable, search
    raise DataError(f"no vocabulary size from {candidates[0]} to {candidates[-1]} can be trained on "
                    f"{sum(1 for _ in _read_sample(sample))} sentences; set tokenizer.vocab_size to an integer")


def _frequent_type_share(processor: spm.SentencePieceProcessor, sample: Path, min_count: int) -> float:
    """The share of learned types that occur at least `min_count` times in the encoded sentences.

    Learned types are the pieces BPE merged (two or more characters). Single characters are left
    out: every size has the whole alphabet, so its rare characters (digits, "œ") would fail any size.
    """
    counts: collections.Counter[int] = collections.Counter()
    sentences = _read_sample(sample)
    while batch := list(itertools.islice(sentences, _ENCODE_BATCH)):
        counts.update(itertools.chain.from_iterable(processor.encode(batch)))
    learned = [piece_id for piece_id in range(processor.get_piece_size())
               if _is_learned_piece(processor, piece_id)]
    if not learned:
        return 1.0
    return sum(counts[piece_id] >= min_count for piece_id in learned) / len(learned)


def _is_learned_piece(processor: spm.SentencePieceProcessor, piece_id: int) -> bool:
    """A normal piece of two or more characters (not special, byte fallback or a single character)."""
    if (processor.is_control(piece_id) or processor.is_unknown(piece_id) or processor.is_byte(piece_id)
            or processor.is_unused(piece_id)):
        return False
    return len(processor.id_to_piece(piece_id)) > 1


def _trained_model_file(sample: Path, vocab_size: int, options: TokenizerOptions, workdir: Path) -> Path:
    """`workdir/<vocab_size>.model`, trained on `sample` unless an earlier call left it there."""
    model_file = workdir / f"{vocab_size}.model"
    if not model_file.exists():
        model_file.write_bytes(_train_model(sample, vocab_size, options))
    return model_file


class _VocabularySizeError(Exception):
    """SentencePiece cannot make a vocabulary of the requested size from the text; says why."""


class _VocabularyTooSmall(_VocabularySizeError):
    """The size leaves no room for the text's characters, byte pieces and specials."""


class _VocabularyTooLarge(_VocabularySizeError):
    """The text has fewer distinct pieces to learn than the size asks for."""


def _train_model(sample: Path, vocab_size: int, options: TokenizerOptions) -> bytes:
    """A serialised BPE model of `vocab_size` pieces trained on `sample` (a `_write_sample` file), by
    `spm_training.py` in a child process, so the trainer's memory is returned when it ends. The same
    input gives the same bytes."""
    trainer = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=options.character_coverage,
        byte_fallback=options.byte_fallback,
        normalization_rule_name="identity",
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        input_sentence_size=0,  # use every sentence given: no random sampling ...
        shuffle_input_sentence=False,  # ... and no shuffling
        num_threads=_TRAINER_THREADS,
        minloglevel=2,  # errors only: the trainer's progress log would flood stderr
    )
    model_file = sample.with_name(f".{vocab_size}.training")
    request = json.dumps({"sample": str(sample), "model": str(model_file), "trainer": trainer})
    try:
        # By file path: the child needs neither this package on its path nor torch.
        done = subprocess.run([sys.executable, str(Path(spm_training.__file__)), request],
                              capture_output=True, text=True)
        if done.returncode == spm_training.REFUSED:
            reason = done.stderr.strip()
            if "smaller than required_chars" in reason:
                raise _VocabularyTooSmall(reason)
            if "Vocabulary size too high" in reason:
                raise _VocabularyTooLarge(reason)
            raise RuntimeError(f"SentencePiece refused to train: {reason}")
        if done.returncode != 0:
            raise RuntimeError(f"SentencePiece training ended with exit status {done.returncode}: "
                               f"{done.stderr.strip()[-500:]}")
        return model_file.read_bytes()
    finally:
        model_file.unlink(missing_ok=True)
