"""The results store on real Parquet files and real DuckDB, with real concurrent writer processes."""

import csv
import io
import json
import math
import multiprocessing
import threading
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import xattn_ray
from xattn_ray.cli import main
from xattn_ray.store import SCHEMA, SCHEMA_VERSION, ResultsStore, StoreError, code_version, make_row


def bleu_rows(run_id: str, bleu: float, experiment: str = "m30k", **fields) -> list[dict]:
    """One child run's test evaluation: a row per test set."""
    base = {"experiment": experiment, "run_id": run_id, "stage": "child", "pair": "de-en", "policy": "xattn",
            "seed": 1, "eval": "test", "status": "ok"} | fields
    return [make_row(**base, test_set="flickr2016", bleu=bleu), make_row(**base, test_set="mscoco2017", bleu=bleu / 2)]


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def test_every_column_round_trips_with_its_type_and_nulls_stay_null(tmp_path):
    example = {pa.int32(): 7, pa.int64(): 2**40, pa.float64(): 31.25, pa.string(): "text",
               pa.timestamp("us", tz="UTC"): datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc),
               SCHEMA.field("valid_losses").type: [{"update": 100, "valid_loss": 5.5},
                                                   {"update": 200, "valid_loss": 4.25}],
               SCHEMA.field("options").type: {"lr": 0.0003, "warmup_updates": 4000.0}}
    full = {field.name: example[field.type] for field in SCHEMA}
    full |= {"stage": "parent", "eval": "test", "status": "ok", "selection": "grid", "experiment": "m30k",
             "run_id": "full-s1"}
    sparse = make_row(experiment="m30k", run_id="sparse-s1", stage="child", eval="bli", status="failed")
    store = ResultsStore(tmp_path / "results")
    store.write([make_row(**full), sparse])

    assert [p.relative_to(tmp_path / "results").as_posix() for p in all_files(tmp_path / "results")] == [
        "experiment=m30k/stage=child/sparse-s1.bli.parquet", "experiment=m30k/stage=parent/full-s1.test.parquet"]
    table = store.table()
    assert table.schema == SCHEMA  # partition columns too: plain strings, not dictionaries
    rows = {row["run_id"]: row for row in table.to_pylist(maps_as_pydicts="strict")}
    assert rows["full-s1"] == full
    assert rows["full-s1"]["created_at"].utcoffset().total_seconds() == 0
    assert rows["sparse-s1"]["schema_version"] == SCHEMA_VERSION and rows["sparse-s1"]["code_version"] == code_version()
    assert rows["sparse-s1"]["created_at"].tzinfo is not None
    assert rows["sparse-s1"]["bleu"] is None and rows["sparse-s1"]["seed"] is None  # null, never 0
    frame = store.read(filters=[("stage", "=", "child")])
    assert list(frame.columns) == SCHEMA.names and list(frame["run_id"]) == ["sparse-s1"]


def test_make_row_completes_a_row_and_encodes_json_columns():
    row = make_row(experiment="e", run_id="r", stage="child", eval="test", status="ok", bleu=30.0,
                   stitched_from={"body": "a", "embeddings": "b"}, hparams={"lr": 0.001})
    assert list(row) == SCHEMA.names
    assert row["chrf"] is None and row["schema_version"] == SCHEMA_VERSION == 2
    assert json.loads(row["stitched_from"]) == {"body": "a", "embeddings": "b"} and row["hparams"] == '{"lr": 0.001}'
    assert code_version().split("+g")[0] == xattn_ray.__version__ and row["code_version"] == code_version()


@pytest.mark.parametrize("fields, message", [
    ({"blue": 30.0}, "unknown results column 'blue' (did you mean 'bleu'?)"),
    ({"eval": "valid"}, "results column 'eval' is 'valid': one of train, test, forgetting, zeroshot, bli"),
    ({"status": "done"}, "results column 'status' is 'done': one of ok, failed, stopped"),
    ({"stage": None}, "results column 'stage' is None: one of parent, child, analysis, base, pretrain, codeswitch"),
])
def test_make_row_rejects_unknown_columns_and_bad_values(fields, message):
    with pytest.raises(StoreError) as caught:
        make_row(**({"experiment": "e", "run_id": "r", "stage": "child", "eval": "test", "status": "ok"} | fields))
    assert str(caught.value) == message


