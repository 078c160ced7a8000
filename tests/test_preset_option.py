"""`--preset NAME` on train, bench and tune, `dqn presets [NAME]`, the line naming the preset at the start
of training, and the measured warning for an Atari schedule too long for a CPU."""

import random
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, dqn
from safetensors.numpy import load_file

from dqn_cli import training
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import apply_overrides
from dqn_cli.presets import available_presets, load_preset, preset_description, resolve
from dqn_cli.speed import StepCosts, is_long_cpu_schedule, schedule_warning
from dqn_cli.training import Trainer, announce
from dqn_cli.tuning import prepare, tune

TINY = ["learning_starts=100", "eval_freq=300", "eval_episodes=2", "net_arch=[16]"]
TINY_SETS = [arg for item in TINY for arg in ("--set", item)]
CPU = torch.device("cpu")


def saved_config(run: Path) -> dict:
    return tomllib.loads((run / "config.toml").read_text())


def assert_preset_values_used(config: dict, preset: str, overridden: set[str]) -> None:
    """Every value the preset sets, but those overridden, is the run's."""
    hp = config["hyperparameters"]
    assert config["preset"] == preset
    assert {k: hp[k] for k in load_preset(preset).keys() - overridden} == {
        k: v for k, v in load_preset(preset).items() if k not in overridden
    }


# ------------------------------------------------------------------------------------------ dqn presets


