"""Shared test helpers: where the real data beside the project lives."""

from pathlib import Path

import pytest

# `../shared/data` relative to the project root: Multi30k and MUSE, never copied into the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_multi30k = pytest.mark.skipif(
    not (SHARED_DATA / "multi30k" / "train.fr.gz").is_file(),
    reason=f"real Multi30k data not found at {SHARED_DATA / 'multi30k'} (the shared data folder beside the project)",
)