@pytest.mark.parametrize("column, value", [("seed", 1.5), ("bleu", "31.2"), ("pair", 3), ("updates", True),
                                           ("run_id", None), ("created_at", "2024-05-01")])
def test_a_wrong_type_names_the_column_and_writes_nothing(tmp_path, column, value):
    good = bleu_rows("good-s1", 30.0)
    bad = make_row(experiment="m30k", run_id="bad-s1", stage="child", eval="test", status="ok") | {column: value}
    with pytest.raises(StoreError, match=f"results column '{column}'"):
        ResultsStore(tmp_path).write([*good, bad])  # the good group comes first and is still not written
    assert all_files(tmp_path) == []  # no result file, no temporary file


OPTIONS_KIND = "a dict from a string to a number"
CURVE_KIND = "a list of {update: an integer, valid_loss: a number}"


@pytest.mark.parametrize("column, value, kind", [
    ("options", {"lr": "high"}, OPTIONS_KIND), ("options", {"lr": True}, OPTIONS_KIND),  # pyarrow would take 1.0
    ("options", [0.1], OPTIONS_KIND), ("options", {3: 0.1}, OPTIONS_KIND),
    ("valid_losses", [[100, 5.5]], CURVE_KIND), ("valid_losses", "[[100, 5.5]]", CURVE_KIND),
    ("valid_losses", [{"update": 1.5, "valid_loss": 5.5}], CURVE_KIND),
    ("valid_losses", [{"update": 100, "valid_loss": None}], CURVE_KIND),
    ("valid_losses", [{"update": 100, "valid_loss": 5.5, "bleu": 3.0}], CURVE_KIND)])
def test_a_typed_column_says_what_it_takes(tmp_path, column, value, kind):
    row = make_row(experiment="m30k", run_id="bad-s1", stage="child", eval="train", status="ok", **{column: value})
    with pytest.raises(StoreError) as caught:
        ResultsStore(tmp_path).write([row])
    assert str(caught.value).startswith(f"results column {column!r} takes {kind}, not ")
    assert all_files(tmp_path) == []


def test_run_id_must_be_a_file_name(tmp_path):
    with pytest.raises(StoreError, match="run_id '../escape' cannot name a file"):
        ResultsStore(tmp_path).write(bleu_rows("../escape", 30.0))
    assert all_files(tmp_path) == []


