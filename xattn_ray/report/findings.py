"""The papers' findings, checked on a study's results: each claim held, not held, or not enough runs.

Gheini et al. (2021) move a parent translation model to a child pair that replaces one of its
languages, and find (`transfer_findings`):

1. fine-tuning only cross-attention (with the new language's embeddings, `xattn`) comes close to
   fine-tuning the whole body (`body`): Table 2;
2. it is the parent's cross-attention that matters: re-initialising it before fine-tuning
   (`randxattn`) does worse than `xattn`: Table 2;
3. both transfer policies beat training the child from scratch (`scratch`): Table 2;
4. `xattn`'s new embeddings line up with the parent language's: bilingual lexicon induction from
   them is far more precise than from `body`'s (Section 6.1);
5. `xattn` forgets less: with the parent's embeddings plugged back into the child, it keeps more of
   the parent's BLEU than `body` (Table 3);
6. models stitched from `xattn` children translate a pair neither child saw (zero-shot) clearly
   better than models stitched from `body` children (Section 6.2).

Foroutan et al. (2023) find that multilingual models handle inputs mixing two languages
(code-switched) far worse than single-language ones, and that a cross-lingual query with structured
attention dropout (`xlquery`) improves code-switched inputs, language pairs unseen in fine-tuning
included. A code-switching study of this project translates single sentences (`mono`), two
sentences in pairs of languages mixed in fine-tuning (`seen`) and in pairs never mixed (`unseen`);
of the paper's claims it can check (`codeswitch_findings`):

1. code-switched input is harder: with standard attention, unseen code-switched pairs score below
   single sentences;
2. `xlquery` scores above standard attention on the seen code-switched pairs;
3. `xlquery` scores above standard attention on the unseen ones: it generalises to pairs it never
   saw mixed;
4. `xlquery` costs single sentences nothing (the paper's attention is plain attention on one
   language): at most `NO_COST_BLEU` (1 BLEU) below standard attention.

The papers state their claims in words; the thresholds that make them checkable are this project's:
"close" is within `CLOSE_BLEU` (2 BLEU) of body, "far more precise" at least `PRECISION_RATIO` (2x)
body's P@1, "clearly better" at least `CLEAR_BLEU` (1 BLEU) above, "costs nothing" at most
`NO_COST_BLEU` below. The verdict is defined by those thresholds on means over seeds alone: a claim
holds when its means meet them on every comparison the study has (every child pair, dictionary,
parent test set, or fine-tuning policy and alphas). Transfer figures are on each child pair's
primary test set (Table 2's); code-switching figures are each run's mean over its test sets of a kind.

A transfer study whose grid has options or sizes is checked in each grid cell (`lb-pv lr=0.008`), so
runs trained with different grid values are never pooled; a claim holds when it holds in every cell.
Beside each verdict stand the figures (mean ± standard deviation over seeds, runs that share a seed
pooled first so that every seed counts once) and the evidence of two tests, which the verdict does
not use:

- a paired test of BLEU, seed by seed (bootstrap resampling by default, or approximate
  randomization: `test`, as in the report's significance sections): in how many seeds each side's
  translations are significantly better (p < 0.05). For the Table-2 claims and xlquery on
  code-switched pairs, where translations of both runs of a seed exist;
- across seeds, with at least `MIN_SEEDS` (3) seeds that have both sides: a one-sided paired t-test
  of the per-seed differences (`across_seeds`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas

from xattn_ray.report.paired import BOOTSTRAP, describe
from xattn_ray.report.rows import (REFERENCE_ATTENTION, REFERENCE_POLICY, ReferencesFor, codeswitch_tests, grid_cells,
                                   is_codeswitch_study, ok_rows, ordered_variants, primary_child_tests,
                                   references_from_uri)
from xattn_ray.report.significance import SIGNIFICANCE_LEVEL, codeswitch_significance, significance
from xattn_ray.report.tables import MINUS, number

CLOSE_BLEU = 2.0
PRECISION_RATIO = 2.0
CLEAR_BLEU = 1.0
NO_COST_BLEU = 1.0
MIN_SEEDS = 3  # the fewest seeds the test across seeds runs on

TRANSFER_PAPER = "Gheini et al. (2021)"
CODESWITCH_PAPER = "Foroutan et al. (2023)"

HELD, NOT_HELD, NOT_ENOUGH = "held", "not held", "not enough runs"


@dataclass(frozen=True)
class Finding:
    """One claim of a paper checked: its number and words, the verdict, the figures and tests behind it."""

    paper: str  # TRANSFER_PAPER or CODESWITCH_PAPER
    number: int
    claim: str
    verdict: str  # HELD, NOT_HELD or NOT_ENOUGH
    figures: str  # e.g. "lb-pv: xattn 20.12 ± 0.31 vs body 21.30 ± 0.12 (3 seeds)"; what is missing when NOT_ENOUGH
    tests: str  # the per-seed paired test's and the test across seeds' evidence, per comparison; "" when NOT_ENOUGH


def study_findings(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                   test: str = BOOTSTRAP) -> list[Finding]:
    """The findings of whichever study the rows are: `codeswitch_findings` or `transfer_findings`."""
    if is_codeswitch_study(frame):
        return codeswitch_findings(frame, references_for, test)
    return transfer_findings(frame, references_for, test)


def findings_lines(findings: list[Finding]) -> list[str]:
    """The console form: a title naming the paper, then one line per finding (verdict | figures | tests)."""
    if not findings:
        return []
    lines = [f"findings of {findings[0].paper} (verdicts on means over seeds; tests beside them):"]
    for f in findings:
        verdict = f.verdict.upper() if f.verdict == NOT_HELD else f.verdict
        lines.append(f"  ({f.number}) {f.claim}: {verdict} | {f.figures}" + (f" | {f.tests}" if f.tests else ""))
    return lines


def findings_section(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                     test: str = BOOTSTRAP) -> str:
    """The report's Findings section, of whichever study the rows are ("" without findings); `test` is
    the per-seed paired test."""
    findings = study_findings(frame, references_for, test)
    if not findings:
        return ""
    if findings[0].paper == TRANSFER_PAPER:
        scope = (f"BLEU on each child pair's first test set; thresholds: within {CLOSE_BLEU:g} BLEU, "
                 f"{PRECISION_RATIO:g}x the precision, {CLEAR_BLEU:g} BLEU clearly above")
    else:
        scope = ("BLEU as each run's mean over its test sets of a kind: mono, seen, unseen; xlquery against "
                 f"{REFERENCE_ATTENTION} attention of the same policy; threshold: at most {NO_COST_BLEU:g} BLEU "
                 "below is no cost")
    lines = ["## Findings", "",
             f"The claims of {findings[0].paper}, checked on this study's runs ({scope}). A claim holds when the "
             "means over seeds meet it on every comparison; figures are mean ± standard deviation over seeds. "
             f"The tests are evidence beside the verdict: the {describe(test)} of each seed's translations on BLEU "
             f"(in how many seeds each side is better at p < {SIGNIFICANCE_LEVEL}), and with at least {MIN_SEEDS} "
             "seeds a one-sided paired t-test of the per-seed differences against the null hypothesis (H0) "
             "given.", ""]
    for f in findings:
        lines.append(f"{f.number}. **{f.verdict}**: {f.claim}")
        lines.append(f"   - figures: {f.figures}")
        if f.tests:
            lines.append(f"   - tests: {f.tests}")
    return "\n".join(lines)


# --- a comparison and its tests -------------------------------------------------------------------

def across_seeds(differences: pandas.Series, margin: float) -> float | None:
    """The p-value of a one-sided paired t-test over seeds; None with fewer than `MIN_SEEDS` seeds or no spread.

    `differences` holds one difference per seed (first side minus second, both runs of the same seed).
    The null hypothesis: the mean difference, the one expected of a new seed, is at most `margin` (the
    claim's threshold); the alternative, the claim's direction, is that it is above. A seed is the
    unit that repeats the experiment, so the test is across seeds; and a t-test because with a few
    seeds a rank test cannot reach 0.05 at all (one-sided Wilcoxon signed-rank: at best 1/8 with 3
    seeds, 1/16 with 4), at the price of assuming the differences roughly normal. Differences equal in
    every seed (up to rounding) leave the t statistic undefined: no test.
    """
    if len(differences) < MIN_SEEDS or differences.max() - differences.min() < 1e-9:
        return None
    from scipy.stats import ttest_1samp  # a moment to import; only studies with 3 seeds need it

    return float(ttest_1samp(differences - margin, 0.0, alternative="greater").pvalue)


@dataclass(frozen=True)
class _Comparison:
    """One comparison a claim makes: `first` against `second`, each a value per seed, on one child pair
    (or dictionary, test set, policy: `label`).

    The claim is that the difference first − factor × second is above `margin`; `paired` sums up the
    per-seed paired tests where there are any; `note` adds a figure (e.g. the parent's BLEU).
    """

    label: str
    first: str
    first_values: pandas.Series  # index: seed
    second: str
    second_values: pandas.Series
    margin: float = 0.0
    factor: float = 1.0
    paired: str = ""
    note: str = ""
    percent: bool = False  # precision in %, one decimal (BLEU: two)

    def difference(self) -> float:
        """The difference of the means over seeds, which the verdict is on."""
        return self.first_values.mean() - self.factor * self.second_values.mean()

    def figures(self) -> str:
        counts = sorted({len(self.first_values), len(self.second_values)}, reverse=True)
        seeds = " and ".join(map(str, counts)) + (" seed" if counts == [1] else " seeds")
        return (f"{self.label}: {self._mean_std(self.first, self.first_values)} vs "
                f"{self._mean_std(self.second, self.second_values)} ({seeds}{'; ' + self.note if self.note else ''})")

    def tests(self) -> str:
        paired = (self.first_values - self.factor * self.second_values).dropna()
        if len(paired) < MIN_SEEDS:
            across = f"across seeds: needs {MIN_SEEDS} seeds"
        elif (p := across_seeds(paired, self.margin)) is None:
            across = f"across {len(paired)} seeds: the same difference in each, no t-test"
        else:
            across = f"across {len(paired)} seeds: paired t {_p(p)} (H0 {self._null()})"
        return f"{self.label}: " + "; ".join(filter(None, [self.paired, across]))

    def _mean_std(self, name: str, values: pandas.Series) -> str:
        decimals, unit = (1, "%") if self.percent else (2, "")
        text = f"{values.mean():.{decimals}f}{unit}"
        return f"{name} {text}" + (f" ± {values.std():.{decimals}f}{unit}" if len(values) > 1 else "")

    def _null(self) -> str:
        second = f"{self.factor:g} × {self.second}" if self.factor != 1 else self.second
        if self.margin == 0:
            return f"{self.first} ≤ {second}"
        return f"{self.first} − {second} ≤ " + f"{self.margin:g}".replace("-", MINUS)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _paired(tests: pandas.DataFrame, first: str, second: str, test: str) -> str:
    """The per-seed paired tests (`test`, its name the summary's first word) of `first` against `second` summed up.

    `tests`: one row per test (seed, delta = first − second, p_value NaN where it was not run, note).
    A seed counts for a side when every test of that seed (one per test set) finds that side better
    at p < 0.05.
    """
    tested = tests.dropna(subset=["p_value"])
    if tested.empty:
        if tests.empty:
            return f"{test}: no seed has both runs"
        several = tests["note"].str.startswith("several runs", na=False).any()
        return f"{test}: not run (" + ("several runs per seed" if several else "no translations") + ")"
    significant = tested["p_value"] < SIGNIFICANCE_LEVEL
    by_seed = tested.assign(better=significant & (tested["delta"] > 0), worse=significant & (tested["delta"] < 0)
                            ).groupby("seed")[["better", "worse"]].all()
    return (f"{test} p < {SIGNIFICANCE_LEVEL}: {first} better in {int(by_seed['better'].sum())} of "
            f"{len(by_seed)} seed{'s' if len(by_seed) != 1 else ''}, {second} in {int(by_seed['worse'].sum())}")


def _finding(paper: str, number: int, claim: str, comparisons: list[_Comparison],
             holds: Callable[[_Comparison], bool], missing: str) -> Finding:
    """HELD when `holds` on every comparison, NOT_HELD when not, NOT_ENOUGH (saying what is `missing`) without any."""
    if not comparisons:
        return Finding(paper, number, claim, NOT_ENOUGH, missing, "")
    verdict = HELD if all(holds(c) for c in comparisons) else NOT_HELD
    return Finding(paper, number, claim, verdict, "; ".join(c.figures() for c in comparisons),
                   "; ".join(c.tests() for c in comparisons))


def _by_seed(rows: pandas.DataFrame, keys: list[str], value: str) -> dict[tuple, pandas.DataFrame]:
    """Per group of `keys`: `value` by seed (index) and policy (columns); runs that share a seed pooled."""
    if rows.empty:
        return {}
    table = rows.groupby([*keys, "policy", "seed"], dropna=False)[value].mean().unstack("policy")
    return {key: group.droplevel(keys) for key, group in table.groupby(level=keys)}


def _both(table: pandas.DataFrame, first: str, second: str) -> tuple[pandas.Series, pandas.Series] | None:
    """The seeds' values of two columns of `table`, or None when either has none."""
    if first not in table or second not in table:
        return None
    values = table[first].dropna(), table[second].dropna()
    return values if all(len(side) for side in values) else None


# --- Gheini et al. (2021) -------------------------------------------------------------------------

def transfer_findings(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                      test: str = BOOTSTRAP) -> list[Finding]:
    """The six findings on the rows of one transfer study (none for a code-switching study).

    `references_for(test row)` gives the reference lines the per-seed paired tests (`test`) score
    against (the report's significance section uses the same).
    """
    if frame.empty or is_codeswitch_study(frame):
        return []

    cells = _cell_frames(frame)

    def each_cell(compare: Callable[[pandas.DataFrame], list[_Comparison]]) -> list[_Comparison]:
        return [replace(c, label=f"{c.label} {cell}") if cell else c for cell, rows in cells for c in compare(rows)]

    def table2(number: int, claim: str, first: str, second: str, margin: float, holds) -> Finding:
        comparisons = each_cell(lambda rows: _table2_comparisons(rows, references_for, first, second, margin, test))
        return _finding(TRANSFER_PAPER, number, claim, comparisons, holds, f"needs child runs of {first} and {second}")

    # Claim 3 on the pairs (and grid cells) that have all three policies.
    xattn, randxattn = (each_cell(lambda rows, p=policy: _table2_comparisons(rows, references_for, p, "scratch", 0.0,
                                                                                test))
                        for policy in ("xattn", "randxattn"))
    pairs = {c.label for c in xattn} & {c.label for c in randxattn}
    above_scratch = [c for c in xattn + randxattn if c.label in pairs]
    return [
        table2(1, f"xattn within {CLOSE_BLEU:g} BLEU of body", "xattn", "body", -CLOSE_BLEU,
               lambda c: c.difference() >= -CLOSE_BLEU),
        table2(2, "randxattn below xattn", "xattn", "randxattn", 0.0, lambda c: c.difference() > 0),
        _finding(TRANSFER_PAPER, 3, "xattn and randxattn both above scratch",
                 above_scratch, lambda c: c.difference() > 0, "needs child runs of scratch, xattn and randxattn"),
        _finding(TRANSFER_PAPER, 4, f"lexicon induction P@1 of xattn at least {PRECISION_RATIO:g}x body's",
                 each_cell(_bli_comparisons), lambda c: c.difference() >= 0 and c.first_values.mean() > 0,
                 "needs lexicon-induction rows of xattn and body"),
        _finding(TRANSFER_PAPER, 5,
                 "with the parent's embeddings plugged back, xattn keeps more of the parent's BLEU than body",
                 each_cell(_forgetting_comparisons), lambda c: c.difference() > 0,
                 "needs forgetting rows of xattn and body"),
        _finding(TRANSFER_PAPER, 6, f"the stitched zero-shot model of xattn at least {CLEAR_BLEU:g} BLEU above body's",
                 each_cell(_zeroshot_comparisons), lambda c: c.difference() >= CLEAR_BLEU,
                 "needs zero-shot rows of xattn and body"),
    ]


def _cell_frames(frame: pandas.DataFrame) -> list[tuple[str, pandas.DataFrame]]:
    """The study's rows split by grid cell (`grid_cell`: grid options and sizes), each with the parents'
    rows; a study without grid options is one cell, "". A claim is checked in each cell, so runs trained
    with different grid values (or added before the grid had options) are never pooled."""
    labels = grid_cells(frame)
    parents = frame["stage"] == "parent"
    cells = sorted(set(labels[~parents]))
    if len(cells) <= 1:
        return [("", frame)]
    return [(cell, frame[parents | (labels == cell)]) for cell in cells]


def _table2_comparisons(frame: pandas.DataFrame, references_for: ReferencesFor, first: str, second: str,
                        margin: float, test: str) -> list[_Comparison]:
    """`first` against `second` on each child pair's primary test set, with the per-seed paired `test` of the two."""
    tests = primary_child_tests(frame)
    tests = tests[tests["policy"].isin((first, second))]
    found = {pair: both for (pair,), table in _by_seed(tests, ["pair"], "bleu").items()
             if (both := _both(table, first, second)) is not None}
    if not found:
        return []
    # significance() tests every policy against body's run of the same seed: `second` plays body's part.
    paired = tests[tests["pair"].isin(found)].replace({"policy": {second: REFERENCE_POLICY}})
    tested = significance(paired, references_for, test)
    # `bleu` is scored again from the file, `body_bleu` is the stored score of the baseline's file: both sacreBLEU's.
    tested = tested.assign(delta=tested["bleu"] - tested["body_bleu"])
    return [_Comparison(pair, first, values, second, baseline, margin,
                        paired=_paired(tested[tested["pair"] == pair], first, second, test))
            for pair, (values, baseline) in found.items()]


def _bli_comparisons(frame: pandas.DataFrame) -> list[_Comparison]:
    rows = ok_rows(frame, "bli")
    rows = rows.assign(p1=rows["bli_p1"] * 100)
    return [_Comparison(f"{pair} {method} on {dictionary}", "xattn", both[0], "body", both[1],
                        factor=PRECISION_RATIO, percent=True)
            for (pair, dictionary, method), table in _by_seed(rows, ["pair", "dictionary", "bli_method"], "p1").items()
            if (both := _both(table, "xattn", "body")) is not None]


def _forgetting_comparisons(frame: pandas.DataFrame) -> list[_Comparison]:
    rows = ok_rows(frame, "forgetting")
    parents = rows.groupby(["pair", "test_set"])["reference_bleu"].mean()
    return [_Comparison(f"{pair} on {test_set}", "xattn", both[0], "body", both[1],
                        note=f"parent {number(parents[(pair, test_set)])}")
            for (pair, test_set), table in _by_seed(rows, ["pair", "test_set"], "bleu").items()
            if (both := _both(table, "xattn", "body")) is not None]


def _zeroshot_comparisons(frame: pandas.DataFrame) -> list[_Comparison]:
    return [_Comparison(f"{pair} on {test_set}", "xattn", both[0], "body", both[1], CLEAR_BLEU)
            for (pair, test_set), table in _by_seed(ok_rows(frame, "zeroshot"), ["pair", "test_set"], "bleu").items()
            if (both := _both(table, "xattn", "body")) is not None]


# --- Foroutan et al. (2023) -----------------------------------------------------------------------

def codeswitch_findings(frame: pandas.DataFrame, references_for: ReferencesFor = references_from_uri,
                        test: str = BOOTSTRAP) -> list[Finding]:
    """The four findings on the rows of one code-switching study (none for a transfer study).

    `references_for(test row)` gives the reference lines of the per-seed paired tests (`test`) of xlquery
    against standard attention on code-switched sets (the report's significance section uses the
    same); single sentences, and the comparison of kinds, have the test across seeds only.
    """
    if frame.empty or not is_codeswitch_study(frame):
        return []
    runs = _codeswitch_runs(frame)
    tested = codeswitch_significance(frame, references_for, test)
    harder = [_Comparison(policy, "mono", both[0], "unseen", both[1])
              for (policy, attention, _), table in runs.items()
              if attention == REFERENCE_ATTENTION and (both := _both(table, "mono", "unseen")) is not None]

    def xlquery(kind: str, margin: float) -> list[_Comparison]:
        return [_Comparison(policy, name, values, REFERENCE_ATTENTION, baseline, margin,
                            paired=_paired(tested[(tested["variant"] == variant) & (tested["kind"] == kind)], name,
                                           REFERENCE_ATTENTION, test)
                            if kind != "mono" else "")  # the paired tests are on code-switched sets only
                for policy, variant, name, values, baseline in _against_standard(runs, kind)]

    return [
        _finding(CODESWITCH_PAPER, 1, "code-switched input is harder: with standard attention, unseen code-switched "
                 "pairs score below single sentences", harder, lambda c: c.difference() > 0,
                 f"needs {REFERENCE_ATTENTION}-attention runs scored on mono and unseen sets"),
        _finding(CODESWITCH_PAPER, 2, f"xlquery above {REFERENCE_ATTENTION} attention on seen code-switched pairs",
                 xlquery("seen", 0.0), lambda c: c.difference() > 0,
                 f"needs xlquery and {REFERENCE_ATTENTION} runs of one policy scored on seen sets"),
        _finding(CODESWITCH_PAPER, 3, f"xlquery above {REFERENCE_ATTENTION} attention on unseen code-switched pairs",
                 xlquery("unseen", 0.0), lambda c: c.difference() > 0,
                 f"needs xlquery and {REFERENCE_ATTENTION} runs of one policy scored on unseen sets"),
        _finding(CODESWITCH_PAPER, 4, f"xlquery at most {NO_COST_BLEU:g} BLEU below {REFERENCE_ATTENTION} attention "
                 "on single sentences", xlquery("mono", -NO_COST_BLEU),
                 lambda c: c.difference() >= -NO_COST_BLEU,
                 f"needs xlquery and {REFERENCE_ATTENTION} runs of one policy scored on mono sets"),
    ]


def _codeswitch_runs(frame: pandas.DataFrame) -> dict[tuple, pandas.DataFrame]:
    """Per fine-tuning variant, keyed (policy, attention, variant) in reading order: BLEU by seed (index) and
    kind (columns), each run's mean over its test sets of the kind; runs that share a seed pooled."""
    tests = codeswitch_tests(frame)
    tests = tests[tests["stage"] == "codeswitch"]
    if tests.empty:
        return {}
    keys = ["policy", "attention", "variant"]
    per_run = tests.groupby([*keys, "run_id", "seed", "kind"])["bleu"].mean()
    table = per_run.groupby([*keys, "seed", "kind"]).mean().unstack("kind")
    order = {variant: i for i, variant in enumerate(ordered_variants(tests))}
    runs = {key: group.droplevel(keys) for key, group in table.groupby(level=keys)}
    return dict(sorted(runs.items(), key=lambda item: order[item[0][2]]))


def _against_standard(runs: dict[tuple, pandas.DataFrame], kind: str):
    """(policy, xlquery variant, its name without the policy, its values, standard's values) on `kind`, for
    every xlquery variant whose policy has a standard-attention run scored on that kind as well."""
    standard = {policy: table for (policy, attention, _), table in runs.items() if attention == REFERENCE_ATTENTION}
    for (policy, attention, variant), table in runs.items():
        if attention == REFERENCE_ATTENTION or policy not in standard or kind not in table:
            continue
        values, baseline = table[kind].dropna(), standard[policy].get(kind, pandas.Series(dtype=float)).dropna()
        if len(values) and len(baseline):
            yield policy, variant, variant.removeprefix(f"{policy} · "), values, baseline
