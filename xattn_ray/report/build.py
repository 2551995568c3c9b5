"""Writing an experiment's report: report.md, from the sections of its study kind, and the figures it shows.

Everything is built in memory first and written only once all of it exists, each file atomically:
a report that fails half-way leaves the folder as it was.
"""

from __future__ import annotations

from pathlib import Path

import pandas

from xattn_ray.errors import XattnError
from xattn_ray.files import write_atomically
from xattn_ray.report.codeswitch import codeswitch_sections
from xattn_ray.report.figures import figures_section, render_figures
from xattn_ray.report.findings import findings_section
from xattn_ray.report.markdown import markdown_table
from xattn_ray.report.rows import (ReferencesFor, StoredTexts, counted_rows, is_codeswitch_study, missing_runs,
                                   references_from_uri, searched_cells)
from xattn_ray.report.transfer import transfer_sections
from xattn_ray.store import ResultsStore


def build_report(store: ResultsStore, experiment: str, out_dir: Path,
                 references_for: ReferencesFor | None = None) -> Path:
    """Write `out_dir/report.md` and its figures for `experiment`; return the path of report.md.

    `references_for(test row)` gives the reference lines the significance tests score against; by
    default the rows' `references_uri` files, read through `store` as their translations are (so the
    report of an `s3://` store needs no run folder). An experiment without rows, or an `out_dir` that
    is a file, is an `XattnError`, raised before anything is written; the files are written only once
    every one of them is built.
    """
    if references_for is None:
        references_for = StoredTexts(store)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XattnError(f"{out_dir}: a file is there; the report needs a folder")
    frame = store.read(experiment)
    if frame.empty:
        raise XattnError(f"no results for experiment {experiment!r} in {store.uri}")
    figures = render_figures(counted_rows(frame))
    files = {**figures, "report.md": report_markdown(frame, list(figures), references_for).encode()}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XattnError(f"cannot create {out_dir}: {err.strerror or err}") from None
    for name, data in files.items():  # report.md last: the figures it links to are there before it
        write_atomically(out_dir / name, data)
    return out_dir / "report.md"


def report_markdown(frame: pandas.DataFrame, figures: list[str],
                    references_for: ReferencesFor = references_from_uri) -> str:
    """The whole report.md text; `figures` are file names beside it, in the order they are shown.

    The report opens with the findings of the study's paper checked on its results; a code-switching
    study's results take the place of the transfer study's tables (which it has no rows for). The
    numbers come from the counted rows (`counted_rows`: a search's other trials only say how each
    searched cell chose its configuration).
    """
    counted = counted_rows(frame)
    study_sections = codeswitch_sections if is_codeswitch_study(frame) else transfer_sections
    sections = [_header(frame), findings_section(counted, references_for), _configurations_section(frame),
                *study_sections(counted, references_for), _missing_section(counted), figures_section(figures)]
    return "\n\n".join(section for section in sections if section) + "\n"


def _configurations_section(frame: pandas.DataFrame) -> str:
    """Which configuration each searched cell used and how it was chosen ("" without a search)."""
    cells = searched_cells(frame)
    if cells.empty:
        return ""
    first = cells.iloc[0]
    best = "lowest validation loss" if first["metric"] == "valid_loss" else "highest validation BLEU"
    table = pandas.DataFrame({
        "pair": cells["pair"], "policy": cells["policy"],
        "chosen": [", ".join(f"{name} {value:.4g}" for name, value in sorted(options.items()))
                   for options in cells["options"]],
        "search trials": cells["trials"], "confirmed with seeds": [", ".join(map(str, s)) for s in cells["seeds"]]}
    ).set_index("pair")
    return "\n".join([
        "## Configurations chosen by search", "",
        f"Each grid cell (child pair x policy) was searched at seed {first['seed']}: the configuration of its "
        f"trial with the {best} was trained again with every seed of the grid (the chosen trial itself counts "
        "for its own seed). Only these runs count in the tables; the other search trials are in the results "
        "store with `selection = 'search'`.", "", markdown_table(table)])


def _header(frame: pandas.DataFrame) -> str:
    experiment = frame["experiment"].iloc[0]
    train = frame[frame["eval"] == "train"]
    runs = (train["status"] == "ok").groupby(train["run_id"]).all()  # a run finished when all its rows are ok
    versions = sorted(frame["code_version"].dropna().unique())
    signatures = sorted(frame.loc[frame["eval"] == "test", "bleu_signature"].dropna().unique())
    lines = [f"# Report: {experiment}", "",
             f"- training runs: {len(runs)} ({int(runs.sum())} finished, {int((~runs).sum())} failed or stopped)"
             if len(runs) else "- training runs: none recorded (the store holds no `train` rows of this experiment)",
             f"- code version{'s' if len(versions) != 1 else ''}: "
             + (", ".join(f"`{v}`" for v in versions) or "unknown"),
             f"- BLEU signature{'s' if len(signatures) != 1 else ''}: "
             + (", ".join(f"`{s}`" for s in signatures) or "none")]
    if len(versions) > 1:
        lines.append("- rows come from more than one code version: compare numbers across them with care")
    return "\n".join(lines)


def _missing_section(frame: pandas.DataFrame) -> str:
    missing = missing_runs(frame)
    if missing.empty:
        return ""
    # Seeds as whole numbers, blank where a row has none (an analysis row): Int64 cannot hold the blank.
    seeds = missing["seed"].map(lambda seed: "" if pandas.isna(seed) else str(int(seed)))
    text = missing.assign(seed=seeds).fillna("").astype(str).set_index("run_id")
    text["error"] = text["error"].map(lambda error: " ".join(error.split()).replace("|", "\\|"))
    return "\n".join(["## Missing runs", "", "Failed or stopped; left out of every number above.", "",
                      markdown_table(text)])
