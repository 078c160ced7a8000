"""`--config` with RL Zoo's own hyperparameter file, `rl_zoo3/hyperparams/dqn.yml`, as RL Zoo ships it.

``fixtures/rl_zoo3-2.9.2-dqn.yml`` is that file from the rl_zoo3 2.9.2 wheel on PyPI, byte for byte (the
first test checks its digest against the wheel's RECORD; MIT licence in ``fixtures/rl_zoo3-LICENSE``). It
is kept here rather than installing rl_zoo3 in the test extra: rl_zoo3 pulls 28 packages (sb3_contrib,
huggingface_hub, moviepy...), moviepy downgrades Pillow below 12, and its shimmy would turn the test of
the missing-shimmy message into a skip. Where rl_zoo3 is installed, its own copy is tested too.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import inspect
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, dqn

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.presets import resolve
from dqn_cli.runfiles import read_config
from dqn_cli.zoo import ENTRY_DEFAULTS, PythonName, parse_policy_kwargs, read_zoo_entry

VENDORED = Path(__file__).parent / "fixtures" / "rl_zoo3-2.9.2-dqn.yml"
RECORD_DIGEST = "w51uTd5QKZ8yFH257zsydEDePAtZCQ9k7zLNdIiwt2Q"  # rl_zoo3-2.9.2.dist-info/RECORD


def installed_zoo_file() -> Path | None:
    """rl_zoo3's dqn.yml where the package is installed, found without importing it (that imports SB3)."""
    try:
        located = importlib.metadata.distribution("rl_zoo3").locate_file("rl_zoo3/hyperparams/dqn.yml")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(located))


ZOO_FILES = [pytest.param(VENDORED, id="rl_zoo3-2.9.2")] + [
    pytest.param(path, id="installed-rl_zoo3") for path in [installed_zoo_file()] if path is not None
]

# Every entry of dqn.yml, by an env id that picks it: each of its env ids, `atari` by both kinds of Atari
# id, `default` by a classic-control id it has no entry for. None needs a package dqn does not install.
ENTRY_FOR = {
    "CartPole-v1": "CartPole-v1",
    "MountainCar-v0": "MountainCar-v0",
    "LunarLander-v3": "LunarLander-v3",
    "Acrobot-v1": "Acrobot-v1",
    "ALE/Pong-v5": "atari",
    "PongNoFrameskip-v4": "atari",
    "CartPole-v0": "default",
}
LEFT_OUT = dict(ENTRY_DEFAULTS)  # what an entry that leaves them out gets
TUNED_LOW_DIM = {  # LunarLander's and Acrobot's entries are the same
    "n_timesteps": 100_000,
    "learning_rate": 6.3e-4,
    "batch_size": 128,
    "buffer_size": 50_000,
    "learning_starts": 0,
    "gamma": 0.99,
    "target_update_interval": 250,
    "train_freq": 4,
    "gradient_steps": -1,
    "exploration_fraction": 0.12,
    "exploration_final_eps": 0.1,
    "net_arch": [256, 256],
}
EXPECTED = {  # rl_zoo3 2.9.2's values, written out by hand from the file
    "CartPole-v1": {
        "n_timesteps": 50_000,
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "net_arch": [256, 256],
    },
    "MountainCar-v0": {
        "n_timesteps": 120_000,
        "learning_rate": 4e-3,
        "batch_size": 128,
        "buffer_size": 10_000,
        "learning_starts": 1000,
        "gamma": 0.98,
        "target_update_interval": 600,
        "train_freq": 16,
        "gradient_steps": 8,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.07,
        "net_arch": [256, 256],
    },
    "LunarLander-v3": TUNED_LOW_DIM,
    "Acrobot-v1": TUNED_LOW_DIM,
    "ALE/Pong-v5": {
        "n_timesteps": 10_000_000,
        "buffer_size": 100_000,
        "learning_rate": 1e-4,
        "batch_size": 32,
        "learning_starts": 100_000,
        "target_update_interval": 1000,
        "train_freq": 4,
        "gradient_steps": 1,
        "exploration_fraction": 0.1,
        "exploration_final_eps": 0.01,
        "net_arch": [512],  # CnnPolicy: NatureCNN's 512 features, then no hidden layer
        "frame_stack": 4,
        # AtariWrapper's defaults
        "noop_max": 30,
        "frame_skip": 4,
        "terminal_on_life_loss": True,
        "clip_reward": True,
    },
    "CartPole-v0": {"n_timesteps": 1_000_000, "net_arch": [64, 64]},  # `default`: SB3's own
}
EXPECTED["PongNoFrameskip-v4"] = EXPECTED["ALE/Pong-v5"]
IGNORED = {"atari": ["optimize_memory_usage"]}  # the only key of the file with no equivalent here


