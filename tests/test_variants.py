"""Rainbow's cheap parts as options of the one agent: dueling head, n-step returns, prioritized replay."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dqn_cli.networks import MLPQNetwork
from dqn_cli.presets import resolve
from dqn_cli.replay import NStepAccumulator, PrioritizedSampler, SumTree
from dqn_cli.training import TrainingInterrupted, resume, train

GAMMA = 0.5


def test_dueling_head_is_value_plus_mean_subtracted_advantage():
    torch.manual_seed(0)
    net = MLPQNetwork(3, 4, [8], dueling=True)
    obs = torch.randn(5, 3)
    hidden = torch.relu(net.hidden[0](obs))
    value, advantage = net.value(hidden), net.head(hidden)
    q = net(obs)
    assert torch.allclose(q, value + advantage - advantage.mean(dim=1, keepdim=True))
    # the advantages' mean carries no information: Q's mean over actions is V
    assert torch.allclose(q.mean(dim=1, keepdim=True), value, atol=1e-6)


def _run_episode(rewards, end: str):
    """Feed one env's episode of len(rewards) steps, observations 0, 1, 2, ... (final one = len)."""
    acc = NStepAccumulator(n=3, gamma=GAMMA, n_envs=1)
    out = []
    for t, reward in enumerate(rewards):
        last = t == len(rewards) - 1
        ready = acc.add(
            keys=np.array([[float(t)]]),
            actions=np.array([t]),
            rewards=np.array([reward]),
            next_keys=np.array([[float(t + 1)]]),
            terminal=np.array([last and end == "terminated"]),
            truncated=np.array([last and end == "truncated"]),
        )
        if ready is not None:
            out.extend(zip(*ready, strict=True))
    return [(float(o[0]), int(a), float(r), float(n[0]), float(d), float(h)) for o, a, r, n, d, h in out]


def test_n_step_targets_on_an_episode_ending_in_termination():
    transitions = _run_episode([1.0, 2.0, 4.0, 8.0], "terminated")
    # (obs, action, n-step return, bootstrap obs, terminated, horizon)
    assert transitions == [
        (0.0, 0, 1 + 0.5 * 2 + 0.25 * 4, 3.0, 0.0, 3.0),
        (1.0, 1, 2 + 0.5 * 4 + 0.25 * 8, 4.0, 1.0, 3.0),
        (2.0, 2, 4 + 0.5 * 8, 4.0, 1.0, 2.0),
        (3.0, 3, 8.0, 4.0, 1.0, 1.0),
    ]


def test_n_step_targets_on_an_episode_cut_by_truncation_bootstrap_from_the_final_observation():
    transitions = _run_episode([1.0, 2.0], "truncated")
    assert transitions == [(0.0, 0, 1 + 0.5 * 2, 2.0, 0.0, 2.0), (1.0, 1, 2.0, 2.0, 0.0, 1.0)]


def test_n_step_keeps_vector_env_episodes_apart():
    acc = NStepAccumulator(n=2, gamma=GAMMA, n_envs=2)
    first = acc.add(
        np.array([[0.0], [10.0]]),
        np.array([0, 0]),
        np.array([1.0, 100.0]),
        np.array([[1.0], [11.0]]),
        np.array([False, True]),
        np.array([False, False]),
    )
    # env 1 ended at once: its one-step transition leaves, env 0's waits for a second reward
    assert first[0].tolist() == [[10.0]] and first[2].tolist() == [100.0] and first[5].tolist() == [1.0]
    second = acc.add(
        np.array([[1.0], [20.0]]),
        np.array([1, 1]),
        np.array([2.0, 200.0]),
        np.array([[2.0], [21.0]]),
        np.array([False, False]),
        np.array([False, False]),
    )
    assert second[0].tolist() == [[0.0]] and second[2].tolist() == [1.0 + 0.5 * 2.0]
    assert second[3].tolist() == [[2.0]] and second[5].tolist() == [2.0]


def test_a_shrinking_horizon_lets_the_steps_past_it_leave_at_once_with_all_their_rewards():
    acc = NStepAccumulator(n=4, gamma=GAMMA, n_envs=1)
    no = np.array([False])

    def add(t: int):
        return acc.add(
            np.array([[float(t)]]), np.array([t]), np.array([1.0]), np.array([[float(t + 1)]]), no, no
        )

    assert [add(t) for t in range(3)] == [None, None, None]  # three of four rewards so far
    acc.n = 2
    ready = add(3)
    # obs 0 and 1 leave with 4 and 3 rewards, obs 2 with the new horizon's 2, all bootstrapping from obs 4
    assert ready[0].ravel().tolist() == [0.0, 1.0, 2.0] and ready[3].ravel().tolist() == [4.0] * 3
    assert ready[2].tolist() == [1.875, 1.75, 1.5] and ready[5].tolist() == [4.0, 3.0, 2.0]
    assert add(4)[0].ravel().tolist() == [3.0]  # then one transition per step, as with n = 2 throughout
    acc.n = 3
    assert add(5) is None and add(6)[0].ravel().tolist() == [4.0]  # a growing horizon waits longer


