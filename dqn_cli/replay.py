"""Experience replay in three small parts, as in Dopamine: an n-step accumulator that turns env steps into
transitions, the storage (preallocated arrays, no per-step allocation), and the sampler (uniform, or
proportional to priority through a sum tree)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """A sampled minibatch as numpy arrays; the agent moves it to its device.

    ``horizons`` is how many rewards ``rewards`` sums (the bootstrap discount is gamma ** horizon);
    ``weights`` are importance weights (None for uniform sampling); ``indices`` locate the transitions
    so their priorities can be updated.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    horizons: np.ndarray
    weights: np.ndarray | None
    indices: np.ndarray


class ReplayBuffer:
    """Ring buffer of transitions, sampled uniformly. ``terminated`` is stored, truncation is not: a
    time-limit cut is no terminal state, so its transition bootstraps from the real next observation.
    """

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "horizons")

    def __init__(
        self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, rng: np.random.Generator
    ):
        self.capacity = capacity
        self.rng = rng
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.horizons = np.ones(capacity, dtype=np.float32)
        self.position = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        horizons: np.ndarray | int = 1,
    ) -> np.ndarray:
        """Store a batch of transitions, overwriting the oldest once full; returns the slots used."""
        index = (self.position + np.arange(len(actions))) % self.capacity
        self.obs[index] = obs
        self.next_obs[index] = next_obs
        self.actions[index] = actions
        self.rewards[index] = rewards
        self.terminated[index] = terminated
        self.horizons[index] = horizons
        self.position = int(index[-1] + 1) % self.capacity
        self.size = min(self.size + len(actions), self.capacity)
        return index

    def stored(self) -> dict[str, np.ndarray]:
        """The filled part of each array (views, no copy), for checkpoints."""
        return {name: getattr(self, name)[: self.size] for name in self._FIELDS}

    def restore(self, arrays: dict[str, np.ndarray], position: int, size: int) -> None:
        """Refill from ``stored()`` output; shapes and dtypes must match this buffer's."""
        if not 0 <= position < self.capacity or not 0 <= size <= self.capacity:
            raise ValueError(f"replay position {position} / size {size} do not fit capacity {self.capacity}")
        for name in self._FIELDS:
            target, source = getattr(self, name), arrays[name]
            if source.shape != (size, *target.shape[1:]) or source.dtype != target.dtype:
                raise ValueError(
                    f"replay {name} has shape {source.shape} {source.dtype}, "
                    f"expected {(size, *target.shape[1:])} {target.dtype}"
                )
            target[:size] = source
        self.position, self.size = position, size

    def _batch(self, index: np.ndarray, weights: np.ndarray | None) -> Batch:
        return Batch(
            obs=self.obs[index],
            actions=self.actions[index],
            rewards=self.rewards[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
            horizons=self.horizons[index],
            weights=weights,
            indices=index,
        )

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        """Uniformly sample ``batch_size`` stored transitions (with replacement, like SB3)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = self.rng.integers(0, self.size, size=batch_size)
        return self._batch(index, None)


class SumTree:
    """Binary tree whose leaves hold priorities and each inner node the sum below it: setting a priority
    and finding the leaf at a cumulative mass both take O(log N), for a whole batch at once."""

    def __init__(self, capacity: int) -> None:
        self.leaves = 1 << max(capacity - 1, 0).bit_length()  # a power of two >= capacity
        self.nodes = np.zeros(2 * self.leaves)  # node 1 is the root; leaf i is node leaves + i

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, index: np.ndarray) -> np.ndarray:
        return self.nodes[self.leaves + index]

    def set(self, index: np.ndarray, priority: np.ndarray) -> None:
        node = self.leaves + np.asarray(index)
        self.nodes[node] = priority
        node = np.unique(node // 2)
        while node[0] >= 1:
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]
            node = np.unique(node // 2)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf where each cumulative ``mass`` falls, descending all of them level by level."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = mass.copy()
        while node[0] < self.leaves:
            left = 2 * node
            # go right only where the mass is beyond the left subtree and the right one holds some
            right = (mass > self.nodes[left]) & (self.nodes[left + 1] > 0)
            mass = np.where(right, mass - self.nodes[left], mass)
            node = np.where(right, left + 1, left)
        return node - self.leaves


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): P(i) = p_i^alpha / sum_k p_k^alpha, with
    importance weights (N P(i))^-beta normalised by the batch's largest. New transitions get the largest
    priority seen so far, so each is replayed at least about once."""

    def __init__(self, capacity, obs_shape, obs_dtype, rng, alpha: float, eps: float) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, rng)
        self.alpha, self.eps = alpha, eps
        self.tree = SumTree(capacity)
        self.max_priority = 1.0

    def add(self, obs, actions, rewards, next_obs, terminated, horizons=1) -> np.ndarray:
        index = super().add(obs, actions, rewards, next_obs, terminated, horizons)
        self.tree.set(index, np.full(len(index), self.max_priority**self.alpha))
        return index

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        # stratified: one draw from each of batch_size equal slices of the total mass
        bounds = (np.arange(batch_size) + self.rng.random(batch_size)) * (self.tree.total / batch_size)
        index = np.minimum(self.tree.find(bounds), self.size - 1)
        probabilities = self.tree.get(index) / self.tree.total
        weights = (self.size * probabilities) ** -beta
        return self._batch(index, (weights / weights.max()).astype(np.float32))

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.set(indices, priorities**self.alpha)

    def stored(self) -> dict[str, np.ndarray]:
        return {
            **super().stored(),
            "priorities": self.tree.get(np.arange(self.size)),
            "max_priority": np.array([self.max_priority]),
        }

    def restore(self, arrays: dict[str, np.ndarray], position: int, size: int) -> None:
        super().restore(arrays, position, size)
        self.tree = SumTree(self.capacity)
        self.tree.set(np.arange(size), arrays["priorities"])
        self.max_priority = float(arrays["max_priority"][0])