def zoo_entry(text: str, env_id: str = "CartPole-v1"):
    return read_zoo_entry(text, env_id, "test.yml")


def refusal(text: str, env_id: str = "CartPole-v1") -> str:
    with pytest.raises(UserError) as caught:
        zoo_entry(text, env_id)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_vendored_file_is_rl_zoo3_2_9_2s_dqn_yml():
    digest = base64.urlsafe_b64encode(hashlib.sha256(VENDORED.read_bytes()).digest()).rstrip(b"=")
    assert digest.decode() == RECORD_DIGEST


@pytest.mark.parametrize("zoo_file", ZOO_FILES)
@pytest.mark.parametrize("env_id", list(ENTRY_FOR))
def test_every_entry_of_the_real_file_loads(zoo_file: Path, env_id: str):
    """Each entry becomes valid hyperparameters; only the `atari` entry has a key dqn has no use for."""
    notes: list[str] = []
    _, hp = resolve(env_id, zoo_file, warn=notes.append)
    entry = zoo_entry(zoo_file.read_text(), env_id)
    assert entry.name == ENTRY_FOR[env_id]
    assert entry.ignored == IGNORED.get(entry.name, [])
    assert len(notes) == (1 if entry.ignored else 0)
    assert isinstance(hp.n_timesteps, int)


@pytest.mark.parametrize("env_id", list(ENTRY_FOR))
def test_each_entry_has_rl_zoos_values(env_id: str):
    _, hp = resolve(env_id, VENDORED)
    values = hp.to_dict()
    assert {key: values[key] for key in EXPECTED[env_id]} == EXPECTED[env_id]
    left_out = {key: value for key, value in LEFT_OUT.items() if key not in EXPECTED[env_id]}
    assert {key: values[key] for key in left_out} == left_out


def test_the_entry_replaces_what_rl_zoo_controls_and_keeps_dqns_own_settings():
    """CartPole's dqn preset collects with 4 envs and a 128-128 network; the Zoo entry brings RL Zoo's
    1 env and 256-256, and leaves the preset's evaluation and early stop, which RL Zoo files lack."""
    _, preset = resolve("CartPole-v1")
    _, hp = resolve("CartPole-v1", VENDORED)
    assert (preset.n_envs, preset.net_arch) == (4, [128, 128])
    assert (hp.n_envs, hp.net_arch, hp.batch_size) == (1, [256, 256], 64)
    assert (hp.eval_freq, hp.stop_at_eval_return) == (preset.eval_freq, preset.stop_at_eval_return)
    _, later = resolve("CartPole-v1", VENDORED, sets=["learning_rate=1e-3", "n_timesteps=2000"])
    assert (later.learning_rate, later.n_timesteps) == (1e-3, 2000)  # --set and --steps apply after it


def test_sb3_defaults_are_sb3s():
    """What an entry leaves out takes SB3 DQN's defaults, which the schema's must equal."""
    signature = inspect.signature(pytest.importorskip("stable_baselines3").DQN).parameters
    sb3_arguments = {key: value for key, value in LEFT_OUT.items() if key not in ("n_envs", "env_kwargs")}
    assert {key: signature[key].default for key in sb3_arguments} == sb3_arguments


@pytest.mark.parametrize(
    ("train_freq", "n_envs", "expected"),
    [(4, 1, 4), (4, 8, 32), ("[4, step]", 8, 32), ("!!float 16", 2, 32), (None, 8, 32)],
)
def test_train_freq_counts_vector_steps_in_sb3_and_env_steps_here(train_freq, n_envs, expected):
    """SB3's train_freq=4 with 8 envs trains once per 32 env steps, which is dqn's train_freq=32."""
    lines = [f"train_freq: {train_freq}"] if train_freq is not None else []
    text = "\n  ".join(["CartPole-v1:", f"n_envs: {n_envs}", "gradient_steps: -1", *lines])
    hp = apply_overrides(Hyperparameters(), zoo_entry(text).hyperparameters)
    assert (hp.train_freq, hp.n_envs, hp.gradient_steps) == (expected, n_envs, -1)


