"""Data at the paper's scale: memory and start-up time of a parent run as its corpus grows (issue 14).

For synthetic families of 0.1M, 1M and 4M lines (`--sizes`), one `tiny` parent run (la->pv on all of
the family's training lines, `--updates` updates, one validation, beam-1 test decoding of 200
sentences, a fixed 8000-piece vocabulary) is measured without Ray, one process per measurement:

- trial peak memory and time to the first update: `xattn-ray train STUDY --run la-pv` is the work of
  one trial. Its stderr is read line by line as it arrives; the time from launch to the line holding
  `update 1 done` is the time to the first update. Peak memory is the kernel's high-water RSS of the
  process (`wait4`'s ru_maxrss), or the RSS of its process tree polled every 50 ms if that is higher.
  Beside it, the peak *anonymous* memory of the tree (RssAnon in /proc/PID/status, polled every 50 ms):
  the memory the trial holds itself. The difference is file pages: mostly the memory-mapped token
  shard, whose pages count in RSS once touched (the kernel maps 64 KB around each page a batch reads),
  but which are page cache, one copy shared by every trial and DDP worker on the node that maps the
  same shard, and dropped by the kernel under memory pressure. The trial-memory target is checked on
  the anonymous peak; both are printed.
  *Cold*: a fresh storage folder, so tokenizers and the token shard are built. *Warm*: the same
  storage with everything but `cache/` deleted, so the run trains again from the cached shard;
  repeated `--repeats` times, the median is reported (the machines are shared and noisy).
- shard build throughput and size: from the cold run's log line `shard built: N pairs, T tokens,
  B bytes in S s (P pairs/s): PATH` (the largest shard, the training one), and the size on disk of
  `STORAGE/cache/shards`.
- driver peak memory: `xattn-ray validate STUDY` (the data checks the driver of `xattn-ray run`
  makes before any trial) on a fresh storage folder, high-water RSS as above.
- shard built once per child slice: at the smallest size, the child lb->pv trained in turn under
  `scratch`, `body`, `xattn` and `randxattn` in one storage; the first must log `shard built` for its
  slice, the other three none (sequential: whether concurrent trials build it once is a test's job).

Then the figures are projected to 36M pairs (the paper's WMT parent) by least-squares lines over the
measured sizes; a projection, not a measurement. Targets (2 cores): trial peak memory at the largest
size within 1.2x of the smallest; driver at most 400 MB at 4M lines; warm time to update 1 at most
15 s at every size; shard build at least 40k pairs/s; the child slice's shard built once.

A code version without these log lines (the data path before issue 14) degrades gracefully: n/a,
and the time to update 1 is estimated (marked `~`): the time to the first validation report
(`update N  epoch ...`) less the training time of updates 2..N from the summary line `train` prints.

Families are written once by `xattn-ray data synth` into WORK/families and reused (4M lines take
about 4 minutes on a quiet machine, half an hour under load); everything else is rebuilt on every
invocation. The subprocesses run in WORK, so `PYTHONPATH=/path/to/other/checkout` measures another
version of the code.

    python experiments/benchmarks/data_scale.py --work /tmp/xattn-data-scale \
        [--sizes 100000,1000000,4000000] [--updates 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENT = "data-scale"
PARENT, CHILD = "la-pv", "lb-pv"
CHILD_LINES = 20000
POLICIES = ("scratch", "body", "xattn", "randxattn")
PAPER_PAIRS = 36_000_000
POLL_SECONDS = 0.05

FIRST_UPDATE = re.compile(r"\bupdate 1 done\b")
FIRST_REPORT = re.compile(r"\bupdate (\d+)\s+epoch \d+\s+train loss")
TRAINED = re.compile(r"after (\d+) updates, (\d+) s,")  # the summary line `xattn-ray train` prints
SHARD_BUILT = re.compile(r"shard built: (\d+) pairs, (\d+) tokens, (\d+) bytes in ([\d.]+) s "
                         r"\(([\d.]+) pairs/s\): (.+)$")

STUDY = """\
name: {experiment}
corpora:
  family:
    languages: [pv, la, lb]
    train: "{family}/train.{{lang}}"
    valid: "{family}/valid.{{lang}}"
    test:
      synth: "{family}/test.{{lang}}"
tokenizer: {{vocab_size: 8000}}
model: {{preset: tiny}}
train: {{lr: 0.001, warmup_updates: 10, max_updates: {updates}, validate_every: {updates}, patience: 0}}
child_train: {{lr: 0.001, warmup_updates: 10, max_updates: {updates}, validate_every: {updates}, patience: 0}}
evaluation: {{beam: 1}}
parents:
  - {{name: {parent}, pair: la-pv, corpus: family, lines: [0, {lines}]}}
