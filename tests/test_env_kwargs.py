"""Env kwargs (the ``env_kwargs`` hyperparameter, `--env-kwargs key=value`): every path that makes an env
makes it with them, a run keeps them for eval and record, and a kwarg an env does not take is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, dqn

from dqn_cli.atari import AtariSettings
from dqn_cli.envs import make_single_env, make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained, record_video
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, with_env_kwargs
from dqn_cli.presets import resolve
from dqn_cli.runfiles import CONFIG_FILE, read_config
from dqn_cli.training import check_trainable, train

TINY = ["n_timesteps=300", "learning_starts=100", "eval_freq=300", "eval_episodes=2", "net_arch=[16]"]


def kwargs(*items: str) -> Hyperparameters:
    return with_env_kwargs(Hyperparameters(), list(items))


def test_env_kwargs_are_toml_values_set_key_by_key():
    hp = kwargs("map_name=8x8", "is_slippery=false", "size=[4, 4]", "scale=1e-3")
    assert hp.env_kwargs == {"map_name": "8x8", "is_slippery": False, "size": [4, 4], "scale": 0.001}
    again = with_env_kwargs(hp, ["is_slippery=true", "extra=1"])
    assert again.env_kwargs == {
        "map_name": "8x8",
        "is_slippery": True,
        "size": [4, 4],
        "scale": 0.001,
        "extra": 1,
    }
    assert hp.env_kwargs["is_slippery"] is False  # a copy: the first is unchanged
    with pytest.raises(UserError, match=r"^--env-kwargs expects key=value, got 'map_name'$"):
        kwargs("map_name")


@pytest.mark.parametrize(
    "table",
    [3, {"not-a-name": 1}, {"a": None}, {"a": json.loads("[" * 20 + "]" * 20)}],
)
def test_env_kwargs_must_be_a_table_of_plain_keyword_arguments(table):
    with pytest.raises(UserError, match="invalid value for env_kwargs"):
        apply_overrides(Hyperparameters(), {"env_kwargs": table})


def test_a_config_file_sets_env_kwargs_and_the_command_line_overrides_one(tmp_path: Path):
    config = tmp_path / "frozen.toml"
    config.write_text('learning_rate = 1e-3\nenv_kwargs = {map_name = "8x8", is_slippery = true}\n')
    _, hp = resolve("FrozenLake-v1", config, env_kwargs=["is_slippery=false"])
    assert hp.env_kwargs == {"map_name": "8x8", "is_slippery": False}


def test_the_vector_env_is_made_with_them():
    assert make_vector_env("FrozenLake-v1", 1, kwargs("map_name=8x8")).single_observation_space.n == 64
    assert make_vector_env("CarRacing-v3", 1, kwargs("continuous=false")).single_action_space.n == 5
    envs = make_vector_env("CartPole-v1", 2, kwargs("sutton_barto_reward=true"))
    envs.reset(seed=0)
    rewards = [envs.step(np.zeros(2, dtype=np.int64))[1] for _ in range(15)]  # pushing left: falls
    assert set(np.concatenate(rewards).tolist()) == {0.0, -1.0}  # Sutton & Barto's: -1 at the failure


def test_max_episode_steps_sets_the_env_s_limit_which_evaluation_s_cap_only_shortens():
    def steps_to_truncation(hp: Hyperparameters, cap: int | None) -> int:
        envs = make_vector_env("MountainCar-v0", 1, hp, cap)  # random play never reaches the flag
        envs.reset(seed=0)
        for step in range(1, 1000):
            if envs.step(np.ones(1, dtype=np.int64))[3][0]:
                return step
        raise AssertionError("never truncated")

    short = kwargs("max_episode_steps=30")
    assert steps_to_truncation(short, None) == 30
    assert steps_to_truncation(short, 10) == 10
    assert steps_to_truncation(short, 18_000) == 30
    env = make_single_env("MountainCar-v0", "rgb_array", 18_000, short)
    assert env.spec.max_episode_steps == 30


@pytest.mark.parametrize(
    ("env_id", "items", "message"),
    [
        (
            "CartPole-v1",
            ["speed=2"],
            "CartPole-v1 takes no env kwarg 'speed'; it takes max_episode_steps, sutton",
        ),
        ("CartPole-v1", ["render_mode=human"], "env kwarg render_mode is set by dqn"),
        ("CartPole-v1", ["max_episode_steps=0"], "max_episode_steps must be an integer >= 1, got 0"),
        ("ALE/Pong-v5", ["mode=1"], "ALE/Pong-v5 takes no env kwarg 'mode' here: dqn plays Atari through"),
        ("ALE/Pong-v5", ["frameskip=2"], "'frameskip' of ALE/Pong-v5 is the hyperparameter frame_skip"),
        ("ALE/Pong-v5", ["full_action_space=1"], "full_action_space of ALE/Pong-v5 must be true or false"),
    ],
)
def test_a_kwarg_the_env_does_not_take_is_one_line_naming_it(env_id: str, items: list[str], message: str):
    with pytest.raises(UserError, match=message):
        make_vector_env(env_id, 1, kwargs(*items))
    if not env_id.startswith("ALE/"):
        with pytest.raises(UserError, match=message):
            make_single_env(env_id, "rgb_array", hp=kwargs(*items))


def test_atari_takes_the_game_settings_its_vector_env_has():
    settings = AtariSettings.for_env(
        "ALE/Pong-v5", kwargs("full_action_space=true", "max_num_frames_per_episode=400")
    )
    assert (settings.full_action_space, settings.max_frames_per_episode) == (True, 400)
    assert (
        AtariSettings.for_env(
            "ALE/Pong-v5", kwargs("max_num_frames_per_episode=400"), 200
        ).max_frames_per_episode
        == 200
    )
    envs = make_vector_env("ALE/Pong-v5", 1, kwargs("full_action_space=true"))
    assert envs.single_action_space.n == 18
    envs.close()


def test_colour_images_construct_but_are_refused_for_training_in_one_line():
    hp = apply_overrides(kwargs("continuous=false"), {"buffer_size": 1000})
    with pytest.raises(
        UserError, match=r"\(96, 96, 3\) \(uint8\) .* images with colour last .* not supported"
    ):
        check_trainable("CarRacing-v3", hp, "cpu")


@pytest.fixture(scope="module")
def sutton_barto_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CartPole run trained with Sutton & Barto's reward: 0 a step, -1 when the pole falls."""
    run_dir = tmp_path_factory.mktemp("kwargs") / "run"
    preset, hp = resolve("CartPole-v1", sets=TINY, env_kwargs=["sutton_barto_reward=true"])
    train("CartPole-v1", hp, seed=0, preset=preset, run_dir=run_dir, device="cpu", quiet=True)
    return run_dir


