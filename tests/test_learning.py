"""Learning and reproducibility on CartPole at fixed seeds (CPU)."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from dqn_cli.evaluation import evaluate, load_trained, make_policy
from dqn_cli.presets import resolve
from dqn_cli.training import train

pytestmark = pytest.mark.slow  # real training to a score: minutes on a CPU

RANDOM_POLICY_RETURN = 22.0  # CartPole-v1's mean return under uniformly random actions is about 22


def test_cartpole_clearly_beats_a_random_policy(tmp_path: Path):
    preset, hp = resolve("CartPole-v1", sets=["n_timesteps=12000", "eval_freq=3000"])
    train("CartPole-v1", hp, seed=1, preset=preset, run_dir=tmp_path / "run", device="cpu", quiet=True)
    trained = load_trained(tmp_path / "run", device="cpu")
    policy = make_policy(trained.q_network, trained.n_actions, 0.0, 0, trained.device)
    returns = evaluate(policy, "CartPole-v1", 20, seed=123)
    assert np.mean(returns) > 5 * RANDOM_POLICY_RETURN


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tmp_path: Path):
    sets = ["n_timesteps=800", "learning_starts=200", "eval_freq=400", "eval_episodes=2", "net_arch=[32]"]
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        preset, hp = resolve("CartPole-v1", sets=sets)
        train("CartPole-v1", hp, seed=seed, preset=preset, run_dir=tmp_path / name, device="cpu", quiet=True)
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)
