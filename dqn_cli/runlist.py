"""The runs under ``runs/`` and how far each got, for `dqn runs`.

A run's own ``status.json`` is the source; a run that says it is running but whose process is gone was
killed without a chance to say so, and is shown as interrupted. Runs written before ``status.json``
existed are described from ``config.toml`` and ``metrics.csv``. A run folder with a damaged file is still
listed, with what can be read and a warning naming the file, so one bad run never hides the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

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


# ------------------------------------------------------------------------------------------ the listing

UNBOUNDED = 1_000_000  # columns, for measuring a table's natural width
PATH_HEADER = "run (under runs/)"  # the path names the game: no env column
NUMBER_HEADERS = ("steps", "updates", "best eval", "last eval", "wall time")
STATE_STYLES = {
    RunState.FINISHED: "green",
    RunState.RUNNING: "cyan",
    RunState.INTERRUPTED: "yellow",
    RunState.PRUNED: "magenta",
    RunState.DIVERGED: "red",
}


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class RunsView:
    """`dqn runs`'s listing, laid out for the width it is drawn at: a table with one row per run where
    that fits, else each run's path on a line of its own above its numbers (aligned in columns), so a path
    is never broken over lines (in a table cell at 80 columns, a path was folded over three)."""

    def __init__(self, runs: Sequence[RunSummary], runs_root: Path = RUNS_ROOT) -> None:
        self._runs, self._root = runs, runs_root

    def _path(self, run: RunSummary) -> Text:
        # plain Text: a "[" in a folder name is not rich markup; bench/ and tune runs show by their path
        return Text(run.run_dir.relative_to(self._root).as_posix())

    def _cells(self, run: RunSummary) -> list[str | Text]:
        return [
            f"{_number(run.step, 0)} / {_number(run.planned_steps, 0)}",
            _number(run.updates, 0),
            _number(run.best_eval),
            _number(run.last_eval),
            _duration(run.wall_time),
            Text(run.state, style=STATE_STYLES[run.state]),
        ]

    def _table(self, with_paths: bool, **table_options: object) -> Table:
        table = Table(**table_options)
        if with_paths:
            table.add_column(PATH_HEADER)
        for header in NUMBER_HEADERS:
            table.add_column(header, justify="right", no_wrap=True)
        table.add_column("status", no_wrap=True)
        for run in self._runs:
            table.add_row(*([self._path(run)] if with_paths else []), *self._cells(run))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self._table(with_paths=True)
        unbounded = options.update(max_width=UNBOUNDED)  # Measurement.get clamps to the width it is given
        if not self._runs or Measurement.get(console, unbounded, table).maximum <= options.max_width:
            yield table
            return
        numbers = self._table(with_paths=False, box=None, pad_edge=False, header_style="bold")
        lines = console.render_lines(Padding(numbers, (0, 0, 0, 2), expand=False), options, pad=False)
        header, rows = lines[: -len(self._runs)], lines[-len(self._runs) :]  # a row is one line: no_wrap
        yield Text(PATH_HEADER, style="bold")
        yield from _lines(header)
        for run, row in zip(self._runs, rows, strict=True):
            yield self._path(run)
            yield from _lines([row])


def _lines(lines: list[list[Segment]]) -> Iterator[Segment]:
    """Rendered lines back as segments, each ended by a line break."""
    for line in lines:
        yield from line
        yield Segment.line()
