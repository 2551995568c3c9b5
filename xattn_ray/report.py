"""The paper-style report of one experiment: Markdown tables and PNG figures from the results store.

Everything here is read from stored rows and stored files; nothing is trained or decoded again, so a
report of a finished study takes seconds and never imports the model. The sections follow Gheini et
al. (2021): Table 2 (child BLEU by policy, with each policy's difference from fine-tuning the whole
`body`), paired bootstrap significance against `body` on the stored translations, Table 3
(forgetting), zero-shot and lexicon-induction scores, and what each policy costs.

Numbers come from rows whose status is `ok` only; runs that failed or were stopped are listed as
missing instead of being averaged in. Means and standard deviations are over seeds; the standard
deviation is the sample one (n - 1), left out when a cell has a single seed.

The helpers that make a table take the store's rows as a pandas DataFrame (`ResultsStore.read`) and
return a DataFrame, so every number can be checked without reading the Markdown.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas

from xattn_ray.errors import XattnError
from xattn_ray.files import write_atomically
from xattn_ray.store import ResultsStore

# The paper's order: the baseline, the full fine-tuning reference, then the cheap policies.
POLICY_ORDER = ("scratch", "body", "xattn", "randxattn")
REFERENCE_POLICY = "body"  # every difference and significance test is against fine-tuning the body
BOOTSTRAP_SAMPLES = 1000
SIGNIFICANCE_LEVEL = 0.05
FIGURE_DPI = 150
MINUS = "\u2212"  # a real minus sign: a hyphen reads as a dash in tables

ReferencesFor = Callable[[pandas.Series], "list[str] | None"]


# --- stored files -------------------------------------------------------------------------------

def references_from_uri(row: pandas.Series) -> list[str] | None:
    """The reference lines a test row was scored against, from its `references_uri` file (None if unknown)."""
    uri = row.get("references_uri")
    if not isinstance(uri, str) or not uri:
        return None
    return read_lines(uri)


def read_lines(path: str) -> list[str]:
    """One line per sentence, as the pipeline writes them (each followed by a newline)."""
    text = Path(path).read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


# --- the report ---------------------------------------------------------------------------------

def build_report(store: ResultsStore, experiment: str, out_dir: Path,
                 references_for: ReferencesFor = references_from_uri) -> Path:
    """Write `out_dir/report.md` and its figures for `experiment`; return the path of report.md.

    `references_for(test row)` gives the reference lines the significance tests score against. An
    experiment without rows is an `XattnError`, raised before anything is written.
    """
    frame = store.read(experiment)
    if frame.empty:
        raise XattnError(f"no results for experiment {experiment!r} in {store.uri}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(frame, out_dir)  # first: report.md, written last, links to them
    path = out_dir / "report.md"
    write_atomically(path, report_markdown(frame, figures, references_for).encode())
    return path


# --- selecting rows -----------------------------------------------------------------------------

def ok_rows(frame: pandas.DataFrame, evaluation: str, stage: str | None = None) -> pandas.DataFrame:
    """Rows of one evaluation (and stage) whose run finished: the only rows numbers come from."""
    keep = (frame["eval"] == evaluation) & (frame["status"] == "ok")
    if stage is not None:
        keep &= frame["stage"] == stage
    return frame[keep]


def ordered_policies(policies) -> list[str]:
    """scratch, body, xattn, randxattn, then any other policy alphabetically."""
    present = set(policies)
    return [p for p in POLICY_ORDER if p in present] + sorted(present.difference(POLICY_ORDER))


def ordered_pairs(rows: pandas.DataFrame) -> list[str]:
    """Child pairs grouped as the paper does: by parent, new sources before new targets, then by name."""
    keys = rows[["parent_pair", "side", "pair"]].drop_duplicates().fillna("")
    return list(dict.fromkeys(keys.sort_values(["parent_pair", "side", "pair"])["pair"]))


def primary_test_sets(frame: pandas.DataFrame) -> dict[str, str]:
    """Each child pair's first test set by name: the one Table 2, the tests and the figures use."""
    tests = ok_rows(frame, "test", "child")
    return {pair: min(names) for pair, names in tests.groupby("pair")["test_set"]}


