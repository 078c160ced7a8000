"""`dqn record --overlay`: the panel beside the game draws the Q-values the network computed for the very
frame it sits beside, highlights the chosen action, keeps the video's frame size fixed, and changes
nothing in what is played."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import dqn
from torch import nn

from dqn_cli.agent import Decision, epsilon_greedy, epsilon_greedy_decision
from dqn_cli.atari import AtariSettings, FilmedAtariEnv, register_atari_ids
from dqn_cli.evaluation import filmed_env, load_trained, make_policy, record_video
from dqn_cli.overlay import (
    GREEDY,
    KNOWN_ACTIONS,
    MARGIN,
    RANDOM,
    ROW,
    STUB,
    Panel,
    QValueOverlay,
    Reading,
    action_names,
    bar_shares,
)

CPU = torch.device("cpu")
NAMES = ["NOOP", "FIRE", "RIGHT"]


def _screen(height: int = 210, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _painted_rows(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Rows of the bars' area (below the three header lines) holding pixels of exactly ``colour``."""
    rows, _ = np.nonzero((image == colour).all(axis=2))
    return rows[rows >= MARGIN + 3 * ROW]


class ObsAsQ(nn.Module):
    """Q-values equal to the observation: what the panel must show can be worked out by hand."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float()


class Scripted:
    """A filmed env of 3 steps: observation [t, 2 - t] and a frame of shade 40 t at step t, reward 1."""

    fps = 10

    def __init__(self) -> None:
        self.t, self.actions = 0, []

    def _now(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[self.t, 2 - self.t]], np.float32), np.full((20, 30, 3), 40 * self.t, np.uint8)

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.t = 0
        return self._now()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, float, bool, np.ndarray]:
        self.actions.append(int(actions[0]))
        self.t += 1
        obs, frame = self._now()
        return obs, 1.0, self.t == 3, frame

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ drawing


def test_bar_lengths_run_from_a_stub_for_the_lowest_to_full_for_the_highest():
    np.testing.assert_allclose(bar_shares(np.array([-2.0, 0.0, 2.0])), [STUB, STUB + (1 - STUB) / 2, 1.0])
    np.testing.assert_allclose(bar_shares(np.array([5.0, 5.0])), [1.0, 1.0])  # equal: all full
    np.testing.assert_allclose(bar_shares(np.array([1.0, np.nan, 3.0])), [STUB, 0.0, 1.0])


def test_the_panel_changes_with_the_q_values_and_leaves_the_game_as_it_is():
    screen = _screen()
    one = Panel(NAMES, 0.05).draw(screen, Reading(1, 0, 0.0, np.array([1.0, 2.0, 3.0]), 2))
    other = Panel(NAMES, 0.05).draw(screen, Reading(1, 0, 0.0, np.array([3.0, 2.0, 1.0]), 2))
    game = np.repeat(np.repeat(screen, 2, axis=0), 2, axis=1)  # 210 rows scaled up twice
    np.testing.assert_array_equal(one[:420, :320], game)
    np.testing.assert_array_equal(other[:420, :320], game)
    assert (one[:, 320:] != other[:, 320:]).any(axis=2).sum() > 500


def test_the_highlighted_bar_moves_with_the_chosen_action():
    values = np.array([1.0, 2.0, 3.0])
    first = Panel(NAMES, 0.05).draw(_screen(), Reading(1, 0, 0.0, values, 0))
    last = Panel(NAMES, 0.05).draw(_screen(), Reading(1, 0, 0.0, values, 2))
    rows_first, rows_last = _painted_rows(first, GREEDY), _painted_rows(last, GREEDY)
    assert rows_first.max() < MARGIN + 4 * ROW <= MARGIN + 5 * ROW <= rows_last.min()  # bar 0, then bar 2
    assert rows_last.mean() - rows_first.mean() == pytest.approx(2 * ROW)
    random = Panel(NAMES, 0.05).draw(_screen(), Reading(1, 0, 0.0, values, 2, random=True))
    assert len(_painted_rows(random, GREEDY)) == 0
    np.testing.assert_array_equal(np.unique(_painted_rows(random, RANDOM)), np.unique(rows_last))


def test_every_frame_has_the_size_of_the_first_and_even_sides():
    panel = Panel(NAMES, 0.0)
    odd = panel.draw(_screen(211, 161), Reading(1, 0, 0.0, np.zeros(3), 0))
    assert odd.shape == (422, 642, 3)  # scaled twice, 320 columns of panel, then one more row and column
    assert panel.draw(_screen(100, 100), Reading(1, 1, 1.0)).shape == odd.shape
    many = Panel([f"action {i}" for i in range(18)], 0.0).draw(_screen(), Reading(1, 0, 0.0, np.zeros(18), 0))
    assert many.shape[0] >= MARGIN + (3 + 18) * ROW and many.shape[0] % 2 == 0  # taller than the game


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"])
def test_classic_control_actions_have_their_documented_names(env_id: str):
    env = filmed_env(env_id)
    try:
        names = action_names(env, int(env.env.action_space.n))
    finally:
        env.close()
    assert names == list(KNOWN_ACTIONS[env_id.split("-")[0]])


def test_atari_actions_are_named_by_ale_py_and_unknown_ones_by_index():
    register_atari_ids()
    env = FilmedAtariEnv(AtariSettings.for_env("ALE/Pong-v5"))
    try:
        assert action_names(env, 6) == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    finally:
        env.close()
    assert action_names(Scripted(), 2) == ["0", "1"]


def test_minatar_actions_are_named_by_the_moves_of_the_games_action_set():
    env = filmed_env("MinAtar/Breakout-v1")  # the minimal action set: the package's n, l, r
    try:
        assert action_names(env, 3) == ["no-op", "left", "right"]
    finally:
        env.close()


# ------------------------------------------------------------------------------------------ acting


def test_the_decision_is_epsilon_greedys_choice_with_the_networks_q_values():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    plain = epsilon_greedy(net, obs, 0.3, 3, np.random.default_rng(7), CPU)
    decision = epsilon_greedy_decision(net, obs, 0.3, 3, np.random.default_rng(7), CPU)
    np.testing.assert_array_equal(decision.actions, plain)
    np.testing.assert_allclose(decision.q_values, net(torch.from_numpy(obs)).detach().numpy(), rtol=1e-6)
    greedy = ~decision.random
    assert 0 < greedy.sum() < 64
    np.testing.assert_array_equal(decision.actions[greedy], decision.q_values[greedy].argmax(axis=1))
    every_one_random = epsilon_greedy_decision(net, obs[:1], 1.0, 3, np.random.default_rng(7), CPU)
    assert every_one_random.random.all() and every_one_random.q_values.shape == (1, 3)


def test_each_frame_shows_the_q_values_computed_for_it_and_its_action_is_played():
    """Frame t's panel is exactly what the Q-values of observation t give; the env gets their argmax."""
    policy = make_policy(ObsAsQ(), 2, 0.0, 0, CPU)
    names = action_names(Scripted(), 2)
    overlay = QValueOverlay(env := Scripted(), policy.decide, names, 0.0)
    obs, frame = overlay.reset(0)
    frames = [frame]
    for _ in range(3):
        obs, _, done, frame = overlay.step(overlay.act(obs))
        frames.append(frame)
    assert done and env.actions == [1, 0, 0]  # argmax of [0, 2], [1, 1] (the first), [2, 0]

    reference = Panel(names, 0.0)
    for t, actual in enumerate(frames):
        screen = np.full((20, 30, 3), 40 * t, np.uint8)
        decided = (np.array([t, 2.0 - t], np.float32), [1, 0, 0][t]) if t < 3 else (None, None)
        expected = reference.draw(screen, Reading(1, t, float(t), *decided))  # the last frame: no decision
        np.testing.assert_array_equal(actual, expected)


