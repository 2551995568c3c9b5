"""What Ray costs: the same 8 child runs through `xattn-ray run` and as a plain loop without Ray.

Both sides train the same runs to the same number of updates (fixed work, so wall times compare):

  (a) `xattn-ray run` on a local Ray instance: one trial per run, as many at once as CPUs (one thread
      each), Ray's start-up included;
  (b) a plain Python loop calling `study.runs.run` for each run in turn, with all CPUs as threads.

With no overhead and perfect thread scaling (a) and (b) take the same time; the script prints the
wall-time ratio (a)/(b) (target <= 1.10 for trials of about a minute on 2 CPUs) and the overhead per
trial, (a - b) x concurrency / trials. The parent is trained once beforehand and reused by both.

    python experiments/benchmarks/runner_overhead.py [--updates 60] [--workdir /tmp/xattn-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from xattn_ray.study.config import load_experiment
from xattn_ray.study.kinds import kind_of
from xattn_ray.study.runs import run

STUDY = """\
name: overhead
corpora:
  synth:
    synthetic: {{languages: 3, sentences: 30000, seed: 1, valid: 300, test: 400}}
tokenizer: {{vocab_size: auto}}
model: {{preset: small}}
train: {{lr: 0.001, warmup_updates: 100, max_tokens: 2048, max_updates: {parent_updates}, validate_every: 100, patience: 0}}
child_train: {{lr: 0.001, warmup_updates: 20, max_tokens: 2048, max_updates: {updates}, validate_every: {every}, patience: 0}}
parents:
  - {{name: la-pv, pair: la-pv, corpus: synth, lines: [0, 20000]}}
children:
  - {{pair: lb-pv, parent: la-pv, lines: [20000, 30000]}}
  - {{pair: la-lc, parent: la-pv, lines: [20000, 30000]}}
grid: {{policies: [scratch, body, xattn, randxattn], seeds: [1]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=60, help="updates per child run (about a minute here)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/xattn-bench-overhead"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    study = args.workdir / "overhead.yaml"
    study.write_text(STUDY.format(parent_updates=200, updates=args.updates, every=max(1, args.updates // 2)))
    experiment = load_experiment(study)
    cpus = os.cpu_count() or 1

    # The shared parent, trained once; each side gets its own copy of the storage with it.
    prepared = args.workdir / "prepared"
    torch.set_num_threads(cpus)
    parents, children = kind_of(experiment).stages(experiment)
    run(experiment, parents.specs[0], prepared)
    specs = children.specs

    plain_storage, ray_storage = args.workdir / "plain", args.workdir / "ray"
    shutil.copytree(prepared, plain_storage)
    shutil.copytree(prepared, ray_storage)

    start = time.perf_counter()
    for spec in specs:
        run(experiment, spec, plain_storage)
    plain = time.perf_counter() - start

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xattn_ray", "-q", "run", str(study), "--storage", str(ray_storage),
                    "--progress-every", "1000"], check=True, stdout=subprocess.DEVNULL)
    with_ray = time.perf_counter() - start

    concurrency = cpus  # one-CPU trials
    print(f"{len(specs)} child runs of {args.updates} updates, {cpus} CPUs")
    print(f"  (b) plain loop, {cpus} threads per run: {plain:7.1f} s ({plain / len(specs):.1f} s per run)")
    print(f"  (a) xattn-ray run, {concurrency} trials at once: {with_ray:7.1f} s")
    print(f"  ratio (a)/(b) = {with_ray / plain:.2f} (target <= 1.10); overhead per trial "
          f"{(with_ray - plain) * concurrency / len(specs):.1f} s")


if __name__ == "__main__":
    main()
