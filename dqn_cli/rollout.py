"""The rollout: the training envs and everything about the episodes in flight (current observations,
Atari lives, running returns and lengths). One ``step(actions)`` plays a vector step, turns it into what
learning sees (``learning_signals``), hands it to replay and reports the episodes that ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

from dqn_cli.envs import final_observations, restore_envs, snapshot_envs
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.replay import EnvStep, Replay
from dqn_cli.state import State


@dataclass
class FinishedEpisodes:
    """Raw score and length of each episode that ended in a step (whole games for Atari)."""

    returns: list[float]
    lengths: list[int]


def learning_signals(
    hp: Hyperparameters,
    rewards: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    lives_before: np.ndarray | None,
    lives_after: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and terminals as the learner sees them: sign-clipped, and ending at each lost life (Atari),
    if the hyperparameters say so (Mnih et al. 2015). Metrics keep the raw score and whole games."""
    if hp.clip_reward:
        rewards = np.sign(rewards)
    if hp.terminal_on_life_loss and lives_before is not None and lives_after is not None:
        terminated = terminated | ((lives_after < lives_before) & ~done)
    return rewards, terminated


class Rollout:
    """Owns the training envs and the episodes in flight; writes every step to ``replay``."""

    def __init__(self, envs: VectorEnv, hp: Hyperparameters, replay: Replay, seed: int) -> None:
        self.envs, self.hp, self.replay = envs, hp, replay
        self.episode_returns = np.zeros(hp.n_envs)
        self.episode_lengths = np.zeros(hp.n_envs, dtype=np.int64)
        self.restored_exactly = True
        self.actions = np.zeros(hp.n_envs, dtype=np.int64)  # of the vector step in flight
        self.restart(seed)

    def restart(self, seed: int) -> None:
        """Reset every env (seeded) and begin new episodes; nothing of the episodes in flight is kept."""
        self.obs, infos = self.envs.reset(seed=seed)
        self.lives: np.ndarray | None = infos.get("lives")  # Atari only
        self.replay.start(self.obs)
        self.episode_returns[:], self.episode_lengths[:] = 0.0, 0

    def step(self, actions: np.ndarray) -> FinishedEpisodes:
        self.send(actions)
        return self.receive()

    def send(self, actions: np.ndarray) -> None:
        """Start a vector step. ale-py's vector env steps its emulators on threads of its own until
        ``receive``, so the caller can compute meanwhile; other vector envs step in ``receive``."""
        if hasattr(self.envs, "send"):
            self.envs.send(actions)
        self.actions = actions

    def receive(self) -> FinishedEpisodes:
        """Finish the vector step ``send`` started: hand it to replay and report the episodes that ended."""
        actions = self.actions
        if hasattr(self.envs, "recv"):
            next_obs, rewards, terminated, truncated, infos = self.envs.recv()
        else:
            next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        done = terminated | truncated
        learn_rewards, learn_terminal = learning_signals(
            self.hp, rewards, terminated, done, self.lives, infos.get("lives")
        )
        self.lives = infos.get("lives")  # where a game ended: the new game's lives
        reached = final_observations(next_obs, infos, done)
        self.replay.add_step(
            EnvStep(actions, learn_rewards, learn_terminal, terminated, truncated, reached, next_obs)
        )
        self.obs = next_obs
        self.episode_returns += rewards
        self.episode_lengths += 1
        if not done.any():  # most steps: nothing to report
            return FinishedEpisodes([], [])
        ended = np.flatnonzero(done)
        finished = FinishedEpisodes(
            [float(self.episode_returns[i]) for i in ended], [int(self.episode_lengths[i]) for i in ended]
        )
        self.episode_returns[ended], self.episode_lengths[ended] = 0.0, 0
        return finished

    def close(self) -> None:
        self.envs.close()

    def state_dict(self) -> State:
        state: dict[str, Any] = {
            "obs": self.obs,
            "episode_returns": self.episode_returns,
            "episode_lengths": self.episode_lengths,
            "envs": snapshot_envs(self.envs),
        }
        if self.lives is not None:
            state["lives"] = self.lives
        return state

    def load_state_dict(self, state: State) -> None:
        """Continue the episodes in flight where the envs' state could be saved (classic control); else
        ``restored_exactly`` is False and the caller restarts them."""
        self.restored_exactly = state["envs"] is not None
        if not self.restored_exactly:
            return
        restore_envs(self.envs, state["envs"])
        self.obs = state["obs"]
        self.lives = state.get("lives")
        self.episode_returns = state["episode_returns"].copy()
        self.episode_lengths = state["episode_lengths"].copy()
