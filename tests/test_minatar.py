"""MinAtar: ids and preset, the paper's small CNN on bool grids, compact replay, seeding, exact resume,
and train / eval / record through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import dqn

from dqn_cli.envs import make_vector_env, restore_envs, snapshot_envs
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.minatar import GAMES, grid_frame, register_minatar_ids
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import preset_name_for, resolve
from dqn_cli.replay import EnvStep, Replay
from dqn_cli.runfiles import load_model
from dqn_cli.training import resume, train

# channels and minimal actions of each game, from the games' sources (minatar/environments/*.py)
CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}
MINIMAL_ACTIONS = {"asterix": 5, "breakout": 3, "freeway": 3, "seaquest": 6, "space_invaders": 4}
IDS = {game: game.title().replace("_", "") for game in GAMES}
# Every option that changes what replay and the update do, so that seeding and resume cover them all.
SMALL = {"learning_starts": 100, "buffer_size": 1_000, "eval_freq": 0, "train_freq": 2, "n_envs": 2}
OPTIONS = {"double_q": True, "dueling": True, "n_step": 3, "prioritized_replay": True}
FIXED_SCHEDULES = {"exploration_fraction": 0.0, "prioritized_replay_beta0": 1.0}


def _minatar_hp(**overrides) -> Hyperparameters:
    _, hp = resolve("MinAtar/Breakout-v1", sets=[f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return hp


@pytest.mark.parametrize("game", GAMES)
def test_ids_spaces_and_preset_are_the_packages(game: str):
    register_minatar_ids()
    for version, actions in (("v0", 6), ("v1", MINIMAL_ACTIONS[game])):
        env_id = f"MinAtar/{IDS[game]}-{version}"
        assert preset_name_for(env_id) == "minatar"
        envs = make_vector_env(env_id, 1)
        try:
            assert envs.single_observation_space.shape == (10, 10, CHANNELS[game])
            assert envs.single_observation_space.dtype == np.bool_
            assert envs.single_action_space.n == actions
            assert envs.envs[0].unwrapped.game.sticky_action_prob == 0.1  # the paper's, as the package has it
        finally:
            envs.close()
    assert gym.registry[f"MinAtar/{IDS[game]}-v1"].max_episode_steps is None  # as the package registers


def _played(envs: gym.vector.VectorEnv, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    observations, rewards = [], []
    for action in actions:
        obs, reward, *_ = envs.step(action)
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), np.array(rewards)


def test_the_seed_fixes_the_games():
    actions = np.random.default_rng(0).integers(0, 6, size=(400, 2))
    runs = []
    for seed in (7, 7, 8):
        envs = make_vector_env("MinAtar/Seaquest-v1", 2)
        envs.reset(seed=seed)
        runs.append(_played(envs, actions))
        envs.close()
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("game", GAMES)
def test_a_saved_game_continues_exactly_where_it_was(game: str):
    """After 300 random steps (Seaquest's enemies, bullets and divers are lists by then), a game put back
    from its JSON snapshot into fresh envs plays the same 300 steps as the original."""
    env_id = f"MinAtar/{IDS[game]}-v1"
    rng = np.random.default_rng(1)
    envs = make_vector_env(env_id, 2)
    envs.reset(seed=3)
    _played(envs, rng.integers(0, MINIMAL_ACTIONS[game], size=(300, 2)))
    snapshot = json.loads(json.dumps(snapshot_envs(envs)))  # as a checkpoint stores it
    actions = rng.integers(0, MINIMAL_ACTIONS[game], size=(300, 2))
    original = _played(envs, actions)
    envs.close()

    restored = make_vector_env(env_id, 2)
    restored.reset(seed=99)  # another game entirely, until restored
    restore_envs(restored, snapshot)
    again = _played(restored, actions)
    restored.close()
    np.testing.assert_array_equal(original[0], again[0])
    np.testing.assert_array_equal(original[1], again[1])


def test_a_damaged_game_snapshot_is_refused():
    envs = make_vector_env("MinAtar/Breakout-v1", 1)
    envs.reset(seed=0)
    snapshot = snapshot_envs(envs)
    for damage in ({"pos": "left"}, {"brick_map": {"array": [[1]], "dtype": "float64"}}, {"unknown": 1}):
        damaged = json.loads(json.dumps(snapshot))
        damaged[0][0]["minatar"]["game"].update(damage)
        with pytest.raises(ValueError, match="MinAtar"):
            restore_envs(envs, damaged)
    with pytest.raises(ValueError, match="not a MinAtar game's"):
        restore_envs(envs, [[{"gravity": 9.8}]])
    envs.close()


def test_the_papers_network_shapes_and_cost():
    """One 3x3 convolution of 16 channels on the 10x10 grid (8x8 outputs), a 128-unit layer, the head."""
    spec = network_spec((10, 10, 10), 6, [128], obs_dtype="bool")
    assert spec["kind"] == "minatar_cnn"
    network = build_q_network(spec)
    weights = {name: tuple(p.shape) for name, p in network.named_parameters()}
    assert weights == {
        "convolution.weight": (16, 10, 3, 3),
        "convolution.bias": (16,),
        "head.hidden.0.weight": (128, 16 * 8 * 8),
        "head.hidden.0.bias": (128,),
        "head.head.weight": (6, 128),
        "head.head.bias": (6,),
    }
    assert sum(p.numel() for p in network.parameters()) == 1_456 + 131_200 + 774
    multiply_adds = 16 * 10 * 9 * 64 + 1024 * 128 + 128 * 6
    assert multiply_adds == 224_000  # per observation: 0.2M, against the Nature CNN's 9.4M

    grids = torch.rand(5, 10, 10, 10) < 0.2
    q = network(grids)
    assert q.shape == (5, 6) and q.dtype == torch.float32
    channels_first = grids.permute(0, 3, 1, 2).float()  # what the convolution must see
    by_hand = network.head(torch.relu(network.convolution(channels_first)))
    torch.testing.assert_close(q, by_hand, rtol=0, atol=0)

    dueling = build_q_network(network_spec((10, 10, 4), 3, [128], dueling=True, obs_dtype="bool"))
    assert dueling(grids[..., :4]).shape == (5, 3) and dueling.head.value is not None


def test_replay_keeps_grids_as_bool_bytes():
    hp = Hyperparameters(buffer_size=100, n_envs=1)
    replay = Replay(hp, (10, 10, 4), np.dtype(bool), np.random.default_rng(0))
    assert replay.storage.obs.dtype == np.bool_ and replay.storage.next_obs.dtype == np.bool_
    # obs and next obs at a byte a cell, then action (8), reward, terminal, horizon (4 each)
    assert replay.storage.allocated_bytes() == 100 * (2 * 400 + 8 + 3 * 4)
    obs = np.random.default_rng(1).random((2, 1, 10, 10, 4)) < 0.3
    replay.start(obs[0])
    step = EnvStep(
        actions=np.array([2]),
        rewards=np.array([1.0], dtype=np.float32),
        terminal=np.array([False]),
        game_over=np.array([False]),
        truncated=np.array([False]),
        reached=obs[1],
        next_obs=obs[1],
    )
    replay.add_step(step)
    batch = replay.sample(1)
    assert batch.obs.dtype == np.bool_
    np.testing.assert_array_equal(batch.obs[0], obs[0, 0])
    np.testing.assert_array_equal(batch.next_obs[0], obs[1, 0])


def test_video_frames_are_the_grid_in_minatars_colours():
    obs = np.zeros((10, 10, 4), dtype=bool)
    obs[0, 0, 0] = True
    obs[5, 5, 1] = obs[5, 5, 2] = True  # overlapping objects: the higher channel is drawn
    frame = grid_frame(obs)
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    # seaborn.color_palette("cubehelix", 4), as MinAtar's display draws channels 0..3, times 255
    palette = [(22, 61, 78), (84, 121, 47), (208, 126, 147), (193, 202, 243)]
    assert tuple(frame[0, 0]) == palette[0] and tuple(frame[15, 15]) == palette[0]
    assert tuple(frame[16, 16]) == (0, 0, 0)
    assert tuple(frame[5 * 16 + 8, 5 * 16 + 8]) == palette[2]


def _metrics(run: Path) -> list[list[str]]:
    with (run / "metrics.csv").open() as file:
        return [[value for key, value in row.items() if key != "wall_time"] for row in csv.DictReader(file)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run / "model.safetensors").weights


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.slow
def test_same_seed_same_run_and_resume_is_bit_exact(tmp_path: Path):
    """On CPU the seed fixes every metric and weight; a run stopped at 300 steps and resumed to 600 ends
    where one never stopped does (epsilon and the importance exponent at their final values from the
    start, so that no schedule depends on the planned length)."""
    hp = _minatar_hp(**SMALL, **OPTIONS, **FIXED_SCHEDULES, n_timesteps=600)
    for name in ("a", "b"):
        train("MinAtar/Breakout-v1", hp, seed=4, run_dir=tmp_path / name, device="cpu", quiet=True)
    assert len(_metrics(tmp_path / "a")) > 5
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    _assert_same_weights(tmp_path / "a", tmp_path / "b")

    short = _minatar_hp(**SMALL, **OPTIONS, **FIXED_SCHEDULES, n_timesteps=300)
    train("MinAtar/Breakout-v1", short, seed=4, run_dir=tmp_path / "stopped", device="cpu", quiet=True)
    result, exact = resume(tmp_path / "stopped", steps=600, device="cpu", quiet=True)
    assert exact and result.steps == 600
    assert _metrics(tmp_path / "stopped") == _metrics(tmp_path / "a")
    _assert_same_weights(tmp_path / "stopped", tmp_path / "a")


@pytest.mark.slow
def test_train_eval_record_through_the_cli(tmp_path: Path):
    sets = ["learning_starts=200", "eval_freq=300", "eval_episodes=2", "eval_max_frames=500"]
    args = [f"--set={item}" for item in sets]
    trained = dqn("train", "MinAtar/Breakout-v1", "--steps", "600", *args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "Preset minatar for MinAtar/Breakout-v1" in trained.stdout + trained.stderr
    (run,) = (tmp_path / "runs" / "MinAtar-Breakout-v1").iterdir()
    meta = json.loads((run / "model.json").read_text())
    assert meta["network"]["kind"] == "minatar_cnn" and meta["preset"] == "minatar"
    assert meta["observation_space"] == {"shape": [10, 10, 4], "dtype": "bool"}

    evaluated = dqn("eval", "--json", "--episodes", "3", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    returns = json.loads(evaluated.stdout)["returns"]
    assert len(returns) == 3 and all(r >= 0 and r == int(r) for r in returns)  # bricks broken

    recorded = dqn("record", "--out", "game.mp4", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    frames = iio.imread(run / "videos" / "game.mp4")
    assert frames.shape[1:] == (160, 160, 3)
    assert int(recorded.stderr.split()[0]) == len(frames)
    assert len(np.unique(frames[0].reshape(-1, 3) // 32, axis=0)) >= 4  # paddle, ball, trail, bricks, black