@pytest.mark.parametrize(
    ("train_freq", "fragment"),
    [
        ("[1, episode]", "trains every 1 episodes; dqn trains every train_freq env steps"),
        ("[4, minute]", "invalid value for train_freq: [4, 'minute']"),
        ("0", "invalid value for train_freq: 0 (expected an integer > 0)"),
    ],
)
def test_train_freq_sb3_cannot_express_here_is_one_line(train_freq: str, fragment: str):
    assert fragment in refusal(f"CartPole-v1:\n  train_freq: {train_freq}\n")


def test_the_warning_names_exactly_the_keys_without_equivalent():
    text = """
CartPole-v1:
  n_timesteps: !!float 2e4
  policy: 'MlpPolicy'
  normalize: true
  callback: rl_zoo3.callbacks.ParallelTrainCallback
  frame_stack: 2
  env_wrapper: sb3_contrib.common.wrappers.TimeFeatureWrapper
  replay_buffer_kwargs: "dict(handle_timeout_termination=False)"
  policy_kwargs: "dict(net_arch=[32], activation_fn=nn.ReLU, n_quantiles=10,
                       optimizer_class=th.optim.RMSprop)"
"""
    entry = zoo_entry(text)
    assert entry.ignored == [
        "normalize",
        "callback",
        "frame_stack",  # VecFrameStack of vectors: dqn stacks Atari frames only
        "env_wrapper",
        "replay_buffer_kwargs",
        "policy_kwargs.n_quantiles",
        "policy_kwargs.optimizer_class",
    ]
    assert entry.hyperparameters["net_arch"] == [32]


def test_optimizer_eps_becomes_adam_eps_and_other_optimizer_options_are_named():
    text = """
atari:
  policy: CnnPolicy
  policy_kwargs: "dict(optimizer_kwargs=dict(eps=0.0003125, weight_decay=0.0))"
"""
    entry = zoo_entry(text, "ALE/Pong-v5")
    assert entry.hyperparameters["adam_eps"] == 0.0003125
    assert entry.ignored == ["policy_kwargs.optimizer_kwargs.weight_decay"]


def test_a_linear_learning_rate_is_sb3s_linear_schedule(tmp_path: Path):
    """``lin_1e-3``: 1e-3 at the start, falling to 0 at n_timesteps, as SB3 runs RL Zoo's schedules."""
    zoo_file = tmp_path / "zoo.yml"
    zoo_file.write_text("CartPole-v1:\n  n_timesteps: !!float 1e4\n  learning_rate: lin_1e-3\n")
    _, hp = resolve("CartPole-v1", zoo_file)
    assert [hp.learning_rate_at(step) for step in (0, 2_500, 10_000)] == pytest.approx([1e-3, 7.5e-4, 0.0])


@pytest.mark.slow
def test_cli_shows_the_warning_as_one_line_and_trains(tmp_path: Path):
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text("CartPole-v1:\n  n_timesteps: 300\n  learning_starts: 100\n  normalize: true\n")
    result = dqn("train", "CartPole-v1", "--config", str(zoo_file), "--run-dir", "run", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"warning: config file {zoo_file}, entry 'CartPole-v1': no equivalent in dqn, ignored: normalize\n"
    )
    assert read_config(tmp_path / "run")["hyperparameters"]["n_timesteps"] == 300


