"""The overhead of Ray on one machine: `dqn bench CartPole-v1 Acrobot-v1 --seeds 4` with `--jobs 2` (two
local worker processes) vs `--ray local` (a throwaway local Ray; each seed a task reserving one CPU).

Each command is a whole process timed from launch to exit, the two alternating, in a fresh folder each
time; the table also gives the seeds' own training time (results.json's wall_time, summed), so what is
left of the wall time is start-up, scoring, plotting and, for Ray, starting the cluster and placing tasks.
Needs the `ray` extra: pip install -e ".[ray]". Run it on a quiet machine:

    python benchmarks/ray_overhead.py --repeats 3
    python benchmarks/ray_overhead.py --repeats 1 --set n_timesteps=2000 --print-only   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from results import append_results

ENVS = ["CartPole-v1", "Acrobot-v1"]
SEEDS = 4
MODES = {"--jobs 2": ["--jobs", "2"], "--ray local": ["--ray", "local"]}


def run_bench(mode: list[str], sets: list[str]) -> tuple[float, float]:
    """Wall time of one `dqn bench` and the summed training time of its seeds."""
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as work:
        command = ["dqn", "bench", *ENVS, "--seeds", str(SEEDS), "--name", "b", "--device", "cpu", *mode]
        command += [arg for item in sets for arg in ("--set", item)]
        start = time.perf_counter()
        subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        rows = json.loads((Path(work) / "runs" / "bench" / "b" / "results.json").read_text())
        return wall, sum(row["wall_time"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command, alternating")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to dqn bench")
    parser.add_argument("--print-only", action="store_true", help="print; keep out of RESULTS.md")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in MODES}
    training: dict[str, list[float]] = {name: [] for name in MODES}
    for _ in range(args.repeats):
        for name, mode in MODES.items():
            wall, trained = run_bench(mode, args.set)
            walls[name].append(wall)
            training[name].append(trained)
    base = statistics.median(walls["--jobs 2"])
    budget = f" with --set {' '.join(args.set)}" if args.set else " (the shipped presets)"
    lines = [
        f"`dqn bench {' '.join(ENVS)} --seeds {SEEDS}`{budget}, {args.repeats} run(s) of each, "
        f"{os.cpu_count()} cores; median wall time of the whole command.",
        "",
        "| command | wall time (median) | vs --jobs 2 | seeds' training time, summed (median) | runs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in MODES:
        wall = statistics.median(walls[name])
        lines.append(
            f"| `{name}` | {wall:.1f} s | {wall / base:.2f} x | {statistics.median(training[name]):.1f} s | "
            + ", ".join(f"{w:.1f}" for w in walls[name])
            + " |"
        )
    append_results("Ray overhead on one machine: dqn bench --jobs 2 vs --ray local", lines, args.print_only)


if __name__ == "__main__":
    main()
