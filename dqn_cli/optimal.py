"""The best return any policy can expect on a tabular env, by value iteration on its transition table: the
yardstick `dqn eval` prints beside the agent's mean on gymnasium's toy-text games.

Those envs publish their MDP. ``env.unwrapped.P[s][a]`` lists the outcomes of action ``a`` in state ``s``
as ``(probability, next state, reward, terminated)``, and ``initial_state_distrib`` says where episodes
start. An evaluation episode also ends at a time limit of H steps (FrozenLake 100, Taxi 200), and its score
is the undiscounted sum of rewards, so the optimum is a finite-horizon value, found by backward induction
over the number of steps left, k, with the Bellman optimality backup (undiscounted, gamma = 1):

    V_0(s) = 0
    Q_k(s, a) = sum of p * (r + (1 - terminated) * V_{k-1}(s')) over the outcomes (p, s', r, terminated)
                of P[s][a]
    V_k(s) = max_a Q_k(s, a)

and the optimum is V_H averaged over the start distribution. The optimal policy may depend on k (with one
step left, only the reward of that step counts), while a DQN agent's greedy policy is stationary: it plays
the same action in a state whatever the clock says. ``policy_return`` scores a stationary policy over the
same H steps, so the gap between the two can be measured (see the README's "Grid worlds").
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class TabularMDP:
    """An env's transition table as flat arrays, one entry per outcome of each (state, action): the
    backup is then a handful of vector operations, however many outcomes each pair has."""

    n_states: int
    n_actions: int
    pair: np.ndarray  # state * n_actions + action, of each outcome
    probability: np.ndarray
    next_state: np.ndarray
    reward: np.ndarray
    continues: np.ndarray  # 1.0 where the outcome does not end the episode, 0.0 where it terminates it
    start: np.ndarray  # probability of each state at reset


def tabular_mdp(env: gym.Env) -> TabularMDP | None:
    """The MDP of ``env`` where it publishes one (``P`` and ``initial_state_distrib``, as gymnasium's
    toy-text envs do); None otherwise."""
    table, start = getattr(env.unwrapped, "P", None), getattr(env.unwrapped, "initial_state_distrib", None)
    if not isinstance(table, dict) or start is None:
        return None
    n_states, n_actions = len(table), len(table[0])
    outcomes = np.array(
        [
            (state * n_actions + action, *outcome)
            for state in range(n_states)
            for action in range(n_actions)
            for outcome in table[state][action]
        ],
        dtype=np.float64,
    )
    pair, probability, next_state, reward, terminated = outcomes.T
    return TabularMDP(
        n_states,
        n_actions,
        pair.astype(np.int64),
        probability,
        next_state.astype(np.int64),
        reward,
        1.0 - terminated,
        np.asarray(start, dtype=np.float64),
    )


def backup(mdp: TabularMDP, values: np.ndarray) -> np.ndarray:
    """Q(s, a) = E[r + (1 - terminated) * V(s')] for every state and action: one step of expected reward,
    then ``values`` from wherever the step leads, unless it ended the episode."""
    per_outcome = mdp.probability * (mdp.reward + mdp.continues * values[mdp.next_state])
    q = np.bincount(mdp.pair, weights=per_outcome, minlength=mdp.n_states * mdp.n_actions)
    return q.reshape(mdp.n_states, mdp.n_actions)


def optimal_values(mdp: TabularMDP, horizon: int) -> np.ndarray:
    """V_horizon: each state's best expected return with ``horizon`` steps left. Once a backup changes
    nothing (a deterministic game solved in fewer steps), no later one can, so it stops there."""
    values = np.zeros(mdp.n_states)
    for _ in range(horizon):
        previous, values = values, backup(mdp, values).max(axis=1)
        if np.array_equal(values, previous):
            break
    return values


def optimal_return(mdp: TabularMDP, horizon: int) -> float:
    """The optimal policy's expected undiscounted return over episodes of at most ``horizon`` steps, from
    the env's start distribution."""
    return float(mdp.start @ optimal_values(mdp, horizon))


def policy_return(mdp: TabularMDP, actions: np.ndarray, horizon: int) -> float:
    """The expected undiscounted return over at most ``horizon`` steps of the stationary policy that plays
    ``actions[s]`` in state ``s`` at every step: the same backward induction with its action in place of
    the max."""
    values = np.zeros(mdp.n_states)
    states = np.arange(mdp.n_states)
    for _ in range(horizon):
        values = backup(mdp, values)[states, actions]
    return float(mdp.start @ values)
