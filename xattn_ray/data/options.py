"""What a run asks of the data layer: which corpus, which language pair, which slice, which filters.

These are the data layer's own option types; the experiment file (study/config.py) is built from them,
and everything under data/ takes them as arguments, never the experiment itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from xattn_ray.data.sacrebleu_sets import SacrebleuTestSet
from xattn_ray.data.synthetic import FamilySpec, validate_spec
from xattn_ray.engine.policies import Side
from xattn_ray.engine.transfer import TransferError
from xattn_ray.errors import DataError
from xattn_ray.schema import Invalid, check_file_name

# A split's files: a template with `{lang}` ("data/train.{lang}.gz", a multi-parallel set) or one path
# per language ({fr: train.fr, en: train.en}, a pair of aligned files).
SplitFiles = str | dict[str, str]
# A test set: files like a split's, or one of sacreBLEU's by name ({sacrebleu: wmt14}), read for the run's pair.
TestSetSource = SplitFiles | SacrebleuTestSet

# A language code names files (`{lang}` in templates, tokenizer models) and is half of a run's default
# name, so it is one file-name segment without '-' (which separates a pair) or '.': e.g. en, pt_br.
_LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,15}")


def check_language(code: str, key: str | tuple | None) -> None:
    """Raise Invalid(key, ...) unless `code` is a usable language code."""
    if not _LANGUAGE.fullmatch(code):
        raise Invalid(key, f"{code!r} is not a language code: use 1 to 16 letters, digits and '_', "
                           f"starting with a letter or digit (e.g. en, pt_br)")


@dataclass(frozen=True)
class LanguagePair:
    """A translation direction, written `src-tgt` (e.g. `fr-en`)."""

    src: str
    tgt: str

    @classmethod
    def parse(cls, text: str) -> LanguagePair:
        parts = text.split("-")
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise Invalid("pair", f"expected two different languages written 'src-tgt', got {text!r}")
        for code in parts:
            check_language(code, "pair")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.src}-{self.tgt}"


def changed_side(parent: LanguagePair, child: LanguagePair) -> Side:
    """`source` for Fr-En -> De-En, `target` for Fr-En -> Fr-De."""
    if child.src != parent.src and child.tgt == parent.tgt:
        return "source"
    if child.tgt != parent.tgt and child.src == parent.src:
        return "target"
    what = "both sides change" if child.src != parent.src else "no side changes"
    raise TransferError(f"child {child} of parent {parent}: {what}; transfer replaces exactly one "
                        f"side (use the `scratch` policy to train such a pair from scratch)")


def stitched_pair(body: LanguagePair, donor: LanguagePair, donor_side: Side) -> LanguagePair:
    """The pair a stitched model translates: the donor child's new side (`donor_side`) with the body child's
    other side, e.g. body Fr-Cs + source embeddings of De-En = De-Cs."""
    if donor_side == "source":
        return LanguagePair(donor.src, body.tgt)
    return LanguagePair(body.src, donor.tgt)


@dataclass(frozen=True)
class CorpusConfig:
    """Where one corpus lives: files per split and language, or a synthetic family to generate."""

    languages: list[str] | None = None  # the languages `{lang}` templates cover
    train: SplitFiles | None = None
    valid: SplitFiles | None = None
    test: dict[str, TestSetSource] = field(default_factory=dict)  # named test sets
    synthetic: FamilySpec | None = None  # generate the synthetic family instead of reading files

    def __post_init__(self) -> None:
        if self.synthetic is not None:
            for name in ("languages", "train", "valid"):
                if getattr(self, name) is not None:
                    raise Invalid(name, "a synthetic corpus names no files (they are generated)")
            if self.test:
                raise Invalid("test", "a synthetic corpus names no files (they are generated)")
            try:
                validate_spec(self.synthetic)
            except DataError as error:
                raise Invalid("synthetic", str(error)) from None
            return
        for i, code in enumerate(self.languages or []):
            check_language(code, ("languages", i))
        if len(set(self.languages or [])) != len(self.languages or []):
            raise Invalid("languages", "lists a language twice")
        for split in ("train", "valid"):
            for code in getattr(self, split) if isinstance(getattr(self, split), dict) else []:
                check_language(code, (split, code))
        for name, files in self.test.items():
            check_file_name(name, ("test", name))  # names the files of a run's translations
            for code in files if isinstance(files, dict) else []:
                check_language(code, ("test", name, code))
        if self.train is None:
            raise Invalid(None, "a corpus needs `train` files (or `synthetic:` to generate them)")
        if self.valid is None:
            raise Invalid(None, "a corpus needs `valid` files (early stopping and model selection use them)")
        if not self.test:
            raise Invalid(None, "a corpus needs at least one named `test` set")
        templates = [("train", self.train), ("valid", self.valid)]
        templates += [(f"test.{name}", files) for name, files in self.test.items()]
        for key, files in templates:
            if isinstance(files, str) and "{lang}" not in files:
                raise Invalid(key, "a single path must contain {lang}; give one path per language instead")
            if isinstance(files, str) and not self.languages:
                raise Invalid("languages", f"`{key}` is a {{lang}} template, so list the corpus's languages")

    def declared_languages(self) -> set[str]:
        """The languages a file-based corpus provides in its train split."""
        if isinstance(self.train, dict):
            return set(self.train)
        return set(self.languages or [])


@dataclass(frozen=True)
class FilterConfig:
    """Length filters for training pairs only; validation and test data are never filtered."""

    max_tokens: int | None = 250  # whitespace tokens per side; longer pairs are dropped
    max_length_ratio: float | None = 9.0  # longer side / shorter side, in whitespace tokens

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise Invalid("max_tokens", "must be at least 1")
        if self.max_length_ratio is not None and self.max_length_ratio < 1:
            raise Invalid("max_length_ratio", "must be at least 1")


@dataclass(frozen=True)
class TrainingSlice:
    """Which training lines a run uses: lines [start, end) of the train split, then the first `size`."""

    lines: tuple[int, int] | None = None  # [start, end), 0-based; None: the whole split
    size: int | None = None  # first N lines of the slice (learning curves); None: all of it

    def __post_init__(self) -> None:
        if self.lines is not None and not 0 <= self.lines[0] < self.lines[1]:
            raise Invalid("lines", f"expected [start, end) with 0 <= start < end, got {list(self.lines)}")
        if self.size is not None and self.size < 1:
            raise Invalid("size", "must be at least 1")
