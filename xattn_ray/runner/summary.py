"""What `xattn-ray run` prints when a study ends: its kind's summary, then every run that did not finish."""

from __future__ import annotations

from xattn_ray.runner.study import StudyResult
from xattn_ray.study.kinds import kind_of


def format_summary(result: StudyResult) -> str:
    lines = kind_of(result.experiment).summary_lines(list(result.results.values()), result.analyses)
    lines += [f"not finished: {identifier}: {why}" for identifier, why in sorted(result.unfinished.items())]
    return "\n".join(lines)
