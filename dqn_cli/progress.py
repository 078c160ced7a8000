"""Progress of long work on stderr: training (nothing at all with ``--quiet``), the episodes that
``dqn eval`` and ``dqn record`` play (an Atari game can take a minute), and the tasks of ``--ray``.

On a terminal it is a live bar that fits the terminal's width: as the width shrinks, the least useful
parts go first (elapsed time, ε, the label, the bar itself, ...), the step count and steps/s last. Each
frame is drawn from the latest numbers, so the last one, drawn as the bar closes, shows what the summary
after it says (a bar refreshed on a timer showed the evaluation before the one that stopped training).

Anywhere else (nohup, CI, a log file) a bar prints nothing until it closes, then one line cut to 80
columns. So there the progress is plain lines instead: whole, without ANSI codes, one every
``DQN_PROGRESS_SECONDS`` seconds (10 by default), for training the first soon after the start and one
more at the end. A thread writes them, so they keep their pace while an evaluation or a long Atari episode
holds up the loop.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dqn_cli.errors import UserError

LOG_SECONDS_VARIABLE = "DQN_PROGRESS_SECONDS"
DEFAULT_LOG_SECONDS = 10.0
FIRST_LINE_SECONDS = 2.0  # training's first log line: soon, once steps/s means something
REFRESHES_PER_SECOND = 4
SEPARATOR = 2  # spaces between the parts of a bar's line
MIN_BAR_WIDTH = 10  # narrower than this, a bar says nothing the step count does not
MAX_BAR_WIDTH = 40


def log_seconds() -> float:
    """Seconds between progress lines where stderr is not a terminal: ``DQN_PROGRESS_SECONDS``, else 10."""
    text = os.environ.get(LOG_SECONDS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LOG_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"{LOG_SECONDS_VARIABLE} must be a number of seconds > 0, not {text!r}")
    return seconds


def clock(seconds: float | None) -> str:
    """``h:mm:ss``, as rich writes times; ``-:--:--`` while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# ------------------------------------------------------------------------------------ a bar's line


@dataclass(frozen=True)
class Field:
    """A piece of text in a bar's line; when the line is too wide the lowest ``rank`` goes first."""

    text: str
    rank: int
    style: str = ""


@dataclass(frozen=True)
class Bar:
    """The bar itself: it takes the width the fields leave, between MIN_ and MAX_BAR_WIDTH."""

    completed: float
    total: float
    rank: int


Part = Field | Bar


def _width(part: Part) -> int:
    return MIN_BAR_WIDTH if isinstance(part, Bar) else cell_len(part.text)


def fit_line(parts: Sequence[Part], width: int) -> Table:
    """The parts, in their order, that fit ``width`` columns once the lowest-ranked are dropped; the bar
    (if kept) widened into what is left."""
    kept = list(parts)
    while len(kept) > 1 and sum(map(_width, kept)) + SEPARATOR * (len(kept) - 1) > width:
        kept.remove(min(kept, key=lambda part: part.rank))
    spare = width - sum(map(_width, kept)) - SEPARATOR * (len(kept) - 1)
    line = Table.grid(padding=(0, SEPARATOR, 0, 0))
    cells: list[RenderableType] = []
    for part in kept:
        line.add_column(no_wrap=True)
        if isinstance(part, Bar):
            bar_width = MIN_BAR_WIDTH + min(max(spare, 0), MAX_BAR_WIDTH - MIN_BAR_WIDTH)
            cells.append(ProgressBar(total=part.total, completed=part.completed, width=bar_width))
        else:
            cells.append(Text(part.text, style=part.style))  # Text: a "[" in an env id is not markup
    line.add_row(*cells)
    return line


# ------------------------------------------------------------------------------------ the two displays


class _LogLines:
    """Writes ``line()`` to the console's file every ``every`` seconds, from a thread, the first after
    ``first``; ``stop`` writes one more if ``final``. Written raw: no wrapping, cropping or ANSI codes."""

    def __init__(self, console: Console, line: Callable[[], str], every: float, first: float, final: bool):
        self._console, self._line, self._every, self._first, self._final = console, line, every, first, final
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._write_periodically, name="dqn-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        if self._final:
            self._write()

    def _write_periodically(self) -> None:
        wait = self._first
        while not self._stopped.wait(wait):
            self._write()
            wait = self._every

    def _write(self) -> None:
        stream = self._console.file
        stream.write(self._line() + "\n")  # one write: a line never interleaves with another thread's
        stream.flush()