def test_the_overlay_plays_the_same_episodes(tiny_run: Path, tmp_path: Path):
    """Random actions included: the policy's generator gives the same draws in the same order."""
    trained = load_trained(tiny_run, device="cpu")
    policies = [trained.policy(4, epsilon=0.3), trained.policy(4, epsilon=0.3)]
    plain = record_video(policies[0], "CartPole-v1", 3, 4, tmp_path / "plain.mp4")
    overlaid = record_video(policies[1], "CartPole-v1", 3, 4, tmp_path / "overlaid.gif", overlay=True)
    assert (overlaid.returns, overlaid.frames) == (plain.returns, plain.frames)
    assert policies[0].rng.bit_generator.state == policies[1].rng.bit_generator.state  # as many draws


def test_minatar_frames_get_the_panel_too():
    """The grid drawn 16 pixels a cell (160x160) is scaled up three times, to 480 rows."""
    fixed = Decision(np.array([2]), np.array([[0.1, -0.3, 0.7]], np.float32), np.array([False]))
    overlay = QValueOverlay(filmed_env("MinAtar/Breakout-v1"), lambda obs: fixed, ["a", "b", "c"], 0.0)
    try:
        obs, frame = overlay.reset(0)
        shapes = {frame.shape}
        for _ in range(5):
            obs, _, _, frame = overlay.step(overlay.act(obs))
            shapes.add(frame.shape)
    finally:
        overlay.close()
    assert shapes == {(480, 480 + 320, 3)}


# ------------------------------------------------------------------------------------------ end to end


def test_dqn_record_overlay_on_cartpole(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "overlay.mp4"
    result = dqn("record", str(tiny_run), "--overlay", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = iio.imread(out)
    assert frames.shape[1:] == (400, 600 + 320, 3)  # CartPole's 400x600 screen, the panel to its right
    assert len(frames) == int(result.stderr.split()[0])


@pytest.mark.slow
def test_dqn_record_overlay_on_atari(untrained_atari_run: Path, tmp_path: Path):
    out = tmp_path / "overlay.mp4"
    result = dqn(
        "record", str(untrained_atari_run), "--overlay", "--max-frames", "12", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    frames = iio.imread(out)
    assert frames.shape == (12, 420, 320 + 320, 3)  # the 210x160 screen scaled twice, then the panel
