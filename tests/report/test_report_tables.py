"""The report's tables for papers: report.tex, each table's .tex fragment and .csv, on stores written here.

Nothing here compiles LaTeX (there is none on the test machines): the files are checked for what makes
LaTeX fail or typeset the wrong thing (unbalanced braces and environments, an unescaped `_`, a row with
more cells than its tabular has columns), and the CSVs are read back with the csv module and pyarrow and
compared with report.md, number by number. The stores are real Parquet files with real translation
files, written with `ResultsStore.write`; names carry underscores on purpose.
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

import pyarrow.csv
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from xattn_ray.errors import XattnError
from xattn_ray.report.build import build_report
from xattn_ray.store import ResultsStore, make_row

from support import xattn_ray

EXPERIMENT = "paper_tables"
COSTS = dict(trainable_params=1000, total_params=4000, train_seconds=2.5, target_tokens_per_second=1234.5,
             updates=10, valid_losses=[{"update": 5, "valid_loss": 3.0}, {"update": 10, "valid_loss": 2.5}])
# How many of a run's 60 test sentences are right, per policy and seed: new_xattn is far above body
# in both seeds, scratch far below in both; xattn is far above in seed 1 and a little below in seed 2.
RIGHT = {"scratch": (6, 6), "body": (30, 30), "new_xattn": (54, 54), "xattn": (42, 25)}
TRANSFER_TABLES = ["table2", "significance", "forgetting", "zeroshot", "bli", "cost"]
CODESWITCH_TABLES = ["codeswitch", "test_sets", "significance", "cost"]


def sentences(count: int, seed: int) -> list[str]:
    """`count` made-up sentences of 8 to 14 words, the same for the same seed."""
    rng = random.Random(seed)
    words = [f"{stem}{ending}" for stem in ("kal", "mor", "tiv", "sen", "ul", "brak") for ending in ("a", "en", "is")]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 14))) for _ in range(count)]


REFERENCES = sentences(60, seed=1)
WRONG = sentences(60, seed=2)


def translation_files(folder: Path, name: str, right: int) -> dict:
    """A reference file (shared) and a hypotheses file whose first `right` lines are right, with the
    row fields that name them and the scores the run would have stored."""
    references = folder / "references.test_2016.txt"
    references.write_text("".join(line + "\n" for line in REFERENCES))
    lines = REFERENCES[:right] + WRONG[right:]
    hypotheses = folder / f"{name}.txt"
    hypotheses.write_text("".join(line + "\n" for line in lines))
    return dict(references_uri=str(references), hypotheses_uri=str(hypotheses),
                bleu=BLEU().corpus_score(lines, [REFERENCES]).score, chrf=CHRF().corpus_score(lines, [REFERENCES]).score)


def row(run_id: str, stage: str, evaluation: str, **fields) -> dict:
    return make_row(experiment=EXPERIMENT, run_id=run_id, stage=stage, eval=evaluation, status="ok", **fields)


def transfer_rows(folder: Path) -> list[dict]:
    """Parent la_pv, children lb_pv (new source) and la-lb (new target) under four policies and two seeds,
    each with translation files; forgetting, lexicon-induction and zero-shot rows of two policies."""
    rows = [row("la_pv-s1", "parent", "train", pair="la_pv", seed=1, **COSTS),
            row("la_pv-s1", "parent", "test", pair="la_pv", seed=1, test_set="test_2016", bleu=31.0, chrf=55.0)]
    for pair, side in (("lb_pv", "source"), ("la-lb", "target")):
        for policy, right in RIGHT.items():
            for seed in (1, 2):
                run = f"{pair}-{policy}-s{seed}"
                child = dict(pair=pair, parent_pair="la_pv", side=side, policy=policy, seed=seed)
                rows += [row(run, "child", "train", **child, **dict(COSTS, trainable_params=100 * (seed + len(policy)))),
                         row(run, "child", "test", **child, test_set="test_2016",
                             **translation_files(folder, run, right[seed - 1] - (pair == "la-lb")))]
    for policy, bleu in (("body", 3.0), ("new_xattn", 12.5)):
        for seed in (1, 2):
            rows += [row(f"forget-{policy}-s{seed}", "analysis", "forgetting", pair="lb_pv", policy=policy, seed=seed,
                         test_set="test_2016", bleu=bleu + seed, reference_bleu=31.0),
                     row(f"bli-{policy}-s{seed}", "analysis", "bli", pair="lb_pv", policy=policy, seed=seed,
                         dictionary="lb_la", bli_method="csls", bli_p1=bleu / 40 + seed / 100, n_evaluated=120),
                     row(f"zeroshot-{policy}-s{seed}", "analysis", "zeroshot", pair="lb_lc", policy=policy, seed=seed,
                         test_set="test_2016", bleu=bleu - seed,
                         stitched_from={"body": f"la_lc-{policy}-s{seed}", "embeddings": "lb_pv"})]
    return rows


def codeswitch_rows(folder: Path) -> list[dict]:
    """A code-switching study: the base, then body and bit_fit fine-tuned with standard and xlquery
    attention, two seeds, each with translation files on a seen and an unseen test set."""
    rows = [row("base-s1", "base", "train", seed=1, attention="standard", **COSTS),
            row("base-s1", "base", "test", seed=1, attention="standard", test_set="test.mono.la", bleu=20.0)]
    for policy in ("body", "bit_fit"):
        for attention, right in (("standard", 20), ("xlquery", 45)):
            alphas = dict(mono_alpha=0.3, cross_alpha=0.3) if attention == "xlquery" else {}
            for seed in (1, 2):
                run = f"cs-{policy}-{attention}-s{seed}"
                fields = dict(policy=policy, attention=attention, seed=seed, **alphas)
                rows.append(row(run, "codeswitch", "train", **fields, **COSTS))
                for test_set in ("test.mono.la", "test.seen.la+lb", "test.unseen.lb+lc"):
                    rows.append(row(run, "codeswitch", "test", **fields, test_set=test_set,
                                    **translation_files(folder, f"{run}.{test_set}", right + seed)))
    return rows


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, ResultsStore]:
    folder = tmp_path_factory.mktemp("paper-stores")
    for name, rows_of in (("transfer", transfer_rows), ("codeswitch", codeswitch_rows)):
        (folder / name).mkdir()
        ResultsStore(folder / name / "results").write(rows_of(folder / name))
    return {name: ResultsStore(folder / name / "results") for name in ("transfer", "codeswitch")}


@pytest.fixture(scope="module")
def reports(stores, tmp_path_factory) -> dict[str, Path]:
    """Each store's report folder, written once for the module."""
    out = tmp_path_factory.mktemp("paper-reports")
    for name, store in stores.items():
        build_report(store, EXPERIMENT, out / name)
    return {name: out / name for name in stores}


