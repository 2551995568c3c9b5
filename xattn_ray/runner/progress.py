"""The live table of trials on the terminal: one compact table at most every `interval` seconds.

Tune's own console output is turned off (it prints every result of every trial); this callback keeps
the last result of each trial and prints state, update, losses, BLEU and time, quietly enough to read.
Trials are named by their run ids (`lb-pv-xattn-s1-3f2a9c01`).
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressTable(Callback):
    def __init__(self, stage: str, interval: float = 30.0, stream=None):
        self.stage = stage
        self.interval = interval
        self.stream = stream or sys.stdout
        self.last: dict[str, dict] = {}
        self.states: dict[str, str] = {}
        self.started = time.monotonic()
        self.printed = 0.0
        self.changed = False  # something to show since the last table

    def on_trial_start(self, iteration, trials, trial, **info):
        self.states[str(trial)] = "RUNNING"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[str(trial)] = {**self.last.get(str(trial), {}), **result}  # the final report lacks train_loss
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
        lines.append(f"  {'run':<40} {'state':<8} {'update':>6} {'train':>6} {'valid':>6} {'BLEU':>6} {'time':>6}")
        for trial in trials:
            name = str(trial)
            result = self.last.get(name, {})
            state = self.states.get(name, "PENDING")
            bleu = next((v for k, v in result.items() if k.startswith("bleu/")), None)
            lines.append(f"  {name[:40]:<40} {state:<8} {_num(result.get('update'), 'd'):>6} "
                         f"{_num(result.get('train_loss'), '.2f'):>6} {_num(result.get('valid_loss'), '.2f'):>6} "
                         f"{_num(bleu, '.1f'):>6} {_num(result.get('time_total_s'), '.0f'):>6}")
        print("\n".join(lines), file=self.stream, flush=True)


def _num(value, spec: str) -> str:
    if value is None or value != value:
        return "-"
    return format(value, spec)
