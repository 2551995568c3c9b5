"""The results store: every number a study produces, as Parquet files under one directory.

A row is one figure of one run's evaluation: a test set's BLEU and chrF, a parent test set re-scored
after transfer (forgetting), a zero-shot pair, a lexicon-induction score, or the training record.
The directory is a local folder or anything pyarrow opens (`s3://bucket/prefix`, `file:///...`), laid
out as Hive partitions with one file per run and evaluation:

    <root>/experiment=<name>/stage=<parent|child|analysis>/<run_id>.<eval>.parquet
    <root>/texts/experiment=<name>/<sha256 of the bytes>.txt      (a store that is not a local folder)

Writers need no locks. On a local disk a file is written under a hidden name (a leading `.`, which
readers skip) beside its final name and renamed into place; in an object store (S3, GCS, Azure) it is
uploaded to its final key, which shows an object only once the upload is complete. Either way a reader
sees a whole file or none, a crash leaves what was there, and writing a run's evaluation again (a
retried or resumed trial) replaces its rows instead of adding to them. Nothing deletes rows. Readers
list the files, then read them as rows of the one `SCHEMA`; `ResultsStore.sql` puts DuckDB over the rows
as a table named `results`.

A row's `hypotheses_uri` and `references_uri` name text files. A local store keeps the paths of the
run's own files; any other store copies the files into `texts/` as it writes the rows, and the rows
name the copies (`s3://bucket/prefix/texts/...`), so a report reads them from any machine. A copy is
named by its content: a retry writes the same key, and one reference file shared by many runs is one
object. `ResultsStore.read_text` reads those two kinds of name and refuses any other.

Each row records the `SCHEMA_VERSION` of the code that wrote it, and a store may hold files of several
versions side by side (a study resumed by newer code). A column never changes its type under its name,
so that anything reading all the files at once (DuckDB's `read_parquet(..., union_by_name = true)`)
can combine them; a column whose type changes is retired and its successor takes a new name. Readers
of this module see one table of the current version: the retired columns of older files are converted
on read (`_as_current`), never in the files themselves.

Queries are read-only and see the rows and nothing else: the rows are loaded first, then DuckDB runs
in memory with external access off and its configuration locked, so no query reads or writes a file,
a URL or an extension, and no query can switch that back on. A query is one SELECT; a condition
(`ResultsStore.select(where=...)`) is parsed as one expression, never pasted into SQL text.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import json
import numbers
import os
import re
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xattn_ray.errors import XattnError

if TYPE_CHECKING:
    import pandas

# Bump when a column changes meaning or is replaced; adding a column needs no bump. Version 2: the
# validation curve moved from JSON text (`valid_curve`, retired) to `valid_losses`, the grid options got
# their column `options`, and `train_size` counts the pairs trained on (version 1: the requested size).
SCHEMA_VERSION = 2

STAGES = ("parent", "child", "analysis", "base", "pretrain", "codeswitch")  # the last three: code-switching studies
EVALS = ("train", "test", "forgetting", "zeroshot", "bli")
STATUSES = ("ok", "failed", "stopped")
# Which runs a report counts: a grid run and a search's chosen configuration (at each grid seed) do; a
# search trial only informed the choice, and a confirmation of a configuration a later search replaced
# is superseded. A row without a value (a store written before the column existed) is a grid run.
SELECTIONS = ("grid", "search", "confirmed", "superseded")
COUNTED_SELECTIONS = ("grid", "confirmed")

# One validation during training: the update it followed and the validation loss it measured.
VALID_POINT = pa.struct([pa.field("update", pa.int64()), pa.field("valid_loss", pa.float64())])

# Every column of every row. A metric that does not apply to a row is null, never zero.
SCHEMA = pa.schema([
    pa.field("schema_version", pa.int32()),  # SCHEMA_VERSION of the code that wrote the row
    pa.field("experiment", pa.string(), nullable=False),  # the experiment file's `name` (a partition)
    pa.field("run_id", pa.string(), nullable=False),  # stable id from config hash + seed: names the file
    pa.field("stage", pa.string()),  # parent / child / analysis; base / pretrain / codeswitch (a partition)
    pa.field("parent_pair", pa.string()),  # a child's parent's pair, e.g. fr-en
    pa.field("pair", pa.string()),  # the run's pair, e.g. de-en
    pa.field("src_lang", pa.string()),
    pa.field("tgt_lang", pa.string()),
    pa.field("side", pa.string()),  # which side a child replaced: source / target; null for a parent
    pa.field("policy", pa.string()),  # freeze policy of a child, e.g. xattn
    pa.field("seed", pa.int64()),
    pa.field("eval", pa.string(), nullable=False),  # train / test / forgetting / zeroshot / bli
    pa.field("test_set", pa.string()),  # the test set a BLEU row scores, e.g. flickr2016 (codeswitch_kind)
    pa.field("bleu", pa.float64()),  # sacreBLEU corpus BLEU
    pa.field("chrf", pa.float64()),  # sacreBLEU chrF
    pa.field("bleu_signature", pa.string()),  # sacreBLEU's signature: how `bleu` was computed
    pa.field("chrf_signature", pa.string()),
    pa.field("reference_bleu", pa.float64()),  # for `forgetting`: the parent's own BLEU on the same set
    pa.field("bli_p1", pa.float64()),  # bilingual lexicon induction precision@1
    pa.field("bli_method", pa.string()),  # cosine / dot / csls
    pa.field("dictionary", pa.string()),  # the gold dictionary BLI is scored against
    pa.field("n_evaluated", pa.int64()),  # sentences or dictionary entries scored
    pa.field("hypotheses_uri", pa.string()),  # where the translations behind `bleu` are kept
    pa.field("references_uri", pa.string()),  # the references they were scored against (same order)
    pa.field("trainable_params", pa.int64()),
    pa.field("total_params", pa.int64()),
    pa.field("updates", pa.int64()),  # optimizer steps taken
    pa.field("train_seconds", pa.float64()),
    pa.field("target_tokens_per_second", pa.float64()),  # training throughput
    pa.field("best_valid_loss", pa.float64()),
    pa.field("valid_losses", pa.list_(VALID_POINT)),  # every validation of the run, in order
    pa.field("stop_reason", pa.string()),  # why training ended, e.g. patience, max_updates
    pa.field("train_size", pa.int64()),  # training pairs the run trained on, after cleaning (version 1: asked for)
    pa.field("attention", pa.string()),  # encoder self-attention of a code-switching run: standard / xlquery
    pa.field("mono_alpha", pa.float64()),  # xlquery training: keep probability of M1's cross-segment entries
    pa.field("cross_alpha", pa.float64()),  # xlquery training: keep probability of M2's within-segment entries
    pa.field("stitched_from", pa.string()),  # JSON: the models a stitched model was assembled from
    pa.field("options", pa.map_(pa.string(), pa.float64())),  # the grid's or search's values, e.g. {lr: 3e-4}
    pa.field("hparams", pa.string()),  # JSON of the run's full resolved config
    pa.field("config_hash", pa.string()),  # hash of `hparams`, the first half of `run_id`
    pa.field("checkpoint_uri", pa.string()),  # the model the row's numbers come from
    pa.field("parent_checkpoint_sha256", pa.string()),  # sha256 of the checkpoint the run started from
    pa.field("pretrained", pa.string()),  # the pretrained model (folder or hub id) a parent was imported from,
    pa.field("pretrained_sha256", pa.string()),  # and the hash of its files; a child's: its parent's
    pa.field("status", pa.string(), nullable=False),  # ok / failed / stopped
    pa.field("selection", pa.string()),  # grid / search / confirmed / superseded: see SELECTIONS
    pa.field("error", pa.string()),  # what went wrong, for a failed run
    pa.field("ray_trial_id", pa.string()),
    pa.field("code_version", pa.string()),  # code_version() of the writer
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
])

# Columns of older versions that files of those versions hold, and `_as_current` turns into today's.
RETIRED = pa.schema([
    pa.field("valid_curve", pa.string()),  # version 1: JSON list of [update, valid_loss]; now `valid_losses`
])
# Columns holding JSON text: `make_row` encodes other values given for them.
JSON_COLUMNS = ("stitched_from", "hparams")
# Columns naming a text file: a store that is not a local folder holds copies of those files (`texts/`).
TEXT_COLUMNS = ("hypotheses_uri", "references_uri")

# A run id becomes a file name, so it may not hold a path separator or start hidden (`.`, `_`).
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNKNOWN_COLUMN = re.compile(r"No match for FieldRef\.Name\((.*?)\)")
# A text's copy below `<root>/texts/`: named by the sha256 of its bytes, never `*.parquet`, so never read as rows.
_TEXT_KEY = re.compile(r"experiment=[^/]+/[0-9a-f]{64}\.txt")


def codeswitch_kind(test_set: str) -> str:
    """`mono`, `seen` or `unseen`: the middle part of a code-switching test set's name (codeswitch_runs.py)."""
    return test_set.rsplit(".", 2)[-2]


