"""The paper-style report of one experiment: Markdown tables and PNG figures from the results store.

Everything here is read from stored rows and stored files; nothing is trained or decoded again, so a
report of a finished study takes seconds and never imports the model. The sections follow Gheini et
al. (2021): Table 2 (child BLEU by policy, with each policy's difference from fine-tuning the whole
`body`), paired bootstrap significance against `body` on the stored translations, Table 3
(forgetting), zero-shot and lexicon-induction scores, and what each policy costs.

Numbers come from rows whose status is `ok` only; runs that failed or were stopped are listed as
missing instead of being averaged in. Means and standard deviations are over seeds; the standard
deviation is the sample one (n - 1), left out when a cell has a single seed.

A code-switching study (config.CodeSwitchStudy, codeswitch_runs.py) has no parents or children: its
report shows instead each variant's BLEU (policy, attention, training alphas) on single sentences,
on code-switched pairs seen in training and on unseen pairs, and paired bootstrap tests of each
xlquery run against standard attention with the same policy and seed.

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
from xattn_ray.store import ResultsStore, codeswitch_kind

# The paper's order: the baseline, the full fine-tuning reference, then the cheap policies.
POLICY_ORDER = ("scratch", "body", "xattn", "randxattn")
REFERENCE_POLICY = "body"  # every difference and significance test is against fine-tuning the body
BOOTSTRAP_SAMPLES = 1000
SIGNIFICANCE_LEVEL = 0.05
FIGURE_DPI = 150
CODESWITCH_KINDS = ("mono", "seen", "unseen")  # single sentences, training pairs mixed, held-out pairs mixed
REFERENCE_ATTENTION = "standard"  # every xlquery run is tested against standard attention (same policy and seed)
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
            results += [dict(base, **test) for test in _paired_tests(runs.set_index("policy"), references_for(body),
                                                                     REFERENCE_POLICY)]
    columns = ["pair", "test_set", "system", "seed", "bleu", "body_bleu", "p_value", "signature", "note"]
    return pandas.DataFrame(results, columns=columns).rename(columns={"system": "policy"})


def _paired_tests(runs: pandas.DataFrame, references: list[str] | None, baseline: str) -> list[dict]:
    """One paired bootstrap test of each run of `runs` against the `baseline` run.

    `runs` is indexed by system (a policy, a code-switching variant); each test is a dict of system,
    bleu and baseline_bleu (as the test recomputes them from the files), p_value, signature and note.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    others = [system for system in ordered_policies(runs.index) if system != baseline]
    systems, notes = [], {}
    for system in [baseline, *others]:
        uri = runs.at[system, "hypotheses_uri"]
        if references is None:
            notes[system] = "no reference file recorded (references_uri)"
        elif not isinstance(uri, str) or not os.path.isfile(uri):
            notes[system] = f"hypotheses file missing: {uri}"
        elif len(hypotheses := read_lines(uri)) != len(references):
            notes[system] = f"{len(hypotheses)} hypotheses for {len(references)} references"
        else:
            systems.append((system, hypotheses))
    if baseline in notes:  # nothing to test against
        return [_untested(system, notes.get(system, f"{baseline}: {notes[baseline]}")) for system in others]
    tests = []
    if len(systems) > 1:
        # Every system against the baseline, systems[0], on the same resamples.
        signatures, scores = PairedTest(systems, {"BLEU": BLEU()}, [references], test_type="bs",
                                        n_samples=BOOTSTRAP_SAMPLES)()
        baseline_bleu = scores["BLEU"][0].score
        # An exact tie is no evidence of a difference. sacreBLEU would say p = 1/(n+1) when every
        # resample ties as well (identical translations), so a tie is given p = 1 instead.
        tests += [dict(system=system, bleu=result.score, baseline_bleu=baseline_bleu,
                       p_value=1.0 if result.score == baseline_bleu else result.p_value,
                       signature=str(signatures["BLEU"]), note=None)
                  for (system, _), result in zip(systems[1:], scores["BLEU"][1:])]
    return tests + [_untested(system, note) for system, note in notes.items()]


