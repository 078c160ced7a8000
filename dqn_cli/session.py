"""One session of a run (a `dqn train`, or one `--resume` of it): the loop's counters, and everything
around the learning that a session owns — metrics files, the progress bar, Ctrl-C handling, and the
``status.json`` that says how the session ended."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.metrics import MetricsLogger
from dqn_cli.progress import TrainingProgress
from dqn_cli.runfiles import RunState, RunStatus, write_status
from dqn_cli.state import State

RECENT_EPISODES = 100  # the progress bar's "recent mean return"


@dataclass
class LoopState:
    """The training loop's counters and statistics: with the parts' arrays, all that a checkpoint
    restores."""

    step: int = 0  # env steps, summed over the envs
    updates: int = 0  # gradient steps done
    best_eval: float | None = None
    last_eval: float | None = None
    last_eval_step: int = -1
    wall_time: float = 0.0  # seconds of training so far, banked at each checkpoint and status
    loss_sum: float = 0.0
    loss_count: int = 0
    recent_returns: list[float] = field(default_factory=list)

    def state_dict(self) -> State:
        return asdict(self)

    def load_state_dict(self, state: State) -> None:
        """Counters of the right types only: a checkpoint is read from disk, and a wrong one would
        otherwise fail hours into the resumed run (a ValueError here is refused in one line)."""
        loaded = LoopState(**state)
        counts = (loaded.step, loaded.updates, loaded.loss_count, loaded.last_eval_step)
        evaluations = (loaded.best_eval, loaded.last_eval)
        if not (
            all(_is_int(n) and -1 <= n < 2**63 for n in counts)
            and all(_is_number(x) for x in (loaded.wall_time, loaded.loss_sum))
            and all(x is None or _is_number(x) for x in evaluations)
            and (loaded.last_eval is None) == (loaded.last_eval_step == -1)  # no evaluation yet, or one
            and isinstance(loaded.recent_returns, list)
            and all(_is_number(x) for x in loaded.recent_returns)
        ):
            raise ValueError("its loop counters are not all numbers of the right kind")
        for key, value in loaded.__dict__.items():
            setattr(self, key, value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _StopSignals:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            # The checkpoint being written, if any, goes to a temporary name: the last good one stays.
            os._exit(130)
        self.received = signum

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a tuning worker thread): leave signals alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class RunSession:
    """Context for one session of training. On exit it records the session's end in ``status.json``:
    finished, or the ``run_state`` an exception carries (diverged, interrupted, pruned), or interrupted
    for any other exception."""

    def __init__(
        self, run_dir: Path, env_id: str, hp: Hyperparameters, state: LoopState, quiet: bool
    ) -> None:
        self.run_dir, self.hp, self.state = run_dir, hp, state
        self.metrics = MetricsLogger(run_dir, resume_step=state.step)
        self._progress = TrainingProgress(env_id, hp.n_timesteps, quiet, start_step=state.step)
        self._signals = _StopSignals()
        self._since = time.perf_counter()

    def __enter__(self) -> RunSession:
        self._since = time.perf_counter()
        self._progress.__enter__()
        self._signals.__enter__()
        self.report(RunState.RUNNING)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self.report(RunState.FINISHED if exc is None else getattr(exc, "run_state", RunState.INTERRUPTED))
        finally:
            self._signals.__exit__()
            self._progress.__exit__()
            self.metrics.close()

    @property
    def stop_signal(self) -> int | None:
        """The SIGINT or SIGTERM received, if any: the loop checkpoints and stops."""
        return self._signals.received

    def bank_time(self) -> None:
        """Add the time since the last banking to the loop state, so a checkpoint carries it."""
        now = time.perf_counter()
        self.state.wall_time += now - self._since
        self._since = now

    def wall_time(self) -> float:
        return self.state.wall_time + time.perf_counter() - self._since

    def report(self, run_state: RunState) -> None:
        self.bank_time()
        s = self.state
        write_status(
            self.run_dir,
            RunStatus(
                state=run_state,
                step=s.step,
                planned_steps=self.hp.n_timesteps,
                updates=s.updates,
                wall_time=s.wall_time,
                best_eval=s.best_eval,
                last_eval=s.last_eval,
            ),
        )

    def episodes_ended(
        self, returns: list[float], lengths: list[int], loss: float | None, epsilon: float
    ) -> None:
        """One metrics row per ended episode; the mean loss since the last row goes with the first."""
        s, wall_time = self.state, self.wall_time()
        for ret, length in zip(returns, lengths, strict=True):
            self.metrics.episode(s.step, wall_time, ret, length, loss, epsilon)
            loss = None
            s.recent_returns = [*s.recent_returns[-(RECENT_EPISODES - 1) :], ret]

    def evaluated(self, mean_return: float, epsilon: float) -> None:
        self.metrics.evaluation(self.state.step, self.wall_time(), mean_return, epsilon)
        self.report(RunState.RUNNING)

    def show_progress(self, epsilon: float) -> None:
        s = self.state
        self._progress.update(s.step, epsilon, s.recent_returns, s.last_eval)
