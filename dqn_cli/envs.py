"""Environment construction: id validation, vectorized training/eval envs, render-mode envs."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqn_cli.atari import AtariSettings, is_atari, make_atari_vector_env, register_atari_ids
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.minatar import game_state, is_minatar, register_minatar_ids, restore_game_state
from dqn_cli.observations import one_hot_sizes

Made = TypeVar("Made")
GYM_MAKE_KWARGS = ("max_episode_steps",)  # gym.make's own that an env kwarg may set: the episode limit
MAX_ENVS = 1024  # more, stepped one after another in one process, would only take minutes to make
_WARNED: set[str] = set()  # the warnings env creation has shown in this process


def _registered_ids() -> list[str]:
    return list(gym.registry.keys())


def _importable(spec: gym.envs.registration.EnvSpec) -> bool:
    """Whether the class behind an id imports here: a cheap stand-in for making it, which fails for ids
    whose optional dependency (MuJoCo, jax, shimmy) is missing. Ids made by a function are not trusted:
    gymnasium's are all placeholders that only raise."""
    if not isinstance(spec.entry_point, str):
        return False
    module, _, name = spec.entry_point.partition(":")
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:  # an env module can fail to import in any way; either way it cannot be made here
        return False


def check_env_id(env_id: str) -> None:
    """Fail with one line when ``env_id`` is not a registered gymnasium id, suggesting close matches
    that can be made here (never one that would only fail on a missing dependency)."""
    register_atari_ids()
    register_minatar_ids()
    if env_id in gym.registry:
        return
    near = difflib.get_close_matches(env_id, _registered_ids(), n=10, cutoff=0.6)
    close = [other for other in near if _importable(gym.registry[other])][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown environment id {env_id!r}{hint}")


def _install_hint(module: str) -> str:
    """How to install ``module``: the gymnasium extra that provides it, when one does."""
    wanted = re.sub(r"[-_.]+", "-", module).lower()
    for requirement in importlib.metadata.requires("gymnasium") or []:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r'extra == "([^"]+)"', requirement)
        if name and extra and re.sub(r"[-_.]+", "-", name.group()).lower() == wanted:
            return f'pip install "gymnasium[{extra.group(1)}]"'
    return f"pip install {module}"


def _created(env_id: str, make: Callable[[], Made]) -> Made:
    """``make()``, with the ways an env fails to be created here (a missing optional dependency, an id
    that needs arguments) turned into one line that says what to install when gymnasium knows. The
    warnings made on the way ("out of date" ids) are shown only if it succeeds: an error is one line."""
    try:
        with warnings.catch_warnings(record=True) as said:
            made = make()
        for w in said:
            if str(w.message) not in _WARNED:  # the same env is often made twice (checked, then played)
                _WARNED.add(str(w.message))
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return made
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if not exc.name:
            raise UserError(f"cannot create {env_id}: {_first_line(exc)}") from None
        module = exc.name.partition(".")[0]
        raise UserError(
            f"cannot create {env_id}: it needs the Python module {module!r}, which is not installed; "
            f"{_install_hint(module)}"
        ) from None
    except Exception as exc:  # env constructors raise anything: DependencyNotInstalled, ImportError, ...
        raise UserError(f"cannot create {env_id}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_spaces(env_id: str, action_space: gym.Space, observation_space: gym.Space) -> None:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UserError(
            f"{env_id} has a {type(action_space).__name__} action space; DQN needs a Discrete one "
            "(one Q-value per action)"
        )
    categorical = one_hot_sizes(observation_space) is not None
    if not (categorical or isinstance(observation_space, gym.spaces.Box)):
        raise UserError(
            f"{env_id} has a {type(observation_space).__name__} observation space; dqn supports Box, "
            "Discrete and MultiDiscrete"
        )
    if categorical and np.any(observation_space.start):
        raise UserError(
            f"{env_id}'s {observation_space} observations do not count from 0; dqn one-hot encodes "
            "categories 0 to n - 1"
        )


def make_vector_env(
    env_id: str, n_envs: int, hp: Any = None, max_frames: int | None = None
) -> gym.vector.VectorEnv:
    """Vector env that resets finished episodes in the same step and reports the true final observation.

    Same-step autoreset keeps one transition per env step, as Stable-Baselines3 counts them; the final
    observation (in ``info["final_obs"]``) is what a time-limit truncation must bootstrap from. Every env is
    made with the ``env_kwargs`` of ``hp`` (a run's hyperparameters); Atari ids get ale-py's vector env with
    the preprocessing ``hp`` asks for.
    ``max_frames`` truncates episodes there (emulator frames for Atari, env steps otherwise) where the env's
    own limit is longer: evaluation's bound. Training passes none and keeps the env's episodes as they are.
    """
    check_env_id(env_id)
    if n_envs > MAX_ENVS:
        raise UserError(f"n_envs = {n_envs:,}: at most {MAX_ENVS:,} envs are stepped in one process")
    if is_atari(env_id):
        return _created(
            env_id, lambda: make_atari_vector_env(AtariSettings.for_env(env_id, hp, max_frames), n_envs)
        )
    envs = _created(
        env_id,
        lambda: gym.make_vec(
            env_id,
            num_envs=n_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **_make_kwargs(env_id, hp, max_frames),
        ),
    )
    try:
        _check_spaces(env_id, envs.single_action_space, envs.single_observation_space)
    except UserError:
        envs.close()
        raise
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


