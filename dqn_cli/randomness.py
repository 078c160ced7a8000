"""Every random source of a run, seeded from one number and saved with each checkpoint, so the same seed
on CPU gives the same run, and a resumed run continues the very same random streams."""

from __future__ import annotations

import random

import numpy as np
import torch

from dqn_cli.state import State


class RandomSources:
    """Python's and torch's global generators, and the numpy generator that exploration and replay
    sampling draw from (``self.numpy``)."""

    def __init__(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        self.numpy = np.random.default_rng(seed)

    def state_dict(self) -> State:
        version, internal, gauss = random.getstate()
        return {
            "numpy": self.numpy.bit_generator.state,
            "python": [version, list(internal), gauss],
            "torch": torch.get_rng_state().numpy(),
        }

    def load_state_dict(self, state: State) -> None:
        self.numpy.bit_generator.state = state["numpy"]
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch"])))
