from pathlib import Path

import pytest

from dqn_cli.errors import UserError
from dqn_cli.presets import resolve
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


@pytest.mark.slow
def test_evaluation_hook_sees_every_evaluation_and_status_records_the_end(tmp_path: Path):
    from dqn_cli.runfiles import read_status

    seen: list[tuple[int, float]] = []
    _, hp = resolve("CartPole-v1", sets=[*TINY, "stop_at_eval_return=inf"])
    result = train(
        "CartPole-v1",
        hp,
        seed=0,
        run_dir=tmp_path / "run",
        device="cpu",
        quiet=True,
        on_evaluation=lambda step, mean: seen.append((step, mean)),
    )
    assert [step for step, _ in seen] == [300, 600, 900, 1200]
    assert seen[-1][1] == result.last_eval
    status = read_status(tmp_path / "run")
    assert status.state == "finished" and status.step == 1200 and status.planned_steps == 1200
    assert status.best_eval == result.best_eval
    # the CartPole preset trains 64 steps every 256 env steps: at 256, 512, 768 and 1024
    assert status.updates == result.updates == 4 * 64


def test_an_exception_from_the_hook_stops_training_and_marks_the_run_interrupted(tmp_path: Path):
    from dqn_cli.runfiles import read_status

    class Pruned(Exception):
        pass

    def prune(step: int, mean: float) -> None:
        raise Pruned

    _, hp = resolve("CartPole-v1", sets=TINY)
    with pytest.raises(Pruned):
        train(
            "CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True, on_evaluation=prune
        )
    assert read_status(tmp_path / "run").state == "interrupted"
    assert read_status(tmp_path / "run").step == 300


def test_a_hook_that_stops_training_has_its_reason_recorded_as_the_run_state(tmp_path: Path):
    from dqn_cli.runfiles import RunState, read_status
    from dqn_cli.training import StopTraining

    def prune(step: int, mean: float) -> None:
        if step == 600:
            raise StopTraining(RunState.PRUNED, "pruned")

    _, hp = resolve("CartPole-v1", sets=[*TINY, "stop_at_eval_return=inf"])
    with pytest.raises(StopTraining):
        train(
            "CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True, on_evaluation=prune
        )
    status = read_status(tmp_path / "run")
    assert status.state == RunState.PRUNED and status.step == 600