def primary_child_tests(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The child test rows on each pair's primary test set."""
    tests = ok_rows(frame, "test", "child")
    first = primary_test_sets(frame)
    return tests[tests["test_set"] == tests["pair"].map(first)]


# --- Table 2 ------------------------------------------------------------------------------------

def child_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of every (pair, policy) on the pair's primary test set, over seeds.

    Columns: pair, policy, test_set, mean, std (NaN for one seed), seeds, vs_body (mean minus the
    body's mean on the same pair; NaN where there is no body, and for body itself), best (one of the
    two highest means of its pair; ties at second place are all best).
    """
    tests = primary_child_tests(frame)
    summary = (tests.groupby(["pair", "policy", "test_set"])["bleu"]
               .agg(mean="mean", std="std", seeds="count").reset_index())
    body = summary[summary["policy"] == REFERENCE_POLICY].set_index("pair")["mean"]
    summary["vs_body"] = summary["mean"] - summary["pair"].map(body)
    summary.loc[summary["policy"] == REFERENCE_POLICY, "vs_body"] = float("nan")
    second_best = summary.groupby("pair")["mean"].transform(lambda means: means.nlargest(2).min())
    summary["best"] = summary["mean"] >= second_best
    return summary


def table2(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The paper's Table 2 as text cells: rows = policies, columns = child pairs.

    A cell is `mean ± std`, with `(±difference)` from body for the transfer policies (not for
    scratch, which is no transfer), in **bold** when among the two best of its column.
    """
    summary = child_bleu(frame)
    pairs, policies = ordered_pairs(primary_child_tests(frame)), ordered_policies(summary["policy"])
    cells = {}
    for row in summary.itertuples():
        text = _number(row.mean) + (f" ± {row.std:.2f}" if row.seeds > 1 else "")
        if row.policy not in ("scratch", REFERENCE_POLICY) and row.vs_body == row.vs_body:
            text += f" ({_signed(row.vs_body)})"
        cells[(row.policy, row.pair)] = f"**{text}**" if row.best else text
    table = pandas.DataFrame([[cells.get((policy, pair), "") for pair in pairs] for policy in policies],
                             index=policies, columns=pairs)
    table.index.name = "policy"
    return table


def parent_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Each parent's own BLEU on the test sets its children's Table 2 uses: parent_pair, test_set, mean, seeds."""
    children = primary_child_tests(frame)[["parent_pair", "test_set"]].drop_duplicates()
    parents = ok_rows(frame, "test", "parent").drop(columns="parent_pair").rename(columns={"pair": "parent_pair"})
    used = parents.merge(children, on=["parent_pair", "test_set"])
    return used.groupby(["parent_pair", "test_set"])["bleu"].agg(mean="mean", seeds="count").reset_index()


# --- significance -------------------------------------------------------------------------------

def significance(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri) -> pandas.DataFrame:
    """Paired bootstrap resampling (sacreBLEU) of each policy against body, seed by seed.

    For every child pair's primary test set and every seed body has, the stored translations of each
    other policy's run with that seed are tested against body's (1000 resamples, sacreBLEU's fixed
    seed) on the references `references_for(body's row)` returns. Columns: pair, test_set, policy,
    seed, bleu (as the test recomputes it from the files), body_bleu (stored), p_value, signature, note
    (why a run could not be tested; its p_value is then NaN).
    """
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # it logs every step of every test at INFO
    tests = primary_child_tests(frame)
    results = []
    for (pair, test_set, seed), runs in tests.groupby(["pair", "test_set", "seed"]):
        if REFERENCE_POLICY not in set(runs["policy"]):
            continue  # nothing to pair these runs with
        body = runs[runs["policy"] == REFERENCE_POLICY].iloc[0]
        base = dict(pair=pair, test_set=test_set, seed=seed, body_bleu=body["bleu"])
        if runs["policy"].duplicated().any():
            # Sizes or options of the grid give one policy several runs per seed: which pairs with which is unclear.
            note = "several runs of one policy with this seed (grid sizes or options): not paired"
            results += [dict(base, **_untested(policy, note))
                        for policy in ordered_policies(runs["policy"]) if policy != REFERENCE_POLICY]
        else:
            results += [dict(base, **test) for test in _paired_tests(runs.set_index("policy"), references_for(body))]
    columns = ["pair", "test_set", "policy", "seed", "bleu", "body_bleu", "p_value", "signature", "note"]
    return pandas.DataFrame(results, columns=columns)


def _paired_tests(runs: pandas.DataFrame, references: list[str] | None) -> list[dict]:
    """One paired bootstrap test of each policy of `runs` (indexed by policy) against body's run."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    others = [policy for policy in ordered_policies(runs.index) if policy != REFERENCE_POLICY]
    systems, notes = [], {}
    for policy in [REFERENCE_POLICY, *others]:
        uri = runs.at[policy, "hypotheses_uri"]
        if references is None:
            notes[policy] = "no reference file recorded (references_uri)"
        elif not isinstance(uri, str) or not os.path.isfile(uri):
            notes[policy] = f"hypotheses file missing: {uri}"
        elif len(hypotheses := read_lines(uri)) != len(references):
            notes[policy] = f"{len(hypotheses)} hypotheses for {len(references)} references"
        else:
            systems.append((policy, hypotheses))
    if REFERENCE_POLICY in notes:  # nothing to test against
        return [_untested(policy, notes.get(policy, f"body: {notes[REFERENCE_POLICY]}")) for policy in others]
    tests = []
    if len(systems) > 1:
        # Every system against the baseline, systems[0], on the same resamples.
        signatures, scores = PairedTest(systems, {"BLEU": BLEU()}, [references], test_type="bs",
                                        n_samples=BOOTSTRAP_SAMPLES)()
        baseline = scores["BLEU"][0].score
        # An exact tie is no evidence of a difference. sacreBLEU would say p = 1/(n+1) when every
        # resample ties as well (identical translations), so a tie is given p = 1 instead.
        tests += [dict(policy=policy, bleu=result.score, p_value=1.0 if result.score == baseline else result.p_value,
                       signature=str(signatures["BLEU"]), note=None)
                  for (policy, _), result in zip(systems[1:], scores["BLEU"][1:])]
    return tests + [_untested(policy, note) for policy, note in notes.items()]


def _untested(policy: str, note: str) -> dict:
    return dict(policy=policy, bleu=float("nan"), p_value=float("nan"), signature=None, note=note)


def significance_table(tests: pandas.DataFrame, pairs: list[str]) -> pandas.DataFrame:
    """p-values as text cells: rows = child pairs, columns = policies; one `s<seed> p` per seed, `*` if p < 0.05."""
    tested = tests.dropna(subset=["p_value"])
    policies = ordered_policies(tested["policy"])
    table = pandas.DataFrame("", index=[p for p in pairs if p in set(tested["pair"])], columns=policies)
    for (pair, policy), runs in tested.groupby(["pair", "policy"]):
        table.at[pair, policy] = ", ".join(
            f"s{run.seed}: {run.p_value:.3f}" + ("*" if run.p_value < SIGNIFICANCE_LEVEL else "")
            for run in runs.sort_values("seed").itertuples())
    table.index.name = "pair"
    return table


# --- forgetting, zero-shot, lexicon induction ----------------------------------------------------

def forgetting_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Table 3: the parent's test BLEU after its embeddings are plugged back into each child.

    Rows = (child pair, parent test set); columns: `parent` (the parent's own BLEU on that set,
    `reference_bleu`), then one column per policy (mean over seeds). Empty without forgetting rows.
    """
    rows = ok_rows(frame, "forgetting")
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "test_set"]
    by_policy = rows.pivot_table(index=keys, columns="policy", values="bleu", aggfunc="mean")
    table = rows.groupby(keys)["reference_bleu"].mean().rename("parent").to_frame().join(by_policy)
    order = {pair: i for i, pair in enumerate(ordered_pairs(rows))}
    table = table.sort_index(key=lambda level: level.map(order) if level.name == "pair" else level)
    return table[["parent", *ordered_policies(by_policy.columns)]]


def zeroshot_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of stitched models on pairs no model trained on: pair, test_set, policy, mean, std, seeds, stitched_from."""
    rows = ok_rows(frame, "zeroshot")
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "test_set", "policy"]
    table = rows.groupby(keys, dropna=False)["bleu"].agg(mean="mean", std="std", seeds="count")
    # What a stitched model is made of, told once per cell: the lowest seed's record.
    table["stitched_from"] = rows.sort_values("seed").groupby(keys, dropna=False)["stitched_from"].first()
    rank = {policy: i for i, policy in enumerate(ordered_policies(rows["policy"]))}
    return table.reset_index().sort_values(["pair", "test_set", "policy"], key=lambda column: column.map(rank)
                                           if column.name == "policy" else column, ignore_index=True)


