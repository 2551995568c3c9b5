"""Bilingual lexicon induction: gold dictionaries (MUSE, synthetic), whole words, cosine / dot / CSLS retrieval."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from support import SHARED_DATA, requires_muse
from xattn_ray.errors import DataError
from xattn_ray.engine.lexicon import (METHODS, compose, csls_scores, find_dictionary, induce_lexicon, lexicon_induction,
                               read_dictionary, whole_words)
from xattn_ray.engine.tokenizer import TokenizerOptions, train_tokenizer

MUSE = SHARED_DATA / "muse"


# --- Dictionaries -----------------------------------------------------------------------------

def test_read_dictionary_splits_on_any_whitespace_and_gathers_translations(tmp_path):
    path = tmp_path / "de-fr.txt"
    path.write_text("haus\tmaison\n\nhaus  demeure\nhund chien\r\n", encoding="utf-8")
    assert read_dictionary(path) == {"haus": {"maison", "demeure"}, "hund": {"chien"}}


@pytest.mark.parametrize("content, expected", [
    (b"haus maison\nk\xe4se fromage\n", r"de-fr.txt:2: not UTF-8"),
    (b"haus maison\n\nhund chien loup\n", r"de-fr.txt:3: expected two words \(source target\), found 3"),
    (b"\n\n", r"de-fr.txt: dictionary is empty"),
])
def test_dictionary_mistakes_name_the_file_and_line(tmp_path, content, expected):
    (tmp_path / "de-fr.txt").write_bytes(content)
    with pytest.raises(DataError, match=expected) as caught:
        read_dictionary(tmp_path / "de-fr.txt")
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="dictionary not found"):
        read_dictionary(tmp_path / "missing.txt")


def test_compose_goes_through_the_pivot_and_drops_dead_ends():
    de_en = {"hund": {"dog", "hound"}, "katze": {"cat"}, "weg": {"path"}}
    en_fr = {"dog": {"chien"}, "hound": {"chien", "limier"}, "cat": {"chat"}}
    assert compose(de_en, en_fr) == {"hund": {"chien", "limier"}, "katze": {"chat"}}


@requires_muse
def test_muse_direct_reversed_and_composed_through_english(tmp_path):
    de_fr, described = find_dictionary([MUSE], "de", "fr")
    assert described == "muse de-fr" and "chien" in de_fr["hund"]
    cs_fr, described = find_dictionary([MUSE], "cs", "fr")  # no cs-fr or fr-cs file
    assert described == "muse cs-en ∘ en-fr" and len(cs_fr) > 3000

    only = tmp_path / "muse"  # just de-en and en-fr: de-fr must be composed
    only.mkdir()
    for name in ("de-en.0-5000.txt", "de-en.5000-6500.txt", "en-fr.0-5000.txt", "en-fr.5000-6500.txt"):
        shutil.copy(MUSE / name, only / name)
    composed, described = find_dictionary([only], "de", "fr")
    assert described == "muse de-en ∘ en-fr"
    assert "chien" in composed["hund"] and len(composed) > len(de_fr) // 2
    de_en, en_fr = find_dictionary([only], "de", "en")[0], find_dictionary([only], "en", "fr")[0]
    assert composed == compose(de_en, en_fr)
    splits = [read_dictionary(MUSE / f"de-en.{split}.txt") for split in ("0-5000", "5000-6500")]
    assert len(de_en) == sum(map(len, splits)) and de_en["hund"] == splits[0]["hund"]  # the splits, read as one
    reversed_, described = find_dictionary([only], "fr", "en")  # only en-fr exists
    assert described == "muse en-fr⁻¹" and "dog" in reversed_["chien"]


def test_synthetic_family_dictionaries_compose_through_the_pivot(tmp_path):
    from xattn_ray.data.synthetic import FamilySpec, generate_family

    family = generate_family(FamilySpec(languages=2, sentences=300, valid=5, test=5), tmp_path / "family")
    direct, described = find_dictionary([tmp_path / "elsewhere", family / "dictionaries"], "la", "lb")
    assert described == "dictionaries la-lb" and direct == read_dictionary(family / "dictionaries" / "la-lb.txt")

    legs = tmp_path / "legs"  # la-pv and lb-pv only: la-lb is la-pv then the reverse of lb-pv
    legs.mkdir()
    for name in ("la-pv.txt", "lb-pv.txt"):
        shutil.copy(family / "dictionaries" / name, legs / name)
    composed, described = find_dictionary([legs], "la", "lb")
    assert described == "legs la-pv ∘ lb-pv⁻¹"
    # The same concepts paired through the pivot (which has no homonyms), less those whose pivot
    # word the 300 training sentences never used.
    assert all(translations <= direct[word] for word, translations in composed.items())
    assert len(composed) > 0.8 * len(direct)

    with pytest.raises(DataError, match=r"no la-lx dictionary in .*: no la-lx or lx-la file, and no composition "
                                        r"through en or pv$"):
        find_dictionary([legs], "la", "lx")


# --- Whole words ------------------------------------------------------------------------------

def test_whole_words_are_lowercased_marked_pieces_without_specials(tmp_path):
    lines = [f"Haus haus Hund{i % 3} katze{i % 7}" for i in range(300)]
    tokenizer = train_tokenizer("de", lines, TokenizerOptions(vocab_size=40), tmp_path)
    pieces = tokenizer.pieces()
    words = whole_words(tokenizer)
    assert {"haus", "katze"} <= set(words)
    assert all(word and word == word.lower() and "▁" not in word for word in words)
    assert all(pieces[piece_id].startswith("▁") and len(pieces[piece_id]) > 1 for piece_id in words.values())
    assert min(words.values()) > 3  # <pad> <s> </s> <unk> are never words
    both = [pieces.index(piece) for piece in ("▁Haus", "▁haus")]
    assert words["haus"] == min(both)  # the first of two pieces that lower-case alike


# --- Retrieval --------------------------------------------------------------------------------

def test_identical_embeddings_with_an_identity_dictionary_score_one_for_every_method(toy_tokenizers):
    words = whole_words(toy_tokenizers[0])
    torch.manual_seed(0)
    embeddings = 3 * F.normalize(torch.randn(toy_tokenizers[0].vocab_size, 64), dim=1)  # equal norms: dot = 3² cos
    identity = {word: {word} for word in words}
    for method in METHODS:
        result = induce_lexicon(embeddings, words, embeddings.clone(), words, identity, method)
        assert (result.p_at_1, result.hits, result.evaluated, result.method) == (1.0, len(words), len(words), method)


def test_dot_product_prefers_long_vectors_where_cosine_prefers_the_direction():
    new = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # row 0 is padding
    old = torch.tensor([[0.0, 0.0], [1.0, 0.1], [3.0, 3.0]])  # `near`: same direction; `long`: 45°, norm 4.2
    old_words = {"near": 1, "long": 2}
    dictionary = {"wort": {"near"}, "unbekannt": {"elsewhere"}}  # the second has no reachable translation
    cosine = induce_lexicon(new, {"wort": 1}, old, old_words, dictionary, "cosine")
    dot = induce_lexicon(new, {"wort": 1}, old, old_words, dictionary, "dot")
    assert (cosine.hits, cosine.evaluated) == (1, 1) and (dot.hits, dot.evaluated) == (0, 1)


def test_csls_demotes_a_hub_that_cosine_retrieves_for_every_query():
    """Queries q_i = (1.5 e_0 + e_i) / |.|, translations t_i = e_i, and a hub h = e_0 nearer (by cosine)
    to every query than its own translation; CSLS subtracts the hub's closeness to all source words."""
    n = 5
    queries = F.normalize(1.5 * torch.eye(n + 1)[0] + torch.eye(n + 1)[1:], dim=1)  # [n, n+1]
    translations = torch.eye(n + 1)[1:]
    new_embeddings = torch.cat([torch.zeros(1, n + 1), queries])
    old_embeddings = torch.cat([torch.zeros(1, n + 1), translations, torch.eye(n + 1)[:1]])  # the hub last
    new_words = {f"q{i}": i + 1 for i in range(n)}
    old_words = {**{f"t{i}": i + 1 for i in range(n)}, "hub": n + 1}
    dictionary = {f"q{i}": {f"t{i}"} for i in range(n)}
    cosine = F.normalize(queries, dim=1) @ F.normalize(old_embeddings[1:], dim=1).T
    assert (cosine.argmax(dim=1) == n).all()  # the hub is everyone's nearest neighbour
    assert induce_lexicon(new_embeddings, new_words, old_embeddings, old_words, dictionary, "cosine", 3).hits == 0
    assert (csls_scores(queries, old_embeddings[1:], queries, k=3).argmax(dim=1) == torch.arange(n)).all()
    assert induce_lexicon(new_embeddings, new_words, old_embeddings, old_words, dictionary, "csls", 3).p_at_1 == 1.0


