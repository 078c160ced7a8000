"""The training schedule: how many gradient steps run, for every mix of n_envs, train_freq,
gradient_steps and learning_starts, and the corner cases that once crashed (n-step returns with
training from the first step, resuming prioritized replay with nothing stored yet)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.presets import resolve
from dqn_cli.runfiles import read_status
from dqn_cli.training import phases_due, resume, train

STEPS = 240


def brute_force_updates(
    n_timesteps: int, n_envs: int, train_freq: int, gradient_steps: int, starts: int
) -> int:
    """README's rule, one env step at a time: after ``learning_starts`` env steps, every ``train_freq``
    env steps (summed over the envs) run ``gradient_steps`` updates; -1 runs one per env step of the
    phase. Training plays whole vector steps, so it stops at the first multiple of n_envs >= n_timesteps."""
    played = 0
    while played < n_timesteps:
        played += n_envs
    updates = 0
    for env_step in range(1, played + 1):
        if env_step > starts and env_step % train_freq == 0:
            updates += gradient_steps if gradient_steps > 0 else train_freq
    return updates


GRID = list(itertools.product([1, 3, 4, 8], [1, 4, 10], [1, 2, -1], [0, 100]))


@pytest.mark.parametrize(("n_envs", "train_freq", "gradient_steps", "learning_starts"), GRID)
def test_phases_due_over_a_whole_run_match_the_rule(n_envs, train_freq, gradient_steps, learning_starts):
    hp = apply_overrides(
        Hyperparameters(),
        {
            "n_timesteps": 1_000,
            "n_envs": n_envs,
            "train_freq": train_freq,
            "gradient_steps": gradient_steps,
            "learning_starts": learning_starts,
        },
    )
    step, updates = 0, 0
    while step < hp.n_timesteps:
        updates += phases_due(hp, step, step + n_envs).updates
        step += n_envs
    assert updates == brute_force_updates(1_000, n_envs, train_freq, gradient_steps, learning_starts)


@pytest.mark.slow
@pytest.mark.parametrize(("n_envs", "train_freq", "gradient_steps", "learning_starts"), GRID)
def test_training_runs_as_many_updates_as_the_rule_says(
    tmp_path: Path, n_envs, train_freq, gradient_steps, learning_starts
):
    """The real loop on CartPole, counted in status.json."""
    _, hp = resolve(
        "CartPole-v1",
        sets=[
            f"n_timesteps={STEPS}",
            f"n_envs={n_envs}",
            f"train_freq={train_freq}",
            f"gradient_steps={gradient_steps}",
            f"learning_starts={learning_starts}",
            "batch_size=4",
            "net_arch=[4]",
            "eval_freq=0",
            "checkpoint_freq=0",
        ],
    )
    result = train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    expected = brute_force_updates(STEPS, n_envs, train_freq, gradient_steps, learning_starts)
    assert read_status(tmp_path / "run").updates == result.updates == expected


def test_the_rule_counts_env_steps_not_vector_steps():
    """Hand-counted: 8 envs, train_freq 4, 1 update each: two phases per vector step; SB3 would run one
    update per 4 vector steps (32 env steps)."""
    assert brute_force_updates(1_600, 8, 4, 1, 0) == 400
    assert brute_force_updates(1_600, 8, 1, 1, 0) == 1_600
    # gradient_steps -1 after 100 random steps: 4 updates at each of 104, 108, ..., 200; none before
    assert brute_force_updates(200, 1, 4, -1, 100) == 25 * 4


@pytest.mark.parametrize("sets", [["n_step=3", "train_freq=1", "learning_starts=0"], ["n_step=5"]])
def test_n_step_returns_train_from_the_first_step_without_crashing(tmp_path: Path, sets: list[str]):
    """Training may fall due before the first n-step transition is complete: those phases wait."""
    env_id = "CartPole-v1" if "train_freq=1" in sets else "Acrobot-v1"
    _, hp = resolve(
        env_id,
        sets=[*sets, "n_timesteps=300", "eval_freq=0", "learning_starts=0", "n_envs=1", "gradient_steps=1"],
    )
    result = train(env_id, hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert result.steps == 300 and result.updates > 0


def test_resuming_prioritized_replay_with_nothing_stored_yet(tmp_path: Path):
    """Two steps of 5-step returns store no transition: the checkpoint's sum tree is empty."""
    sets = ["prioritized_replay=true", "n_step=5", "n_envs=1", "n_timesteps=2", "eval_freq=0"]
    _, hp = resolve("CartPole-v1", sets=[*sets, "learning_starts=10", "train_freq=1", "gradient_steps=1"])
    train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    result, exact = resume(tmp_path / "run", steps=200, device="cpu", quiet=True)
    assert exact and result.steps == 200 and result.updates > 0


def test_each_update_takes_the_scheduled_learning_rate(tmp_path: Path, monkeypatch):
    """Adam's step at every gradient step of a real run is the schedule's value at the env step those
    updates are due: 1e-3 falling to 1e-4 over the first half of 1,000 steps, one update per 4 steps."""
    from dqn_cli.agent import DQNAgent

    used: list[float] = []
    update = DQNAgent.update

    def recording_update(agent: DQNAgent, batch):
        used.append(agent.optimizer.param_groups[0]["lr"])
        return update(agent, batch)

    monkeypatch.setattr(DQNAgent, "update", recording_update)
    sets = ["n_timesteps=1000", "n_envs=1", "train_freq=4", "gradient_steps=1", "learning_starts=200"]
    schedule = ["learning_rate=1e-3", "learning_rate_final=1e-4", "learning_rate_fraction=0.5"]
    _, hp = resolve("CartPole-v1", sets=[*sets, *schedule, "batch_size=4", "net_arch=[4]", "eval_freq=0"])
    train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    due_at = range(204, 1001, 4)  # after learning_starts, every train_freq env steps
    assert used == pytest.approx([hp.learning_rate_at(step) for step in due_at])
    assert used[0] == pytest.approx(1e-3 - 204 / 500 * 9e-4) and used[-1] == pytest.approx(1e-4)
