"""A synthetic family of languages: multi-parallel corpora and gold dictionaries, generated offline.

Every sentence starts as a *meaning* drawn from a small probabilistic grammar, and each language then
*realizes* that meaning with its own words and rules, so line i of every file says the same thing.

The grammar. A sentence is one clause, or two joined by a conjunction. A clause has a verb, a subject,
an object (for transitive verbs), an optional adpositional phrase, an optional adverb, a tense
(present, past, future) and possibly a negation. A noun phrase has a noun, up to two adjectives, a
definite or indefinite determiner, and singular or plural number, sometimes with a numeral written as
digits (the only words all languages share). Concepts belong to semantic classes (person, animal,
food, artifact, place, plant) and verbs, adjectives and adpositions select the classes they combine
with: people and animals eat food, only plants grow, one travels *to* a place. So every sentence is
plausible, and a homonym (two concepts of different classes sharing a surface form) can be told
apart from its context. Concepts are drawn with Zipfian frequencies from a lexicon of about 2,200
nouns, 410 verbs and 300 adjectives, so rare words exist even in large corpora. With `words` w < 1
each noun class, verb frame and adjective group keeps the share w of its concepts (the commonest
ones), a smaller world that a small model learns in fewer updates; the closed classes stay whole.

How the languages differ. Each language has its own phonology (consonant and vowel inventories,
syllable shapes), so its words are unrelated pseudo-words that a BPE model must split, with short
words for frequent concepts. Each has its own typology: the order of subject, verb and object,
adjectives before or after the noun, prepositions or postpositions, articles as words or a definite
suffix, plural prefixes or suffixes, tense and negation as affixes or separate particles, subject-verb
agreement, and an accusative suffix on objects (always when the verb comes last). About 4% of the
nouns, verbs and adjectives of each non-pivot language are homonyms.

The pivot `pv` (the parent model's target side) is English-like in typology: SVO, adjectives before
nouns, prepositions, articles as separate words before the noun, a plural suffix, a past suffix, a
future particle and a negation particle before the verb, and a present-tense suffix for singular
subjects. Its words are generated pseudo-words too. Other languages are `la`, `lb`, `lc`, and so on.

Kinship. By default each language draws its typology independently, so two members of the family can
be as far apart as English and Japanese. With `kinship` k, each feature of a language's typology is
the pivot's with probability k (on a stream of its own), so the members share most of their grammar
as French, German and Czech share theirs with English, while their words stay unrelated. Transfer by
replacing only the vocabulary (Gheini et al. 2021) is studied on such languages.

Everything is deterministic: each random stream is a `random.Random` seeded from a SHA-256 of the
family seed and the stream's name. A language is generated from its own stream, so language `la` is the
same whether the family has one language or ten, and the training sentences do not depend on the
sizes of the validation and test sets.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from xattn_ray.data.synthetic_meaning import (FUTURE, PARTS_OF_SPEECH, PAST, PRESENT, Clause, Concept,
                                             NounPhrase, Sentence, World, sample_sentence, stream)
from xattn_ray.errors import DataError

PIVOT = "pv"
MAX_LANGUAGES = 25  # non-pivot languages: codes la .. ly, so at most 26 codes with the pivot
GENERATOR_VERSION = 1  # recorded in family.json; bump when the same spec would produce different files


def language_codes(n_languages: int) -> list[str]:
    """The pivot's code followed by the codes of `n_languages` other languages: pv, la, lb, ..."""
    if not 0 <= n_languages <= MAX_LANGUAGES:
        raise DataError(f"synthetic family: languages must be from 0 to {MAX_LANGUAGES}, got {n_languages}")
    return [PIVOT] + [f"l{letter}" for letter in string.ascii_lowercase[:n_languages]]


@dataclass(frozen=True)
class FamilySpec:
    """How big a synthetic family to generate."""

    languages: int = 2  # non-pivot languages, besides the pivot `pv`
    sentences: int = 20000  # training sentences (lines per language)
    seed: int = 1  # seeds the lexicons, the typologies and the sentences
    valid: int = 500  # validation sentences
    test: int = 500  # test sentences
    kinship: float = 0.0  # chance that each typological feature of a language is the pivot's
    words: float = 1.0  # share of the world's nouns, verbs and adjectives the family names (0 < words <= 1)


