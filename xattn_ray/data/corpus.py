"""Parallel corpora on disk: resolving file paths, reading them strictly, slicing and cleaning training data.

A corpus is a set of files, one per split and language, whose line i in every language is a
translation of the same sentence. It is declared either as a multi-parallel set (one `{lang}`
template, like Multi30k's `train.{en,de,fr,cs}.gz`, from which any pair can be taken) or as one
aligned file per language. Every file is checked before anything trains, and a problem is a one-line
`DataError` naming the file (and line): a missing file, invalid UTF-8, unequal line counts, an empty
split, a slice past the end.

Files are read as streams (a `.gz` inflated as it is read), in constant memory: a training slice is
never held as text (`TrainingText` streams it again for each use: a tokenizer's sample, a token shard's
build); only validation and test sets, which are small, are read into lists. What a check of a whole
file finds (its line count, the sha256 of its text) is cached under `CACHE/digests/`, keyed by the
file's path, size and modification time, so the trials of a grid do not read a large corpus again.

Only training data is ever altered: pairs with an empty side are dropped (counted in the log) and the
length filters apply. Validation and test data are returned exactly as written.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.data.options import CorpusConfig, FilterConfig, LanguagePair, SplitFiles, TrainingSlice
from xattn_ray.data.sacrebleu_sets import SacrebleuTestSet
from xattn_ray.data.synthetic import FamilySpec, family_dir_name, generate_family, language_codes
from xattn_ray.errors import DataError
from xattn_ray.files import write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """A corpus with every path resolved: for each split, one file per language."""

    name: str
    languages: frozenset[str]
    train: dict[str, Path]
    valid: dict[str, Path]
    tests: dict[str, dict[str, Path] | SacrebleuTestSet]  # test set name -> language -> file, or sacreBLEU's set

    def read_test(self, name: str, pair: LanguagePair) -> ParallelText:
        """Test set `name` of `pair`: its two files, or the pair's entry of a sacreBLEU test set (from
        sacreBLEU's cache, downloaded there on first use), read and checked alike."""
        test = self.tests[name]
        if not isinstance(test, SacrebleuTestSet):
            return read_parallel(*self.pair_files(test, pair, f"test {name}"))
        text = read_parallel(*test.files(str(pair)))
        sources, references = test.kept(str(pair), text.src, text.tgt)
        documents = f", origlang {test.origlang}" if test.origlang else ""
        return ParallelText(sources, references, origin=f"sacreBLEU {test.sacrebleu} {pair}{documents}")

    def pair_files(self, split_files: dict[str, Path], pair: LanguagePair, split: str) -> tuple[Path, Path]:
        """The (source, target) files of `pair` within one split."""
        missing = [lang for lang in (pair.src, pair.tgt) if lang not in split_files]
        if missing:
            raise DataError(f"corpus {self.name!r}: split {split!r} has no {missing[0]!r} file "
                            f"(it has: {', '.join(sorted(split_files))})")
        return split_files[pair.src], split_files[pair.tgt]


@dataclass(frozen=True)
class ParallelText:
    """Aligned sentences: `src[i]` translates to `tgt[i]`."""

    src: list[str]
    tgt: list[str]
    origin: str  # where the lines came from, for logs and error messages

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class CleaningReport:
    """How many training pairs each rule dropped."""

    kept: int
    empty: int  # a side was empty or whitespace only
    too_long: int  # a side had more than `max_tokens` whitespace tokens
    bad_ratio: int  # the longer side had more than `max_length_ratio` times the tokens of the shorter


def resolve_corpus(name: str, config: CorpusConfig, base_dir: Path, cache_dir: Path) -> Corpus:
    """Turn a corpus declaration into concrete paths; a synthetic corpus is generated (once) into the cache."""
    if config.synthetic is not None:
        return _synthetic_corpus(name, config.synthetic, cache_dir)
    languages = sorted(config.declared_languages())

    def files(split: SplitFiles) -> dict[str, Path]:
        if isinstance(split, str):
            return {lang: _resolve(split.replace("{lang}", lang), base_dir) for lang in languages}
        return {lang: _resolve(path, base_dir) for lang, path in split.items()}

    return Corpus(
        name=name,
        languages=frozenset(languages),
        train=files(config.train),
        valid=files(config.valid) if config.valid is not None else {},
        tests={test_name: split if isinstance(split, SacrebleuTestSet) else files(split)
               for test_name, split in config.test.items()},
    )



def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base_dir / candidate).resolve()


def _synthetic_corpus(name: str, spec: FamilySpec, cache_dir: Path) -> Corpus:
    family = cache_dir / "data" / family_dir_name(spec)
    if not (family / "family.json").is_file():
        log.info("generating synthetic family %s", family)
        generate_family(spec, family)
    codes = language_codes(spec.languages)
    return Corpus(
        name=name,
        languages=frozenset(codes),
        train={code: family / f"train.{code}" for code in codes},
        valid={code: family / f"valid.{code}" for code in codes},
        tests={"test": {code: family / f"test.{code}" for code in codes}},
    )


