"""Training metrics, written twice: ``metrics.csv`` for scripts and TensorBoard events for eyes."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from dqn_cli.errors import UserError

METRICS_FILE = "metrics.csv"
COLUMNS = ("step", "wall_time", "episode_return", "episode_length", "loss", "epsilon", "eval_return")
TENSORBOARD_EVERY = (
    1_000  # env steps between TensorBoard points; a scalar costs ~50 us, an episode can be 10 steps
)


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _rows_up_to(path: Path, step: int) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
    except OSError:
        return []
    return [row for row in rows if row and row[0].isdigit() and int(row[0]) <= step]


class MetricsLogger:
    """One CSV row per finished episode and per evaluation. TensorBoard gets the mean of the episodes
    finished in each ``TENSORBOARD_EVERY`` steps, and every evaluation."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        """``resume_step`` > 0 continues a resumed run: rows and events after that step are dropped, as the
        resumed run writes them again."""
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / METRICS_FILE
        kept = _rows_up_to(path, resume_step) if resume_step else []
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)
        self._csv.writerows(kept)
        self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step or None)
        self._pending: dict[str, list[float]] = {
            "rollout/episode_return": [],
            "rollout/episode_length": [],
            "train/loss": [],
        }
        self._last_tb_step = 0

    def episode(
        self, step: int, wall_time: float, ret: float, length: int, loss: float | None, epsilon: float
    ) -> None:
        self._csv.writerow([_cell(v) for v in (step, wall_time, ret, length, loss, epsilon, None)])
        self._pending["rollout/episode_return"].append(ret)
        self._pending["rollout/episode_length"].append(length)
        if loss is not None:
            self._pending["train/loss"].append(loss)
        if step - self._last_tb_step >= TENSORBOARD_EVERY:
            self._write_tensorboard(step, epsilon)

    def _write_tensorboard(self, step: int, epsilon: float) -> None:
        for tag, values in self._pending.items():
            if values:
                self._tb.add_scalar(tag, sum(values) / len(values), step)
                values.clear()
        self._tb.add_scalar("rollout/epsilon", epsilon, step)
        self._last_tb_step = step
        self._file.flush()  # so `tail metrics.csv` follows a long run

    def evaluation(self, step: int, wall_time: float, mean_return: float, epsilon: float) -> None:
        self._csv.writerow([_cell(v) for v in (step, wall_time, None, None, None, epsilon, mean_return)])
        self._write_tensorboard(step, epsilon)
        self._tb.add_scalar("eval/mean_return", mean_return, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


@dataclass
class Curves:
    """What ``metrics.csv`` holds, as columns against env steps: episode ends and greedy evaluations."""

    episode_steps: list[int] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    last_step: int = 0
    last_wall_time: float = 0.0


def read_metrics(run_dir: Path) -> Curves:
    """Read a run's ``metrics.csv``; rows that do not parse (a line still being written) are skipped."""
    path = run_dir / METRICS_FILE
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    curves = Curves()
    for row in rows:
        if None in row.values():  # fewer cells than columns
            continue
        try:
            step, wall_time = int(row["step"]), float(row["wall_time"])
            if row["eval_return"]:
                curves.eval_returns.append(float(row["eval_return"]))
                curves.eval_steps.append(step)
            else:
                curves.episode_returns.append(float(row["episode_return"]))
                curves.episode_steps.append(step)
        except (KeyError, TypeError, ValueError):
            continue
        curves.last_step, curves.last_wall_time = step, wall_time
    return curves