def bli_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Lexicon-induction precision@1 (%): rows = (pair, dictionary, method), columns = policies, plus `entries`."""
    rows = ok_rows(frame, "bli")
    if rows.empty:
        return pandas.DataFrame()
    keys = ["pair", "dictionary", "bli_method"]
    table = rows.pivot_table(index=keys, columns="policy", values="bli_p1", aggfunc="mean") * 100
    table = table[ordered_policies(table.columns)]
    # How many dictionary words were scorable; one figure unless policies saw different vocabularies.
    table["entries"] = rows.groupby(keys)["n_evaluated"].agg(
        lambda n: "/".join(str(int(value)) for value in sorted(set(n.dropna()))))
    return table


# --- cost ---------------------------------------------------------------------------------------

def cost_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """What each policy costs, as means over its child runs.

    Index: policy. Columns: runs, trainable_params, share (trainable / total parameters), train_seconds,
    target_tokens_per_second, updates.
    """
    rows = ok_rows(frame, "train", "child").assign(share=lambda r: r["trainable_params"] / r["total_params"])
    table = rows.groupby("policy").agg(runs=("run_id", "nunique"), trainable_params=("trainable_params", "mean"),
                                       share=("share", "mean"), train_seconds=("train_seconds", "mean"),
                                       target_tokens_per_second=("target_tokens_per_second", "mean"),
                                       updates=("updates", "mean"))
    return table.loc[ordered_policies(table.index)]


def missing_runs(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Runs with a failed or stopped row: stage, run_id, pair, policy, seed, eval, status, error."""
    columns = ["stage", "run_id", "pair", "policy", "seed", "eval", "status", "error"]
    rows = frame[frame["status"] != "ok"][columns]
    return rows.drop_duplicates(["run_id", "eval"]).sort_values(["stage", "run_id", "eval"])