def _display(
    console: Console,
    renderable: RenderableType,
    line: Callable[[], str],
    *,
    first_line: float | None,
    final_line: bool,
    transient: bool,
) -> Live | _LogLines:
    """A live bar on a terminal; elsewhere log lines (the first after ``first_line`` seconds, or after the
    usual interval if None)."""
    if console.is_terminal and not console.is_dumb_terminal:
        return Live(renderable, console=console, refresh_per_second=REFRESHES_PER_SECOND, transient=transient)
    every = log_seconds()
    first = every if first_line is None else min(first_line, every)
    return _LogLines(console, line, every, first, final_line)


class _FittedLine:
    """A rich renderable: its ``parts()`` fitted to the width it is drawn at, each time it is drawn."""

    def parts(self) -> list[Part]:
        raise NotImplementedError

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        yield fit_line(self.parts(), options.max_width)


# ------------------------------------------------------------------------------------------ training


class TrainingProgress(_FittedLine):
    """Steps, steps/s, ε, mean return of the last 100 episodes, the last evaluation and the time left.
    ``console`` (default: stderr) decides between a bar and log lines."""

    def __init__(
        self,
        env_id: str,
        total_steps: int,
        quiet: bool,
        start_step: int = 0,
        console: Console | None = None,
    ) -> None:
        self._env_id, self._total, self._start_step = env_id, total_steps, start_step
        self._step, self._epsilon, self._last_eval = start_step, None, None
        self._recent_returns: Sequence[float] = ()
        self._started = time.perf_counter()
        self._closed = False
        self._display = None
        if not quiet:
            self._display = _display(
                console or Console(stderr=True),
                self,
                self.log_line,
                first_line=FIRST_LINE_SECONDS,
                final_line=True,
                transient=False,
            )

    def __enter__(self) -> TrainingProgress:
        self._started = time.perf_counter()
        if self._display is not None:
            self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True  # no time left to estimate, even if training stopped short of its total
        if self._display is not None:
            self._display.stop()  # a bar draws a last frame, log lines a last line, from the final numbers

    def update(
        self, step: int, epsilon: float, recent_returns: Sequence[float], last_eval: float | None
    ) -> None:
        """Called every loop step, so it only keeps the numbers; the display reads them when it draws."""
        self._step, self._epsilon, self._last_eval = step, epsilon, last_eval
        self._recent_returns = recent_returns

    def _numbers(self) -> dict[str, str]:
        elapsed = time.perf_counter() - self._started
        done = self._step - self._start_step
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        returns, left = self._recent_returns, max(self._total - self._step, 0)
        eta = 0 if left == 0 else None if self._closed or rate is None else left / rate
        return {
            "steps": f"{self._step:,}/{self._total:,}",
            "rate": "-" if rate is None else f"{rate:,.0f}",
            "epsilon": "-" if self._epsilon is None else f"{self._epsilon:.3f}",
            "return": f"{sum(returns) / len(returns):.1f}" if returns else "-",
            "eval": "-" if self._last_eval is None else f"{self._last_eval:.1f}",
            "elapsed": clock(elapsed),
            "eta": clock(eta),
        }

    def parts(self) -> list[Part]:
        """The bar's line, in order; the ranks say what a narrow terminal keeps."""
        n, full = self._numbers(), f"{self._total:,}/{self._total:,}"
        return [  # numbers padded to a steady width, so that the line does not shift as they grow
            Field(self._env_id, rank=2, style="bold"),
            Bar(min(self._step, self._total), self._total, rank=3),
            Field(n["steps"].rjust(len(full)), rank=9),
            Field(f"{n['rate']:>5} steps/s", rank=8),
            Field(f"ε {n['epsilon']}", rank=1),
            Field(f"return {n['return']}", rank=5),
            Field(f"eval {n['eval']}", rank=6),
            Field(n["elapsed"], rank=0, style="progress.elapsed"),
            Field(f"eta {n['eta']}", rank=7, style="progress.remaining"),
        ]

    def log_line(self) -> str:
        n = self._numbers()
        percent = 100 * self._step / self._total if self._total else 100.0
        return (
            f"{self._env_id}  step {n['steps']} ({percent:.0f}%)  {n['rate']} steps/s  ε {n['epsilon']}  "
            f"return {n['return']}  eval {n['eval']}  elapsed {n['elapsed']}  eta {n['eta']}"
        )


