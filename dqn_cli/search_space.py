"""Search spaces for `dqn tune`, declared as TOML data in ``dqn_cli/search_spaces/`` (or any file given
with ``--space``): which hyperparameters Optuna samples and from what range, what every trial shares,
and how eagerly poor trials are pruned. A space file::

    envs = ["CartPole-v1"]      # games it is the default space for; default.toml serves all others

    [fixed]                     # applied over the game's preset in every trial
    n_timesteps = 40_000

    [pruner]                    # Optuna's MedianPruner
    n_startup_trials = 2        # trials that must complete before any is pruned
    n_warmup_steps = 6_000      # env steps a trial always gets

    [params.learning_rate]
    type = "float"              # float or int (low, high, optional log / step), or categorical (choices)
    low = 1e-3
    high = 4e-3
    log = true

    [params.net_arch]
    type = "categorical"
    choices = [[64, 64], [128, 128]]

Every bound, choice and fixed value is checked against the hyperparameter rules when the file is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.runfiles import MAX_SETTINGS_BYTES, parse_untrusted_toml, read_untrusted_text

if TYPE_CHECKING:
    import optuna

DEFAULT_SPACE = "default"
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps")
MAX_STEPS = 1_000_000  # values a stepped range may hold; Optuna's grid arithmetic fails on finer ones
PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class Param:
    """One sampled hyperparameter. Optuna stores categorical choices only as scalars, so a list choice
    (a ``net_arch``) is offered to it as its JSON text."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> tuple[Any, ...]:
        return tuple(json.dumps(c) if isinstance(c, list) else c for c in self.choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        label = trial.suggest_categorical(self.name, self.labels)
        return self.choices[self.labels.index(label)]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, int] = field(default_factory=dict)
    envs: tuple[str, ...] = ()

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        return {param.name: param.suggest(trial) for param in self.params}


def _check_value(origin: str, name: str, value: Any) -> None:
    try:
        apply_overrides(Hyperparameters(), {name: value})
    except UserError as exc:
        raise UserError(f"{origin}: {exc}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_param(origin: str, name: str, spec: Any) -> Param:
    where = f"{origin}: params.{name}"
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in PARAM_KEYS:
        raise UserError(f'{where} needs type = "float", "int" or "categorical"')
    unknown = set(spec) - PARAM_KEYS[kind]
    if unknown:
        raise UserError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(PARAM_KEYS[kind])}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where} needs a non-empty list of choices")
        for choice in choices:
            _check_value(where, name, choice)
        return Param(name, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not all(_finite(v) for v in (low, high)) or low >= high:
        raise UserError(f"{where} needs finite numbers low < high")
    if step is not None and not (_finite(step) and (high - low) / MAX_STEPS <= step <= high - low):
        raise UserError(
            f"{where}: step must be a number > 0, from (high - low) / {MAX_STEPS:,} to high - low"
        )
    if not isinstance(log, bool) or (log and (low <= 0 or step is not None)):
        raise UserError(f"{where}: log = true needs low > 0 and no step")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise UserError(f"{where}: an int parameter needs whole low, high and step")
    if kind == "float" and isinstance(getattr(Hyperparameters(), name, None), int):
        raise UserError(f'{where}: {name} is a whole number; use type = "int"')
    for value in (low, high):
        _check_value(where, name, int(value) if kind == "int" else value)
    return Param(name, kind, float(low), float(high), log, step)


def parse_space(text: str, name: str) -> SearchSpace:
    """Read and check a space file's text; ``name`` says where it came from in error messages."""
    data = parse_untrusted_toml(text, f"search space {name}")
    unknown = set(data) - {"envs", "fixed", "pruner", "params"}
    if unknown:
        raise UserError(f"search space {name} has unknown tables {sorted(unknown)}")
    params, fixed, pruner = (data.get(table, {}) for table in ("params", "fixed", "pruner"))
    if not all(isinstance(table, dict) for table in (params, fixed, pruner)):
        raise UserError(f"search space {name}: params, fixed and pruner must be tables")
    if not params:
        raise UserError(f"search space {name} declares no [params.NAME] to search")
    envs = data.get("envs", [])
    if not isinstance(envs, list) or not all(isinstance(env_id, str) for env_id in envs):
        raise UserError(f'search space {name}: envs must be a list of env ids, e.g. envs = ["CartPole-v1"]')
    for key, value in fixed.items():
        _check_value(f"search space {name}: fixed", key, value)
    overlap = set(fixed) & set(params)
    if overlap:
        raise UserError(f"search space {name}: {sorted(overlap)} are both fixed and searched")
    if set(pruner) - set(PRUNER_KEYS) or not all(isinstance(v, int) and v >= 0 for v in pruner.values()):
        raise UserError(f"search space {name}: [pruner] takes {' and '.join(PRUNER_KEYS)}, integers >= 0")
    return SearchSpace(
        name,
        tuple(_parse_param(name, key, spec) for key, spec in params.items()),
        fixed,
        pruner,
        tuple(envs),
    )


def _shipped() -> dict[str, str]:
    folder = resources.files("dqn_cli") / "search_spaces"
    return {
        p.name.removesuffix(".toml"): p.read_text(encoding="utf-8")
        for p in folder.iterdir()
        if p.name.endswith(".toml")
    }


def shipped_spaces() -> list[SearchSpace]:
    return [parse_space(text, name) for name, text in sorted(_shipped().items())]


def space_for(env_id: str) -> SearchSpace:
    """The shipped space whose ``envs`` names this game, else ``default``."""
    spaces = shipped_spaces()
    for space in spaces:
        if env_id in space.envs:
            return space
    return next(space for space in spaces if space.name == DEFAULT_SPACE)


def load_space(path: Path) -> SearchSpace:
    try:
        text = read_untrusted_text(path, "search space", MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        raise UserError(f"cannot read search space {path}: it does not exist") from None
    return parse_space(text, str(path))