# --- the Markdown -------------------------------------------------------------------------------

def report_markdown(frame: pandas.DataFrame, figures: list[str],
                    references_for: ReferencesFor = references_from_uri) -> str:
    """The whole report.md text; `figures` are file names beside it, in the order they are shown."""
    sections = [_header(frame), _table2_section(frame), _significance_section(frame, references_for),
                _forgetting_section(frame), _zeroshot_section(frame), _bli_section(frame), _cost_section(frame),
                _missing_section(frame), _figures_section(figures)]
    return "\n\n".join(section for section in sections if section) + "\n"


def _header(frame: pandas.DataFrame) -> str:
    experiment = frame["experiment"].iloc[0]
    runs = frame[frame["eval"] == "train"].groupby("run_id")["status"].agg(lambda s: (s == "ok").all())
    versions = sorted(frame["code_version"].dropna().unique())
    signatures = sorted(frame.loc[frame["eval"] == "test", "bleu_signature"].dropna().unique())
    lines = [f"# Report: {experiment}", "",
             f"- training runs: {len(runs)} ({int(runs.sum())} finished, {int((~runs).sum())} failed or stopped)",
             f"- code version{'s' if len(versions) != 1 else ''}: "
             + (", ".join(f"`{v}`" for v in versions) or "unknown"),
             f"- BLEU signature{'s' if len(signatures) != 1 else ''}: "
             + (", ".join(f"`{s}`" for s in signatures) or "none")]
    if len(versions) > 1:
        lines.append("- rows come from more than one code version: compare numbers across them with care")
    return "\n".join(lines)


