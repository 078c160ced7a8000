"""CartPole-v1 time to a solved policy: `dqn train` vs Stable-Baselines3 with RL Zoo's preset.

Alternates the two per seed, each a whole process timed from launch to exit, then scores each trained
model over 20 greedy episodes (untimed). Needs the `bench` extra: pip install -e ".[bench]".

    python benchmarks/cartpole_time_to_solved.py --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_results

HERE = Path(__file__).parent
SOLVED = 475.0


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_dqn(seed: int, workdir: Path) -> tuple[float, float]:
    run = workdir / f"dqn-{seed}"
    wall = timed(["dqn", "train", "CartPole-v1", "--seed", str(seed), "--quiet", "--run-dir", str(run)])
    out = subprocess.run(
        ["dqn", "eval", str(run), "--json", "--episodes", "20"], check=True, capture_output=True
    )
    return wall, json.loads(out.stdout)["mean_return"]


def run_sb3(seed: int, workdir: Path) -> tuple[float, float]:
    out_dir = workdir / f"sb3-{seed}"
    script = str(HERE / "sb3_cartpole.py")
    wall = timed([sys.executable, script, "train", "--seed", str(seed), "--out", str(out_dir)])
    out = subprocess.run(
        [sys.executable, script, "eval", str(out_dir), "--episodes", "20"],
        check=True,
        capture_output=True,
        text=True,
    )
    return wall, float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            dqn_wall, dqn_score = run_dqn(seed, Path(tmp))
            sb3_wall, sb3_score = run_sb3(seed, Path(tmp))
            rows.append((seed, dqn_wall, dqn_score, sb3_wall, sb3_score))
            print(
                f"seed {seed}: dqn {dqn_wall:.1f}s -> {dqn_score:.1f} | "
                f"sb3 {sb3_wall:.1f}s -> {sb3_score:.1f}",
                flush=True,
            )
    dqn_median = statistics.median(r[1] for r in rows)
    sb3_median = statistics.median(r[3] for r in rows)
    lines = [
        "| seed | dqn wall (s) | dqn eval (20 ep) | SB3 wall (s) | SB3 eval (20 ep) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {s} | {dw:.1f} | {ds:.1f} | {sw:.1f} | {ss:.1f} |" for s, dw, ds, sw, ss in rows),
        "",
        f"Median wall: dqn {dqn_median:.1f} s, SB3 {sb3_median:.1f} s; "
        f"ratio dqn/SB3 = {dqn_median / sb3_median:.2f}. "
        f"dqn seeds solved (>= {SOLVED:.0f}): {sum(r[2] >= SOLVED for r in rows)}/{len(rows)}; "
        f"SB3: {sum(r[4] >= SOLVED for r in rows)}/{len(rows)}.",
    ]
    append_results("CartPole-v1 time to solved: dqn vs SB3 + RL Zoo preset", lines)


if __name__ == "__main__":
    main()
