"""Learning curves as one PNG, for `dqn plot`: episode return against env steps (a rolling mean over
episodes, since single episodes are noisy) with the greedy evaluations as dots.

One panel per game. Runs of a game whose hyperparameters are identical differ only in seed, so they are
drawn as one curve: the mean over the seeds, with a band from the lowest to the highest seed, on a common
step grid. Runs with different hyperparameters get a curve each.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dqn_cli.errors import UserError
from dqn_cli.metrics import Curves, read_metrics
from dqn_cli.runfiles import CONFIG_FILE, is_run_dir, iter_runs, read_config, write_atomic

PLOT_FILE = "curves.png"
GRID_POINTS = 300


@dataclass
class PlottedRun:
    run_dir: Path
    env_id: str
    seed: int
    hyperparameters: str  # canonical JSON: runs with equal text differ only in seed
    curves: Curves


def load_run(run_dir: Path) -> PlottedRun:
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a run folder (it has no {CONFIG_FILE})")
    config = read_config(run_dir)
    return PlottedRun(
        run_dir,
        config["env_id"],
        config.get("seed", 0),
        json.dumps(config.get("hyperparameters", {}), sort_keys=True),
        read_metrics(run_dir),
    )


def runs_named_by(paths: Sequence[Path]) -> list[Path]:
    """The run folders ``paths`` name: a run folder itself, or every run below a folder that holds runs
    (``runs/CartPole-v1``, a bench folder). Files are passed over: a shell glob such as
    ``runs/CartPole-v1/*`` also picks up the ``curves.png`` an earlier plot left there."""
    runs: list[Path] = []
    for path in paths:
        if is_run_dir(path):
            runs.append(path)
        elif path.is_dir():
            found = list(iter_runs(path))
            if not found:
                raise UserError(
                    f"{path} is not a run folder and holds none (no {CONFIG_FILE} in it or below)"
                )
            runs += found
        elif not path.exists():
            raise UserError(f"no such run folder: {path}")
    if not runs:
        raise UserError("none of the paths given is a run folder or holds one")
    return runs


def default_output(run_dirs: Sequence[Path]) -> Path:
    """``curves.png`` inside the run for one run, else in the folder the runs have in common."""
    if len(run_dirs) == 1:
        return run_dirs[0] / PLOT_FILE
    try:
        common = os.path.commonpath(run_dirs)
    except ValueError:  # a mix of relative and absolute paths
        common = os.path.commonpath([d.resolve() for d in run_dirs])
    return Path(common) / PLOT_FILE


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of each value and up to ``window - 1`` before it (shorter windows at the start)."""
    sums = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def seed_band(runs: list[PlottedRun], smooth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed returns of each run on a common step grid; a run counts only within its own steps."""
    runs = [run for run in runs if run.curves.episode_steps]
    if not runs:
        return (np.empty(0),) * 4
    first = min(run.curves.episode_steps[0] for run in runs)
    last = max(run.curves.episode_steps[-1] for run in runs)
    grid = np.linspace(first, last, GRID_POINTS)
    table = np.stack(
        [
            np.interp(
                grid,
                run.curves.episode_steps,
                rolling_mean(run.curves.episode_returns, smooth),
                left=np.nan,
                right=np.nan,
            )
            for run in runs
        ]
    )
    covered = ~np.isnan(table).all(axis=0)
    table, grid = table[:, covered], grid[covered]
    return grid, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def eval_points(runs: list[PlottedRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluation step: the mean over the runs that evaluated there, and their min and max."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in zip(run.curves.eval_steps, run.curves.eval_returns, strict=True):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    values = [by_step[step] for step in steps]
    return (
        np.array(steps, dtype=float),
        np.array([np.mean(v) for v in values]),
        np.array([min(v) for v in values]),
        np.array([max(v) for v in values]),
    )


def group_runs(runs: list[PlottedRun]) -> dict[str, list[list[PlottedRun]]]:
    """Per game (a panel each), the runs grouped by identical hyperparameters (a curve each)."""
    games: dict[str, dict[str, list[PlottedRun]]] = {}
    for run in runs:
        games.setdefault(run.env_id, {}).setdefault(run.hyperparameters, []).append(run)
    return {env_id: list(groups.values()) for env_id, groups in games.items()}


def _label(runs: list[PlottedRun]) -> str:
    if len(runs) == 1:
        return runs[0].run_dir.name
    seeds = ", ".join(str(run.seed) for run in sorted(runs, key=lambda run: run.seed))
    return f"{len(runs)} seeds ({seeds}): mean, min-max band"


def _draw_group(ax: Axes, runs: list[PlottedRun], color: str, smooth: int) -> None:
    grid, mean, low, high = seed_band(runs, smooth)
    ax.plot(grid, mean, color=color, linewidth=1.6, label=_label(runs))
    if len(runs) > 1:
        ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    steps, mean, low, high = eval_points(runs)
    if len(steps):
        ax.errorbar(
            steps,
            mean,
            yerr=(mean - low, high - mean) if len(runs) > 1 else None,
            fmt="o",
            color=color,
            markersize=5,
            markeredgecolor="black",
            markeredgewidth=0.5,
            capsize=2,
        )


def plot_runs(run_dirs: Sequence[Path], out: Path | None = None, smooth: int = 20) -> Path:
    """Draw the learning curves of ``run_dirs`` into one PNG and return its path."""
    if out is not None and out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png, got {out.name!r}")
    run_dirs = runs_named_by(run_dirs)
    games = group_runs([load_run(run_dir) for run_dir in run_dirs])
    out = out or default_output(run_dirs)
    figure = Figure(figsize=(8, 4.2 * len(games)), layout="constrained")
    panels = figure.subplots(len(games), squeeze=False)[:, 0]
    for ax, (env_id, groups) in zip(panels, games.items(), strict=True):
        for index, group in enumerate(groups):
            _draw_group(ax, group, f"C{index % 10}", smooth)
        ax.set_title(f"{env_id}: episode return (mean of the last {smooth}); dots: greedy evaluations")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, buffer.getvalue())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    return out
