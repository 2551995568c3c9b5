"""The meanings a synthetic family says: its concepts, their frequencies, and the grammar of a meaning.

A meaning is what line i of every language's file says before any language puts it into words: a
sentence of one or two clauses, each a verb with its subject, object, adjunct, adverb, tense and
negation, each noun phrase a noun with its adjectives, determiner, number and numeral. Concepts are
integers (their rank in the lexicon); `synthetic.py` gives each language its own words and rules for
them. Concepts are drawn with Zipfian frequencies, and verbs, adjectives and adpositions select the
semantic classes of the nouns they combine with, so every meaning is plausible.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from bisect import bisect
from dataclasses import dataclass
from typing import NamedTuple


# --- Random streams and Zipfian draws -----------------------------------------------------------

def stream(seed: int, name: str) -> random.Random:
    """An independent random stream for one purpose (a language, a split) of the family `seed`."""
    digest = hashlib.sha256(f"xattn-ray synthetic family {seed} {name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


ZIPF_EXPONENT = 1.0  # classic Zipf: the concept of rank r is drawn about 1 / r as often as the commonest


class Zipf:
    """Draws from `items` with probability proportional to 1 / (rank + 1) ** ZIPF_EXPONENT."""

    def __init__(self, items: list[int], ranks: list[int]) -> None:
        self.items = items
        self.cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in ranks))
        self.last = len(items) - 1

    def draw(self, rng: random.Random) -> int:
        # `hi` guards against rounding pushing the point past the last bucket.
        return self.items[bisect(self.cumulative, rng.random() * self.cumulative[-1], 0, self.last)]


# --- The shared world of concepts ---------------------------------------------------------------

NOUN_CLASSES = {"person": 300, "animal": 300, "food": 350, "artifact": 700, "place": 300, "plant": 250}
ALL_CLASSES = tuple(NOUN_CLASSES)


@dataclass(frozen=True)
class Frame:
    """What a group of verbs combines with."""

    verbs: int  # how many verb concepts have this frame
    subjects: tuple[str, ...]  # noun classes a subject may have
    objects: tuple[str, ...]  # noun classes an object may have; empty for an intransitive verb
    adjuncts: tuple[str, ...]  # adposition roles of its phrases (obligatory for intransitive verbs)


VERB_FRAMES = {
    "ingest": Frame(40, ("person", "animal"), ("food", "plant"), ("locative", "comitative")),
    "perceive": Frame(50, ("person", "animal"), ALL_CLASSES, ("locative", "comitative")),
    "handle": Frame(120, ("person",), ("artifact", "food", "plant"), ("locative", "comitative", "benefactive")),
    "social": Frame(60, ("person",), ("person", "animal"), ("locative", "comitative")),
    "visit": Frame(30, ("person",), ("place",), ("comitative", "benefactive")),
    "motion": Frame(50, ("person", "animal"), (), ("goal", "source")),
    "rest": Frame(40, ("person", "animal"), (), ("locative",)),
    "grow": Frame(20, ("plant",), (), ("locative",)),
}
ADJECTIVE_GROUPS = {  # group: (how many adjectives, noun classes they describe)
    "size": (40, ALL_CLASSES),
    "color": (50, ("animal", "food", "artifact", "plant")),
    "taste": (40, ("food", "plant")),
    "character": (80, ("person", "animal")),
    "condition": (60, ("artifact", "place")),
    "age": (30, ("person", "animal", "artifact", "place", "plant")),
}
ADPOSITION_ROLES = {  # role: (how many adpositions, noun classes of their objects)
    "locative": (6, ("place", "artifact", "plant")),
    "goal": (3, ("place",)),
    "source": (2, ("place",)),
    "comitative": (1, ("person", "animal", "artifact")),
    "benefactive": (1, ("person", "animal")),
}
PRESENT, PAST, FUTURE = 0, 1, 2
ADVERB_GROUPS = {  # group: (how many adverbs, tenses they fit); time adverbs agree with the tense
    "manner": (16, (PRESENT, PAST, FUTURE)),
    "present": (4, (PRESENT,)),
    "past": (4, (PAST,)),
    "future": (4, (FUTURE,)),
}
CONJUNCTIONS = 6
PARTS_OF_SPEECH = ("noun", "verb", "adjective", "adposition", "adverb", "conjunction")


class Concept(NamedTuple):
    kind: str  # its semantic class, verb frame, adjective group, adposition role or adverb group
    rank: int  # frequency rank within its kind: 0 is the most common


def concepts_of(sizes: dict[str, int]) -> tuple[Concept, ...]:
    return tuple(Concept(kind, rank) for kind, size in sizes.items() for rank in range(size))


def zipf_over(concepts: tuple[Concept, ...], kinds: tuple[str, ...]) -> Zipf:
    chosen = [i for i, concept in enumerate(concepts) if concept.kind in kinds]
    return Zipf(chosen, [concepts[i].rank for i in chosen])


MIN_OPEN_CLASS = 2  # concepts an open class keeps however small `words` is, so every frame has a choice


class World:
    """The concepts every language names, and the frequency tables meanings are drawn from.

    `words` scales the open classes (each noun class, verb frame and adjective group); the closed
    classes (adpositions, adverbs, conjunctions, numerals) are the same in every world.
    """

    def __init__(self, words: float = 1.0) -> None:
        def scaled(size: int) -> int:
            return max(MIN_OPEN_CLASS, round(size * words))

        self.concepts = {
            "noun": concepts_of({cls: scaled(size) for cls, size in NOUN_CLASSES.items()}),
            "verb": concepts_of({frame: scaled(spec.verbs) for frame, spec in VERB_FRAMES.items()}),
            "adjective": concepts_of({group: scaled(size) for group, (size, _) in ADJECTIVE_GROUPS.items()}),
            "adposition": concepts_of({role: size for role, (size, _) in ADPOSITION_ROLES.items()}),
            "adverb": concepts_of({group: size for group, (size, _) in ADVERB_GROUPS.items()}),
            "conjunction": concepts_of({"conjunction": CONJUNCTIONS}),
        }
        nouns, adjectives = self.concepts["noun"], self.concepts["adjective"]
        self.nouns_of = {cls: zipf_over(nouns, (cls,)) for cls in ALL_CLASSES}
        self.adjectives_for = {
            cls: zipf_over(adjectives, tuple(g for g, (_, classes) in ADJECTIVE_GROUPS.items() if cls in classes))
            for cls in ALL_CLASSES
        }
        self.verbs = zipf_over(self.concepts["verb"], tuple(VERB_FRAMES))
        self.verb_frame = tuple(VERB_FRAMES[concept.kind] for concept in self.concepts["verb"])
        self.adpositions_for = {role: zipf_over(self.concepts["adposition"], (role,)) for role in ADPOSITION_ROLES}
        self.adverbs_for = {
            tense: zipf_over(self.concepts["adverb"], tuple(g for g, (_, ts) in ADVERB_GROUPS.items() if tense in ts))
            for tense in (PRESENT, PAST, FUTURE)
        }
        self.conjunctions = zipf_over(self.concepts["conjunction"], ("conjunction",))
        self.numerals = Zipf(list(range(2, 100)), list(range(98)))


# --- Meanings -----------------------------------------------------------------------------------

class NounPhrase(NamedTuple):
    noun: int
    adjectives: tuple[int, ...]
    definite: bool
    plural: bool
    numeral: int  # the number written before (or after) the noun; 0 when there is none


class Clause(NamedTuple):
    verb: int
    subject: NounPhrase
    object: NounPhrase | None  # None for an intransitive verb
    tense: int  # PRESENT, PAST or FUTURE
    negated: bool
    adjunct: tuple[int, NounPhrase] | None  # an adposition and its noun phrase
    adverb: int | None


class Sentence(NamedTuple):
    first: Clause
    conjunction: int | None  # joins the second clause, when there is one
    second: Clause | None


def _sample_noun_phrase(rng: random.Random, world: World, classes: tuple[str, ...],
                        max_adjectives: int) -> NounPhrase:
    noun_class = rng.choice(classes)
    roll = rng.random()
    n_adjectives = min(max_adjectives, 2 if roll < 0.12 else 1 if roll < 0.5 else 0)
    # dict.fromkeys drops a repeated adjective while keeping the order.
    adjectives = tuple(dict.fromkeys(world.adjectives_for[noun_class].draw(rng) for _ in range(n_adjectives)))
    plural = rng.random() < 0.3
    numeral = world.numerals.draw(rng) if plural and rng.random() < 0.4 else 0
    return NounPhrase(world.nouns_of[noun_class].draw(rng), adjectives, rng.random() < 0.55, plural, numeral)


def _sample_clause(rng: random.Random, world: World, max_adjectives: int) -> Clause:
    verb = world.verbs.draw(rng)
    frame = world.verb_frame[verb]
    subject = _sample_noun_phrase(rng, world, frame.subjects, max_adjectives)
    obj = _sample_noun_phrase(rng, world, frame.objects, max_adjectives) if frame.objects else None
    roll = rng.random()
    tense = PRESENT if roll < 0.45 else PAST if roll < 0.8 else FUTURE
    negated = rng.random() < 0.15
    adjunct = None
    if not frame.objects or rng.random() < 0.5:  # intransitive verbs always say where / where to
        role = rng.choice(frame.adjuncts)
        adjunct = (world.adpositions_for[role].draw(rng),
                   _sample_noun_phrase(rng, world, ADPOSITION_ROLES[role][1], min(max_adjectives, 1)))
    adverb = world.adverbs_for[tense].draw(rng) if rng.random() < 0.25 else None
    return Clause(verb, subject, obj, tense, negated, adjunct, adverb)


def sample_sentence(rng: random.Random, world: World) -> Sentence:
    if rng.random() < 0.4:  # two clauses, each kept lighter so a sentence stays under ~30 words
        first = _sample_clause(rng, world, max_adjectives=1)
        return Sentence(first, world.conjunctions.draw(rng), _sample_clause(rng, world, max_adjectives=1))
    return Sentence(_sample_clause(rng, world, max_adjectives=2), None, None)
