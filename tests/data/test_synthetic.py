"""The synthetic language family: deterministic, aligned, typologically varied, with true dictionaries."""

import hashlib
import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from xattn_ray.data import synthetic
from xattn_ray.data.synthetic import PIVOT, FamilySpec, family_dir_name, generate_family, language_codes
from xattn_ray.errors import DataError

SMALL = FamilySpec(languages=2, sentences=300, seed=3, valid=40, test=30)
MEDIUM = FamilySpec(languages=3, sentences=20000, seed=1, valid=200, test=150)
DIGITS = re.compile(r"^[0-9]+$")


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    """One medium family (20,000 sentences, pivot + 3 languages) shared by the read-only tests."""
    return generate_family(MEDIUM, tmp_path_factory.mktemp("synthetic") / family_dir_name(MEDIUM))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def digests(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def typology(directory: Path, code: str) -> dict:
    return json.loads((directory / "family.json").read_text(encoding="utf-8"))["languages"][code]["typology"]


def translations(directory: Path, source: str, target: str) -> dict[str, set[str]]:
    table = defaultdict(set)
    for line in lines(directory / "dictionaries" / f"{source}-{target}.txt"):
        source_word, target_word = line.split()
        table[source_word].add(target_word)
    return table


# --- Names ----------------------------------------------------------------------------------------

def test_language_codes_start_with_the_pivot():
    assert language_codes(3) == [PIVOT, "la", "lb", "lc"]
    assert len(language_codes(25)) == 26 and language_codes(25)[-1] == "ly"
    with pytest.raises(DataError, match="languages"):
        language_codes(26)


def test_family_dir_name_spells_out_the_spec():
    assert family_dir_name(FamilySpec()) == "synth1-l2-n20000-s1-v500-t500"
    assert family_dir_name(SMALL) == "synth1-l2-n300-s3-v40-t30"
    assert family_dir_name(FamilySpec(kinship=0.8)) == "synth1-l2-n20000-s1-v500-t500-k0.8"
    assert family_dir_name(FamilySpec(kinship=0.9, words=0.25)) == "synth1-l2-n20000-s1-v500-t500-k0.9-w0.25"


# --- Determinism ----------------------------------------------------------------------------------

def test_same_spec_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = digests(generate_family(SMALL, tmp_path / "first"))
    again = digests(generate_family(SMALL, tmp_path / "again"))
    reseeded = digests(generate_family(FamilySpec(**{**SMALL.__dict__, "seed": 4}), tmp_path / "reseeded"))

    assert len(first) == 3 * 3 + 2 * 3 + 1  # 3 splits x 3 languages, 6 dictionaries, family.json
    assert first == again
    assert first.keys() == reseeded.keys()
    assert all(first[name] != reseeded[name] for name in first)


def test_a_language_does_not_depend_on_how_many_languages_there_are(tmp_path):
    one = generate_family(FamilySpec(languages=1, sentences=300, seed=3), tmp_path / "one")
    three = generate_family(FamilySpec(languages=3, sentences=300, seed=3), tmp_path / "three")

    for name in ("train.pv", "train.la", "test.la", "dictionaries/la-pv.txt", "dictionaries/pv-la.txt"):
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
    assert typology(one, "la") == typology(three, "la")


def test_training_sentences_do_not_depend_on_the_evaluation_sizes(tmp_path):
    small = generate_family(SMALL, tmp_path / "small")
    large = generate_family(FamilySpec(**{**SMALL.__dict__, "valid": 7, "test": 90}), tmp_path / "large")

    for code in language_codes(SMALL.languages):
        assert (small / f"train.{code}").read_bytes() == (large / f"train.{code}").read_bytes()
        assert len(lines(large / f"valid.{code}")) == 7 and len(lines(large / f"test.{code}")) == 90


def test_kinship_gives_languages_the_pivots_grammar_and_keeps_the_meanings(tmp_path):
    unrelated = generate_family(SMALL, tmp_path / "unrelated")
    kin = generate_family(FamilySpec(**{**SMALL.__dict__, "kinship": 0.8}), tmp_path / "kin")
    identical = generate_family(FamilySpec(**{**SMALL.__dict__, "kinship": 1.0}), tmp_path / "identical")

    pivot = typology(unrelated, PIVOT)
    def differences(family: Path, code: str) -> int:
        return sum(value != pivot[feature] for feature, value in typology(family, code).items())
    assert all(differences(identical, code) == 0 for code in ("la", "lb"))
    assert sum(differences(kin, code) for code in ("la", "lb")) < sum(differences(unrelated, code) for code in ("la", "lb"))
    # The meanings (and so the pivot side and the numbers in every line) do not depend on kinship.
    assert (kin / "train.pv").read_bytes() == (unrelated / "train.pv").read_bytes()
    def numbers(family: Path) -> list[list[str]]:
        return [sorted(word for word in line.split() if DIGITS.match(word)) for line in lines(family / "train.la")]
    assert numbers(kin) == numbers(unrelated) and any(numbers(kin))


def test_fewer_words_give_a_smaller_vocabulary_and_one_keeps_the_family_as_it_was(tmp_path):
    whole = generate_family(FamilySpec(**{**SMALL.__dict__, "sentences": 2000}), tmp_path / "whole")
    small = generate_family(FamilySpec(**{**SMALL.__dict__, "sentences": 2000, "words": 0.1}), tmp_path / "small")

    for code in ("pv", "la"):
        def types(family: Path) -> set[str]:
            return {word for line in lines(family / f"train.{code}") for word in line.split()}
        assert len(types(small)) < 0.5 * len(types(whole)), code
    # words=1 is the family as it always was.
    assert digests(generate_family(FamilySpec(**{**SMALL.__dict__, "words": 1.0}), tmp_path / "one")) == \
        digests(generate_family(SMALL, tmp_path / "default"))


# --- Alignment and text ---------------------------------------------------------------------------

@pytest.mark.parametrize("split,size", [("train", MEDIUM.sentences), ("valid", MEDIUM.valid), ("test", MEDIUM.test)])
def test_every_language_has_the_requested_lines_and_they_carry_the_same_numbers(family, split, size):
    pivot = lines(family / f"{split}.{PIVOT}")
    numbers = [sorted(w for w in line.split() if DIGITS.match(w)) for line in pivot]
    assert sum(bool(n) for n in numbers) > size / 20  # the alignment check below is not vacuous

    for code in language_codes(MEDIUM.languages):
        text = (family / f"{split}.{code}").read_text(encoding="utf-8")
        assert text.endswith("\n") and "\r" not in text
        rows = lines(family / f"{split}.{code}")
        assert len(rows) == size
        assert all(row.strip() == row and row for row in rows)  # no empty lines, no stray spaces
        assert [sorted(w for w in row.split() if DIGITS.match(w)) for row in rows] == numbers, code


def test_sentences_have_a_natural_length(family):
    lengths = [len(line.split()) for line in lines(family / f"train.{PIVOT}")]
    assert 10 <= sum(lengths) / len(lengths) <= 14
    assert min(lengths) >= 3 and max(lengths) <= 30


def test_languages_share_almost_no_words_but_digits(family):
    pivot_words = set((family / f"train.{PIVOT}").read_text(encoding="utf-8").split())
    for code in language_codes(MEDIUM.languages)[1:]:
        words = set((family / f"train.{code}").read_text(encoding="utf-8").split())
        shared = {w for w in words & pivot_words if not DIGITS.match(w)}
        assert len(shared) < 0.03 * len(words), (code, sorted(shared)[:20])


def inversion_rate(source_lines: list[str], pivot_lines: list[str], dictionary: dict[str, set[str]]) -> float:
    """How often two dictionary words come in the opposite order in the pivot translation.

    A source word is found in the pivot line as the one token that starts with its translation: the
    pivot only suffixes, and its bare verbs are rare (singular subjects take a suffix in the present).
    """
    unambiguous = {word: next(iter(targets)) for word, targets in dictionary.items() if len(targets) == 1}
    inverted = pairs = 0
    for source, pivot in zip(source_lines, pivot_lines):
        source_counts, pivot_tokens = Counter(source.split()), pivot.split()
        positions = []
        for word in source.split():
            if source_counts[word] == 1 and word in unambiguous:
                found = [i for i, token in enumerate(pivot_tokens) if token.startswith(unambiguous[word])]
                positions += found if len(found) == 1 else []
        for before, after in itertools.combinations(positions, 2):
            pairs += 1
            inverted += before > after
    return inverted / pairs


def test_word_order_differs_exactly_where_family_json_says_so(family):
    pivot_typology = typology(family, PIVOT)
    pivot_lines = lines(family / f"train.{PIVOT}")[:3000]
    verdicts = []
    for code in language_codes(MEDIUM.languages)[1:]:
        differs = any(typology(family, code)[key] != pivot_typology[key]
                      for key in ("word_order", "adjective_position", "adposition"))
        rate = inversion_rate(lines(family / f"train.{code}")[:3000], pivot_lines, translations(family, code, PIVOT))
        assert (rate > 0.05) == differs, (code, rate, typology(family, code))
        assert rate < 0.01 or differs, (code, rate)
        verdicts.append(differs)
    assert any(verdicts)  # seed 1 has languages ordered unlike the pivot


# --- Dictionaries ---------------------------------------------------------------------------------

def test_a_dictionary_exists_for_every_ordered_pair(family):
    codes = language_codes(MEDIUM.languages)
    expected = {f"{a}-{b}.txt" for a, b in itertools.permutations(codes, 2)}
    assert {path.name for path in (family / "dictionaries").iterdir()} == expected
    for name in expected:
        entries = lines(family / "dictionaries" / name)
        assert len(entries) > 1000, name
        assert len(set(entries)) == len(entries)
        assert all(len(entry.split()) == 2 and entry == entry.lower() for entry in entries), name


def test_dictionary_words_occur_in_the_training_text(family):
    for source, target in itertools.permutations(language_codes(MEDIUM.languages), 2):
        source_words = set((family / f"train.{source}").read_text(encoding="utf-8").split())
        target_words = set((family / f"train.{target}").read_text(encoding="utf-8").split())
        table = translations(family, source, target)
        assert sum(w in source_words for w in table) >= 0.95 * len(table)
        assert all(t in target_words for targets in table.values() for t in targets)


def test_dictionary_entries_are_real_translations(family):
    # The pivot only suffixes, so a pivot word's every inflected form starts with the word itself.
    for code in language_codes(MEDIUM.languages)[1:]:
        table = translations(family, code, PIVOT)
        assert sum(len(t) > 1 for t in table.values()) > 0.01 * len(table)  # homonyms
        unambiguous = {w: next(iter(t)) for w, t in table.items() if len(t) == 1}
        found = Counter()
        total = Counter()
        for source, pivot in zip(lines(family / f"train.{code}")[:5000], lines(family / f"train.{PIVOT}")):
            pivot_tokens = pivot.split()
            for word in set(source.split()) & unambiguous.keys():
                total[word] += 1
                found[word] += any(token.startswith(unambiguous[word]) for token in pivot_tokens)
        assert sum(found.values()) >= 0.97 * sum(total.values()), code


# --- Difficulty -----------------------------------------------------------------------------------

def test_word_frequencies_are_zipfian_with_many_rare_types(family):
    for code in language_codes(MEDIUM.languages):
        counts = Counter((family / f"train.{code}").read_text(encoding="utf-8").split())
        frequencies = sorted(counts.values(), reverse=True)
        assert 3000 <= len(counts) <= 30000, code
        assert sum(f <= 5 for f in frequencies) > 0.3 * len(counts), code  # a long tail of rare words
        assert sum(frequencies[:20]) > 0.2 * sum(frequencies), code  # and a head of frequent ones


# --- Errors and atomic writes ---------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("languages", 0), ("languages", 26), ("sentences", 0), ("valid", 0), ("test", -1), ("seed", "1"),
    ("languages", True), ("kinship", 1.5), ("kinship", -0.1), ("kinship", "high"),
    ("words", 0), ("words", 1.5), ("words", True),
])
def test_an_invalid_spec_names_its_field(tmp_path, field, value):
    with pytest.raises(DataError, match=field) as error:
        generate_family(FamilySpec(**{**SMALL.__dict__, field: value}), tmp_path / "family")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "family").mkdir()
    (tmp_path / "family" / "notes.txt").write_text("mine\n")
    with pytest.raises(DataError, match="family"):
        generate_family(SMALL, tmp_path / "family")
    assert [path.name for path in tmp_path.iterdir()] == ["family"]


def test_an_empty_directory_is_filled(tmp_path):
    (tmp_path / "family").mkdir()
    assert (generate_family(SMALL, tmp_path / "family") / "train.la").is_file()


def test_a_crash_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_dictionaries", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_family(SMALL, tmp_path / "family")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rival_seed,loses_quietly", [(SMALL.seed, True), (SMALL.seed + 1, False)])
def test_losing_the_race_is_fine_only_to_an_identical_family(tmp_path, monkeypatch, rival_seed, loses_quietly):
    out = tmp_path / "family"
    write_family = synthetic._write_family

    def write_while_a_rival_finishes_first(spec, directory):
        write_family(spec, directory)
        monkeypatch.setattr(synthetic, "_write_family", write_family)
        generate_family(FamilySpec(**{**SMALL.__dict__, "seed": rival_seed}), out)

    monkeypatch.setattr(synthetic, "_write_family", write_while_a_rival_finishes_first)
    if loses_quietly:
        assert generate_family(SMALL, out) == out
    else:
        with pytest.raises(DataError, match="family"):
            generate_family(SMALL, out)
    assert [path.name for path in tmp_path.iterdir()] == ["family"]  # no staging directory left
    assert json.loads((out / "family.json").read_text())["spec"]["seed"] == rival_seed
