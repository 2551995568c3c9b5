"""A store written by schema version 1, read alone and beside version-2 rows: by `ResultsStore`, by
`xattn-ray results`, by the report, and by DuckDB straight over the files with the queries of
docs/results-store.md.

`tests/fixtures/store-v1/` was written by the code of version 1 (its README says how). What version 1
stored is read here from its files with plain pyarrow, independently of the store's reading code. A
test that adds rows copies the fixture first, and every test checks that no file of version 1 changed.
"""

import csv
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from xattn_ray.cli import main
from xattn_ray.report.build import build_report
from xattn_ray.store import RETIRED, SCHEMA, ResultsStore, make_row

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1"
DOCS = Path(__file__).parents[1] / "docs" / "results-store.md"
EXPERIMENT = "v1tiny"
# The version-2 run a resumed study adds: the xattn child at another seed and learning rate.
NEW_RUN = "lb-pv-xattn-lr0.001-s2-0a1b2c3d"
NEW_CURVE = [{"update": 6, "valid_loss": 4.6}, {"update": 12, "valid_loss": float("nan")}]


def digests(root: Path) -> dict[str, str]:
    """sha256 of every version-1 file under `root` (named as in the fixture)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*.parquet")) if path.relative_to(root).as_posix() in FIXTURE_FILES}


FIXTURE_FILES = {path.relative_to(FIXTURE).as_posix() for path in FIXTURE.rglob("*.parquet")}
FIXTURE_DIGESTS = digests(FIXTURE)


def stored_v1() -> dict[tuple[str, str], dict]:
    """The fixture's rows as version 1 wrote them, by (run_id, eval): read file by file with pyarrow."""
    rows = [row for path in FIXTURE.rglob("*.parquet") for row in pq.read_table(path).to_pylist()]
    return {(row["run_id"], row["eval"]): row for row in rows}


def new_rows() -> list[dict]:
    """The train and test rows of the version-2 run, as `study.records.outcome_rows` makes them."""
    shared = dict(experiment=EXPERIMENT, run_id=NEW_RUN, stage="child", parent_pair="la-pv", pair="lb-pv",
                  side="source", policy="xattn", seed=2, options={"lr": 0.001}, train_size=148, status="ok",
                  selection="grid", updates=12, trainable_params=16576, total_params=58880,
                  hparams=json.dumps({"options": {"lr": 0.001}, "size": None}))
    return [make_row(**shared, eval="train", valid_losses=NEW_CURVE),
            make_row(**shared, eval="test", test_set="test", bleu=0.5, chrf=4.5)]


@pytest.fixture
def mixed(tmp_path) -> Path:
    """A copy of the version-1 store to which newer code added one run."""
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    ResultsStore(root).write(new_rows())
    return root


@pytest.fixture(autouse=True)
def fixture_unchanged():
    yield
    assert digests(FIXTURE) == FIXTURE_DIGESTS


def test_no_column_changed_its_type_under_its_name():
    """DuckDB's `union_by_name` cannot combine files in which one column has two types (a JSON string and
    a list), so a column whose type changes is retired and its successor takes a new name."""
    written = pq.read_schema(next(FIXTURE.rglob("*.parquet")))  # as version 1 wrote its files
    shared = [name for name in written.names if name in SCHEMA.names]
    assert {name: SCHEMA.field(name).type for name in shared} == {name: written.field(name).type for name in shared}
    assert set(written.names) - set(SCHEMA.names) == set(RETIRED.names) == {"valid_curve"}


def test_a_version_1_store_reads_as_the_current_schema():
    table = ResultsStore(FIXTURE).table()
    assert table.schema == SCHEMA and table.num_rows == len(FIXTURE_FILES) == 7
    stored = stored_v1()
    for row in table.to_pylist(maps_as_pydicts="strict"):
        old = stored[row["run_id"], row["eval"]]
        assert row["schema_version"] == 1
        curve = None if old["valid_curve"] is None else [
            {"update": update, "valid_loss": loss} for update, loss in json.loads(old["valid_curve"])]
        assert row["valid_losses"] == curve
        assert row["options"] == json.loads(old["hparams"])["options"]  # {} for the parent
        assert row["train_size"] == old["train_size"]  # as stored: version 1's requested size
        assert {name: row[name] for name in old if name in SCHEMA.names} == {
            name: value for name, value in old.items() if name in SCHEMA.names}
    train = {row["run_id"]: row for row in table.to_pylist() if row["eval"] == "train"}
    assert sum(row["valid_losses"] is not None for row in train.values()) == 3  # the failed run has none
    assert {row["train_size"] for row in train.values()} == {None, 120}