def test_the_horizon_moves_linearly_from_n_step_initial_to_n_step():
    from dqn_cli.hyperparameters import Hyperparameters, apply_overrides

    hp = apply_overrides(
        Hyperparameters(),
        {"n_timesteps": 1000, "n_step": 3, "n_step_initial": 10, "n_step_fraction": 0.5},
    )
    assert [hp.horizon(step) for step in (0, 250, 500, 900)] == [10, 6, 3, 3]
    assert hp.longest_horizon == 10
    fixed = apply_overrides(hp, {"n_step_initial": 0})
    assert {fixed.horizon(step) for step in (0, 500, 1000)} == {3} and fixed.longest_horizon == 3
    at_once = apply_overrides(hp, {"n_step_fraction": 0.0})
    assert at_once.horizon(0) == 3


def test_training_stores_the_horizon_of_the_step_each_transition_started(tmp_path: Path):
    """A run whose horizon falls from 5 to 1 over its first half: its replay, as the checkpoint holds
    it, has long returns from the early steps and one-step ones from the second half."""
    _, hp = resolve(
        "CartPole-v1",
        sets=[*TINY, "n_envs=1", "n_step=1", "n_step_initial=5", "n_step_fraction=0.5", "eval_freq=0"],
    )
    train("CartPole-v1", hp, seed=0, run_dir=tmp_path / "run", device="cpu", quiet=True)
    horizons = load_file(tmp_path / "run" / "checkpoint.safetensors")["replay/storage/horizons"]
    assert len(horizons) == 2000
    assert horizons[:100].max() == 5 and horizons[1100:].max() == 1
    assert set(horizons[:1000].tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}  # episode ends cut some short


def test_n_step_td_target_discounts_by_gamma_to_the_horizon():
    from dqn_cli.agent import DQNAgent, bootstrap_discounts
    from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
    from dqn_cli.networks import build_q_network, network_spec

    agent = DQNAgent(
        build_q_network(network_spec((2,), 2, [4], obs_dtype="float32")),
        apply_overrides(Hyperparameters(), {"gamma": GAMMA}),
        torch.device("cpu"),
    )
    agent.target = lambda obs: obs  # Q-values are the observation
    horizons, terminated = np.array([3.0, 1.0], dtype=np.float32), np.zeros(2, dtype=np.float32)
    targets = agent.td_targets(
        torch.tensor([1.0, 1.0]),
        torch.tensor([[2.0, 8.0], [8.0, 0.0]]),
        torch.from_numpy(bootstrap_discounts(agent.hp.gamma, horizons, terminated)),
    )
    assert targets.tolist() == [1 + 0.125 * 8, 1 + 0.5 * 8]


def test_sum_tree_totals_and_leaf_lookup():
    tree = SumTree(5)  # rounds up to 8 leaves
    tree.set(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == 10.0
    tree.set(np.array([1]), np.array([7.0]))
    assert tree.total == 15.0
    # cumulative masses: (0,1] -> 0, (1,8] -> 1, (8,11] -> 2, (11,15] -> 3; the empty leaf is never found
    assert tree.find(np.array([0.5, 1.0, 1.5, 8.0, 8.5, 12.0, 15.0])).tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_prioritized_sampling_is_proportional_to_priority_and_weights_correct_for_it():
    sampler = PrioritizedSampler(4, alpha=1.0, eps=0.0, rng=np.random.default_rng(0))
    ids = np.arange(4)
    sampler.added(ids)
    sampler.update(ids, np.array([1.0, 2.0, 3.0, 4.0]))
    counts = np.zeros(4)
    for _ in range(500):
        counts += np.bincount(sampler.sample(32, size=4, beta=1.0)[0], minlength=4)
    assert counts / counts.sum() == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.01)
    indices, weights = sampler.sample(64, size=4, beta=1.0)
    # w_i = (N P(i))^-1 / max w: inverse to priority, the rarest-sampled transition (priority 1) gets 1
    expected = {0: 1.0, 1: 0.5, 2: 1 / 3, 3: 0.25}
    for index, weight in zip(indices, weights, strict=True):
        assert weight == pytest.approx(expected[int(index)] / max(expected[int(i)] for i in indices))


def test_alpha_flattens_priorities_and_new_transitions_get_the_largest():
    sampler = PrioritizedSampler(8, alpha=0.5, eps=0.0, rng=np.random.default_rng(0))
    sampler.added(np.array([0, 1]))
    sampler.update(np.array([0, 1]), np.array([4.0, -9.0]))  # |TD error| counts
    assert sampler.tree.get(np.array([0, 1])).tolist() == [2.0, 3.0]
    sampler.added(np.array([2]))
    assert sampler.tree.get(np.array([2])).tolist() == [3.0]  # max priority 9, to the power 0.5


