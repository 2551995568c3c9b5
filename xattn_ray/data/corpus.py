"""Parallel corpora on disk: resolving file paths, reading them strictly, slicing and cleaning training data.

A corpus is a set of files, one per split and language, whose line i in every language is a
translation of the same sentence. It is declared either as a multi-parallel set (one `{lang}`
template, like Multi30k's `train.{en,de,fr,cs}.gz`, from which any pair can be taken) or as one
aligned file per language. Every file is checked before anything trains, and a problem is a one-line
`DataError` naming the file (and line): a missing file, invalid UTF-8, unequal line counts, an empty
split, a slice past the end.

Only training data is ever altered: pairs with an empty side are dropped (counted in the log) and the
length filters apply. Validation and test data are returned exactly as written.
"""

from __future__ import annotations

import functools
import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

from xattn_ray.data.options import CorpusConfig, FilterConfig, LanguagePair, SplitFiles, TrainingSlice
from xattn_ray.data.synthetic import FamilySpec, family_dir_name, generate_family, language_codes
from xattn_ray.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """A corpus with every path resolved: for each split, one file per language."""

    name: str
    languages: frozenset[str]
    train: dict[str, Path]
    valid: dict[str, Path]
    tests: dict[str, dict[str, Path]]  # test set name -> language -> file

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
        tests={test_name: files(split) for test_name, split in config.test.items()},
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
    """Every line of a UTF-8 text file, plain or gzip, without its line terminator.

    Lines are split on '\\n' only (str.splitlines would also split on U+2028 and break alignment).
    """
    stat = _stat(path)
    return list(_read_lines_cached(str(path), stat.st_mtime_ns, stat.st_size))


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
_CHUNK = 4 << 20


@functools.lru_cache(maxsize=64)
def _read_lines_cached(path: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    # Keyed by modification time and size too, so a rewritten file is read again. The file is read in
    # chunks (a gzip file inflated as it streams), so no more than a chunk and its lines are in memory
    # beyond the lines themselves, and the caps above are checked as the text arrives.
    lines: list[str] = []
    pending = b""  # the unfinished last line of the chunks so far
    inflated = 0
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                inflated += len(chunk)
                if stream is not raw and inflated > GZIP_FLOOR and inflated > MAX_GZIP_RATIO * raw.tell():
                    raise DataError(f"{path}: inflates more than {MAX_GZIP_RATIO} times its compressed size "
                                    f"(a gzip bomb?); refusing to read on")
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                lines += _decoded_lines(path, data[:cut], len(lines) + 1)
                if len(pending) > 4 * MAX_LINE_CHARS:  # bytes: a character is at most 4 of them
                    raise DataError(f"{path}:{len(lines) + 1}: line longer than {MAX_LINE_CHARS:,} characters")
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if pending:  # a last line without a final newline
        lines += _decoded_lines(path, pending + b"\n", len(lines) + 1)
    return tuple(line[:-1] if line.endswith("\r") else line for line in lines)


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


def slice_lines(text: ParallelText, training_slice: TrainingSlice) -> ParallelText:
    """Lines [start, end) of the split, then the first `size` of those."""
    start, end = training_slice.lines or (0, len(text))
    if end > len(text):
        raise DataError(f"{text.origin}: slice [{start}, {end}) goes past the split's {len(text)} lines")
    src, tgt = text.src[start:end], text.tgt[start:end]
    if training_slice.size is not None:
        if training_slice.size > len(src):
            raise DataError(f"{text.origin}: size {training_slice.size} is more than the "
                            f"{len(src)} lines of slice [{start}, {end})")
        src, tgt = src[: training_slice.size], tgt[: training_slice.size]
    return ParallelText(src, tgt, origin=f"{text.origin} lines {start}-{start + len(src)}")


def pair_fault(src: str, tgt: str, filters: FilterConfig) -> str | None:
    """Why a training pair is dropped (`empty`, `too_long`, `bad_ratio`), or None when it is kept."""
    src_len, tgt_len = len(src.split()), len(tgt.split())
    if src_len == 0 or tgt_len == 0:
        return "empty"
    if filters.max_tokens is not None and max(src_len, tgt_len) > filters.max_tokens:
        return "too_long"
    if filters.max_length_ratio is not None and max(src_len, tgt_len) > filters.max_length_ratio * min(src_len, tgt_len):
        return "bad_ratio"
    return None


def clean_training_pairs(text: ParallelText, filters: FilterConfig) -> tuple[ParallelText, CleaningReport]:
    """Drop pairs with an empty side, then pairs that fail the length filters (training data only)."""
    src_kept, tgt_kept = [], []
    faults = {"empty": 0, "too_long": 0, "bad_ratio": 0}
    for src, tgt in zip(text.src, text.tgt):
        fault = pair_fault(src, tgt, filters)
        if fault is None:
            src_kept.append(src)
            tgt_kept.append(tgt)
        else:
            faults[fault] += 1
    empty, too_long, bad_ratio = faults["empty"], faults["too_long"], faults["bad_ratio"]
    report = CleaningReport(kept=len(src_kept), empty=empty, too_long=too_long, bad_ratio=bad_ratio)
    if not src_kept:
        raise DataError(f"{text.origin}: no training pairs left after cleaning "
                        f"({empty} empty, {too_long} too long, {bad_ratio} bad length ratio)")
    return ParallelText(src_kept, tgt_kept, origin=text.origin), report
