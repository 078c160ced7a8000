"""Atari: the paper's observation pipeline, the same observations in training, evaluation and recording,
the Nature CNN, frame-deduplicated replay and the memory check. Budgets are tiny: CI stays fast."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, dqn

from dqn_cli.atari import AtariSettings, FilmedAtariEnv, make_atari_vector_env
from dqn_cli.envs import make_vector_env
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import preset_name_for, resolve
from dqn_cli.replay import EnvStep, FrameStore, Replay
from dqn_cli.rollout import Rollout, learning_signals

PONG = "PongNoFrameskip-v4"


def atari_hp(**overrides) -> Hyperparameters:
    return apply_overrides(resolve(PONG)[1], overrides)


# ------------------------------------------------------------------------------------ env and presets


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "PongNoFrameskip-v4", "ALE/Breakout-v5"])
def test_atari_ids_get_the_atari_preset(env_id: str):
    assert preset_name_for(env_id) == "atari"
    preset, hp = resolve(env_id)
    assert preset == "atari" and hp.net_arch == [512] and hp.clip_reward and hp.terminal_on_life_loss
    assert (hp.batch_size, hp.train_freq, hp.target_update_interval, hp.exploration_final_eps) == (
        32,
        4,
        1_000,
        0.01,
    )
    assert preset_name_for("Acrobot-v1") != "atari"


def test_sticky_actions_default_to_what_the_id_defines():
    hp = Hyperparameters()
    assert AtariSettings.for_env("ALE/Pong-v5", hp).repeat_action_probability == 0.25
    assert AtariSettings.for_env(PONG, hp).repeat_action_probability == 0.0
    chosen = apply_overrides(hp, {"repeat_action_probability": 0.1})
    assert AtariSettings.for_env("ALE/Pong-v5", chosen).repeat_action_probability == 0.1


def test_observations_are_the_papers_and_rewards_stay_raw():
    envs = make_vector_env("ALE/SpaceInvaders-v5", 2, atari_hp())
    try:
        obs, info = envs.reset(seed=0)
        assert envs.single_observation_space.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert not obs[:, :3].any() and obs[:, 3].any()  # a new game: padding, then the first frame
        rng = np.random.default_rng(0)
        rewards, lives_lost_mid_game, lives = [], 0, info["lives"]
        for _ in range(600):
            obs, reward, terminated, truncated, info = envs.step(rng.integers(0, 6, size=2))
            rewards.extend(reward)
            lives_lost_mid_game += int(((info["lives"] < lives) & ~(terminated | truncated)).sum())
            lives = info["lives"]
        assert max(rewards) > 1  # aliens score 5 to 30: not clipped by the env
        assert lives_lost_mid_game >= 1  # a lost life does not end the env's episode
    finally:
        envs.close()


def test_learning_sees_clipped_rewards_and_lost_lives_as_terminal():
    hp = atari_hp()
    rewards, terminated = learning_signals(
        hp,
        rewards=np.array([7.0, -3.0, 0.0]),
        terminated=np.array([False, False, True]),
        done=np.array([False, False, True]),
        lives_before=np.array([5, 3, 1]),
        lives_after=np.array([4, 3, 5]),  # env 2's game ended: its lives are the new game's
    )
    assert rewards.tolist() == [1.0, -1.0, 0.0]
    assert terminated.tolist() == [True, False, True]
    raw = apply_overrides(hp, {"clip_reward": False, "terminal_on_life_loss": False})
    rewards, terminated = learning_signals(
        raw, np.array([7.0]), np.array([False]), np.array([False]), np.array([5]), np.array([4])
    )
    assert rewards.tolist() == [7.0] and terminated.tolist() == [False]


@pytest.mark.slow
def test_eval_and_record_see_exactly_the_training_observations():
    """Same seed, same actions: the training env, the evaluation env and the recording's agent view
    produce identical observations, and the recording's colour camera stays in step with them."""
    hp = atari_hp(repeat_action_probability=0.25)  # sticky actions draw from the seeded emulator RNG
    settings = AtariSettings.for_env(PONG, hp)
    training = make_vector_env(PONG, 1, hp)
    filmed = FilmedAtariEnv(settings)
    try:
        train_obs, _ = training.reset(seed=7)
        film_obs, frame = filmed.reset(seed=7)
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
        rng = np.random.default_rng(1)
        ended = 0
        for _ in range(1_200):
            actions = rng.integers(0, 6, size=1)
            np.testing.assert_array_equal(film_obs, train_obs)
            train_obs, reward, terminated, truncated, _ = training.step(actions)
            film_obs, film_reward, done, frame = filmed.step(actions)
            assert (film_reward, done) == (float(reward[0]), bool(terminated[0] or truncated[0]))
            assert frame.shape == (210, 160, 3)
            ended += done
        assert ended >= 1  # random Pong loses a game within 1,200 steps: checked across a reset too
    finally:
        training.close()
        filmed.close()


# ------------------------------------------------------------------------------------------- network


