"""The results store on a real S3-protocol server: moto's, in its own process on a free port of 127.0.0.1.

Every client finds it as an AWS client finds any endpoint, through AWS_ENDPOINT_URL (pyarrow in this
process, boto3 here to look at the bucket, and the `xattn-ray` commands in theirs). The tests write
rows with translation and reference files, rewrite them as a retried trial does, query them, run the
`results` and `report` commands after the run folders are deleted, watch the HTTP requests a write
makes, and kill writers in the middle of an upload.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from sacrebleu.metrics import BLEU

from xattn_ray.report.rows import StoredTexts
from xattn_ray.report.significance import significance
from xattn_ray.store import ResultsStore, StoreError, make_row

from support import assert_exactly_once, free_port, summaries, trial_processes, wait_for, xattn_ray

BUCKET = "xattn-results"
EXPERIMENT = "s3study"
REFERENCES = [f"sentence {i} of the test set has some words" for i in range(40)]
SHARE_RIGHT = dict(scratch=0.0, body=1.0, xattn=0.5)  # of each policy's translations, the share that is right
RESULTS_KEY = re.compile(r"experiment=[^/]+/stage=[^/]+/[A-Za-z0-9][A-Za-z0-9._-]*\.[a-z]+\.parquet")
TEXT_KEY = re.compile(r"texts/experiment=[^/]+/[0-9a-f]{64}\.txt")


# --- the server -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> dict[str, str]:
    """A moto S3 server with the bucket BUCKET; the environment that points every AWS client at it
    (set in this process for the module, and given to the commands' processes)."""
    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with open(folder / "server.log", "w") as log:
        # The recorder (moto's own) logs every request the server gets, for the test of what a write sends.
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  env={**os.environ, **env, "MOTO_RECORDER_FILEPATH": str(folder / "requests")},
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            wait_until_serving(server, folder / "server.log")
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_serving(server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            boto3.client("s3").list_buckets()
            return
        except Exception:  # not listening yet
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


def objects(prefix: str) -> dict[str, int]:
    """The objects under `prefix/` in BUCKET (key relative to the prefix: size), as any S3 client lists them."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return {item["Key"].removeprefix(f"{prefix}/"): item["Size"] for page in pages for item in page.get("Contents", [])}


def pending_uploads(prefix: str) -> list[str]:
    """Keys of the multipart uploads begun under `prefix/` and neither completed nor aborted."""
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", [])
    return [upload["Key"] for upload in uploads]


# --- a small study's rows and files ------------------------------------------------------------------

def row(run_id: str, stage: str, evaluation: str, **fields) -> dict:
    return make_row(experiment=EXPERIMENT, run_id=run_id, stage=stage, eval=evaluation, status="ok", **fields)


def study_rows(folder: Path, seeds=(1,)) -> list[dict]:
    """A transfer study's rows: a parent, and children under scratch, body and xattn per seed, whose test rows
    name files in `folder` as a run's do (its translations; the test set's references), their BLEU as scored."""
    references = folder / "references.synth.txt"
    folder.mkdir(parents=True, exist_ok=True)
    references.write_text("".join(line + "\n" for line in REFERENCES))
    rows = [row("la-pv-s1", "parent", "train", pair="la-pv", seed=1, updates=10),
            row("la-pv-s1", "parent", "test", pair="la-pv", seed=1, test_set="synth", bleu=30.0)]
    for seed in seeds:
        for policy, share in SHARE_RIGHT.items():
            run_id = f"lb-pv-{policy}-s{seed}"
            right = round(share * len(REFERENCES))
            translations = [line if i < right else "nothing alike here" for i, line in enumerate(REFERENCES)]
            hypotheses = folder / run_id / "hypotheses.synth.txt"
            hypotheses.parent.mkdir(exist_ok=True)
            hypotheses.write_text("".join(line + "\n" for line in translations))
            child = dict(pair="lb-pv", parent_pair="la-pv", side="source", policy=policy, seed=seed)
            rows += [row(run_id, "child", "train", **child, updates=10, train_seconds=2.0),
                     row(run_id, "child", "test", **child, test_set="synth", n_evaluated=len(REFERENCES),
                         bleu=BLEU().corpus_score(translations, [REFERENCES]).score,
                         hypotheses_uri=str(hypotheses), references_uri=str(references))]
    return rows


# --- rows and texts --------------------------------------------------------------------------------

def test_a_retried_write_replaces_its_rows_and_texts_are_stored_once(s3, tmp_path):
    store = ResultsStore(f"s3://{BUCKET}/retry")
    first = study_rows(tmp_path / "runs")
    store.write(first)
    store.write(first)  # a retried trial writes the same runs' rows again
    store.write([r for r in study_rows(tmp_path / "runs", seeds=(2,)) if r["seed"] == 2])  # other runs

    rows = store.read(EXPERIMENT)
    assert not rows.duplicated(["run_id", "eval", "test_set"]).any()
    assert len(rows) == 2 + 2 * 2 * len(SHARE_RIGHT)  # the parent's 2 rows, 2 per child run, 2 seeds
    assert sorted(rows["seed"].unique()) == [1, 2]
    assert len(store.read()) == len(rows)  # listing the whole store reads no text copy as rows

    tests = rows[rows["hypotheses_uri"].notna()]
    assert len(tests) == 2 * len(SHARE_RIGHT)
    copies = f"s3://{BUCKET}/retry/texts/experiment={EXPERIMENT}/"
    assert all(uri.startswith(copies) for uri in [*tests["hypotheses_uri"], *tests["references_uri"]])
    assert tests["references_uri"].nunique() == 1  # every run's references: one copy
    # Copies are named by content: seed 2's translations are seed 1's, and body's are the references word
    # for word, so the 12 names of 4 files (2 seeds x 3 translations, references) are 3 objects.
    stored = objects("retry")
    texts = sorted(key for key in stored if key.startswith("texts/"))
    assert texts == sorted(uri.removeprefix(f"s3://{BUCKET}/retry/")
                           for uri in {*tests["hypotheses_uri"], *tests["references_uri"]})
    assert len(texts) == 3
    assert all(RESULTS_KEY.fullmatch(key) or TEXT_KEY.fullmatch(key) for key in stored)

    xattn = tests[tests["run_id"] == "lb-pv-xattn-s1"].iloc[0]
    local = tmp_path / "runs" / "lb-pv-xattn-s1" / "hypotheses.synth.txt"
    assert store.read_text(xattn["hypotheses_uri"]) == local.read_text()


def test_select_and_sql_run_on_s3(s3, tmp_path):
    store = ResultsStore(f"s3://{BUCKET}/queries")
    store.write(study_rows(tmp_path / "runs", seeds=(1, 2)))
    chosen = store.select(EXPERIMENT, where="policy = 'xattn' AND eval = 'test'", columns=["run_id", "seed", "bleu"],
                          order_by=["seed"]).to_pylist()
    half = BLEU().corpus_score(REFERENCES[:20] + ["nothing alike here"] * 20, [REFERENCES]).score
    assert chosen == [dict(run_id="lb-pv-xattn-s1", seed=1, bleu=half),
                      dict(run_id="lb-pv-xattn-s2", seed=2, bleu=half)]
    counts = store.sql("SELECT policy, count(*) AS n FROM results WHERE stage = 'child' GROUP BY ALL ORDER BY ALL")
    assert counts.to_dict("list") == dict(policy=["body", "scratch", "xattn"], n=[4, 4, 4])


def test_texts_are_read_only_from_local_paths_and_the_stores_own_copies(s3, tmp_path):
    store = ResultsStore(f"s3://{BUCKET}/reading")
    store.write(study_rows(tmp_path / "runs"))
    copy = store.read(EXPERIMENT).dropna(subset=["references_uri"])["references_uri"].iloc[0]
    assert store.read_text(copy) == "".join(line + "\n" for line in REFERENCES)
    assert store.read_text(str(tmp_path / "runs" / "references.synth.txt")) == store.read_text(copy)
    name = copy.rsplit("/texts/", 1)[1]
    for foreign in (f"s3://{BUCKET}/other/texts/{name}",  # another store's copy
                    copy.rsplit("/", 1)[0] + "/../../experiment=s3study/stage=child/lb-pv-body-s1.test.parquet",
                    f"s3://{BUCKET}/reading/experiment={EXPERIMENT}/stage=child/lb-pv-body-s1.test.parquet",
                    "https://example.com/references.txt"):
        with pytest.raises(StoreError, match="neither a local file nor a text of results store"):
            store.read_text(foreign)
    with pytest.raises(StoreError, match="cannot read"):
        store.read_text(copy.replace(name[-68:], "0" * 64 + ".txt"))  # the store's kind of name, no such copy
    assert StoredTexts(store).lines(f"s3://{BUCKET}/other/texts/{name}") is None  # the report: "unreadable"


def test_rows_name_copies_by_the_stores_location_without_credentials_or_options(s3, tmp_path):
    spelled = ResultsStore(f"s3://testing:testing@{BUCKET}/options/?region=us-east-1")
    spelled.write(study_rows(tmp_path / "runs"))
    plain = ResultsStore(f"s3://{BUCKET}/options")
    names = plain.read(EXPERIMENT).dropna(subset=["hypotheses_uri"])["hypotheses_uri"]
    assert all(re.fullmatch(rf"s3://{BUCKET}/options/{TEXT_KEY.pattern}", name) for name in names), list(names)
    assert plain.read_text(names.iloc[0]) == spelled.read_text(names.iloc[0])


def test_a_local_store_keeps_the_runs_own_paths(tmp_path):
    store = ResultsStore(tmp_path / "results")
    rows = study_rows(tmp_path / "runs")
    store.write(rows)
    stored = store.read(EXPERIMENT).dropna(subset=["hypotheses_uri"])
    assert sorted(stored["hypotheses_uri"]) == sorted(r["hypotheses_uri"] for r in rows if r["hypotheses_uri"])
    assert not (tmp_path / "results" / "texts").exists()


def test_rows_naming_a_missing_or_foreign_text_leave_the_store_as_it_was(s3, tmp_path):
    store = ResultsStore(f"s3://{BUCKET}/refused")
    rows = study_rows(tmp_path / "runs")
    (tmp_path / "runs" / "lb-pv-xattn-s1" / "hypotheses.synth.txt").unlink()
    with pytest.raises(StoreError, match=r"cannot read .*lb-pv-xattn-s1/hypotheses\.synth\.txt"):
        store.write(rows)
    foreign = [dict(r, hypotheses_uri="s3://elsewhere/x.txt") if r["hypotheses_uri"] else r
               for r in study_rows(tmp_path / "again")]
    with pytest.raises(StoreError, match="names s3://elsewhere/x.txt: neither a local file nor a text"):
        store.write(foreign)
    assert objects("refused") == {}


# --- how a file reaches the store --------------------------------------------------------------------

def test_a_write_uploads_each_file_to_its_final_key_and_nothing_else(s3, tmp_path):
    """No hidden temporary object, no copy, no delete: S3 shows an upload only once it is complete."""
    store = ResultsStore(f"s3://{BUCKET}/direct")
    rows = study_rows(tmp_path / "runs")
    recorder = f"{s3['AWS_ENDPOINT_URL']}/moto-api/recorder"
    for action in ("reset-recording", "start-recording"):
        urllib.request.urlopen(urllib.request.Request(f"{recorder}/{action}", method="POST"), timeout=30)
    try:
        store.write(rows)
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{recorder}/stop-recording", method="POST"), timeout=30)
    with urllib.request.urlopen(f"{recorder}/download-recording", timeout=30) as answer:
        requests = [json.loads(line) for line in answer.read().decode().splitlines() if line]
    writes = [r for r in requests if r["method"] in ("PUT", "POST", "DELETE")]
    keys = [urllib.parse.unquote(urllib.parse.urlsplit(r["url"]).path).removeprefix(f"/{BUCKET}/direct/")
            for r in writes]
    assert set(keys) == set(objects("direct"))  # every request that writes is to a key the store keeps
    # A file per run and evaluation, and the texts: 3 translations, of which body's are the references.
    assert len(set(keys)) == 2 + 2 * len(SHARE_RIGHT) + 3
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(r["url"]).query, keep_blank_values=True) for r in writes]
    begun = [key for key, r, query in zip(keys, writes, queries)
             if (r["method"] == "PUT" and "partNumber" not in query) or (r["method"] == "POST" and "uploads" in query)]
    assert sorted(begun) == sorted(set(keys))  # one upload each: a PutObject, or a multipart upload's start
    assert not [r for r in writes if r["method"] == "DELETE"]
    assert not [r for r in writes if any(name.lower() == "x-amz-copy-source" for name in r["headers"])]


def test_an_error_while_a_file_is_built_leaves_no_object(s3, tmp_path, monkeypatch):
    store = ResultsStore(f"s3://{BUCKET}/failed")
    real = pq.write_table

    def cut_short(table, where, *args, **kwargs):  # writes a whole file of the first row, then fails
        real(table.slice(0, 1), where, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", cut_short)
    rows = [r for r in study_rows(tmp_path / "runs") if r["stage"] == "parent"]
    with pytest.raises((OSError, StoreError)):
        store.write(rows)
    assert objects("failed") == {} and pending_uploads("failed") == []


WRITER = """
import secrets, sys
from xattn_ray.store import ResultsStore

# One run's evaluation of 1500 rows of 32 kB each: a ~48 MB Parquet file, one upload of several seconds.
rows = [dict(experiment="killed", run_id=sys.argv[2], stage="child", eval="test", status="failed", test_set=f"t{i}",
             error=secrets.token_hex(16_000)) for i in range(1500)]
ResultsStore(sys.argv[1]).write(rows)
"""


def test_a_writer_killed_mid_upload_leaves_no_partial_object(s3):
    """SIGKILL while a results file is on its way: the store shows the files written before, whole, and
    nothing of the killed writer's (its multipart upload stays unfinished, which S3 never shows)."""
    prefix = "killed"
    store = ResultsStore(f"s3://{BUCKET}/{prefix}")
    store.write([make_row(experiment="killed", run_id="small-s1", stage="child", eval="test", status="ok",
                          test_set=name, bleu=1.0) for name in ("a", "b")])

    def file_of(run_id: str) -> str:
        return f"experiment=killed/stage=child/{run_id}.test.parquet"

    attempted, finished = [], []
    for attempt in range(3):  # a writer that finishes before it is killed (a fast upload) is tried again
        run_id = f"big-{attempt}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, store.uri, run_id], env={**os.environ, **s3},
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while (writer.poll() is None and f"{prefix}/{file_of(run_id)}" not in pending_uploads(prefix)
               and time.monotonic() < deadline):
            time.sleep(0.02)
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)  # its upload has begun
        _, errors = writer.communicate(timeout=60)
        assert writer.returncode in (0, -signal.SIGKILL), errors
        attempted.append(run_id)
        if writer.returncode == 0:
            finished.append(run_id)
        if sum(f"{prefix}/{file_of(r)}" in pending_uploads(prefix) for r in attempted) == 2:
            break
    # A writer killed just after its last request may have the server still completing its upload: judge
    # the store once that has settled.
    time.sleep(2)
    stored, pending = objects(prefix), pending_uploads(prefix)
    killed = [r for r in attempted if f"{prefix}/{file_of(r)}" in pending and file_of(r) not in stored]
    assert killed, "no writer was killed while its upload was under way"
    assert all(file_of(r) in stored for r in finished)
    # the files written to the end (before the kill, or completed by the server after it): their rows
    whole = {"small-s1": 2} | {r: 1500 for r in attempted if file_of(r) in stored}
    assert sorted(stored) == sorted(file_of(run_id) for run_id in whole)  # nothing else, nothing partial
    client = boto3.client("s3")
    for run_id, rows in whole.items():  # each file is whole: it parses, with every row of its group
        data = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{file_of(run_id)}")
        assert pq.read_table(io.BytesIO(data["Body"].read())).num_rows == rows
    assert store.read("killed").groupby("run_id").size().to_dict() == whole


