"""Hooks of the training loop, in the spirit of Stable-Baselines3's callbacks.

:func:`rlbench.runner.train` runs the loop (restore, iterate until the budget is spent) and
leaves everything else to hooks: saving policy checkpoints at the budget marks, the metrics
log, the non-finite guard, the resume state, the progress bar and ``run.json``. A hook is
any object with some of the methods of :class:`Hook`; the loop calls them in this order:

1. ``on_start(state)`` once, after the run directory is prepared and a saved state (if any)
   restored into ``state.trainer``;
2. for every iteration, ``on_iteration_end(state)``, with ``state.metrics`` the iteration's
   metrics (``state.iteration`` is the number of iterations done, ``state.env_steps`` the
   budget used, ``state.seconds`` and ``state.steps`` the iteration's time and steps);
3. ``on_end(state)`` once if the loop stopped normally (budget spent or ``max_iterations``
   reached; ``state.finished`` tells which);
4. ``close(state)`` always, last, even after an error (release files and progress bars).

After each round of calls of 1-3, every hook gets ``on_checkpoint(state, entry)`` for each
policy checkpoint saved during that round (checkpoint 0 after ``on_start`` of a new run;
``entry`` holds ``index``, ``budget_mark``, ``env_steps``, ``iteration`` and the file's
``sha256``; the file is ``rlbench.store.ckpt_path(state.run_dir, entry["index"])``).

The built-in hooks run first, in the order of :func:`builtin_hooks`, so a user hook sees an
iteration after it was logged, saved and recorded in ``run.json``. A user hook is added with
``train(cfg, out, hooks=[MyHook()])``. It must not change ``state.trainer`` or
``state.metrics`` if the run is to stay comparable; it may raise to stop the run (the state of
the last iteration saved before it is kept, and ``--resume`` continues from there). Example,
a TensorBoard logger::

    from torch.utils.tensorboard import SummaryWriter
    from rlbench.hooks import Hook

    class TensorBoard(Hook):
        def on_start(self, state):
            self.writer = SummaryWriter(state.run_dir / "tb")
        def on_iteration_end(self, state):
            for k, v in state.metrics.items():
                self.writer.add_scalar(k, v, state.env_steps)
        def close(self, state):  # also called if a hook before this one failed to start
            if hasattr(self, "writer"):
                self.writer.close()
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlbench import pairing, store
from rlbench.progress import progress

if TYPE_CHECKING:
    from rlbench.settings import RunConfig
    from rlbench.trainer import Trainer


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or parameters; the last good state is kept."""


@dataclass
class TrainState:
    """What the loop shares with its hooks (one object for the whole call)."""

    cfg: RunConfig
    run_dir: Path
    trainer: Trainer
    quiet: bool = False
    #: checkpoint entries so far (index, budget_mark, env_steps, iteration, sha256)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: training wall time over the run's life (summed across resumes), seconds
    wall_time_s: float = 0.0
    #: the last iteration's metrics (hooks may add keys; the metrics hook adds the time/ ones)
    metrics: dict[str, float] = field(default_factory=dict)
    #: the last iteration's duration (s) and env steps
    seconds: float = 0.0
    steps: int = 0
    #: iterations done by this call
    done_iterations: int = 0
    #: set before ``on_end``: True if the budget cannot pay another iteration
    finished: bool = False
    #: run.json as last written by the metadata hook (what ``train`` returns)
    meta: dict[str, Any] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list)

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    @property
    def env_steps(self) -> int:
        return self.trainer.budget.used

    _announce: list[dict[str, Any]] = field(default_factory=list)

    def add_checkpoint(self, entry: dict[str, Any]) -> None:
        """Record a saved checkpoint; every hook's ``on_checkpoint`` gets it after the current
        round of calls (so a hook never hears of a checkpoint before its ``on_start``)."""
        self.checkpoints.append(entry)
        self._announce.append(entry)

    def call(self, method: str) -> None:
        """``method(state)`` on every hook, then ``on_checkpoint`` for the checkpoints saved meanwhile."""
        call(self.hooks, method, self)
        while self._announce:
            call(self.hooks, "on_checkpoint", self, self._announce.pop(0))


class Hook:
    """Base class with no-op methods (subclassing it is optional: missing methods are skipped)."""

    def on_start(self, state: TrainState) -> None:
        pass

    def on_iteration_end(self, state: TrainState) -> None:
        pass

    def on_checkpoint(self, state: TrainState, entry: dict[str, Any]) -> None:
        pass

    def on_end(self, state: TrainState) -> None:
        pass

    def close(self, state: TrainState) -> None:
        pass


def call(hooks: list[Any], method: str, *args: Any) -> None:
    for h in hooks:
        fn = getattr(h, method, None)
        if fn is not None:
            fn(*args)


def close_all(hooks: list[Any], state: TrainState) -> None:
    """``close`` on every hook, even if one of them raises (the first error is re-raised)."""
    error: BaseException | None = None
    for h in hooks:
        fn = getattr(h, "close", None)
        if fn is None:
            continue
        try:
            fn(state)
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after closing the rest
            error = error or e
    if error is not None:
        raise error


# -- the built-in hooks, in the order they run ----------------------------------------------------------------


def finite(metrics: dict[str, float], params) -> bool:
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        return False
    return all(bool(v.detach().isfinite().all()) for v in params.values())


