"""Third-party environment packages: modules that register gymnasium ids when imported (RL Zoo's
``--gym-packages``), and gymnasium's ``module:EnvId-v0`` ids, which name such a module before the id.

Importing a module runs its code, so a module is imported only when the user names it on the command line.
A ``module:EnvId-v0`` id is split here into the id and its module, so the rest of dqn (presets, run
folders, env construction) sees plain registered ids, and gymnasium is never handed an id that would make
it import something itself. A run records the modules its env needs (``gym_packages`` in config.toml and
model.json, beside ``env_id``); `dqn eval`, `dqn record` and `dqn train --resume` of it import them only
when they are named again with ``--gym-packages``, since a run folder may come from anyone and its files
are data, never code.

They are not hyperparameters: they do not shape learning, and a preset, a ``--config`` file or a search
space, which are hyperparameter files, must not be able to make dqn import a module.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dqn_cli.errors import UserError

OPTION = "--gym-packages"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
MAX_PACKAGES = 64  # more, in a saved file, is damage rather than a run's needs


@dataclass(frozen=True)
class EnvSource:
    """A registered gymnasium id and the modules to import, in order, so that it is registered."""

    env_id: str
    packages: tuple[str, ...]


def check_module_name(name: Any, origin: str = OPTION) -> str:
    """``name`` if it is an absolute module name (``mygym``, ``my_pkg.envs``), else a one-line UserError."""
    if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
        raise UserError(f"{origin} takes a module name such as 'mygym' or 'my_pkg.envs', got {name!r}")
    return name


def env_source(env_id: str, gym_packages: Sequence[str] = ()) -> EnvSource:
    """``env_id`` without the ``module:`` it may start with, and the modules to import for it: the
    ``gym_packages`` given, then that module, each once."""
    module, colon, name = env_id.rpartition(":")
    if colon:
        if not name:
            raise UserError(f"environment id {env_id!r} names a module but no id; e.g. mygym:MyEnv-v0")
        check_module_name(module, f"the module in environment id {env_id!r}")
    named = [check_module_name(package) for package in gym_packages]
    return EnvSource(name, tuple(dict.fromkeys([*named, *([module] if colon else [])])))


def saved_packages(value: Any, origin: str) -> tuple[str, ...]:
    """The ``gym_packages`` a run saved (absent in runs from before them: none), checked: a list of
    module names."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_PACKAGES:
        raise UserError(f"gym_packages in {origin} must be a list of module names, got {value!r}")
    return tuple(check_module_name(name, f"gym_packages in {origin}") for name in value)


def naming_options(packages: Iterable[str]) -> str:
    """The options that name ``packages`` again (`` --gym-packages a --gym-packages b``), for the commands
    dqn suggests: eval, record and --resume of a run need them."""
    return "".join(f" {OPTION} {package}" for package in packages)


def require_named(needed: Iterable[str], named: Sequence[str]) -> None:
    """Refuse in one line to play a saved run whose env comes from modules the user has not named on this
    command line: the run folder, not the user, would be choosing code to run."""
    missing = [package for package in needed if package not in named]
    if not missing:
        return
    quoted = ", ".join(repr(package) for package in missing)
    them, their = ("them", "their") if len(missing) > 1 else ("it", "its")
    noun = "packages" if len(missing) > 1 else "package"
    raise UserError(
        f"this run's env comes from {noun} {quoted}; pass{naming_options(missing)} to import {them} "
        f"(importing runs {their} code)"
    )


def import_packages(packages: Iterable[str]) -> None:
    """Import each module so that the ids it registers can be made; whatever goes wrong is one line."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (package == exc.name or package.startswith(f"{exc.name}.")):
                raise UserError(
                    f"no module named {package!r}; {OPTION} imports an installed module that registers "
                    "gymnasium envs (pip install it, or put its folder on PYTHONPATH)"
                ) from None
            raise UserError(
                f"importing {package!r} ({OPTION}) failed: it needs the module {exc.name!r}, which is not "
                "installed"
            ) from None
        except (Exception, SystemExit) as exc:  # a module's own code can raise anything, or exit
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"importing {package!r} ({OPTION}) failed: {type(exc).__name__}"
                + (f": {detail}" if detail else "")
            ) from None
