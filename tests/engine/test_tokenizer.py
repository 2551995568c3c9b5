"""Per-language SentencePiece tokenizers: special ids, round trips, the cache, `auto` vocabulary size."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import itertools
import json
import multiprocessing
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentencepiece as spm

from xattn_ray.engine import tokenizer as tokenizer_module
from xattn_ray.errors import ConfigError, DataError
from xattn_ray.schema import Invalid, build, load_yaml
from xattn_ray.engine.tokenizer import (AUTO_VOCAB_SIZE_CANDIDATES, BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer,
                                 TokenizerOptions, choose_vocab_size, starts_word, train_tokenizer)

from support import SHARED_DATA

MULTI30K = SHARED_DATA / "multi30k"

ODD_LINES = [
    "Un garçon à vélo, près d'une église.",
    "Ein Mädchen isst ein Brötchen.",
    "Déjà vu 😀 in Tōkyō (東京) — ½ “quoted” text!",
    "tab\tinside and a non-breaking\u00a0space",
]


def synthetic_text(seed: int, num_lines: int = 1500) -> list[str]:
    """Sentences of made-up words built from a few syllables, so BPE has much to merge."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "mi", "ra", "su", "ne", "lo", "pi", "da", "ve", "or", "an", "el", "qu"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(600)]
    weights = [1 / rank for rank in range(1, len(words) + 1)]  # Zipf-like, as in real text
    return [" ".join(rng.choices(words, weights, k=rng.randint(4, 15))).capitalize() + "."
            for _ in range(num_lines)]


def model_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.model"))


def test_special_ids_are_the_same_in_every_model(tmp_path: Path) -> None:
    french = train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=400), tmp_path)
    german = train_tokenizer("de", synthetic_text(2), TokenizerOptions(vocab_size=700), tmp_path)
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    for tokenizer, size in ((french, 400), (german, 700)):
        assert tokenizer.vocab_size == size == len(tokenizer.pieces())
        assert tokenizer.pieces()[:4] == ["<pad>", "<s>", "</s>", "<unk>"]


def test_round_trip_restores_text_with_unseen_characters(tmp_path: Path) -> None:
    options = TokenizerOptions(vocab_size=500, byte_fallback=True)
    tokenizer = train_tokenizer("fr", synthetic_text(1), options, tmp_path)
    encoded = tokenizer.encode(ODD_LINES)
    assert tokenizer.decode(encoded) == ODD_LINES
    emoji_pieces = [tokenizer.pieces()[i] for i in tokenizer.encode(["😀"])[0]]
    assert emoji_pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # byte fallback, no <unk>
    assert UNK_ID not in itertools.chain.from_iterable(encoded)


def test_without_byte_fallback_unseen_characters_are_unknown(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=500), tmp_path)
    assert not any(piece.startswith("<0x") for piece in tokenizer.pieces())
    assert UNK_ID in tokenizer.encode(["😀"])[0]


def test_round_trip_collapses_runs_of_spaces(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=500), tmp_path)
    assert tokenizer.decode(tokenizer.encode(["  Kato   mira  "])) == ["Kato mira"]


def test_decode_stops_at_eos_and_ignores_pad_and_bos(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=500), tmp_path)
    first, second = tokenizer.encode(["Kato mira.", "Sune lo."])
    batch = [
        [BOS_ID, *first, EOS_ID, *second, PAD_ID],
        [BOS_ID, *second, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
        [PAD_ID, *first],  # no EOS: read to the end
        [EOS_ID, *first],
    ]
    assert tokenizer.decode(batch) == ["Kato mira.", "Sune lo.", "Kato mira.", ""]
    assert tokenizer.decode([]) == []
    assert BOS_ID not in first and EOS_ID not in first  # encode adds no specials


def test_pieces_mark_word_starts(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=500), tmp_path)
    pieces = [tokenizer.pieces()[i] for i in tokenizer.encode(["Kato mirasune"])[0]]
    assert starts_word(pieces[0]) and starts_word("▁mi") and not starts_word("ne")
    assert sum(starts_word(piece) for piece in pieces) == 2


