"""Time of one Atari gradient step (batch 32 of 4x84x84 frames, Adam, gradient clipping) and of one acting
forward pass, by encoder (the Nature CNN with its [512] layer, data-efficient Rainbow's with [256]) and
convolution precision: where the Atari training time goes.

    python benchmarks/atari_update_time.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from results import append_results

from dqn_cli.agent import DQNAgent, greedy_actions
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import resolve
from dqn_cli.replay import Batch

BATCH, UPDATES, ACTS = 32, 40, 200


def milliseconds(action, count: int) -> float:
    for _ in range(5):
        action()
    start = time.perf_counter()
    for _ in range(count):
        action()
    return (time.perf_counter() - start) / count * 1000


NET_ARCH = {"nature": [512], "der": [256]}


def measure(encoder: str, precision: str, rng: np.random.Generator) -> tuple[float, float]:
    _, hp = resolve("PongNoFrameskip-v4")
    spec = network_spec(
        (4, 84, 84), 6, NET_ARCH[encoder], False, precision, obs_dtype="uint8", encoder=encoder
    )
    agent = DQNAgent(
        build_q_network(spec),
        hp,
        torch.device("cpu"),
    )
    frames = rng.integers(0, 256, size=(2, BATCH, 4, 84, 84), dtype=np.uint8)
    batch = Batch(
        obs=frames[0],
        actions=rng.integers(0, 6, size=BATCH),
        rewards=rng.choice([-1.0, 0.0, 1.0], size=BATCH).astype(np.float32),
        next_obs=frames[1],
        terminated=np.zeros(BATCH, dtype=np.float32),
        horizons=np.ones(BATCH, dtype=np.float32),
        weights=None,
        indices=np.arange(BATCH),
    )
    update = milliseconds(lambda: agent.update(batch), UPDATES)
    act = milliseconds(lambda: greedy_actions(agent.online, frames[0, :1], agent.device), ACTS)
    return update, act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per precision")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {
        (encoder, precision): [] for encoder in NET_ARCH for precision in ("float32", "bfloat16")
    }
    for _ in range(args.repeats):  # alternate, so drifting machine load hits all alike
        for encoder, precision in times:
            times[encoder, precision].append(measure(encoder, precision, rng))
    lines = [
        "| encoder | convolutions | gradient step, batch 32 (median ms) | acting, 1 obs (median ms) |",
        "| --- | --- | --- | --- |",
    ]
    for (encoder, precision), samples in times.items():
        update = statistics.median(u for u, _ in samples)
        act = statistics.median(a for _, a in samples)
        lines.append(f"| {encoder} | {precision} | {update:.1f} | {act:.2f} |")
    lines += [
        "",
        f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating rounds "
        f"of {UPDATES} steps and {ACTS} forward passes; the atari preset's Adam and gradient clipping.",
    ]
    append_results("Atari gradient step and acting cost by encoder and precision", lines)


if __name__ == "__main__":
    main()
