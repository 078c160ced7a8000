"""RL Zoo's hyperparameter files (``rl_zoo3/hyperparams/dqn.yml``) read as dqn hyperparameters.

RL Zoo keeps one YAML file per algorithm: one entry per env id, plus ``atari`` for Atari ids without an
entry of their own and ``default`` for other ids. ``entry_name`` picks the entry as RL Zoo's
``ExperimentManager.read_hyperparameters`` does. An entry's keys are SB3's DQN arguments and RL Zoo's own
settings; most mean the same here, and ``convert_entry`` converts the rest:

- ``train_freq`` counts vector steps (calls of ``env.step``) in SB3 and env steps here, so it is multiplied
  by the entry's ``n_envs``: SB3's ``train_freq=4`` with ``n_envs=8`` trains once per 32 env steps.
  ``gradient_steps = -1`` (one update per env step collected) means the same in both.
- ``learning_rate: lin_X`` is RL Zoo's linear schedule, X falling to 0 at n_timesteps: here
  ``learning_rate = X``, ``learning_rate_final = 0``, ``learning_rate_fraction = 1``.
- ``policy_kwargs`` is a string of Python that RL Zoo passes to ``eval``. Here it is parsed with ``ast``
  and only ``dict(...)`` (or ``{...}``) of plain values is accepted: reading a file never runs code from it.
  Names such as ``nn.ReLU`` are read as names, never looked up.
- ``policy = "CnnPolicy"``: SB3's NatureCNN ends in a 512-unit layer before the policy's ``net_arch``;
  dqn's Atari network counts that layer in ``net_arch`` (``[512]`` is the Nature DQN).
- ``env_wrapper`` AtariWrapper is the Atari preprocessing dqn gives every ale-py id; its options (30 no-ops,
  4 frames skipped, lost life terminal, rewards clipped, by default) become the hyperparameters that set
  ours, and ``frame_stack`` is dqn's ``frame_stack``. ``env_kwargs`` is dqn's ``env_kwargs``.

An entry is the whole of RL Zoo's setting: SB3 arguments it leaves out take SB3's defaults (which are the
schema's), so nothing of the preset below it leaks in except dqn's own settings (evaluation, early stop,
checkpoints, variants such as ``double_q``), which RL Zoo files do not have. Keys with no equivalent here
are named in ``ZooEntry.ignored``, for one warning line.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dqn_cli.atari import is_atari
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters

ZOO_SUFFIXES = (".yml", ".yaml")
ATARI_ENTRY = "atari"
DEFAULT_ENTRY = "default"

# SB3 DQN arguments (and RL Zoo's n_timesteps, n_envs), all numbers, that mean here what they mean in SB3.
SAME_MEANING = (
    "n_timesteps",
    "n_envs",
    "learning_rate",
    "buffer_size",
    "learning_starts",
    "batch_size",
    "tau",
    "gamma",
    "gradient_steps",
    "target_update_interval",
    "exploration_fraction",
    "exploration_initial_eps",
    "exploration_final_eps",
    "max_grad_norm",
)
# What an entry that leaves them out gets: SB3's defaults, which are the schema's (as are RL Zoo's n_envs 1
# and no env_kwargs).
ENTRY_DEFAULTS = {
    name: value
    for name, value in Hyperparameters().to_dict().items()
    if name in {*SAME_MEANING, "env_kwargs"} - {"n_timesteps"}
}
SB3_TRAIN_FREQ = 4  # vector steps
MLP_DEFAULT_LAYERS = [64, 64]  # SB3's MlpPolicy
NATURE_CNN_FEATURES = 512  # the fully connected layer that ends SB3's NatureCNN
ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"
# AtariWrapper's options that dqn has, with SB3's defaults, and those whose default is what dqn always does.
ATARI_WRAPPER_OPTIONS = {"noop_max": 30, "frame_skip": 4, "terminal_on_life_loss": True, "clip_reward": True}
ATARI_WRAPPER_FIXED = {"screen_size": 84, "action_repeat_probability": 0.0}
RELU = "ReLU"  # activation_fn=nn.ReLU (SB3's default) is the only activation dqn's networks use


@dataclass(frozen=True)
class ZooEntry:
    """The entry read for one env id: its name in the file, the hyperparameters it sets (not yet
    validated: the caller applies them over the preset), and what in it has no equivalent here."""

    name: str
    hyperparameters: dict[str, Any]
    ignored: list[str]


@dataclass(frozen=True)
class PythonName:
    """A dotted name in ``policy_kwargs`` (``nn.ReLU``): kept as text and compared, never looked up."""

    dotted: str


def is_zoo_file(path: Path) -> bool:
    return path.suffix.lower() in ZOO_SUFFIXES


def read_zoo_entry(text: str, env_id: str, origin: str) -> ZooEntry:
    """The entry of an RL Zoo YAML file that RL Zoo would use for ``env_id``, converted; ``origin`` names
    the file in errors."""
    table = _parse_yaml(text, origin)
    name = entry_name(table, env_id, origin)
    entry = table[name]
    if not isinstance(entry, dict):
        raise UserError(f"{origin}: entry {name!r} is not a table of hyperparameters")
    try:
        hyperparameters, ignored = convert_entry(entry, is_atari(env_id))
    except UserError as exc:
        raise UserError(f"{origin}, entry {name!r}: {exc}") from None
    return ZooEntry(name, hyperparameters, ignored)


def entry_name(table: dict[Any, Any], env_id: str, origin: str) -> str:
    """RL Zoo's rule: the env id's own entry, else ``atari`` for an Atari id (never ``default``, whose
    MlpPolicy RL Zoo would not use on frames either), else ``default``."""
    if env_id in table:
        return env_id
    fallback = ATARI_ENTRY if is_atari(env_id) else DEFAULT_ENTRY
    if fallback not in table:
        raise UserError(f"{origin} has no entry for {env_id} and no {fallback!r} entry")
    return fallback


def convert_entry(entry: dict[Any, Any], atari: bool) -> tuple[dict[str, Any], list[str]]:
    """An RL Zoo entry as dqn hyperparameters, and the keys (``policy_kwargs.x`` for one of its
    arguments) that have no equivalent here."""
    settings: dict[str, Any] = dict(ENTRY_DEFAULTS)
    ignored: list[str] = []
    n_envs = _whole_number("n_envs", entry.get("n_envs", 1))
    settings["train_freq"] = SB3_TRAIN_FREQ * n_envs
    layers = None
    for key, value in entry.items():
        if key == "learning_rate" and isinstance(value, str) and value.startswith("lin_"):
            settings.update(_linear_learning_rate(value))
        elif key in SAME_MEANING:
            settings[key] = _number(key, value)
        elif key == "train_freq":
            settings["train_freq"] = _steps_per_training(value) * n_envs
        elif key == "policy":
            if value != ("CnnPolicy" if atari else "MlpPolicy"):
                ignored.append("policy")
        elif key == "policy_kwargs":
            layers, options, unused = _policy_options(value)
            settings.update(options)
            ignored += unused
        elif key == "env_kwargs":
            settings["env_kwargs"] = value
        elif key == "frame_stack" and atari:
            settings["frame_stack"] = value
        elif key == "env_wrapper" and atari:
            options, unused = _atari_wrapper_options(value)
            settings.update(options)
            ignored += unused
        else:
            ignored.append(str(key))
    if atari:
        settings["net_arch"] = [NATURE_CNN_FEATURES, *(layers or [])]
    else:
        settings["net_arch"] = list(MLP_DEFAULT_LAYERS) if layers is None else layers
    return settings, list(dict.fromkeys(ignored))  # each named once, in the file's order


def _parse_yaml(text: str, origin: str) -> dict[Any, Any]:
    """``yaml.safe_load``: plain data only (``!!float`` included), no Python objects; errors in one line."""
    try:
        table = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{origin} is not valid YAML: {exc.problem or exc.context}{where}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        detail = " ".join(str(exc).split()) if isinstance(exc, yaml.YAMLError) else "nested too deeply"
        raise UserError(f"{origin} is not valid YAML: {detail}") from None
    if not isinstance(table, dict):
        raise UserError(f"{origin} is not an RL Zoo hyperparameter file: expected env ids mapped to tables")
    return table


def _number(key: str, value: Any) -> Any:
    """``value`` as written, which the schema checks, except text that YAML did not read as a number."""
    if not isinstance(value, str):
        return value
    try:
        float(value)
    except ValueError:
        return value
    raise UserError(
        f"{key} is the text {value!r}: YAML reads a number with an exponent but no '.' as text; "
        f"write !!float {value}"
    )


def _linear_learning_rate(value: str) -> dict[str, Any]:
    """RL Zoo's ``lin_X``: SB3's linear schedule, X at the start down to 0 at n_timesteps."""
    try:
        start = float(value.removeprefix("lin_"))
    except ValueError:
        start = math.nan
    if not (math.isfinite(start) and start > 0):
        raise UserError(f"invalid value for learning_rate: {value!r} (expected lin_ and a number > 0)")
    return {"learning_rate": start, "learning_rate_final": 0.0, "learning_rate_fraction": 1.0}


def _whole_number(key: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"invalid value for {key}: {value!r} (expected an integer > 0)")
    return value


def _steps_per_training(train_freq: Any) -> int:
    """SB3's ``train_freq``: a number of vector steps, or ``[n, "step"]``; ``[n, "episode"]`` trains at
    episode ends, which dqn's schedule (in env steps) cannot express."""
    if not isinstance(train_freq, list):
        return _whole_number("train_freq", train_freq)
    if len(train_freq) == 2 and train_freq[1] == "step":
        return _whole_number("train_freq", train_freq[0])
    if len(train_freq) == 2 and train_freq[1] == "episode":
        raise UserError(
            f"train_freq {train_freq!r} trains every {train_freq[0]} episodes; dqn trains every "
            "train_freq env steps: give a number of steps"
        )
    raise UserError(f"invalid value for train_freq: {train_freq!r} (expected a number, or [n, 'step'])")


