"""The DQN agent: epsilon-greedy acting and the TD update of Mnih et al. (2015)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.replay import Batch
from dqn_cli.state import State, nest, section


def q_values(q_network: nn.Module, obs: np.ndarray, device: torch.device) -> np.ndarray:
    """Q(obs, ·) for a batch of observations (float32), without building an autograd graph. On the CPU a
    network that has ``numpy_q_values`` (the MLP) computes them in numpy: for the one observation a
    classic-control step brings, that is several times cheaper than torch (benchmarks/RESULTS.md)."""
    if device.type == "cpu" and hasattr(q_network, "numpy_q_values"):
        return q_network.numpy_q_values(obs)
    with torch.inference_mode():
        return q_network(torch.as_tensor(obs, device=device)).float().cpu().numpy()


def greedy_actions(q_network: nn.Module, obs: np.ndarray, device: torch.device) -> np.ndarray:
    """argmax_a Q(obs, a) for a batch of observations."""
    return q_values(q_network, obs, device).argmax(axis=1)


def epsilon_greedy(
    q_network: nn.Module,
    obs: np.ndarray,
    epsilon: float,
    n_actions: int,
    rng: np.random.Generator,
    device: torch.device,
) -> np.ndarray:
    """Each env independently takes a uniform random action with probability ``epsilon``."""
    explore = rng.random(len(obs)) < epsilon
    if np.count_nonzero(explore) == len(obs):  # count_nonzero: a fraction of all()'s cost on 1 env
        return rng.integers(0, n_actions, size=len(obs))
    return _randomized(greedy_actions(q_network, obs, device), explore, n_actions, rng)


def training_actions(
    q_network: nn.Module,
    obs: np.ndarray,
    step: int,
    hp: Hyperparameters,
    n_actions: int,
    rng: np.random.Generator,
    device: torch.device,
) -> np.ndarray:
    """The actions a training env step plays at env step ``step``: uniformly random before
    ``learning_starts``, then epsilon-greedy on the schedule's epsilon."""
    if step < hp.learning_starts:
        return rng.integers(0, n_actions, size=len(obs))
    return epsilon_greedy(q_network, obs, hp.exploration_rate(step), n_actions, rng, device)


