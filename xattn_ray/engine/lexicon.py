"""Bilingual lexicon induction (BLI): do a child's new word embeddings line up with its parent's?

Gheini et al. (2021) ask whether training only the cross-attention forces a child's new embeddings
into the space of the embeddings they replace. For each word of the child's new language (German,
say) that a gold dictionary translates, they retrieve the nearest word of the parent's language
(French) in the parent's embedding matrix; the word is a hit when the dictionary lists that pair.
P@1 is hits / evaluated words (docs/paper.md, "Lexicon induction": 55% after +xattn, 19.7% after +body).

Decisions, where the paper and its scripts leave room:
- Words. A vocabulary entry is a whole word when its piece starts with SentencePiece's word marker
  "▁", is more than the marker alone, and is not a special piece; it is compared lower-cased and
  without the marker. The authors' script also required the *next* piece to start a word, which only
  a tokenized corpus can tell; at the vocabulary level a word-initial piece such as "▁walk" (of
  "▁walk ing") stays in, and the gold dictionary removes most pieces that are not words.
- Evaluated words. A new-language word counts when the dictionary lists it and at least one of its
  gold translations is a whole word of the parent's vocabulary. A word whose translations the parent
  cannot spell as one piece is a miss no embedding could avoid; counting it would measure the
  parent's vocabulary rather than the alignment.
- Similarity. The authors' code retrieved by dot product, the paper says cosine; both are computed,
  and CSLS (Conneau et al. 2017), which discounts "hubs" that are near every query.
- Dictionaries. MUSE publishes a train and a test split per pair (`de-fr.0-5000.txt`,
  `de-fr.5000-6500.txt`); BLI here trains nothing, so a pair's dictionary is the union of its files.
  Where no direct dictionary exists, one is composed through English (or the synthetic family's
  pivot `pv`): de-en then en-fr gives de-fr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from xattn_ray.engine.checkpoint import LoadedModel
from xattn_ray.engine.policies import Side
from xattn_ray.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, WORD_START, Tokenizer, starts_word
from xattn_ray.errors import DataError

Dictionary = dict[str, set[str]]  # a word -> its gold translations
Method = Literal["cosine", "dot", "csls"]
METHODS: tuple[Method, ...] = ("cosine", "dot", "csls")
PIVOTS = ("en", "pv")  # languages a missing dictionary is composed through, in this order
_SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID, UNK_ID})


# --- Gold dictionaries ------------------------------------------------------------------------

def read_dictionary(path: Path) -> Dictionary:
    """A MUSE-format dictionary: one `source target` pair a line, split on any whitespace.

    Blank lines are skipped; a line that is not UTF-8 or not two words is a DataError naming the
    file and line.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: dictionary not found") from None
    dictionary: Dictionary = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            fields = raw.decode("utf-8").split()
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}: not UTF-8 (byte {err.start + 1} of the line)") from None
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected two words (source target), found {len(fields)}")
        dictionary.setdefault(fields[0], set()).add(fields[1])
    if not dictionary:
        raise DataError(f"{path}: dictionary is empty")
    return dictionary


def reverse(dictionary: Dictionary) -> Dictionary:
    """The b -> a dictionary of an a -> b dictionary."""
    reversed_: Dictionary = {}
    for word, translations in dictionary.items():
        for translation in translations:
            reversed_.setdefault(translation, set()).add(word)
    return reversed_


def compose(a_to_b: Dictionary, b_to_c: Dictionary) -> Dictionary:
    """a -> c through the pivot b: every c that some b translation of a translates to."""
    composed = {word: {c for b in pivots for c in b_to_c.get(b, ())} for word, pivots in a_to_b.items()}
    return {word: translations for word, translations in composed.items() if translations}


class _Found(NamedTuple):
    dictionary: Dictionary
    folder: str  # the folder's name, e.g. `muse`
    pair: str  # `de-fr`, or `fr-de⁻¹` for a reversed fr-de dictionary


def find_dictionary(folders: list[Path], src: str, tgt: str) -> tuple[Dictionary, str]:
    """The src -> tgt dictionary from the files in `folders`, and a description of what was used.

    In order of preference: a direct `src-tgt` dictionary in any folder (`muse de-fr`); the reverse
    of a `tgt-src` one (`muse fr-de⁻¹`); a composition through a pivot in PIVOTS, each leg direct or
    reversed (`muse de-en ∘ en-fr`). A pair's files are `src-tgt.txt` or, failing that, every
    `src-tgt.*.txt` (MUSE's splits), read as one dictionary.
    """
    found = _find_pair(folders, src, tgt)
    if found is not None:
        return found.dictionary, f"{found.folder} {found.pair}"
    for pivot in PIVOTS:
        if pivot in (src, tgt):
            continue
        first, second = _find_pair(folders, src, pivot), _find_pair(folders, pivot, tgt)
        if first is None or second is None:
            continue
        composed = compose(first.dictionary, second.dictionary)
        if composed:
            if first.folder == second.folder:
                return composed, f"{first.folder} {first.pair} ∘ {second.pair}"
            return composed, f"{first.folder} {first.pair} ∘ {second.folder} {second.pair}"
    raise DataError(f"no {src}-{tgt} dictionary in {', '.join(map(str, folders))}: no {src}-{tgt} or "
                    f"{tgt}-{src} file, and no composition through {' or '.join(PIVOTS)}")


def _find_pair(folders: list[Path], src: str, tgt: str) -> _Found | None:
    """The src -> tgt dictionary of the first folder that has it, else the first reversible tgt -> src."""
    for a, b, reversed_ in ((src, tgt, False), (tgt, src, True)):
        for folder in folders:
            files = _pair_files(folder, a, b)
            if files:
                dictionary: Dictionary = {}
                for file in files:
                    for word, translations in read_dictionary(file).items():
                        dictionary.setdefault(word, set()).update(translations)
                if reversed_:
                    return _Found(reverse(dictionary), folder.name, f"{a}-{b}⁻¹")
                return _Found(dictionary, folder.name, f"{a}-{b}")
    return None