def test_a_run_saves_its_env_kwargs_and_trains_with_them(sutton_barto_run: Path):
    assert read_config(sutton_barto_run)["hyperparameters"]["env_kwargs"] == {"sutton_barto_reward": True}
    meta = json.loads((sutton_barto_run / "model.json").read_text())
    assert meta["hyperparameters"]["env_kwargs"] == {"sutton_barto_reward": True}
    returns = [
        float(line.split(",")[2])
        for line in (sutton_barto_run / "metrics.csv").read_text().splitlines()[1:]
        if line.split(",")[2]
    ]
    assert returns and set(returns) <= {0.0, -1.0}


def test_eval_and_record_rebuild_the_run_s_env_and_override_it_key_by_key(
    sutton_barto_run: Path, tmp_path: Path
):
    saved = load_trained(sutton_barto_run, device="cpu")
    assert saved.score(3, seed=0) == [-1.0, -1.0, -1.0]  # an early agent's pole falls: -1, not its length
    usual = load_trained(sutton_barto_run, device="cpu", env_kwargs=["sutton_barto_reward=false"])
    assert all(r >= 8 for r in usual.score(3, seed=0))
    assert usual.hyperparameters.env_kwargs == {"sutton_barto_reward": False}
    played = record_video(saved.policy(0), saved.env_id, 1, 0, tmp_path / "a.gif", saved.hyperparameters)
    assert played.returns == [-1.0] and played.frames > 8
    elsewhere = load_trained(sutton_barto_run, device="cpu", env_id="CartPole-v0")
    assert elsewhere.hyperparameters.env_kwargs == {}  # the run's kwargs were CartPole-v1's


def test_an_edited_config_with_bad_env_kwargs_is_refused_when_loaded(sutton_barto_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    text = (
        (sutton_barto_run / CONFIG_FILE).read_text().replace("sutton_barto_reward = true", "a = 2024-01-01")
    )
    (run / CONFIG_FILE).write_text(text)
    with pytest.raises(UserError, match=r"saved hyperparameters are not valid: invalid value for env_kwargs"):
        read_config(run)


@pytest.mark.slow
def test_the_cli_passes_env_kwargs_and_refuses_an_unknown_one_in_one_line(tmp_path: Path):
    refused = dqn("train", "CartPole-v1", "--env-kwargs", "speed=2", cwd=tmp_path)
    assert_one_line_error(refused, "CartPole-v1 takes no env kwarg 'speed'")
    assert not (tmp_path / "runs").exists()
    resumed = dqn("train", "--resume", "--env-kwargs", "a=1", cwd=tmp_path)
    assert_one_line_error(resumed, "drop --preset/--config/--set/--env-kwargs/--run-dir")
    sets = [option for item in TINY for option in ("--set", item)]
    trained = dqn(
        "train",
        "CartPole-v1",
        "--env-kwargs",
        "sutton_barto_reward=true",
        "--quiet",
        *sets,
        "--run-dir",
        "run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    played = dqn("eval", "run", "--episodes", "2", "--json", cwd=tmp_path)
    assert json.loads(played.stdout)["returns"] == [-1.0, -1.0]
    filmed = dqn("record", "run", "--out", "a.gif", "--env-kwargs", "sutton_barto_reward=false", cwd=tmp_path)
    assert filmed.returncode == 0, filmed.stderr
    assert float(filmed.stderr.split("returns ")[1].split()[0].rstrip(",")) >= 8


def test_every_command_that_makes_an_env_explains_both_options():
    from typer.testing import CliRunner

    from dqn_cli.cli import app

    for command in ("train", "eval", "record", "bench", "tune"):
        shown = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert "--env-kwargs" in shown and "--gym-packages" in shown, command