# --- what the LaTeX must be ---------------------------------------------------------------------

def latex_body(text: str) -> str:
    """`text` without its comments (from an unescaped `%` to the end of the line)."""
    return "\n".join(re.sub(r"(?<!\\)%.*", "", line) for line in text.splitlines())


def assert_balanced(text: str) -> None:
    """Braces balance (escaped ones aside) and every \\begin{x} is closed by its own \\end{x}, in order."""
    depth = 0
    for character in re.sub(r"\\[{}]", "", text):
        depth += {"{": 1, "}": -1}.get(character, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "a { is never closed"
    open_environments = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", text):
        if kind == "begin":
            open_environments.append(name)
        else:
            assert open_environments and open_environments.pop() == name, f"\\end{{{name}}} closes something else"
    assert open_environments == [], f"never closed: {open_environments}"


def tabulars(text: str) -> list[tuple[str, list[list[str]]]]:
    """Each tabular's column spec and its rows (ended by \\\\), each row its cells (split at unescaped &)."""
    found = []
    for spec, body in re.findall(r"\\begin\{tabular\}\{([^}]*)\}(.*?)\\end\{tabular\}", text, flags=re.S):
        body = re.sub(r"\\(top|mid|bottom)rule", "", body)
        rows = [line.strip() for line in body.split("\\\\") if line.strip()]
        found.append((spec, [[cell.strip() for cell in re.split(r"(?<!\\)&", row)] for row in rows]))
    return found


@pytest.mark.parametrize("study, tables", [("transfer", TRANSFER_TABLES), ("codeswitch", CODESWITCH_TABLES)])
def test_report_tex_is_a_well_formed_document_with_one_booktabs_tabular_per_table(reports, study, tables):
    text = (reports[study] / "report.tex").read_text()
    body = latex_body(text)
    assert_balanced(body)
    assert body.lstrip().startswith(r"\documentclass{article}") and body.rstrip().endswith(r"\end{document}")
    assert r"\usepackage{booktabs}" in body
    found = tabulars(body)
    assert len(found) == len(tables) == body.count(r"\caption{") == body.count(r"\begin{table}")
    for table in tables:
        assert rf"\label{{tab:{EXPERIMENT}-{table}}}" in body
    for spec, rows in found:
        assert set(spec) <= {"l", "r"} and len(rows) >= 2  # a header and at least one row
        assert all(len(cells) == len(spec) for cells in rows), (spec, rows)
    for part in ("toprule", "midrule", "bottomrule"):
        assert body.count(f"\\{part}") == len(tables)
    # Every underscore typeset is escaped: in names (pairs, policies, test sets, the experiment) and in
    # captions; a label is a key, never typeset, and keeps the experiment's name as it is.
    assert re.findall(r"(?<!\\)_", re.sub(r"\\label\{[^}]*\}", "", body)) == []
    assert "\u2212" not in body and "\u00b1" not in body  # the real minus and ± are LaTeX commands


def test_names_and_symbols_are_escaped_where_they_stand(reports):
    body = latex_body((reports["transfer"] / "report.tex").read_text())
    assert r"policy & lb\_pv & la-lb \\" in body  # Table 2's header
    assert r"new\_xattn & " in body and r"test\_2016" in body and r"\section*{Report: paper\_tables}" in body
    assert r"scratch & 1 & 14.33 ($-$37.10) & 0.001* & " in body  # a real minus, in math
    assert r"550 (13.8\%) & 2.5 & 1,234 & 10 \\" in body  # body's cost: the share's % escaped
    code = latex_body((reports["codeswitch"] / "report.tex").read_text())
    assert r"bit\_fit $\cdot$ xlquery 0.3/0.3" in code and r"Q\_cross" in code


@pytest.mark.parametrize("study, tables", [("transfer", TRANSFER_TABLES), ("codeswitch", CODESWITCH_TABLES)])
def test_each_table_is_a_fragment_of_its_own_that_report_tex_holds(reports, study, tables):
    document = (reports[study] / "report.tex").read_text()
    written = sorted(path.name for path in reports[study].iterdir() if path.suffix in (".tex", ".csv"))
    assert written == sorted(["report.tex", *(f"{name}.{ext}" for name in tables for ext in ("tex", "csv"))])
    for name in tables:
        fragment = (reports[study] / f"{name}.tex").read_text()
        assert fragment.startswith(r"\begin{table}") and fragment.rstrip().endswith(r"\end{table}")
        assert_balanced(latex_body(fragment))
        assert fragment in document
        assert re.findall(r"(?<!\\)%", fragment) == []  # a fragment has no comments: every % is escaped


# --- the CSVs hold report.md's numbers ------------------------------------------------------------

SECTIONS = {"transfer": {"table2": "Table 2: BLEU of child models", "significance": "Significance against body",
                         "forgetting": "Table 3: forgetting", "zeroshot": "Zero-shot translation",
                         "bli": "Bilingual lexicon induction", "cost": "Cost"},
            "codeswitch": {"codeswitch": "Code-switched translation", "test_sets": "BLEU by test set",
                           "significance": "Significance: xlquery against standard attention", "cost": "Cost"}}
NUMBER = re.compile(r"[\u2212+]?\d[\d,]*(?:\.\d+)?%?")


def markdown_tables(report: str) -> dict[str, list[list[str]]]:
    """Each section's first Markdown table (header first) by the section's heading."""
    found = {}
    for section in report.split("\n## ")[1:]:
        heading, _, text = section.partition("\n")
        lines = [line for line in text.splitlines() if line.startswith("| ")]
        if lines:
            found[heading] = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
                              for line in lines if not line.startswith("| --- ")]
    return found


