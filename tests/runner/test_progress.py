"""The live progress table: updates of each trial's budget and the time left, from Tune's callbacks."""

import io

from xattn_ray.runner.progress import Budget, Pace, ProgressTable, duration, time_left, updates_of_budget


class Trial:
    """What the table reads of a Tune trial: its name (str) and its config."""

    def __init__(self, name: str, max_updates: int = 0):
        self.name, self.config = name, {"max_updates": max_updates}

    def __str__(self) -> str:
        return self.name


def test_a_running_trial_shows_its_updates_of_the_budget_and_the_time_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("xattn_ray.runner.progress.time.monotonic", lambda: now[0])
    stream = io.StringIO()
    table = ProgressTable("children", interval=0.0, stream=stream,
                          budget=lambda trial: Budget(max_updates=trial.config["max_updates"]))
    running, waiting = Trial("lb-pv-xattn-s1-3f2a9c01", 300), Trial("lb-pv-body-s1-0b1c2d3e", 300)
    table.on_trial_start(0, [running, waiting], running)
    table.on_trial_result(0, [running, waiting], running, {"update": 40, "train_loss": 3.0, "time_total_s": 5})
    now[0] = 110.0
    table.on_trial_result(0, [running, waiting], running, {"update": 140, "train_loss": 2.5, "time_total_s": 15})
    last_table = stream.getvalue().split("[children]")[-1]
    row = next(line for line in last_table.splitlines() if "xattn" in line)
    # 100 updates in 10 s: 160 left take 16 s.
    assert "140/300" in row and row.split()[-1] == "16s"
    pending = next(line for line in last_table.splitlines() if "body" in line)
    assert "PENDING" in pending and " -/300 " in pending and pending.split()[-1] == "-"


def test_the_time_left_is_the_first_budget_to_end():
    pace = Pace(update=100, seen=0.0)
    result = {"update": 200, "train_seconds": 50.0}
    assert time_left(Budget(max_updates=1000), result, pace, now=10.0) == 80.0  # 10 updates/s, 800 left
    assert time_left(Budget(max_updates=1000, max_seconds=60.0), result, pace, now=10.0) == 10.0
    assert time_left(Budget(max_seconds=60.0), result, None, now=10.0) == 10.0
    assert time_left(Budget(), result, pace, now=10.0) is None  # epochs or patience: no clock can tell
    assert time_left(Budget(max_updates=1000), {"update": 100}, pace, now=10.0) is None  # no pace yet
    # One report so far: its own training pace, 50 s for 200 updates.
    assert time_left(Budget(max_updates=1000), result, None, now=10.0) == 200.0
    assert updates_of_budget(120, Budget(max_updates=300)) == "120/300"
    assert updates_of_budget(120, Budget()) == "120" and updates_of_budget(None, Budget()) == "-"
    assert [duration(s) for s in (None, 45.2, 185, 7620)] == ["-", "45s", "3m05s", "2h07m"]