children:
  - {{pair: {child}, parent: {parent}, lines: [0, {child_lines}]}}
grid: {{policies: [{policies}], seeds: [1]}}
"""


@dataclass
class ProcessRun:
    """One command, watched: its log lines with arrival times, peak memory, wall time."""

    command: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    peak_mb: float = 0.0
    peak_anon_mb: float = 0.0  # anonymous memory of the process tree, polled
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since launch, line)

    def first(self, pattern: re.Pattern) -> tuple[float, re.Match] | None:
        """When the first line matching `pattern` arrived, and the match; None if none did."""
        for seconds, line in self.lines:
            if match := pattern.search(line):
                return seconds, match
        return None

    def check(self) -> None:
        if self.returncode != 0:
            tail = "\n".join(line for _, line in self.lines[-15:])
            sys.exit(f"{' '.join(self.command)} failed with status {self.returncode}:\n{tail}")


@dataclass
class StartTime:
    """Seconds from launch to the first update; `estimated` when the log has no `update 1 done` line."""

    seconds: float | None
    estimated: bool = False

    def __str__(self) -> str:
        return "n/a" if self.seconds is None else f"{'~' if self.estimated else ''}{self.seconds:.1f}"


@dataclass
class SizeFigures:
    """Everything measured at one family size."""

    lines: int
    driver_mb: float
    cold_mb: float
    warm_mb: float  # median over the warm repeats
    cold_anon_mb: float
    warm_anon_mb: float  # median over the warm repeats
    cold_start: StartTime
    warm_start: StartTime  # median over the warm repeats
    warm_wall_s: float  # median
    build_pairs_per_s: float | None
    build_s: float | None
    shard_mb: float | None


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, anonymous RSS) of process `pid` and all its descendants, from /proc (0 for processes gone)."""
    rss = anon = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith(("VmRSS:", "RssAnon:")):
                        kib = int(line.split()[1])
                        rss, anon = (rss + kib, anon) if line.startswith("VmRSS") else (rss, anon + kib)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss / 1024, anon / 1024


