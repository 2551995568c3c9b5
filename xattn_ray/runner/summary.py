"""What `xattn-ray run` prints when a study ends: its kind's summary, its paper's findings checked on
its results, then every run that did not finish."""

from __future__ import annotations

from xattn_ray.report.findings import findings_lines, study_findings
from xattn_ray.report.rows import StoredTexts
from xattn_ray.runner.study import NOT_STARTED, StudyResult
from xattn_ray.study.kinds import kind_of


def format_summary(result: StudyResult) -> str:
    """The kind's summary of finished runs; the findings; each run that stopped or failed, with why; how many
    never started."""
    lines = kind_of(result.experiment).summary_lines(list(result.results.values()), result.analyses)
    if result.rows is not None:
        lines += findings_lines(study_findings(result.rows, StoredTexts(result.store)))  # texts on S3 too
    lines += [f"not finished: {identifier}: {why}" for identifier, why in sorted(result.unfinished.items())
              if why != NOT_STARTED]
    not_started = sum(why == NOT_STARTED for why in result.unfinished.values())
    if not_started:
        lines.append(f"{NOT_STARTED}: {not_started} run(s)")
    return "\n".join(lines)
