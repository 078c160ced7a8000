"""Checkpoints: everything training needs to continue, in one safetensors file that runs no code on load.

Arrays (weights, optimizer moments, replay contents, RNG bytes, current observations) are tensors of the
file; everything else (counters, RNG states as integers, env snapshots) is JSON in its metadata. The file
is written to a temporary name and renamed, so a kill at any instant leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dqn_cli.errors import UserError
from dqn_cli.runfiles import write_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "dqn-checkpoint/1"


def save_checkpoint(run_dir: Path, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
    from safetensors.numpy import save

    path = run_dir / CHECKPOINT_FILE
    metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state)}
    write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata))
    return path


def read_checkpoint_step(run_dir: Path) -> int | None:
    """The step a checkpoint was taken at, from its header alone (cheap: no arrays are read)."""
    from safetensors import safe_open

    try:
        with safe_open(run_dir / CHECKPOINT_FILE, framework="numpy") as handle:
            return int(json.loads(handle.metadata()["state"])["loop"]["step"])
    except Exception:  # missing, partial or foreign: no usable checkpoint
        return None


def load_checkpoint(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and state of a run's checkpoint; a missing, truncated or foreign file is a UserError."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no checkpoint to resume from ({CHECKPOINT_FILE} is missing)")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise UserError(f"{path} is not a dqn checkpoint (format {CHECKPOINT_FORMAT})")
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        state = json.loads(metadata["state"])
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {str(exc).splitlines()[0]}") from None
    return arrays, state
