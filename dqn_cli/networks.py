"""Q-networks: observation in, one Q-value per action out.

A network is described by a small JSON-ready spec, stored beside the weights, so a saved model can be
rebuilt without pickling any Python object.
"""

from __future__ import annotations

import math
from itertools import accumulate, pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dqn_cli.errors import UserError
from dqn_cli.observations import is_frame_stack, is_object_grid


def network_spec(
    obs_shape: tuple[int, ...],
    n_actions: int,
    net_arch: list[int],
    dueling: bool = False,
    precision: str = "float32",
    *,
    obs_dtype: str,
    encoder: str = "nature",
    one_hot: list[int] | None = None,
) -> dict[str, Any]:
    """Stacked frames get a CNN with the ``encoder`` named (see ``ENCODERS``), MinAtar's object grids
    ``MinAtarCNN``, categorical observations (``one_hot``: their category counts, see ``one_hot_sizes``)
    ``OneHotMLP``, anything else the MLP. ``precision`` is the frame convolutions' arithmetic (see
    ``resolve_precision``); the others ignore it."""
    frames = is_frame_stack(obs_shape, obs_dtype)
    kind = "minatar_cnn" if is_object_grid(obs_shape, obs_dtype) else "mlp"
    if one_hot is not None:
        kind = "one_hot_mlp"
    spec = {
        "kind": f"{encoder}_cnn" if frames else kind,
        "obs_shape": list(obs_shape),
        "n_actions": int(n_actions),
        "net_arch": list(net_arch),
        "dueling": dueling,
    }
    if frames:
        _check_frames_fit(obs_shape, encoder)
        spec["precision"] = precision
    if one_hot is not None:
        spec["one_hot"] = list(one_hot)
    return spec


