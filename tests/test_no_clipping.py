"""max_grad_norm = inf switches gradient clipping off (CleanRL's DQN has none), without a norm computed."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_batch
from torch import nn

from dqn_cli.agent import DQNAgent
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, parse_set_option
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.replay import Batch


def _agent(max_grad_norm: float) -> DQNAgent:
    torch.manual_seed(0)
    hp = apply_overrides(
        Hyperparameters(), {"loss": "mse", "learning_rate": 1e-2, "max_grad_norm": max_grad_norm}
    )
    return DQNAgent(build_q_network(network_spec((4,), 2, [8], obs_dtype="float32")), hp, torch.device("cpu"))


def _batch() -> Batch:
    rng = np.random.default_rng(0)
    # rewards of ~100: large TD errors, so the gradient norm is far above the 1e-3 the clipping test uses
    return random_batch(rng, 32, rewards=100 * rng.normal(size=32), terminated=rng.random(32) < 0.3)


def _unclipped_adam_step(agent: DQNAgent, batch: Batch) -> nn.Module:
    """The algorithm box written out: MSE TD loss against the target network, then plain Adam."""
    online, target = copy.deepcopy(agent.online), agent.target
    obs, next_obs = torch.from_numpy(batch.obs), torch.from_numpy(batch.next_obs)
    with torch.no_grad():
        bootstrap = target(next_obs).max(dim=1).values
        targets = (
            torch.from_numpy(batch.rewards)
            + agent.hp.gamma * (1 - torch.from_numpy(batch.terminated)) * bootstrap
        )
    q_taken = online(obs).gather(1, torch.from_numpy(batch.actions)[:, None]).squeeze(1)
    optimizer = torch.optim.Adam(online.parameters(), lr=agent.hp.learning_rate)
    F.mse_loss(q_taken, targets).backward()
    optimizer.step()
    return online


def _gradient_norm(network: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.square().sum()) for p in network.parameters()))


def test_inf_takes_the_unclipped_adam_step_without_computing_a_norm(monkeypatch):
    agent, batch = _agent(math.inf), _batch()
    expected = _unclipped_adam_step(agent, batch)
    monkeypatch.setattr(
        nn.utils, "clip_grad_norm_", lambda *args, **kwargs: pytest.fail("clip_grad_norm_ called")
    )
    agent.update(batch)
    for got, want in zip(agent.online.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad)
        torch.testing.assert_close(got, want)


def test_a_finite_max_grad_norm_still_clips():
    agent, batch = _agent(1e-3), _batch()
    unclipped = _unclipped_adam_step(agent, batch)
    agent.update(batch)
    assert _gradient_norm(unclipped) > 1.0
    assert _gradient_norm(agent.online) == pytest.approx(1e-3, rel=1e-3)
    scale = 1e-3 / _gradient_norm(unclipped)  # same direction, shorter
    for got, want in zip(agent.online.parameters(), unclipped.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad * scale, rtol=1e-3, atol=1e-9)


def test_max_grad_norm_accepts_inf_from_set_but_not_zero_or_minus_inf():
    key, value = parse_set_option("max_grad_norm=inf")
    assert apply_overrides(Hyperparameters(), {key: value}).max_grad_norm == math.inf
    for bad in (0.0, -math.inf):
        with pytest.raises(UserError, match="max_grad_norm"):
            apply_overrides(Hyperparameters(), {"max_grad_norm": bad})