def shown(token: str) -> tuple[float, float]:
    """A number as report.md shows it, and half a unit of its last decimal: how far rounding may move it."""
    percent = token.endswith("%")
    digits = token.rstrip("%").replace(",", "").replace("\u2212", "-")
    decimals = len(digits.partition(".")[2])
    scale = 100 if percent else 1
    return float(digits) / scale, 0.5 * 10 ** -decimals / scale + 1e-12


@pytest.mark.parametrize("study", ["transfer", "codeswitch"])
def test_each_csv_parses_and_holds_the_numbers_report_md_shows(reports, study):
    markdown = markdown_tables((reports[study] / "report.md").read_text())
    for name, heading in SECTIONS[study].items():
        path = reports[study] / f"{name}.csv"
        header, *lines = list(csv.reader(io.StringIO(path.read_text())))
        arrow = pyarrow.csv.read_csv(path)
        assert arrow.column_names == header and arrow.num_rows == len(lines)
        md_header, *md_rows = markdown[heading]
        assert len(md_rows) == len(lines)
        # The CSV has report.md's columns, in order, each followed by the parts of its figures.
        starts = [header.index(column) for column in md_header]
        assert starts == sorted(starts) and starts[0] == 0
        ends = starts[1:] + [len(header)]
        for md_row, line in zip(md_rows, lines):
            for cell, start, end in zip(md_row, starts, ends):
                fields = [field for field in line[start:end] if field != ""]
                if fields and all(_is_float(field) for field in fields):
                    # A figure: its value, std and aside, in the order the cell shows them.
                    tokens = NUMBER.findall(cell)
                    assert len(tokens) == len(fields), (name, cell, fields)
                    for token, field in zip(tokens, fields):
                        value, slack = shown(token)
                        assert abs(float(field) - value) <= slack, (name, cell, field)
                else:  # a name, or a blank
                    assert fields == ([cell] if cell else []), (name, cell, line[start:end])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- Table 2's marks, and the paired test a report runs -------------------------------------------

