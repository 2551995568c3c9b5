"""The paper's findings, checked on a transfer study's results: each claim held, not held, or not enough runs.

Gheini et al. (2021) move a parent translation model to a child pair that replaces one of its
languages, and find:

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

The paper states these in words; the thresholds that make them checkable are this project's:
"close" is within `CLOSE_BLEU` (2 BLEU) of body, "far more precise" at least `PRECISION_RATIO` (2x)
body's P@1, "clearly better" at least `CLEAR_BLEU` (1 BLEU) above. Every comparison is of means
over seeds, on each child pair's primary test set (Table 2's), and a claim holds when it holds for
every pair (or dictionary, or parent test set) the study has; the per-seed paired bootstrap tests
are in the report's significance section.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas

from xattn_ray.report.rows import is_codeswitch_study
from xattn_ray.report.transfer import bli_table, child_bleu, forgetting_table, zeroshot_table

CLOSE_BLEU = 2.0
PRECISION_RATIO = 2.0
CLEAR_BLEU = 1.0

HELD, NOT_HELD, NOT_ENOUGH = "held", "not held", "not enough runs"


@dataclass(frozen=True)
class Finding:
    """One claim checked: its number and words, the verdict, the figures behind it."""

    number: int
    claim: str
    verdict: str  # HELD, NOT_HELD or NOT_ENOUGH
    figures: str  # e.g. "lb-pv: xattn 20.12 vs body 21.30 (1 seed)"; what is missing when NOT_ENOUGH


def transfer_findings(frame: pandas.DataFrame) -> list[Finding]:
    """The six findings on the rows of one transfer study (none for a code-switching study)."""
    if frame.empty or is_codeswitch_study(frame):
        return []
    bleu = child_bleu(frame)
    return [
        _table2_finding(1, f"xattn within {CLOSE_BLEU:g} BLEU of body", bleu, "xattn", "body",
                        lambda xattn, body: xattn >= body - CLOSE_BLEU),
        _table2_finding(2, "randxattn below xattn", bleu, "randxattn", "xattn",
                        lambda randxattn, xattn: randxattn < xattn),
        _above_scratch(bleu),
        _bli_finding(frame),
        _forgetting_finding(frame),
        _zeroshot_finding(frame),
    ]


def findings_lines(findings: list[Finding]) -> list[str]:
    """The console form: a title, then one line per finding."""
    if not findings:
        return []
    return ["findings of Gheini et al. (2021), means over seeds:"] + [
        f"  ({f.number}) {f.claim}: {f.verdict.upper() if f.verdict == NOT_HELD else f.verdict} ({f.figures})"
        for f in findings]


def findings_section(frame: pandas.DataFrame) -> str:
    """The report's Findings section ("" without findings)."""
    findings = transfer_findings(frame)
    if not findings:
        return ""
    lines = ["## Findings", "",
             "The claims of Gheini et al. (2021), checked on this study's means over seeds (each child pair's "
             f"first test set). Thresholds: within {CLOSE_BLEU:g} BLEU, {PRECISION_RATIO:g}x the precision, "
             f"{CLEAR_BLEU:g} BLEU clearly above.", ""]
    lines += [f"{f.number}. **{f.verdict}**: {f.claim} ({f.figures})" for f in findings]
    return "\n".join(lines)


def _seeds(count: int) -> str:
    return f"{count} seed{'s' if count != 1 else ''}"


def _table2_finding(number: int, claim: str, bleu: pandas.DataFrame, first: str, second: str, holds) -> Finding:
    """`holds(mean of first, mean of second)` on every child pair that has both policies."""
    means = bleu.pivot_table(index="pair", columns="policy", values="mean")
    seeds = bleu.pivot_table(index="pair", columns="policy", values="seeds")
    if first not in means or second not in means or means[[first, second]].dropna().empty:
        return Finding(number, claim, NOT_ENOUGH, f"needs child runs of both {first} and {second}")
    both = means[[first, second]].dropna()
    figures = "; ".join(f"{pair}: {first} {row[first]:.2f} vs {second} {row[second]:.2f} "
                        f"({_seeds(int(min(seeds.at[pair, first], seeds.at[pair, second])))})"
                        for pair, row in both.iterrows())
    held = all(holds(row[first], row[second]) for _, row in both.iterrows())
    return Finding(number, claim, HELD if held else NOT_HELD, figures)


