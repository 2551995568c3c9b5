"""Shared test helpers: where the real data beside the project lives."""

from pathlib import Path

import pytest

# `../shared/data` relative to the project root: Multi30k and MUSE, never copied into the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_multi30k = pytest.mark.skipif(
    not (SHARED_DATA / "multi30k" / "train.fr.gz").is_file(),
    reason=f"real Multi30k data not found at {SHARED_DATA / 'multi30k'} (the shared data folder beside the project)",
)

requires_muse = pytest.mark.skipif(
    not (SHARED_DATA / "muse" / "de-fr.0-5000.txt").is_file(),
    reason=f"real MUSE dictionaries not found at {SHARED_DATA / 'muse'} (the shared data folder beside the project)",
)


@pytest.fixture(scope="session")
def toy_tokenizers(tmp_path_factory):
    """Real SentencePiece models (source `aa`, target `bb`) trained on a few hundred toy lines."""
    from xattn_ray.engine.tokenizer import TokenizerOptions, train_tokenizer

    cache = tmp_path_factory.mktemp("spm")
    lines = [f"word{i % 37} thing{i % 11} more{i % 5}" for i in range(400)]
    return (train_tokenizer("aa", lines, TokenizerOptions(vocab_size=60), cache),
            train_tokenizer("bb", [line.upper() for line in lines], TokenizerOptions(vocab_size=60), cache))
