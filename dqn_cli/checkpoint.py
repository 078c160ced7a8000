"""Checkpoints: everything training needs to continue, in one safetensors file that runs no code on load.

Training hands over its named parts (agent, replay, rollout, random sources, loop counters), each with
``state_dict`` / ``load_state_dict`` (``state.py``). This module flattens them under their names: arrays
become tensors of the file, everything else JSON in its metadata. The file is written to a temporary name
and renamed, so a kill at any instant leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqn_cli.errors import UserError
from dqn_cli.runfiles import write_atomic
from dqn_cli.state import State, Stateful, nest, section

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "dqn-checkpoint/2"


@dataclass
class Checkpoint:
    step: int  # env steps trained when it was taken
    state: State  # the parts' states, each under its name (``state.section``)


def save_checkpoint(run_dir: Path, parts: Mapping[str, Stateful], step: int) -> Path:
    """``step`` also goes into the header by itself, so a run's progress is read without its arrays."""
    from safetensors.numpy import save

    state = nest({name: part.state_dict() for name, part in parts.items()})
    arrays = {
        key: np.ascontiguousarray(value) for key, value in state.items() if isinstance(value, np.ndarray)
    }
    values = {key: value for key, value in state.items() if not isinstance(value, np.ndarray)}
    path = run_dir / CHECKPOINT_FILE
    metadata = {"format": CHECKPOINT_FORMAT, "step": str(step), "state": json.dumps(values)}
    write_atomic(path, save(arrays, metadata=metadata))
    return path


def read_checkpoint_step(run_dir: Path) -> int | None:
    """The step a checkpoint was taken at, from its header alone (cheap: no arrays are read)."""
    from safetensors import safe_open

    try:
        with safe_open(run_dir / CHECKPOINT_FILE, framework="numpy") as handle:
            return int(handle.metadata()["step"])
    except Exception:  # missing, partial or foreign: no usable checkpoint
        return None


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """A run's checkpoint; a missing, truncated or foreign file is a UserError."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no checkpoint to resume from ({CHECKPOINT_FILE} is missing)")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise UserError(
                    f"{path} is not a dqn checkpoint of this version (format {CHECKPOINT_FORMAT})"
                )
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        step, values = int(metadata["step"]), json.loads(metadata["state"])
        if not isinstance(values, dict):
            raise ValueError("its state is not a table")
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {str(exc).splitlines()[0]}") from None
    return Checkpoint(step, {**values, **arrays})


def restore_parts(parts: Mapping[str, Stateful], state: State, origin: Path) -> None:
    """Load each part's section of a checkpoint; one that does not fit this run is a UserError."""
    try:
        for name, part in parts.items():
            part.load_state_dict(section(state, name))
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
        detail: Any = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise UserError(f"checkpoint {origin} does not fit this run: {detail}") from None
