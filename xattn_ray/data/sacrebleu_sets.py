"""sacreBLEU's test sets by name: `{sacrebleu: wmt14}` in an experiment file instead of test files.

sacreBLEU knows the shared tasks' test sets by name (`sacrebleu.dataset.DATASETS`: `wmt14`,
`wmt21/dev`, `iwslt17`, ...), each with the language pairs it has. A pair is a direction: `fr-en` and
`en-fr` are separate entries, and since WMT19 their documents differ (each direction's source side was
written in the source language). A run reads the entry of the pair it translates.

sacreBLEU downloads a set once, checks its md5 sum, extracts it and writes one plain-text file per pair and
field into its cache, the folder named by the `SACREBLEU` environment variable (default
`~/.sacrebleu`), read when sacreBLEU is first imported:

    $SACREBLEU/wmt14/raw/wmt14.test-filtered.tgz          the archive, and what it extracts to
    $SACREBLEU/wmt14/raw/test/newstest2014-fren-src.fr.sgm
    $SACREBLEU/wmt14/wmt14.fr-en.src                       the source sentences, one per line
    $SACREBLEU/wmt14/wmt14.fr-en.ref                       their reference translations

This module asks sacreBLEU's dataset objects for those files (`get_source_file`,
`get_reference_files`), which download and extract on first use; the caller reads them as it reads any
test file. A machine without network access and without the files gets a one-line DataError that says
which file is missing and where sacreBLEU looks.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import re
from dataclasses import dataclass
from pathlib import Path

from sacrebleu.dataset import DATASETS
from sacrebleu.dataset.wmt_xml import WMTXMLDataset
from sacrebleu.utils import SACREBLEU_DIR, filter_subset, get_available_origlangs

from xattn_ray.errors import DataError
from xattn_ray.schema import Invalid

# sacreBLEU's --origlang: a language code, or `non-` and one (every document not first written in it).
_ORIGLANG = re.compile(r"(non-)?[A-Za-z]{1,16}")


@dataclass(frozen=True)
class SacrebleuTestSet:
    """A test set of sacreBLEU's, by its name (`wmt14`), read for the pair a run translates.

    `origlang` keeps the documents first written in that language (`de`), or in any other (`non-de`),
    as sacreBLEU's `--origlang` does; it needs a WMT set, whose documents record their original language.
    """

    sacrebleu: str
    origlang: str | None = None

    def __post_init__(self) -> None:
        if self.sacrebleu not in DATASETS:
            close = difflib.get_close_matches(self.sacrebleu, DATASETS, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise Invalid("sacrebleu", f"sacreBLEU has no test set {self.sacrebleu!r} ({hint}`sacrebleu --list` "
                                       f"lists them)")
        if self.origlang is not None:
            if not _ORIGLANG.fullmatch(self.origlang):
                raise Invalid("origlang", f"{self.origlang!r} is not a language code or non- and one (de, non-de)")
            if not _records_origlang(self.sacrebleu):
                raise Invalid("origlang", f"sacreBLEU's {self.sacrebleu} does not record its documents' original "
                                          f"language (origlang works with WMT test sets)")

    @property
    def pairs(self) -> list[str]:
        """The language pairs this test set has, as sacreBLEU writes them (`fr-en`)."""
        return list(DATASETS[self.sacrebleu].langpairs)

    def missing_pair(self, pair: str) -> str | None:
        """Why this test set cannot serve `pair` (it has no such entry), or None when it can."""
        if pair in self.pairs:
            return None
        return f"sacreBLEU test set {self.sacrebleu!r} has no pair {pair} (it has: {', '.join(self.pairs)})"

    def identity(self) -> dict:
        """What names this test set's text in a run's hash, without reading it: its name, the documents kept,
        and the checksums of the release sacreBLEU downloads (another release is another text)."""
        return {"sacrebleu": self.sacrebleu, "origlang": self.origlang, "md5": DATASETS[self.sacrebleu].md5}

    def files(self, pair: str) -> tuple[Path, Path]:
        """The source and reference files of `pair` in sacreBLEU's cache, downloaded and extracted first if
        they are not there. One process at a time writes a set's files: the others wait, then read them whole."""
        if reason := self.missing_pair(pair):
            raise DataError(reason)
        dataset = DATASETS[self.sacrebleu]
        try:
            with _lock(Path(SACREBLEU_DIR) / f".xattn-ray.{self.sacrebleu.replace('/', '_')}.lock"):
                source = dataset.get_source_file(pair)
                references = dataset.get_reference_files(pair)
        except (OSError, SystemExit) as error:  # sacreBLEU exits on a bad checksum or an SSL error
            raise DataError(self._not_in_cache(pair, error)) from None
        if len(references) != 1:
            raise DataError(f"sacreBLEU test set {self.sacrebleu!r} {pair} has {len(references)} references; "
                            f"runs are scored against one: choose a set with one reference")
        return Path(source), Path(references[0])

    def kept(self, pair: str, sources: list[str], references: list[str]) -> tuple[list[str], list[str]]:
        """The sentences of the documents `origlang` keeps (all of them without one), by sacreBLEU's own filter
        over the raw release files it extracted."""
        if self.origlang is None:
            return sources, references
        try:
            kept_sources, kept_references = filter_subset([sources, references], self.sacrebleu, pair, self.origlang)
        except Exception as error:  # noqa: BLE001 - sacreBLEU raises bare Exceptions for sets it cannot filter
            raise DataError(f"sacreBLEU test set {self.sacrebleu!r} {pair}: cannot keep origlang "
                            f"{self.origlang!r} ({error})") from None
        if not kept_sources:
            found = ", ".join(get_available_origlangs(self.sacrebleu, pair)) or "none recorded"
            raise DataError(f"sacreBLEU test set {self.sacrebleu!r} {pair} has no document with origlang "
                            f"{self.origlang!r} (its documents' origlang: {found})")
        return kept_sources, kept_references

    def _not_in_cache(self, pair: str, error: BaseException) -> str:
        dataset = DATASETS[self.sacrebleu]
        # The file get_source_file looks for, in sacreBLEU's layout: <cache>/<name>/<name>.<pair>.src
        source = Path(dataset._get_txt_file_path(pair, "src"))
        missing = f"a file beside {source} is missing" if source.exists() else f"{source} is missing"
        reason = str(error) if isinstance(error, OSError) else "sacreBLEU stopped; its log says why"
        return (f"sacreBLEU test set {self.sacrebleu!r} {pair}: {missing} and downloading "
                f"{' '.join(dataset.data)} failed ({reason}); sacreBLEU keeps its test sets in {SACREBLEU_DIR} "
                f"(the SACREBLEU environment variable): run once with network access (`xattn-ray validate` "
                f"downloads them), or set SACREBLEU to a folder that holds them")


def _records_origlang(name: str) -> bool:
    """Whether sacreBLEU can filter this set by origlang: the WMT sets whose raw files (XML, or SGML
    documents with an `origlang` attribute) record each document's original language."""
    dataset = DATASETS[name]
    if isinstance(dataset, WMTXMLDataset):
        return True
    pairs = dataset.langpairs
    return (all(files[0].endswith(".sgm") for files in pairs.values())
            and "origlang" in dataset.fieldnames(next(iter(pairs))))  # from the metadata: nothing is read


@contextlib.contextmanager
def _lock(path: Path):
    """Hold an exclusive lock on `path` (a file of its own, left in place) while sacreBLEU writes a set."""
    handle = None
    with contextlib.suppress(OSError):  # a read-only cache: nobody can be writing it, nothing to wait for
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