def watch(command: list[str], cwd: Path) -> ProcessRun:
    """Run `command`, timestamp its output lines (stdout and stderr merged) as they arrive, poll its
    tree's memory every 50 ms; the peak is the higher of that and the kernel's high-water RSS."""
    run = ProcessRun(command)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")

    def read() -> None:
        for line in process.stdout:
            run.lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    polled = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        rss, anon = tree_memory_mb(process.pid)
        polled, run.peak_anon_mb = max(polled, rss), max(run.peak_anon_mb, anon)
        time.sleep(POLL_SECONDS)
    run.wall_s = time.perf_counter() - start
    process.returncode = run.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    run.peak_mb = max(polled, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux
    return run


def xattn_ray(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "xattn_ray", *arguments]


def family(work: Path, lines: int) -> Path:
    """The synthetic family of `lines` training lines, generated into WORK/families once."""
    folder = work / "families" / f"n{lines}"
    if not folder.is_dir():
        print(f"generating a family of {lines:,} lines into {folder} (once) ...", flush=True)
        watch(xattn_ray("data", "synth", "--out", str(folder), "--languages", "2", "--sentences", str(lines),
                        "--seed", "1", "--valid", "200", "--test", "200"), work).check()
    return folder


def write_study(folder: Path, family_dir: Path, lines: int, updates: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    study = folder / "study.yaml"
    study.write_text(STUDY.format(experiment=EXPERIMENT, family=family_dir.absolute(), updates=updates,
                                  parent=PARENT, child=CHILD, lines=lines, child_lines=min(lines, CHILD_LINES),
                                  policies=", ".join(POLICIES)))
    return study


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def keep_only_cache(storage: Path) -> None:
    """Delete every run and result from `storage`, keeping the shared cache (tokenizers, shards)."""
    for entry in storage.iterdir():
        if entry.name == "cache":
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def start_time(run: ProcessRun) -> StartTime:
    """When update 1 finished; without its log line, estimated as the first validation report's time
    less the training time of the updates after the first (from the run's summary line)."""
    if found := run.first(FIRST_UPDATE):
        return StartTime(found[0])
    report, trained = run.first(FIRST_REPORT), run.first(TRAINED)
    if report and trained and int(report[1][1]) == int(trained[1][1]):
        updates, seconds = int(trained[1][1]), float(trained[1][2])
        return StartTime(report[0] - seconds * (updates - 1) / updates, estimated=True)
    return StartTime(None)


def folder_mb(folder: Path) -> float | None:
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def median_start(times: list[StartTime]) -> StartTime:
    known = [t.seconds for t in times if t.seconds is not None]
    return StartTime(statistics.median(known), times[0].estimated) if known else StartTime(None)


def measure_size(work: Path, lines: int, updates: int, repeats: int) -> tuple[SizeFigures, Path, Path]:
    """Driver, cold and warm measurements at one size; returns the figures, the study and its storage."""
    folder = work / f"n{lines}"
    study = write_study(folder, family(work, lines), lines, updates)
    train = xattn_ray("train", str(study), "--run", PARENT)

    validate_storage = fresh(folder / "validate-storage")
    driver = watch(xattn_ray("validate", str(study), "--storage", str(validate_storage)), work)
    driver.check()
    shutil.rmtree(validate_storage, ignore_errors=True)

    storage = fresh(folder / "storage")
    cold = watch(train + ["--storage", str(storage)], work)
    cold.check()
    shards = [SHARD_BUILT.search(line) for _, line in cold.lines]
    training_shard = max((s for s in shards if s), key=lambda s: int(s[1]), default=None)
    shard_mb = folder_mb(storage / "cache" / "shards")

    warm = []
    for _ in range(repeats):
        keep_only_cache(storage)
        warm.append(watch(train + ["--storage", str(storage)], work))
        warm[-1].check()
    figures = SizeFigures(
        lines=lines, driver_mb=driver.peak_mb, cold_mb=cold.peak_mb,
        warm_mb=statistics.median(r.peak_mb for r in warm), cold_anon_mb=cold.peak_anon_mb,
        warm_anon_mb=statistics.median(r.peak_anon_mb for r in warm), cold_start=start_time(cold),
        warm_start=median_start([start_time(r) for r in warm]),
        warm_wall_s=statistics.median(r.wall_s for r in warm),
        build_pairs_per_s=float(training_shard[5]) if training_shard else None,
        build_s=float(training_shard[4]) if training_shard else None, shard_mb=shard_mb)
    return figures, study, storage


def shard_built_once(work: Path, study: Path, storage: Path) -> tuple[bool | None, list[int]]:
    """Train the child under each grid policy in turn in one storage (its parent is there); count the
    `shard built` lines of each. Held: the first built its slice's shard, the others built none."""
    counts = []
    for policy in POLICIES:
        run = watch(xattn_ray("train", str(study), "--run", CHILD, "--policy", policy, "--storage", str(storage)),
                    work)
        run.check()
        counts.append(sum(1 for _, line in run.lines if SHARD_BUILT.search(line)))
    if counts[0] == 0:
        return None, counts  # no shard log lines: a data path without shards
    return not any(counts[1:]), counts


def fit(xs: list[float], ys: list[float | None]) -> tuple[float, float] | None:
    """Least-squares line (slope, intercept) through the known points; None with fewer than two."""
    points = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return slope, mean_y - slope * mean_x


def cell(value: float | None, form: str = "{:.0f}") -> str:
    return "n/a" if value is None else form.format(value)


def verdict(held: bool | None) -> str:
    return "n/a" if held is None else ("held" if held else "NOT HELD")


def print_table(rows: list[SizeFigures], repeats: int) -> None:
    print(f"\nper size (warm figures: median of {repeats}; cold: one run)")
    header = ("lines", "driver MB", "trial MB cold", "trial MB warm", "anon MB cold", "anon MB warm",
              "cold s to upd 1", "warm s to upd 1", "warm wall s", "build pairs/s", "shard MB")
    print("  ".join(f"{h:>15}" for h in header))
    for r in rows:
        values = (f"{r.lines:,}", cell(r.driver_mb), cell(r.cold_mb), cell(r.warm_mb), cell(r.cold_anon_mb),
                  cell(r.warm_anon_mb), str(r.cold_start),
                  str(r.warm_start), cell(r.warm_wall_s, "{:.1f}"), cell(r.build_pairs_per_s),
                  cell(r.shard_mb, "{:.1f}"))
        print("  ".join(f"{v:>15}" for v in values))
    if any(r.cold_start.estimated or r.warm_start.estimated for r in rows):
        print("  ~ no `update 1 done` line: estimated as the time to the first validation report less the "
              "training time of the later updates")


def print_targets(rows: list[SizeFigures], grid: tuple[bool | None, list[int]] | None) -> None:
    small, large = rows[0], rows[-1]
    trial_small = max(small.cold_anon_mb, small.warm_anon_mb)
    trial_large = max(large.cold_anon_mb, large.warm_anon_mb)
    rss_small, rss_large = max(small.cold_mb, small.warm_mb), max(large.cold_mb, large.warm_mb)
    starts = [r.warm_start.seconds for r in rows]
    exact_starts = None if any(s is None for s in starts) or rows[0].warm_start.estimated else max(starts)
    throughput = large.build_pairs_per_s
    print("\ntargets")
    print(f"  trial peak at {large.lines:,} lines within 1.2x of {small.lines:,}: "
          f"{verdict(trial_large <= 1.2 * trial_small if len(rows) > 1 else None)} "
          f"(anonymous memory {trial_large:.0f} MB vs {trial_small:.0f} MB = {trial_large / trial_small:.2f}x; "
          f"the higher of cold and warm. RSS with the shard's mapped pages: {rss_large:.0f} MB vs "
          f"{rss_small:.0f} MB = {rss_large / rss_small:.2f}x)")
    print(f"  driver at most 400 MB at 4M lines: "
          f"{verdict(large.driver_mb <= 400 if large.lines >= 4_000_000 else None)} "
          f"({large.driver_mb:.0f} MB at {large.lines:,} lines)")
    print(f"  warm time to update 1 at most 15 s at every size: "
          f"{verdict(None if exact_starts is None else exact_starts <= 15)} (worst {cell(exact_starts, '{:.1f}')} s)")
    print(f"  shard build at least 40k pairs/s: {verdict(None if throughput is None else throughput >= 40_000)} "
          f"({cell(throughput)} pairs/s at {large.lines:,} lines)")
    if grid is not None:
        print(f"  {len(POLICIES)}-policy grid on one child slice builds its shard once: {verdict(grid[0])} "
              f"(`shard built` lines per run, {', '.join(POLICIES)}: {grid[1]}; sequential runs)")


def print_projection(rows: list[SizeFigures]) -> None:
    """Least-squares lines over the sizes, evaluated at the paper's 36M pairs."""
    print(f"\nprojection to {PAPER_PAIRS / 1e6:.0f}M pairs (a linear fit over {len(rows)} sizes, lines taken as "
          f"pairs; NOT a measurement)")
    xs = [float(r.lines) for r in rows]
    series = {
        "driver peak MB": [r.driver_mb for r in rows],
        "trial peak MB, cold": [r.cold_mb for r in rows],
        "trial peak MB, warm": [r.warm_mb for r in rows],
        "trial anon MB, cold": [r.cold_anon_mb for r in rows],
        "trial anon MB, warm": [r.warm_anon_mb for r in rows],
        "cold s to update 1": [r.cold_start.seconds for r in rows],
        "warm s to update 1": [r.warm_start.seconds for r in rows],
        "shard build s": [r.build_s for r in rows],
        "shard MB": [r.shard_mb for r in rows],
    }
    for name, ys in series.items():
        line = fit(xs, ys)
        if line is None:
            print(f"  {name:>20}: n/a")
            continue
        slope, intercept = line
        print(f"  {name:>20}: {slope * 1e6:10.2f} per 1M pairs -> {intercept + slope * PAPER_PAIRS:10.1f} at "
              f"{PAPER_PAIRS / 1e6:.0f}M")
    if rows[-1].build_pairs_per_s:
        print(f"  shard build at {rows[-1].lines:,} lines' throughput: "
              f"{PAPER_PAIRS / rows[-1].build_pairs_per_s / 60:.1f} min for {PAPER_PAIRS / 1e6:.0f}M pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for families (kept), studies, storage")
    parser.add_argument("--sizes", default="100000,1000000,4000000", help="training lines, comma-separated")
    parser.add_argument("--updates", type=int, default=20, help="updates of each parent run")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per size (median reported)")
    parser.add_argument("--no-grid", action="store_true", help="skip the child grid's shard-once check")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    code = importlib.util.find_spec("xattn_ray")
    print(f"code: {Path(code.origin).parent if code and code.origin else 'not found'}; {os.cpu_count()} CPUs; "
          f"{args.updates} updates per run; work folder {work}")

    rows, grid = [], None
    for lines in sizes:
        started = time.perf_counter()
        figures, study, storage = measure_size(work, lines, args.updates, args.repeats)
        rows.append(figures)
        if lines == sizes[0] and not args.no_grid:
            grid = shard_built_once(work, study, storage)
        print(f"  {lines:,} lines measured in {time.perf_counter() - started:.0f} s", flush=True)
    print_table(rows, args.repeats)
    print_targets(rows, grid)
    print_projection(rows)


if __name__ == "__main__":
    main()