def _make_kwargs(env_id: str, hp: Hyperparameters | None, max_steps: int | None) -> dict[str, Any]:
    """``gym.make``'s keyword arguments: the run's ``env_kwargs``, checked, and episodes of at most
    ``max_steps``. That replaces the env's own limit (the spec's, or the ``max_episode_steps`` env kwarg),
    so a shorter own limit is kept; never lengthened."""
    kwargs = dict((hp or Hyperparameters()).env_kwargs)
    check_env_kwargs(env_id, kwargs)
    if max_steps is not None:
        own = kwargs.get("max_episode_steps", gym.registry[env_id].max_episode_steps)
        kwargs["max_episode_steps"] = max_steps if own is None else min(own, max_steps)
    return kwargs


def _constructor_kwargs(env_id: str) -> set[str] | None:
    """The keyword arguments the callable behind ``env_id`` takes, or None where it takes any (``**kwargs``)
    or its signature cannot be read."""
    entry_point = gym.registry[env_id].entry_point
    load = gym.envs.registration.load_env_creator
    creator = load(entry_point) if isinstance(entry_point, str) else entry_point
    try:
        parameters = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: its own error will say
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_env_kwargs(env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """Refuse, naming it and the env, a kwarg the env does not take, before gymnasium's TypeError, which
    names neither; and ``render_mode``, which dqn sets (``rgb_array`` to film, ``human`` to watch)."""
    if "render_mode" in env_kwargs:
        raise UserError("env kwarg render_mode is set by dqn (rgb_array to film, human to watch); drop it")
    steps = env_kwargs.get("max_episode_steps")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise UserError(f"env kwarg max_episode_steps must be an integer >= 1, got {steps!r}")
    accepted = _constructor_kwargs(env_id) if env_kwargs else None
    if accepted is None:
        return
    accepted = (accepted - {"render_mode"}) | set(GYM_MAKE_KWARGS)
    for key in env_kwargs:
        if key not in accepted:
            raise UserError(f"{env_id} takes no env kwarg {key!r}; it takes {', '.join(sorted(accepted))}")


def make_single_env(
    env_id: str,
    render_mode: str | None = None,
    max_steps: int | None = None,
    hp: Hyperparameters | None = None,
) -> gym.Env:
    """One env for watching (``human``) or filming (``rgb_array``) an agent play (not Atari: see atari.py),
    made with ``hp``'s env kwargs, its episodes truncated at ``max_steps`` where the env's own limit is
    longer."""
    check_env_id(env_id)
    env = _created(
        env_id, lambda: gym.make(env_id, render_mode=render_mode, **_make_kwargs(env_id, hp, max_steps))
    )
    try:
        _check_spaces(env_id, env.action_space, env.observation_space)
    except UserError:
        env.close()
        raise
    return env


def env_spaces(env_id: str, hp: Any = None) -> dict[str, Any]:
    """``describe_spaces`` of ``env_id``'s env, made once and closed: proof that it can be made here and
    that DQN can play it, before anything is written."""
    envs = make_vector_env(env_id, 1, hp)
    try:
        return describe_spaces(envs.single_observation_space, envs.single_action_space)
    finally:
        envs.close()


def check_env_fits(env_id: str, meta: dict[str, Any], trained_on: str, hp: Any = None) -> None:
    """Refuse to play a model on an env whose observations or actions differ from those it was trained
    with (``meta``'s network, checked by the caller): another env asked for, or the one an edited
    model.json names."""
    actual = env_spaces(env_id, hp)
    network, observed = meta["network"], actual["observation_space"]
    want = _observations(network["obs_shape"], network.get("one_hot"))
    have = _observations(observed["shape"], observed.get("one_hot"))
    want_n, have_n = network["n_actions"], actual["action_space"]["n"]
    if (want, want_n) != (have, have_n):
        has = f"{env_id} has {have} and {have_n} actions"
        if env_id != trained_on:
            raise UserError(f"the model was trained on {trained_on} ({want}, {want_n} actions); {has}")
        raise UserError(
            f"the model's network takes {want} and {want_n} actions, but {has} "
            "(the env its description names)"
        )


def _observations(shape: Any, one_hot: Any) -> str:
    """Observations in words: their shape, and for categorical ones (one-hot encoded) the category counts,
    which tell FrozenLake's 16 states from FrozenLake8x8's 64 though both are one integer."""
    return f"observations {shape}" if one_hot is None else f"categorical observations {one_hot}"


def describe_spaces(observation_space: gym.Space, action_space: gym.spaces.Discrete) -> dict[str, Any]:
    """JSON-ready description of the spaces, stored with a model so it is never used on the wrong env;
    categorical observations add their category counts (``one_hot``), the size of their encoding."""
    observations: dict[str, Any] = {
        "shape": list(observation_space.shape),
        "dtype": str(observation_space.dtype),
    }
    one_hot = one_hot_sizes(observation_space)
    if one_hot is not None:
        observations["one_hot"] = one_hot
    return {"observation_space": observations, "action_space": {"n": int(action_space.n)}}


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
    """The inverse of ``_encode``. A checkpoint is read from disk: only numpy's bit generators and
    numeric arrays are made, whatever names the file holds."""
    if isinstance(value, dict) and "rng" in value:
        kind = getattr(np.random, str(value["rng"]["bit_generator"]), None)
        if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
            raise ValueError(f"{value['rng']['bit_generator']!r} is not a numpy bit generator")
        generator = np.random.Generator(kind())
        generator.bit_generator.state = value["rng"]
        return generator
    if isinstance(value, dict) and "array" in value:
        if np.dtype(value["dtype"]).kind not in "biuf":
            raise ValueError(f"an env array of dtype {value['dtype']!r}")
        array = np.asarray(value["array"], dtype=value["dtype"])
        return array if array.ndim else array[()]
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(item) for item in value["tuple"])
    return value


