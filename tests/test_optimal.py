"""Value iteration (dqn_cli/optimal.py) against MDPs small enough to solve by hand, and against values known
for gymnasium's toy-text games."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from dqn_cli.optimal import backup, optimal_return, optimal_values, policy_return, tabular_mdp

CASH, FLIP = 0, 1


def _mdp(table: dict, start: list[float]):
    """A hand-written transition table in the toy-text format, behind an object shaped like an env."""
    env = SimpleNamespace(P=table, initial_state_distrib=np.array(start))
    env.unwrapped = env
    return tabular_mdp(env)


# One state. CASH takes 0.6 and ends the episode; FLIP wins 1 with probability 1/2 (ending it), else
# nothing happens. With k steps left the best return is W_k = max(0.6, 1/2 + W_{k-1} / 2), W_0 = 0:
# 0.6, 0.8, 0.9, 0.95 — cash in on the last step, flip before it.
COIN = {0: {CASH: [(1.0, 0, 0.6, True)], FLIP: [(0.5, 0, 1.0, True), (0.5, 0, 0.0, False)]}}


@pytest.mark.parametrize(("horizon", "expected"), [(0, 0.0), (1, 0.6), (2, 0.8), (3, 0.9), (4, 0.95)])
def test_coin_game_optimum_by_hand(horizon, expected):
    assert optimal_return(_mdp(COIN, [1.0]), horizon) == pytest.approx(expected, abs=1e-12)


def test_the_finite_horizon_optimum_is_not_stationary_and_a_stationary_policy_is_scored_as_such():
    coin = _mdp(COIN, [1.0])
    # always flipping wins 1 - 2^-k within k steps; always cashing 0.6 at once
    assert policy_return(coin, np.array([FLIP]), 3) == pytest.approx(1 - 0.5**3, abs=1e-12)
    assert policy_return(coin, np.array([CASH]), 3) == pytest.approx(0.6, abs=1e-12)
    # the optimum flips twice and then cashes in: more than either stationary policy gets
    assert optimal_return(coin, 3) == pytest.approx(0.9, abs=1e-12)
    assert 0.9 > 1 - 0.5**3 > 0.6
    np.testing.assert_allclose(backup(coin, np.array([0.6])), [[0.6, 0.8]])


def test_start_distribution_and_rewards_along_the_way():
    # state 0: CASH ends with 1; WAIT (action 1) pays -1 and moves to state 1, where CASH ends with 5
    table = {
        0: {0: [(1.0, 0, 1.0, True)], 1: [(1.0, 1, -1.0, False)]},
        1: {0: [(1.0, 0, 5.0, True)], 1: [(1.0, 1, -1.0, False)]},
    }
    mdp = _mdp(table, [0.25, 0.75])
    np.testing.assert_allclose(optimal_values(mdp, 1), [1.0, 5.0])
    np.testing.assert_allclose(optimal_values(mdp, 2), [4.0, 5.0])  # wait, then cash 5
    assert optimal_return(mdp, 2) == pytest.approx(0.25 * 4.0 + 0.75 * 5.0)


def test_frozen_lake_optimum_within_its_100_steps():
    mdp = tabular_mdp(gym.make("FrozenLake-v1"))
    assert gym.spec("FrozenLake-v1").max_episode_steps == 100
    assert optimal_return(mdp, 100) == pytest.approx(0.7442, abs=1e-4)
    # with no time limit the optimal success probability from the start is 14/17 (Sutton & Barto's
    # 4x4 slippery lake, gamma = 1); 100 steps are not enough to reach it
    assert optimal_return(mdp, 100_000) == pytest.approx(14 / 17, abs=1e-9)


def _shortest_solution(table: dict, state: int) -> float:
    """Return of the fewest-step route to the end of an episode in a deterministic table, found
    breadth-first: an answer that owes nothing to the Bellman backup. (In Taxi and CliffWalking every step
    that moves costs -1, so the shortest route is the best one.)"""
    seen, queue = {state: 0.0}, deque([state])
    while queue:
        s = queue.popleft()
        for outcomes in table[s].values():
            ((_, following, reward, terminated),) = outcomes
            if terminated:
                return seen[s] + reward
            if not terminated and following not in seen:
                seen[following] = seen[s] + reward
                queue.append(following)
    raise AssertionError("no solution")


@pytest.mark.parametrize("env_id", ["Taxi-v4", "CliffWalking-v1"])
def test_deterministic_games_against_breadth_first_search(env_id):
    env = gym.make(env_id)
    mdp = tabular_mdp(env)
    starts = np.flatnonzero(mdp.start)
    by_search = np.mean([_shortest_solution(env.unwrapped.P, int(s)) for s in starts])
    assert np.allclose(mdp.start[starts], mdp.start[starts][0])  # uniform over the starts
    horizon = env.spec.max_episode_steps or 1_000
    assert optimal_return(mdp, horizon) == pytest.approx(by_search, abs=1e-9)


def test_known_values_of_taxi_and_cliff_walking():
    # Taxi: +20 for the drop-off, -1 for every other step, 7.93 on average over its 300 starts;
    # CliffWalking: 13 steps of -1 along the cliff edge
    assert optimal_return(tabular_mdp(gym.make("Taxi-v4")), 200) == pytest.approx(7.93, abs=1e-9)
    assert optimal_return(tabular_mdp(gym.make("CliffWalking-v1")), 100) == pytest.approx(-13.0)


def test_envs_without_a_transition_table_have_no_optimum():
    assert tabular_mdp(gym.make("CartPole-v1")) is None
