"""Training-loop throughput (env steps/s) on one fixed config, `dqn` vs Stable-Baselines3, same run.

CartPole-v1, CleanRL's DQN config (throughput_config.py): one update of batch 128 every 10 env steps, MLP
120-84, target update every 500 env steps. `dqn` runs it collecting with 1 env and with 10 (its `n_envs`;
the update schedule per env step is the same). Only the training loop is timed, not start-up.

    python benchmarks/throughput.py --steps 500000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from results import append_results

HERE = Path(__file__).parent

DQN_LOOP = """
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {here!r})
from throughput_config import FIXED_CONFIG
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.training import set_training_threads, train
set_training_threads("CartPole-v1")  # as `dqn train` does
config = {{**FIXED_CONFIG, "n_timesteps": {steps}, "eval_freq": 0, "n_envs": {n_envs}}}
hp = apply_overrides(Hyperparameters(), config)
with tempfile.TemporaryDirectory() as tmp:
    result = train("CartPole-v1", hp, seed=1, run_dir=Path(tmp) / "run", device="cpu", quiet=True)
print({steps} / result.wall_time)
"""


def steps_per_second(command: list[str]) -> float:
    return float(
        subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500_000)
    args = parser.parse_args()
    dqn = {}
    for n_envs in (1, 10):
        loop = DQN_LOOP.format(here=str(HERE), steps=args.steps, n_envs=n_envs)
        dqn[n_envs] = steps_per_second([sys.executable, "-c", loop])
        print(f"dqn, n_envs={n_envs}: {dqn[n_envs]:,.0f} steps/s", flush=True)
    sb3 = steps_per_second(
        [sys.executable, str(HERE / "sb3_cartpole.py"), "throughput", "--steps", str(args.steps)]
    )
    print(f"SB3: {sb3:,.0f} steps/s", flush=True)
    lines = [
        "| tool | env steps/s |",
        "| --- | --- |",
        f"| Stable-Baselines3 (1 env) | {sb3:,.0f} |",
        f"| dqn, n_envs=1 | {dqn[1]:,.0f} |",
        f"| dqn, n_envs=10 | {dqn[10]:,.0f} |",
        "",
        f"Ratio dqn/SB3: {dqn[1] / sb3:.2f} with one env, {dqn[10] / sb3:.2f} with 10 envs collecting "
        f"({args.steps:,} steps of CartPole-v1; in both, one update of batch 128 per 10 env steps and a "
        "target update every 500 env steps).",
    ]
    append_results("Training throughput, fixed config: dqn vs SB3", lines)


if __name__ == "__main__":
    main()
