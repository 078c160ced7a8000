"""The one state protocol: every part of training that must survive a restart (agent, replay, rollout,
random sources, loop counters) gives ``state_dict()`` and takes ``load_state_dict(state)``.

A state is a flat dict whose values are numpy arrays or JSON values. Parts made of parts nest theirs
under ``name/`` prefixes with ``nest``; the checkpoint file stores arrays as tensors and the rest as JSON,
so no module spells out another module's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

State = dict[str, Any]


class Stateful(Protocol):
    def state_dict(self) -> State: ...

    def load_state_dict(self, state: State) -> None: ...


def nest(parts: Mapping[str, State]) -> State:
    """One flat state from named sub-states: key ``k`` of part ``name`` becomes ``name/k``."""
    return {f"{name}/{key}": value for name, state in parts.items() for key, value in state.items()}


def section(state: Mapping[str, Any], name: str) -> State:
    """The sub-state ``nest`` stored under ``name``."""
    prefix = f"{name}/"
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


class Stateless:
    """A part with nothing to save (uniform sampling, one-step transitions, copied observations), so
    every part can be checkpointed the same way."""

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: State) -> None:
        pass
