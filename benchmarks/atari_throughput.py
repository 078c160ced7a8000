"""Atari training throughput (env steps/s while learning) and replay bytes per transition: dqn vs
Stable-Baselines3, same machine, same run.

PongNoFrameskip-v4, one config for both (atari_config.py): batch 32, one gradient step every 4 env steps,
Nature CNN, 4-frame stacks. SB3 runs as RL Zoo runs it (`make_atari_env` + `VecFrameStack`, `CnnPolicy`).
Only the learning phase is timed: from the end of `learning_starts` random steps to the last step. Each
tool runs in its own process with PyTorch's default thread count.

    python benchmarks/atari_throughput.py --steps 10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from results import append_results

HERE = Path(__file__).parent

DQN_LOOP = """
import json, sys
sys.path.insert(0, {here!r})
from atari_config import ATARI_CONFIG, ENV_ID
from learning_phase import learning_steps_per_second
from dqn_cli.hyperparameters import apply_overrides
from dqn_cli.presets import resolve
_, hp = resolve(ENV_ID)
overrides = {{**ATARI_CONFIG, "eval_freq": 0, "checkpoint_freq": 0, **{overrides!r}}}
hp = apply_overrides(hp, {{**overrides, "n_timesteps": overrides["learning_starts"] + {steps}}})
speed, precision = learning_steps_per_second(ENV_ID, hp, "atari")
print(json.dumps({{"steps_per_second": speed, "precision": precision}}))
"""

SB3_LOOP = """
import json, sys, time
sys.path.insert(0, {here!r})
from atari_config import ATARI_CONFIG, ENV_ID, sb3_kwargs
import ale_py, gymnasium
gymnasium.register_envs(ale_py)
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

class LearningPhaseTimer(BaseCallback):
    def _on_step(self):
        if self.num_timesteps == ATARI_CONFIG["learning_starts"]:
            self.start = time.perf_counter()
        return True

env = VecFrameStack(make_atari_env(ENV_ID, n_envs=1, seed=0), n_stack=4)
model = DQN("CnnPolicy", env, device="cpu", seed=0, verbose=0, **sb3_kwargs())
timer = LearningPhaseTimer()
model.learn(total_timesteps=ATARI_CONFIG["learning_starts"] + {steps}, callback=timer)
print(json.dumps({{"steps_per_second": {steps} / (time.perf_counter() - timer.start)}}))
"""


def run_loop(source: str) -> dict:
    result = subprocess.run([sys.executable, "-c", source], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def replay_bytes_per_transition(buffer_size: int) -> dict[str, float]:
    """What each replay stores per transition, from its real arrays (allocated lazily: nothing is touched)."""
    import numpy as np
    from atari_config import ENV_ID, sb3_kwargs
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from dqn_cli.hyperparameters import apply_overrides
    from dqn_cli.presets import resolve
    from dqn_cli.replay import Replay

    _, hp = resolve(ENV_ID)
    hp = apply_overrides(hp, {"buffer_size": buffer_size})
    ours = Replay(hp, (4, 84, 84), np.dtype(np.uint8), np.random.default_rng(0))
    sizes = {"dqn": ours.allocated_bytes() / buffer_size}
    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=1, seed=0), n_stack=4)
    for optimize in (False, True):
        kwargs = {**sb3_kwargs(), "buffer_size": buffer_size, "optimize_memory_usage": optimize}
        if optimize:
            kwargs["replay_buffer_kwargs"] = {"handle_timeout_termination": False}
        buffer = DQN("CnnPolicy", env, device="cpu", **kwargs).replay_buffer
        fields = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
        stored = [getattr(buffer, name) for name in fields if getattr(buffer, name, None) is not None]
        sizes[f"sb3 optimize_memory_usage={optimize}"] = sum(a.nbytes for a in stored) / buffer_size
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="timed learning steps per tool")
    args = parser.parse_args()
    runs = {
        "dqn, precision=float32": {"precision": "float32"},
        "dqn, precision=auto": {"precision": "auto"},
        "dqn, precision=auto, n_envs=4": {"precision": "auto", "n_envs": 4},
    }
    speeds, resolved = {}, {}
    sb3 = run_loop(SB3_LOOP.format(here=str(HERE), steps=args.steps))["steps_per_second"]
    print(f"SB3: {sb3:,.0f} steps/s", flush=True)
    for label, overrides in runs.items():
        result = run_loop(DQN_LOOP.format(here=str(HERE), steps=args.steps, overrides=overrides))
        speeds[label], resolved[label] = result["steps_per_second"], result["precision"]
        print(f"{label} ({result['precision']}): {speeds[label]:,.0f} steps/s", flush=True)
    sizes = replay_bytes_per_transition(100_000)
    print(sizes, flush=True)
    lines = [
        "| tool | env steps/s while learning | ratio to SB3 |",
        "| --- | --- | --- |",
        f"| Stable-Baselines3 (1 env, float32) | {sb3:,.0f} | 1.00 |",
        *(
            f"| {label} (ran as {resolved[label]}) | {speed:,.0f} | {speed / sb3:.2f} |"
            for label, speed in speeds.items()
        ),
        "",
        f"{args.steps:,} timed steps of PongNoFrameskip-v4 after 1,000 random ones; batch 32, one gradient "
        "step per 4 env steps, target update every 1,000 (atari_config.py). `precision=auto` is bfloat16 "
        "convolutions where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX), else float32; "
        "`n_envs=4` keeps one update per 4 env steps.",
        "",
        "| replay | bytes per transition | 1,000,000 transitions |",
        "| --- | --- | --- |",
        *(f"| {name} | {size:,.0f} | {size * 1e6 / 1e9:.1f} GB |" for name, size in sizes.items()),
    ]
    append_results("Atari training throughput and replay size: dqn vs SB3 (Pong)", lines)


if __name__ == "__main__":
    main()
