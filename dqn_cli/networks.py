"""Q-networks: observation in, one Q-value per action out.

A network is described by a small JSON-ready spec, stored beside the weights, so a saved model can be
rebuilt without pickling any Python object.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dqn_cli.errors import UserError


def network_spec(
    obs_shape: tuple[int, ...], n_actions: int, net_arch: list[int], dueling: bool = False
) -> dict[str, Any]:
    return {
        "kind": "mlp",
        "obs_shape": list(obs_shape),
        "n_actions": int(n_actions),
        "net_arch": list(net_arch),
        "dueling": dueling,
    }


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


class MLPQNetwork(nn.Module):
    """Fully connected ReLU network for vector observations (classic control).

    With ``dueling`` (Wang et al. 2016) the last hidden layer feeds a state value V and action advantages
    A, combined as Q = V + A - mean(A) so that V and A are identifiable.

    ``forward`` calls ``F.linear`` on each layer's parameters instead of calling the layer modules: acting
    runs this once per env step on a handful of observations, where module-call overhead is half the cost.
    """

    def __init__(self, obs_dim: int, n_actions: int, net_arch: list[int], dueling: bool = False) -> None:
        super().__init__()
        widths = [obs_dim, *net_arch]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.head = nn.Linear(widths[-1], n_actions)  # Q-values, or advantages when dueling
        self.value = nn.Linear(widths[-1], 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.flatten(1).float()
        for layer in self.hidden:
            x = F.relu(_linear(layer, x))
        q = _linear(self.head, x)
        if self.value is None:
            return q
        return _linear(self.value, x) + q - q.mean(dim=1, keepdim=True)


def build_q_network(spec: dict[str, Any]) -> nn.Module:
    if spec.get("kind") != "mlp":
        raise ValueError(f"unknown network kind {spec.get('kind')!r}")
    return MLPQNetwork(
        math.prod(spec["obs_shape"]), spec["n_actions"], spec["net_arch"], spec.get("dueling", False)
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