def _table2_section(frame: pandas.DataFrame) -> str:
    if primary_child_tests(frame).empty:
        return "## Table 2: BLEU of child models\n\nNo finished child runs."
    first = primary_test_sets(frame)
    names = sorted(set(first.values()))
    where = (f"test set `{names[0]}`" if len(names) == 1 else "each pair's first test set by name ("
             + ", ".join(f"{pair}: `{name}`" for pair, name in first.items()) + ")")
    lines = ["## Table 2: BLEU of child models", "",
             f"sacreBLEU on {where}; mean ± standard deviation over seeds; in parentheses the difference "
             f"from `{REFERENCE_POLICY}`; the two best of each pair in bold.", "", _markdown(table2(frame))]
    if primary_child_tests(frame).duplicated(["pair", "policy", "seed"]).any():
        lines += ["", "Several runs share a pair, policy and seed (grid sizes or options): their BLEU is pooled."]
    parents = parent_bleu(frame)
    if not parents.empty:
        lines += ["", "Parent" + ("s" if len(parents) > 1 else "") + ": " + "; ".join(
            f"{row.parent_pair} {_number(row.mean)} BLEU on `{row.test_set}`"
            + (f" (mean of {row.seeds} seeds)" if row.seeds > 1 else "") for row in parents.itertuples()) + "."]
    return "\n".join(lines)


def _significance_section(frame: pandas.DataFrame, references_for: ReferencesFor) -> str:
    pairs = ordered_pairs(primary_child_tests(frame))
    tests = significance(frame, references_for)
    if tests.empty:
        return ""
    lines = ["## Significance against body", "",
             f"sacreBLEU paired bootstrap resampling ({BOOTSTRAP_SAMPLES} resamples) of each policy against "
             f"`{REFERENCE_POLICY}` with the same seed, on the stored translations of Table 2's test sets. "
             f"Cells: p-value per seed; `*` marks p < {SIGNIFICANCE_LEVEL}."]
    tested = tests.dropna(subset=["p_value"])
    if not tested.empty:
        signatures = sorted(tested["signature"].unique())
        lines += ["", _markdown(significance_table(tests, pairs)), "",
                  "Signature: " + ", ".join(f"`{s}`" for s in signatures)]
    untested = tests[tests["p_value"].isna()]
    if not untested.empty:
        lines += ["", "Not tested:"] + [
            f"- {note}: " + ", ".join(f"{run.pair} {run.policy} s{run.seed}" for run in runs.itertuples())
            for note, runs in untested.groupby("note", sort=False)]
    return "\n".join(lines)


def _forgetting_section(frame: pandas.DataFrame) -> str:
    table = forgetting_table(frame)
    if table.empty:
        return ""
    text = table.map(_number).reset_index().set_index("pair")
    text = text.rename(columns={"test_set": "parent test set", "parent": "parent's own"})
    return "\n".join(["## Table 3: forgetting", "",
                      "BLEU on the parent's test set after the parent's embeddings are plugged back into each "
                      "child (mean over seeds); `parent's own` is the parent's BLEU on the same set.", "",
                      _markdown(text)])


