"""The runs under ``runs/`` and how far each got, for `dqn runs`.

A run's own ``status.json`` is the source; a run that says it is running but whose process is gone was
killed without a chance to say so, and is shown as interrupted. Runs written before ``status.json``
existed are described from ``config.toml`` and ``metrics.csv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dqn_cli.errors import UserError
from dqn_cli.metrics import METRICS_FILE, read_metrics
from dqn_cli.runfiles import CONFIG_FILE, FINAL_MODEL, RUNS_ROOT, env_folder_name, read_config, read_status


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    env_id: str
    started: float  # config.toml's modification time, the order `dqn eval` uses to find the newest run
    state: str  # running, finished, interrupted or diverged
    step: int | None
    planned_steps: int | None
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


def summarize_run(run_dir: Path) -> RunSummary:
    try:
        config = read_config(run_dir)
    except UserError:
        config = {}
    env_id = str(config.get("env_id", run_dir.parent.name))
    started = (run_dir / CONFIG_FILE).stat().st_mtime
    status = read_status(run_dir)
    if status is not None:
        state = status.get("state", "interrupted")
        if state == "running" and not process_alive(status.get("pid")):
            state = "interrupted"
        return RunSummary(
            run_dir,
            env_id,
            started,
            state,
            status.get("step"),
            status.get("planned_steps"),
            status.get("best_eval"),
            status.get("last_eval"),
            status.get("wall_time"),
        )
    planned = config.get("hyperparameters", {}).get("n_timesteps")
    state = "finished" if (run_dir / f"{FINAL_MODEL}.safetensors").exists() else "interrupted"
    if not (run_dir / METRICS_FILE).exists():
        return RunSummary(run_dir, env_id, started, state, None, planned, None, None, None)
    curves = read_metrics(run_dir)
    return RunSummary(
        run_dir,
        env_id,
        started,
        state,
        curves.last_step,
        planned,
        max(curves.eval_returns, default=None),
        curves.eval_returns[-1] if curves.eval_returns else None,
        curves.last_wall_time,
    )


def list_runs(runs_root: Path = RUNS_ROOT, env_id: str | None = None) -> list[RunSummary]:
    """Every run folder (one holding ``config.toml``) under ``runs_root``, oldest first; ``env_id`` may
    also be given as its folder name (``ALE-Pong-v5`` for ``ALE/Pong-v5``)."""
    runs = [summarize_run(config.parent) for config in runs_root.glob(f"*/*/{CONFIG_FILE}")]
    if env_id is not None:
        runs = [run for run in runs if env_folder_name(run.env_id) == env_folder_name(env_id)]
    return sorted(runs, key=lambda run: run.started)