class NonFiniteGuard(Hook):
    """Stops the run (``run.json`` status ``failed``) before anything of an iteration with
    non-finite metrics or parameters is written: the last good state stays the saved one."""

    def on_iteration_end(self, state: TrainState) -> None:
        if finite(state.metrics, state.trainer.agent.params):
            return
        bad = [k for k, v in state.metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        it = state.iteration
        store.update_meta(state.run_dir, status="failed", error=f"non-finite values at iteration {it}: {bad or 'parameters'}")
        raise NonFiniteError(
            f"{state.run_dir}: non-finite {'metrics ' + ', '.join(bad) if bad else 'parameters'} at iteration "
            f"{it}; kept the last good state (iteration {it - 1})"
        )


def save_checkpoint(run_dir: Path, index: int, mark: int, trainer: Trainer) -> dict[str, Any]:
    entry = {"index": index, "budget_mark": mark, "env_steps": trainer.budget.used, "iteration": trainer.iteration}
    params = {k: v.detach().clone() for k, v in trainer.agent.params.items()}
    digest = store.save_torch(store.ckpt_path(run_dir, index), {**entry, "params": params})
    return {**entry, "sha256": digest}  # verified by the evaluator before it uses the file


class CheckpointHook(Hook):
    """The policy at the shared budget marks: checkpoint 0 (the initial policy) at the start,
    then the first iteration boundary at or after each mark; at the end of the budget, marks
    it could not reach get the final policy, with its exact step count recorded."""

    def _save_due(self, state: TrainState, reached: bool) -> None:
        marks = state.cfg.checkpoint_marks
        while len(state.checkpoints) < len(marks) and (reached or state.env_steps >= marks[len(state.checkpoints)]):
            i = len(state.checkpoints)
            state.add_checkpoint(save_checkpoint(state.run_dir, i, marks[i], state.trainer))

    def on_start(self, state: TrainState) -> None:
        if not state.checkpoints:
            state.add_checkpoint(save_checkpoint(state.run_dir, 0, state.cfg.checkpoint_marks[0], state.trainer))

    def on_iteration_end(self, state: TrainState) -> None:
        self._save_due(state, reached=False)

    def on_end(self, state: TrainState) -> None:
        if state.finished:
            self._save_due(state, reached=True)


class MetricsHook(Hook):
    """Appends one JSON line per iteration to ``metrics.jsonl`` (after adding the time/
    metrics). At the start the log is cut back to the iterations the saved state has seen
    (after a crash between the log line and the state, the log is one row ahead)."""

    def on_start(self, state: TrainState) -> None:
        path = state.run_dir / store.METRICS_FILE
        lines = [line for line, row in store.read_jsonl(path) if row.get("iteration", 0) <= state.iteration]
        store.write_text(path, "".join(line + "\n" for line in lines))
        self._log = open(path, "a")  # noqa: SIM115 -- closed in close()

    def on_iteration_end(self, state: TrainState) -> None:
        state.metrics["time/iteration_s"] = state.seconds
        state.metrics["time/steps_per_s"] = state.steps / state.seconds
        row = {"iteration": state.iteration, "env_steps": state.env_steps, **state.metrics}
        self._log.write(json.dumps(row) + "\n")
        self._log.flush()

    def close(self, state: TrainState) -> None:
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()


class StateHook(Hook):
    """Saves the full learner state (parameters, optimiser moments, ProMP's eta, counters)
    atomically after every iteration, after its metrics line: what ``--resume`` continues."""

    def on_iteration_end(self, state: TrainState) -> None:
        store.save_torch(state.run_dir / store.STATE_FILE, {
            "agent": state.trainer.agent.state_dict(), "iteration": state.iteration,
            "env_steps": state.env_steps, "checkpoints": state.checkpoints, "wall_time_s": state.wall_time_s,
        })


class ProgressHook(Hook):
    """A progress bar over the step budget (hidden with ``quiet``)."""

    def on_start(self, state: TrainState) -> None:
        cfg = state.cfg
        self._bar = progress(total=cfg.budget, initial=state.env_steps, desc=f"train {cfg.algo} seed {cfg.seed}", unit="step",
                             disable=state.quiet)

    def on_iteration_end(self, state: TrainState) -> None:
        self._bar.update(state.steps)
        self._bar.set_postfix({"ret": f"{state.metrics.get('rollout/return_mean', float('nan')):.1f}", "it": state.iteration})

    def close(self, state: TrainState) -> None:
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.close()


class MetadataHook(Hook):
    """``run.json``: status running at the start (and the pairing record), progress after
    every iteration, status finished (or running, if stopped by ``max_iterations``) at the end."""

    def on_start(self, state: TrainState) -> None:
        state.meta = store.update_meta(state.run_dir, status="running", checkpoints=state.checkpoints)
        pairing.ensure(state.run_dir)  # proof for paired statistics: hashes of the initial policy and test tasks

    def on_iteration_end(self, state: TrainState) -> None:
        state.meta = store.update_meta(state.run_dir, budget_used=state.env_steps, iterations=state.iteration,
                                       wall_time_s=state.wall_time_s, checkpoints=state.checkpoints)

    def on_end(self, state: TrainState) -> None:
        state.meta = store.update_meta(state.run_dir, status="finished" if state.finished else "running",
                                       checkpoints=state.checkpoints, budget_used=state.env_steps,
                                       iterations=state.iteration, wall_time_s=state.wall_time_s)


def builtin_hooks() -> list[Hook]:
    """The hooks every run has, in the order they run. The order is what makes a run crash
    safe: checkpoints, then the metrics line, then the state, then ``run.json``."""
    return [NonFiniteGuard(), CheckpointHook(), MetricsHook(), StateHook(), ProgressHook(), MetadataHook()]
