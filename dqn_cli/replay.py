"""Experience replay in small parts, as in Dopamine, behind one facade (``Replay``) that is all the
training loop sees:

- how observations are kept: copied (vectors), or as references into a ``FrameStore`` that holds each
  Atari frame once;
- an accumulator that turns env steps into transitions: one-step, or n-step returns;
- the storage: preallocated ring arrays, no per-step allocation;
- the sampler: uniform, or proportional to priority through a sum tree.

Each part has ``state_dict`` / ``load_state_dict`` (see ``state.py``), so a checkpoint restores replay
exactly, pending n-step transitions and priorities included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.observations import is_frame_stack
from dqn_cli.state import State, Stateless, nest, section


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


@dataclass
class EnvStep:
    """One vector-env step as replay needs it.

    ``rewards`` and ``terminal`` are what learning sees (clipped, a lost life terminal where asked);
    ``game_over`` and ``truncated`` are the env's own episode ends. ``reached`` is the observation each
    env reached (the final one where an episode ended), ``next_obs`` where each env is now.
    """

    actions: np.ndarray
    rewards: np.ndarray
    terminal: np.ndarray
    game_over: np.ndarray
    truncated: np.ndarray
    reached: np.ndarray
    next_obs: np.ndarray

    @property
    def done(self) -> np.ndarray:
        return self.game_over | self.truncated


# ------------------------------------------------------------------------------- how observations are kept


class CopiedObservations(Stateless):
    """Vector observations, and categorical ones as their integers (the network one-hot encodes them):
    replay stores the observations themselves."""

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
        self.key_shape, self.key_dtype = obs_shape, np.dtype(obs_dtype)

    def start(self, obs: np.ndarray) -> np.ndarray:
        return obs

    def follow(self, keys: np.ndarray, step: EnvStep) -> tuple[np.ndarray, np.ndarray]:
        return step.reached, step.next_obs

    def observations(self, keys: np.ndarray) -> np.ndarray:
        return keys

    def allocated_bytes(self) -> int:
        return 0


class FrameStore:
    """Stacked-frame observations with each frame stored once (Atari: 7 KB per env step instead of the
    56 KB of an (obs, next_obs) pair of 4-frame stacks).

    Frames live in a ring, addressed by references that count every frame ever written (slot =
    reference % capacity). Each frame links to the frame before it in the same episode, or to -1 at an
    episode's first observation, whose older stack entries the env fills with zeros. An observation is
    the reference of its newest frame; its stack is rebuilt by following the links, zeros past the start.
    """

    key_shape: tuple[int, ...] = ()
    key_dtype = np.dtype(np.int64)

    def __init__(self, capacity: int, stack: int, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.capacity, self.stack = capacity, stack
        self.frames = np.zeros((capacity, *frame_shape), dtype=dtype)
        self.links = np.zeros(capacity, dtype=np.int64)  # only written slots are ever read
        self.count = 0  # frames written so far: the next reference

    def _write(self, newest_frames: np.ndarray, links: np.ndarray | int) -> np.ndarray:
        refs = self.count + np.arange(len(newest_frames))
        self.frames[refs % self.capacity] = newest_frames
        self.links[refs % self.capacity] = links
        self.count += len(newest_frames)
        return refs

    def start(self, obs: np.ndarray) -> np.ndarray:
        """Store episodes' first observations (stacks whose older frames are padding); returns refs."""
        if obs[:, :-1].any():
            raise ValueError("an episode's first observation must have zeros before its newest frame")
        return self._write(obs[:, -1], -1)

    def extend(self, previous: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Store observations that follow the observations ``previous`` in their episodes; returns refs."""
        return self._write(obs[:, -1], previous)

    def follow(self, refs: np.ndarray, step: EnvStep) -> tuple[np.ndarray, np.ndarray]:
        """Store one vector-env step that left each env's observation ``refs``; returns the references of
        each transition's next observation and of each env's new current observation.

        A game-over transition's next observation is never used, so its frame is not stored (the
        reference repeats ``refs``).
        """
        stored_next = refs.copy()
        carry_on = ~step.game_over
        stored_next[carry_on] = self.extend(refs[carry_on], step.reached[carry_on])
        current = stored_next.copy()
        done = step.done
        if done.any():
            current[done] = self.start(step.next_obs[done])
        return stored_next, current

    def observations(self, refs: np.ndarray) -> np.ndarray:
        """Rebuild the observations ``refs`` point to, shape (len(refs), stack, *frame_shape)."""
        out = np.zeros((len(refs), self.stack, *self.frames.shape[1:]), dtype=self.frames.dtype)
        refs = np.asarray(refs, dtype=np.int64)
        for position in range(self.stack - 1, -1, -1):
            present = refs >= 0
            if (refs[present] < self.count - self.capacity).any():
                raise RuntimeError("frame replay: a stored observation's frames were overwritten")
            out[present, position] = self.frames[refs[present] % self.capacity]
            refs = np.where(present, self.links[refs % self.capacity], -1)
        return out

    def allocated_bytes(self) -> int:
        return self.frames.nbytes + self.links.nbytes

    def state_dict(self) -> State:
        kept = min(self.count, self.capacity)
        return {"frames": self.frames[:kept], "links": self.links[:kept], "count": self.count}

    def load_state_dict(self, state: State) -> None:
        count = int(state["count"])
        kept = min(count, self.capacity)
        if state["frames"].shape != (kept, *self.frames.shape[1:]) or state["links"].shape != (kept,):
            raise ValueError(f"stored frames have shape {state['frames'].shape}, expected {kept} frames")
        self.frames[:kept], self.links[:kept], self.count = state["frames"], state["links"], count


def frame_capacity(hp: Hyperparameters, stack: int) -> int:
    """Frames to keep for ``buffer_size`` transitions. Each env step writes one frame (the next
    observation's newest; a terminal transition's next observation is never used, so not stored), plus the
    first frame of the next episode after a time-limit cut. Beyond the transitions' own frames the ring
    holds the oldest transitions' older stack frames, the n-step transitions still being summed, and
    room for one time-limit cut per 100 transitions (Atari cuts games at 27,000 agent steps).
    ``observations`` raises rather than return a wrong frame, should that room ever run out."""
    return hp.buffer_size + hp.n_envs * (stack + hp.longest_horizon + 1) + max(hp.buffer_size // 100, 64)


# ----------------------------------------------------------------------------------------- accumulators

Transitions = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class OneStep(Stateless):
    """Each env step is one transition (the paper's DQN): (s, a, r, s', terminal, horizon 1)."""

    n = 1

    def __init__(self, n_envs: int) -> None:
        self.horizons = np.ones(n_envs, dtype=np.float32)  # read only: shared by every step's transitions

    def add(self, keys, actions, rewards, next_keys, terminal, truncated) -> Transitions:
        return keys, actions, rewards, next_keys, terminal, self.horizons

    def clear(self) -> None:
        pass


class NStepAccumulator:
    """Turns each env's stream of steps into n-step transitions (s_t, a_t, sum_k gamma^k r_t+k, s_t+h, h).

    A transition leaves once n rewards are summed; when ``n`` shrinks (an annealed horizon), those
    already past it leave at once, each with all its rewards. When an episode ends, every pending
    transition leaves with the rewards up to the end: after a termination it does not bootstrap; after a
    truncation it bootstraps from the true final observation with gamma ** (steps to the end).
    """

    def __init__(self, n: int, gamma: float, n_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.pending: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(n_envs)]

    def _emit(self, env: int, count: int, next_key: np.ndarray, terminated: bool, out: list) -> None:
        steps = self.pending[env]
        for start in range(count):
            horizon = len(steps) - start
            ret = sum(self.gamma**k * steps[start + k][2] for k in range(horizon))
            out.append((steps[start][0], steps[start][1], ret, next_key, terminated, horizon))
        del steps[:count]

    def add(self, keys, actions, rewards, next_keys, terminal, truncated) -> Transitions | None:
        """Take one vector step; returns the finished transitions as arrays (or None if there are none)."""
        out: list = []
        for env in range(len(actions)):
            self.pending[env].append((keys[env], int(actions[env]), float(rewards[env])))
            if terminal[env] or truncated[env]:
                self._emit(env, len(self.pending[env]), next_keys[env], bool(terminal[env]), out)
            elif len(self.pending[env]) >= self.n:
                self._emit(env, len(self.pending[env]) - self.n + 1, next_keys[env], False, out)
        if not out:
            return None
        keys_, actions_, returns, next_keys_, terms, horizons = zip(*out, strict=True)
        return (
            np.stack(keys_),
            np.array(actions_),
            np.array(returns, dtype=np.float32),
            np.stack(next_keys_),
            np.array(terms, dtype=np.float32),
            np.array(horizons, dtype=np.float32),
        )

    def clear(self) -> None:
        """Episodes in flight restarted (a resume that could not restore the envs): drop their steps."""
        self.pending = [[] for _ in self.pending]

    def state_dict(self) -> State:
        state: State = {}
        for env, steps in enumerate(self.pending):
            if steps:
                keys, actions, rewards = zip(*steps, strict=True)
                state |= {
                    f"{env}/keys": np.stack(keys),
                    f"{env}/actions": np.array(actions),
                    f"{env}/rewards": np.array(rewards),
                }
        return state

    def load_state_dict(self, state: State) -> None:
        for env in range(len(self.pending)):
            if f"{env}/keys" in state:
                keys, actions, rewards = (state[f"{env}/{k}"] for k in ("keys", "actions", "rewards"))
                self.pending[env] = [
                    (o, int(a), float(r)) for o, a, r in zip(keys, actions, rewards, strict=True)
                ]
            else:
                self.pending[env] = []


# ---------------------------------------------------------------------------------------------- storage


class TransitionStorage:
    """Ring arrays of transitions. ``terminated`` is stored, truncation is not: a time-limit cut is no
    terminal state, so its transition bootstraps from the real next observation. ``obs`` and ``next_obs``
    hold observation keys: the observations, or frame references."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "horizons")

    def __init__(self, capacity: int, key_shape: tuple[int, ...], key_dtype: np.dtype) -> None:
        self.capacity = capacity
        # np.zeros maps memory lazily: nothing is touched until written, so building is instant
        self.obs = np.zeros((capacity, *key_shape), dtype=key_dtype)
        self.next_obs = np.zeros((capacity, *key_shape), dtype=key_dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.horizons = np.zeros(capacity, dtype=np.float32)
        self.position = 0  # where the next transition goes
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminated, horizons) -> np.ndarray:
        """Store a batch of transitions, overwriting the oldest once full; returns the slots used."""
        index = self.position + np.arange(len(actions))
        # a slice where the slots do not wrap around: writing through one is several times cheaper
        slots = slice(index[0], index[-1] + 1) if index[-1] < self.capacity else index % self.capacity
        self.obs[slots] = obs
        self.next_obs[slots] = next_obs
        self.actions[slots] = actions
        self.rewards[slots] = rewards
        self.terminated[slots] = terminated
        self.horizons[slots] = horizons
        index %= self.capacity
        self.position = int(index[-1] + 1) % self.capacity
        self.size = min(self.size + len(actions), self.capacity)
        return index

    def allocated_bytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.FIELDS)

    def state_dict(self) -> State:
        """The filled part of each array (views, no copy)."""
        arrays = {name: getattr(self, name)[: self.size] for name in self.FIELDS}
        return {**arrays, "position": self.position, "size": self.size}

    def load_state_dict(self, state: State) -> None:
        position, size = int(state["position"]), int(state["size"])
        if not 0 <= position < self.capacity or not 0 <= size <= self.capacity:
            raise ValueError(f"replay position {position} / size {size} do not fit capacity {self.capacity}")
        for name in self.FIELDS:
            target, source = getattr(self, name), state[name]
            if source.shape != (size, *target.shape[1:]) or source.dtype != target.dtype:
                raise ValueError(
                    f"replay {name} has shape {source.shape} {source.dtype}, "
                    f"expected {(size, *target.shape[1:])} {target.dtype}"
                )
            target[:size] = source
        self.position, self.size = position, size


