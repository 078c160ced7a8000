import numpy as np
import pytest
import torch
from helpers import random_batch
from torch import nn

from dqn_cli.agent import DQNAgent, bootstrap_discounts, epsilon_greedy, greedy_actions, q_values
from dqn_cli.envs import final_observations, make_vector_env
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.networks import build_q_network, network_spec

CPU = torch.device("cpu")


class ObsAsQ(nn.Module):
    """A 'network' whose Q-values are the observation times ``sign``: targets can be worked out by hand."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.sign * obs + 0 * self.unused


def _agent(**overrides) -> DQNAgent:
    hp = apply_overrides(Hyperparameters(), {"gamma": 0.5, **overrides})
    return DQNAgent(build_q_network(network_spec((4,), 2, [8], obs_dtype="float32")), hp, CPU)


def test_td_target_terminated_does_not_bootstrap_but_truncated_does():
    agent = _agent()
    agent.target = ObsAsQ()
    next_obs = torch.tensor([[1.0, 3.0], [2.0, 0.0], [4.0, 1.0]])
    rewards = torch.tensor([1.0, 1.0, -1.0])
    # Row 0 ended by termination; rows 1 and 2 were cut by the time limit (stored as not terminated),
    # so they bootstrap from the true final observation.
    terminated = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    discounts = bootstrap_discounts(agent.hp.gamma, np.ones(3, dtype=np.float32), terminated)
    targets = agent.td_targets(rewards, next_obs, torch.from_numpy(discounts))
    assert targets.tolist() == [1.0, 1.0 + 0.5 * 2.0, -1.0 + 0.5 * 4.0]


def test_bootstrap_discount_is_gamma_to_the_horizon_and_zero_after_a_terminal():
    discounts = bootstrap_discounts(
        0.5, np.array([1.0, 3.0, 3.0], dtype=np.float32), np.array([0.0, 0.0, 1.0], dtype=np.float32)
    )
    assert discounts.dtype == np.float32
    assert discounts.tolist() == [0.5, 0.125, 0.0]


def test_double_dqn_picks_action_with_online_and_values_it_with_target():
    agent = _agent(double_q=True)
    agent.online, agent.target = ObsAsQ(-1.0), ObsAsQ(1.0)
    next_obs = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    targets = agent.td_targets(torch.zeros(2), next_obs, torch.full((2,), 0.5))
    # online argmax of -obs = argmin of obs: action 0 (value 1) and action 1 (value 0)
    assert targets.tolist() == [0.5, 0.0]


def test_final_observation_replaces_reset_observation_only_where_episode_ended():
    next_obs = np.array([[0.0, 0.0], [9.0, 9.0]])
    infos = {"final_obs": np.array([None, np.array([1.0, 2.0])], dtype=object)}
    real = final_observations(next_obs, infos, np.array([False, True]))
    assert real.tolist() == [[0.0, 0.0], [1.0, 2.0]]
    assert next_obs[1].tolist() == [9.0, 9.0]  # the reset observation still feeds the next action


def test_time_limit_truncation_reports_the_true_final_observation():
    envs = make_vector_env("MountainCar-v0", 1)  # random play never reaches the flag: truncated at 200
    obs, _ = envs.reset(seed=0)
    for _ in range(200):
        previous = obs
        obs, _, terminated, truncated, infos = envs.step(np.array([1]))
    envs.close()
    assert truncated[0] and not terminated[0]
    final = final_observations(obs, infos, terminated | truncated)[0]
    assert not np.array_equal(final, obs[0])  # obs[0] is the next episode's first observation
    assert abs(final[0] - previous[0][0]) < 0.1  # the car moved one step from where it was


def _networks_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_hard_target_update_copies_exactly():
    agent = _agent()
    with torch.no_grad():
        for p in agent.online.parameters():
            p.add_(torch.randn_like(p))
    assert not _networks_equal(agent.online, agent.target)
    agent.update_target()
    assert _networks_equal(agent.online, agent.target)


def test_polyak_target_update_moves_a_fraction_tau():
    agent = _agent(tau=0.25)
    before = [p.clone() for p in agent.target.parameters()]
    with torch.no_grad():
        for p in agent.online.parameters():
            p.add_(1.0)
    agent.update_target()
    for old, new, online in zip(before, agent.target.parameters(), agent.online.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * online)


def test_update_trains_online_network_only_and_reduces_loss():
    torch.manual_seed(0)
    agent = _agent(learning_rate=1e-2)
    rng = np.random.default_rng(0)
    batch = random_batch(rng, 32, rewards=np.ones(32), terminated=np.ones(32))
    target_before = [p.clone() for p in agent.target.parameters()]
    first = float(agent.update(batch)[0])
    for _ in range(50):
        last = float(agent.update(batch)[0])
    assert last < first / 4
    assert all(torch.equal(a, b) for a, b in zip(target_before, agent.target.parameters(), strict=True))


@pytest.mark.parametrize(("epsilon", "expected_random_share"), [(0.0, 0.0), (1.0, 0.5), (0.5, 0.25)])
def test_epsilon_greedy_explores_at_rate_epsilon(epsilon, expected_random_share):
    net = ObsAsQ()  # action 0 is greedy for obs (1, 0)
    obs = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (4000, 1))
    actions = epsilon_greedy(net, obs, epsilon, 2, np.random.default_rng(0), CPU)
    # a random action is 1 half of the time
    assert actions.mean() == pytest.approx(expected_random_share, abs=0.03)


def test_adam_eps_is_the_optimizers_and_damps_the_first_step():
    """Adam's first step is lr * g / (|g| + eps): about lr for every parameter at PyTorch's eps, far
    less where the gradient is small against a large eps (Rainbow's 1.5e-4 in spirit, exaggerated)."""
    rng = np.random.default_rng(0)
    batch = random_batch(rng, 16, rewards=rng.normal(size=16) * 1e-3)
    moved = {}
    for eps in (1e-8, 100.0):
        torch.manual_seed(0)
        agent = _agent(adam_eps=eps, learning_rate=1e-3)
        assert agent.optimizer.param_groups[0]["eps"] == eps
        before = [p.detach().clone() for p in agent.online.parameters()]
        agent.update(batch)
        after = agent.online.parameters()
        moved[eps] = max((p.detach() - b).abs().max().item() for p, b in zip(after, before, strict=True))
    assert moved[1e-8] == pytest.approx(1e-3, rel=0.01)
    assert moved[100.0] < moved[1e-8] / 100


@pytest.mark.parametrize(
    ("obs_shape", "dtype", "dueling", "one_hot"),
    [((4,), "float32", False, None), ((8,), "float64", True, None), ((2,), "int64", True, [4, 3])],
)
def test_acting_computes_the_mlps_q_values_in_numpy_as_torch_does(obs_shape, dtype, dueling, one_hot):
    spec = network_spec(obs_shape, 3, [16, 8], dueling, obs_dtype=dtype, one_hot=one_hot)
    net = build_q_network(spec)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 3, (5, *obs_shape)) if one_hot else rng.normal(size=(5, *obs_shape))
    obs = obs.astype(dtype)
    with torch.no_grad():
        expected = net(torch.as_tensor(obs)).numpy()
    acted = q_values(net, obs, CPU)
    assert acted.dtype == np.float32
    np.testing.assert_allclose(acted, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(greedy_actions(net, obs, CPU), expected.argmax(axis=1))


def test_acting_in_numpy_follows_every_update_and_a_reload():
    agent = _agent(learning_rate=0.1)
    obs = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    before = q_values(agent.online, obs, CPU)
    for _ in range(3):
        agent.update(random_batch(np.random.default_rng(2), 16, np.ones(16)))
    after = q_values(agent.online, obs, CPU)
    assert not np.allclose(after, before)  # the views saw Adam's in-place steps
    with torch.no_grad():
        np.testing.assert_allclose(after, agent.online(torch.as_tensor(obs)).numpy(), rtol=1e-5, atol=1e-6)
    agent.online.load_state_dict(agent.target.state_dict())  # copied in place, as a resume does
    np.testing.assert_allclose(q_values(agent.online, obs, CPU), q_values(agent.target, obs, CPU))
