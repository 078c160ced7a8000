"""MinAtar (Young & Tian 2019): five Atari-like games on a 10x10 grid that a CPU learns in minutes.

The ids are the ones the ``minatar`` package's own ``minatar.gym.register_envs()`` makes, registered here
without importing the package: it imports seaborn, pandas and scipy, a second of start-up that every
command checking an env id would pay. ``MinAtar/<Game>-v1`` plays the game's minimal action set (3 to 6
actions), ``-v0`` all 6. Observations are the package's: bool (10, 10, channels), one channel per kind of
object, channels last. Sticky actions are the package's fixed 0.1, as in the paper; episodes have no time
limit of their own (Freeway ends itself after 2,500 steps).

The game keeps its whole state in plain Python values, numpy arrays and a legacy ``RandomState``, so a
checkpoint saves it and a resumed run continues its episodes bit for bit (``game_state`` and
``restore_game_state``). Videos are drawn from the grid (``grid_frame``) in the package's colours.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENTRY_POINT = "dqn_cli.minatar:make_minatar_env"
GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
CELL_PIXELS = 16  # a 10x10 grid becomes a 160x160 video, a size every encoder takes
VIDEO_FPS = 15


def register_minatar_ids() -> None:
    """Make ``MinAtar/Breakout-v1`` and the rest known to gymnasium's registry (once)."""
    for game in GAMES:
        name = game.title().replace("_", "")
        for version, minimal in (("v0", False), ("v1", True)):
            env_id = f"MinAtar/{name}-{version}"
            if env_id not in gym.registry:
                gym.register(
                    env_id, entry_point=ENTRY_POINT, kwargs={"game": game, "use_minimal_action_set": minimal}
                )


def is_minatar(env_id: str) -> bool:
    register_minatar_ids()
    spec = gym.registry.get(env_id)
    return spec is not None and spec.entry_point == ENTRY_POINT


def make_minatar_env(game: str, use_minimal_action_set: bool, render_mode: str | None = None) -> gym.Env:
    """The package's gymnasium env, its ``rgb_array`` frames replaced by ``grid_frame``'s: the package's
    own are 10x10 float images, which no video encoder takes."""
    from minatar.gym import BaseEnv

    env = BaseEnv(game, render_mode=render_mode, use_minimal_action_set=use_minimal_action_set)
    return GridFrames(env)


class GridFrames(gym.Wrapper):
    """``render()`` in ``rgb_array`` mode gives ``grid_frame`` of the current state."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.metadata = {**env.metadata, "render_fps": VIDEO_FPS}

    def render(self) -> Any:
        if self.render_mode == "rgb_array":
            return grid_frame(self.env.unwrapped.game.state())
        return self.env.render()


def grid_frame(obs: np.ndarray, cell_pixels: int = CELL_PIXELS) -> np.ndarray:
    """A bool (10, 10, channels) observation as a uint8 RGB image, ``cell_pixels`` square per cell, in the
    colours of MinAtar's own display: black background, channel i in the i-th of as many cubehelix
    colours (seaborn's ``color_palette("cubehelix", channels)``); where channels overlap, the last wins."""
    import matplotlib

    channels = obs.shape[-1]
    palette = matplotlib.colormaps["cubehelix"](np.linspace(0, 1, channels + 2)[1:-1])[:, :3]
    colours = np.vstack([np.zeros(3), palette])
    index = np.amax(obs * np.arange(1, channels + 1), axis=-1)
    image = np.round(colours[index] * 255).astype(np.uint8)
    return image.repeat(cell_pixels, axis=0).repeat(cell_pixels, axis=1)


# ---------------------------------------------------------------------------------- checkpointed state

_CONSTANTS = ("channels", "action_map", "random")  # the game's lookup tables, and its generator (below)


def _plain(value: Any) -> Any:
    """JSON-ready copy of a game field: numbers, bools, None, arrays and (nested) lists of them."""
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise TypeError(f"a MinAtar game field of type {type(value).__name__}")


def _generator_state(random: np.random.RandomState) -> dict[str, Any]:
    _, keys, pos, has_gauss, cached_gaussian = random.get_state()
    return {"keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}


def _set_generator_state(random: np.random.RandomState, state: dict[str, Any]) -> None:
    keys = np.asarray(state["keys"], dtype=np.uint32)
    random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def game_state(env: gym.Env) -> dict[str, Any]:
    """Everything of a MinAtar env that changes as it plays: the game's fields, the sticky-action memory
    and both generators (the wrapper's and the game's: one object once the env is seeded)."""
    environment = env.unwrapped.game
    game = environment.env
    return {
        "random": _generator_state(environment.random),
        "game_random": _generator_state(game.random),
        "last_action": int(environment.last_action),
        "game": {name: _plain(value) for name, value in vars(game).items() if name not in _CONSTANTS},
    }


def _kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | float | np.number):
        return "number"
    if isinstance(value, np.ndarray):
        return "array"
    return type(value).__name__


def _restored(current: Any, saved: Any, name: str) -> Any:
    """``saved`` as the field ``name`` holds it, refused unless it is of the kind the game keeps there."""
    if isinstance(current, np.ndarray):
        if not (isinstance(saved, dict) and saved.get("dtype") == str(current.dtype)):
            raise ValueError(f"its MinAtar field {name!r} is not a {current.dtype} array")
        restored = np.asarray(saved["array"], dtype=current.dtype)
        if restored.shape != current.shape:
            raise ValueError(f"its MinAtar field {name!r} has shape {restored.shape}, not {current.shape}")
        return restored
    if _kind(current) != _kind(saved):
        raise ValueError(f"its MinAtar field {name!r} holds a {_kind(saved)}, not a {_kind(current)}")
    return saved


def restore_game_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Put back what ``game_state`` saved; a field this game does not have, or of another kind, is
    refused (ValueError) before anything is changed."""
    environment = env.unwrapped.game
    game = environment.env
    fields = vars(game)
    saved = state["game"]
    if set(saved) != set(fields) - set(_CONSTANTS):
        raise ValueError(f"its MinAtar state has the fields {sorted(saved)}, not this game's")
    restored = {name: _restored(fields[name], value, name) for name, value in saved.items()}
    last_action = state["last_action"]
    if not isinstance(last_action, int) or isinstance(last_action, bool):
        raise ValueError("its MinAtar last action is not an integer")
    _set_generator_state(environment.random, state["random"])
    _set_generator_state(game.random, state["game_random"])
    environment.last_action = last_action
    for name, value in restored.items():
        setattr(game, name, value)