# ------------------------------------------------------------------------------------------ episodes


class EpisodeProgress(_FittedLine):
    """Episodes finished out of those asked for, on stderr (``console``): on a terminal a bar, gone once
    done; elsewhere a line every ``DQN_PROGRESS_SECONDS`` while the episodes last, none for work shorter
    than that. Stdout, and so ``--json``, is left alone."""

    def __init__(self, label: str, episodes: int, console: Console | None = None) -> None:
        self._label, self._episodes, self._done = label, episodes, 0
        self._started = time.perf_counter()
        self._display = _display(
            console or Console(stderr=True),
            self,
            self.log_line,
            first_line=None,
            final_line=False,
            transient=True,
        )

    def __enter__(self) -> EpisodeProgress:
        self._started = time.perf_counter()
        self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._display.stop()

    def advance(self) -> None:
        self._done += 1

    def parts(self) -> list[Part]:
        return [
            Field(self._label, rank=2, style="bold"),
            Bar(self._done, self._episodes, rank=3),
            Field(f"{self._done}/{self._episodes} episodes", rank=9),
            Field(clock(time.perf_counter() - self._started), rank=5, style="progress.elapsed"),
        ]

    def log_line(self) -> str:
        elapsed = clock(time.perf_counter() - self._started)
        return f"{self._label}  {self._done}/{self._episodes} episodes  elapsed {elapsed}"


# ------------------------------------------------------------------------------------- tasks on Ray


@dataclass
class TaskState:
    """Where one running task of `dqn bench --ray` / `dqn tune --ray` stands, as it last reported."""

    label: str  # "CartPole-v1 seed 2", "trial 7"
    step: int = 0
    planned: int = 0
    last_eval: float | None = None
    node: str = ""  # the Ray node's address


class TaskProgress:
    """One line per running task (label, bar, steps, last evaluation, node) and the count of tasks done,
    on stderr (``console``): a live display on a terminal, else all of it every ``DQN_PROGRESS_SECONDS``."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self._total, self._done = total, 0
        self._running: dict[object, TaskState] = {}
        self._display = _display(
            console or Console(stderr=True),
            self,
            self.log_line,
            first_line=None,
            final_line=False,
            transient=True,
        )

    def __enter__(self) -> TaskProgress:
        self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._display.stop()

    def update(self, running: dict[object, TaskState], done: int) -> None:
        self._running, self._done = dict(running), done

    @staticmethod
    def _numbers(task: TaskState) -> tuple[str, str]:
        steps = f"{task.step:,}/{task.planned:,}" if task.planned else f"{task.step:,}"
        return steps, "-" if task.last_eval is None else f"{task.last_eval:.1f}"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        label_width = max((cell_len(task.label) for task in self._running.values()), default=0)
        for task in self._running.values():  # labels padded alike, so that the bars line up
            steps, last_eval = self._numbers(task)
            yield fit_line(
                [
                    Field(task.label.ljust(label_width), rank=9, style="bold"),
                    Bar(min(task.step, task.planned), task.planned or 1, rank=3),
                    Field(steps, rank=8),
                    Field(f"eval {last_eval}", rank=7),
                    Field(task.node, rank=1, style="dim"),
                ],
                options.max_width,
            )
        yield Text(f"{self._done}/{self._total} tasks done, {len(self._running)} running")

    def log_line(self) -> str:
        lines = [f"{self._done}/{self._total} tasks done, {len(self._running)} running"]
        for task in self._running.values():
            steps, last_eval = self._numbers(task)
            lines.append(f"  {task.label}  step {steps}  eval {last_eval}  on {task.node}")
        return "\n".join(lines)