def family_dir_name(spec: FamilySpec) -> str:
    """A stable directory name for the family `spec` describes, usable as a cache key.

    It names the generator version too, so a cache never serves a family an older generator made.
    """
    name = f"synth{GENERATOR_VERSION}-l{spec.languages}-n{spec.sentences}-s{spec.seed}-v{spec.valid}-t{spec.test}"
    if spec.kinship:
        name += f"-k{spec.kinship:g}"
    return name + (f"-w{spec.words:g}" if spec.words != 1 else "")


# --- Languages ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phonology:
    """Which letters a language's words are made of, and how they form syllables."""

    consonants: str
    vowels: str
    syllables: tuple[str, ...]  # syllable shapes: C consonant, L liquid consonant, V vowel; CV is common

    def syllable(self, rng: random.Random) -> str:
        shape = "CV" if rng.random() < 0.5 else rng.choice(self.syllables)
        letters = {"C": self.consonants, "V": self.vowels, "L": [c for c in self.consonants if c in "lrwj"]}
        return "".join(rng.choice(letters[slot]) for slot in shape)


@dataclass(frozen=True)
class Typology:
    """How a language arranges and marks what a meaning says."""

    word_order: str  # order of subject, verb and object: SVO, SOV, VSO, VOS, OVS or OSV
    adjective_position: str  # adjectives (and numerals) "before" or "after" the noun
    adposition: str  # "preposition" or "postposition"
    definite: str  # "article-before" or "article-after" the noun phrase, or a "suffix" on the noun
    indefinite: str  # "article" (a word, singular only, placed like a definite article) or "none"
    plural: str  # the plural marker is a "prefix" or a "suffix" of the noun
    object_case: bool  # objects take an accusative suffix
    past: str  # "prefix", "suffix", "particle-before" or "particle-after" the verb
    future: str  # as `past`; the present tense is unmarked
    negation: str  # as `past`
    agreement: str  # verb suffix: "none", "plural" subject, or "singular-present" subject (English -s)


@dataclass(frozen=True)
class Morphemes:
    """The affixes and particles a language's typology uses ("" where it has none)."""

    plural: str
    definite: str
    indefinite: str
    accusative: str
    past: str
    future: str
    negation: str
    agreement: str


@dataclass(frozen=True)
class Language:
    """One member of the family: its sound system, grammar, and a word for every concept."""

    code: str
    phonology: Phonology
    typology: Typology
    morphemes: Morphemes
    lexicon: dict[str, tuple[str, ...]]  # part of speech -> the word of each concept, by concept id
    homonyms: int  # concepts given the word of a concept of another kind (one per homonym pair)


PIVOT_PHONOLOGY = Phonology("bdfghklmnprstvw", "aeiou", ("CVC", "CLV", "CLVC", "VC"))
PIVOT_TYPOLOGY = Typology("SVO", "before", "preposition", "article-before", "article", "suffix", False,
                          "suffix", "particle-before", "particle-before", "singular-present")
WORD_ORDERS = {"SOV": 0.3, "SVO": 0.3, "VSO": 0.15, "VOS": 0.1, "OVS": 0.08, "OSV": 0.07}
MARKER_PLACES = ("prefix", "suffix", "particle-before", "particle-after")
HOMONYM_SHARE = 0.04


def _draw_phonology(rng: random.Random) -> Phonology:
    consonants = rng.sample("ptkbdgmnsfvzhcx", rng.randint(7, 12)) + rng.sample("lrwj", rng.randint(1, 3))
    if rng.random() < 0.4:  # some languages write a few letters outside ASCII
        consonants += rng.sample("šžčñŋð", rng.randint(1, 2))
    vowels = rng.sample("aeiouy", rng.randint(3, 6))
    if rng.random() < 0.3:
        vowels += rng.sample("áéóöüåø", rng.randint(1, 2))
    shapes = [shape for shape in ("CVC", "V", "VC", "CLV", "CVV", "CVCC") if rng.random() < 0.5]
    return Phonology("".join(sorted(consonants)), "".join(sorted(vowels)), tuple(shapes) or ("CVC",))


def _draw_typology(rng: random.Random) -> Typology:
    word_order = rng.choices(list(WORD_ORDERS), weights=list(WORD_ORDERS.values()))[0]
    object_first = word_order.index("O") < word_order.index("V")
    verb_final = word_order.endswith("V")
    return Typology(
        word_order=word_order,
        adjective_position=rng.choice(("before", "after")),
        # Object-before-verb languages tend to have postpositions; verb-final ones mark their objects.
        adposition="postposition" if rng.random() < (0.8 if object_first else 0.2) else "preposition",
        definite=rng.choice(("article-before", "article-after", "suffix")),
        indefinite=rng.choice(("article", "none")),
        plural="suffix" if rng.random() < 0.7 else "prefix",
        object_case=verb_final or word_order.index("O") < word_order.index("S") or rng.random() < 0.2,
        past=rng.choice(MARKER_PLACES),
        future=rng.choice(MARKER_PLACES),
        negation=rng.choice(MARKER_PLACES),
        agreement=rng.choice(("none", "plural")),
    )


