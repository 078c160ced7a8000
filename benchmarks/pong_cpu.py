"""Pong on this machine with the atari-cpu preset: per seed, the whole process's wall time, env steps,
a fresh 10-game evaluation of the kept model and the minutes to the first periodic evaluation >= +18.

Each seed runs `dqn train ALE/Pong-v5 --preset atari-cpu --seed S` alone, one after another; then
`dqn eval RUN --episodes 10 --json` scores the kept (best-evaluated) model on games it never saw. Writes
benchmarks/results/pong-atari-cpu.json, the curves benchmarks/pong-cpu-curves-s<SEEDS>.png (`dqn plot`)
and a table in RESULTS.md.

    python benchmarks/pong_cpu.py --seeds 1 2 3

`--minutes M` stops a run that has not won by then with Ctrl-C's signal (the run saves its checkpoint
and keeps best.safetensors, the model the fresh evaluation scores): the target is a win within 60 minutes.
A run already made with that same command (e.g. under `/usr/bin/time`) is summarized, not rerun, with
`--existing SEED:RUN_DIR:WALL_SECONDS`. Seeds measured earlier (their runs since deleted) stay in the
JSON and the table: a seed measured now replaces only its own row. The curves show the runs given now.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import time
from pathlib import Path

from results import append_results

HERE = Path(__file__).parent
TARGET = 18.0


def train(seed: int, run_dir: Path, minutes: float | None) -> float:
    """Whole-process wall time of one training run, interrupted (SIGINT, exit 130) after `minutes`."""
    command = ["dqn", "train", "ALE/Pong-v5", "--preset", "atari-cpu", "--seed", str(seed)]
    start = time.perf_counter()
    process = subprocess.Popen([*command, "--run-dir", str(run_dir), "--quiet"])
    try:
        process.wait(timeout=None if minutes is None else minutes * 60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait()
    if process.returncode not in (0, 130):
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return time.perf_counter() - start


def summarize(seed: int, run_dir: Path, wall_s: float) -> dict:
    """The figures of one run, from its metrics.csv and status.json and a fresh evaluation."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        evaluations = [
            (float(row["wall_time"]), float(row["eval_return"]))
            for row in csv.DictReader(handle)
            if row["eval_return"]
        ]
    reached = [clock for clock, score in evaluations if score >= TARGET]
    status = json.loads((run_dir / "status.json").read_text())
    scored = subprocess.run(
        ["dqn", "eval", str(run_dir), "--episodes", "10", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "steps": status["step"],
        "eval_mean": json.loads(scored.stdout)["mean_return"],
        "minutes_to_18": round(reached[0] / 60, 1) if reached else None,
        "best_periodic_eval": max((score for _, score in evaluations), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="seeds to train now, one at a time")
    parser.add_argument(
        "--existing",
        nargs="*",
        default=[],
        metavar="SEED:RUN_DIR:WALL_S",
        help="runs made with the same command",
    )
    parser.add_argument("--minutes", type=float, help="interrupt a run still training after M minutes")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ALE/Pong-v5"), help="where new runs go")
    args = parser.parse_args()
    if not args.seeds and not args.existing:
        parser.error("give --seeds to train, or --existing runs to summarize")
    runs = []
    for entry in args.existing:
        seed, run_dir, wall = entry.split(":")
        runs.append((int(seed), Path(run_dir), float(wall)))
    for seed in args.seeds:
        run_dir = args.runs_dir / f"atari-cpu-s{seed}"
        runs.append((seed, run_dir, train(seed, run_dir, args.minutes)))
    out = HERE / "results" / "pong-atari-cpu.json"
    measured = {row["seed"]: row for row in json.loads(out.read_text())} if out.exists() else {}
    measured |= {seed: summarize(seed, run_dir, wall) for seed, run_dir, wall in runs}
    rows = [measured[seed] for seed in sorted(measured)]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    given = sorted(runs)
    curves = HERE / f"pong-cpu-curves-{'-'.join(f's{seed}' for seed, _, _ in given)}.png"
    subprocess.run(["dqn", "plot", *(str(d) for _, d, _ in given), "--out", str(curves)], check=True)

    def minutes(row: dict) -> str:
        return "not reached" if row["minutes_to_18"] is None else f"{row['minutes_to_18']:.1f}"

    lines = [
        "| seed | whole process (min) | env steps | fresh 10-game eval of the kept model | minutes to first "
        "periodic eval >= +18 | best periodic eval |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['seed']} | {r['wall_s'] / 60:.1f} | {r['steps']:,} | {r['eval_mean']:+.1f} | "
            f"{minutes(r)} | {r['best_periodic_eval']:+.1f} |"
            for r in rows
        ),
        "",
        "Minutes to +18 are the run's own clock (metrics.csv `wall_time` of that evaluation's row), from the "
        "start of training; the whole-process time also counts start-up and the final save. Evaluations: 10 "
        "games, epsilon 0.05, at most 18,000 frames each (Mnih et al. 2015). Figures as JSON: "
        f"benchmarks/results/pong-atari-cpu.json; curves of the runs measured now: benchmarks/{curves.name}.",
    ]
    append_results("Pong with the atari-cpu preset: dqn train ALE/Pong-v5 --preset atari-cpu --seed S", lines)


if __name__ == "__main__":
    main()
