"""Environment construction: id validation, vectorized training/eval envs, render-mode envs."""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqn_cli.atari import AtariSettings, is_atari, make_atari_vector_env, register_atari_ids
from dqn_cli.errors import UserError


def _registered_ids() -> list[str]:
    return list(gym.registry.keys())


def check_env_id(env_id: str) -> None:
    """Fail with one line (and close matches) when ``env_id`` is not a registered gymnasium id."""
    register_atari_ids()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, _registered_ids(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown environment id {env_id!r}{hint}")


def _check_spaces(env_id: str, action_space: gym.Space, observation_space: gym.Space) -> None:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UserError(
            f"{env_id} has a {type(action_space).__name__} action space; DQN needs a Discrete one "
            "(one Q-value per action)"
        )
    if not isinstance(observation_space, gym.spaces.Box):
        raise UserError(
            f"{env_id} has a {type(observation_space).__name__} observation space; dqn supports Box"
        )


def make_vector_env(env_id: str, n_envs: int, hp: Any = None) -> gym.vector.VectorEnv:
    """Vector env that resets finished episodes in the same step and reports the true final observation.

    Same-step autoreset keeps one transition per env step, as Stable-Baselines3 counts them; the final
    observation (in ``info["final_obs"]``) is what a time-limit truncation must bootstrap from. Atari ids
    get ale-py's vector env with the preprocessing that ``hp`` (a run's hyperparameters) asks for.
    """
    check_env_id(env_id)
    if is_atari(env_id):
        return make_atari_vector_env(AtariSettings.for_env(env_id, hp), n_envs)
    envs = gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    _check_spaces(env_id, envs.single_action_space, envs.single_observation_space)
    return envs


def final_observations(next_obs: np.ndarray, infos: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """The observation each env reached: ``next_obs``, or the pre-reset one where an episode ended."""
    if not done.any():
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(done):
        real[i] = infos["final_obs"][i]
    return real


def display_available() -> bool:
    return sys.platform in ("win32", "darwin") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def make_single_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """One env for watching (``human``) or filming (``rgb_array``) an agent play (not Atari: see atari.py)."""
    check_env_id(env_id)
    if render_mode == "human" and not display_available():
        raise UserError("--render needs a display, and none is available (DISPLAY is not set)")
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as exc:
        raise UserError(f"cannot create {env_id}: {str(exc).splitlines()[0]}") from None
    _check_spaces(env_id, env.action_space, env.observation_space)
    return env


def check_env_fits(env_id: str, meta: dict[str, Any], trained_on: str, hp: Any = None) -> None:
    """Refuse to play a model on an env whose observations or actions differ from its training env's."""
    envs = make_vector_env(env_id, 1, hp)
    try:
        actual = describe_spaces(envs.single_observation_space, envs.single_action_space)
    finally:
        envs.close()
    want_shape, want_n = meta["observation_space"]["shape"], meta["action_space"]["n"]
    have_shape, have_n = actual["observation_space"]["shape"], actual["action_space"]["n"]
    if (want_shape, want_n) != (have_shape, have_n):
        raise UserError(
            f"the model was trained on {trained_on} (observations {want_shape}, {want_n} actions); "
            f"{env_id} has observations {have_shape} and {have_n} actions"
        )


def describe_spaces(observation_space: gym.spaces.Box, action_space: gym.spaces.Discrete) -> dict[str, Any]:
    """JSON-ready description of the spaces, stored with a model so it is never used on the wrong env."""
    return {
        "observation_space": {"shape": list(observation_space.shape), "dtype": str(observation_space.dtype)},
        "action_space": {"n": int(action_space.n)},
    }


# ------------------------------------------------------------------------------- exact-resume snapshots

_SNAPSHOT_TYPES = (bool, int, float, str, type(None), tuple, np.ndarray, np.generic, np.random.Generator)


def _layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _encode(value: Any) -> Any:
    if isinstance(value, np.random.Generator):
        return {"rng": value.bit_generator.state}
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return {"array": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):  # MountainCar keeps its state as a tuple of numpy floats
        return {"tuple": [_encode(item) for item in value]}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "rng" in value:
        generator = np.random.Generator(getattr(np.random, value["rng"]["bit_generator"])())
        generator.bit_generator.state = value["rng"]
        return generator
    if isinstance(value, dict) and "array" in value:
        array = np.asarray(value["array"], dtype=value["dtype"])
        return array if array.ndim else array[()]
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(item) for item in value["tuple"])
    return value


def snapshot_envs(envs: gym.vector.VectorEnv) -> list[list[dict[str, Any]]] | None:
    """The mutable state of each classic-control sub-env (physics state, RNG, time-limit counters), or
    None for envs whose state cannot be captured as data (Box2D worlds, emulators): those restart."""
    sub_envs = getattr(envs, "envs", None)
    if not sub_envs or not type(sub_envs[0].unwrapped).__module__.startswith(
        "gymnasium.envs.classic_control"
    ):
        return None
    snapshot = []
    for env in sub_envs:
        layers = []
        for layer in _layers(env):
            fields = {
                name: _encode(value)
                for name, value in vars(layer).items()
                if isinstance(value, _SNAPSHOT_TYPES)
            }
            layers.append(fields)
        snapshot.append(layers)
    return snapshot


def restore_envs(envs: gym.vector.VectorEnv, snapshot: list[list[dict[str, Any]]]) -> None:
    for env, layers in zip(envs.envs, snapshot, strict=True):
        for layer, fields in zip(_layers(env), layers, strict=True):
            for name, value in fields.items():
                setattr(layer, name, _decode(value))