def test_presets_lists_every_name_with_a_one_line_description():
    result = dqn("presets", cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    assert "atari-cpu" in available_presets()
    for line, name in zip(lines, available_presets(), strict=True):
        assert line.endswith(preset_description(name)) and preset_description(name)
    assert preset_description("Acrobot-v1") == "RL Zoo's tuned DQN preset."  # "Acrobot-v1: " dropped


def test_presets_name_prints_the_file_as_written_and_it_works_as_a_config(tmp_path: Path):
    result = dqn("presets", "atari-cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shipped = load_preset("atari-cpu")["n_timesteps"]
    assert f"n_timesteps = {shipped:_}" in result.stdout.splitlines()
    assert result.stdout.startswith("# Atari on a CPU")
    assert tomllib.loads(result.stdout) == load_preset("atari-cpu")  # a flat preset, as --config reads


def test_presets_keys_still_lists_the_hyperparameters(tmp_path: Path):
    result = dqn("presets", "--keys", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("n_timesteps ")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["presets", "atari-gpu"], ["no preset named 'atari-gpu'", "did you mean 'atari-cpu'?"]),
        (["presets", "atari", "--keys"], ["NAME or --keys"]),
        (["train", "--resume", "--preset", "atari-cpu"], ["--resume", "--preset"]),
        # An empty name is a name, not "no --preset": refused, not the env id's preset.
        (["train", "CartPole-v1", "--preset", ""], ["no preset named ''", "available:"]),
    ],
)
def test_refusals_without_training_are_one_line(tmp_path: Path, args: list[str], fragments: list[str]):
    assert_one_line_error(dqn(*args, cwd=tmp_path), *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["train", "CartPole-v1", "--preset", "atari-gpu"],
        ["bench", "CartPole-v1", "--seeds", "1", "--preset", "atari-gpu"],
        ["tune", "CartPole-v1", "--trials", "1", "--preset", "atari-gpu"],
    ],
    ids=["train", "bench", "tune"],
)
def test_a_bad_preset_name_is_one_line_with_a_suggestion_and_creates_nothing(tmp_path: Path, args):
    result = dqn(*args, cwd=tmp_path)
    assert_one_line_error(result, "no preset named 'atari-gpu'", "did you mean 'atari-cpu'?", "available:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "bench", "tune"])
def test_help_shows_the_preset_option(tmp_path: Path, command: str):
    result = dqn(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--preset" in result.stdout


# ------------------------------------------------------------------------------------ --preset in use


@pytest.mark.slow
def test_train_with_a_preset_saves_its_name_uses_its_values_and_says_so(tmp_path: Path):
    result = dqn(
        "train",
        "CartPole-v1",
        "--preset",
        "default",
        "--steps",
        "300",
        *TINY_SETS,
        "--run-dir",
        "run",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Preset default for CartPole-v1 (dqn presets default shows it)"
    assert "warning" not in result.stderr
    config = saved_config(tmp_path / "run")
    assert_preset_values_used(config, "default", {"n_timesteps", *(item.split("=")[0] for item in TINY)})
    assert config["hyperparameters"]["n_envs"] == 1  # CartPole-v1's own preset collects with 4


@pytest.mark.slow
def test_bench_trains_every_env_with_the_one_preset(tmp_path: Path):
    sets = [*TINY_SETS, "--set", "n_timesteps=300"]
    result = dqn(
        "bench",
        "CartPole-v1",
        "Acrobot-v1",
        "--seeds",
        "1",
        "--preset",
        "default",
        "--name",
        "b",
        *sets,
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for env in ("CartPole-v1", "Acrobot-v1"):
        config = saved_config(tmp_path / "runs" / "bench" / "b" / f"{env}-s1")
        assert_preset_values_used(config, "default", {"n_timesteps", *(item.split("=")[0] for item in TINY)})


@pytest.mark.slow
def test_tune_starts_its_trials_from_the_preset_with_the_sampled_values_over_it(tmp_path: Path):
    space = tmp_path / "space.toml"
    space.write_text(
        "[fixed]\nn_timesteps = 300\nlearning_starts = 100\neval_freq = 300\neval_episodes = 2\n"
        '[params.learning_rate]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n'
    )
    result = dqn(
        "tune",
        "CartPole-v1",
        "--trials",
        "1",
        "--preset",
        "default",
        "--study",
        "s",
        "--space",
        str(space),
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "preset default" in result.stdout.splitlines()[0]
    config = saved_config(tmp_path / "runs" / "CartPole-v1" / "tune-s-t0")
    fixed = {"n_timesteps", "learning_starts", "eval_freq", "eval_episodes"}
    assert_preset_values_used(config, "default", {"learning_rate", *fixed})
    assert config["hyperparameters"]["learning_rate"] != load_preset("default")["learning_rate"]


def test_a_study_keeps_the_preset_it_started_from(tmp_path: Path):
    def job(preset: str | None, study: str | None = "kept"):
        return prepare("CartPole-v1", 0, study=study, preset=preset, runs_root=tmp_path, device="cpu")

    assert job("default", None).study.startswith("CartPole-v1-default-")  # the default name says it
    kept = job("default")
    tune(kept)  # no trials: it only creates the study
    tune(kept)  # continued with the same preset
    with pytest.raises(UserError, match="starts its trials from preset default, not CartPole-v1"):
        tune(job(None))


# ---------------------------------------------------------------- the start line and the CPU warning


def test_the_warning_is_for_long_atari_schedules_on_a_cpu_only():
    assert is_long_cpu_schedule("ALE/Pong-v5", 10_000_000, CPU)
    assert is_long_cpu_schedule("PongNoFrameskip-v4", 2_000_000, CPU)
    assert not is_long_cpu_schedule("ALE/Pong-v5", 1_999_999, CPU)
    assert not is_long_cpu_schedule("ALE/Pong-v5", 10_000_000, torch.device("cuda"))
    assert not is_long_cpu_schedule("CartPole-v1", 10_000_000, CPU)


def test_the_warning_estimates_from_the_measured_costs_and_names_atari_cpu():
    _, hp = resolve("ALE/Pong-v5")  # one gradient step per 4 env steps
    costs = StepCosts(env_step=0.004, update=0.02)  # 0.009 s per env step: 111.1 env steps/s
    line = schedule_warning(costs, hp, hp.n_timesteps, "atari")
    assert line == (
        "10,000,000 env steps will take about 25.0 hours on this CPU, at the 111.1 env steps/s measured "
        "here; --preset atari-cpu is made for Atari on a CPU (dqn presets atari-cpu)"
    )
    every_step = apply_overrides(hp, {"train_freq": 1})  # 1 update per env step: 0.024 s each
    assert "about 2.2 days" in schedule_warning(costs, every_step, 8_000_000, "atari-cpu")
    assert "--preset" not in schedule_warning(costs, every_step, 8_000_000, "atari-cpu")


def _tiny_trainer(seed: int = 3) -> Trainer:
    _, hp = resolve("CartPole-v1", sets=["n_timesteps=300", *TINY])
    return Trainer("CartPole-v1", hp, seed, "CartPole-v1", CPU)


def test_the_probe_measures_copies_and_leaves_the_run_as_it_was():
    trainer = _tiny_trainer()
    try:
        before = {name: part.state_dict() for name, part in trainer.parts().items()}
        python, torch_state = random.getstate(), torch.get_rng_state()
        costs = trainer.step_costs()
        assert costs.env_step > 0 and costs.update > 0
        np.testing.assert_equal({name: part.state_dict() for name, part in trainer.parts().items()}, before)
        assert random.getstate() == python and torch.equal(torch.get_rng_state(), torch_state)
    finally:
        trainer.close()


def test_same_seed_gives_the_same_run_with_or_without_the_probe(tmp_path: Path, monkeypatch):
    _, hp = resolve("CartPole-v1", sets=["n_timesteps=600", *TINY])
    plain = training.train("CartPole-v1", hp, seed=5, run_dir=tmp_path / "plain", device="cpu", quiet=True)
    monkeypatch.setattr(training, "is_long_cpu_schedule", lambda *args: True)  # probe this one
    probed = training.train("CartPole-v1", hp, seed=5, run_dir=tmp_path / "probed", device="cpu")
    assert plain.updates == probed.updates and plain.best_eval == probed.best_eval
    for name in ("model.safetensors", "best.safetensors"):
        np.testing.assert_equal(load_file(plain.run_dir / name), load_file(probed.run_dir / name))


@pytest.mark.slow
def test_an_atari_run_on_a_cpu_with_the_atari_preset_is_warned_how_long_it_takes(capsys):
    _, hp = resolve("ALE/Pong-v5", sets=["buffer_size=1000"])  # the atari preset: 10M steps
    trainer = Trainer("ALE/Pong-v5", hp, 0, "atari", CPU)
    try:
        announce(trainer, "atari")
    finally:
        trainer.close()
    out, err = capsys.readouterr()
    assert out == "Preset atari for ALE/Pong-v5 (dqn presets atari shows it)\n"
    (line,) = err.splitlines()
    assert line.startswith("warning: 10,000,000 env steps will take about ")
    assert line.endswith(
        "env steps/s measured here; --preset atari-cpu is made for Atari on a CPU (dqn presets atari-cpu)"
    )
