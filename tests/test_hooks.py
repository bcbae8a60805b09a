"""Training-loop hooks: a user hook gets the documented calls, in the documented order, with
the documented data; adding one changes nothing a run writes; a hook may stop a run safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlbench import presets, store
from rlbench.hooks import Hook
from rlbench.runner import train

ENV = "rlbench/PointGoal-v0"
SMALL = {
    "sampler": {"meta_batch_size": 5, "episodes_per_task": 4, "n_workers": 1},
    "n_checkpoints": 3,
    "eval": {"n_tasks": 3, "n_updates": 2, "episodes_per_task": 3},
}
UNIT = 5 * 4 * 20  # env steps of one DRS iteration of SMALL (PointGoal never ends early)


def cfg(budget: int = 4 * UNIT):
    return presets.run_config(ENV, "drs-ppo", 1, budget, SMALL)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / store.METRICS_FILE).read_text().splitlines()]


def without_time(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]


class Recorder:
    """Not a Hook subclass (the methods are looked up by name), recording what it is told and
    what the run directory holds at that moment."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_start(self, state):
        self.calls.append(("start", state.iteration, state.env_steps, len(state.checkpoints)))

    def on_iteration_end(self, state):
        last = rows(state.run_dir)[-1]  # already logged, saved and recorded when a user hook runs
        saved = store.load_torch(state.run_dir / store.STATE_FILE)
        meta = store.read_meta(state.run_dir)
        self.calls.append(("iteration", state.iteration, state.env_steps, state.steps))
        assert last == {"iteration": state.iteration, "env_steps": state.env_steps, **state.metrics}
        assert saved["iteration"] == state.iteration and saved["env_steps"] == state.env_steps
        assert meta["iterations"] == state.iteration and meta["budget_used"] == state.env_steps
        assert state.metrics["time/iteration_s"] == state.seconds > 0

    def on_checkpoint(self, state, entry):
        self.calls.append(("checkpoint", entry["index"], entry["budget_mark"], entry["env_steps"], entry["iteration"]))
        assert store.sha256_file(store.ckpt_path(state.run_dir, entry["index"])) == entry["sha256"]

    def on_end(self, state):
        self.calls.append(("end", state.finished, state.iteration))

    def close(self, state):
        self.calls.append(("close",))


def test_user_hook_gets_the_documented_calls_in_order(tmp_path):
    rec = Recorder()
    meta = train(cfg(), tmp_path / "r", quiet=True, hooks=[rec])
    # marks 0, 2 and 4 units; DRS spends one unit per iteration; a checkpoint is announced
    # after the round of calls in which it was saved
    assert rec.calls == [
        ("start", 0, 0, 1), ("checkpoint", 0, 0, 0, 0),
        ("iteration", 1, UNIT, UNIT),
        ("iteration", 2, 2 * UNIT, UNIT), ("checkpoint", 1, 2 * UNIT, 2 * UNIT, 2),
        ("iteration", 3, 3 * UNIT, UNIT),
        ("iteration", 4, 4 * UNIT, UNIT), ("checkpoint", 2, 4 * UNIT, 4 * UNIT, 4),
        ("end", True, 4), ("close",),
    ]
    assert meta == store.read_meta(tmp_path / "r") and meta["status"] == "finished"


def test_max_iterations_ends_unfinished_and_resume_starts_from_the_state(tmp_path):
    first, second = Recorder(), Recorder()
    train(cfg(), tmp_path / "r", quiet=True, max_iterations=1, hooks=[first])
    assert first.calls == [("start", 0, 0, 1), ("checkpoint", 0, 0, 0, 0), ("iteration", 1, UNIT, UNIT),
                           ("end", False, 1), ("close",)]
    train(cfg(), tmp_path / "r", resume=True, quiet=True, hooks=[second])
    assert second.calls[0] == ("start", 1, UNIT, 1)  # restored: no second checkpoint 0
    assert second.calls[1] == ("iteration", 2, 2 * UNIT, UNIT)
    assert second.calls[-2:] == [("end", True, 4), ("close",)]


def test_a_user_hook_changes_nothing_the_run_writes(tmp_path):
    train(cfg(), tmp_path / "plain", quiet=True)
    train(cfg(), tmp_path / "hooked", quiet=True, hooks=[Recorder(), Hook()])
    assert without_time(rows(tmp_path / "plain")) == without_time(rows(tmp_path / "hooked"))
    for i in range(3):
        a = store.load_torch(store.ckpt_path(tmp_path / "plain", i))
        b = store.load_torch(store.ckpt_path(tmp_path / "hooked", i))
        assert a["env_steps"] == b["env_steps"] and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


class StopAt(Hook):
    def __init__(self, k: int):
        self.k = k
        self.closed = False

    def on_iteration_end(self, state):
        if state.iteration == self.k:
            raise KeyboardInterrupt  # e.g. a user's early stopping, or Ctrl-C inside a hook

    def close(self, state):
        self.closed = True


def test_a_hook_that_raises_stops_the_run_and_resume_continues_it(tmp_path):
    stop = StopAt(3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(), tmp_path / "r", quiet=True, hooks=[stop])
    assert stop.closed
    # the built-in hooks ran first: iteration 3 is saved whole
    assert store.load_torch(tmp_path / "r" / store.STATE_FILE)["iteration"] == 3
    assert store.read_meta(tmp_path / "r")["status"] == "running"
    train(cfg(), tmp_path / "r", resume=True, quiet=True)
    train(cfg(), tmp_path / "ref", quiet=True)
    assert without_time(rows(tmp_path / "r")) == without_time(rows(tmp_path / "ref"))

