"""Training metrics, written twice: ``metrics.csv`` for scripts and TensorBoard events for eyes."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from dqn_cli.errors import UserError
from dqn_cli.runfiles import read_untrusted_bytes, read_untrusted_text, write_atomic

METRICS_FILE = "metrics.csv"
MAX_METRICS_BYTES = 64 << 20  # about a million episodes
COLUMNS = ("step", "wall_time", "episode_return", "episode_length", "loss", "epsilon", "eval_return")
TENSORBOARD_EVERY = (
    1_000  # env steps between TensorBoard points; a scalar costs ~50 us, an episode can be 10 steps
)


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _parse_row(row: list[str]) -> tuple[int, float, float, bool] | None:
    """(step, wall time, return, whether it is an evaluation) of a data row, or None for a row that does
    not parse: one still being written, or damaged."""
    if len(row) != len(COLUMNS):
        return None
    try:
        step, wall_time = int(row[0]), float(row[1])
        evaluation = row[6] != ""
        value = float(row[6] if evaluation else row[2])
    except ValueError:
        return None
    if not 0 <= step < 2**63 or not (math.isfinite(wall_time) and math.isfinite(value)):
        return None
    return step, wall_time, value, evaluation


def _rows_up_to(path: Path, step: int) -> list[list[str]]:
    """The rows a resumed run keeps: those of the old file that parse, up to the resume step. The file
    is a log the checkpoint does not depend on, so damage only loses the rows it hits."""
    try:
        data = read_untrusted_bytes(path, "metrics file", MAX_METRICS_BYTES)
    except (FileNotFoundError, UserError):
        return []
    kept = []
    try:
        for row in csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")):
            parsed = _parse_row(row)
            if parsed is not None and parsed[0] <= step:
                kept.append(row)
    except csv.Error:  # a NUL byte or an overlong field: the rest is lost
        pass
    return kept


class MetricsLogger:
    """One CSV row per finished episode and per evaluation. TensorBoard gets the mean of the episodes
    finished in each ``TENSORBOARD_EVERY`` steps, and every evaluation."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        """``resume_step`` > 0 continues a resumed run: rows and events after that step are dropped, as the
        resumed run writes them again."""
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / METRICS_FILE
        kept = _rows_up_to(path, resume_step) if resume_step else []
        # the header and the rows kept replace the file at once (a reader never sees it cut short),
        # then this session appends
        table = io.StringIO()
        csv.writer(table).writerows([COLUMNS, *kept])
        write_atomic(path, table.getvalue().encode("utf-8"))
        self._file = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
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
    """Read a run's ``metrics.csv``; rows that do not parse (a line still being written) are skipped. A
    file that is not one (other bytes than UTF-8 text, not CSV, another header) is a one-line UserError:
    the header is the format's version, unchanged since the first."""
    path = run_dir / METRICS_FILE
    try:
        text = read_untrusted_text(path, "metrics file", MAX_METRICS_BYTES)
    except FileNotFoundError:
        raise UserError(f"cannot read metrics file {path}: it is missing") from None
    curves, rows = Curves(), csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows, None)  # None: empty, as a run that has only just started may leave it
        if header is not None and tuple(header) != COLUMNS:
            raise UserError(f"{path} is not a dqn metrics file: its first line is not {','.join(COLUMNS)}")
        for parsed in filter(None, map(_parse_row, rows)):
            step, wall_time, value, evaluation = parsed
            steps, values = (
                (curves.eval_steps, curves.eval_returns)
                if evaluation
                else (curves.episode_steps, curves.episode_returns)
            )
            steps.append(step)
            values.append(value)
            curves.last_step, curves.last_wall_time = step, wall_time
    except csv.Error as exc:  # a NUL byte, or a field over csv's size limit
        raise UserError(f"cannot read metrics file {path}: not valid CSV ({exc})") from None
    return curves