def test_version_1_and_2_rows_read_as_one_table(mixed):
    store = ResultsStore(mixed)
    frame = store.read(EXPERIMENT)
    assert list(frame.columns) == SCHEMA.names and len(frame) == 9
    versions = dict(zip(frame["run_id"] + " " + frame["eval"], frame["schema_version"]))
    assert versions[f"{NEW_RUN} train"] == 2 and sum(version == 1 for version in versions.values()) == 7
    new = frame[(frame["run_id"] == NEW_RUN) & (frame["eval"] == "train")].iloc[0]
    assert new["options"] == {"lr": 0.001} and new["train_size"] == 148
    assert new["valid_losses"][0] == {"update": 6, "valid_loss": 4.6}
    assert sorted(map(str, frame["options"])) == sorted(["{'lr': 0.001}"] * 2 + ["{'lr': 0.003}"] * 5 + ["{}"] * 2)

    # A condition and a filter on the typed columns see both versions.
    chosen = store.select(EXPERIMENT, where="options['lr'] > 0.0005 AND eval = 'train' AND status = 'ok'",
                          columns=["run_id", "schema_version"], order_by=["run_id"])
    assert chosen.to_pylist() == [{"run_id": "lb-pv-body-n120-lr0.003-s1-4e473851", "schema_version": 1},
                                  {"run_id": NEW_RUN, "schema_version": 2},
                                  {"run_id": "lb-pv-xattn-n120-lr0.003-s1-66689991", "schema_version": 1}]
    with_lr = store.table(filters=pc.map_lookup(pc.field("options"), pa.scalar("lr"), "first") == 0.003)
    assert with_lr.num_rows == 5 and set(with_lr["schema_version"].to_pylist()) == {1}
    assert store.table(filters=[("train_size", "=", 148)])["run_id"].to_pylist() == [NEW_RUN] * 2

    # One validation per row, from the JSON of version 1 and the list of version 2 alike.
    points = store.sql("SELECT run_id, point.update AS step, point.valid_loss AS loss "
                       "FROM (SELECT run_id, unnest(valid_losses) AS point FROM results) ORDER BY run_id, step")
    assert points.groupby("run_id").size().to_dict() == {"la-pv-s1-b5a258ae": 2, NEW_RUN: 2,
                                                          "lb-pv-body-n120-lr0.003-s1-4e473851": 2,
                                                          "lb-pv-xattn-n120-lr0.003-s1-66689991": 2}
    assert points["step"].tolist() == [6, 12] * 4
    assert digests(mixed) == FIXTURE_DIGESTS  # the version-1 files are as they were written


def test_rows_read_and_written_again_read_the_same(mixed):
    """A search relabels stored rows by reading them and writing them again: nothing may be lost."""
    store = ResultsStore(mixed)
    before = store.table()
    store.write(before.to_pylist())  # every file written again, by today's code
    order = [("run_id", "ascending"), ("eval", "ascending")]
    assert repr(store.table().sort_by(order).to_pylist()) == repr(before.sort_by(order).to_pylist())  # NaN too
    rewritten = pq.read_table(mixed / f"experiment={EXPERIMENT}/stage=parent/la-pv-s1-b5a258ae.train.parquet")
    assert "valid_curve" not in rewritten.column_names  # today's layout, but still a row of version 1
    assert rewritten["schema_version"].to_pylist() == [1] and rewritten["valid_losses"][0].as_py()[0]["update"] == 6


def results(capsys, *args: str) -> str:
    assert main(["results", *args]) == 0
    return capsys.readouterr().out