def _zeroshot_section(frame: pandas.DataFrame) -> str:
    table = zeroshot_table(frame)
    if table.empty:
        return ""
    table["BLEU"] = [_number(row.mean) + (f" ± {row.std:.2f}" if row.seeds > 1 else "") for row in table.itertuples()]
    table["stitched from"] = table["stitched_from"].map(_stitched)
    text = table.rename(columns={"test_set": "test set"}).set_index("pair")[
        ["test set", "policy", "BLEU", "seeds", "stitched from"]]
    lines = ["## Zero-shot translation", "", "Models stitched from two children, scored on a pair neither trained on.",
             "", _markdown(text)]
    # The paper's yardstick: models trained from scratch on (a little of) the zero-shot pair itself.
    baselines = ok_rows(frame, "test", "parent").merge(table[["pair", "test_set"]].drop_duplicates())
    if not baselines.empty:
        lines += ["", "Trained from scratch on the same pair: " + "; ".join(
            f"{row.run_id} {_number(row.bleu)} on `{row.test_set}`"
            for row in baselines.sort_values(["pair", "run_id"]).itertuples()) + "."]
    return "\n".join(lines)


def _bli_section(frame: pandas.DataFrame) -> str:
    table = bli_table(frame)
    if table.empty:
        return ""
    text = table.copy()
    for column in text.columns.drop("entries"):
        text[column] = text[column].map(lambda value: _number(value, 1))
    text = text.reset_index().rename(columns={"bli_method": "method"}).set_index("pair")
    return "\n".join(["## Bilingual lexicon induction", "",
                      "Precision@1 (%) of the new language's word embeddings retrieving the parent language's "
                      "translation (mean over seeds); `entries`: dictionary words scored.", "", _markdown(text)])


def _cost_section(frame: pandas.DataFrame) -> str:
    table = cost_table(frame)
    if table.empty:
        return ""
    text = pandas.DataFrame({
        "runs": table["runs"].astype(int),
        "trainable parameters": [f"{value:,.0f} ({share:.1%})"
                                 for value, share in zip(table["trainable_params"], table["share"])],
        "train seconds": table["train_seconds"].map(lambda value: _number(value, 1)),
        "target tokens/s": table["target_tokens_per_second"].map(lambda value: f"{value:,.0f}"),
        "updates": table["updates"].map(lambda value: f"{value:,.0f}"),
    }, index=table.index)
    return "\n".join(["## Cost", "", "Child runs, mean over pairs and seeds; the share is of all the model's "
                      "parameters.", "", _markdown(text)])


def _missing_section(frame: pandas.DataFrame) -> str:
    missing = missing_runs(frame)
    if missing.empty:
        return ""
    text = missing.astype({"seed": "Int64"}).fillna("").astype(str).set_index("run_id")
    text["error"] = text["error"].map(lambda error: " ".join(error.split()).replace("|", "\\|"))
    return "\n".join(["## Missing runs", "", "Failed or stopped; left out of every number above.", "",
                      _markdown(text)])


def _figures_section(figures: list[str]) -> str:
    if not figures:
        return ""
    captions = {"bleu_by_pair.png": "BLEU by child pair and policy (error bars: standard deviation over seeds)",
                "valid_curves.png": "Validation loss during training, one line per seed",
                "bleu_vs_params.png": "BLEU against trainable parameters"}
    return "\n".join(["## Figures", ""] + [f"![{captions[name]}]({name})\n" for name in figures]).rstrip()