def _pair_files(folder: Path, a: str, b: str) -> list[Path]:
    whole = folder / f"{a}-{b}.txt"
    return [whole] if whole.is_file() else sorted(folder.glob(f"{a}-{b}.*.txt"))


# --- Words of a vocabulary --------------------------------------------------------------------

def whole_words(tokenizer: Tokenizer) -> dict[str, int]:
    """Lower-cased whole words of the vocabulary (marker stripped) -> piece id.

    A piece is a whole word when it starts with "▁", is more than "▁", and is not a special piece
    (see the module docstring). When two pieces lower-case to the same word ("▁Haus", "▁haus") the
    first id is kept: BPE numbers its merges in order, so that is the piece learned from more text.
    """
    words: dict[str, int] = {}
    for piece_id, piece in enumerate(tokenizer.pieces()):
        if piece_id in _SPECIAL_IDS or not starts_word(piece) or piece == WORD_START:
            continue
        words.setdefault(piece[len(WORD_START):].lower(), piece_id)
    return words


# --- Retrieval --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LexiconResult:
    p_at_1: float  # hits / evaluated
    hits: int
    evaluated: int  # new-language words with a gold translation among the old-language words
    method: Method


def induce_lexicon(new_embeddings: Tensor, new_words: dict[str, int], old_embeddings: Tensor,
                   old_words: dict[str, int], dictionary: Dictionary, method: Method,
                   csls_k: int = 10) -> LexiconResult:
    """P@1 of retrieving each dictionary word's translation among `old_words` by `method`.

    new_embeddings [V1, D] and old_embeddings [V2, D] are token-embedding matrices; `new_words` and
    `old_words` map whole words to their rows. `dictionary` maps new-language words to old-language
    words; both are compared lower-cased, as `whole_words` gives them. Candidates are the old
    language's whole words only.
    """
    if method not in METHODS:
        raise ValueError(f"unknown retrieval method {method!r} (known: {', '.join(METHODS)})")
    gold = {word.lower(): {t.lower() for t in translations} for word, translations in dictionary.items()}
    queries = [word for word in new_words if not gold.get(word, set()).isdisjoint(old_words)]
    if not queries:
        raise DataError(f"lexicon induction: none of the {len(new_words)} new-language words has a gold "
                        f"translation among the {len(old_words)} old-language words")
    candidates = list(old_words)

    def rows(embeddings: Tensor, ids: list[int]) -> Tensor:
        return embeddings.detach()[torch.tensor(ids, device=embeddings.device)].float()

    query_vectors = rows(new_embeddings, [new_words[word] for word in queries])  # [N, D]
    candidate_vectors = rows(old_embeddings, [old_words[word] for word in candidates])  # [M, D]
    if method == "dot":
        scores = query_vectors @ candidate_vectors.T
    elif method == "cosine":
        scores = F.normalize(query_vectors, dim=1) @ F.normalize(candidate_vectors, dim=1).T
    else:
        scores = csls_scores(query_vectors, candidate_vectors, rows(new_embeddings, list(new_words.values())), csls_k)
    retrieved = scores.argmax(dim=1).tolist()  # [N] candidate index per query
    hits = sum(candidates[best] in gold[word] for word, best in zip(queries, retrieved))
    return LexiconResult(p_at_1=hits / len(queries), hits=hits, evaluated=len(queries), method=method)


def csls_scores(queries: Tensor, candidates: Tensor, sources: Tensor, k: int = 10) -> Tensor:
    """Cross-domain similarity local scaling (Conneau et al. 2017): [N, D], [M, D], [S, D] -> [N, M].

    CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y), where r_T(x) is the mean cosine of query x to its k
    nearest candidates and r_S(y) the mean cosine of candidate y to its k nearest `sources` (every
    word of the query language, not only the queries). A hub, near many source words, has a large
    r_S and so loses the advantage plain cosine gives it.
    """
    queries, candidates, sources = (F.normalize(x, dim=1) for x in (queries, candidates, sources))
    cosine = queries @ candidates.T  # [N, M]
    r_target = cosine.topk(min(k, candidates.shape[0]), dim=1).values.mean(dim=1)  # [N]
    r_source = (candidates @ sources.T).topk(min(k, sources.shape[0]), dim=1).values.mean(dim=1)  # [M]
    return 2 * cosine - r_target[:, None] - r_source[None, :]


def lexicon_induction(child: LoadedModel, parent: LoadedModel, side: Side, dictionary: Dictionary,
                      csls_k: int = 10) -> list[LexiconResult]:
    """BLI of a child's new `side` embeddings against the parent's embeddings they replaced, per method.

    `dictionary` maps the child's new language to the parent's language of that side (De -> Fr for a
    De-En child of a Fr-En parent): `find_dictionary(folders, "de", "fr")`.
    """
    def side_of(loaded: LoadedModel) -> tuple[Tensor, Tokenizer]:
        if side == "source":
            return loaded.model.src_embed.tokens.weight, loaded.src_tokenizer
        return loaded.model.tgt_embed.tokens.weight, loaded.tgt_tokenizer

    (new_embeddings, new_tokenizer), (old_embeddings, old_tokenizer) = side_of(child), side_of(parent)
    new_words, old_words = whole_words(new_tokenizer), whole_words(old_tokenizer)
    return [induce_lexicon(new_embeddings, new_words, old_embeddings, old_words, dictionary, method, csls_k)
            for method in METHODS]
