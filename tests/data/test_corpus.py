"""Reading, validating, slicing and cleaning parallel corpora; every error names the file (and line)."""

import gzip
import os
from pathlib import Path

import pytest

from support import EXPERIMENTS, SHARED_DATA, requires_multi30k
from xattn_ray.data.options import FilterConfig, TrainingSlice
from xattn_ray.study.config import load_experiment
from xattn_ray.data.corpus import file_facts, read_lines, read_parallel, training_text
from xattn_ray.study.transfer import experiment_runs, load_run_data, run_name
from xattn_ray.errors import DataError


def test_reads_plain_and_gzip_identically_without_terminators(tmp_path):
    text = "un chat\r\ndeux chiens\nle\u2028mot\n"  # U+2028 must not split a line
    (tmp_path / "a.txt").write_bytes(text.encode())
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(text.encode())
    expected = ["un chat", "deux chiens", "le\u2028mot"]
    assert read_lines(tmp_path / "a.txt") == expected
    assert read_lines(tmp_path / "a.txt.gz") == expected


def test_last_line_without_newline_is_kept(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo")
    assert read_lines(tmp_path / "a.txt") == ["one", "two"]


def test_rewritten_file_is_read_again(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    assert read_lines(path) == ["one"]
    path.write_text("one\ntwo and more\n")
    assert read_lines(path) == ["one", "two and more"]


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "bad.fr"
    path.write_bytes(b"bonjour\nca va\nd\xc3j\xe0 vu\n")
    with pytest.raises(DataError) as info:
        read_lines(path)
    assert str(info.value).startswith(f"{path}:3: invalid UTF-8 at byte 1 of the line")


def test_missing_file_and_bad_gzip(tmp_path):
    with pytest.raises(DataError, match=r"nope\.fr: file not found"):
        read_lines(tmp_path / "nope.fr")
    (tmp_path / "fake.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"fake\.gz: not a valid gzip file"):
        read_lines(tmp_path / "fake.gz")


def test_unequal_line_counts_name_both_files_and_counts(tmp_path):
    (tmp_path / "t.fr").write_text("a\nb\nc\n")
    (tmp_path / "t.en").write_text("a\nb\n")
    with pytest.raises(DataError) as info:
        read_parallel(tmp_path / "t.fr", tmp_path / "t.en")
    assert f"{tmp_path / 't.fr'} has 3 lines but {tmp_path / 't.en'} has 2" in str(info.value)


def test_empty_split(tmp_path):
    (tmp_path / "t.fr").write_text("")
    (tmp_path / "t.en").write_text("")
    with pytest.raises(DataError, match=r"t\.fr: empty split"):
        read_parallel(tmp_path / "t.fr", tmp_path / "t.en")


def aligned_files(root: Path, src: list[str], tgt: list[str]) -> tuple[Path, Path]:
    (root / "t.fr").write_text("".join(line + "\n" for line in src))
    (root / "t.en").write_text("".join(line + "\n" for line in tgt))
    return root / "t.fr", root / "t.en"


def test_slices_and_sizes(tmp_path):
    files = aligned_files(tmp_path, [f"s{i}" for i in range(10)], [f"t{i}" for i in range(10)])
    cache = tmp_path / "cache"
    part = training_text(*files, TrainingSlice(lines=(4, 9), size=3), FilterConfig(), cache)
    assert list(part.pairs()) == [("s4", "t4"), ("s5", "t5"), ("s6", "t6")]
    assert list(part.side(0)) == ["s4", "s5", "s6"] and list(part.side(1)) == ["t4", "t5", "t6"]  # re-iterable
    whole = training_text(*files, TrainingSlice(), FilterConfig(), cache)
    assert list(whole.side(0)) == [f"s{i}" for i in range(10)]
    with pytest.raises(DataError, match=r"slice \[5, 11\) goes past the split's 10 lines"):
        training_text(*files, TrainingSlice(lines=(5, 11)), FilterConfig(), cache)
    with pytest.raises(DataError, match=r"size 6 is more than the 5 lines of slice \[5, 10\)"):
        training_text(*files, TrainingSlice(lines=(5, 10), size=6), FilterConfig(), cache)


def test_cleaning_drops_pairs_and_counts_each_rule(tmp_path):
    src = ["a b", "  ", "c", "d e f g h i j k", "x", "one two"]
    tgt = ["A B", "X", "", "D", "Y", "ONE TWO THREE FOUR FIVE SIX"]
    files = aligned_files(tmp_path, src, tgt)
    text = training_text(*files, TrainingSlice(), FilterConfig(max_tokens=5, max_length_ratio=2.0), tmp_path / "c")
    assert list(text.pairs()) == [("a b", "A B"), ("x", "Y")]
    report = text.scan()
    # "d e f g h i j k" (8 tokens) is too long; so is "one two" against six tokens (6 > 5).
    assert (report.kept, report.empty, report.too_long, report.bad_ratio) == (2, 2, 2, 0)
    files = aligned_files(tmp_path, ["a", "b c d"], ["A", "B"])
    ratio_report = training_text(*files, TrainingSlice(), FilterConfig(max_tokens=None, max_length_ratio=2.0),
                                 tmp_path / "c").scan()
    assert (ratio_report.kept, ratio_report.bad_ratio) == (1, 1)
    files = aligned_files(tmp_path, [""], ["x"])
    with pytest.raises(DataError, match="no training pairs left after cleaning"):
        training_text(*files, TrainingSlice(), FilterConfig(), tmp_path / "c").scan()


def test_a_slice_is_counted_once_then_remembered_by_its_identity(tmp_path):
    """`validate` and `run` count cleaning at every call: a slice's counts come from the cache after the first."""
    src, tgt = aligned_files(tmp_path, ["a b", "", "c"], ["A B", "X", "C"])
    text = training_text(src, tgt, TrainingSlice(), FilterConfig(), tmp_path / "c")
    first = text.scan()
    src.rename(tmp_path / "moved")  # the files are gone: only the remembered counts can answer
    assert text.scan() == first and (first.kept, first.empty) == (2, 1)
    other = training_text(tmp_path / "moved", tgt, TrainingSlice(lines=(0, 2)), FilterConfig(), tmp_path / "c")
    assert other.scan().kept == 1  # another slice of the same files is counted afresh


def gzipped(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return path


def test_streamed_checks_of_gzip_files_name_the_file_and_line(tmp_path):
    good = [f"sentence {i}".encode() for i in range(3000)]
    bad = good[:2499] + [b"caf\xe9 au lait"] + good[2500:]
    src, tgt = gzipped(tmp_path / "t.fr.gz", bad), gzipped(tmp_path / "t.en.gz", good)
    with pytest.raises(DataError) as info:
        training_text(src, tgt, TrainingSlice(lines=(0, 10)), FilterConfig(), tmp_path / "cache")
    assert str(info.value).startswith(f"{src}:2500: invalid UTF-8 at byte 3 of the line")
    short = gzipped(tmp_path / "short.en.gz", good[:2999])
    with pytest.raises(DataError) as info:
        training_text(tgt, short, TrainingSlice(), FilterConfig(), tmp_path / "cache")
    assert str(info.value).startswith(f"{tgt} has 3000 lines but {short} has 2999")
    with pytest.raises(DataError, match=r"slice \[2990, 3001\) goes past the split's 3000 lines"):
        training_text(tgt, tgt, TrainingSlice(lines=(2990, 3001)), FilterConfig(), tmp_path / "cache")


def test_line_counts_and_digests_are_cached_until_the_file_changes(tmp_path):
    path = gzipped(tmp_path / "a.gz", [b"one", b"two"])
    first = file_facts(path, tmp_path / "cache")
    assert first.lines == 2 and len(list((tmp_path / "cache" / "digests").iterdir())) == 1
    assert file_facts(path, tmp_path / "cache") == first
    gzipped(path, [b"one", b"two", b"three"])
    os.utime(path, ns=(0, 10**9))  # another modification time, whatever the clock's resolution
    assert file_facts(path, tmp_path / "cache").lines == 3


def write_corpus(root: Path, lines: dict[str, dict[str, list[str]]]) -> None:
    for split, by_lang in lines.items():
        for lang, sentences in by_lang.items():
            (root / f"{split}.{lang}").write_text("".join(s + "\n" for s in sentences))


EXPERIMENT = """\
name: toy
corpora:
  toy:
    languages: [fr, en, de]
    train: data/train.{lang}
    valid: data/valid.{lang}
    test:
      t1: data/test.{lang}
parents: [{name: fr-en, pair: fr-en, corpus: toy, lines: [0, 4]}]
children: [{pair: de-en, parent: fr-en, lines: [4, 6]}]
"""


def test_run_data_cleans_training_but_never_test_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data, {
        "train": {"fr": ["a", "", "c", "d", "e", "f"], "en": ["A", "B", "C", "D", "E", "F"], "de": list("123456")},
        "valid": {"fr": ["v"], "en": ["V"], "de": ["w"]},
        "test": {"fr": ["  spaced  ", ""], "en": ["x", "y"], "de": ["z", ""]},
    })
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    experiment = load_experiment(tmp_path / "exp.yaml")
    parent, child = experiment_runs(experiment)
    parent_data = load_run_data(experiment, parent, tmp_path / "cache")
    assert list(parent_data.train.side(0)) == ["a", "c", "d"] and parent_data.train.scan().empty == 1
    assert parent_data.tests["t1"].src == ["  spaced  ", ""]  # untouched
    child_data = load_run_data(experiment, child, tmp_path / "cache")
    assert list(child_data.train.pairs()) == [("5", "E"), ("6", "F")]
    assert run_name(child) == "de-en"


def test_run_data_reports_a_misaligned_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data, {"train": {"fr": ["a"] * 6, "en": ["A"] * 5}, "valid": {"fr": ["v"], "en": ["V"]},
                        "test": {"fr": ["x"], "en": ["y"]}})
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    experiment = load_experiment(tmp_path / "exp.yaml")
    with pytest.raises(DataError, match=r"train\.fr has 6 lines but .*train\.en has 5"):
        load_run_data(experiment, experiment.parents[0], tmp_path / "cache")


@requires_multi30k
def test_multi30k_parent_and_child_slices_are_disjoint(tmp_path):
    experiment = load_experiment(EXPERIMENTS / "multi30k.yaml")
    parent = load_run_data(experiment, experiment.parents[0], tmp_path)
    child = load_run_data(experiment, experiment.children[0], tmp_path)
    cleaning = parent.train.scan()
    assert cleaning.kept + cleaning.empty + cleaning.too_long + cleaning.bad_ratio == 20000
    assert child.train.scan().kept <= 9000 and str(child.pair) == "de-en"
    english = read_lines(SHARED_DATA / "multi30k" / "train.en.gz")
    assert next(iter(child.train.side(1))) == english[20000] and next(iter(parent.train.side(1))) == english[0]
    assert len(parent.tests["flickr2016"]) == 1000 and len(parent.valid) == 1014