@pytest.mark.slow
def test_dqn_train_cartpole_with_the_real_file(tmp_path: Path):
    result = dqn(
        "train", "CartPole-v1", "--config", str(VENDORED), "--steps", "2000", "--run-dir", "run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "error" not in result.stderr  # stderr has the progress bar
    saved = read_config(tmp_path / "run")["hyperparameters"]
    expected = {**EXPECTED["CartPole-v1"], "n_timesteps": 2000}
    assert {key: saved[key] for key in expected} == expected
    assert "Trained 2,000 steps" in result.stdout


def test_env_kwargs_are_dqns_and_the_env_kwargs_option_applies_over_them(tmp_path: Path):
    zoo_file = tmp_path / "zoo.yml"
    zoo_file.write_text(yaml.safe_dump({"CartPole-v1": {"env_kwargs": {"sutton_barto_reward": True}}}))
    notes: list[str] = []
    _, hp = resolve("CartPole-v1", zoo_file, warn=notes.append)
    assert (hp.env_kwargs, notes) == ({"sutton_barto_reward": True}, [])
    _, hp = resolve("CartPole-v1", zoo_file, env_kwargs=["sutton_barto_reward=false"])
    assert hp.env_kwargs == {"sutton_barto_reward": False}


def test_policy_on_atari_adds_nature_cnns_layer_before_net_arch():
    text = "atari:\n  policy: CnnPolicy\n  policy_kwargs: 'dict(net_arch=[256])'\n"
    assert zoo_entry(text, "ALE/Breakout-v5").hyperparameters["net_arch"] == [512, 256]
    entry = zoo_entry("atari:\n  policy: MlpPolicy\n", "ALE/Breakout-v5")
    assert (entry.ignored, entry.hyperparameters["net_arch"]) == (["policy"], [512])


def test_atari_wrapper_options_map_to_dqns():
    text = """
atari:
  env_wrapper:
    - stable_baselines3.common.atari_wrappers.AtariWrapper:
        terminal_on_life_loss: false
        noop_max: 10
        screen_size: 84
        action_repeat_probability: 0.25
"""
    entry = zoo_entry(text, "PongNoFrameskip-v4")
    options = {
        key: entry.hyperparameters[key] for key in ("terminal_on_life_loss", "noop_max", "clip_reward")
    }
    assert options == {"terminal_on_life_loss": False, "noop_max": 10, "clip_reward": True}
    assert entry.ignored == ["AtariWrapper.action_repeat_probability"]  # screen_size 84 is dqn's


def test_other_wrappers_beside_atari_wrapper_are_named_once():
    text = """
atari:
  env_wrapper:
    - stable_baselines3.common.atari_wrappers.AtariWrapper:
    - rl_zoo3.wrappers.FrameSkip:
        skip: 2
    - rl_zoo3.wrappers.HistoryWrapper
"""
    entry = zoo_entry(text, "ALE/Breakout-v5")
    assert (entry.ignored, entry.hyperparameters["clip_reward"]) == (["env_wrapper"], True)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("dict(net_arch=[256, 256])", {"net_arch": [256, 256]}),
        ("{'net_arch': (64, 64), 'x': -1.5}", {"net_arch": [64, 64], "x": -1.5}),
        (
            "dict(\n  activation_fn=nn.ReLU,\n  optimizer_kwargs=dict(eps=1e-5, amsgrad=True),\n  y=None\n)",
            {
                "activation_fn": PythonName("nn.ReLU"),
                "optimizer_kwargs": {"eps": 1e-5, "amsgrad": True},
                "y": None,
            },
        ),
    ],
)
def test_policy_kwargs_is_read_as_data(source: str, expected: dict):
    assert parse_policy_kwargs(source) == expected


MALICIOUS = [
    ("__import__('os').system('touch PWNED')", "a function call"),
    ("dict(net_arch=__import__('os').system('touch PWNED'))", "a function call"),
    ("dict(net_arch=(lambda: __import__('os').system('touch PWNED'))())", "a function call"),
    ("dict(f=lambda: open('PWNED', 'w'))", "a lambda"),
    ("dict(net_arch=().__class__.__base__.__subclasses__())", "a function call"),
    ("dict(x=().__class__)", "an attribute of an expression"),
    ("dict(x=nn.__dict__)", "it names nn.__dict__"),
    ("dict(x=[0][0])", "indexing"),
    ("dict(x=9**9**9)", "arithmetic"),
    ("dict(**{'net_arch': [64]})", "only key=value arguments"),
    ("[open('PWNED', 'w') for _ in 'x']", "ListComp"),
    ("dict(net_arch=[64]); import os", "not a Python expression"),
]


