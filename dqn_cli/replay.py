"""Uniform experience replay over preallocated arrays (no per-step allocation, no Python loops)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """A sampled minibatch as numpy arrays; the agent moves it to its device."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray


class ReplayBuffer:
    """Ring buffer of transitions. ``terminated`` is stored, truncation is not: a time-limit cut is no
    terminal state, so its transition bootstraps from the real next observation like any other.
    """

    def __init__(
        self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, rng: np.random.Generator
    ):
        self.capacity = capacity
        self.rng = rng
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.position = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        """Store a batch of transitions (one per env), overwriting the oldest once full."""
        index = (self.position + np.arange(len(actions))) % self.capacity
        self.obs[index] = obs
        self.next_obs[index] = next_obs
        self.actions[index] = actions
        self.rewards[index] = rewards
        self.terminated[index] = terminated
        self.position = int(index[-1] + 1) % self.capacity
        self.size = min(self.size + len(actions), self.capacity)

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def stored(self) -> dict[str, np.ndarray]:
        """The filled part of each array (views, no copy), for checkpoints."""
        return {name: getattr(self, name)[: self.size] for name in self._FIELDS}

    def restore(self, arrays: dict[str, np.ndarray], position: int, size: int) -> None:
        """Refill from ``stored()`` output; shapes and dtypes must match this buffer's."""
        if not 0 <= position < self.capacity or not 0 <= size <= self.capacity:
            raise ValueError(f"replay position {position} / size {size} do not fit capacity {self.capacity}")
        for name in self._FIELDS:
            target, source = getattr(self, name), arrays[name]
            if source.shape != (size, *target.shape[1:]) or source.dtype != target.dtype:
                raise ValueError(
                    f"replay {name} has shape {source.shape} {source.dtype}, expected "
                    f"{(size, *target.shape[1:])} {target.dtype}"
                )
            target[:size] = source
        self.position, self.size = position, size

    def sample(self, batch_size: int) -> Batch:
        """Uniformly sample ``batch_size`` stored transitions (with replacement, like SB3)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = self.rng.integers(0, self.size, size=batch_size)
        return Batch(
            obs=self.obs[index],
            actions=self.actions[index],
            rewards=self.rewards[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
        )