def test_results_command_shows_the_typed_columns_of_both_versions(mixed, capsys):
    columns = "run_id,schema_version,options,valid_losses,train_size"
    records = json.loads(results(capsys, "--store", str(mixed), "--where", "eval = 'train' AND status = 'ok'",
                                 "--columns", columns, "--format", "json"))
    by_run = {record["run_id"]: record for record in records}
    assert by_run[NEW_RUN] == {"run_id": NEW_RUN, "schema_version": 2, "options": {"lr": 0.001},
                               "valid_losses": [{"update": 6, "valid_loss": 4.6},
                                                {"update": 12, "valid_loss": None}],  # JSON has no NaN
                               "train_size": 148}
    old = by_run["lb-pv-body-n120-lr0.003-s1-4e473851"]
    assert old["options"] == {"lr": 0.003} and len(old["valid_losses"]) == 2 and old["train_size"] == 120
    rows = list(csv.DictReader(io.StringIO(results(capsys, "--store", str(mixed), "--where", "eval = 'train'",
                                                   "--columns", columns, "--format", "csv"))))
    cells = {row["run_id"]: row for row in rows}
    assert json.loads(cells["la-pv-s1-b5a258ae"]["options"]) == {}
    assert json.loads(cells[NEW_RUN]["valid_losses"])[0] == {"update": 6, "valid_loss": 4.6}
    assert cells["lb-pv-scratch-n120-lr0.003-s1-1456246a"]["valid_losses"] == ""  # null
    # The README's two commands, as written there.
    table = results(capsys, "--store", str(mixed), "--where", "options['lr'] = 0.003 AND eval = 'test'",
                    "--columns", "run_id,options,bleu")
    assert [line.split()[:2] for line in table.splitlines()] == [
        ["run_id", "options"], ["lb-pv-body-n120-lr0.003-s1-4e473851", '{"lr":'],
        ["lb-pv-xattn-n120-lr0.003-s1-66689991", '{"lr":']]
    table = results(capsys, "--store", str(mixed), "--sql",
                    "SELECT run_id, point.update AS update, point.valid_loss AS valid_loss "
                    "FROM (SELECT run_id, unnest(valid_losses) AS point FROM results) ORDER BY run_id, update")
    assert [line.split()[:2] for line in table.splitlines()][:3] == [
        ["run_id", "update"], ["la-pv-s1-b5a258ae", "6"], ["la-pv-s1-b5a258ae", "12"]]
    assert len(table.splitlines()) == 1 + 8
    counts = results(capsys, "--store", str(mixed), "--format", "csv", "--sql",
                     "SELECT options['lr'] AS lr, count(*) AS n FROM results GROUP BY lr ORDER BY lr NULLS LAST")
    assert counts == "lr,n\n0.001,2\n0.003,5\n,2\n"  # the parent's rows have no lr


def test_the_report_reads_a_version_1_store_alone_and_mixed(mixed, tmp_path):
    alone = build_report(ResultsStore(FIXTURE), EXPERIMENT, tmp_path / "alone").read_text()
    assert (tmp_path / "alone" / "valid_curves.png").is_file()  # drawn from version 1's JSON curves
    assert "lb-pv size 120 lr=0.003" in alone and "code version: `0.1.0+gd0ed702`" in alone
    assert "lb-pv-scratch-n120-lr0.003-s1-1456246a" in alone  # the failed run, under "Missing runs"

    both = build_report(ResultsStore(mixed), EXPERIMENT, tmp_path / "mixed").read_text()
    assert (tmp_path / "mixed" / "valid_curves.png").is_file()
    assert "lb-pv size 120 lr=0.003" in both and "lb-pv lr=0.001" in both
    assert "rows come from more than one code version" in both


def docs_queries() -> list[str]:
    """The SQL blocks of docs/results-store.md, as a user copies them."""
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)


def run_query(query: str, root: Path) -> list[tuple]:
    with duckdb.connect(":memory:") as connection:
        return connection.sql(query.replace("<root>", root.as_posix())).fetchall()


def test_duckdb_reads_the_files_of_both_versions_with_the_documented_queries(mixed):
    every_row, by_lr, curves, both_versions = docs_queries()
    for query in docs_queries():
        assert "read_parquet('<root>/**/*.parquet', hive_partitioning = true, union_by_name = true)" in query

    assert len(run_query(every_row, mixed)) == 9 and len(run_query(every_row, FIXTURE)) == 7
    assert ("lb-pv", "xattn", 0.001, 1, 0.5) in run_query(by_lr, mixed)
    assert {row[2] for row in run_query(by_lr, mixed)} == {0.001, None}  # version 1 keeps its options in hparams
    assert run_query(curves, mixed)[0] == (NEW_RUN, 6, 4.6) and len(run_query(curves, mixed)) == 2

    # Over version-1 files, the last query gives what `ResultsStore.sql` gives (which converts on read).
    direct = run_query(both_versions, mixed)
    converted = ResultsStore(mixed).sql_table(
        "SELECT run_id, schema_version, options['lr'] AS lr, point.update AS update, point.valid_loss AS valid_loss "
        "FROM (SELECT *, unnest(valid_losses) AS point FROM results) ORDER BY run_id, update")
    assert len(direct) == 8 and repr(direct) == repr([tuple(row.values()) for row in converted.to_pylist()])
    assert run_query(both_versions, FIXTURE) == [row for row in direct if row[0] != NEW_RUN]


def test_duckdb_reads_a_store_of_version_2_alone(tmp_path):
    ResultsStore(tmp_path).write(new_rows())
    every_row, by_lr, curves, both_versions = docs_queries()
    assert len(run_query(every_row, tmp_path)) == 2
    assert run_query(by_lr, tmp_path) == [("lb-pv", "xattn", 0.001, 1, 0.5)]
    assert [row[:2] for row in run_query(curves, tmp_path)] == [(NEW_RUN, 6), (NEW_RUN, 12)]
    assert [row[:4] for row in run_query(both_versions, tmp_path)] == [(NEW_RUN, 2, 0.001, 6), (NEW_RUN, 2, 0.001, 12)]