def test_table2_marks_the_policies_different_from_body_in_every_seed(reports):
    table = markdown_tables((reports["transfer"] / "report.md").read_text())["Table 2: BLEU of child models"]
    cells = {cells[0]: cells[1:] for cells in table[1:]}
    for policy, marked in (("scratch", True), ("body", False), ("xattn", False), ("new_xattn", True)):
        # xattn is significantly above body in seed 1 and below it in seed 2: no mark.
        assert all(cell.endswith("\u2020") == marked for cell in cells[policy]), (policy, cells[policy])
    tex = (reports["transfer"] / "table2.tex").read_text()
    assert tex.count(r"\dag{}") == 1 + 4  # the caption's, then scratch's and new_xattn's in both pairs
    assert r"\textbf{89.56 $\pm$ 0.00 (+38.13)}\dag{}" in tex


def test_the_significance_table_tests_bleu_and_chrf_of_the_stored_translations(stores, reports):
    rows = stores["transfer"].read(EXPERIMENT)
    stored = rows[(rows["eval"] == "test") & (rows["stage"] == "child")].set_index(["pair", "policy", "seed"])
    with (reports["transfer"] / "significance.csv").open() as lines:
        tests = list(csv.DictReader(lines))
    assert len(tests) == 2 * 3 * 2  # pairs x policies other than body x seeds
    for test in tests:
        run, body = (stored.loc[(test["pair"], policy, int(test["seed"]))] for policy in (test["policy"], "body"))
        # sacreBLEU's own paired bootstrap of the two files: the same p-values (test_paired.py says why).
        lines = [Path(uri).read_text().splitlines() for uri in (body["hypotheses_uri"], run["hypotheses_uri"])]
        _, theirs = PairedTest([("body", lines[0]), ("run", lines[1])], {"BLEU": BLEU(), "chrF": CHRF()},
                               [REFERENCES], test_type="bs")()
        for metric, column, name in (("BLEU", "bleu", "BLEU"), ("chrF", "chrf", "chrF2")):
            assert float(test[metric]) == pytest.approx(run[column], abs=1e-9)
            assert float(test[f"{metric} vs body"]) == pytest.approx(run[column] - body[column], abs=1e-9)
            assert test[f"{metric} p"] == f"{theirs[name][1].p_value:.12g}"
    # xattn a little below body in seed 2: p-values in between, each metric its own.
    close = [test for test in tests if test["policy"] == "xattn" and test["seed"] == "2"]
    assert all(0.001 < float(test["BLEU p"]) < 0.05 for test in close)
    assert any(test["BLEU p"] != test["chrF p"] for test in close)


