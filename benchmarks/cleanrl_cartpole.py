"""CartPole-v1 on CleanRL's exact DQN config, one env: `dqn train` vs CleanRL's own `cleanrl/dqn.py`.

CleanRL's script runs from the `cleanrl` package on PyPI, never copied here: release 1.2.0, the last one,
whose `dqn.py` is the gymnasium script with every setting an argparse default. It needs gymnasium < 1.0
(on 1.x it reads `infos["final_observation"]`, gone, at the first truncated episode) and
Stable-Baselines3 2.x (for its ReplayBuffer), so on first use this script builds a venv of its own,
benchmarks/.venvs/cleanrl (git-ignored; about 2 minutes): torch==2.13.0 first (the CPU build cached on
the machine, the torch `dqn` runs; plain `torch` pulls a CUDA build), gymnasium 0.29.1,
stable-baselines3 2.3.2, tensorboard, numpy 1.26.4 (gymnasium 0.29 predates numpy 2), then cleanrl 1.2.0
with --no-deps --ignore-requires-python: its metadata caps Python below 3.11 and pins SB3 1.2.0, which its
dqn.py itself refuses (it asks for SB3 >= 2.0). Its optional imports (wandb, Hugging Face) stay unused.

The settings are CleanRL's defaults, read from the installed file (its `parse_args()` with no arguments),
and given to `dqn train CartPole-v1` as `--set` values, with what CleanRL's code fixes: MLP 120-84, MSE
loss, no gradient clipping (max_grad_norm = inf), Adam, one gradient step per training phase, plain DQN.
In 1.2.0: total_timesteps 500,000, learning_rate 2.5e-4, num_envs 1, buffer_size 10,000, gamma 0.99,
tau 1.0, target_network_frequency 500, batch_size 128, start_e 1, end_e 0.05, exploration_fraction 0.5,
learning_starts 10,000, train_frequency 10, seed 1. What still differs:

- The first 10,000 steps: `dqn` plays uniformly at random; CleanRL is epsilon-greedy already, epsilon
  falling from 1 to 0.962, so about 2% of those actions come from the untrained network.
- One env step of phase: CleanRL trains after env step t + 1 for t > 10,000 with t % 10 == 0 (first after
  10,011 steps, 48,999 updates); `dqn` after every 10th env step past 10,000 (first after 10,010, 49,000
  updates). Target syncs likewise; `dqn` also syncs during random play, copying an unchanged network.
- Evaluation: CleanRL does not evaluate while training, so `dqn` does not either (eval_freq = 0): no time
  spent on it and no best-model pick. The final model is scored afterwards, untimed, by
  `dqn eval RUN --final --episodes 20 --epsilon 0`. CleanRL's model is not scored (its --save-model
  would run its own evaluation inside the timed process); both report the mean return of their last 100
  training episodes.
- Logging runs as each tool ships it: CleanRL prints every episode and writes TensorBoard scalars per
  episode and every 100 steps; `dqn` writes metrics.csv, TensorBoard means per 1,000 steps, a
  checkpoint every 50,000 steps and the final model.
- Threads: each tool as it ships. `dqn` trains classic control on one torch thread
  (`training.set_training_threads`); CleanRL leaves torch's default, one per core. The environment of
  neither process is changed: a peer run in a setting of ours measures ours, not the peer.
- Device: CPU for both (`--device cpu`, `--cuda False`).
- `dqn` runs twice: as it trains by default, and with `actor_process = true` (the envs play in a second
  process while the first runs the update; each phase is then acted with the weights from before that
  boundary's gradient step, one step of 49,000 behind, while the updates see the same replay). The
  hyperparameters are CleanRL's in both.

Each round runs `dqn`, `dqn` with the actor process, then CleanRL, one at a time, with seed = the round
number (1 = CleanRL's default), each a whole process timed from launch to exit, start-up included; env
steps/s = total_timesteps / that time.

    python benchmarks/cleanrl_cartpole.py --repeats 3
    python benchmarks/cleanrl_cartpole.py --steps 12000 --repeats 1 --print-only   # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results import append_results

HERE = Path(__file__).parent
CLEANRL_VENV = HERE / ".venvs" / "cleanrl"
CLEANRL_PYTHON = CLEANRL_VENV / "bin" / "python"
INSTALLED = CLEANRL_VENV / ".installed"  # written after the last install step: the venv is complete
CLEANRL_INSTALL = (
    ["torch==2.13.0"],
    ["gymnasium==0.29.1", "stable-baselines3==2.3.2", "tensorboard==2.21.0", "numpy==1.26.4"],
    ["--no-deps", "--ignore-requires-python", "cleanrl==1.2.0"],
)
READ_DEFAULTS = (
    "import json, sys; from importlib.metadata import version; sys.argv = ['dqn.py']; "
    "from cleanrl.dqn import parse_args; "
    "print(json.dumps({'version': version('cleanrl'), 'defaults': vars(parse_args())}))"
)
# CleanRL's argument -> dqn's hyperparameter of the same meaning
CLEANRL_TO_DQN = {
    "total_timesteps": "n_timesteps",
    "learning_rate": "learning_rate",
    "num_envs": "n_envs",
    "buffer_size": "buffer_size",
    "gamma": "gamma",
    "tau": "tau",
    "target_network_frequency": "target_update_interval",
    "batch_size": "batch_size",
    "start_e": "exploration_initial_eps",
    "end_e": "exploration_final_eps",
    "exploration_fraction": "exploration_fraction",
    "learning_starts": "learning_starts",
    "train_frequency": "train_freq",
}
# what CleanRL's dqn.py fixes in code, and no periodic evaluation (it has none)
DQN_FIXED = {
    "net_arch": [120, 84],
    "loss": "mse",
    "max_grad_norm": math.inf,
    "gradient_steps": 1,
    "double_q": False,
    "dueling": False,
    "n_step": 1,
    "prioritized_replay": False,
    "eval_freq": 0,
}
# dqn as it trains by default, and with the envs in a process of their own (same hyperparameters)
DQN_VARIANTS = {"dqn": {}, "dqn actor_process": {"actor_process": True}}
SOLVED = 475.0


def cleanrl_python() -> Path:
    """The CleanRL venv's interpreter, after building the venv if it is not complete."""
    if not INSTALLED.exists():
        print(f"building {CLEANRL_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CLEANRL_VENV)], check=True)
        for packages in CLEANRL_INSTALL:
            subprocess.run([str(CLEANRL_PYTHON), "-m", "pip", "install", "--quiet", *packages], check=True)
        INSTALLED.touch()
    return CLEANRL_PYTHON


def toml_value(value: Any) -> str:
    """A `--set` value: dqn reads it as TOML (inf, true, [120, 84]; a bare word is a string)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall time of the whole process, and its stdout; its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def mean_of_last_100(returns: list[float]) -> float:
    return statistics.fmean(returns[-100:]) if returns else math.nan


def run_dqn(settings: dict[str, Any], seed: int, workdir: Path, name: str) -> tuple[float, float, float]:
    """Wall time, mean of the last 100 training episodes and the final model's 20-episode greedy mean."""
    run_dir = workdir / f"{name.replace(' ', '-')}-{seed}"
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={toml_value(value)}")]
    command = ["dqn", "train", "CartPole-v1", "--seed", str(seed), "--device", "cpu", "--quiet"]
    wall, _ = run([*command, "--run-dir", str(run_dir), *sets], workdir)
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as metrics:
        returns = [float(row["episode_return"]) for row in csv.DictReader(metrics) if row["episode_return"]]
    evaluate = ["dqn", "eval", str(run_dir), "--final", "--episodes", "20", "--epsilon", "0", "--json"]
    _, out = run(evaluate, workdir)
    return wall, mean_of_last_100(returns), json.loads(out)["mean_return"]


def run_cleanrl(python: Path, steps: int, seed: int, workdir: Path) -> tuple[float, float]:
    """Wall time and mean of the last 100 training episodes (from the returns CleanRL prints)."""
    cwd = workdir / f"cleanrl-{seed}"  # it writes runs/ into its working folder
    cwd.mkdir()
    command = [str(python), "-m", "cleanrl.dqn", "--seed", str(seed), "--cuda", "False"]
    wall, out = run([*command, "--total-timesteps", str(steps)], cwd)
    returns = [float(r) for r in re.findall(r"episodic_return=\[([^\]]+)\]", out)]
    return wall, mean_of_last_100(returns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; round i uses seed i")
    parser.add_argument("--steps", type=int, default=None, help="total env steps (default: CleanRL's)")
    parser.add_argument("--print-only", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    python = cleanrl_python()
    read = subprocess.run([str(python), "-c", READ_DEFAULTS], check=True, capture_output=True, text=True)
    cleanrl = json.loads(read.stdout.splitlines()[-1])
    defaults = cleanrl["defaults"]
    if defaults["env_id"] != "CartPole-v1":
        sys.exit(f"CleanRL's dqn.py defaults to {defaults['env_id']}, not CartPole-v1")
    steps = defaults["total_timesteps"] if args.steps is None else args.steps
    settings = {dqn_key: defaults[key] for key, dqn_key in CLEANRL_TO_DQN.items()}
    settings |= DQN_FIXED | {"n_timesteps": steps}

    rows = []  # (seed, tool, wall, last 100 train episodes, greedy eval or nan)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.repeats + 1):
            for name, extra in DQN_VARIANTS.items():
                rows.append((seed, name, *run_dqn(settings | extra, seed, Path(tmp), name)))
            rows.append((seed, f"CleanRL {cleanrl['version']}", *run_cleanrl(python, steps, seed, Path(tmp))))
            rows[-1] += (math.nan,)
            for _, name, wall, _, greedy in rows[-len(DQN_VARIANTS) - 1 :]:
                print(f"seed {seed}: {name} {wall:.1f} s ({steps / wall:,.0f} steps/s), greedy {greedy:.1f}")
                sys.stdout.flush()
    rates = {
        name: statistics.median(steps / row[2] for row in rows if row[1] == name)
        for name in dict.fromkeys(row[1] for row in rows)
    }
    cleanrl_rate = rates.pop(f"CleanRL {cleanrl['version']}")
    config = ", ".join(f"{key} {defaults[key]}" for key in CLEANRL_TO_DQN)
    lines = [
        f"CleanRL {cleanrl['version']} `cleanrl/dqn.py`, its defaults: {config}; MLP 120-84, MSE, "
        "no gradient clipping, Adam. dqn: the same via `--set` "
        f"({', '.join(f'{k}={toml_value(v)}' for k, v in settings.items())}); `dqn actor_process` adds "
        "`--set actor_process=true` (the envs play in a second process, each phase acted with the weights "
        "from before that boundary's update). One env each, threads as each tool ships (dqn's learner 1, "
        "CleanRL torch's default), CPU; whole processes, start-up included; differences and choices in "
        "the script's docstring. Each round runs the rows in this order, one at a time.",
        "",
        "| seed | tool | wall (s) | env steps/s | last 100 train ep | final model, 20 greedy ep |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {seed} | {name} | {wall:.1f} | {steps / wall:,.0f} | {train:.1f} | "
            f"{'-' if math.isnan(greedy) else f'{greedy:.1f}'} |"
            for seed, name, wall, train, greedy in rows
        ),
        "",
        f"Median env steps/s: CleanRL {cleanrl_rate:,.0f}; "
        + "; ".join(
            f"{name} {rate:,.0f} = {rate / cleanrl_rate:.2f}x CleanRL, final models at >= {SOLVED:.0f} over "
            f"20 greedy episodes: {sum(r[4] >= SOLVED for r in rows if r[1] == name)}/{args.repeats}"
            for name, rate in rates.items()
        )
        + " (target: >= 2x, greedy >= 475).",
    ]
    append_results(
        f"CartPole-v1 on CleanRL's DQN config: dqn vs CleanRL {cleanrl['version']}", lines, args.print_only
    )


if __name__ == "__main__":
    main()
