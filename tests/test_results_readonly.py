"""`xattn-ray results` is read-only: no query or condition a user types writes a file, reads one, or
changes the store. Each case runs the real CLI on a real Parquet store and real DuckDB, then checks the
exit status, the one line on stderr, that every store file is byte-for-byte (and time-for-time) as it
was, and that no file appeared beside it."""

import hashlib
from pathlib import Path

import pytest

from support import xattn_ray
from xattn_ray.store import ResultsStore, make_row


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store of two runs of two policies: four files, eight rows."""
    root = tmp_path_factory.mktemp("study") / "results"
    for run_id, policy, bleu in (("xattn-s1", "xattn", 30.0), ("body-s1", "body", 33.0)):
        for evaluation in ("test", "forgetting"):
            ResultsStore(root).write(
                [make_row(experiment="m30k", run_id=run_id, stage="child", pair="de-en", policy=policy, seed=1,
                          eval=evaluation, test_set=test_set, bleu=score, status="ok")
                 for test_set, score in (("flickr2016", bleu), ("mscoco2017", bleu / 2))])
    return root


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content hash and modification time (a rewrite with equal bytes shows)."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def a_store_file(store: Path) -> Path:
    return next(iter(sorted(store.rglob("*.parquet"))))


# (option, text, what the one line says after `xattn-ray: error: OPTION: `); {store}, {file} and {tmp}
# are the store folder, one of its files and a folder outside it.
HOSTILE = [
    ("--sql", "COPY (SELECT 1) TO '{tmp}/x.csv'", "only one SELECT over the table `results` is allowed (got COPY)"),
    ("--sql", "COPY (SELECT * FROM results WHERE false) TO '{file}' (FORMAT parquet)", "(got COPY)"),
    ("--sql", "SELECT * FROM read_text('/etc/passwd')", "Permission Error"),
    ("--sql", "SELECT * FROM read_parquet('{store}/**/*.parquet')", "Permission Error"),
    ("--sql", "SELECT * FROM glob('{tmp}/*')", "Permission Error"),
    ("--sql", "SELECT 1; SELECT 2", "(got 2 statements)"),
    ("--sql", "SELECT 1; COPY (SELECT * FROM results WHERE false) TO '{file}' (FORMAT parquet)", "(got 2 statements)"),
    ("--sql", "ATTACH '{tmp}/x.duckdb' AS x", "(got ATTACH)"),
    ("--sql", "INSTALL httpfs", "(got LOAD)"),
    ("--sql", "LOAD httpfs", "(got LOAD)"),
    ("--sql", "SET enable_external_access = true", "(got SET)"),
    ("--sql", "PRAGMA version", "(got PRAGMA)"),
    ("--sql", "CREATE TABLE t AS SELECT * FROM results", "(got CREATE)"),
    ("--sql", "EXPORT DATABASE '{tmp}/export'", "(got EXPORT)"),
    ("--where", "1=1); COPY (SELECT * FROM results WHERE false) TO '{file}' (FORMAT parquet); SELECT (1",
     "Parser Error"),
    ("--where", "1=1) UNION SELECT * FROM read_text('/etc/passwd') --", "Parser Error"),
    ("--where", "seed = 1; COPY (SELECT 1) TO '{tmp}/x.csv'", "Parser Error"),
    ("--where", "policy IN (SELECT content FROM read_text('/etc/passwd'))", "Permission Error"),
    ("--where", "policy IN (SELECT policy FROM read_parquet('{file}'))", "Permission Error"),
]


@pytest.mark.parametrize("option, text, says", HOSTILE, ids=[f"{o}:{t[:40]}" for o, t, _ in HOSTILE])
def test_a_query_that_reaches_past_the_rows_is_refused_and_writes_nothing(store, tmp_path, option, text, says):
    before = snapshot(store)
    text = text.format(store=store, file=a_store_file(store), tmp=tmp_path)
    done = xattn_ray("results", "--store", store, option, text, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"xattn-ray: error: {option}: ") and says in line
    assert snapshot(store) == before
    assert list(tmp_path.iterdir()) == []  # no file written beside the store either


def test_out_may_not_be_a_folder_or_inside_the_store(store, tmp_path):
    before = snapshot(store)
    done = xattn_ray("results", "--store", store, "--out", tmp_path, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, f"xattn-ray: error: --out {tmp_path} is a folder: give a file name\n")
    target = a_store_file(store)
    done = xattn_ray("results", "--store", store, "--format", "parquet", "--out", target, "--sql",
                     "SELECT * FROM results WHERE false", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"xattn-ray: error: --out {target} is inside the results store {store}: write it elsewhere\n"
    assert snapshot(store) == before and list(tmp_path.iterdir()) == []


def test_conditions_and_queries_over_the_rows_still_work(store, tmp_path):
    done = xattn_ray("results", "--store", store, "--where", "policy = 'xattn'", "--columns", "run_id,eval,bleu",
                     "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines() == ["run_id,eval,bleu", "xattn-s1,forgetting,30.0", "xattn-s1,forgetting,15.0",
                                        "xattn-s1,test,30.0", "xattn-s1,test,15.0"]
    # a subquery over `results` is part of a condition
    done = xattn_ray("results", "--store", store, "--where", "bleu = (SELECT max(bleu) FROM results)",
                     "--columns", "policy,test_set", "--format", "csv", cwd=tmp_path)
    assert done.stdout.splitlines() == ["policy,test_set", "body,flickr2016", "body,flickr2016"]
    done = xattn_ray("results", "--store", store, "--sql",
                     "WITH best AS (SELECT policy, max(bleu) AS bleu FROM results GROUP BY policy) "
                     "SELECT * FROM best ORDER BY bleu DESC;", "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.splitlines() == ["policy,bleu", "body,33.0", "xattn,30.0"]
    assert list(tmp_path.iterdir()) == []