# --- the commands, from a machine without the run folders --------------------------------------------

def test_results_and_report_commands_need_no_run_folders(s3, tmp_path):
    uri = f"s3://{BUCKET}/commands"
    ResultsStore(uri).write(study_rows(tmp_path / "runs", seeds=(1, 2)))
    shutil.rmtree(tmp_path / "runs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    listed = xattn_ray("results", "--store", uri, "--experiment", EXPERIMENT, "--where", "eval = 'test'",
                       "--columns", "run_id,seed,test_set,hypotheses_uri", "--format", "csv", cwd=elsewhere, env=s3)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1 + 1 + 2 * len(SHARE_RIGHT)  # a header, the parent's test row, the children's
    assert re.search(rf"^lb-pv-xattn-s2,2,synth,s3://{BUCKET}/commands/texts/experiment={EXPERIMENT}/[0-9a-f]{{64}}"
                     r"\.txt$", listed.stdout, re.MULTILINE), listed.stdout

    done = xattn_ray("report", "--store", uri, "--experiment", EXPERIMENT, "--out", elsewhere / "report", cwd=elsewhere,
                     env=s3, timeout=300)
    assert done.returncode == 0, done.stderr
    report = (elsewhere / "report" / "report.md").read_text()
    significance_section = report.split("## Significance against body", 1)[1].split("\n## ", 1)[0]
    assert "no readable reference file" not in report and "hypotheses file missing" not in report
    # Body's translations are all right, xattn's half, scratch's none: every seed's test finds the difference,
    # on BLEU and on chrF.
    for policy in ("scratch", "xattn"):
        for seed in (1, 2):
            assert re.search(rf"\| lb-pv \| {policy} \| {seed} \| [^|]+ \| 0\.\d{{3}}\* \| [^|]+ \| 0\.\d{{3}}\* \|",
                             significance_section), significance_section
    assert list(elsewhere.iterdir()) == [elsewhere / "report"]  # nothing written beside it