def _draw_morphemes(rng: random.Random, phonology: Phonology, typology: Typology, taken: set[str]) -> Morphemes:
    needed = {"indefinite": typology.indefinite == "article", "accusative": typology.object_case,
              "agreement": typology.agreement != "none"}  # the others every language uses
    return Morphemes(**{field.name: _new_word(rng, phonology, taken, syllables=1) if needed.get(field.name, True)
                        else "" for field in fields(Morphemes)})


def _new_word(rng: random.Random, phonology: Phonology, taken: set[str], syllables: int) -> str:
    """A word not yet in `taken` (which it joins); after many collisions it grows a syllable."""
    attempts = 0
    while True:
        word = "".join(phonology.syllable(rng) for _ in range(syllables + attempts // 50))
        if word not in taken:
            taken.add(word)
            return word
        attempts += 1


def _syllable_count(rng: random.Random, part_of_speech: str, rank: int) -> int:
    # Frequent words are short (Zipf's law of abbreviation); closed-class words are shortest.
    if part_of_speech in ("adposition", "conjunction"):
        return 1
    if rank < 15:
        return rng.randint(1, 2)
    if rank < 150:
        return rng.randint(2, 3)
    return rng.randint(2, 4)


def _share_homonyms(rng: random.Random, words: list[str], concepts: tuple[Concept, ...]) -> int:
    """Give ~HOMONYM_SHARE of the concepts the word of a concept of another kind; returns how many."""
    free = list(range(len(words)))
    rng.shuffle(free)
    shared = 0
    while shared < round(HOMONYM_SHARE * len(words)) and len(free) >= 2:
        borrower = free.pop()
        lender = next((c for c in free if concepts[c].kind != concepts[borrower].kind), None)
        if lender is None:
            break
        free.remove(lender)
        words[borrower] = words[lender]
        shared += 1
    return shared


def _inherit(typology: Typology, kinship: float, rng: random.Random) -> Typology:
    """`typology` with each feature replaced by the pivot's with probability `kinship`."""
    inherited = [field.name for field in fields(Typology) if rng.random() < kinship]  # one draw per feature
    return replace(typology, **{name: getattr(PIVOT_TYPOLOGY, name) for name in inherited})


def _make_language(code: str, spec: FamilySpec, world: World) -> Language:
    """Language `code` of the family `spec`, from its own random streams only."""
    rng = stream(spec.seed, f"language {code}")
    if code == PIVOT:
        phonology, typology = PIVOT_PHONOLOGY, PIVOT_TYPOLOGY
    else:
        phonology, typology = _draw_phonology(rng), _draw_typology(rng)
        if spec.kinship:
            typology = _inherit(typology, spec.kinship, stream(spec.seed, f"kinship {code}"))
    taken: set[str] = set()
    morphemes = _draw_morphemes(rng, phonology, typology, taken)
    lexicon, homonyms = {}, 0
    for part_of_speech in PARTS_OF_SPEECH:
        concepts = world.concepts[part_of_speech]
        words = [_new_word(rng, phonology, taken, _syllable_count(rng, part_of_speech, c.rank)) for c in concepts]
        if code != PIVOT and part_of_speech in ("noun", "verb", "adjective"):
            homonyms += _share_homonyms(rng, words, concepts)
        lexicon[part_of_speech] = tuple(words)
    return Language(code, phonology, typology, morphemes, lexicon, homonyms)


# --- Realizing meanings as text -----------------------------------------------------------------

def _attach(stem: str, marker: str, place: str, before: list[str], after: list[str]) -> str:
    """Attach `marker` to `stem` as an affix, or record it as a particle; returns the new stem."""
    if place == "prefix":
        return marker + stem
    if place == "suffix":
        return stem + marker
    (before if place == "particle-before" else after).append(marker)
    return stem


class _Realizer:
    """Writes meanings as sentences of one language, with every inflected form computed once."""

    def __init__(self, language: Language) -> None:
        self.typology, self.morphemes, self.lexicon = language.typology, language.morphemes, language.lexicon
        t = self.typology
        self.verb_final = t.word_order.endswith("V")
        self.adjectives_first = t.adjective_position == "before"
        self.article_first = t.definite != "article-after"
        self.definite_article = self.morphemes.definite if t.definite != "suffix" else ""
        # Forms indexed by ((noun * 2 + plural) * 2 + definite) * 2 + accusative, and
        # ((verb * 3 + tense) * 2 + negated) * 2 + plural subject.
        self.noun_forms = [self._inflect_noun(stem, *flags) for stem in self.lexicon["noun"]
                           for flags in itertools.product((False, True), repeat=3)]
        self.verb_phrases = [self._inflect_verb(stem, tense, negated, plural)
                             for stem in self.lexicon["verb"] for tense in (PRESENT, PAST, FUTURE)
                             for negated in (False, True) for plural in (False, True)]

    def _inflect_noun(self, stem: str, plural: bool, definite: bool, accusative: bool) -> str:
        t, m = self.typology, self.morphemes
        if plural:
            stem = m.plural + stem if t.plural == "prefix" else stem + m.plural
        if definite and t.definite == "suffix":
            stem += m.definite
        return stem + m.accusative if accusative and t.object_case else stem

    def _inflect_verb(self, stem: str, tense: int, negated: bool, plural_subject: bool) -> tuple[str, ...]:
        t, m = self.typology, self.morphemes
        before: list[str] = []
        after: list[str] = []
        if tense == PAST:
            stem = _attach(stem, m.past, t.past, before, after)
        elif tense == FUTURE:
            stem = _attach(stem, m.future, t.future, before, after)
        if (t.agreement == "plural" and plural_subject) or (
                t.agreement == "singular-present" and not plural_subject and tense == PRESENT):
            stem += m.agreement
        if negated:  # attached last, so negation is the outermost affix and follows a tense particle
            stem = _attach(stem, m.negation, t.negation, before, after)
        return (*before, stem, *after)

    def noun_phrase(self, phrase: NounPhrase, accusative: bool) -> list[str]:
        noun = self.noun_forms[((phrase.noun * 2 + phrase.plural) * 2 + phrase.definite) * 2 + accusative]
        modifiers = [self.lexicon["adjective"][a] for a in phrase.adjectives]
        if phrase.numeral:
            modifiers.insert(0, str(phrase.numeral))
        words = modifiers + [noun] if self.adjectives_first else [noun] + modifiers
        article = self.definite_article if phrase.definite else "" if phrase.plural else self.morphemes.indefinite
        if article:
            return [article] + words if self.article_first else words + [article]
        return words

    def clause(self, clause: Clause) -> list[str]:
        parts = {
            "S": self.noun_phrase(clause.subject, accusative=False),
            "V": self.verb_phrases[((clause.verb * 3 + clause.tense) * 2 + clause.negated) * 2 + clause.subject.plural],
            "O": self.noun_phrase(clause.object, accusative=True) if clause.object else [],
        }
        adjuncts: list[str] = []
        if clause.adjunct:
            adposition, phrase = clause.adjunct
            words = self.noun_phrase(phrase, accusative=False)
            marker = self.lexicon["adposition"][adposition]
            adjuncts = [marker, *words] if self.typology.adposition == "preposition" else [*words, marker]
        if clause.adverb is not None:
            adjuncts.append(self.lexicon["adverb"][clause.adverb])
        words: list[str] = []
        for slot in self.typology.word_order:
            if slot == "V" and self.verb_final:  # verb-final languages put adjuncts before the verb
                words += adjuncts
            words += parts[slot]
        return words if self.verb_final else words + adjuncts

    def sentence(self, sentence: Sentence) -> str:
        words = self.clause(sentence.first)
        if sentence.second is not None:
            words += [self.lexicon["conjunction"][sentence.conjunction], *self.clause(sentence.second)]
        return " ".join(words)


# --- Writing a family ---------------------------------------------------------------------------

CHUNK = 4096  # sentences realized and written at a time, so memory stays flat for any corpus size


def generate_family(spec: FamilySpec, out_dir: Path | str) -> Path:
    """Write the family `spec` describes into `out_dir` (which must not exist or be empty); returns it.

    The files are generated in a temporary sibling directory renamed into place at the end, so
    `out_dir` never holds a partial family, even when several processes generate it at once.
    """
    validate_spec(spec)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: cannot write a synthetic family there, it exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the family is meant to be shared
        _write_family(spec, staging)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def validate_spec(spec: FamilySpec) -> None:
    """Raise a DataError naming the first field of `spec` that cannot describe a family."""
    for field in fields(spec):
        value = getattr(spec, field.name)
        if field.name == "kinship":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise DataError(f"synthetic family: kinship must be a number from 0 to 1, got {value!r}")
        elif field.name == "words":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise DataError(f"synthetic family: words must be a number above 0 and at most 1, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"synthetic family: {field.name} must be an integer, got {value!r}")
    if not 1 <= spec.languages <= MAX_LANGUAGES:
        raise DataError(f"synthetic family: languages must be from 1 to {MAX_LANGUAGES}, got {spec.languages}")
    for name in ("sentences", "valid", "test"):
        if getattr(spec, name) < 1:
            raise DataError(f"synthetic family: {name} must be at least 1, got {getattr(spec, name)}")


def _write_family(spec: FamilySpec, directory: Path) -> None:
    world = World(spec.words)
    languages = [_make_language(code, spec, world) for code in language_codes(spec.languages)]
    realizers = [_Realizer(language) for language in languages]
    vocabularies = _write_split("train", spec.sentences, spec.seed, world, languages, realizers, directory)
    _write_split("valid", spec.valid, spec.seed, world, languages, realizers, directory)
    _write_split("test", spec.test, spec.seed, world, languages, realizers, directory)
    _write_dictionaries(languages, vocabularies, directory / "dictionaries")
    _write_description(spec, languages, directory)


def _write_split(split: str, size: int, seed: int, world: World, languages: list[Language],
                 realizers: list[_Realizer], directory: Path) -> dict[str, set[str]]:
    """Write `size` sentences of every language; returns each language's set of words used."""
    rng = stream(seed, f"sentences {split}")  # one stream per split: train ignores valid/test sizes
    vocabularies: dict[str, set[str]] = {language.code: set() for language in languages}
    files = [open(directory / f"{split}.{language.code}", "w", encoding="utf-8", newline="\n",
                  buffering=1 << 20) for language in languages]
    try:
        for start in range(0, size, CHUNK):
            meanings = [sample_sentence(rng, world) for _ in range(min(CHUNK, size - start))]
            for language, realizer, file in zip(languages, realizers, files):
                text = "\n".join(map(realizer.sentence, meanings)) + "\n"
                file.write(text)
                vocabularies[language.code].update(text.split())
    finally:
        for file in files:
            file.close()
    return vocabularies


def _write_dictionaries(languages: list[Language], vocabularies: dict[str, set[str]], directory: Path) -> None:
    """Write `<a>-<b>.txt` for every ordered pair: translations whose words both occur in training text."""
    directory.mkdir()
    for source, target in itertools.permutations(languages, 2):
        seen_source, seen_target = vocabularies[source.code], vocabularies[target.code]
        entries = {
            f"{source_word} {target_word}\n"
            for part_of_speech in PARTS_OF_SPEECH
            for source_word, target_word in zip(source.lexicon[part_of_speech], target.lexicon[part_of_speech])
            if source_word in seen_source and target_word in seen_target
        }
        path = directory / f"{source.code}-{target.code}.txt"
        path.write_text("".join(sorted(entries)), encoding="utf-8")


def _write_description(spec: FamilySpec, languages: list[Language], directory: Path) -> None:
    """family.json: the spec and, per language, what was generated, for people to read."""
    description = {
        "generator": "xattn_ray.data.synthetic",
        "version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "concepts": {pos: len(words) for pos, words in languages[0].lexicon.items()},
        "languages": {
            language.code: {
                "typology": asdict(language.typology),
                "phonology": asdict(language.phonology),
                "morphemes": asdict(language.morphemes),
                "homonyms": language.homonyms,
                "example": _first_line(directory / f"train.{language.code}"),
            }
            for language in languages
        },
    }
    text = json.dumps(description, indent=2, ensure_ascii=False) + "\n"
    (directory / "family.json").write_text(text, encoding="utf-8")


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8") as file:
        return file.readline().rstrip("\n")


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished family into place; losing the race to an identical family is fine."""
    try:
        os.rename(staging, out_dir)
    except OSError:
        ours, theirs = staging / "family.json", out_dir / "family.json"
        if theirs.is_file() and theirs.read_bytes() == ours.read_bytes():
            shutil.rmtree(staging)
            return
        raise DataError(f"{out_dir}: cannot write a synthetic family there, it exists and is not empty") from None
