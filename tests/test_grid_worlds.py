"""Grid worlds: categorical observations (Discrete, MultiDiscrete) one-hot encoded inside the network and
kept as integers in replay, end to end on FrozenLake and Taxi: train, resume bit for bit, evaluate (with
value iteration's optimum beside the mean), film, and refuse a model on a grid it was not trained on."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from typer.testing import CliRunner, Result

from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.cli import app
from dqn_cli.envs import make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.observations import one_hot_sizes
from dqn_cli.optimal import optimal_return, policy_return, tabular_mdp
from dqn_cli.presets import resolve
from dqn_cli.replay import Replay
from dqn_cli.training import resume, train

SHORT = [
    "n_timesteps=1000",
    "learning_starts=100",
    "eval_freq=500",
    "eval_episodes=3",
    "net_arch=[16]",
    "checkpoint_freq=500",
]


class RowColumn(gym.ObservationWrapper):
    """FrozenLake seen as (row, column): a MultiDiscrete([4, 4]) observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.MultiDiscrete([4, 4])

    def observation(self, observation: int) -> np.ndarray:
        return np.array(divmod(int(observation), 4), dtype=np.int64)


class CountedFromOne(gym.ObservationWrapper):
    """FrozenLake's states numbered 1 to 16: Discrete(16, start=1)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Discrete(16, start=1)

    def observation(self, observation: int) -> int:
        return int(observation) + 1


gym.register("test/RowColumnLake-v0", lambda **kw: RowColumn(gym.make("FrozenLake-v1", **kw)))
gym.register("test/LakeFromOne-v0", lambda **kw: CountedFromOne(gym.make("FrozenLake-v1", **kw)))


def _train(env_id: str, tmp_path: Path, *sets: str, seed: int = 1, on_evaluation=None) -> Path:
    run = tmp_path / f"{env_id.replace('/', '-')}-s{seed}"
    preset, hp = resolve(env_id, sets=[*SHORT, *sets])
    train(
        env_id,
        hp,
        seed=seed,
        preset=preset,
        run_dir=run,
        device="cpu",
        quiet=True,
        on_evaluation=on_evaluation,
    )
    return run


@pytest.fixture(scope="module")
def lake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train("FrozenLake-v1", tmp_path_factory.mktemp("lake"))


def test_categorical_spaces_have_one_category_count_per_entry():
    assert one_hot_sizes(gym.spaces.Discrete(16)) == [16]
    assert one_hot_sizes(gym.spaces.MultiDiscrete([4, 3])) == [4, 3]
    assert one_hot_sizes(gym.spaces.MultiDiscrete([[2, 3], [4, 5]])) == [2, 3, 4, 5]  # row-major
    assert one_hot_sizes(gym.spaces.Box(-1, 1, (4,))) is None


def _encoding(sizes: list[int], obs: np.ndarray) -> np.ndarray:
    """What the network's first layer sees: its input through an identity head (no hidden layers)."""
    spec = network_spec(obs.shape[1:], sum(sizes), [], obs_dtype="int64", one_hot=sizes)
    network = build_q_network(spec)
    with torch.no_grad():
        network.head.weight.copy_(torch.eye(sum(sizes)))
        network.head.bias.zero_()
        return network(torch.as_tensor(obs)).numpy()


def test_discrete_observation_is_one_hot():
    np.testing.assert_array_equal(_encoding([4], np.array([3, 0])), [[0, 0, 0, 1], [1, 0, 0, 0]])


def test_multidiscrete_observation_is_concatenated_one_hots():
    encoded = _encoding([3, 2], np.array([[2, 0], [0, 1]]))
    np.testing.assert_array_equal(encoded, [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]])


@pytest.mark.parametrize(
    ("space", "obs"),
    [
        (gym.spaces.Discrete(5), np.array([4, 0, 2])),
        (gym.spaces.MultiDiscrete([3, 2, 4]), np.array([[2, 1, 3], [0, 0, 0]])),
    ],
)
def test_encoding_is_stable_baselines3s(space, obs):
    preprocessing = pytest.importorskip("stable_baselines3.common.preprocessing")
    sb3 = preprocessing.preprocess_obs(torch.as_tensor(obs), space).numpy()
    np.testing.assert_array_equal(_encoding(one_hot_sizes(space), obs), sb3)


def test_categories_must_count_from_zero():
    with pytest.raises(UserError, match="do not count from 0"):
        make_vector_env("test/LakeFromOne-v0", 1)


def test_replay_keeps_the_integers():
    _, hp = resolve("Taxi-v4", sets=["buffer_size=1000000"])
    replay = Replay(hp, (), np.dtype(np.int64), np.random.default_rng(0))
    # two 8-byte state numbers, an action, reward, terminal flag and horizon: 36 bytes, where Taxi's
    # 500-wide one-hot float32 observation and next observation would take 4,000
    assert replay.allocated_bytes() < 40 * 1_000_000


