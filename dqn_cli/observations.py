"""What kind of observation an env gives, decided in one place: the network and replay both ask here."""

from __future__ import annotations

import numpy as np


def is_frame_stack(shape: tuple[int, ...], dtype: np.dtype | str) -> bool:
    """Stacked uint8 frames (stack, height, width), as the Atari pipeline makes them: these get the
    convolutional network, and replay stores each frame once instead of whole stacks."""
    return len(shape) == 3 and np.dtype(dtype) == np.uint8