def test_nature_cnn_shape_and_uint8_input():
    spec = network_spec((4, 84, 84), 6, [512], dueling=False, precision="float32", obs_dtype="uint8")
    network = build_q_network(spec)
    assert spec["kind"] == "nature_cnn"
    # 3 convolutions (32 8x8/4, 64 4x4/2, 64 3x3/1), 3136 -> 512, 512 -> 6: the Nature DQN's 1,687,206
    assert sum(p.numel() for p in network.parameters()) == 1_687_206
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    q = network(frames)
    assert q.shape == (2, 6) and q.dtype == torch.float32
    torch.testing.assert_close(q, network(frames.float()))  # scaling by 1/255 happens inside


def test_bfloat16_convolutions_stay_close_to_float32():
    torch.manual_seed(0)
    exact = build_q_network(network_spec((4, 84, 84), 6, [512], False, "float32", obs_dtype="uint8"))
    fast = build_q_network(network_spec((4, 84, 84), 6, [512], False, "bfloat16", obs_dtype="uint8"))
    fast.load_state_dict(exact.state_dict())
    frames = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    q_exact, q_fast = exact(frames), fast(frames)
    assert q_fast.dtype == torch.float32
    torch.testing.assert_close(q_fast, q_exact, atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------------------------ frame replay


class FakeFrameEnvs:
    """Vector env of stacked 3x2 frames whose pixels encode (env, step): episodes of random length end by
    termination or truncation; each new episode's stack is zeros but its newest frame, as ale-py's."""

    def __init__(self, n_envs: int, stack: int, rng: np.random.Generator) -> None:
        self.n_envs, self.stack, self.rng = n_envs, stack, rng
        self.counter = 0
        self.obs = np.zeros((n_envs, stack, 3, 2), dtype=np.uint8)
        for env in range(n_envs):
            self._new_episode(env)

    def _frame(self) -> np.ndarray:
        self.counter += 1
        return self.rng.integers(1, 256, size=(3, 2), dtype=np.uint8)

    def _new_episode(self, env: int) -> None:
        self.obs[env] = 0
        self.obs[env, -1] = self._frame()

    def step(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(next_obs, real_next, terminated, truncated)."""
        real = np.concatenate(
            [self.obs[:, 1:], np.stack([self._frame() for _ in range(self.n_envs)])[:, None]], 1
        )
        terminated = self.rng.random(self.n_envs) < 0.08
        truncated = ~terminated & (self.rng.random(self.n_envs) < 0.03)
        self.obs = real.copy()
        for env in np.flatnonzero(terminated | truncated):
            self._new_episode(env)
        return self.obs.copy(), real, terminated, truncated


@pytest.mark.parametrize("n_envs", [1, 3])
def test_frame_replay_rebuilds_the_stacks_a_naive_buffer_stores(n_envs: int):
    """Short episodes (many ends, truncations and terminations) and several wraps of both rings."""
    stack, capacity = 4, 60
    hp = apply_overrides(Hyperparameters(), {"buffer_size": capacity, "n_envs": n_envs})
    rng = np.random.default_rng(n_envs)
    dedup = Replay(hp, (stack, 3, 2), np.dtype(np.uint8), np.random.default_rng(0))
    # the same frames as 2-D observations are no frame stacks: replay copies them whole
    naive = Replay(hp, (stack, 6), np.dtype(np.uint8), np.random.default_rng(0))
    assert isinstance(dedup.keeping, FrameStore) and not isinstance(naive.keeping, FrameStore)
    envs = FakeFrameEnvs(n_envs, stack, rng)
    dedup.start(envs.obs.copy())
    naive.start(envs.obs.reshape(n_envs, stack, 6))
    for _ in range(400):
        next_obs, real_next, terminated, truncated = envs.step()
        actions, rewards = rng.integers(0, 4, n_envs), rng.random(n_envs)
        for replay, shape in ((dedup, (stack, 3, 2)), (naive, (stack, 6))):
            replay.add_step(
                EnvStep(
                    actions,
                    rewards,
                    terminated,
                    terminated,
                    truncated,
                    real_next.reshape(n_envs, *shape),
                    next_obs.reshape(n_envs, *shape),
                )
            )
        np.testing.assert_array_equal(dedup.keeping.observations(dedup.current), next_obs)
        a, b = dedup.sample(16), naive.sample(16)  # same seed: same indices
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.obs, b.obs.reshape(16, stack, 3, 2))
        live = a.terminated == 0  # a game-over transition's next observation is never stored or used
        np.testing.assert_array_equal(a.next_obs[live], b.next_obs.reshape(16, stack, 3, 2)[live])
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    assert dedup.keeping.count > 2 * dedup.keeping.capacity  # the frame ring wrapped several times


def test_frame_store_refuses_to_rebuild_overwritten_frames():
    store = FrameStore(capacity=4, stack=2, frame_shape=(1,), dtype=np.dtype(np.uint8))
    first = store.start(np.array([[[0], [9]]], dtype=np.uint8))
    refs = first
    for value in range(1, 5):
        refs = store.extend(refs, np.array([[[0], [value]]], dtype=np.uint8))
    with pytest.raises(RuntimeError, match="overwritten"):
        store.observations(first)
    with pytest.raises(ValueError, match="zeros"):
        store.start(np.array([[[1], [2]]], dtype=np.uint8))


def test_frame_replay_stores_at_most_7_2_kb_per_transition():
    for buffer_size in (100_000, 1_000_000):  # arrays are mapped lazily: building them touches nothing
        replay = Replay(
            atari_hp(buffer_size=buffer_size), (4, 84, 84), np.dtype(np.uint8), np.random.default_rng(0)
        )
        # per transition: a 7,056-byte frame + its 8-byte link, two 8-byte frame references, action,
        # reward, terminal and horizon (8 + 4 + 4 + 4), plus 1% spare frames for time-limit cuts
        assert replay.allocated_bytes() / buffer_size == pytest.approx(7_171, abs=1)


@pytest.mark.slow
def test_training_frame_references_rebuild_the_env_observations():
    """The real pipeline: ale-py observations through the training loop's rollout, over a game end.
    Every stored transition's observation is the one the env gave, and its next observation the one the
    env reached (the final one where a game ended)."""
    hp = atari_hp(n_envs=2, buffer_size=3_000, clip_reward=False, terminal_on_life_loss=False)
    envs = make_atari_vector_env(AtariSettings.for_env(PONG, hp), 2)
    replay = Replay(hp, (4, 84, 84), np.dtype(np.uint8), np.random.default_rng(0))
    rollout = Rollout(envs, hp, replay, seed=3)
    try:
        rng, games = np.random.default_rng(0), 0
        for _ in range(1_000):
            obs = rollout.obs.copy()
            ended = rollout.step(rng.integers(0, 6, size=2))
            np.testing.assert_array_equal(replay.keeping.observations(replay.current), rollout.obs)
            added = (replay.storage.position - 2 + np.arange(2)) % replay.storage.capacity
            np.testing.assert_array_equal(replay.keeping.observations(replay.storage.obs[added]), obs)
            live = replay.storage.terminated[added] == 0  # games that go on (Pong never hits its time limit)
            reached = replay.keeping.observations(replay.storage.next_obs[added[live]])
            np.testing.assert_array_equal(reached, rollout.obs[live])
            assert not rollout.obs[~live, :3].any()  # where a game ended, a new one began
            games += len(ended.returns)
            assert len(ended.returns) == (~live).sum()
        assert games >= 1
    finally:
        rollout.close()


# ----------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_replay_larger_than_memory_fails_up_front(tmp_path: Path):
    result = dqn("train", PONG, "--set", "buffer_size=1_000_000_000", cwd=tmp_path)
    assert_one_line_error(result, "replay buffer", "GB", "buffer_size")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_atari_train_eval_record_resume_end_to_end(tmp_path: Path):
    sets = ["learning_starts=200", "buffer_size=2_000", "eval_freq=0", "checkpoint_freq=300"]
    args = [f"--set={item}" for item in sets]
    trained = dqn("train", "ALE/Pong-v5", "--steps", "400", "--quiet", *args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (run,) = (tmp_path / "runs" / "ALE-Pong-v5").iterdir()
    meta = json.loads((run / "model.json").read_text())
    assert meta["network"]["kind"] == "nature_cnn" and meta["preset"] == "atari"
    assert meta["observation_space"] == {"shape": [4, 84, 84], "dtype": "uint8"}

    evaluated = dqn("eval", "--json", "--episodes", "1", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    (score,) = json.loads(evaluated.stdout)["returns"]
    assert -21 <= score <= 21 and score == int(score)  # a raw Pong score, not clipped per step

    recorded = dqn("record", "--out", "game.mp4", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    frames = iio.imread(run / "videos" / "game.mp4")
    assert frames.shape[1:] == (210, 160, 3)  # native resolution, colour
    assert frames[..., 0].astype(int).sum() != frames[..., 2].astype(int).sum()
    assert int(recorded.stderr.split()[0]) == len(frames)

    resumed = dqn("train", "--resume", str(run), "--steps", "500", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text())["step"] == 500

    headless = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    rendered = dqn("eval", "--render", cwd=tmp_path, env=headless)  # tests/test_render.py has a display
    assert_one_line_error(rendered, "needs a display")


@pytest.mark.slow
def test_same_seed_same_atari_run(tmp_path: Path):
    """Two envs, frame replay, n-step, bfloat16 or not: on CPU the seed fixes every weight."""
    from dqn_cli.runfiles import load_model
    from dqn_cli.training import train

    hp = atari_hp(n_timesteps=300, learning_starts=100, buffer_size=500, n_envs=2, n_step=3, eval_freq=0)
    weights = []
    for name in ("a", "b"):
        train(PONG, hp, seed=5, run_dir=tmp_path / name, device="cpu", quiet=True)
        weights.append(load_model(tmp_path / name / "model.safetensors").weights)
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