def _untested(system: str, note: str) -> dict:
    return dict(system=system, bleu=float("nan"), baseline_bleu=float("nan"), p_value=float("nan"), signature=None,
                note=note)


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
    table = _costs(ok_rows(frame, "train", "child"), "policy")
    return table.loc[ordered_policies(table.index)]


def _costs(rows: pandas.DataFrame, by: str) -> pandas.DataFrame:
    """Means of the training rows of each value of column `by`: the columns of `cost_table`."""
    rows = rows.assign(share=lambda r: r["trainable_params"] / r["total_params"])
    return rows.groupby(by).agg(runs=("run_id", "nunique"), trainable_params=("trainable_params", "mean"),
                                share=("share", "mean"), train_seconds=("train_seconds", "mean"),
                                target_tokens_per_second=("target_tokens_per_second", "mean"),
                                updates=("updates", "mean"))


def missing_runs(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Runs with a failed or stopped row: stage, run_id, pair, policy, seed, eval, status, error."""
    columns = ["stage", "run_id", "pair", "policy", "seed", "eval", "status", "error"]
    rows = frame[frame["status"] != "ok"][columns]
    return rows.drop_duplicates(["run_id", "eval"]).sort_values(["stage", "run_id", "eval"])


# --- code-switching studies ---------------------------------------------------------------------

def is_codeswitch_study(frame: pandas.DataFrame) -> bool:
    """Whether the rows are a code-switching study's: it has fine-tuning runs of stage `codeswitch`."""
    return bool((frame["stage"] == "codeswitch").any())


def variant_label(run) -> str:
    """How the report names a run's variant: `base`, `body · standard`, `body · xlquery 0.3/0.3` (training
    alphas), `pretrain · xlquery 0.3/0.3` (Q_cross pretraining). `run`: a row from `itertuples`."""
    if run.stage == "base":
        return "base"
    label = f"{run.policy if run.stage == 'codeswitch' else run.stage} · {run.attention}"
    return label + (f" {run.mono_alpha:g}/{run.cross_alpha:g}" if pandas.notna(run.mono_alpha) else "")


def with_variants(rows: pandas.DataFrame) -> pandas.DataFrame:
    """`rows` with a `variant` column (`variant_label`)."""
    return rows.assign(variant=[variant_label(run) for run in rows.itertuples()])


def ordered_variants(rows: pandas.DataFrame) -> list[str]:
    """The variants of `rows` (`with_variants`) in reading order: the base, Q_cross pretraining, then by
    policy (body first), standard attention before xlquery, and by alphas."""
    keys = rows.drop_duplicates("variant")
    policy_rank = {policy: i for i, policy in enumerate(ordered_policies(keys["policy"].dropna()))}
    keys = keys.assign(stage_rank=keys["stage"].map({"base": 0, "pretrain": 1, "codeswitch": 2}),
                       policy_rank=keys["policy"].map(policy_rank),
                       xlquery=keys["attention"] != REFERENCE_ATTENTION)
    return list(keys.sort_values(["stage_rank", "policy_rank", "xlquery", "mono_alpha", "cross_alpha"])["variant"])


def ordered_test_sets(tests: pandas.DataFrame) -> list[str]:
    """The test sets of `tests`: mono, then seen, then unseen, each kind by name."""
    rank = {kind: i for i, kind in enumerate(CODESWITCH_KINDS)}
    return sorted(set(tests["test_set"]), key=lambda name: (rank.get(codeswitch_kind(name), len(rank)), name))


def codeswitch_tests(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The finished test rows (the base's and the fine-tuning runs'), with their `variant` and test set `kind`."""
    tests = with_variants(ok_rows(frame, "test"))
    return tests.assign(kind=tests["test_set"].map(codeswitch_kind))


def codeswitch_run_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Each run's mean BLEU over its test sets of each kind: variant, run_id, seed, kind, bleu, test_sets."""
    return (codeswitch_tests(frame).groupby(["variant", "run_id", "seed", "kind"])["bleu"]
            .agg(bleu="mean", test_sets="count").reset_index())


def codeswitch_bleu(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU of every (variant, kind), over seeds of the runs' means per kind (`codeswitch_run_bleu`).

    Columns: variant, kind, mean, std (NaN for one seed), seeds.
    """
    return (codeswitch_run_bleu(frame).groupby(["variant", "kind"])["bleu"]
            .agg(mean="mean", std="std", seeds="count").reset_index())


def codeswitch_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Code-switched translation as text cells: rows = variants; columns = mono, seen, unseen (`mean ± std`
    of `codeswitch_bleu`) and seeds."""
    summary = codeswitch_bleu(frame)
    kinds = [kind for kind in CODESWITCH_KINDS if kind in set(summary["kind"])]
    variants = ordered_variants(codeswitch_tests(frame))
    cells = {(row.variant, row.kind): _mean_std(row.mean, row.std, row.seeds) for row in summary.itertuples()}
    table = pandas.DataFrame([[cells.get((variant, kind), "") for kind in kinds] for variant in variants],
                             index=variants, columns=kinds)
    table["seeds"] = codeswitch_run_bleu(frame).groupby("variant")["seed"].nunique()
    table.index.name = "variant"
    return table


def codeswitch_test_set_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """BLEU on each test set as text cells (`mean ± std` over seeds): rows = variants, columns = test sets."""
    tests = codeswitch_tests(frame)
    summary = tests.groupby(["variant", "test_set"])["bleu"].agg(mean="mean", std="std", seeds="count")
    names = ordered_test_sets(tests)
    cells = {row.Index: _mean_std(row.mean, row.std, row.seeds) for row in summary.itertuples()}
    variants = ordered_variants(tests)
    table = pandas.DataFrame([[cells.get((variant, name), "") for name in names] for variant in variants],
                             index=variants, columns=names)
    table.index.name = "variant"
    return table


def codeswitch_significance(frame: pandas.DataFrame,
                            references_for: ReferencesFor = references_from_uri) -> pandas.DataFrame:
    """Paired bootstrap resampling (sacreBLEU) of each xlquery run against standard attention, seed by seed.

    On every seen and unseen test set, the stored translations of each xlquery run (every alphas) are
    tested against those of the standard-attention run with the same policy and seed (1000 resamples,
    sacreBLEU's fixed seed) on the references `references_for(standard's row)` returns. Columns:
    variant (the xlquery run's), baseline (the standard run's), policy, seed, kind, test_set, bleu and
    baseline_bleu (as the test recomputes them from the files), delta (bleu minus baseline_bleu), p_value,
    signature, note (why a run could not be tested; its numbers are then NaN).
    """
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # it logs every step of every test at INFO
    tests = codeswitch_tests(frame)
    tests = tests[(tests["stage"] == "codeswitch") & tests["kind"].isin(("seen", "unseen"))]
    results = []
    for (policy, seed, test_set), runs in tests.groupby(["policy", "seed", "test_set"]):
        standard = runs[runs["attention"] == REFERENCE_ATTENTION]
        if standard.empty:
            continue  # nothing to pair these runs with
        baseline = standard.iloc[0]
        shared = dict(baseline=baseline["variant"], policy=policy, seed=seed, kind=codeswitch_kind(test_set),
                      test_set=test_set)
        if runs["variant"].duplicated().any():
            # Grid options give one variant several runs per seed: which pairs with which is unclear.
            note = "several runs of one variant with this seed (grid options): not paired"
            results += [dict(shared, **_untested(variant, note))
                        for variant in ordered_variants(runs) if variant != baseline["variant"]]
        else:
            results += [dict(shared, **test) for test in _paired_tests(runs.set_index("variant"),
                                                                       references_for(baseline), baseline["variant"])]
    columns = ["system", "baseline", "policy", "seed", "kind", "test_set", "bleu", "baseline_bleu", "p_value",
               "signature", "note"]
    table = pandas.DataFrame(results, columns=columns).rename(columns={"system": "variant"})
    table.insert(table.columns.get_loc("p_value"), "delta", table["bleu"] - table["baseline_bleu"])
    return table


def codeswitch_significance_table(tests: pandas.DataFrame, variants: list[str]) -> pandas.DataFrame:
    """The tested rows of `codeswitch_significance` as text cells: rows = (xlquery variant, test set) in the
    order of `variants` and `ordered_test_sets`; one column per seed, `±delta (p)`, `*` if p < 0.05."""
    tested = tests.dropna(subset=["p_value"])
    seeds = sorted(tested["seed"].unique())
    names = ordered_test_sets(tested)
    rows = []
    for variant in [variant for variant in variants if variant in set(tested["variant"])]:
        runs = tested[tested["variant"] == variant]
        for name in [name for name in names if name in set(runs["test_set"])]:
            cells = {run.seed: f"{_signed(run.delta)} (p {run.p_value:.3f})"
                     + ("*" if run.p_value < SIGNIFICANCE_LEVEL else "")
                     for run in runs[runs["test_set"] == name].itertuples()}
            rows.append([variant, name, *(cells.get(seed, "") for seed in seeds)])
    return pandas.DataFrame(rows, columns=["variant", "test set", *(f"s{seed}" for seed in seeds)]).set_index("variant")


def codeswitch_verdicts(tests: pandas.DataFrame) -> pandas.DataFrame:
    """How often each xlquery variant differs significantly from standard attention on unseen pairs.

    From the tested unseen rows of `codeswitch_significance`. Index: variant. Columns: baseline, seeds
    (with a tested unseen set), better and worse (seeds where xlquery is significantly better, or worse,
    on every tested unseen set), tests, tests_better, tests_worse (single (seed, test set) tests).
    """
    unseen = tests[tests["kind"] == "unseen"].dropna(subset=["p_value"])
    unseen = unseen.assign(better=(unseen["p_value"] < SIGNIFICANCE_LEVEL) & (unseen["delta"] > 0),
                           worse=(unseen["p_value"] < SIGNIFICANCE_LEVEL) & (unseen["delta"] < 0))
    by_seed = unseen.groupby(["variant", "seed"])[["better", "worse"]].all().groupby("variant")
    table = unseen.groupby("variant").agg(baseline=("baseline", "first"), tests=("test_set", "count"),
                                          tests_better=("better", "sum"), tests_worse=("worse", "sum"))
    table["seeds"], table["better"], table["worse"] = by_seed.size(), by_seed["better"].sum(), by_seed["worse"].sum()
    return table[["baseline", "seeds", "better", "worse", "tests", "tests_better", "tests_worse"]]


def codeswitch_cost_table(frame: pandas.DataFrame) -> pandas.DataFrame:
    """What each variant costs, as means over its runs (the base and pretraining included): index variant,
    columns as `cost_table`'s."""
    rows = with_variants(ok_rows(frame, "train"))
    return _costs(rows, "variant").loc[ordered_variants(rows)]


# --- the Markdown -------------------------------------------------------------------------------

def report_markdown(frame: pandas.DataFrame, figures: list[str],
                    references_for: ReferencesFor = references_from_uri) -> str:
    """The whole report.md text; `figures` are file names beside it, in the order they are shown.

    A code-switching study's results take the place of the transfer study's tables (which it has no rows for).
    """
    if is_codeswitch_study(frame):
        results = [_codeswitch_section(frame), _codeswitch_test_sets_section(frame),
                   _codeswitch_significance_section(frame, references_for), _codeswitch_cost_section(frame)]
    else:
        results = [_table2_section(frame), _significance_section(frame, references_for), _forgetting_section(frame),
                   _zeroshot_section(frame), _bli_section(frame), _cost_section(frame)]
    sections = [_header(frame), *results, _missing_section(frame), _figures_section(figures)]
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
    lines += _untested_lines(tests, lambda run: f"{run.pair} {run.policy} s{run.seed}")
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
    return "\n".join(["## Cost", "", "Child runs, mean over pairs and seeds; the share is of all the model's "
                      "parameters.", "", _markdown(_cost_cells(table))])


def _cost_cells(table: pandas.DataFrame) -> pandas.DataFrame:
    """A cost table (`cost_table`, `codeswitch_cost_table`) as text cells."""
    return pandas.DataFrame({
        "runs": table["runs"].astype(int),
        "trainable parameters": [f"{value:,.0f} ({share:.1%})"
                                 for value, share in zip(table["trainable_params"], table["share"])],
        "train seconds": table["train_seconds"].map(lambda value: _number(value, 1)),
        "target tokens/s": table["target_tokens_per_second"].map(lambda value: f"{value:,.0f}"),
        "updates": table["updates"].map(lambda value: f"{value:,.0f}"),
    }, index=table.index)


def _codeswitch_section(frame: pandas.DataFrame) -> str:
    title = "## Code-switched translation"
    runs = codeswitch_run_bleu(frame)
    if runs.empty:
        return f"{title}\n\nNo finished runs."
    lines = [title, "", "sacreBLEU; for each run the mean over its test sets of each kind: single sentences of one "
             "source language (mono), code-switched pairs mixed in training (seen), pairs never mixed in training "
             "(unseen); then mean ± standard deviation over seeds. `base` is the model every run starts from, "
             "scored on single sentences only.", "", _markdown(codeswitch_table(frame))]
    if runs.drop_duplicates(["variant", "run_id"]).duplicated(["variant", "seed"]).any():
        lines += ["", "Several runs share a variant and seed (grid options): their BLEU is pooled."]
    return "\n".join(lines)


def _codeswitch_test_sets_section(frame: pandas.DataFrame) -> str:
    if codeswitch_tests(frame).empty:
        return ""
    return "\n".join(["## BLEU by test set", "", "sacreBLEU on each test set (`<test set>.<kind>.<languages>`), "
                      "mean ± standard deviation over seeds.", "", _markdown(codeswitch_test_set_table(frame))])


def _codeswitch_significance_section(frame: pandas.DataFrame, references_for: ReferencesFor) -> str:
    tests = codeswitch_significance(frame, references_for)
    if tests.empty:
        return ""
    lines = [f"## Significance: xlquery against {REFERENCE_ATTENTION} attention", "",
             f"sacreBLEU paired bootstrap resampling ({BOOTSTRAP_SAMPLES} resamples) of each xlquery run against "
             f"the {REFERENCE_ATTENTION}-attention run with the same policy and seed, on the stored translations of "
             f"every seen and unseen test set. Cells: BLEU of xlquery minus {REFERENCE_ATTENTION}, and the p-value, "
             f"per seed; `*` marks p < {SIGNIFICANCE_LEVEL}."]
    tested = tests.dropna(subset=["p_value"])
    if not tested.empty:
        variants = ordered_variants(codeswitch_tests(frame))
        lines += ["", _markdown(codeswitch_significance_table(tests, variants)), ""]
        verdicts = codeswitch_verdicts(tests)
        if not verdicts.empty:
            lines += [f"On unseen pairs (a seed counts when p < {SIGNIFICANCE_LEVEL} on every unseen test set, "
                      "in the same direction):"]
            lines += [_verdict(variant, verdicts.loc[variant]) for variant in variants if variant in verdicts.index]
            lines.append("")
        lines += ["Signature: " + ", ".join(f"`{s}`" for s in sorted(tested["signature"].unique()))]
    lines += _untested_lines(tests, lambda run: f"{run.variant} s{run.seed} on {run.test_set}")
    return "\n".join(lines)


def _untested_lines(tests: pandas.DataFrame, describe) -> list[str]:
    """"Not tested:" and, per reason, the runs (`describe(run)`) a significance test could not pair."""
    untested = tests[tests["p_value"].isna()]
    if untested.empty:
        return []
    return ["", "Not tested:"] + [f"- {note}: " + ", ".join(describe(run) for run in runs.itertuples())
                                  for note, runs in untested.groupby("note", sort=False)]


def _verdict(variant: str, counts: pandas.Series) -> str:
    """One line of `codeswitch_verdicts`: how often `variant` beat, or lost to, its baseline on unseen pairs."""
    return (f"- `{variant}` against `{counts['baseline']}`: significantly better in {counts['better']} of "
            f"{counts['seeds']} seed{'s' if counts['seeds'] != 1 else ''}, worse in {counts['worse']}; single tests: "
            f"{counts['tests_better']} better, {counts['tests_worse']} worse of {counts['tests']}")


def _codeswitch_cost_section(frame: pandas.DataFrame) -> str:
    table = codeswitch_cost_table(frame)
    if table.empty:
        return ""
    return "\n".join(["## Cost", "", "Mean over seeds; the share is of all the model's parameters. The base and "
                      "each alphas' Q_cross pretraining run once and are shared by the runs that start from them.",
                      "", _markdown(_cost_cells(table))])


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
                "bleu_vs_params.png": "BLEU against trainable parameters",
                "bleu_by_kind.png": "BLEU by variant on single sentences (mono), seen and unseen code-switched pairs "
                                    "(error bars: standard deviation over seeds)"}
    return "\n".join(["## Figures", ""] + [f"![{captions[name]}]({name})\n" for name in figures]).rstrip()


def _markdown(table: pandas.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, the index as its first column."""
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(index), *map(str, values)] for index, values in zip(table.index, table.to_numpy())]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _number(value: float, decimals: int = 2) -> str:
    return "" if value != value else f"{value:.{decimals}f}".replace("-", MINUS)


def _mean_std(mean: float, std: float, seeds: int) -> str:
    """`mean ± std`, the mean alone for one seed."""
    return _number(mean) + (f" ± {std:.2f}" if seeds > 1 else "")


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
    drawings = ((("bleu_by_kind.png", _bleu_by_kind),) if is_codeswitch_study(frame) else
                (("bleu_by_pair.png", _bleu_by_pair), ("valid_curves.png", _valid_curves),
                 ("bleu_vs_params.png", _bleu_vs_params)))
    for name, draw in drawings:
        figure = draw(frame)
        if figure is not None:
            _save_figure(figure, out_dir / name)
            written.append(name)
    return written


def _colors(names: list[str]) -> dict[str, object]:
    """One color per name (a policy, a kind of test set), the same in every figure."""
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10").colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _bleu_by_pair(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    summary = child_bleu(frame)
    if summary.empty:
        return None
    pairs = ordered_pairs(primary_child_tests(frame))
    policies = ordered_policies(summary["policy"])
    colors = _colors(policies)
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
    colors = _colors(policies)
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
    colors = _colors(policies)
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


def _bleu_by_kind(frame: pandas.DataFrame):
    import matplotlib.pyplot as plt

    summary = codeswitch_bleu(frame)
    if summary.empty:
        return None
    variants = ordered_variants(codeswitch_tests(frame))
    kinds = [kind for kind in CODESWITCH_KINDS if kind in set(summary["kind"])]
    colors = _colors(list(CODESWITCH_KINDS))
    width = 0.8 / len(kinds)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.4 * len(variants) * len(kinds) + 2.0), 4))
    for i, kind in enumerate(kinds):
        cells = summary[summary["kind"] == kind].set_index("variant").reindex(variants).dropna(subset=["mean"])
        positions = [variants.index(variant) + (i - (len(kinds) - 1) / 2) * width for variant in cells.index]
        axes.bar(positions, cells["mean"], width, yerr=cells["std"].fillna(0), capsize=3, label=kind,
                 color=colors[kind])
    axes.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
    axes.set_xlabel("variant")
    axes.set_ylabel("BLEU")
    axes.set_title("BLEU by variant and kind of test set")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(title="test sets", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
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