def _markdown(table: pandas.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, the index as its first column."""
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(index), *map(str, values)] for index, values in zip(table.index, table.to_numpy())]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _number(value: float, decimals: int = 2) -> str:
    return "" if value != value else f"{value:.{decimals}f}".replace("-", MINUS)


def _signed(value: float) -> str:
    return ("+" if value >= 0 else MINUS) + f"{abs(value):.2f}"


def _stitched(value: str | None) -> str:
    """A `stitched_from` JSON record as `key: value` pairs (the runs that gave the body and the embeddings)."""
    if not isinstance(value, str):
        return ""
    record = json.loads(value)
    if not isinstance(record, dict):
        return value
    return ", ".join(f"{key}: {', '.join(map(str, item)) if isinstance(item, list) else item}"
                     for key, item in record.items() if item not in (None, [], ""))


# --- figures ------------------------------------------------------------------------------------

def write_figures(frame: pandas.DataFrame, out_dir: Path) -> list[str]:
    """Write the figures the rows allow into `out_dir`; return their file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in any process
    written = []
    for name, draw in (("bleu_by_pair.png", _bleu_by_pair), ("valid_curves.png", _valid_curves),
                       ("bleu_vs_params.png", _bleu_vs_params)):
        figure = draw(frame)
        if figure is not None:
            _save_figure(figure, out_dir / name)
            written.append(name)
    return written


def _policy_colors(policies: list[str]) -> dict[str, object]:
    """One color per policy, the same in every figure."""
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10").colors
    return {policy: cycle[i % len(cycle)] for i, policy in enumerate(policies)}


def _bleu_by_pair(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    summary = child_bleu(frame)
    if summary.empty:
        return None
    pairs = ordered_pairs(primary_child_tests(frame))
    policies = ordered_policies(summary["policy"])
    colors = _policy_colors(policies)
    width = 0.8 / len(policies)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.4 * len(pairs) * len(policies) + 2.0), 4))
    for i, policy in enumerate(policies):
        cells = summary[summary["policy"] == policy].set_index("pair").reindex(pairs)
        positions = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(pairs))]
        axes.bar(positions, cells["mean"], width, yerr=cells["std"].fillna(0), capsize=3, label=policy,
                 color=colors[policy])
    axes.set_xticks(range(len(pairs)), pairs)
    axes.set_xlabel("child pair")
    axes.set_ylabel("BLEU")
    axes.set_title("BLEU by pair and policy")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(title="policy", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return figure


def _valid_curves(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    train = ok_rows(frame, "train", "child").dropna(subset=["valid_curve"])
    if train.empty:
        return None
    pairs = ordered_pairs(train)
    policies = ordered_policies(train["policy"])
    colors = _policy_colors(policies)
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.5, 3.4 * rows), squeeze=False)
    for axes, pair in zip(grid.flat, pairs):
        for run in train[train["pair"] == pair].sort_values(["policy", "seed"]).itertuples():
            curve = json.loads(run.valid_curve)
            if curve:
                updates, losses = zip(*curve)
                axes.plot(updates, losses, color=colors[run.policy], linewidth=1, alpha=0.8, marker=".")
        axes.set_title(pair)
        axes.set_xlabel("update")
        axes.set_ylabel("validation loss")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(pairs):]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[p], label=p) for p in policies]
    figure.legend(handles=handles, title="policy", loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    figure.tight_layout()
    return figure


def _bleu_vs_params(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    summary = child_bleu(frame)
    train = ok_rows(frame, "train", "child")
    if summary.empty or train.empty:
        return None
    params = train.groupby(["pair", "policy"])["trainable_params"].mean().rename("params").reset_index()
    points = summary.merge(params, on=["pair", "policy"])
    policies = ordered_policies(points["policy"])
    pairs = ordered_pairs(primary_child_tests(frame))
    colors = _policy_colors(policies)
    markers = dict(zip(pairs, "osD^v<>pPX*h"))  # pairs beyond the twelfth fall back to circles
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for point in points.itertuples():
        axes.errorbar(point.params, point.mean, yerr=0 if point.std != point.std else point.std, capsize=3,
                      marker=markers.get(point.pair, "o"), markersize=8, linestyle="none", color=colors[point.policy])
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("BLEU")
    axes.set_title("BLEU against trainable parameters")
    axes.grid(alpha=0.3, which="both")
    policy_legend = axes.legend(handles=[plt.Line2D([], [], color=colors[p], marker="o", linestyle="none", label=p)
                                         for p in policies], title="policy (color)", loc="upper left",
                                bbox_to_anchor=(1.01, 1), frameon=False)
    axes.add_artist(policy_legend)
    axes.legend(handles=[plt.Line2D([], [], color="gray", marker=markers.get(p, "o"), linestyle="none", label=p)
                         for p in pairs], title="pair (marker)", loc="lower left", bbox_to_anchor=(1.01, 0),
                frameon=False)
    return figure


def _save_figure(figure, path: Path) -> None:
    """Render a PNG in memory and write it atomically; then free the figure."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    write_atomically(path, buffer.getvalue())