class StoreError(XattnError):
    """A row that does not fit the schema, a store that cannot be opened, or a query that fails."""


class QueryError(StoreError):
    """A query or condition the caller wrote that is refused or fails: its text is at fault, not the store."""


def make_row(**fields: Any) -> dict[str, Any]:
    """A complete row: every column of `SCHEMA`, None where `fields` gives nothing.

    Fills `schema_version`, `code_version` and `created_at` (now, UTC) unless given, encodes
    non-string values of `JSON_COLUMNS` as JSON, and checks `stage`, `eval` and `status`.
    """
    for name in fields:
        if name not in SCHEMA.names:
            close = difflib.get_close_matches(name, SCHEMA.names, n=1)
            raise StoreError(f"unknown results column {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    row = dict.fromkeys(SCHEMA.names) | fields
    for name in JSON_COLUMNS:
        if row[name] is not None and not isinstance(row[name], str):
            try:
                row[name] = json.dumps(row[name], sort_keys=True)
            except (TypeError, ValueError) as err:
                raise StoreError(f"results column {name!r} takes JSON: {err}") from None
    for name, choices in (("stage", STAGES), ("eval", EVALS), ("status", STATUSES),
                          ("selection", SELECTIONS + (None,))):
        if row[name] not in choices:
            named = ", ".join(choice for choice in choices if choice is not None)
            raise StoreError(f"results column {name!r} is {row[name]!r}: one of {named}")
    for name, default in (("schema_version", SCHEMA_VERSION), ("code_version", code_version()),
                          ("created_at", datetime.now(timezone.utc))):
        if row[name] is None:
            row[name] = default
    return row


@functools.cache
def code_version() -> str:
    """The package version, plus `+g<commit>` when the package runs from a git checkout."""
    try:
        version = importlib.metadata.version("xattn-ray")
    except importlib.metadata.PackageNotFoundError:  # run from a folder that was never installed
        version = "unknown"
    package = Path(__file__).resolve().parent
    # The package's own files must be tracked: an installed copy inside some other repository (a
    # virtual environment in a project folder) would otherwise report that repository's commit.
    if _git(package, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return version
    commit = _git(package, "rev-parse", "--short", "HEAD")
    return f"{version}+g{commit}" if commit else version


def _git(directory: Path, *args: str) -> str | None:
    """Standard output of a git command in `directory`, or None when git is absent or fails."""
    try:
        done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class ResultsStore:
    """A directory of result rows: write groups of rows, read them back as a table, query them with SQL."""

    def __init__(self, uri: str | os.PathLike) -> None:
        self.uri = os.fspath(uri)
        if "://" in self.uri:
            try:
                self._fs, root = pafs.FileSystem.from_uri(self.uri)
            except (pa.ArrowException, OSError) as err:
                raise StoreError(f"cannot open results store {self.uri}: {_one_line(err)}") from None
        else:
            self._fs, root = pafs.LocalFileSystem(), os.path.abspath(self.uri)
        self._root = root.rstrip("/")
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        # An object store shows an upload only once it is complete; a disk (and HDFS) shows a file as it grows.
        self._renames = isinstance(self._fs, (pafs.LocalFileSystem, pafs.HadoopFileSystem))
        self._texts_uri = None if self._local else _texts_uri(self.uri)

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Store `rows`, replacing any rows already stored for the same run and evaluation.

        Rows are completed by `make_row` and grouped by (experiment, stage, run_id, eval); each group
        becomes one file, so all of one evaluation's rows (every test set) go in one call. A store that
        is not a local folder first copies the local files the rows name in `TEXT_COLUMNS` into
        `texts/` (each once, and none it holds already), and the rows name the copies. Every group is
        checked, and every text file read, before the first file is written: a bad row or a missing
        text file leaves the store as it was.
        """
        groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
        for row in rows:
            row = make_row(**row)
            groups.setdefault((row["experiment"], row["stage"], row["run_id"], row["eval"]), []).append(row)
        files = []
        for key, group in groups.items():
            table = _to_table(group)  # first: it checks that the values naming the file are strings
            files.append((self._path(*key), table))
        texts = {} if self._local else self._texts_of([table for _, table in files])
        for text in texts.values():
            self._store_text(text)
        for path, table in files:
            self._write(path, _parquet_bytes(_naming_copies(table, texts)))

    def table(self, experiment: str | None = None, filters: pc.Expression | list | None = None) -> pa.Table:
        """The stored rows (of one experiment, if given) matching `filters`, as a table of `SCHEMA`.

        `filters` is a `pyarrow.compute.Expression` or pyarrow's DNF list form, e.g.
        `[("policy", "=", "xattn"), ("seed", "in", [1, 2])]`. An empty store gives an empty table.
        Rows of older schema versions come as the current version's (`_as_current`), and the filters
        see them so.
        """
        import pyarrow.dataset as ds  # here, not above: it imports pandas, which most commands never need

        expression = _filter_expression(filters)
        directory = self._root if experiment is None else f"{self._root}/{_partition('experiment', experiment)}"
        try:
            listed = self._fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
            # List, then read: a stored file is only ever replaced whole, never removed, and a writer's
            # file in progress is hidden (a local temporary) or absent (an upload not yet complete), so
            # every listed file stays readable. Text copies (`texts/`) are not results files.
            paths = sorted(info.path for info in listed
                           if info.type == pafs.FileType.File and _is_results_file(info.base_name))
            dataset = ds.FileSystemDataset.from_paths(paths, schema=_READ_SCHEMA, format=ds.ParquetFileFormat(),
                                                      filesystem=self._fs)
            # Reading through one schema orders and types the columns, and fills any column a file lacks with
            # nulls: the retired ones in files of today's version, today's new ones in older files.
            rows = _as_current(dataset.to_table())
            return rows if expression is None else rows.filter(expression)
        except (pa.ArrowException, OSError) as err:
            unknown = _UNKNOWN_COLUMN.search(str(err))  # pyarrow's own message goes on to list the whole schema
            if unknown:
                raise StoreError(f"results filters name an unknown column: {unknown.group(1)!r}") from None
            raise StoreError(f"cannot read results store {self.uri}: {_one_line(err)}") from None

    def read(self, experiment: str | None = None, filters: pc.Expression | list | None = None) -> pandas.DataFrame:
        """`table(experiment, filters)` as a pandas DataFrame (`options` as dicts)."""
        return self.table(experiment, filters).to_pandas(maps_as_pydicts="strict")

    def check_exists(self) -> None:
        """Raise `StoreError` unless the store's folder is there (a store no study wrote to is not)."""
        try:
            kind = self._fs.get_file_info(self._root).type
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"cannot open results store {self.uri}: {_one_line(err)}") from None
        if kind == pafs.FileType.NotFound:
            raise StoreError(f"results store {self.uri} does not exist")
        if kind != pafs.FileType.Directory:
            raise StoreError(f"results store {self.uri} is not a folder")

    def read_text(self, uri: str) -> str:
        """The text of a file a row names in `TEXT_COLUMNS`: a local path, or this store's copy.

        Anything else (another store's object, a URL), a file that is gone, and bytes that are not
        UTF-8 are a `StoreError`. The text is returned as stored, line ends included.
        """
        if "://" not in uri:
            return read_local_text(uri)
        key = self._copy_key(uri)
        if key is None:
            raise StoreError(f"{uri} is neither a local file nor a text of results store {self.uri}")
        try:
            with self._fs.open_input_stream(f"{self._root}/texts/{key}") as stream:
                return _decoded(stream.readall(), uri)
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"cannot read {uri}: {_one_line(err)}") from None

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether the local `path` is inside this store's folder (where only writers of rows may write)."""
        if not self._local:
            return False
        return Path(path).resolve().is_relative_to(Path(self._root).resolve())

    def sql_table(self, query: str) -> pa.Table:
        """The answer to one DuckDB SELECT `query` over the stored rows, which it sees as the table `results`.

        Anything but exactly one SELECT (a COPY, ATTACH, SET, PRAGMA, CREATE, a second statement) is a
        `QueryError`, and so is a SELECT that reaches past the rows (`read_text`, `read_parquet`, `glob`).
        """
        with duckdb.connect(":memory:") as parser:
            try:
                statements = parser.extract_statements(query)
            except duckdb.Error as err:
                raise QueryError(_one_line(err)) from None
        kinds = [statement.type.name for statement in statements]
        if kinds != ["SELECT"]:
            got = f"{len(kinds)} statements" if len(kinds) != 1 else kinds[0]
            raise QueryError(f"only one SELECT over the table `results` is allowed (got {got})")
        with _query_connection(self.table()) as connection:
            return _answer(lambda: connection.sql(query))

    def select(self, experiment: str | None = None, where: str | None = None, columns: list[str] | None = None,
               order_by: Iterable[str] = ()) -> pa.Table:
        """The rows (of one experiment, if given) where the SQL condition `where` holds, sorted, some columns.

        `where` is parsed as one expression (`policy = 'xattn' AND seed > 1`, subqueries over `results`
        included): text that is not one expression, or that fails, is a `QueryError`; an unknown name
        in `columns` or `order_by` is a `StoreError`.
        """
        for name in [*(columns or ()), *order_by]:
            if name not in SCHEMA.names:
                close = difflib.get_close_matches(name, SCHEMA.names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise StoreError(f"unknown results column {name!r}{hint}")
        try:
            condition = duckdb.SQLExpression(where) if where is not None else None
        except duckdb.Error as err:
            raise QueryError(_one_line(err)) from None

        def answer() -> duckdb.DuckDBPyRelation:
            rows = connection.table("results")
            rows = rows.filter(condition) if condition is not None else rows
            rows = rows.sort(*map(duckdb.ColumnExpression, order_by)) if order_by else rows
            return rows.project(*map(duckdb.ColumnExpression, columns)) if columns else rows

        with _query_connection(self.table(experiment)) as connection:
            return _answer(answer)

    def sql(self, query: str) -> pandas.DataFrame:
        """`sql_table(query)` as a pandas DataFrame (maps as dicts)."""
        return self.sql_table(query).to_pandas(maps_as_pydicts="strict")

    def _path(self, experiment: str, stage: str, run_id: str, evaluation: str) -> str:
        if not _RUN_ID.fullmatch(run_id):
            raise StoreError(f"run_id {run_id!r} cannot name a file: use letters, digits, '.', '_' and '-', "
                             f"starting with a letter or digit")
        return (f"{self._root}/{_partition('experiment', experiment)}/{_partition('stage', stage)}/"
                f"{run_id}.{evaluation}.parquet")

    def _texts_of(self, tables: list[pa.Table]) -> dict[str, _Text]:
        """The local files that the `TEXT_COLUMNS` of `tables` name, by name: read, each with its copy's place."""
        texts: dict[str, _Text] = {}
        for table in tables:
            for column in TEXT_COLUMNS:
                for experiment, name in zip(table["experiment"].to_pylist(), table[column].to_pylist()):
                    if name is None or name in texts or self._copy_key(name) is not None:
                        continue  # none, read already, or a copy this store holds (rows read and written again)
                    if "://" in name:
                        raise StoreError(f"results column {column!r} names {name}: neither a local file "
                                         f"nor a text of results store {self.uri}")
                    data = _read_local(name)
                    key = f"{_partition('experiment', experiment)}/{hashlib.sha256(data).hexdigest()}.txt"
                    texts[name] = _Text(f"{self._root}/texts/{key}", f"{self._texts_uri}/{key}", data)
        return texts

    def _copy_key(self, uri: str) -> str | None:
        """Where below `texts/` the copy that `uri` names lies, or None if `uri` names no copy of this store."""
        key = uri.removeprefix(f"{self._texts_uri}/") if self._texts_uri else uri
        return key if key != uri and _TEXT_KEY.fullmatch(key) else None

    def _store_text(self, text: _Text) -> None:
        """Copy `text` into the store unless it is there: a copy named by its content is that content."""
        try:
            stored = self._fs.get_file_info(text.path).type == pafs.FileType.File
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"cannot write {text.path}: {_one_line(err)}") from None
        if not stored:
            self._write(text.path, text.data)

    def _write(self, path: str, data: bytes | pa.Buffer) -> None:
        """Put `data` at `path` so that no reader ever sees part of it, nor a crash leaves part of it."""
        if not self._renames:
            # An object store shows an upload at its key only once it completes (a PUT, or a multipart
            # upload's last request). The bytes are whole before the upload starts: pyarrow's stream cannot
            # be aborted, and closing it on an error would complete the upload with what it had.
            try:
                with self._fs.open_output_stream(path) as stream:
                    stream.write(data)
            except (pa.ArrowException, OSError) as err:
                raise StoreError(f"cannot write {path}: {_one_line(err)}") from None
            return
        directory, name = path.rsplit("/", 1)
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}"  # unique: concurrent writers never share one
        try:
            self._fs.create_dir(directory, recursive=True)
            with self._fs.open_output_stream(temporary) as stream:
                stream.write(data)
            if self._local:
                _flush_to_disk(temporary)  # else a power cut after the rename could leave an empty file
            self._fs.move(temporary, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                self._fs.delete_file(temporary)
            if isinstance(err, OSError):
                raise StoreError(f"cannot write {path}: {_one_line(err)}") from None
            raise


_READ_SCHEMA = pa.schema([*SCHEMA, *RETIRED])  # what a reader takes from a file of any version


def _as_current(rows: pa.Table) -> pa.Table:
    """`rows` read through `_READ_SCHEMA` as rows of the current `SCHEMA`.

    Version 1's JSON `valid_curve` becomes `valid_losses`, and a version-1 row's `options` are those its
    `hparams` record (a version-1 row that newer code wrote again, as a search relabelling its rows does,
    holds both already). `train_size` stays as stored: `schema_version` tells which meaning it has.
    """
    converted = {}
    try:
        if rows["valid_curve"].null_count < rows.num_rows:  # some files of version 1
            converted["valid_losses"] = [
                _points_of_json(text) if points is None and text is not None else points
                for points, text in zip(rows["valid_losses"].to_pylist(), rows["valid_curve"].to_pylist())]
        if pc.any(pc.equal(rows["schema_version"], 1)).as_py():
            converted["options"] = [
                _options_of_hparams(record) if given is None and version == 1 and record is not None else given
                for given, version, record in zip(rows["options"].to_pylist(), rows["schema_version"].to_pylist(),
                                                  rows["hparams"].to_pylist())]
    except (ValueError, TypeError, AttributeError) as err:
        raise StoreError(f"a version-1 row holds damaged JSON: {_one_line(err)}") from None
    for name, values in converted.items():
        field = SCHEMA.field(name)
        rows = rows.set_column(rows.schema.get_field_index(name), field, pa.array(values, field.type))
    return rows.select(SCHEMA.names)


def _points_of_json(text: str) -> list[dict[str, Any]]:
    """Version 1's `valid_curve`, `[[update, valid_loss], ...]`, as the points of `valid_losses`."""
    return [{"update": int(update), "valid_loss": float(loss)} for update, loss in json.loads(text)]


def _options_of_hparams(text: str) -> dict[str, float] | None:
    """The grid or search values a run's `hparams` JSON records, or None when it records none."""
    options = json.loads(text).get("options")
    return None if options is None else {name: float(value) for name, value in sorted(options.items())}


@dataclass(frozen=True)
class _Text:
    """A local text file on its way into a store: where its copy goes, how rows name the copy, its bytes."""

    path: str
    uri: str
    data: bytes


def read_local_text(path: str | os.PathLike) -> str:
    """The text of the local file `path`, as stored; a file that is gone or not UTF-8 is a `StoreError`."""
    return _decoded(_read_local(path), path)


def _read_local(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror or err}") from None


def _decoded(data: bytes, name: str | os.PathLike) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{name} is not UTF-8 text") from None


def _texts_uri(uri: str) -> str:
    """How rows name the text copies of the store at `uri`: its URI without credentials or options, + `/texts`."""
    parts = urllib.parse.urlsplit(uri)
    location = parts.netloc.rpartition("@")[2] + parts.path
    return f"{parts.scheme}://{location.rstrip('/')}/texts"


def _naming_copies(table: pa.Table, texts: dict[str, _Text]) -> pa.Table:
    """`table` whose `TEXT_COLUMNS` name the store's copies of `texts` instead of the local files."""
    if not texts:
        return table
    for column in TEXT_COLUMNS:
        names = [texts[name].uri if name in texts else name for name in table[column].to_pylist()]
        index = table.schema.get_field_index(column)
        table = table.set_column(index, SCHEMA.field(column), pa.array(names, pa.string()))
    return table


def _parquet_bytes(table: pa.Table) -> pa.Buffer:
    """`table` as the bytes of a Parquet file, built whole in memory (a results file is small)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """`rows` as a table of `SCHEMA`; a value of the wrong type or a missing required one is an error."""
    where = f"(run {rows[0]['run_id']!r}, eval {rows[0]['eval']!r})"
    columns = []
    for field in SCHEMA:
        values = [row[field.name] for row in rows]
        for value in values:
            if value is None and not field.nullable:
                raise StoreError(f"results column {field.name!r} is required {where}")
            if value is not None and not _fits(field.type, value):
                raise StoreError(f"results column {field.name!r} takes {_kind(field.type)}, "
                                 f"not {type(value).__name__} {value!r} {where}")
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowException, OverflowError) as err:  # e.g. an integer beyond 64 bits
            raise StoreError(f"results column {field.name!r}: {_one_line(err)} {where}") from None
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _fits(type_: pa.DataType, value: Any) -> bool:
    # Checked here rather than by pyarrow, which would silently truncate 1.5 to an integer 1.
    if isinstance(value, bool):
        return False  # a flag is not a number, though Python counts it as one
    if pa.types.is_integer(type_):
        return isinstance(value, numbers.Integral)
    if pa.types.is_floating(type_):
        return isinstance(value, numbers.Real)
    if pa.types.is_timestamp(type_):
        return isinstance(value, datetime)
    if pa.types.is_map(type_):  # a dict, or the (key, value) pairs that pyarrow's `to_pylist` gives
        items = value.items() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else None
        return items is not None and all(isinstance(item, tuple) and len(item) == 2 and _fits(type_.key_type, item[0])
                                         and _fits(type_.item_type, item[1]) for item in items)
    if pa.types.is_list(type_):
        return isinstance(value, (list, tuple)) and all(_fits(type_.value_type, item) for item in value)
    if pa.types.is_struct(type_):
        return (isinstance(value, Mapping) and set(value) == set(type_.names)
                and all(_fits(field.type, value[field.name]) for field in type_))
    return isinstance(value, str)


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_integer(type_):
        return "an integer"
    if pa.types.is_floating(type_):
        return "a number"
    if pa.types.is_map(type_):
        return f"a dict from {_kind(type_.key_type)} to {_kind(type_.item_type)}"
    if pa.types.is_list(type_):
        return f"a list of {_kind(type_.value_type)}"
    if pa.types.is_struct(type_):
        return "{" + ", ".join(f"{field.name}: {_kind(field.type)}" for field in type_) + "}"
    return "a datetime" if pa.types.is_timestamp(type_) else "a string"


def _partition(column: str, value: str) -> str:
    """A Hive partition directory name; the value is URI-escaped, as Hive readers expect."""
    return f"{column}={urllib.parse.quote(value, safe='')}"


def _is_results_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _filter_expression(filters: pc.Expression | list | None) -> pc.Expression | None:
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    try:
        return pq.filters_to_expression(filters)
    except (TypeError, ValueError) as err:
        raise StoreError(f"results filters {filters!r}: {_one_line(err)}") from None


def _flush_to_disk(path: str) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


@contextlib.contextmanager
def _query_connection(rows: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB that sees `rows` as the table `results`, and nothing outside this process."""
    with duckdb.connect(":memory:") as connection:  # in memory: nothing a query does outlives the call
        connection.execute("SET TimeZone = 'UTC'")  # times come back in UTC, as they were written
        connection.register("results", rows)
        # The rows are in; from here no query reaches a file, a URL, an extension or a Python variable
        # (DuckDB's replacement scans), and the lock keeps any query from switching these back.
        connection.execute("SET python_enable_replacements = false")
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        yield connection


def _answer(relation: Callable[[], duckdb.DuckDBPyRelation]) -> pa.Table:
    """The table of the relation that `relation()` builds; DuckDB's errors become one-line `QueryError`s."""
    try:
        return relation().to_arrow_table()
    except duckdb.Error as err:
        raise QueryError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
