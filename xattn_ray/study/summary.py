"""How a study's console summary writes a figure measured over several seeds."""

from __future__ import annotations

import statistics


def mean_std(scores: list[float]) -> str:
    """`12.34 ± 0.56` over seeds (no ± for one seed, empty for none)."""
    text = f"{statistics.mean(scores):.2f}" if scores else ""
    return text + (f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else "")