def read_lines(path: Path) -> list[str]:
    """Every line of a UTF-8 text file, plain or gzip, without its line terminator (small files: valid, test)."""
    return list(iter_lines(path))


def iter_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, plain or gzip, streamed in constant memory, checked as they come.

    Lines are split on '\\n' only (str.splitlines would also split on U+2028 and break alignment); a
    '\\r' before it is dropped. A problem is a DataError naming the file and line, raised when the
    stream reaches it.
    """
    _stat(path)
    return _stream(str(path))


def _stat(path: Path):
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:  # no permission, a name too long, ...
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    return stat


# A line longer than this is not a sentence (sentences are well under a kilobyte; the length filters drop
# training pairs of over 250 words): it is a file that is not a corpus, or a gzip bomb's single huge line.
MAX_LINE_CHARS = 1_000_000
# gzip compresses text 3 to 5 times; past GZIP_FLOOR bytes of text, a file that inflates more than
# MAX_GZIP_RATIO times is a bomb (gzip reaches ~1000x on repeated bytes), stopped before it fills memory.
GZIP_FLOOR = 16 << 20
MAX_GZIP_RATIO = 100
_CHUNK = 1 << 20


def _stream(path: str, digest=None) -> Iterator[str]:
    # The file is read in chunks (a gzip file inflated as it streams), so no more than a chunk and its
    # lines are in memory, and the caps above are checked as the text arrives. `digest` (a hashlib
    # object), when given, is fed the text's bytes.
    pending = b""  # the unfinished last line of the chunks so far
    inflated = 0
    number = 1  # of the next line
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                inflated += len(chunk)
                if stream is not raw and inflated > GZIP_FLOOR and inflated > MAX_GZIP_RATIO * raw.tell():
                    raise DataError(f"{path}: inflates more than {MAX_GZIP_RATIO} times its compressed size "
                                    f"(a gzip bomb?); refusing to read on")
                if digest is not None:
                    digest.update(chunk)
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                lines = _decoded_lines(path, data[:cut], number)
                number += len(lines)
                yield from _without_cr(lines)
                if len(pending) > 4 * MAX_LINE_CHARS:  # bytes: a character is at most 4 of them
                    raise DataError(f"{path}:{number}: line longer than {MAX_LINE_CHARS:,} characters")
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if pending:  # a last line without a final newline
        yield from _without_cr(_decoded_lines(path, pending + b"\n", number))


def _without_cr(lines: list[str]) -> list[str]:
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@dataclass(frozen=True)
class FileFacts:
    """What one streamed pass over a text file found: its line count and the sha256 of its (inflated) text."""

    lines: int
    sha256: str


_FACTS_FORMAT = 1


def file_facts(path: Path, cache_dir: Path) -> FileFacts:
    """Line count and text digest of `path` (every line checked on the way), from `CACHE/digests/` when the
    file's size and modification time are those recorded there."""
    stat = _stat(path)
    identity = {"format": _FACTS_FORMAT, "path": str(path.resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}
    record = cache_dir / "digests" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(record.read_text(encoding="utf-8"))
        if cached["identity"] == identity:
            return FileFacts(cached["lines"], cached["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record, or one of another file version or format: scan
    digest = hashlib.sha256()
    lines = sum(1 for _ in _stream(str(path), digest))
    facts = FileFacts(lines, digest.hexdigest())
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(record, json.dumps({"identity": identity, "lines": facts.lines, "sha256": facts.sha256},
                                        sort_keys=True).encode())
    return facts


def aligned_line_count(paths: list[Path], cache_dir: Path) -> tuple[int, list[FileFacts]]:
    """The common line count of files whose line i says the same thing (a parallel split), and their facts."""
    facts = [file_facts(path, cache_dir) for path in paths]
    for path, fact in zip(paths[1:], facts[1:]):
        if fact.lines != facts[0].lines:
            raise DataError(f"{paths[0]} has {facts[0].lines} lines but {path} has {fact.lines}: "
                            f"the sides of a parallel corpus must have equal line counts")
    if not facts[0].lines:
        raise DataError(f"{paths[0]}: empty split (no lines)")
    return facts[0].lines, facts


def _decoded_lines(path: str, block: bytes, first_line: int) -> list[str]:
    """The lines of `block` (whole lines, each ending in '\\n'), checked for UTF-8 and length."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + block.count(b"\n", 0, err.start)
        line_start = block.rfind(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 at byte {err.start - line_start} of the line "
                        f"({err.reason})") from None
    lines = text.split("\n")
    lines.pop()  # the block's final newline ends its last line; it does not start a new one
    if lines and max(map(len, lines)) > MAX_LINE_CHARS:
        number = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE_CHARS)
        raise DataError(f"{path}:{first_line + number}: line longer than {MAX_LINE_CHARS:,} characters")
    return lines


def read_parallel(src_path: Path, tgt_path: Path) -> ParallelText:
    """Both sides of a split, checked to be aligned and non-empty."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                        f"the sides of a parallel corpus must have equal line counts")
    if not src:
        raise DataError(f"{src_path}: empty split (no lines)")
    return ParallelText(src, tgt, origin=f"{src_path.name} + {tgt_path.name}")


def slice_bounds(total: int, training_slice: TrainingSlice, origin: str) -> tuple[int, int]:
    """[start, stop): lines [a, b) of a split of `total` lines, then the first `size` of those."""
    start, end = training_slice.lines or (0, total)
    if end > total:
        raise DataError(f"{origin}: slice [{start}, {end}) goes past the split's {total} lines")
    if training_slice.size is not None:
        if training_slice.size > end - start:
            raise DataError(f"{origin}: size {training_slice.size} is more than the "
                            f"{end - start} lines of slice [{start}, {end})")
        end = start + training_slice.size
    return start, end


@dataclass(frozen=True)
class TrainingText:
    """A run's training slice, never held in memory: lines [start, stop) of two aligned files, cleaned as
    they stream by. Each use (a tokenizer's digest and sample, a token shard's build, a count) reads
    the files again; `identity` says what the text is (both files' digests, the bounds, the filters)."""

    src_path: Path
    tgt_path: Path
    start: int
    stop: int
    filters: FilterConfig
    identity: dict
    cache_dir: Path  # where `scan` remembers its counts, by `identity`

    @property
    def origin(self) -> str:
        return f"{self.src_path.name} + {self.tgt_path.name} lines {self.start}-{self.stop}"

    def pairs(self, faults: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
        """The kept (source, target) pairs in order; each dropped one counted in `faults` by its rule."""
        lines = zip(iter_lines(self.src_path), iter_lines(self.tgt_path))
        for src, tgt in itertools.islice(lines, self.start, self.stop):
            fault = pair_fault(src, tgt, self.filters)
            if fault is None:
                yield src, tgt
            elif faults is not None:
                faults[fault] += 1

    def side(self, index: int) -> Side:
        """The kept lines of one side (0 source, 1 target): re-iterable, for training a tokenizer."""
        return Side(self, index)

    def scan(self) -> CleaningReport:
        """What cleaning keeps and drops: counted by streaming the slice once (no text kept), then
        remembered under `CACHE/digests/` by the slice's identity, so `validate` and `run` count a slice of
        tens of millions of lines once, not at every call."""
        key = json.dumps(self.identity, sort_keys=True)
        record = self.cache_dir / "digests" / f"cleaning-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # absent or damaged: count again
            cached = json.loads(record.read_text(encoding="utf-8"))
            if cached["identity"] == key:
                return cleaning_report(cached["kept"], collections.Counter(cached["faults"]), self.origin)
        faults: collections.Counter = collections.Counter()
        kept = sum(1 for _ in self.pairs(faults))
        report = cleaning_report(kept, faults, self.origin)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(record, json.dumps({"identity": key, "kept": kept, "faults": dict(faults)},
                                            sort_keys=True).encode())
        return report


@dataclass(frozen=True)
class Side:
    """One side's kept lines of a `TrainingText`; every `iter` streams them again from the start."""

    text: TrainingText
    index: int

    def __iter__(self) -> Iterator[str]:
        return (pair[self.index] for pair in self.text.pairs())

    @property
    def identity(self) -> str:
        """What these lines are, without reading them: the slice's identity and the side."""
        return json.dumps({**self.text.identity, "side": self.index}, sort_keys=True)


def training_text(src_path: Path, tgt_path: Path, training_slice: TrainingSlice, filters: FilterConfig,
                  cache_dir: Path) -> TrainingText:
    """The training slice of a pair of aligned files, after checking (by streaming, or from the digests
    cache) that the files are aligned, valid UTF-8 and hold the slice."""
    total, facts = aligned_line_count([src_path, tgt_path], cache_dir)
    start, stop = slice_bounds(total, training_slice, f"{src_path.name} + {tgt_path.name}")
    identity = {"files": [fact.sha256 for fact in facts], "lines": [start, stop],
                "filters": [filters.max_tokens, filters.max_length_ratio]}
    return TrainingText(src_path, tgt_path, start, stop, filters, identity, cache_dir)


def pair_fault(src: str, tgt: str, filters: FilterConfig) -> str | None:
    """Why a training pair is dropped (`empty`, `too_long`, `bad_ratio`), or None when it is kept."""
    src_len, tgt_len = len(src.split()), len(tgt.split())
    if src_len == 0 or tgt_len == 0:
        return "empty"
    if filters.max_tokens is not None and max(src_len, tgt_len) > filters.max_tokens:
        return "too_long"
    longer, shorter = max(src_len, tgt_len), min(src_len, tgt_len)
    if filters.max_length_ratio is not None and longer > filters.max_length_ratio * shorter:
        return "bad_ratio"
    return None


def cleaning_report(kept: int, faults: collections.Counter, origin: str) -> CleaningReport:
    """The report of a cleaned slice; no pair left is a DataError."""
    empty, too_long, bad_ratio = faults["empty"], faults["too_long"], faults["bad_ratio"]
    if not kept:
        raise DataError(f"{origin}: no training pairs left after cleaning "
                        f"({empty} empty, {too_long} too long, {bad_ratio} bad length ratio)")
    return CleaningReport(kept=kept, empty=empty, too_long=too_long, bad_ratio=bad_ratio)
