from pathlib import Path

import pytest

from dqn_cli.config import resolve
from dqn_cli.errors import UserError
from dqn_cli.runfiles import read_config
from dqn_cli.training import train

TINY = ["learning_starts=100", "eval_freq=300", "eval_episodes=2", "net_arch=[16]", "n_timesteps=1200"]


def test_training_stops_at_the_first_evaluation_reaching_the_threshold(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=[*TINY, "stop_at_eval_return=0"])
    result = train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert result.steps == 300
    assert result.last_eval == result.best_eval


def test_step_count_covers_all_parallel_envs(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=[*TINY, "n_envs=3", "stop_at_eval_return=inf"])
    result = train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert result.steps == 1200  # 400 vector steps of 3 envs
    assert read_config(tmp_path / "run")["hyperparameters"]["stop_at_eval_return"] == float("inf")


@pytest.mark.parametrize("value", ["-inf", "nan"])
def test_stop_threshold_rejects_non_numbers(value):
    with pytest.raises(UserError, match="stop_at_eval_return"):
        resolve("CartPole-v1", sets=[f"stop_at_eval_return={value}"])