def _policy_options(policy_kwargs: Any) -> tuple[list[Any] | None, dict[str, Any], list[str]]:
    """The ``net_arch`` of ``policy_kwargs`` (None if it has none), the hyperparameters its optimizer
    options set (``optimizer_kwargs`` ``eps`` is ``adam_eps``), and its arguments dqn has no use for, as
    ``policy_kwargs.name``."""
    if isinstance(policy_kwargs, str):
        policy_kwargs = parse_policy_kwargs(policy_kwargs)
    elif not isinstance(policy_kwargs, dict):
        raise UserError(f"invalid value for policy_kwargs: {policy_kwargs!r} (expected 'dict(...)')")
    layers, options, ignored = None, {}, []
    for key, value in policy_kwargs.items():
        if key == "optimizer_kwargs" and isinstance(value, dict):
            for name, setting in value.items():
                if name == "eps":
                    options["adam_eps"] = _number("policy_kwargs optimizer_kwargs eps", setting)
                else:
                    ignored.append(f"policy_kwargs.optimizer_kwargs.{name}")
        elif key == "net_arch":
            if isinstance(value, dict):
                raise UserError(
                    f"policy_kwargs net_arch {value!r} is an actor-critic's; DQN's is one list of layer sizes"
                )
            layers = value
        elif not (key == "activation_fn" and isinstance(value, PythonName) and _last(value) == RELU):
            ignored.append(f"policy_kwargs.{key}")
    return layers, options, ignored


