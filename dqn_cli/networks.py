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
from dqn_cli.observations import is_frame_stack


def network_spec(
    obs_shape: tuple[int, ...],
    n_actions: int,
    net_arch: list[int],
    dueling: bool = False,
    precision: str = "float32",
    *,
    obs_dtype: str,
    encoder: str = "nature",
) -> dict[str, Any]:
    """Stacked frames get a CNN with the ``encoder`` named (see ``ENCODERS``), anything else the MLP.
    ``precision`` is the convolutions' arithmetic (see ``resolve_precision``); MLPs ignore it."""
    frames = is_frame_stack(obs_shape, obs_dtype)
    spec = {
        "kind": f"{encoder}_cnn" if frames else "mlp",
        "obs_shape": list(obs_shape),
        "n_actions": int(n_actions),
        "net_arch": list(net_arch),
        "dueling": dueling,
    }
    if frames:
        spec["precision"] = precision
    return spec


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bfloat16 where the hardware computes it natively, else float32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


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


# (out_channels, kernel, stride) of each convolution, ReLU after each.
ENCODERS = {
    # Mnih et al. 2015: 9.4M multiply-adds per 84x84x4 stack, 3,136 features
    "nature": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
    # data-efficient Rainbow (van Hasselt et al. 2019): 1.3M multiply-adds, 576 features
    "der": ((32, 5, 5), (64, 5, 5)),
}


class FrameCNN(nn.Module):
    """Convolutions over stacked frames (``ENCODERS``), then the fully connected layers of ``net_arch``
    (the Nature DQN's [512]) and the Q-value head, dueling or not, as in ``MLPQNetwork``.

    Frames arrive as uint8 and are scaled to [0, 1] here, so replay, batches and transfers to the GPU stay
    four times smaller. With bfloat16 precision the convolutions, most of the cost, run under autocast;
    the weights and the fully connected layers stay float32, so Q-values keep their resolution.
    """

    def __init__(
        self,
        obs_shape: list[int],
        n_actions: int,
        net_arch: list[int],
        dueling: bool,
        precision: str,
        encoder: str = "nature",
    ) -> None:
        super().__init__()
        channels, height, width = obs_shape
        layers: list[nn.Module] = []
        in_channels = channels
        for out_channels, kernel, stride in ENCODERS[encoder]:
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=kernel, stride=stride), nn.ReLU()]
            in_channels = out_channels
        self.convolutions = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            n_features = self.convolutions(torch.zeros(1, channels, height, width)).shape[1]
        self.head = MLPQNetwork(n_features, n_actions, net_arch, dueling)
        self.autocast_dtype = torch.bfloat16 if precision == "bfloat16" else None  # None: float32

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(torch.float32, copy=True).div_(255.0)  # in place on a copy: one allocation fewer
        with torch.autocast(x.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            x = self.convolutions(x)
        return self.head(x.float())


def build_q_network(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    if kind == "mlp":
        return MLPQNetwork(
            math.prod(spec["obs_shape"]), spec["n_actions"], spec["net_arch"], spec.get("dueling", False)
        )
    if isinstance(kind, str) and kind.removesuffix("_cnn") in ENCODERS:
        return FrameCNN(
            spec["obs_shape"],
            spec["n_actions"],
            spec["net_arch"],
            spec["dueling"],
            spec["precision"],
            kind.removesuffix("_cnn"),
        )
    raise ValueError(f"unknown network kind {kind!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