def test_significance_reads_the_translations_through_the_store(s3, tmp_path):
    store = ResultsStore(f"s3://{BUCKET}/bootstrap")
    store.write(study_rows(tmp_path / "runs"))
    shutil.rmtree(tmp_path / "runs")
    tests = significance(store.read(EXPERIMENT), StoredTexts(store)).set_index("policy")
    assert tests["note"].isna().all(), tests["note"].tolist()
    assert tests.loc["xattn", "p_value"] < 0.05 and tests.loc["scratch", "p_value"] < 0.05
    assert tests.loc["scratch", "bleu"] == pytest.approx(0.0, abs=1.0)


@pytest.mark.slow
def test_a_study_on_s3_writes_each_row_once_through_a_killed_trial_s_retry(s3, tmp_path, tiny_study):
    """`xattn-ray run --store s3://...` on the embedded Ray: the parent's trial is killed once and retried from
    its checkpoint; the store then holds one row per key, and the run's console findings read their texts
    from the store."""
    study = tiny_study(tmp_path, grid="grid: {policies: [body, xattn], seeds: [1]}", updates=200, every=20)
    store = f"s3://{BUCKET}/study"
    marker = f"XATTN_TEST_STUDY={tmp_path}"
    process = subprocess.Popen([sys.executable, "-m", "xattn_ray", "run", str(study), "--storage", "st", "--store", store,
                                "--num-cpus", "2", "--progress-every", "1000"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **s3, "RAY_ADDRESS": "local", "XATTN_TEST_STUDY": str(tmp_path)})
    try:
        wait_for(lambda: next((tmp_path / "st" / "tiny" / "runs").glob("*/last.pt"), None), 300, "a checkpoint",
                 process)
        for pid in wait_for(lambda: trial_processes(marker), 60, "the parent's trial", process):
            os.kill(pid, signal.SIGKILL)
        output, errors = process.communicate(timeout=900)
    finally:
        process.kill()
    assert process.returncode == 0, output + errors
    assert len(summaries(tmp_path / "st", "tiny")) == 5
    assert_exactly_once(store, "tiny", 5)
    assert not (tmp_path / "st" / "results").exists()  # every row went to the bucket
    tests = [line for line in output.splitlines() if "bootstrap" in line]
    assert "(1) xattn within 2 BLEU of body:" in output and tests, output
    assert not any("bootstrap: not run" in line for line in tests), tests
