"""The live table of trials on the terminal: one compact table at most every `interval` seconds.

Tune's own console output is turned off (it prints every result of every trial); this callback keeps
the last result of each trial and prints state, updates done of the run's budget, losses, BLEU, time
and an estimate of the time left, quietly enough to read. Trials are named by their run ids
(`lb-pv-xattn-s1-3f2a9c01`).

The estimate is the budget left at the pace this table has seen: updates per second between the
trial's first report here and its latest (validations included; a resumed trial is not credited with
its earlier updates), or before a second report, the run's own training pace (its reported
`train_seconds` per update); or the seconds left of a time budget, whichever ends first. Early
stopping can end a run sooner.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

from ray.tune import Callback


@dataclass(frozen=True)
class Budget:
    """What ends a run's training, as far as a clock can tell: 0 means no such limit."""

    max_updates: int = 0
    max_seconds: float = 0.0


@dataclass(frozen=True)
class Pace:
    """A trial's first report seen by the table: (update, monotonic seconds)."""

    update: int
    seen: float


class ProgressTable(Callback):
    def __init__(self, stage: str, interval: float = 30.0, stream=None,
                 budget: Callable[[object], Budget] | None = None):
        self.stage = stage
        self.interval = interval
        self.stream = stream or sys.stdout
        self.budget = budget or (lambda trial: Budget())  # a trial's budget, from its config
        self.last: dict[str, dict] = {}
        self.states: dict[str, str] = {}
        self.paces: dict[str, Pace] = {}
        self.started = time.monotonic()
        self.printed = 0.0
        self.changed = False  # something to show since the last table

    def on_trial_start(self, iteration, trials, trial, **info):
        self.states[str(trial)] = "RUNNING"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[str(trial)] = {**self.last.get(str(trial), {}), **result}  # the final report lacks train_loss
        if result.get("update") is not None and str(trial) not in self.paces:
            self.paces[str(trial)] = Pace(result["update"], time.monotonic())
        self.states[str(trial)] = "RUNNING"
        self._maybe_print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.states[str(trial)] = "DONE" if self.last.get(str(trial), {}).get("finished") else "STOPPED"
        self._maybe_print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.states[str(trial)] = "ERROR"
        self._maybe_print(trials)

    def on_experiment_end(self, trials, **info):
        if self.changed:
            self._maybe_print(trials, force=True)

    def _maybe_print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        self.changed = True
        if not force and now - self.printed < self.interval:
            return
        self.printed, self.changed = now, False
        lines = [f"[{self.stage}] {now - self.started:6.0f} s"]
        lines.append(f"  {'run':<40} {'state':<8} {'updates':>13} {'train':>6} {'valid':>6} {'BLEU':>6} "
                     f"{'time':>6} {'left':>7}")
        for trial in trials:
            name = str(trial)
            result = self.last.get(name, {})
            state = self.states.get(name, "PENDING")
            budget = self.budget(trial)
            bleu = next((v for k, v in result.items() if k.startswith("bleu/")), None)
            left = time_left(budget, result, self.paces.get(name), now) if state == "RUNNING" else None
            lines.append(f"  {name[:40]:<40} {state:<8} {updates_of_budget(result.get('update'), budget):>13} "
                         f"{_num(result.get('train_loss'), '.2f'):>6} {_num(result.get('valid_loss'), '.2f'):>6} "
                         f"{_num(bleu, '.1f'):>6} {_num(result.get('time_total_s'), '.0f'):>6} "
                         f"{duration(left):>7}")
        print("\n".join(lines), file=self.stream, flush=True)


def updates_of_budget(update: int | None, budget: Budget) -> str:
    """`120/300` (updates done of the budget), `120` without an update budget, `-` before any report."""
    done = _num(update, "d")
    return f"{done}/{budget.max_updates}" if budget.max_updates else done


def time_left(budget: Budget, result: dict, pace: Pace | None, now: float) -> float | None:
    """Seconds until the budget ends at the pace seen since `pace`; None when nothing bounds it yet."""
    estimates = []
    update, trained = result.get("update"), result.get("train_seconds")
    if budget.max_updates and update:
        if pace is not None and update > pace.update and now > pace.seen:
            estimates.append(max(0, budget.max_updates - update) * (now - pace.seen) / (update - pace.update))
        elif trained:  # one report so far: the run's own seconds per update of training
            estimates.append(max(0, budget.max_updates - update) * trained / update)
    if budget.max_seconds and trained is not None:
        estimates.append(max(0.0, budget.max_seconds - trained))
    return min(estimates) if estimates else None


def duration(seconds: float | None) -> str:
    """`45s`, `3m05s`, `2h07m`; `-` for no estimate."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _num(value, spec: str) -> str:
    if value is None or value != value:
        return "-"
    return format(value, spec)