@pytest.mark.parametrize(("source", "reason"), MALICIOUS)
def test_policy_kwargs_that_is_not_data_is_refused_and_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, reason: str
):
    monkeypatch.chdir(tmp_path)
    message = refusal(yaml.safe_dump({"CartPole-v1": {"policy_kwargs": source}}))
    assert "policy_kwargs" in message and reason in message
    assert list(tmp_path.iterdir()) == []


def test_python_tags_in_the_yaml_are_refused_and_never_run(tmp_path: Path):
    zoo_file = tmp_path / "evil.yml"
    zoo_file.write_text('CartPole-v1: !!python/object/apply:os.system ["touch PWNED"]\n')
    result = dqn("train", "CartPole-v1", "--config", str(zoo_file), cwd=tmp_path)
    assert_one_line_error(result, f"config file {zoo_file} is not valid YAML", "python/object/apply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yml"]


def test_malicious_policy_kwargs_through_the_cli_is_one_line_and_creates_nothing(tmp_path: Path):
    zoo_file = tmp_path / "evil.yml"
    zoo_file.write_text("""CartPole-v1:\n  policy_kwargs: "__import__('os').system('touch PWNED')"\n""")
    result = dqn("train", "CartPole-v1", "--config", str(zoo_file), cwd=tmp_path)
    assert_one_line_error(
        result, "entry 'CartPole-v1': policy_kwargs", "is refused: it holds a function call"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yml"]


@pytest.mark.parametrize(
    ("text", "env_id", "fragment"),
    [
        ("atari:\n  n_timesteps: 1\n", "CartPole-v1", "has no entry for CartPole-v1 and no 'default' entry"),
        ("default:\n  n_timesteps: 1\n", "ALE/Pong-v5", "has no entry for ALE/Pong-v5 and no 'atari' entry"),
        ("CartPole-v1: [1, 2]\n", "CartPole-v1", "entry 'CartPole-v1' is not a table"),
        ("- CartPole-v1\n", "CartPole-v1", "expected env ids mapped to tables"),
        ("CartPole-v1:\n  gamma: [0.9\n", "CartPole-v1", "not valid YAML"),
        ("CartPole-v1:\n  learning_rate: 1e-3\n", "CartPole-v1", "write !!float 1e-3"),
        ("CartPole-v1:\n  learning_rate: lin_fast\n", "CartPole-v1", "expected lin_ and a number > 0"),
        ("CartPole-v1:\n  learning_rate: lin_-1e-3\n", "CartPole-v1", "expected lin_ and a number > 0"),
        ("CartPole-v1:\n  learning_rate: lin_nan\n", "CartPole-v1", "expected lin_ and a number > 0"),
        (
            "CartPole-v1:\n  policy_kwargs: dict(net_arch=dict(pi=[64], qf=[64]))\n",
            "CartPole-v1",
            "DQN's is one",
        ),
        ("CartPole-v1:\n  n_envs: 0\n", "CartPole-v1", "invalid value for n_envs: 0"),
    ],
)
def test_what_cannot_be_read_is_one_line(text: str, env_id: str, fragment: str):
    assert fragment in refusal(text, env_id)


def test_entry_lookup_is_rl_zoos():
    """The id's own entry, then `atari` for an Atari id, then `default`."""
    text = "default:\n  gamma: 0.5\natari:\n  gamma: 0.6\nALE/Pong-v5:\n  gamma: 0.7\n"
    picked = {
        env_id: zoo_entry(text, env_id).name for env_id in ("ALE/Pong-v5", "ALE/Breakout-v5", "Acrobot-v1")
    }
    assert picked == {"ALE/Pong-v5": "ALE/Pong-v5", "ALE/Breakout-v5": "atari", "Acrobot-v1": "default"}


def test_a_bad_value_in_the_entry_is_checked_by_the_schema(tmp_path: Path):
    zoo_file = tmp_path / "zoo.yml"
    zoo_file.write_text("CartPole-v1:\n  gamma: 2\n  normalize: true\n")
    result = dqn("train", "CartPole-v1", "--config", str(zoo_file), cwd=tmp_path)
    assert_one_line_error(result, "invalid value for gamma: 2")  # and no warning before it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.yml"]
