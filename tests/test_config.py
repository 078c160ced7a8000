from pathlib import Path

import pytest

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, parse_set_option
from dqn_cli.presets import available_presets, load_preset, preset_name_for, resolve


def test_every_shipped_preset_is_valid():
    for name in available_presets():
        apply_overrides(Hyperparameters(), load_preset(name))
    assert {"default", "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"} <= set(
        available_presets()
    )


def test_preset_chosen_by_env_id_with_default_fallback():
    assert preset_name_for("CartPole-v1") == "CartPole-v1"
    assert preset_name_for("Pendulum-v1") == "default"


def test_layers_apply_in_order(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text("learning_rate = 0.01\nbatch_size = 7\n")
    preset, hp = resolve("CartPole-v1", config, ["batch_size=9"])
    assert preset == "CartPole-v1"
    assert hp.learning_rate == 0.01
    assert hp.batch_size == 9
    assert hp.n_timesteps == load_preset("CartPole-v1")["n_timesteps"]


def test_run_config_file_is_accepted_as_config(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text('env_id = "CartPole-v1"\nseed = 3\n[hyperparameters]\ngamma = 0.5\n')
    _, hp = resolve("CartPole-v1", config)
    assert hp.gamma == 0.5


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("learning_rate=1e-3", ("learning_rate", 1e-3)),
        ("net_arch=[32, 32]", ("net_arch", [32, 32])),
        ("double_q=true", ("double_q", True)),
        ("loss=mse", ("loss", "mse")),
        (" gamma = 0.9 ", ("gamma", 0.9)),
    ],
)
def test_set_option_values_are_read_as_toml(item, expected):
    assert parse_set_option(item) == expected


def test_rl_zoo_style_float_counts_become_ints():
    hp = apply_overrides(Hyperparameters(), {"n_timesteps": 1e5, "buffer_size": 5e4})
    assert hp.n_timesteps == 100_000 and isinstance(hp.n_timesteps, int)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lerning_rate": 1e-3}, "unknown hyperparameter 'lerning_rate' (did you mean 'learning_rate'?)"),
        ({"learning_rate": -1.0}, "invalid value for learning_rate: -1.0 (expected a number > 0)"),
        ({"learning_rate": "fast"}, "invalid value for learning_rate: 'fast'"),
        ({"batch_size": 3.5}, "invalid value for batch_size: 3.5 (expected an integer > 0)"),
        ({"batch_size": True}, "invalid value for batch_size"),
        ({"gamma": 1.5}, "invalid value for gamma: 1.5 (expected a number in [0, 1])"),
        ({"tau": 0.0}, "expected a number in (0, 1]"),
        ({"gradient_steps": 0}, "expected an integer >= 1, or -1"),
        ({"net_arch": [64, 0]}, "invalid value for net_arch"),
        ({"net_arch": 64}, "invalid value for net_arch"),
        ({"loss": "l1"}, "expected one of huber, mse"),
        ({"double_q": "yes"}, "expected true or false"),
        ({"learning_rate": float("nan")}, "invalid value for learning_rate"),
        (
            {"exploration_initial_eps": 0.1, "exploration_final_eps": 0.5},
            "must not exceed exploration_initial_eps",
        ),
    ],
)
def test_bad_values_are_rejected_with_key_and_rule(overrides, message):
    with pytest.raises(UserError) as info:
        apply_overrides(Hyperparameters(), overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_set_without_equals_is_rejected():
    with pytest.raises(UserError, match="key=value"):
        parse_set_option("learning_rate")


def test_invalid_toml_config_file_is_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        resolve("CartPole-v1", bad)
    with pytest.raises(UserError, match="cannot read config file"):
        resolve("CartPole-v1", tmp_path / "missing.toml")


def test_linear_exploration_schedule():
    hp = apply_overrides(
        Hyperparameters(),
        {
            "n_timesteps": 1000,
            "exploration_fraction": 0.5,
            "exploration_initial_eps": 1.0,
            "exploration_final_eps": 0.1,
        },
    )
    assert hp.exploration_rate(0) == 1.0
    assert hp.exploration_rate(250) == pytest.approx(0.55)
    assert hp.exploration_rate(500) == pytest.approx(0.1)
    assert hp.exploration_rate(900) == pytest.approx(0.1)


def test_linear_learning_rate_schedule():
    hp = apply_overrides(
        Hyperparameters(),
        {
            "n_timesteps": 1000,
            "learning_rate": 1e-3,
            "learning_rate_final": 1e-4,
            "learning_rate_fraction": 0.5,
        },
    )
    assert [hp.learning_rate_at(step) for step in (0, 250, 500, 900)] == pytest.approx(
        [1e-3, 5.5e-4, 1e-4, 1e-4]
    )
    constant = apply_overrides(hp, {"learning_rate_fraction": 0.0})  # the final value is not used then
    assert {constant.learning_rate_at(step) for step in (0, 500, 1000)} == {1e-3}
    with pytest.raises(UserError, match="learning_rate_final: -1"):
        apply_overrides(hp, {"learning_rate_final": -1})