def test_sum_tree_total_and_find_agree_with_a_cumulative_sum_on_a_large_tree():
    rng = np.random.default_rng(0)
    tree = SumTree(1 << 20)
    assert tree.leaves == 1 << 20
    priorities = np.zeros(tree.leaves)
    # the first batch fills every leaf, later ones overwrite some of them; priorities are multiples of 1/64
    # (a fifth of them zero), so every partial sum is exact in float64 and boundaries can be tested exactly
    for size in (tree.leaves, 1 << 16, 1000, 1):
        index = rng.choice(tree.leaves, size=size, replace=False)
        value = rng.integers(1, 640, size=size) / 64 * (rng.random(size) > 0.2)
        tree.set(index, value)
        priorities[index] = value
    # long runs of empty leaves: one across the root's split, one at the very end
    for block in (np.arange((1 << 19) - 5000, (1 << 19) + 5000), np.arange(tree.leaves - 3000, tree.leaves)):
        tree.set(block, np.zeros(len(block)))
        priorities[block] = 0.0
    assert np.array_equal(tree.get(np.arange(tree.leaves)), priorities)
    cumulative = np.cumsum(priorities)
    assert tree.total == cumulative[-1] == priorities.sum()

    # leaf i owns the masses in (cumulative[i - 1], cumulative[i]]: the first leaf whose cumulative sum
    # reaches the mass, which is searchsorted's side="left" (a zero-priority leaf owns no mass at all)
    def expected(mass):
        return np.searchsorted(cumulative, mass, side="left")

    random_masses = tree.total * (1.0 - rng.random(200_000))  # uniform in (0, total]
    ends = cumulative[rng.choice(np.flatnonzero(priorities), size=20_000)]  # exact leaf boundaries
    just_past = np.nextafter(ends[ends < tree.total], np.inf)
    masses = np.concatenate([random_masses, ends, just_past, [tree.total, np.nextafter(0.0, 1.0)]])
    found = tree.find(masses)
    assert np.array_equal(found, expected(masses))
    assert (priorities[found] > 0).all()
    first, last = np.flatnonzero(priorities)[[0, -1]]
    assert found[-2] == last and found[-1] == first
    # a mass that rounding pushed past the total still lands on the last non-empty leaf, not an empty one
    assert tree.find(np.array([np.nextafter(tree.total, np.inf)])).tolist() == [last]


def test_sum_tree_set_with_no_indices_changes_nothing():
    tree = SumTree(8)
    tree.set(np.arange(3), np.array([1.0, 2.0, 3.0]))
    for empty in (np.array([], dtype=np.int64), np.array([])):
        tree.set(empty, np.array([]))
        assert tree.total == 6.0
        assert tree.get(np.arange(8)).tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        assert tree.find(np.array([1.0, 1.5, 6.0])).tolist() == [0, 1, 2]


VARIANTS = [
    "dueling=true",
    "n_step=3",
    "n_step=2;n_step_initial=6;n_step_fraction=0.75",
    "learning_rate=1e-3;learning_rate_final=1e-5;learning_rate_fraction=0.75",
    "prioritized_replay=true",
    "overlap_emulation=true",
    "actor_process=true",
]
TINY = [
    "n_timesteps=2000",
    "learning_starts=200",
    "train_freq=4",
    "gradient_steps=1",
    "batch_size=32",
    "net_arch=[32]",
    "eval_freq=1000",
    "eval_episodes=2",
    "checkpoint_freq=1000",
    "n_envs=2",
    "stop_at_eval_return=inf",
    "target_update_interval=100",
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [*VARIANTS, ";".join(VARIANTS)])
def test_each_variant_trains_and_resumes_exactly(tmp_path: Path, variant: str):
    """Interrupt at step 1000 (as Ctrl-C would), resume, and match an uninterrupted run bit for bit:
    n-step's pending steps and the priorities are part of the checkpoint."""
    _, hp = resolve("CartPole-v1", sets=[*TINY, *variant.split(";")])
    train("CartPole-v1", hp, seed=2, run_dir=tmp_path / "straight", device="cpu", quiet=True)

    def ctrl_c_at_1000(step: int, mean_return: float) -> None:
        if step == 1000:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(
            "CartPole-v1",
            hp,
            seed=2,
            run_dir=tmp_path / "resumed",
            device="cpu",
            quiet=True,
            on_evaluation=ctrl_c_at_1000,
        )
    result, exact = resume(tmp_path / "resumed", device="cpu", quiet=True)
    assert exact and result.steps == 2000
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
