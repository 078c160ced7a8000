"""What one CartPole env step and one gradient step cost on CleanRL's DQN config (MLP 120-84, batch 128,
MSE, no clipping, one env, one torch thread as `dqn` trains classic control), piece by piece: acting in
torch and in numpy, the vector env's step, writing replay, sampling a batch, the gradient step.

    python benchmarks/cartpole_step_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from results import append_results

from dqn_cli.agent import DQNAgent, q_values
from dqn_cli.envs import make_vector_env
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.replay import Replay
from dqn_cli.rollout import Rollout

CPU = torch.device("cpu")
CLEANRL = {
    "n_envs": 1,
    "buffer_size": 10_000,
    "batch_size": 128,
    "net_arch": [120, 84],
    "loss": "mse",
    "max_grad_norm": float("inf"),
    "learning_rate": 2.5e-4,
    "double_q": False,
    "dueling": False,
    "n_step": 1,
    "prioritized_replay": False,
}


def microseconds(action: Callable[[], object], count: int) -> float:
    for _ in range(count // 10):
        action()
    start = time.perf_counter()
    for _ in range(count):
        action()
    return (time.perf_counter() - start) / count * 1e6


def torch_acting(agent: DQNAgent, obs: np.ndarray) -> np.ndarray:
    """What acting cost before numpy took it over: the network's torch forward, without autograd."""
    with torch.inference_mode():
        return agent.online(torch.as_tensor(obs)).argmax(dim=1).numpy()


def measure(hp: Hyperparameters) -> dict[str, float]:
    envs = make_vector_env("CartPole-v1", 1, hp)
    spec = network_spec((4,), 2, hp.net_arch, obs_dtype="float32")
    agent = DQNAgent(build_q_network(spec), hp, CPU)
    replay = Replay(hp, (4,), np.dtype(np.float32), np.random.default_rng(0))
    rollout = Rollout(envs, hp, replay, seed=0)
    zero = np.zeros(1, dtype=np.int64)
    for _ in range(hp.buffer_size):
        rollout.step(zero if rollout.obs[0, 2] < 0 else zero + 1)
    batch = replay.sample(hp.batch_size)
    costs = {
        "acting, torch forward": microseconds(lambda: torch_acting(agent, rollout.obs), 20_000),
        "acting, numpy forward": microseconds(
            lambda: q_values(agent.online, rollout.obs, CPU).argmax(1), 20_000
        ),
        "env step, replay write and episode bookkeeping (Rollout.step)": microseconds(
            lambda: rollout.step(zero if rollout.obs[0, 2] < 0 else zero + 1), 20_000
        ),
        "replay sample, batch 128": microseconds(lambda: replay.sample(hp.batch_size), 5_000),
        "gradient step, batch 128": microseconds(lambda: agent.update(batch), 2_000),
    }
    envs.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hp = apply_overrides(Hyperparameters(), CLEANRL)
    rounds = [measure(hp) for _ in range(args.repeats)]
    lines = ["| piece | median µs |", "| --- | --- |"]
    lines += [f"| {name} | {statistics.median(r[name] for r in rounds):.1f} |" for name in rounds[0]]
    lines += [
        "",
        f"PyTorch {torch.__version__}, numpy {np.__version__}, 1 torch thread, {args.repeats} rounds. "
        "Settings: CleanRL's DQN config (benchmarks/cleanrl_cartpole.py).",
    ]
    append_results("CartPole-v1 step costs on CleanRL's DQN config", lines)


if __name__ == "__main__":
    main()
