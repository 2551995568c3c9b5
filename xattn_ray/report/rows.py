"""The stored rows a report counts, in the order it shows them, and the files those rows name."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas

from xattn_ray.store import COUNTED_SELECTIONS, ResultsStore, StoreError, codeswitch_kind, read_local_text

# The paper's order: the baseline, the full fine-tuning reference, then the cheap policies.
POLICY_ORDER = ("scratch", "body", "xattn", "randxattn")
REFERENCE_POLICY = "body"  # every difference and significance test is against fine-tuning the body
CODESWITCH_KINDS = ("mono", "seen", "unseen")  # single sentences, training pairs mixed, held-out pairs mixed
REFERENCE_ATTENTION = "standard"  # every xlquery run is tested against standard attention (same policy and seed)

ReferencesFor = Callable[[pandas.Series], "list[str] | None"]


# --- stored files -------------------------------------------------------------------------------

class StoredTexts:
    """The text files stored rows name (`hypotheses_uri`, `references_uri`), read through the results store
    that holds the rows: a local path, or the store's own copy (`ResultsStore.read_text`). Without a store,
    local paths only. Called on a test row, it gives the references the row was scored against (a
    `ReferencesFor`); `lines` reads any file a row names, its translations too."""

    def __init__(self, store: ResultsStore | None = None) -> None:
        self.store = store

    def __call__(self, row: pandas.Series) -> list[str] | None:
        """The reference lines a test row was scored against, from its `references_uri` (None if unknown,
        or if the file is gone or unreadable: the report then says the test could not be run)."""
        uri = row.get("references_uri")
        return self.lines(uri) if isinstance(uri, str) and uri else None

    def lines(self, uri: str) -> list[str] | None:
        """One line per sentence, as the pipeline writes them (each followed by a newline); None when the file
        is gone, not UTF-8 text, or not one the store reads (a store moved, a file edited by hand, another
        store's copy): the report says what it could not test."""
        try:
            text = self.store.read_text(uri) if self.store is not None else read_local_text(uri)
        except StoreError:
            return None
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


references_from_uri = StoredTexts()  # rows whose files are on this machine (a local store's rows)


# --- rows of any study --------------------------------------------------------------------------

def counted_rows(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The rows every table counts: grid runs and a search's confirmed configurations, not the search's
    other trials or confirmations a better configuration superseded (a row stored before runs had a
    `selection` is a grid run)."""
    return frame[frame["selection"].isna() | frame["selection"].isin(COUNTED_SELECTIONS)]


def searched_cells(frame: pandas.DataFrame) -> pandas.DataFrame:
    """How each searched grid cell chose its configuration: pair, policy, options (the chosen values of
    the searched options), metric, trials (the cell's search trials), seed (theirs), seeds (confirmed).

    A confirmed run's `hparams` carry the search section it was chosen by; the cell's trials are its
    `search` rows and the chosen trial itself (a `confirmed` row at the search seed).
    """
    columns = ["pair", "policy", "options", "metric", "trials", "seed", "seeds"]
    train = frame[(frame["eval"] == "train") & (frame["stage"] == "child")]
    confirmed = train[train["selection"] == "confirmed"]
    cells = []
    for (pair, policy), runs in confirmed.groupby(["pair", "policy"]):
        hparams = json.loads(runs["hparams"].iloc[0])
        search = hparams["search"]
        options = {name: value for name, value in hparams["options"].items() if name in search["space"]}
        trials = train[(train["pair"] == pair) & (train["policy"] == policy) & (train["selection"] == "search")]
        cells.append([pair, policy, options, search["metric"], len(trials) + 1, search["trial_seed"],
                      sorted(int(seed) for seed in runs["seed"].unique())])
    return pandas.DataFrame(cells, columns=columns)


def grid_cell(hparams: str | None) -> str:
    """The grid values a run was trained with besides its pair, policy and seed: "lr=0.008", "size 2000",
    or "" without any. A confirmed run's searched values are its cell's choice, not grid values."""
    values = json.loads(hparams) if isinstance(hparams, str) else {}
    searched = set(values.get("search", {}).get("space", {}))
    options = {name: value for name, value in (values.get("options") or {}).items() if name not in searched}
    parts = [f"size {values['size']}"] if values.get("size") is not None else []
    return " ".join(parts + [f"{name}={value:g}" for name, value in sorted(options.items())])


def ok_rows(frame: pandas.DataFrame, evaluation: str, stage: str | None = None) -> pandas.DataFrame:
    """Rows of one evaluation (and stage) whose run finished: the only rows numbers come from."""
    keep = (frame["eval"] == evaluation) & (frame["status"] == "ok")
    if stage is not None:
        keep &= frame["stage"] == stage
    return frame[keep]


def missing_runs(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Runs with a failed or stopped row: stage, run_id, pair, policy, seed, eval, status, error."""
    columns = ["stage", "run_id", "pair", "policy", "seed", "eval", "status", "error"]
    rows = frame[frame["status"] != "ok"][columns]
    return rows.drop_duplicates(["run_id", "eval"]).sort_values(["stage", "run_id", "eval"])


def ordered_policies(policies) -> list[str]:
    """scratch, body, xattn, randxattn, then any other policy alphabetically."""
    present = set(policies)
    return [p for p in POLICY_ORDER if p in present] + sorted(present.difference(POLICY_ORDER))


# --- transfer studies ---------------------------------------------------------------------------

def ordered_pairs(rows: pandas.DataFrame) -> list[str]:
    """Child pairs grouped as the paper does: by parent, new sources before new targets, then by name."""
    keys = rows[["parent_pair", "side", "pair"]].drop_duplicates().fillna("")
    return list(dict.fromkeys(keys.sort_values(["parent_pair", "side", "pair"])["pair"]))


def grid_cells(rows: pandas.DataFrame) -> pandas.Series:
    """Each row's `grid_cell` ("" for every row of a store without `hparams`)."""
    return rows["hparams"].map(grid_cell) if "hparams" in rows else pandas.Series("", index=rows.index)


def child_column(rows: pandas.DataFrame) -> pandas.Series:
    """Where each child row's number goes in Table 2: its pair, with its grid cell when it has one
    (`lb-pv lr=0.008`), so that runs trained with different grid options or sizes are never pooled."""
    return (rows["pair"] + " " + grid_cells(rows)).str.strip()


def cells_as_pairs(rows: pandas.DataFrame) -> pandas.DataFrame:
    """`rows` whose `pair` names their grid cell too (`child_column`): the analyses' tables, keyed by pair,
    then never pool runs of different grid options or sizes."""
    return rows.assign(pair=child_column(rows)) if not rows.empty else rows


def ordered_columns(rows: pandas.DataFrame) -> list[str]:
    """Table 2's columns: the pairs in `ordered_pairs` order, each pair's grid cells by name."""
    pairs = ordered_pairs(rows)
    columns = rows.assign(column=child_column(rows))[["pair", "column"]].drop_duplicates()
    return sorted(columns["column"], key=lambda column: (pairs.index(column.split(" ", 1)[0]), column))


def primary_test_sets(frame: pandas.DataFrame) -> dict[str, str]:
    """Each child pair's first test set by name: the one Table 2, the tests and the figures use."""
    tests = ok_rows(frame, "test", "child")
    return {pair: min(names) for pair, names in tests.groupby("pair")["test_set"]}


def primary_child_tests(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The child test rows on each pair's primary test set."""
    tests = ok_rows(frame, "test", "child")
    first = primary_test_sets(frame)
    return tests[tests["test_set"] == tests["pair"].map(first)]


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