def test_a_retried_write_replaces_its_rows(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(bleu_rows("child-s1", 20.0))
    store.write(bleu_rows("child-s1", 30.0))  # the trial ran again
    store.write(bleu_rows("child-s1", 5.0, eval="forgetting"))  # another evaluation of that run: its own file
    answer = store.sql("SELECT eval, test_set, bleu FROM results ORDER BY eval, test_set")
    assert answer.to_dict("records") == [
        {"eval": "forgetting", "test_set": "flickr2016", "bleu": 5.0},
        {"eval": "forgetting", "test_set": "mscoco2017", "bleu": 2.5},
        {"eval": "test", "test_set": "flickr2016", "bleu": 30.0},
        {"eval": "test", "test_set": "mscoco2017", "bleu": 15.0}]


WRITERS, OWN_RUNS = 16, 10


def write_runs(root: str, writer: int, ready) -> None:
    """A writer process: its own runs; even writers also write the one shared run again and again."""
    store = ResultsStore(root)
    ready.wait()  # every writer (and the reader) starts at once, so their work overlaps
    for run in range(OWN_RUNS):
        store.write(bleu_rows(f"w{writer}-r{run}", float(writer)))
        if writer % 2 == 0:
            store.write(bleu_rows("shared", float(writer)))


def test_concurrent_writers_store_every_row_once_while_a_reader_reads(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(WRITERS + 1)
    writers = [context.Process(target=write_runs, args=(str(tmp_path), w, ready)) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    store = ResultsStore(tmp_path)
    problems, sizes, writing = [], [], threading.Event()

    def read_while_writing() -> None:
        # Whenever a reader looks, it sees whole files: two rows per run, never one, never a repeat.
        while writing.is_set() or not sizes:
            try:
                if len(sizes) % 2 == 0:
                    rows_per_run = store.read()["run_id"].value_counts().tolist()
                else:
                    rows_per_run = store.sql("SELECT count(*) AS n FROM results GROUP BY run_id")["n"].tolist()
                if set(rows_per_run) - {2}:
                    problems.append(f"runs with other than 2 rows: {rows_per_run}")
                sizes.append(sum(rows_per_run))
            except Exception as err:  # any failure at all is what this test looks for
                problems.append(repr(err))

    writing.set()
    reader = threading.Thread(target=read_while_writing)
    ready.wait(timeout=60)  # the writers have started up: read only while they write
    reader.start()
    for writer in writers:
        writer.join(timeout=60)
    writing.clear()
    reader.join(timeout=60)

    assert [writer.exitcode for writer in writers] == [0] * WRITERS
    assert problems == [] and len(sizes) > 1
    rows = store.table().to_pylist()
    bleu_of = {(row["run_id"], row["test_set"]): row["bleu"] for row in rows}
    assert len(rows) == len(bleu_of) == WRITERS * OWN_RUNS * 2 + 2  # every row, none twice
    assert bleu_of["w3-r9", "flickr2016"] == 3.0 and bleu_of["shared", "flickr2016"] % 2 == 0  # an even writer's
    assert [path for path in all_files(tmp_path) if path.name.startswith(".")] == []


def test_reading_an_empty_or_missing_store_gives_the_schema(tmp_path):
    for store in (ResultsStore(tmp_path / "missing"), ResultsStore(tmp_path)):
        assert store.table() == SCHEMA.empty_table()
        assert store.table("m30k", [("seed", "=", 1)]).schema == SCHEMA
        assert len(store.sql("SELECT * FROM results")) == 0
    assert not (tmp_path / "missing").exists()  # reading creates nothing


def test_a_crashed_writers_temporary_file_is_ignored(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(bleu_rows("a-s1", 30.0))
    (tmp_path / "experiment=m30k" / "stage=child" / ".a-s1.test.parquet.0123abcd").write_bytes(b"PAR1 cut sh")
    assert store.table().num_rows == 2


def test_filters_and_experiment_select_rows(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(bleu_rows("a-s1", 30.0) + bleu_rows("b-s2", 20.0, seed=2) + bleu_rows("c-s1", 10.0, experiment="x"))
    assert store.table("x")["run_id"].to_pylist() == ["c-s1", "c-s1"]
    assert set(store.table(filters=[("seed", "=", 2)])["run_id"].to_pylist()) == {"b-s2"}
    assert len(store.table(filters=pc.field("bleu") > 12.0)) == 3
    with pytest.raises(StoreError, match="^results filters name an unknown column: 'sed'$"):
        store.table(filters=[("sed", "=", 1)])


def test_a_file_without_a_later_column_reads_it_as_null(tmp_path):
    folder = tmp_path / "experiment=m30k" / "stage=child"
    folder.mkdir(parents=True)
    older = pa.table({"experiment": ["m30k"], "run_id": ["old-s1"], "eval": ["test"], "status": ["ok"],
                      "bleu": [12.5]})
    pq.write_table(older, folder / "old-s1.test.parquet")
    (row,) = ResultsStore(tmp_path).table().to_pylist()
    assert row["bleu"] == 12.5 and row["chrf"] is None and row["created_at"] is None


def test_sql_answers_queries_and_reports_errors_in_one_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(bleu_rows("a-s1", 30.0) + bleu_rows("b-s2", 20.0, seed=2, policy="body"))
    means = store.sql("SELECT policy, avg(bleu) AS bleu FROM results GROUP BY policy ORDER BY policy")
    assert means.to_dict("records") == [{"policy": "body", "bleu": 15.0}, {"policy": "xattn", "bleu": 22.5}]
    assert str(store.sql("SELECT created_at FROM results")["created_at"].dt.tz) == "UTC"
    for query, message in (("SELEC policy FROM results", "Parser Error"),
                           ("SELECT polcy FROM results", 'Referenced column "polcy" not found')):
        with pytest.raises(StoreError) as caught:
            store.sql(query)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_uri_is_the_same_store_as_its_path(tmp_path):
    ResultsStore(tmp_path.as_uri()).write(bleu_rows("a-s1", 30.0))
    ResultsStore(tmp_path).write(bleu_rows("b-s1", 20.0))
    assert ResultsStore(tmp_path.as_uri()).table() == ResultsStore(tmp_path).table()
    assert ResultsStore(tmp_path).table().num_rows == 4


def test_a_bad_uri_is_a_store_error():
    with pytest.raises(StoreError, match="^cannot open results store nosuch://x: "):
        ResultsStore("nosuch://x")


# --- the `xattn-ray results` command, run in this process ---


@pytest.fixture
def filled_store(tmp_path) -> Path:
    root = tmp_path / "results"
    rows = [make_row(experiment="m30k", run_id="parent-s1", stage="parent", pair="fr-en", seed=1, eval="test",
                     test_set="flickr2016", bleu=40.123, chrf=60.0, status="ok")]
    for policy, seed, bleu in (("xattn", 1, 31.456), ("xattn", 2, 32.0), ("body", 1, 33.0)):
        rows += bleu_rows(f"{policy}-s{seed}", bleu, policy=policy, seed=seed)
    rows += bleu_rows("other-s1", 10.0, experiment="other", best_valid_loss=math.inf)  # a diverged run
    ResultsStore(root).write(rows)
    return root


def results(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["results", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_results_table_is_aligned_with_two_decimals_and_blank_nulls(filled_store, capsys):
    status, out, err = results(capsys, "--store", str(filled_store), "--experiment", "m30k",
                               "--where", "policy = 'xattn' AND seed = 1")
    assert status == 0 and err == ""
    header, *lines = out.splitlines()
    assert header.split() == ["experiment", "stage", "pair", "policy", "seed", "eval", "test_set", "bleu", "chrf",
                              "reference_bleu", "bli_p1", "status"]
    assert [line.split() for line in lines] == [
        ["m30k", "child", "de-en", "xattn", "1", "test", "flickr2016", "31.46", "ok"],
        ["m30k", "child", "de-en", "xattn", "1", "test", "mscoco2017", "15.73", "ok"]]
    assert lines[0].index("31.46") + len("31.46") == header.index("bleu") + len("bleu")  # right-aligned


def test_results_csv_and_json_hold_every_column(filled_store, capsys):
    status, out, _ = results(capsys, "--store", str(filled_store), "--experiment", "m30k", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and list(rows[0]) == SCHEMA.names and len(rows) == 7
    assert rows[0]["run_id"] == "body-s1" and rows[-1]["stage"] == "parent" and rows[-1]["chrf"] == "60.0"
    assert rows[0]["chrf"] == ""  # null
    status, out, _ = results(capsys, "--store", str(filled_store), "--experiment", "other", "--format", "json")
    records = json.loads(out)
    assert status == 0 and [r["test_set"] for r in records] == ["flickr2016", "mscoco2017"]
    assert records[0]["seed"] == 1 and records[0]["chrf"] is None and records[0]["created_at"].endswith("+00:00")
    assert records[0]["best_valid_loss"] is None  # JSON has no infinity


def test_results_parquet_goes_to_a_file(filled_store, capsys, tmp_path):
    out_file = tmp_path / "export" / "m30k.parquet"
    out_file.parent.mkdir()
    status, out, _ = results(capsys, "--store", str(filled_store), "--format", "parquet", "--out", str(out_file),
                             "--columns", "run_id,seed,bleu")
    table = pq.read_table(out_file)
    assert status == 0 and out == "" and table.num_rows == 9
    assert table.schema.names == ["run_id", "seed", "bleu"] and table.schema.field("seed").type == pa.int64()
    assert [path.name for path in out_file.parent.iterdir()] == ["m30k.parquet"]  # no temporary left behind
    status, _, err = results(capsys, "--store", str(filled_store), "--format", "parquet")
    assert status == 2 and err == "xattn-ray: error: --format parquet needs --out FILE\n"


def test_results_sql_runs_the_query_as_given(filled_store, capsys, tmp_path):
    status, out, _ = results(capsys, "--store", str(filled_store), "--format", "json", "--sql",
                             "SELECT policy, count(*) AS n, max(bleu) AS best FROM results "
                             "WHERE stage = 'child' GROUP BY policy ORDER BY policy")
    assert status == 0 and json.loads(out) == [{"policy": "body", "n": 2, "best": 33.0},
                                               {"policy": "xattn", "n": 6, "best": 32.0}]
    # the default store is STORAGE/results
    status, out, _ = results(capsys, "--storage", str(filled_store.parent), "--sql",
                             "SELECT count(*) AS n FROM results")
    assert status == 0 and out.split() == ["n", "9"]
    # types the store never holds, as queries make them: a date, and a sum DuckDB widens to 128 bits
    query = "SELECT DATE '2024-05-01' AS day, sum(seed) AS seeds FROM results"
    status, out, _ = results(capsys, "--store", str(filled_store), "--sql", query)
    assert out.split() == ["day", "seeds", "2024-05-01", "11"]
    status, out, _ = results(capsys, "--store", str(filled_store), "--sql", query, "--format", "json")
    assert json.loads(out) == [{"day": "2024-05-01", "seeds": 11}]


@pytest.mark.parametrize("args, message", [
    (["--sql", "SELEC 1"], "xattn-ray: error: --sql: Parser Error: syntax error at or near"),
    (["--where", "polcy = 'xattn'"], 'xattn-ray: error: --where: Binder Error: Referenced column "polcy"'),
    (["--columns", "bleu,nope"], "xattn-ray: error: unknown results column 'nope'"),
    (["--columns", "bleu", "--where", "seed = 1) OR (1 = 1"], "xattn-ray: error: --where: Parser Error"),
    (["--sql", "SELECT 1", "--where", "seed = 1"], "xattn-ray: error: --sql is a whole query"),
    (["--sql", "SELECT 1", "--experiment", "m30k"], "xattn-ray: error: --sql is a whole query"),
])
def test_results_mistakes_are_one_line_and_exit_2(filled_store, capsys, args, message):
    status, out, err = results(capsys, "--store", str(filled_store), *args)
    assert status == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(message)


def test_results_of_an_empty_store_is_a_note_and_exit_0(tmp_path, capsys):
    empty = str(tmp_path / "nothing-yet")
    (tmp_path / "nothing-yet").mkdir()  # a store folder no run has written to yet
    for fmt, expected in (("table", "experiment"), ("csv", "schema_version,experiment"), ("json", "[]")):
        status, out, err = results(capsys, "--store", empty, "--format", fmt)
        assert status == 0 and out.startswith(expected) and len(out.splitlines()) == 1
        assert err == f"no results in {empty}\n"


def test_results_of_a_missing_store_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-store"
    status, out, err = results(capsys, "--store", str(missing))
    assert (status, out, err) == (2, "", f"xattn-ray: error: results store {missing} does not exist\n")
    status, out, err = results(capsys, "--storage", str(tmp_path))  # the default store, STORAGE/results
    assert (status, out, err) == (2, "", f"xattn-ray: error: results store {tmp_path / 'results'} does not exist\n")
    (tmp_path / "a-file").write_text("")
    status, _, err = results(capsys, "--store", str(tmp_path / "a-file"))
    assert (status, err) == (2, f"xattn-ray: error: results store {tmp_path / 'a-file'} is not a folder\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]  # reading created nothing


def test_results_out_replaces_a_file(filled_store, capsys, tmp_path):
    out_file = tmp_path / "table.txt"
    out_file.write_text("old\n")
    status, out, _ = results(capsys, "--store", str(filled_store), "--experiment", "other", "--out", str(out_file))
    assert status == 0 and out == "" and len(out_file.read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "table.txt"]
