"""Stable-Baselines3 side of the CartPole benchmarks, run as its own process so its start-up counts.

python benchmarks/sb3_cartpole.py train --seed 1 --out DIR     # RL Zoo's tuned DQN preset
python benchmarks/sb3_cartpole.py eval DIR --episodes 20       # prints the greedy mean return
python benchmarks/sb3_cartpole.py throughput --steps 500000    # prints env steps/s of model.learn
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1
RL_ZOO_CARTPOLE = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1_000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)
RL_ZOO_CARTPOLE_STEPS = 50_000


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", type=Path, required=True)
    evaluate = sub.add_parser("eval")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--episodes", type=int, default=20)
    throughput = sub.add_parser("throughput")
    throughput.add_argument("--steps", type=int, default=500_000)
    args = parser.parse_args()

    if args.command == "train":
        model = DQN("MlpPolicy", "CartPole-v1", seed=args.seed, verbose=0, **RL_ZOO_CARTPOLE)
        model.learn(RL_ZOO_CARTPOLE_STEPS)
        args.out.mkdir(parents=True, exist_ok=True)
        model.save(args.out / "model.zip")
    elif args.command == "eval":
        model = DQN.load(args.model_dir / "model.zip", device="cpu")
        env = gym.make("CartPole-v1")
        returns = []
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=episode)
            total, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        print(np.mean(returns))
    else:
        from throughput_config import FIXED_CONFIG

        config = dict(FIXED_CONFIG)
        net_arch = config.pop("net_arch")
        model = DQN(
            "MlpPolicy", "CartPole-v1", seed=1, verbose=0, policy_kwargs=dict(net_arch=net_arch), **config
        )
        start = time.perf_counter()
        model.learn(args.steps)
        print(args.steps / (time.perf_counter() - start))


if __name__ == "__main__":
    main()
