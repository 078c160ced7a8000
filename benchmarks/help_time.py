"""Wall time of `dqn --help` (median of N runs), which must not import torch or gymnasium.

python benchmarks/help_time.py --runs 10
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from results import append_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(["dqn", "--help"], check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
    lines = [
        f"`dqn --help`: median {statistics.median(walls):.3f} s, max {max(walls):.3f} s "
        f"over {args.runs} runs (console-script start-up included)."
    ]
    append_results("dqn --help wall time", lines)


if __name__ == "__main__":
    main()