def make_replay(
    hp, obs_shape: tuple[int, ...], obs_dtype: np.dtype, rng: np.random.Generator
) -> ReplayBuffer:
    if hp.prioritized_replay:
        return PrioritizedReplayBuffer(
            hp.buffer_size, obs_shape, obs_dtype, rng, hp.prioritized_replay_alpha, hp.prioritized_replay_eps
        )
    return ReplayBuffer(hp.buffer_size, obs_shape, obs_dtype, rng)


class NStepAccumulator:
    """Turns each env's stream of steps into n-step transitions (s_t, a_t, sum_k gamma^k r_t+k, s_t+h, h).

    A transition leaves once n rewards are summed. When an episode ends, every pending transition leaves
    with the rewards up to the end: after a termination it does not bootstrap; after a truncation it
    bootstraps from the true final observation with gamma ** (steps to the end).
    """

    def __init__(self, n: int, gamma: float, n_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.pending: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(n_envs)]

    def _emit(self, env: int, count: int, next_obs: np.ndarray, terminated: bool, out: list) -> None:
        steps = self.pending[env]
        for start in range(count):
            horizon = len(steps) - start
            ret = sum(self.gamma**k * steps[start + k][2] for k in range(horizon))
            out.append((steps[start][0], steps[start][1], ret, next_obs, terminated, horizon))
        del steps[:count]

    def state(self) -> dict[str, np.ndarray]:
        """Pending steps per env as arrays, for checkpoints."""
        arrays = {}
        for env, steps in enumerate(self.pending):
            if steps:
                obs, actions, rewards = zip(*steps, strict=True)
                arrays |= {
                    f"{env}/obs": np.stack(obs),
                    f"{env}/actions": np.array(actions),
                    f"{env}/rewards": np.array(rewards),
                }
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for env in range(len(self.pending)):
            if f"{env}/obs" in arrays:
                obs, actions, rewards = (arrays[f"{env}/{k}"] for k in ("obs", "actions", "rewards"))
                self.pending[env] = [
                    (o, int(a), float(r)) for o, a, r in zip(obs, actions, rewards, strict=True)
                ]
            else:
                self.pending[env] = []

    def add(
        self, obs, actions, rewards, real_next_obs, terminated, truncated
    ) -> tuple[np.ndarray, ...] | None:
        """Take one vector step; returns the finished transitions as arrays (or None if there are none)."""
        out: list = []
        for env in range(len(actions)):
            self.pending[env].append((obs[env], int(actions[env]), float(rewards[env])))
            if terminated[env] or truncated[env]:
                self._emit(env, len(self.pending[env]), real_next_obs[env], bool(terminated[env]), out)
            elif len(self.pending[env]) == self.n:
                self._emit(env, 1, real_next_obs[env], False, out)
        if not out:
            return None
        obs_, actions_, returns, next_obs, terms, horizons = zip(*out, strict=True)
        return (
            np.stack(obs_),
            np.array(actions_),
            np.array(returns, dtype=np.float32),
            np.stack(next_obs),
            np.array(terms, dtype=np.float32),
            np.array(horizons, dtype=np.float32),
        )
