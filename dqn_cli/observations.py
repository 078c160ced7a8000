"""What kind of observation an env gives, decided in one place: the network and replay both ask here."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def is_frame_stack(shape: tuple[int, ...], dtype: np.dtype | str) -> bool:
    """Stacked uint8 frames (stack, height, width), as the Atari pipeline makes them: these get the
    convolutional network, and replay stores each frame once instead of whole stacks."""
    return len(shape) == 3 and np.dtype(dtype) == np.uint8


def is_object_grid(shape: tuple[int, ...], dtype: np.dtype | str) -> bool:
    """A grid of on/off cells, one channel per kind of object, channels last (height, width, channels), as
    MinAtar gives them: these get the small CNN of Young & Tian 2019, and replay keeps them as bool, one
    byte a cell."""
    return len(shape) == 3 and np.dtype(dtype) == np.bool_


def one_hot_sizes(space: gym.Space) -> list[int] | None:
    """The category counts of a Discrete (one) or MultiDiscrete (one per entry, row-major) observation, or
    None for any other space. Such observations are categories, not quantities: the network one-hot encodes
    each entry and concatenates them, as Stable-Baselines3's ``preprocess_obs`` does, while replay keeps the
    integers (Taxi's 500 states as one-hot float32 would take 4 KB a transition, 4 GB for a 1M buffer)."""
    if isinstance(space, gym.spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return [int(n) for n in space.nvec.flatten()]
    return None
