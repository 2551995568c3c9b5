"""What the tests share besides fixtures: where things are, and the CLI run as a user runs it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
EXPERIMENTS = PROJECT / "experiments"
# `../shared/data` relative to the project root: Multi30k and MUSE, never copied into the repository.
SHARED_DATA = PROJECT.parent / "shared" / "data"

requires_multi30k = pytest.mark.skipif(
    not (SHARED_DATA / "multi30k" / "train.fr.gz").is_file(),
    reason=f"real Multi30k data not found at {SHARED_DATA / 'multi30k'} (the shared data folder beside the project)",
)

requires_muse = pytest.mark.skipif(
    not (SHARED_DATA / "muse" / "de-fr.0-5000.txt").is_file(),
    reason=f"real MUSE dictionaries not found at {SHARED_DATA / 'muse'} (the shared data folder beside the project)",
)


def lay_sacrebleu_release(cache: Path, name: str, pair: str, documents: list[tuple[str, list[tuple[str, str]]]]):
    """Put a WMT test set into sacreBLEU's cache `cache` as sacreBLEU leaves it after downloading it: the
    release archive under `<name>/raw/`, and beside it the SGML files it extracted (the real format:
    `<doc ... origlang=..>` around `<seg id=..>` lines), which sacreBLEU turns into plain text when asked.

    `documents`: (the language it was first written in, its (source, reference) sentences), in order; the
    file names come from sacreBLEU's own record of the set (a set with SGML files, WMT08 to WMT20). The
    sentences are written as they are (no `<`, `&` in them, as SGML would need escaped)."""
    import io
    import tarfile

    from sacrebleu.dataset import DATASETS

    dataset = DATASETS[name]
    (source_file, reference_file), (url,) = dataset.langpairs[pair], dataset.data
    raw = cache / name / "raw"

    def sgml(side: int, root: str) -> bytes:
        lines = [f'<{root} setid="{name}" srclang="any">']
        for d, (origlang, sentences) in enumerate(documents):
            lines.append(f'<doc sysid="ref" docid="doc{d}" genre="news" origlang="{origlang}">')
            lines += [f'<seg id="{i + 1}">{sentence[side]}</seg>' for i, sentence in enumerate(sentences)]
            lines.append("</doc>")
        return "".join(line + "\n" for line in [*lines, f"</{root}>"]).encode()

    archive = raw / f"{name.replace('/', '_')}.{url.rsplit('/', 1)[-1]}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for member, text in ((source_file, sgml(0, "srcset")), (reference_file, sgml(1, "refset"))):
            info = tarfile.TarInfo(member)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    with tarfile.open(archive) as tar:
        tar.extractall(raw, filter="data")


def places(value, path=()):
    """Every (path, value) of a nested structure of dicts and lists, containers included, the root first
    (its path is `()`): where a mutation test can change a loaded YAML document."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from places(item, path + (i,))


def xattn_ray(*args, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
              input: str | bytes | None = None) -> subprocess.CompletedProcess:
    """`xattn-ray ARGS` in a subprocess; its output is captured as text.

    RAY_ADDRESS=local gives each command a Ray instance of its own even while another test's `ray start`
    head runs on this machine; `env` adds to (or overrides) the environment. `input` is standard input:
    text, or bytes given to the command as they are (e.g. bytes that are not UTF-8).
    """
    text = not isinstance(input, bytes)
    done = subprocess.run([sys.executable, "-m", "xattn_ray", *map(str, args)], input=input, capture_output=True,
                          text=text, cwd=cwd, timeout=timeout,
                          env={**os.environ, "RAY_ADDRESS": "local", **(env or {})})
    if not text:  # the output is still read as text, as for every other command
        done.stdout, done.stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return done


# -- studies run by the tests: their run folders, their rows, their processes --------------------------

def summaries(storage: Path, name: str) -> dict[str, dict]:
    """Each finished run's `result.json` of the study `name` under `storage`, by run id."""
    return {path.parent.name: json.loads(path.read_text())
            for path in (storage / name / "runs").glob("*/result.json")}


def assert_exactly_once(store: Path, name: str, runs: int) -> None:
    """The store holds one train row and one test row per run of `name`, never two."""
    from xattn_ray.store import ResultsStore

    rows = ResultsStore(store).read(experiment=name)
    train_rows = rows[rows["eval"] == "train"]
    assert sorted(train_rows["run_id"]) == sorted(set(train_rows["run_id"])) and len(train_rows) == runs
    tests = rows[rows["eval"] == "test"]
    assert not tests.duplicated(["run_id", "test_set"]).any() and len(tests) == runs


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    """Poll `condition` until it returns something true (returned); fail after `timeout` seconds, or
    as soon as `process` (the study) has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = "".join(stream.read() or "" for stream in (process.stdout, process.stderr) if stream)
            raise AssertionError(f"the study ended before {what}: {output}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trial_processes(marker: str) -> list[int]:
    """Pids of Ray worker processes running a Tune function trial of the study started with env `marker`
    (Ray's processes inherit the driver's environment; other studies on the machine are left alone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
                environment = (entry / "environ").read_bytes()
            except OSError:
                continue
            if b"ray::ImplicitFunc" in command and marker.encode() in environment:
                found.append(int(entry.name))
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_head(head: subprocess.Popen) -> None:
    """End a head started with `ray start --head --block` in a session of its own, and exactly its
    processes (its nodes' too): `ray stop` would end every Ray instance on the machine."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