# --------------------------------------------------------------------------------------------- samplers


class UniformSampler(Stateless):
    """Every stored transition equally likely, drawn with replacement (like SB3)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def added(self, index: np.ndarray) -> None:
        pass

    def sample(self, batch_size: int, size: int, beta: float) -> tuple[np.ndarray, np.ndarray | None]:
        return self.rng.integers(0, size, size=batch_size), None

    def allocated_bytes(self) -> int:
        return 0


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
        node = self.leaves + np.asarray(index, dtype=np.int64)
        if node.size == 0:
            return
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


class PrioritizedSampler:
    """Proportional prioritized replay (Schaul et al. 2016): P(i) = p_i^alpha / sum_k p_k^alpha, with
    importance weights (N P(i))^-beta normalised by the batch's largest. New transitions get the largest
    priority seen so far, so each is replayed at least about once."""

    def __init__(self, capacity: int, alpha: float, eps: float, rng: np.random.Generator) -> None:
        self.capacity, self.alpha, self.eps, self.rng = capacity, alpha, eps, rng
        self.tree = SumTree(capacity)
        self.max_priority = 1.0
        self.size = 0  # leaves in use, for checkpoints

    def added(self, index: np.ndarray) -> None:
        self.tree.set(index, np.full(len(index), self.max_priority**self.alpha))
        self.size = min(self.capacity, max(self.size, int(index.max()) + 1))

    def sample(self, batch_size: int, size: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        # stratified: one draw from each of batch_size equal slices of the total mass
        bounds = (np.arange(batch_size) + self.rng.random(batch_size)) * (self.tree.total / batch_size)
        index = np.minimum(self.tree.find(bounds), size - 1)
        probabilities = self.tree.get(index) / self.tree.total
        weights = (size * probabilities) ** -beta
        return index, (weights / weights.max()).astype(np.float32)

    def update(self, index: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.set(index, priorities**self.alpha)

    def allocated_bytes(self) -> int:
        return self.tree.nodes.nbytes

    def state_dict(self) -> State:
        return {"priorities": self.tree.get(np.arange(self.size)), "max_priority": self.max_priority}

    def load_state_dict(self, state: State) -> None:
        priorities = state["priorities"]
        if len(priorities) > self.capacity:
            raise ValueError(f"{len(priorities)} stored priorities do not fit capacity {self.capacity}")
        self.tree = SumTree(self.capacity)
        self.tree.set(np.arange(len(priorities)), priorities)
        self.size, self.max_priority = len(priorities), float(state["max_priority"])


# ---------------------------------------------------------------------------------------------- facade


class Replay:
    """The replay memory as the training loop sees it: ``start`` episodes, ``add_step`` each vector
    step, ``sample`` batches, ``update_priorities`` after an update. Which observation keeping,
    accumulator and sampler sit behind it follows from the hyperparameters and the observations."""

    def __init__(
        self, hp: Hyperparameters, obs_shape: tuple[int, ...], obs_dtype: np.dtype, rng: np.random.Generator
    ) -> None:
        self.keeping: CopiedObservations | FrameStore
        if is_frame_stack(obs_shape, obs_dtype):
            stack = obs_shape[0]
            self.keeping = FrameStore(frame_capacity(hp, stack), stack, obs_shape[1:], np.dtype(obs_dtype))
        else:
            self.keeping = CopiedObservations(obs_shape, obs_dtype)
        self.accumulator = (
            NStepAccumulator(hp.horizon(0), hp.gamma, hp.n_envs)
            if hp.longest_horizon > 1
            else OneStep(hp.n_envs)
        )
        self.storage = TransitionStorage(hp.buffer_size, self.keeping.key_shape, self.keeping.key_dtype)
        self.sampler: UniformSampler | PrioritizedSampler = (
            PrioritizedSampler(hp.buffer_size, hp.prioritized_replay_alpha, hp.prioritized_replay_eps, rng)
            if hp.prioritized_replay
            else UniformSampler(rng)
        )
        self.current: np.ndarray = np.zeros((hp.n_envs, *self.keeping.key_shape), self.keeping.key_dtype)

    def __len__(self) -> int:
        return self.storage.size

    def start(self, obs: np.ndarray) -> None:
        """Every env begins a new episode at ``obs`` (a reset): nothing pending carries over."""
        self.current = self.keeping.start(obs)
        self.accumulator.clear()

    def set_horizon(self, n: int) -> None:
        """The n of the n-step returns of the steps added from now on (``Hyperparameters.horizon``)."""
        if n > 1 and isinstance(self.accumulator, OneStep):
            raise ValueError(f"a one-step replay cannot make {n}-step returns")
        self.accumulator.n = n

    def add_step(self, step: EnvStep) -> None:
        """Store what one vector step taught: a transition per env, or, with n-step returns, those whose
        n rewards (or episode) are complete."""
        next_keys, current = self.keeping.follow(self.current, step)
        ready = self.accumulator.add(
            self.current, step.actions, step.rewards, next_keys, step.terminal, step.truncated
        )
        self.current = current
        if ready is not None:
            self.sampler.added(self.storage.add(*ready))

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        """``batch_size`` stored transitions, uniformly or by priority (``beta``: importance exponent)."""
        if self.storage.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index, weights = self.sampler.sample(batch_size, self.storage.size, beta)
        s, observations = self.storage, self.keeping.observations
        return Batch(
            obs=observations(s.obs[index]),
            actions=s.actions[index],
            rewards=s.rewards[index],
            next_obs=observations(s.next_obs[index]),
            terminated=s.terminated[index],
            horizons=s.horizons[index],
            weights=weights,
            indices=index,
        )

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray | None) -> None:
        """New priorities from a batch's TD errors (None from a uniform batch: nothing to do)."""
        if td_errors is not None:
            self.sampler.update(indices, td_errors)

    def allocated_bytes(self) -> int:
        """Bytes of every array replay holds, filled or not: what it will take once full."""
        parts = (self.keeping, self.storage, self.sampler)
        return sum(part.allocated_bytes() for part in parts) + self.current.nbytes

    def _parts(self) -> dict[str, Any]:
        return {
            "observations": self.keeping,
            "accumulator": self.accumulator,
            "storage": self.storage,
            "sampler": self.sampler,
        }

    def state_dict(self) -> State:
        return {
            **nest({name: part.state_dict() for name, part in self._parts().items()}),
            "current": self.current,
        }

    def load_state_dict(self, state: State) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(section(state, name))
        if state["current"].shape != self.current.shape:
            raise ValueError(
                f"replay holds {len(state['current'])} envs' observations, expected {len(self.current)}"
            )
        self.current = state["current"]
