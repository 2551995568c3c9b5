"""Writing an experiment's report: report.md, from the sections of its study kind, the figures it shows, and
its tables for papers: report.tex, and per table `<name>.tex` and `<name>.csv`.

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
from xattn_ray.report.latex import latex_document, latex_table
from xattn_ray.report.markdown import markdown_table
from xattn_ray.report.paired import BOOTSTRAP, check_test
from xattn_ray.report.rows import (ReferencesFor, StoredTexts, counted_rows, is_codeswitch_study, missing_runs,
                                   references_from_uri, searched_cells)
from xattn_ray.report.tables import Section, Table, table_csv
from xattn_ray.report.transfer import transfer_sections
from xattn_ray.store import ResultsStore


def build_report(store: ResultsStore, experiment: str, out_dir: Path,
                 references_for: ReferencesFor | None = None, test: str = BOOTSTRAP) -> Path:
    """Write `out_dir/report.md`, its figures and its tables for papers for `experiment`; return the path of
    report.md.

    `references_for(test row)` gives the reference lines the significance tests score against; by
    default the rows' `references_uri` files, read through `store` as their translations are (so the
    report of an `s3://` store needs no run folder). `test` is the paired test of every significance
    test (`paired.BOOTSTRAP` or `paired.RANDOMIZATION`). A report with tables has report.tex, and each
    table `<name>.tex` (a fragment to `\\input`) and `<name>.csv` beside it. An unknown test, an
    experiment without rows, or an `out_dir` that is a file, is an `XattnError`, raised before anything
    is written; the files are written only once every one of them is built.
    """
    check_test(test)
    if references_for is None:
        references_for = StoredTexts(store)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XattnError(f"{out_dir}: a file is there; the report needs a folder")
    frame = store.read(experiment)
    if frame.empty:
        raise XattnError(f"no results for experiment {experiment!r} in {store.uri}")
    figures = render_figures(counted_rows(frame))
    sections = report_sections(frame, list(figures), references_for, test)
    markdown = "\n\n".join(section.markdown for section in sections if section.markdown) + "\n"
    files = {**figures, **_table_files(frame, [table for section in sections for table in section.tables]),
             "report.md": markdown.encode()}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XattnError(f"cannot create {out_dir}: {err.strerror or err}") from None
    for name, data in files.items():  # report.md last: the files it links to and stands beside are there before it
        write_atomically(out_dir / name, data)
    return out_dir / "report.md"


def report_sections(frame: pandas.DataFrame, figures: list[str], references_for: ReferencesFor = references_from_uri,
                    test: str = BOOTSTRAP) -> list[Section]:
    """The sections of report.md in order, with their tables; `figures` are file names beside it, in the
    order they are shown, and `test` is the paired test of the significance tests.

    The report opens with the findings of the study's paper checked on its results; a code-switching
    study's results take the place of the transfer study's tables (which it has no rows for). The
    numbers come from the counted rows (`counted_rows`: a search's other trials only say how each
    searched cell chose its configuration).
    """
    counted = counted_rows(frame)
    study_sections = codeswitch_sections if is_codeswitch_study(frame) else transfer_sections
    return [Section(_header(frame)), Section(findings_section(counted, references_for, test)),
            Section(_configurations_section(frame)), *study_sections(counted, references_for, test),
            Section(_missing_section(counted)), Section(figures_section(figures))]


def _table_files(frame: pandas.DataFrame, tables: list[Table]) -> dict[str, bytes]:
    """report.tex, and each table's `<name>.tex` and `<name>.csv` (no file without tables)."""
    if not tables:
        return {}
    experiment = frame["experiment"].iloc[0]
    files = {}
    for table in tables:
        files[f"{table.name}.tex"] = latex_table(table, experiment).encode()
        files[f"{table.name}.csv"] = table_csv(table).encode()
    files["report.tex"] = latex_document(f"Report: {experiment}", _facts(frame), tables, experiment).encode()
    return files


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
        "store with `selection = 'search'`.", "", markdown_table(Table.of_frame(table))])


def _header(frame: pandas.DataFrame) -> str:
    return "\n".join([f"# Report: {frame['experiment'].iloc[0]}", "", *(f"- {fact}" for fact in _facts(frame))])


def _facts(frame: pandas.DataFrame) -> list[str]:
    """What the report's numbers come from: runs, code versions, BLEU signatures (Markdown, one line each)."""
    train = frame[frame["eval"] == "train"]
    runs = (train["status"] == "ok").groupby(train["run_id"]).all()  # a run finished when all its rows are ok
    versions = sorted(frame["code_version"].dropna().unique())
    signatures = sorted(frame.loc[frame["eval"] == "test", "bleu_signature"].dropna().unique())
    facts = [f"training runs: {len(runs)} ({int(runs.sum())} finished, {int((~runs).sum())} failed or stopped)"
             if len(runs) else "training runs: none recorded (the store holds no `train` rows of this experiment)",
             f"code version{'s' if len(versions) != 1 else ''}: " + (", ".join(f"`{v}`" for v in versions) or "unknown"),
             f"BLEU signature{'s' if len(signatures) != 1 else ''}: "
             + (", ".join(f"`{s}`" for s in signatures) or "none")]
    if len(versions) > 1:
        facts.append("rows come from more than one code version: compare numbers across them with care")
    return facts


def _missing_section(frame: pandas.DataFrame) -> str:
    missing = missing_runs(frame)
    if missing.empty:
        return ""
    # Seeds as whole numbers, blank where a row has none (an analysis row): Int64 cannot hold the blank.
    seeds = missing["seed"].map(lambda seed: "" if pandas.isna(seed) else str(int(seed)))
    text = missing.assign(seed=seeds).fillna("").astype(str).set_index("run_id")
    text["error"] = text["error"].map(lambda error: " ".join(error.split()))  # one line: a table row
    return "\n".join(["## Missing runs", "", "Failed or stopped; left out of every number above.", "",
                      markdown_table(Table.of_frame(text))])