def _check_frames_fit(obs_shape: tuple[int, ...], encoder: str) -> None:
    """Refuse in one line uint8 images the encoder's convolutions cannot take, read as (stack, height,
    width): colour images, channels last (CarRacing's 96x96x3), would otherwise fail deep in torch."""
    smallest = 1  # the least height and width that leave one pixel after every convolution
    for _, kernel, stride in reversed(ENCODERS[encoder]):
        smallest = (smallest - 1) * stride + kernel
    stack, height, width = obs_shape
    if min(height, width) < smallest:
        raise UserError(
            f"observations of shape {tuple(obs_shape)} (uint8) would be a stack of {stack} frames of "
            f"{height}x{width} pixels, and the {encoder} encoder needs frames of at least "
            f"{smallest}x{smallest}; dqn's CNN takes frame stacks (stack, height, width) such as Atari's: "
            "images with colour last (height, width, colour) are not supported"
        )


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

    ``forward`` calls ``F.linear`` on each layer's parameters instead of calling the layer modules, where
    module-call overhead is half the cost of a small batch; ``numpy_q_values`` is the same network in
    numpy, for acting on CPU.
    """

    def __init__(self, obs_dim: int, n_actions: int, net_arch: list[int], dueling: bool = False) -> None:
        super().__init__()
        widths = [obs_dim, *net_arch]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.head = nn.Linear(widths[-1], n_actions)  # Q-values, or advantages when dueling
        self.value = nn.Linear(widths[-1], 1) if dueling else None
        self._views: tuple[int, list[tuple[np.ndarray, np.ndarray] | None]] = (0, [])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.flatten(1).float()
        for layer in self.hidden:
            x = F.relu(_linear(layer, x))
        q = _linear(self.head, x)
        if self.value is None:
            return q
        return _linear(self.value, x) + q - q.mean(dim=1, keepdim=True)

    def numpy_q_values(self, obs: np.ndarray) -> np.ndarray:
        """``forward`` in numpy (float32) on views of the weights, which must be on the CPU: acting runs the
        network on one observation per env step, where torch's per-operation overhead is most of the
        cost. The same layers in the same order; only the products' rounding may differ, in the last bits.
        Overflow gives inf or NaN silently, as torch does: a diverged run is then reported in one line by
        training's own check, not by numpy's RuntimeWarning on stderr."""
        *hidden, head, value = self._numpy_weights()
        x = self._numpy_inputs(obs)
        with np.errstate(over="ignore", invalid="ignore"):
            for weight, bias in hidden:
                x = np.maximum(x @ weight.T + bias, 0.0)
            q = x @ head[0].T + head[1]
            if value is None:
                return q
            return x @ value[0].T + value[1] + q - q.mean(axis=1, keepdims=True)

    def _numpy_inputs(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(len(obs), -1).astype(np.float32, copy=False)

    def _numpy_weights(self) -> list:
        """(weight, bias) of each hidden layer, the head and the value layer (None unless dueling) as numpy
        views: they share the parameters' memory, so every in-place update (Adam's, a load) shows. Remade
        when the head's memory moved: the parameters move together (``to``, a copy of the module), and
        checking one costs a fraction of a microsecond, all of them a dozen."""
        where = self.head.weight.data_ptr()
        if self._views[0] != where:
            layers = [*self.hidden, self.head, self.value]
            views = [
                None if layer is None else (layer.weight.detach().numpy(), layer.bias.detach().numpy())
                for layer in layers
            ]
            self._views = (where, views)
        return self._views[1]


class OneHotMLP(MLPQNetwork):
    """``MLPQNetwork`` over categorical observations (Discrete, MultiDiscrete), each entry one-hot encoded
    and the encodings concatenated, as Stable-Baselines3's ``preprocess_obs`` does: FrozenLake's state 5 of
    16 is the input 0,0,0,0,0,1,0,...,0. The integers arrive as replay keeps them; the encoding is made here,
    on the network's device, and holds no weights (its offsets are not saved)."""

    def __init__(self, sizes: list[int], n_actions: int, net_arch: list[int], dueling: bool = False) -> None:
        super().__init__(sum(sizes), n_actions, net_arch, dueling)
        self.width = sum(sizes)
        offsets = torch.tensor([0, *accumulate(sizes)][:-1])  # where each entry's one-hot starts
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        hot = obs.reshape(len(obs), -1).long() + self.offsets
        encoded = torch.zeros(len(obs), self.width, device=obs.device).scatter_(1, hot, 1.0)
        return super().forward(encoded)

    def _numpy_inputs(self, obs: np.ndarray) -> np.ndarray:
        hot = obs.reshape(len(obs), -1).astype(np.int64) + self.offsets.numpy()
        encoded = np.zeros((len(obs), self.width), dtype=np.float32)
        np.put_along_axis(encoded, hot, 1.0, axis=1)
        return encoded


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
        # Straight to the convolutions' dtype, in place on a copy: no float32 stack for autocast to cast
        # again. Same values: a bfloat16 division rounds the float32 quotient once.
        x = obs.to(self.autocast_dtype or torch.float32, copy=True).div_(255.0)
        with torch.autocast(x.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            x = self.convolutions(x)
        return self.head(x.float())


MINATAR_CONV_CHANNELS = 16  # the MinAtar paper's


class MinAtarCNN(nn.Module):
    """The network of the MinAtar paper (Young & Tian 2019): one 3x3 stride-1 convolution of 16 channels
    and ReLU over the grid, then the fully connected layers of ``net_arch`` (the paper's [128]) and the
    Q-value head, dueling or not, as in ``MLPQNetwork``. About 0.2M multiply-adds per observation.

    Observations arrive as bool, channels last, as the env gives them and replay keeps them (a byte a
    cell, not four); they become channels-first floats here. Float32 throughout: at this size bfloat16
    would save nothing."""

    def __init__(self, obs_shape: list[int], n_actions: int, net_arch: list[int], dueling: bool) -> None:
        super().__init__()
        height, width, channels = obs_shape
        self.convolution = nn.Conv2d(channels, MINATAR_CONV_CHANNELS, kernel_size=3, stride=1)
        n_features = MINATAR_CONV_CHANNELS * (height - 2) * (width - 2)
        self.head = MLPQNetwork(n_features, n_actions, net_arch, dueling)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).float()
        return self.head(F.relu(self.convolution(x)))


def build_q_network(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    if kind == "mlp":
        return MLPQNetwork(
            math.prod(spec["obs_shape"]), spec["n_actions"], spec["net_arch"], spec.get("dueling", False)
        )
    if kind == "one_hot_mlp":
        return OneHotMLP(spec["one_hot"], spec["n_actions"], spec["net_arch"], spec["dueling"])
    if kind == "minatar_cnn":
        return MinAtarCNN(spec["obs_shape"], spec["n_actions"], spec["net_arch"], spec["dueling"])
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
