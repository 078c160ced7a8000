"""Atari games through ale-py's own vector environment, which does the DQN paper's preprocessing in C++
threads: no-op starts, frame skip with max-pooling, 84x84 grayscale, frame stacking, FIRE on reset.

Training, evaluation and recording all build their envs here from the same settings, so the network
always sees the observations it was trained on. Two learning-only signals are not the env's business
and live in the training loop instead: reward clipping and life loss as terminal. The env reports raw
scores and whole games, which is what evaluation and metrics need.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters

ALE_ENTRY_POINT = "ale_py.env:AtariEnv"
NATIVE_SCREEN = (210, 160)  # every Atari 2600 game's screen, height x width
FRAMES_PER_SECOND = 60  # the console's frame rate
# What ale-py's vector env takes that is the game's, not the DQN pipeline's: the env kwargs an Atari run may
# set, each with the type it must have.
ATARI_ENV_KWARGS: dict[str, type] = {"full_action_space": bool, "max_num_frames_per_episode": int}
# The vector env's (and AtariEnv's) arguments that dqn sets from a hyperparameter.
SET_BY_HYPERPARAMETER = {
    "frameskip": "frame_skip",
    "repeat_action_probability": "repeat_action_probability",
    "noop_max": "noop_max",
    "stack_num": "frame_stack",
    "reward_clipping": "clip_reward",
    "episodic_life": "terminal_on_life_loss",
}


def register_atari_ids() -> None:
    """Make ``ALE/Pong-v5``, ``PongNoFrameskip-v4`` and the rest known to gymnasium's registry."""
    import ale_py

    gym.register_envs(ale_py)


def is_atari(env_id: str) -> bool:
    register_atari_ids()
    spec = gym.registry.get(env_id)
    return spec is not None and spec.entry_point == ALE_ENTRY_POINT


@dataclass(frozen=True)
class AtariSettings:
    """What the emulator and its preprocessing need; the env id supplies the game and its defaults
    (sticky actions, action set, episode cap), the hyperparameters the DQN paper's choices."""

    game: str
    frame_stack: int
    frame_skip: int
    noop_max: int
    repeat_action_probability: float
    full_action_space: bool
    max_frames_per_episode: int

    @classmethod
    def for_env(
        cls, env_id: str, hp: Hyperparameters | None = None, max_frames: int | None = None
    ) -> AtariSettings:
        """``hp``: a run's hyperparameters; without one, the defaults (the DQN paper's pipeline).
        ``max_frames`` ends episodes sooner than the id's own cap (evaluation's ``eval_max_frames``). The
        env kwargs ``hp`` holds replace the id's own settings of the same name (``ATARI_ENV_KWARGS``)."""
        hp = hp or Hyperparameters()
        spec_kwargs = gym.registry[env_id].kwargs | _checked_env_kwargs(env_id, hp.env_kwargs)
        sticky = hp.repeat_action_probability
        own_cap = spec_kwargs.get("max_num_frames_per_episode", 108_000)
        return cls(
            game=spec_kwargs["game"],
            frame_stack=hp.frame_stack,
            frame_skip=hp.frame_skip,
            noop_max=hp.noop_max,
            repeat_action_probability=(
                spec_kwargs.get("repeat_action_probability", 0.25) if sticky < 0 else sticky
            ),
            full_action_space=spec_kwargs.get("full_action_space", False),
            max_frames_per_episode=own_cap if max_frames is None else min(own_cap, max_frames),
        )

    @property
    def video_fps(self) -> int:
        return max(1, round(FRAMES_PER_SECOND / self.frame_skip))


def _checked_env_kwargs(env_id: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The env kwargs an Atari run can have: ale-py's vector env, which makes every Atari env here, takes
    only ``ATARI_ENV_KWARGS`` of the game's settings (not AtariEnv's ``mode`` or ``difficulty``), and those
    of the DQN pipeline are hyperparameters. Anything else is one line, naming what to do instead."""
    for key, value in env_kwargs.items():
        if key in SET_BY_HYPERPARAMETER:
            raise UserError(
                f"env kwarg {key!r} of {env_id} is the hyperparameter {SET_BY_HYPERPARAMETER[key]} here; "
                f"set it with --set {SET_BY_HYPERPARAMETER[key]}=..."
            )
        if key not in ATARI_ENV_KWARGS:
            raise UserError(
                f"{env_id} takes no env kwarg {key!r} here: dqn plays Atari through ale-py's vector env, "
                f"which takes {', '.join(ATARI_ENV_KWARGS)}"
            )
        wanted = ATARI_ENV_KWARGS[key]
        if type(value) is not wanted or (wanted is int and value < 1):
            kind = "true or false" if wanted is bool else "an integer >= 1"
            raise UserError(f"env kwarg {key} of {env_id} must be {kind}, got {value!r}")
    return dict(env_kwargs)


def make_atari_vector_env(settings: AtariSettings, n_envs: int, colour: bool = False) -> gym.vector.VectorEnv:
    """``n_envs`` emulators resetting finished games in the same step (the final observation is in
    ``info["final_obs"]``), rewards unclipped, a lost life not an episode end.

    ``colour`` gives the same emulation (same seed, same actions, same no-ops and sticky actions) seen as
    full-colour native-resolution screens, one per step: what a video of the agent shows.
    """
    from ale_py.vector_env import AtariVectorEnv

    image = (
        {"img_height": NATIVE_SCREEN[0], "img_width": NATIVE_SCREEN[1], "grayscale": False}
        | {"stack_num": 1, "maxpool": False}
        if colour
        else {"stack_num": settings.frame_stack}
    )
    return AtariVectorEnv(
        settings.game,
        n_envs,
        num_threads=min(n_envs, os.cpu_count() or 1),
        autoreset_mode=AutoresetMode.SAME_STEP,
        frameskip=settings.frame_skip,
        noop_max=settings.noop_max,
        repeat_action_probability=settings.repeat_action_probability,
        full_action_space=settings.full_action_space,
        max_num_frames_per_episode=settings.max_frames_per_episode,
        reward_clipping=False,
        episodic_life=False,
        use_fire_reset=True,
        **image,
    )


class FilmedAtariEnv:
    """One Atari game for ``dqn record``: the agent gets the training pipeline's stacked observations,
    the camera a twin emulator fed the same seed and actions, seen in colour at native resolution."""

    def __init__(self, settings: AtariSettings) -> None:
        self.agent_view = make_atari_vector_env(settings, 1)
        self.camera = make_atari_vector_env(settings, 1, colour=True)
        self.fps = settings.video_fps

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(observation batch of one, colour frame)."""
        obs, _ = self.agent_view.reset(seed=seed)
        screen, _ = self.camera.reset(seed=seed)
        return obs, screen[0, 0]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, float, bool, np.ndarray]:
        """(next observation batch, raw reward, episode over, colour frame the step ended on)."""
        obs, reward, terminated, truncated, _ = self.agent_view.step(actions)
        screen, _, _, _, info = self.camera.step(actions)
        done = bool(terminated[0] or truncated[0])
        frame = info["final_obs"][0, 0] if done else screen[0, 0]
        return obs, float(reward[0]), done, frame

    def close(self) -> None:
        self.agent_view.close()
        self.camera.close()
