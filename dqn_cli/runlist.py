"""The runs under ``runs/`` and how far each got, for `dqn runs`.

A run's own ``status.json`` is the source; a run that says it is running but whose process is gone was
killed without a chance to say so, and is shown as interrupted. Runs written before ``status.json``
existed are described from ``config.toml`` and ``metrics.csv``. A run folder with a damaged file is still
listed, with what can be read, so one bad run never hides the others.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from dqn_cli.errors import UserError
from dqn_cli.metrics import Curves, read_metrics
from dqn_cli.runfiles import (
    CONFIG_FILE,
    FINAL_MODEL,
    RUNS_ROOT,
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


def process_alive(pid: object) -> bool:
    """Whether a process with this id exists (on Windows, where signal 0 is not a probe, assume so)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True


def _read_curves(run_dir: Path) -> Curves | None:
    """``metrics.csv``, or None if it is missing or unreadable (it may hold bytes that are not UTF-8)."""
    try:
        return read_metrics(run_dir)
    except (UserError, UnicodeDecodeError, csv.Error):  # csv.Error: a field over csv's size limit
        return None


def summarize_run(run_dir: Path) -> RunSummary:
    try:
        config = read_config(run_dir)
    except UserError:
        config = {}
    env_id = config.get("env_id")
    env_id = env_id if isinstance(env_id, str) else UNKNOWN_ENV
    started = (run_dir / CONFIG_FILE).stat().st_mtime
    status = read_status(run_dir)
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
        )
    hyperparameters = config.get("hyperparameters")
    planned = hyperparameters.get("n_timesteps") if isinstance(hyperparameters, dict) else None
    planned = planned if isinstance(planned, int) else None
    state = RunState.FINISHED if (run_dir / f"{FINAL_MODEL}.safetensors").exists() else RunState.INTERRUPTED
    curves = _read_curves(run_dir)
    if curves is None:
        return RunSummary(run_dir, env_id, started, state, None, planned, None, None, None, None)
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
    )


def list_runs(runs_root: Path = RUNS_ROOT, env_id: str | None = None) -> list[RunSummary]:
    """Every run folder under ``runs_root`` (see ``iter_runs``), oldest first; ``env_id`` may also be given
    as its folder name (``ALE-Pong-v5`` for ``ALE/Pong-v5``)."""
    runs = [summarize_run(run_dir) for run_dir in iter_runs(runs_root)]
    if env_id is not None:
        runs = [run for run in runs if env_folder_name(run.env_id) == env_folder_name(env_id)]
    return sorted(runs, key=lambda run: run.started)