def _atari_wrapper_options(env_wrapper: Any) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters AtariWrapper's options set (its defaults when it lists none); any other
    wrapper, or an option dqn has no equivalent of, is ignored."""
    wrappers = env_wrapper if isinstance(env_wrapper, list) else [env_wrapper]
    options: dict[str, Any] = {}
    ignored: list[str] = []
    for wrapper in wrappers:
        name, kwargs = _wrapper_and_options(wrapper)
        if name != ATARI_WRAPPER or not isinstance(kwargs, dict):
            ignored.append("env_wrapper")
            continue
        options.update(ATARI_WRAPPER_OPTIONS)
        for key, value in kwargs.items():
            if key in ATARI_WRAPPER_OPTIONS:
                options[key] = value
            elif ATARI_WRAPPER_FIXED.get(key) != value:
                ignored.append(f"AtariWrapper.{key}")
    return options, ignored


def _wrapper_and_options(wrapper: Any) -> tuple[Any, Any]:
    """RL Zoo lists a wrapper as its class's dotted name, or as ``{name: {option: value}}``."""
    if isinstance(wrapper, dict) and len(wrapper) == 1:
        name, options = next(iter(wrapper.items()))
        return name, {} if options is None else options
    return wrapper, {}


def parse_policy_kwargs(source: str) -> dict[str, Any]:
    """``policy_kwargs`` text as data, without evaluating it: ``dict(key=value, ...)`` or ``{"key":
    value}``, whose values are numbers, strings, True/False/None, lists, tuples, nested dicts of those, or
    dotted names (``nn.ReLU``, returned as ``PythonName``). Anything else is refused in one line."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
        return _table(tree.body)
    except _Refused as exc:
        reason = str(exc)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        reason = "it is not a Python expression"
    shown = source if len(source) <= 80 else source[:77] + "..."
    raise UserError(
        f"policy_kwargs {' '.join(shown.split())!r} is refused: {reason}; dqn reads it as data and accepts "
        "only dict(...) of numbers, strings, lists and names such as nn.ReLU"
    )


class _Refused(Exception):
    """Something in ``policy_kwargs`` that is not plain data; the message says what."""


_REFUSED_KINDS = {
    ast.Call: "a function call",
    ast.Lambda: "a lambda",
    ast.Attribute: "an attribute of an expression",
    ast.Subscript: "indexing",
    ast.BinOp: "arithmetic",
    ast.NamedExpr: "an assignment",
}


def _table(node: ast.expr) -> dict[str, Any]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(keyword.arg is None for keyword in node.keywords):
            raise _Refused("dict(...) may hold only key=value arguments")
        return {keyword.arg: _value(keyword.value) for keyword in node.keywords if keyword.arg}
    if isinstance(node, ast.Dict):
        keys = [key.value if isinstance(key, ast.Constant) else None for key in node.keys]
        if not all(isinstance(key, str) for key in keys):
            raise _Refused("a dict's keys must be strings")
        return {key: _value(value) for key, value in zip(keys, node.values, strict=True)}
    raise _Refused(f"it holds {_kind(node)} where dict(...) belongs")


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | None):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        number = _value(node.operand)
        if isinstance(number, int | float) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Dict) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return _table(node)
    dotted = _dotted_name(node)
    if dotted is not None:
        if "__" in dotted:
            raise _Refused(f"it names {dotted}")
        return PythonName(dotted)
    raise _Refused(f"it holds {_kind(node)}")


def _dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of plain names; None for anything else (``f().x``, ``"s".join``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _kind(node: ast.expr) -> str:
    return next(
        (what for kind, what in _REFUSED_KINDS.items() if isinstance(node, kind)), type(node).__name__
    )


def _last(name: PythonName) -> str:
    return name.dotted.rpartition(".")[2]