def bootstrap_discounts(gamma: float, horizons: np.ndarray, terminated: np.ndarray) -> np.ndarray:
    """gamma^h * (1 - terminated): what each transition's bootstrapped value is worth in its TD target (h
    rewards summed; none after a true terminal). Computed in numpy on the batch, the cheaper side for these
    few hundred numbers, before it moves to the device."""
    return (gamma**horizons * (1.0 - terminated)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Decision:
    """An epsilon-greedy choice for a batch of observations, with what it was made from."""

    actions: np.ndarray  # (N,)
    q_values: np.ndarray  # (N, n_actions) float32: the network's output the greedy actions are the argmax of
    random: np.ndarray  # (N,) bool: the action was drawn uniformly (probability epsilon), not the argmax


def epsilon_greedy_decision(
    q_network: nn.Module,
    obs: np.ndarray,
    epsilon: float,
    n_actions: int,
    rng: np.random.Generator,
    device: torch.device,
) -> Decision:
    """``epsilon_greedy``, keeping the Q-values (`dqn record --overlay` draws them). The network runs even
    where every action is random, so each observation has them; ``rng`` gives exactly what it gives
    ``epsilon_greedy``, so both choose the same actions."""
    explore = rng.random(len(obs)) < epsilon
    values = q_values(q_network, obs, device)
    return Decision(_randomized(values.argmax(axis=1), explore, n_actions, rng), values, explore)


def _randomized(
    actions: np.ndarray, explore: np.ndarray, n_actions: int, rng: np.random.Generator
) -> np.ndarray:
    """``actions`` with a uniform random action wherever ``explore``."""
    explored = np.count_nonzero(explore)
    if explored:
        actions[explore] = rng.integers(0, n_actions, size=explored)
    return actions


def shift_frames(frames: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move stack i of ``frames`` (N, C, H, W) by ``offsets[:, i]`` = (rows, columns) whole pixels, edge
    pixels repeated where the image moves in: DrQ's pad-and-crop, done by indexing, so uint8 frames stay
    uint8 and nothing is interpolated."""
    n, _, height, width = frames.shape
    device = frames.device
    rows = (torch.arange(height, device=device) + offsets[0, :, None]).clamp_(0, height - 1)  # (N, H)
    cols = (torch.arange(width, device=device) + offsets[1, :, None]).clamp_(0, width - 1)  # (N, W)
    picked = frames[torch.arange(n, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()  # indexing put the channels last


def random_shift(frames: torch.Tensor, pad: int) -> torch.Tensor:
    """Each stack shifted by its own offsets, uniform in [-pad, pad], drawn from torch's CPU generator
    (seeded and checkpointed with the run), wherever the frames are."""
    offsets = torch.randint(-pad, pad + 1, (2, len(frames)))
    return shift_frames(frames, offsets.to(frames.device))


class DQNAgent:
    """Online and target Q-networks with the optimizer that trains the online one."""

    def __init__(self, q_network: nn.Module, hp: Hyperparameters, device: torch.device) -> None:
        self.hp = hp
        self.device = device
        self.online = q_network.to(device)
        self.online_parameters = tuple(self.online.parameters())
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        # fused: one kernel for all parameters, the cheapest Adam step on CPU and GPU alike
        self.optimizer = torch.optim.Adam(
            self.online.parameters(), lr=hp.learning_rate, eps=hp.adam_eps, fused=True
        )
        self.loss_fn = F.smooth_l1_loss if hp.loss == "huber" else F.mse_loss

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def td_targets(
        self, rewards: torch.Tensor, next_obs: torch.Tensor, discounts: torch.Tensor
    ) -> torch.Tensor:
        """y = r + discount * Q_target(s', a*), a* = argmax Q_target (Q_online if Double), where discount =
        gamma^h * (1 - terminated) (``bootstrap_discounts``)."""
        with torch.no_grad():
            next_q_target = self.target(next_obs)
            if self.hp.double_q:
                best_next = self.online(next_obs).argmax(dim=1, keepdim=True)
            else:
                best_next = next_q_target.argmax(dim=1, keepdim=True)
            next_value = next_q_target.gather(1, best_next).squeeze(1)
            return rewards + discounts * next_value

    def update(self, batch: Batch) -> tuple[torch.Tensor, np.ndarray | None]:
        """One gradient step on the TD loss (importance-weighted under prioritized replay).

        Returns the loss (detached, left on the device: no sync) and, for a prioritized batch (one with
        importance weights), the per-transition TD errors that become its new priorities, else None."""
        discounts = bootstrap_discounts(self.hp.gamma, batch.horizons, batch.terminated)
        obs, actions, rewards, next_obs, discounts = map(
            self._to_device, (batch.obs, batch.actions, batch.rewards, batch.next_obs, discounts)
        )
        if self.hp.augment_shift:  # DrQ(eps): both observations of each transition, each its own shift
            obs, next_obs = (
                random_shift(obs, self.hp.augment_shift),
                random_shift(next_obs, self.hp.augment_shift),
            )
        targets = self.td_targets(rewards, next_obs, discounts)
        q_taken = self.online(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        if batch.weights is None:
            loss = self.loss_fn(q_taken, targets)
        else:
            loss = (self._to_device(batch.weights) * self.loss_fn(q_taken, targets, reduction="none")).mean()
        for parameter in self.online_parameters:  # zero_grad(set_to_none=True) less its profiler scope
            parameter.grad = None
        loss.backward()
        if math.isfinite(self.hp.max_grad_norm):  # inf: no clipping, and no norm computed for it
            nn.utils.clip_grad_norm_(self.online_parameters, self.hp.max_grad_norm)
        self.optimizer.step()
        td_errors = None if batch.weights is None else (targets - q_taken).detach().cpu().numpy()
        return loss.detach(), td_errors

    def set_learning_rate(self, rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def update_target(self) -> None:
        """theta_target <- tau * theta_online + (1 - tau) * theta_target; tau = 1 is the paper's hard copy."""
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.online.parameters(), strict=True):
                if self.hp.tau >= 1.0:
                    target.copy_(online)  # exact copy: lerp with weight 1 can round
                else:
                    target.lerp_(online, self.hp.tau)

    def state_dict(self) -> State:
        """Both networks' weights and Adam's moments as arrays; Adam's settings as JSON."""
        optimizer = self.optimizer.state_dict()
        moments = {
            f"{index}/{name}": tensor.cpu().numpy()
            for index, values in optimizer["state"].items()
            for name, tensor in values.items()
        }
        return {
            **nest(
                {
                    "online": network_arrays(self.online),
                    "target": network_arrays(self.target),
                    "optimizer": moments,
                }
            ),
            "optimizer_groups": optimizer["param_groups"],
        }

    def load_state_dict(self, state: State) -> None:
        """Raises KeyError, ValueError or RuntimeError when the state is of another network."""
        self.online.load_state_dict(state_tensors(section(state, "online")))
        self.target.load_state_dict(state_tensors(section(state, "target")))
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in state_tensors(section(state, "optimizer")).items():
            index, name = key.split("/")
            moments.setdefault(int(index), {})[name] = tensor
        self.optimizer.load_state_dict({"state": moments, "param_groups": state["optimizer_groups"]})


def network_arrays(network: nn.Module) -> dict[str, np.ndarray]:
    """A network's weights as numpy arrays, by state_dict key: what a checkpoint stores."""
    return {key: tensor.cpu().numpy() for key, tensor in network.state_dict().items()}


def state_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Arrays from a checkpoint as tensors, for ``load_state_dict``."""
    return {key: torch.from_numpy(np.ascontiguousarray(array)) for key, array in arrays.items()}