def test_a_run_records_the_encoding_and_replays_integers(lake_run: Path):
    meta = json.loads((lake_run / "model.json").read_text())
    assert meta["observation_space"] == {"shape": [], "dtype": "int64", "one_hot": [16]}
    assert meta["network"]["kind"] == "one_hot_mlp" and meta["network"]["one_hot"] == [16]
    assert set(load_file(lake_run / "model.safetensors")) == {
        "hidden.0.weight",
        "hidden.0.bias",
        "head.weight",
        "head.bias",
    }
    state = load_checkpoint(lake_run).state
    assert state["replay/storage/obs"].shape == (1000,) and state["replay/storage/obs"].dtype == np.int64
    assert set(np.unique(state["replay/storage/obs"])) <= set(range(16))


def test_multidiscrete_env_trains_and_plays(tmp_path: Path):
    run = _train("test/RowColumnLake-v0", tmp_path)
    meta = json.loads((run / "model.json").read_text())
    assert meta["observation_space"]["one_hot"] == [4, 4] and meta["network"]["obs_shape"] == [2]
    assert load_checkpoint(run).state["replay/storage/obs"].shape == (1000, 2)
    returns = load_trained(run, device="cpu").score(episodes=4, seed=0)
    assert len(returns) == 4 and set(returns) <= {0.0, 1.0}


class Stop(Exception):
    pass


def _stop(step: int, mean_return: float) -> None:
    raise Stop


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", pytest.param("Taxi-v4", marks=pytest.mark.slow)])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path: Path, env_id: str):
    sets = ["eval_freq=750"]  # the interrupted run stops at its first evaluation, after its checkpoint at 500
    straight = _train(env_id, tmp_path / "straight", *sets)
    with pytest.raises(Stop):
        _train(env_id, tmp_path / "stopped", *sets, on_evaluation=_stop)
    run = tmp_path / "stopped" / straight.name
    assert not (run / "model.safetensors").exists()
    result, exact = resume(run, device="cpu", quiet=True)
    assert exact and result.steps == 1000  # the episodes in flight continued, not restarted
    a, b = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(np.array_equal(a[key], b[key]) for key in a)


def test_a_model_is_refused_on_another_grid(lake_run: Path):
    with pytest.raises(UserError, match=r"categorical observations \[16\].*categorical observations \[64\]"):
        load_trained(lake_run, device="cpu", env_id="FrozenLake8x8-v1")


def test_an_edited_encoding_is_refused(lake_run: Path, tmp_path: Path):
    meta = json.loads((lake_run / "model.json").read_text())
    meta["network"]["one_hot"] = [4, 4]
    edited = tmp_path / "model.json"
    edited.write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes((lake_run / "model.safetensors").read_bytes())
    with pytest.raises(
        UserError, match=r"network\.one_hot must give a category count >= 1 per observation entry"
    ):
        load_trained(tmp_path / "model.safetensors", device="cpu")


def _dqn(*args: str) -> Result:
    """The `dqn` command, run in this process (no interpreter and torch to start for each call)."""
    result = CliRunner().invoke(app, [*args, "--device", "cpu"], prog_name="dqn")
    assert result.exit_code == 0, result.output
    return result


def test_eval_prints_the_optimum_beside_the_mean(lake_run: Path, tiny_run: Path):
    shown = _dqn("eval", str(lake_run), "--episodes", "4").stdout
    assert "optimal policy's expected return (value iteration): 0.744; gap " in shown
    summary = json.loads(_dqn("eval", str(lake_run), "--episodes", "4", "--json").stdout)
    assert summary["optimal_return"] == pytest.approx(0.74419, abs=1e-5)
    assert "optimal_return" not in json.loads(_dqn("eval", str(tiny_run), "--episodes", "1", "--json").stdout)
    assert "optimal" not in _dqn("eval", str(tiny_run), "--episodes", "1").stdout  # CartPole has no table


def test_record_films_the_grid(lake_run: Path):
    result = _dqn("record", str(lake_run), "--out", "lake.gif")
    frames = int(result.stderr.split(" frames")[0].split()[-1])
    with Image.open(lake_run / "videos" / "lake.gif") as gif:
        assert gif.size == (256, 256)  # FrozenLake's 4x4 board, 64 pixels a cell
        assert 1 < gif.n_frames <= frames  # the gif writer merges repeated frames (a move into a wall)


@pytest.mark.slow
def test_frozen_lake_preset_learns_a_near_optimal_policy(tmp_path: Path):
    """The shipped preset, one seed: the greedy policy of its best model, scored exactly over the lake's
    16 states (no sampling noise), is within 0.05 of the optimum's success rate."""
    preset, hp = resolve("FrozenLake-v1")
    run = tmp_path / "run"
    train("FrozenLake-v1", hp, seed=1, preset=preset, run_dir=run, device="cpu", quiet=True)
    model = load_trained(run, device="cpu")
    with torch.no_grad():
        greedy = model.q_network(torch.arange(16)).argmax(dim=1).numpy()
    mdp = tabular_mdp(gym.make("FrozenLake-v1"))
    assert policy_return(mdp, greedy, 100) > optimal_return(mdp, 100) - 0.05
