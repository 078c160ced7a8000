"""Checkpoints: everything training needs to continue, in one safetensors file that runs no code on load.

Training hands over its named parts (agent, replay, rollout, random sources, loop counters), each with
``state_dict`` / ``load_state_dict`` (``state.py``). This module flattens them under their names: arrays
become tensors of the file, everything else JSON in its metadata. The file is written to a temporary name
and renamed, so a kill at any instant leaves the previous checkpoint whole.

The header also holds a digest of the arrays and the metadata (``integrity``), checked on load: bytes
changed on disk make the checkpoint refused, in one line that says which of the run's models are intact,
instead of resuming from a silently wrong replay. Checkpoints of the formats before it have none and still
load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqn_cli.errors import UserError
from dqn_cli.integrity import Verdict, describe, other_models, signed, verdict
from dqn_cli.replay import TransitionStorage
from dqn_cli.runfiles import CHECKPOINT_FILE, MODEL_FILES, require_regular_file, write_atomic
from dqn_cli.state import State, Stateful, nest, section

CHECKPOINT_FORMAT = "dqn-checkpoint/3"  # always carries a digest
SECOND_FORMAT = "dqn-checkpoint/2"  # today's layout before digests, still read
FIRST_FORMAT = "dqn-checkpoint/1"  # the previous layout, still read


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
    write_atomic(path, save(arrays, metadata=signed(metadata, arrays)))
    return path


def _header_step(metadata: dict[str, str]) -> int:
    if metadata.get("format") == FIRST_FORMAT:
        return int(json.loads(metadata["state"])["loop"]["step"])
    return int(metadata["step"])


def read_checkpoint_step(run_dir: Path) -> int | None:
    """The step a checkpoint was taken at, from its header alone (cheap: no arrays are read or checked)."""
    from safetensors import safe_open

    try:
        with safe_open(run_dir / CHECKPOINT_FILE, framework="numpy") as handle:
            return _header_step(handle.metadata())
    except Exception:  # missing, partial or foreign: no usable checkpoint
        return None


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """A run's checkpoint; a missing, truncated, foreign or corrupt file is a UserError."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no checkpoint to resume from ({CHECKPOINT_FILE} is missing)")
    require_regular_file(path, "checkpoint")  # safetensors would wait forever on a FIFO
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") not in (CHECKPOINT_FORMAT, SECOND_FORMAT, FIRST_FORMAT):
                raise _damaged(run_dir, f"not a dqn checkpoint (format {CHECKPOINT_FORMAT})")
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        signed_format = metadata["format"] == CHECKPOINT_FORMAT
        if verdict(metadata, arrays, must_be_signed=signed_format) is Verdict.CORRUPT:
            raise _damaged(run_dir, "corrupt (its contents do not match their digest)")
        step, values = _header_step(metadata), json.loads(metadata["state"])
        if not isinstance(values, dict):
            raise ValueError("its state is not a table")
        if metadata["format"] == FIRST_FORMAT:
            return Checkpoint(step, _from_first_format(arrays, values))
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _damaged(run_dir, f"corrupt or truncated ({detail})") from None
    return Checkpoint(step, {**values, **arrays})


def _damaged(run_dir: Path, problem: str) -> UserError:
    """One line: the checkpoint cannot be used, and which of the run's models can (small: checked here)."""
    models = describe(other_models(run_dir, MODEL_FILES))
    message = f"{CHECKPOINT_FILE} in {run_dir} is {problem}, so training cannot resume from it"
    return UserError(f"{message}; {models}" if models else message)


def _from_first_format(arrays: dict[str, np.ndarray], values: dict[str, Any]) -> State:
    """A checkpoint of dqn-checkpoint/1 (before the parts had one state protocol) in today's layout, so
    runs checkpointed by the previous version still resume. Its gradient-step count was not kept: 0."""

    def moved(old_prefix: str, new_prefix: str) -> State:
        return {new_prefix + k[len(old_prefix) :]: v for k, v in arrays.items() if k.startswith(old_prefix)}

    loop = {key: value for key, value in values["loop"].items() if key != "last_train_step"}
    frames = "loop/obs_refs" in arrays
    state: State = {
        **moved("online/", "agent/online/"),
        **moved("target/", "agent/target/"),
        **moved("optimizer/", "agent/optimizer/"),
        "agent/optimizer_groups": values["optimizer_groups"],
        **{f"replay/storage/{name}": arrays[f"replay/{name}"] for name in TransitionStorage.FIELDS},
        "replay/storage/position": values["replay"]["position"],
        "replay/storage/size": values["replay"]["size"],
        **{k.replace("/obs", "/keys"): v for k, v in moved("nstep/", "replay/accumulator/").items()},
        "replay/current": arrays["loop/obs_refs" if frames else "loop/obs"],
        **moved("loop/episode_", "rollout/episode_"),
        "rollout/obs": arrays["loop/obs"],
        "rollout/envs": values["envs"],
        "random/torch": arrays["rng/torch"],
        "random/numpy": values["rng"]["numpy"],
        "random/python": values["rng"]["python"],
        **{f"loop/{key}": value for key, value in loop.items()},
    }
    if "loop/lives" in arrays:
        state["rollout/lives"] = arrays["loop/lives"]
    if frames:
        state |= moved("replay/frames/", "replay/observations/")
        state["replay/observations/count"] = int(arrays["replay/frames/count"][0])
    if "replay/priorities" in arrays:
        state["replay/sampler/priorities"] = arrays["replay/priorities"]
        state["replay/sampler/max_priority"] = float(arrays["replay/max_priority"][0])
    return state


def restore_parts(parts: Mapping[str, Stateful], state: State, origin: Path) -> None:
    """Load each part's section of a checkpoint; one that does not fit this run is a UserError."""
    try:
        for name, part in parts.items():
            part.load_state_dict(section(state, name))
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError, OverflowError) as exc:
        detail: Any = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise UserError(f"checkpoint {origin} does not fit this run: {detail}") from None
