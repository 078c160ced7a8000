"""The TOML presets shipped with the package, and how a run's hyperparameters are resolved from them.

A value is resolved in layers: built-in defaults, then the env's preset (or the one ``--preset`` names),
then ``--config FILE``, then each ``--set key=value``. Everything is checked before a run folder is
created, so bad input never leaves files behind. Presets know env ids (the Atari fallback), so this sits
above the schema, never below it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from importlib import resources
from itertools import takewhile
from pathlib import Path
from typing import Any

from dqn_cli.atari import is_atari
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, parse_set_option, with_env_kwargs
from dqn_cli.minatar import is_minatar
from dqn_cli.runfiles import (
    MAX_SETTINGS_BYTES,
    RUN_FORMAT,
    check_format,
    parse_untrusted_toml,
    read_untrusted_text,
)
from dqn_cli.zoo import is_zoo_file, read_zoo_entry

DEFAULT_PRESET = "default"
ATARI_PRESET = "atari"
ATARI_CPU_PRESET = "atari-cpu"
MINATAR_PRESET = "minatar"
Warn = Callable[[str], None]
SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z])")  # a full stop before a capital: not "et al. 2015"


def preset_name_for(env_id: str) -> str:
    """Presets are files named after the env id ('/' becomes '-'); other Atari ids use ``atari``, MinAtar
    ids ``minatar`` and the rest ``default``."""
    name = env_id.replace("/", "-")
    if name in available_presets():
        return name
    if is_atari(env_id):
        return ATARI_PRESET
    return MINATAR_PRESET if is_minatar(env_id) else DEFAULT_PRESET


def available_presets() -> list[str]:
    folder = resources.files("dqn_cli") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The preset's file as shipped: a comment saying what it is for, then its key = value pairs."""
    names = available_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"no preset named {name!r}; {hint}available: {', '.join(names)}")
    return (resources.files("dqn_cli") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def load_preset(name: str) -> dict[str, Any]:
    return parse_untrusted_toml(preset_text(name), f"preset {name}")


def preset_description(name: str) -> str:
    """The first sentence of the preset's leading comment, without the ``NAME:`` it may open with (a
    listing shows the name beside it)."""
    lines = takewhile(lambda line: line.startswith("#"), preset_text(name).splitlines())
    comment = " ".join(line.lstrip("# ").strip() for line in lines)
    return SENTENCE_END.split(comment, maxsplit=1)[0].removeprefix(f"{name}: ")


def load_config_file(path: Path, env_id: str) -> tuple[dict[str, Any], list[str]]:
    """Read a ``--config`` file: a flat preset, a run's ``config.toml`` (its [hyperparameters] table, if
    its format is one this version reads), or an RL Zoo ``.yml`` file (its entry for ``env_id``, see
    ``zoo``). Also returns the warnings reading it gives, one line each: what in a Zoo entry has no
    equivalent here."""
    try:
        text = read_untrusted_text(path, "config file", MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        raise UserError(f"cannot read config file {path}: it does not exist") from None
    if is_zoo_file(path):
        entry = read_zoo_entry(text, env_id, f"config file {path}")
        if not entry.ignored:
            return entry.hyperparameters, []
        ignored = ", ".join(entry.ignored)
        return entry.hyperparameters, [
            f"config file {path}, entry {entry.name!r}: no equivalent in dqn, ignored: {ignored}"
        ]
    data = parse_untrusted_toml(text, f"config file {path}")
    if isinstance(data.get("hyperparameters"), dict):
        check_format(data.get("format"), RUN_FORMAT, f"config file {path}")
        return data["hyperparameters"], []
    return data, []


def resolve(
    env_id: str,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    preset: str | None = None,
    warn: Warn | None = None,
    env_kwargs: list[str] | None = None,
) -> tuple[str, Hyperparameters]:
    """The preset's name and the fully validated hyperparameters for a training run: ``preset`` (any
    shipped one, by name) or else the env id's own, then ``config_file``, ``sets`` and, key by key,
    ``env_kwargs`` (``--env-kwargs key=value``). Once they are valid, ``warn`` gets the warnings reading
    ``config_file`` gave, one line each, for the caller to show."""
    preset = preset_name_for(env_id) if preset is None else preset
    hp = apply_overrides(Hyperparameters(), load_preset(preset))
    notes: list[str] = []
    if config_file is not None:
        overrides, notes = load_config_file(config_file, env_id)
        hp = apply_overrides(hp, overrides)
    if sets:
        hp = apply_overrides(hp, dict(parse_set_option(item) for item in sets))
    hp = with_env_kwargs(hp, env_kwargs)
    if warn is not None:
        for note in notes:
            warn(note)
    return preset, hp
