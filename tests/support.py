"""What the tests share besides fixtures: where things are, and the CLI run as a user runs it."""

import os
import subprocess
import sys
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
