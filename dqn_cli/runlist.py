"""The runs under ``runs/`` and how far each got, for `dqn runs`.

A run's own ``status.json`` is the source; a run that says it is running but whose process is gone was
killed without a chance to say so, and is shown as interrupted. Runs written before ``status.json``
existed are described from ``config.toml`` and ``metrics.csv``. A run folder with a damaged file is still
listed, with what can be read and a warning naming the file, so one bad run never hides the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dqn_cli.errors import UserError
from dqn_cli.metrics import METRICS_FILE, Curves, read_metrics
from dqn_cli.runfiles import (
    CONFIG_FILE,
    FINAL_MODEL,
    RUNS_ROOT,
    STATUS_FILE,
    RunState,
    env_folder_name,
    iter_runs,
    read_config,
    read_status,
)

UNKNOWN_ENV = "?"


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    env_id: str
    started: float  # config.toml's modification time, the order `dqn eval` uses to find the newest run
    state: RunState
    step: int | None
    planned_steps: int | None
    updates: int | None  # gradient steps; unknown for runs without status.json
    best_eval: float | None
    last_eval: float | None
    wall_time: float | None
    problems: tuple[str, ...] = ()  # the run's files that could not be read, one line each, for warnings


def process_alive(pid: object) -> bool:
    """Whether a process with this id exists (on Windows, where signal 0 is not a probe, assume so)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process id is that large
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True


def _read_curves(run_dir: Path, problems: list[str]) -> Curves | None:
    """``metrics.csv``, or None if it is missing or unreadable (noted in ``problems``)."""
    if not (run_dir / METRICS_FILE).exists():
        return None
    try:
        return read_metrics(run_dir)
    except UserError as exc:
        problems.append(str(exc))
        return None


def summarize_run(run_dir: Path) -> RunSummary:
    """What can be read of a run; never raises, so one damaged run cannot hide the others. What could
    not be read is in ``problems``."""
    problems: list[str] = []
    try:
        config = read_config(run_dir)
    except UserError as exc:
        config = {}
        problems.append(str(exc))
    env_id = config.get("env_id", UNKNOWN_ENV)
    try:
        started = (run_dir / CONFIG_FILE).stat().st_mtime
    except OSError as exc:  # removed while being listed
        started = 0.0
        problems.append(f"cannot read {run_dir / CONFIG_FILE}: {exc.strerror}")
    status = read_status(run_dir)
    if status is None and (run_dir / STATUS_FILE).exists():
        problems.append(f"{run_dir / STATUS_FILE} is unreadable, damaged or of an unknown format")
    if status is not None:
        state = status.state
        if state is RunState.RUNNING and not process_alive(status.pid):
            state = RunState.INTERRUPTED
        return RunSummary(
            run_dir,
            env_id,
            started,
            state,
            status.step,
            status.planned_steps,
            status.updates,
            status.best_eval,
            status.last_eval,
            status.wall_time,
            tuple(problems),
        )
    saved = config.get("hyperparameters", {})  # checked by read_config: n_timesteps is a whole number
    planned = int(saved["n_timesteps"]) if "n_timesteps" in saved else None
    state = RunState.FINISHED if (run_dir / f"{FINAL_MODEL}.safetensors").exists() else RunState.INTERRUPTED
    curves = _read_curves(run_dir, problems)
    if curves is None:
        return RunSummary(
            run_dir, env_id, started, state, None, planned, None, None, None, None, tuple(problems)
        )
    return RunSummary(
        run_dir,
        env_id,
        started,
        state,
        curves.last_step,
        planned,
        None,
        max(curves.eval_returns, default=None),
        curves.eval_returns[-1] if curves.eval_returns else None,
        curves.last_wall_time,
        tuple(problems),
    )


def list_runs(runs_root: Path = RUNS_ROOT, env_id: str | None = None) -> list[RunSummary]:
    """Every run folder under ``runs_root`` (see ``iter_runs``), oldest first; ``env_id`` may also be given
    as its folder name (``ALE-Pong-v5`` for ``ALE/Pong-v5``)."""
    runs = [summarize_run(run_dir) for run_dir in iter_runs(runs_root)]
    if env_id is not None:
        runs = [run for run in runs if env_folder_name(run.env_id) == env_folder_name(env_id)]
    return sorted(runs, key=lambda run: run.started)