def _is_minatar_env(env: gym.Env) -> bool:
    return env.spec is not None and is_minatar(env.spec.id)


def _is_data(value: Any) -> bool:
    """Whether a field is state that ``_decode`` reads back: numbers, numeric arrays, bit generators and
    tuples of them. Not a toy-text map (an array of bytes, constant), nor the env checker's copy of the
    first step's (observation, info), which holds a dict."""
    if isinstance(value, np.ndarray | np.generic):
        return value.dtype.kind in "biuf"
    if isinstance(value, tuple):
        return all(_is_data(item) for item in value)
    return isinstance(value, _SNAPSHOT_TYPES)


def snapshot_envs(envs: gym.vector.VectorEnv) -> list[list[dict[str, Any]]] | None:
    """The mutable state of each classic-control or toy-text sub-env (physics state or grid position, RNG,
    time-limit counters) or MinAtar game, or None for envs whose state cannot be captured as data (Box2D
    worlds, emulators): those restart."""
    sub_envs = getattr(envs, "envs", None)
    if sub_envs and _is_minatar_env(sub_envs[0]):
        return [[{"minatar": game_state(env)}] for env in sub_envs]
    if not sub_envs or not type(sub_envs[0].unwrapped).__module__.startswith(
        ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text")
    ):
        return None
    snapshot = []
    for env in sub_envs:
        layers = []
        for layer in _layers(env):
            fields = {name: _encode(value) for name, value in vars(layer).items() if _is_data(value)}
            layers.append(fields)
        snapshot.append(layers)
    return snapshot


def _kind(value: Any) -> Any:
    numeric = value is None or (isinstance(value, int | float | np.number) and not isinstance(value, bool))
    return "number or None" if numeric else type(value)


def _fits(current: Any, restored: Any) -> bool:
    """Whether a restored field can stand in for the env's own: a value of the same kind, a physics
    state of numbers as long as the env's (MountainCar swaps an array for a tuple as it steps), or None
    for a cache not yet set when the snapshot was taken. A damaged snapshot is so refused when it is
    loaded, not in the middle of the resumed run."""
    if restored is None:
        return current is None or not isinstance(current, int | float | np.number | np.ndarray)
    if isinstance(restored, np.ndarray | tuple):
        numbers = np.asarray(restored).dtype.kind in "biuf"
        return numbers and isinstance(current, np.ndarray | tuple) and len(current) == len(restored)
    return _kind(current) == _kind(restored)


def restore_envs(envs: gym.vector.VectorEnv, snapshot: list[list[dict[str, Any]]]) -> None:
    for env, layers in zip(envs.envs, snapshot, strict=True):
        if _is_minatar_env(env):
            if len(layers) != 1 or set(layers[0]) != {"minatar"}:
                raise ValueError("its env state is not a MinAtar game's")
            restore_game_state(env, layers[0]["minatar"])
            continue
        for layer, fields in zip(_layers(env), layers, strict=True):
            for name, value in fields.items():
                restored = _decode(value)
                if name not in vars(layer) or not _fits(vars(layer)[name], restored):
                    raise ValueError(f"its env state has a field {name!r} that this env does not")
                setattr(layer, name, restored)
