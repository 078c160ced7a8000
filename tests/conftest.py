"""Shared fixtures: a tiny trained CartPole run that several tests reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from dqn_cli.presets import resolve
from dqn_cli.training import set_training_threads, train

set_training_threads("CartPole-v1")  # as `dqn train` does for the small networks most tests train

TINY = ["n_timesteps=600", "learning_starts=100", "eval_freq=300", "eval_episodes=2", "net_arch=[16]"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    preset, hp = resolve("CartPole-v1", sets=TINY)
    train("CartPole-v1", hp, seed=3, preset=preset, run_dir=run_dir, device="cpu", quiet=True)
    return run_dir


UNTRAINED_ATARI = "ALE/Breakout-v5"
UNTRAINED = ["n_timesteps=64", "learning_starts=999", "buffer_size=999", "eval_freq=0", "eval_max_frames=400"]


@pytest.fixture(scope="session")
def untrained_atari_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Atari run with the atari preset that ended before its first update. Its play need never end a
    game (Breakout waits for FIRE to serve again), so only eval_max_frames (400 frames, 100 agent steps
    here) bounds its episodes."""
    run_dir = tmp_path_factory.mktemp("atari") / "run"
    preset, hp = resolve(UNTRAINED_ATARI, sets=UNTRAINED)
    train(UNTRAINED_ATARI, hp, seed=0, preset=preset, run_dir=run_dir, device="cpu", quiet=True)
    return run_dir
