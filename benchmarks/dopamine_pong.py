"""Pong learning curves beside Dopamine's published baselines, on the one axis both report: the mean
return of training episodes in each window of 1M frames (250k agent steps at frame skip 4).

    python benchmarks/dopamine_pong.py --dopamine pong.json \
        --run "M: replay 400k, seed 1"=runs/explore/pong-M-buf400k-s1/metrics.csv ...

``pong.json`` is google/dopamine's baselines/atari/data/pong.json (5 seeds per agent, training returns
per iteration of 1M frames, sticky actions, training epsilon 0.01); the benchmark reads a copy the user
fetched, since nothing is downloaded at run time. A metrics.csv row with an ``episode_return`` is one of
dqn's training episodes, ending at ``step``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from results import append_results

STEPS_PER_ITERATION = 250_000  # Dopamine's iteration: 1M frames at frame skip 4


def dopamine_means(path: Path) -> dict[str, tuple[list[float], int]]:
    """Each agent's mean over its seeds per iteration, and how many seeds it has."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in json.loads(path.read_text()):
        values[row["Agent"]][int(row["Iteration"])].append(float(row["Value"]))
    return {
        agent: ([statistics.fmean(by[i]) for i in sorted(by)], len(by[min(by)]))
        for agent, by in values.items()
    }


def training_means(path: Path) -> tuple[list[float | None], int]:
    """Mean training-episode return per iteration window, and the last step the run reached."""
    windows: dict[int, list[float]] = defaultdict(list)
    last_step = 0
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            last_step = max(last_step, step)
            if row.get("episode_return"):
                windows[step // STEPS_PER_ITERATION].append(float(row["episode_return"]))
    count = last_step // STEPS_PER_ITERATION + 1
    return [statistics.fmean(windows[i]) if windows[i] else None for i in range(count)], last_step


def window(iteration: int) -> str:
    """The agent steps an iteration spans, as a column heading."""
    return f"{iteration * STEPS_PER_ITERATION // 1000}k-{(iteration + 1) * STEPS_PER_ITERATION // 1000}k"


def table(dopamine: dict[str, tuple[list[float], int]], runs: dict[str, Path], iterations: int) -> list[str]:
    header = [window(i) for i in range(iterations)]
    lines = [
        "| agent | " + " | ".join(header) + " | first window with mean >= 18 |",
        "| --- | " + " | ".join("---" for _ in header) + " | --- |",
    ]
    for label, path in runs.items():
        means, last_step = training_means(path)
        cells = ["" if i >= len(means) or means[i] is None else f"{means[i]:+.1f}" for i in range(iterations)]
        if len(means) <= iterations and last_step % STEPS_PER_ITERATION:
            cells[len(means) - 1] += f" (to {last_step // 1000}k)"
        lines.append(f"| dqn {label} | " + " | ".join(cells) + f" | {reached(means, last_step)} |")
    for agent, (means, seeds) in dopamine.items():
        cells = [f"{means[i]:+.1f}" for i in range(iterations)]
        last_step = len(means) * STEPS_PER_ITERATION
        label = f"Dopamine {agent} ({seeds} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {reached(means, last_step)} |")
    return lines


def reached(means: list[float | None], last_step: int, score: float = 18.0) -> str:
    """The first window whose mean is at least ``score``; a window with no episodes has no mean."""
    first = next((i for i, value in enumerate(means) if value is not None and value >= score), None)
    if first is None:
        return f"not within {last_step // 1000}k"
    return window(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dopamine", type=Path, required=True, help="a copy of Dopamine's pong.json")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=METRICS_CSV")
    parser.add_argument("--iterations", type=int, default=4, help="windows of 250k agent steps to show")
    parser.add_argument("--print-only", action="store_true", help="show the table, keep RESULTS.md as is")
    args = parser.parse_args()
    runs = {}
    for spec in args.run:
        label, _, path = spec.partition("=")
        if not path:
            parser.error(f"--run {spec!r}: expected LABEL=METRICS_CSV")
        runs[label] = Path(path)
    lines = [
        "Mean return of training episodes (epsilon 0.01 once its schedule ends; sticky actions, "
        "`ALE/Pong-v5`) per window of agent steps (Dopamine's iterations of 1M frames). Dopamine: "
        "google/dopamine baselines/atari/data/pong.json, the mean of its 5 seeds per iteration.",
        "",
        *table(dopamine_means(args.dopamine), runs, args.iterations),
    ]
    append_results("Pong training returns beside Dopamine's published baselines", lines, args.print_only)


if __name__ == "__main__":
    main()
