"""Live progress bars: training (nothing at all with ``--quiet``), and episodes played by ``dqn eval`` and
``dqn record`` (an Atari game can take a minute)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

REFRESH_SECONDS = 0.25


class TrainingProgress:
    """Steps, steps/s, epsilon, mean return of the last 100 episodes and the last evaluation."""

    def __init__(self, env_id: str, total_steps: int, quiet: bool, start_step: int = 0) -> None:
        self._quiet = quiet
        self._total = total_steps
        self._last_refresh = 0.0
        self._start = time.perf_counter()
        self._progress = Progress(
            TextColumn(f"[bold]{env_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[rate]:>7} steps/s  ε {task.fields[eps]}  return {task.fields[ret]}"
                "  eval {task.fields[eval]}"
            ),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=quiet,
        )
        self._start_step = start_step
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, rate="-", eps="-", ret="-", eval="-"
        )

    def __enter__(self) -> TrainingProgress:
        self._start = time.perf_counter()
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(
        self, step: int, epsilon: float, recent_returns: Sequence[float], last_eval: float | None
    ) -> None:
        if self._quiet:
            return
        now = time.perf_counter()
        if now - self._last_refresh < REFRESH_SECONDS and step < self._total:
            return
        self._last_refresh = now
        mean_return = f"{sum(recent_returns) / len(recent_returns):.1f}" if recent_returns else "-"
        self._progress.update(
            self._task,
            completed=min(step, self._total),
            rate=f"{(step - self._start_step) / max(now - self._start, 1e-9):,.0f}",
            eps=f"{epsilon:.3f}",
            ret=mean_return,
            eval="-" if last_eval is None else f"{last_eval:.1f}",
        )


class EpisodeProgress:
    """Episodes finished out of those asked for, on stderr and only on a terminal, gone once done: piped
    output and ``--json`` stay exactly as they were."""

    def __init__(self, label: str, episodes: int) -> None:
        console = Console(stderr=True)
        self._progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        )
        self._task = self._progress.add_task(label, total=episodes)

    def __enter__(self) -> EpisodeProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self) -> None:
        self._progress.advance(self._task)