def test_second_call_reuses_the_cached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, options = synthetic_text(1), TokenizerOptions(vocab_size=500)
    first = train_tokenizer("fr", text, options, tmp_path)
    (model_file,) = model_files(tmp_path)
    before = model_file.stat()

    def must_not_train(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("trained again despite a cached model")

    monkeypatch.setattr(tokenizer_module, "_train_model", must_not_train)
    second = train_tokenizer("fr", text, options, tmp_path)
    after = model_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert second.to_bytes() == first.to_bytes()


def test_other_options_or_text_make_other_cache_entries(tmp_path: Path) -> None:
    text = synthetic_text(1)
    train_tokenizer("fr", text, TokenizerOptions(vocab_size=500), tmp_path)
    train_tokenizer("fr", text, TokenizerOptions(vocab_size=600), tmp_path)
    train_tokenizer("fr", text[:-1], TokenizerOptions(vocab_size=500), tmp_path)
    train_tokenizer("de", text, TokenizerOptions(vocab_size=500), tmp_path)
    assert len(model_files(tmp_path)) == 4
    assert len(list(tmp_path.glob("*.json"))) == 4


def _train_after_barrier(cache_dir: Path, barrier: multiprocessing.synchronize.Barrier,
                         results: multiprocessing.Queue) -> None:
    text = frequent_chars_and_rare_pairs()
    barrier.wait()  # all processes ask at the same moment
    results.put(train_tokenizer("fr", text, TokenizerOptions(), cache_dir).to_bytes()["model"])


def test_concurrent_processes_share_one_training(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_train_after_barrier, args=(tmp_path, barrier, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    models = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(set(models)) == 1
    (model_file,) = model_files(tmp_path)
    assert model_file.read_bytes() == models[0]
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".json", ".lock", ".model"]


def test_training_is_deterministic(tmp_path: Path) -> None:
    text = synthetic_text(1)
    first = train_tokenizer("fr", text, TokenizerOptions(vocab_size=600), tmp_path / "one")
    second = train_tokenizer("fr", text, TokenizerOptions(vocab_size=600), tmp_path / "two")
    assert first.to_bytes() == second.to_bytes()


class LinesFile:
    """A text file read as a corpus reader streams it: every `iter()` re-opens the file; passes are counted."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.path = path
        self.passes = 0

    def __iter__(self) -> Iterator[str]:
        self.passes += 1
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                yield line.rstrip("\n")


def test_a_named_text_is_hashed_once_and_found_again_without_reading_it(tmp_path: Path) -> None:
    """A trial that names its text (a slice's file digests and bounds) finds the model without a pass."""
    text, options = synthetic_text(1), TokenizerOptions(vocab_size=500)
    streamed = LinesFile(tmp_path / "train.fr", text)
    first = train_tokenizer("fr", streamed, options, tmp_path / "cache", text_identity="files abc, lines 0-900")
    assert streamed.passes == 2
    again = train_tokenizer("fr", streamed, options, tmp_path / "cache", text_identity="files abc, lines 0-900")
    assert streamed.passes == 2 and again.to_bytes() == first.to_bytes()
    assert train_tokenizer("fr", streamed, options, tmp_path / "cache").to_bytes() == first.to_bytes()
    assert streamed.passes == 3  # unnamed: hashed again, then found
    (memo,) = (tmp_path / "cache" / "text-digests").iterdir()
    memo.write_text("{not json")  # a damaged memo is computed again, never trusted
    train_tokenizer("fr", streamed, options, tmp_path / "cache", text_identity="files abc, lines 0-900")
    assert streamed.passes == 4 and json.loads(memo.read_text())["num_lines"] == len(text)


def test_a_streamed_text_gives_the_model_of_the_same_lines_in_a_list(tmp_path: Path) -> None:
    text, options = synthetic_text(1), TokenizerOptions(vocab_size=500)
    from_list = train_tokenizer("fr", text, options, tmp_path / "list")
    streamed = LinesFile(tmp_path / "train.fr", text)
    from_file = train_tokenizer("fr", streamed, options, tmp_path / "file")
    assert from_file.to_bytes() == from_list.to_bytes()
    assert streamed.passes == 2  # hashed, then sampled
    assert train_tokenizer("fr", streamed, options, tmp_path / "list").to_bytes() == from_list.to_bytes()
    assert streamed.passes == 3  # a cache hit only hashes it


def test_a_text_within_max_sentences_is_trained_on_whole_and_in_order(tmp_path: Path) -> None:
    text, options = synthetic_text(1), TokenizerOptions(vocab_size=500)
    tokenizer = train_tokenizer("fr", LinesFile(tmp_path / "train.fr", text), options, tmp_path)
    # SentencePiece given exactly these lines, as before streaming: the same models, so caches stay valid.
    tokenizer_module._write_sample(text, tmp_path / "sample.jsonl")
    assert tokenizer.to_bytes()["model"] == tokenizer_module._train_model(tmp_path / "sample.jsonl", 500, options)
    assert tokenizer.metadata["num_sentences"] == tokenizer.metadata["num_training_sentences"] == 1500


def test_the_text_hash_is_unchanged_by_streaming() -> None:
    # Values of the in-memory hash before streaming: models cached under them are still found.
    lines = ["Un garçon à vélo.", "", "a b"]
    assert (tokenizer_module._TextDigest.of(lines).sha256
            == "50be4a9299072bc9f8d1c1c177ba386a7481f60a88c9aa2b0a5e332dbafc1b63")
    assert (tokenizer_module._TextDigest.of(iter(["a", "b"])).sha256
            == "cf6ab613e3942391f88ed698557e1680f160bd10e88c6b668c50360c10930e2b")


def test_evenly_spaced_sample_keeps_the_corpus_order() -> None:
    lines = [str(position) for position in range(10)]
    assert list(tokenizer_module._evenly_spaced(iter(lines), 10, 4)) == ["0", "2", "5", "7"]
    assert list(tokenizer_module._evenly_spaced(iter(lines), 10, 10)) == lines
    assert list(tokenizer_module._evenly_spaced(iter(lines), 10, 1)) == ["0"]


def test_a_text_beyond_max_sentences_trains_on_an_evenly_spaced_sample(tmp_path: Path) -> None:
    text, options = synthetic_text(1, num_lines=3000), TokenizerOptions(vocab_size=500, max_sentences=700)
    streamed = LinesFile(tmp_path / "train.fr", text)
    tokenizer = train_tokenizer("fr", streamed, options, tmp_path / "one")
    assert streamed.passes == 2
    assert tokenizer.metadata["num_sentences"] == 3000
    assert tokenizer.metadata["num_training_sentences"] == 700
    sample = [text[index * 3000 // 700] for index in range(700)]  # in corpus order
    tokenizer_module._write_sample(sample, tmp_path / "sample.jsonl")
    assert tokenizer.to_bytes()["model"] == tokenizer_module._train_model(tmp_path / "sample.jsonl", 500, options)
    again = train_tokenizer("fr", LinesFile(tmp_path / "again.fr", text), options, tmp_path / "two")
    assert again.to_bytes() == tokenizer.to_bytes()


def test_auto_vocab_size_is_chosen_on_the_sample(tmp_path: Path) -> None:
    # Every other line is noise that would change the alphabet and the counts; the sample leaves it all out.
    lines = frequent_chars_and_rare_pairs()
    noise = [f"x{index} q{index * 7} zz" for index in range(len(lines))]
    text = [line for pair in zip(lines, noise) for line in pair]
    options = dataclasses.replace(WITH_BYTES, max_sentences=len(lines))
    tokenizer = train_tokenizer("zh", LinesFile(tmp_path / "train.zh", text), options, tmp_path)
    assert tokenizer.metadata["num_training_sentences"] == len(text) // 2
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    vocab_size, search = choose_vocab_size(lines, options, search_dir)
    assert tokenizer.vocab_size == vocab_size == 600
    assert tokenizer.metadata["auto_search"] == [list(tried) for tried in search]
    assert tokenizer.to_bytes()["model"] == (search_dir / "600.model").read_bytes()


def test_a_one_pass_iterator_is_refused(tmp_path: Path) -> None:
    text = synthetic_text(1)
    for one_pass in (iter(text), (line for line in text)):
        with pytest.raises(TypeError, match="re-iterable"):
            train_tokenizer("fr", one_pass, TokenizerOptions(vocab_size=500), tmp_path)


class GrowingText:
    """A text that gains a line every time it is read, like a corpus file rewritten during training."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.passes = 0

    def __iter__(self) -> Iterator[str]:
        self.passes += 1
        return iter(self.lines + ["Kato mira."] * self.passes)


def test_a_text_that_changes_between_passes_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"text of 'fr' changed .* 1502 lines"):
        train_tokenizer("fr", GrowingText(synthetic_text(1)), TokenizerOptions(vocab_size=500), tmp_path)
    assert model_files(tmp_path) == [] and list(tmp_path.glob(".*")) == []


def test_serialised_tokenizer_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tokenizer = train_tokenizer("zh", frequent_chars_and_rare_pairs(), TokenizerOptions(), tmp_path)
    buffer = io.BytesIO()
    torch.save({"tokenizers": {"zh": tokenizer.to_bytes()}}, buffer)
    buffer.seek(0)
    restored = Tokenizer.from_bytes(torch.load(buffer, weights_only=True)["tokenizers"]["zh"])
    assert restored.language == "zh"
    assert restored.metadata == tokenizer.metadata
    assert restored.vocab_size == tokenizer.vocab_size
    assert restored.encode(ODD_LINES) == tokenizer.encode(ODD_LINES)


WITH_BYTES = TokenizerOptions(byte_fallback=True)


def frequent_chars_and_rare_pairs() -> list[str]:
    """200 one-character words seen 150 times each, and 300 two-character words seen twice each.

    BPE first learns the 200 frequent merges "▁c" (each then occurs 150 times), then one rare merge
    per two-character word. With byte fallback the alphabet takes 4 specials + 256 bytes + 201 characters ("▁" too) =
    461 ids, so size 600 learns 139 merges (all frequent: share 1.0) and size 700 learns 239
    (share 200/239 < 0.95): "auto" must choose 600.
    """
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + i) for i in range(200)]  # one script, so any two may merge
    rare_words = rng.sample([a + b for a in alphabet for b in alphabet], 300)
    words = [char for char in alphabet for _ in range(150)] + rare_words * 2
    rng.shuffle(words)
    return [" ".join(words[start:start + 20]) for start in range(0, len(words), 20)]


def test_auto_vocab_size_is_the_largest_with_frequent_types(tmp_path: Path) -> None:
    vocab_size, search = choose_vocab_size(frequent_chars_and_rare_pairs(), WITH_BYTES, tmp_path)
    shares = dict(search)
    assert vocab_size == 600
    assert shares[600] == 1.0
    assert shares[700] == pytest.approx(200 / 239)
    assert (tmp_path / "600.model").exists()  # left for train_tokenizer to reuse


def test_auto_vocab_size_follows_the_thresholds(tmp_path: Path) -> None:
    lenient = TokenizerOptions(auto_type_share=0.8, byte_fallback=True)  # 200/239 = 0.84 passes; 200/389 at 850 fails
    assert choose_vocab_size(frequent_chars_and_rare_pairs(), lenient, tmp_path)[0] == 700


def test_auto_vocab_size_is_recorded_with_the_model(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("zh", frequent_chars_and_rare_pairs(), WITH_BYTES, tmp_path)
    assert tokenizer.vocab_size == tokenizer.metadata["vocab_size"] == 600
    assert [600, 1.0] in tokenizer.metadata["auto_search"]
    assert tokenizer.metadata["options"]["vocab_size"] == "auto"
    assert list(tmp_path.glob(".*")) == []  # trial models went with the temporary folder


def learned_type_share(tokenizer: Tokenizer, lines: list[str], min_count: int) -> float:
    """The criterion recomputed from scratch: merged pieces (2+ characters) seen `min_count`+ times."""
    counts = collections.Counter(itertools.chain.from_iterable(tokenizer.encode(lines)))
    learned = [piece_id for piece_id, piece in enumerate(tokenizer.pieces())
               if len(piece) > 1 and piece_id > UNK_ID and not piece.startswith("<0x")]
    return sum(counts[piece_id] >= min_count for piece_id in learned) / len(learned)


def read_gzip_lines(path: Path, stop: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in itertools.islice(lines, stop)]


def test_auto_vocab_size_on_multi30k_french(tmp_path: Path) -> None:
    if not MULTI30K.is_dir():
        pytest.skip(f"../shared/data/multi30k not found: {MULTI30K} (real-data check skipped)")
    train = read_gzip_lines(MULTI30K / "train.fr.gz", stop=20000)
    tokenizer = train_tokenizer("fr", train, TokenizerOptions(), tmp_path)
    chosen, shares = tokenizer.vocab_size, dict(map(tuple, tokenizer.metadata["auto_search"]))
    assert tokenizer.metadata["vocab_size"] == chosen
    recomputed = learned_type_share(tokenizer, train, 100)
    assert recomputed >= 0.95 and recomputed == pytest.approx(shares[chosen])
    next_size = AUTO_VOCAB_SIZE_CANDIDATES[AUTO_VOCAB_SIZE_CANDIDATES.index(chosen) + 1]
    assert shares[next_size] < 0.95  # the chosen size is the largest that passes
    test = read_gzip_lines(MULTI30K / "test_2016_flickr.fr.gz")
    # Without byte fallback a character never seen in training decodes as " ⁇ " (test_2016 has a "7"
    # that the first 20000 training lines lack): lines made of known characters round-trip exactly.
    known = set("".join(train))
    clean = [line for line in test if set(line) <= known]
    assert len(clean) >= 0.99 * len(test)
    assert tokenizer.decode(tokenizer.encode(clean)) == [" ".join(line.split()) for line in clean]


def test_empty_text_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'fr'"):
        train_tokenizer("fr", [], TokenizerOptions(), tmp_path)
    with pytest.raises(DataError, match="'fr'"):
        train_tokenizer("fr", ["", "  "], TokenizerOptions(), tmp_path)


def test_bad_vocab_size_is_a_config_error(tmp_path: Path) -> None:
    for bad in ("big", "8000", 0, True, 1.5):
        with pytest.raises(Invalid) as invalid:
            TokenizerOptions(vocab_size=bad)
        assert invalid.value.key == "vocab_size"
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("tokenizer:\n  vocab_size: big\n", encoding="utf-8")
    document = load_yaml(experiment)
    with pytest.raises(ConfigError, match=r"experiment.yaml:2: tokenizer\.vocab_size: must be"):
        build(TokenizerOptions, document, document.data["tokenizer"], ("tokenizer",))


def test_vocab_size_the_text_cannot_fill_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size 100000 does not fit the 'fr' text"):
        train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=100000), tmp_path)
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size 10 does not fit the 'fr' text"):
        train_tokenizer("fr", synthetic_text(1), TokenizerOptions(vocab_size=10), tmp_path)
    assert model_files(tmp_path) == [] and list(tmp_path.glob(".*")) == []


def test_the_trainer_process_sees_exactly_the_sentences_given(tmp_path: Path) -> None:
    # Newlines, tabs, quotes and non-Latin text inside sentences cross the process boundary intact:
    # the model equals SentencePiece's trained in this process on the same list.
    lines = [f"w{i % 53} \"q{i % 11}\"\tz{i % 7}" + ("\nnext" if i % 100 == 0 else "") + (" 猫" if i % 3 else "")
             for i in range(2000)]
    in_process = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=in_process, model_type="bpe", vocab_size=100,
        character_coverage=1.0, byte_fallback=False, normalization_rule_name="identity", pad_id=PAD_ID,
        bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, input_sentence_size=0, shuffle_input_sentence=False,
        num_threads=tokenizer_module._TRAINER_THREADS, minloglevel=2)
    tokenizer_module._write_sample(lines, tmp_path / "sample.jsonl")
    options = TokenizerOptions(vocab_size=100)
    assert tokenizer_module._train_model(tmp_path / "sample.jsonl", 100, options) == in_process.getvalue()
    with pytest.raises(tokenizer_module._VocabularyTooLarge, match="Vocabulary size too high"):
        tokenizer_module._train_model(tmp_path / "sample.jsonl", 5000, options)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample.jsonl"]  # no model file left behind