def test_report_command_runs_the_randomization_test_when_asked(stores, reports, tmp_path):
    done = xattn_ray("report", "--store", stores["transfer"].uri, "--experiment", EXPERIMENT, "--out", tmp_path / "rep",
                     "--test", "randomization")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "sacreBLEU paired approximate randomization (10,000 trials) of each policy against `body`" in report
    assert report.count("|ar:10000|seed:12345|") == 2 and "bs:1000" not in report  # BLEU's and chrF's signatures
    # xattn's seed 2, five sentences of 60 below body: significant by the bootstrap, not by randomization.
    assert "lb_pv: randomization p < 0.05: xattn better in 1 of 2 seeds, body in 0;" in report  # the findings
    assert ("lb_pv: bootstrap p < 0.05: xattn better in 1 of 2 seeds, body in 1;"
            in (reports["transfer"] / "report.md").read_text())
    p_values = {}
    for folder in (tmp_path / "rep", reports["transfer"]):
        with (folder / "significance.csv").open() as lines:
            p_values[folder] = {(test["pair"], test["policy"], test["seed"]): float(test["BLEU p"])
                                for test in csv.DictReader(lines)}
    randomization, bootstrap = p_values.values()
    assert randomization[("lb_pv", "xattn", "2")] > 0.05 > bootstrap[("lb_pv", "xattn", "2")]
    assert len(randomization) == 12
    assert {key for key, p in randomization.items() if p >= 0.05} == {("lb_pv", "xattn", "2"), ("la-lb", "xattn", "2")}
    # Both tests find the same runs different here: Table 2 is the bootstrap report's, marks and all.
    heading = "Table 2: BLEU of child models"
    assert markdown_tables(report)[heading] == markdown_tables((reports["transfer"] / "report.md").read_text())[heading]


def test_an_unknown_test_is_a_one_line_error_and_writes_nothing(stores, tmp_path):
    with pytest.raises(XattnError, match="unknown paired test 'permutation': use bootstrap or randomization"):
        build_report(stores["transfer"], EXPERIMENT, tmp_path / "out", test="permutation")
    assert not (tmp_path / "out").exists()
    done = xattn_ray("report", "--store", stores["transfer"].uri, "--experiment", EXPERIMENT, "--out", tmp_path / "rep",
                     "--test", "permutation")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "argument --test: invalid choice: 'permutation'" in done.stderr
    assert not (tmp_path / "rep").exists()
