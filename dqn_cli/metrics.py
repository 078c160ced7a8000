"""Training metrics, written twice: ``metrics.csv`` for scripts and TensorBoard events for eyes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

METRICS_FILE = "metrics.csv"
COLUMNS = ("step", "wall_time", "episode_return", "episode_length", "loss", "epsilon", "eval_return")


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class MetricsLogger:
    """One CSV row per finished episode and per evaluation; the same scalars go to TensorBoard."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._file = (run_dir / METRICS_FILE).open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)
        self._tb = SummaryWriter(log_dir=str(run_dir))

    def episode(
        self, step: int, wall_time: float, ret: float, length: int, loss: float | None, epsilon: float
    ):
        self._csv.writerow([_cell(v) for v in (step, wall_time, ret, length, loss, epsilon, None)])
        self._tb.add_scalar("rollout/episode_return", ret, step)
        self._tb.add_scalar("rollout/episode_length", length, step)
        self._tb.add_scalar("rollout/epsilon", epsilon, step)
        if loss is not None:
            self._tb.add_scalar("train/loss", loss, step)

    def evaluation(self, step: int, wall_time: float, mean_return: float, epsilon: float) -> None:
        self._csv.writerow([_cell(v) for v in (step, wall_time, None, None, None, epsilon, mean_return)])
        self._tb.add_scalar("eval/mean_return", mean_return, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()