def _above_scratch(bleu: pandas.DataFrame) -> Finding:
    claim = "xattn and randxattn both above scratch"
    means = bleu.pivot_table(index="pair", columns="policy", values="mean")
    needed = ["scratch", "xattn", "randxattn"]
    if any(policy not in means for policy in needed) or means[needed].dropna().empty:
        return Finding(3, claim, NOT_ENOUGH, "needs child runs of scratch, xattn and randxattn")
    rows = means[needed].dropna()
    figures = "; ".join(f"{pair}: xattn {row['xattn']:.2f}, randxattn {row['randxattn']:.2f}, "
                        f"scratch {row['scratch']:.2f}" for pair, row in rows.iterrows())
    held = all(min(row["xattn"], row["randxattn"]) > row["scratch"] for _, row in rows.iterrows())
    return Finding(3, claim, HELD if held else NOT_HELD, figures)


def _bli_finding(frame: pandas.DataFrame) -> Finding:
    claim = f"lexicon induction P@1 of xattn at least {PRECISION_RATIO:g}x body's"
    table = bli_table(frame)
    if table.empty or "xattn" not in table or "body" not in table or table[["xattn", "body"]].dropna().empty:
        return Finding(4, claim, NOT_ENOUGH, "needs lexicon-induction rows of xattn and body")
    rows = table[["xattn", "body"]].dropna()
    figures = "; ".join(f"{pair} {method}: xattn {row['xattn']:.1f}% vs body {row['body']:.1f}%"
                        for (pair, _, method), row in rows.iterrows())
    held = all(row["xattn"] >= PRECISION_RATIO * row["body"] and row["xattn"] > 0 for _, row in rows.iterrows())
    return Finding(4, claim, HELD if held else NOT_HELD, figures)


def _forgetting_finding(frame: pandas.DataFrame) -> Finding:
    claim = "with the parent's embeddings plugged back, xattn keeps more of the parent's BLEU than body"
    table = forgetting_table(frame)
    if table.empty or "xattn" not in table or "body" not in table or table[["xattn", "body"]].dropna().empty:
        return Finding(5, claim, NOT_ENOUGH, "needs forgetting rows of xattn and body")
    rows = table[["parent", "xattn", "body"]].dropna(subset=["xattn", "body"])
    figures = "; ".join(f"{pair} on {test_set}: xattn {row['xattn']:.2f} vs body {row['body']:.2f} "
                        f"(parent {row['parent']:.2f})" for (pair, test_set), row in rows.iterrows())
    held = all(row["xattn"] > row["body"] for _, row in rows.iterrows())
    return Finding(5, claim, HELD if held else NOT_HELD, figures)


def _zeroshot_finding(frame: pandas.DataFrame) -> Finding:
    claim = f"the stitched zero-shot model of xattn at least {CLEAR_BLEU:g} BLEU above body's"
    table = zeroshot_table(frame)
    if table.empty:
        return Finding(6, claim, NOT_ENOUGH, "needs zero-shot rows of xattn and body")
    means = table.pivot_table(index=["pair", "test_set"], columns="policy", values="mean")
    if "xattn" not in means or "body" not in means or means[["xattn", "body"]].dropna().empty:
        return Finding(6, claim, NOT_ENOUGH, "needs zero-shot rows of xattn and body")
    rows = means[["xattn", "body"]].dropna()
    figures = "; ".join(f"{pair} on {test_set}: xattn {row['xattn']:.2f} vs body {row['body']:.2f}"
                        for (pair, test_set), row in rows.iterrows())
    held = all(row["xattn"] >= row["body"] + CLEAR_BLEU for _, row in rows.iterrows())
    return Finding(6, claim, HELD if held else NOT_HELD, figures)