def test_nothing_to_evaluate_is_a_data_error():
    embeddings = torch.randn(4, 8)
    with pytest.raises(DataError, match="none of the 1 new-language words has a gold translation among the 1"):
        induce_lexicon(embeddings, {"wort": 1}, embeddings, {"mot": 2}, {"wort": {"parole"}}, "cosine")


@pytest.mark.parametrize("side", ["source", "target"])
def test_lexicon_induction_compares_the_matrices_of_the_given_side(toy_tokenizers, side):
    from xattn_ray.engine.checkpoint import LoadedModel
    from xattn_ray.engine.model import Transformer, preset_config

    aa, bb = toy_tokenizers
    torch.manual_seed(0)
    parent = LoadedModel(Transformer(preset_config("tiny", aa.vocab_size, bb.vocab_size)), aa, bb, extra={})
    child = LoadedModel(Transformer(preset_config("tiny", aa.vocab_size, bb.vocab_size)), aa, bb, extra={})
    embed = "src_embed" if side == "source" else "tgt_embed"
    with torch.no_grad():  # the child's `side` matrix is the parent's, with equal norms so that dot agrees
        same = 2 * F.normalize(getattr(parent.model, embed).tokens.weight, dim=1)
        getattr(parent.model, embed).tokens.weight.copy_(same)
        getattr(child.model, embed).tokens.weight.copy_(same)
    words = whole_words(aa if side == "source" else bb)
    results = lexicon_induction(child, parent, side, {word: {word} for word in words})
    assert [result.method for result in results] == list(METHODS)
    assert all(result.p_at_1 == 1.0 and result.evaluated == len(words) for result in results)
