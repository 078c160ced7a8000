"""Experience replay in small parts, as in Dopamine: an n-step accumulator that turns env steps into
transitions, the storage (preallocated arrays, no per-step allocation; stacked frames stored once each),
and the sampler (uniform, or proportional to priority through a sum tree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqn_cli.errors import UserError


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


class FrameStore:
    """Stacked-frame observations with each frame stored once (Atari: 7 KB per env step instead of the
    56 KB of an (obs, next_obs) pair of 4-frame stacks).

    Frames live in a ring, addressed by references that count every frame ever written (slot =
    reference % capacity). Each frame links to the frame before it in the same episode, or to -1 at an
    episode's first observation, whose older stack entries the env fills with zeros. An observation is
    the reference of its newest frame; its stack is rebuilt by following the links, zeros past the start.
    """

    def __init__(self, capacity: int, stack: int, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.capacity, self.stack = capacity, stack
        self.frames = np.zeros((capacity, *frame_shape), dtype=dtype)
        self.links = np.full(capacity, -1, dtype=np.int64)
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

    def follow(
        self,
        refs: np.ndarray,
        real_next: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        done: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store one vector-env step that left each env's observation ``refs``; returns the references of
        each transition's next observation and of each env's new current observation.

        ``real_next`` is what each env reached (the final observation where an episode ended), ``next_obs``
        where each env is now (a new episode's first observation there). A game-over transition's next
        observation is never used, so its frame is not stored (the reference repeats ``refs``).
        """
        stored_next = refs.copy()
        carry_on = ~terminated
        stored_next[carry_on] = self.extend(refs[carry_on], real_next[carry_on])
        current = stored_next.copy()
        if done.any():
            current[done] = self.start(next_obs[done])
        return stored_next, current

    def stacks(self, refs: np.ndarray) -> np.ndarray:
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

    def stored(self) -> dict[str, np.ndarray]:
        kept = min(self.count, self.capacity)
        return {"frames": self.frames[:kept], "links": self.links[:kept], "count": np.array([self.count])}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        count = int(arrays["count"][0])
        kept = min(count, self.capacity)
        if arrays["frames"].shape != (kept, *self.frames.shape[1:]) or arrays["links"].shape != (kept,):
            raise ValueError(f"stored frames have shape {arrays['frames'].shape}, expected {kept} frames")
        self.frames[:kept], self.links[:kept], self.count = arrays["frames"], arrays["links"], count


class ReplayBuffer:
    """Ring buffer of transitions, sampled uniformly. ``terminated`` is stored, truncation is not: a
    time-limit cut is no terminal state, so its transition bootstraps from the real next observation.

    With a ``FrameStore``, ``obs`` and ``next_obs`` hold frame references and batches rebuild the stacks.
    """

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "horizons")

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        rng: np.random.Generator,
        frames: FrameStore | None = None,
    ):
        self.capacity = capacity
        self.rng = rng
        self.frames = frames
        if frames is not None:
            obs_shape, obs_dtype = (), np.dtype(np.int64)
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

    def allocated_bytes(self) -> int:
        """Bytes of the transition and frame arrays, filled or not (a sum tree not included)."""
        arrays = [getattr(self, name) for name in self._FIELDS]
        if self.frames is not None:
            arrays += [self.frames.frames, self.frames.links]
        return sum(array.nbytes for array in arrays)

    def stored(self) -> dict[str, np.ndarray]:
        """The filled part of each array (views, no copy), for checkpoints."""
        arrays = {name: getattr(self, name)[: self.size] for name in self._FIELDS}
        if self.frames is not None:
            arrays |= {f"frames/{name}": array for name, array in self.frames.stored().items()}
        return arrays

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
        if self.frames is not None:
            self.frames.restore({k[7:]: v for k, v in arrays.items() if k.startswith("frames/")})
        self.position, self.size = position, size

    def _observations(self, stored: np.ndarray) -> np.ndarray:
        return stored if self.frames is None else self.frames.stacks(stored)

    def _batch(self, index: np.ndarray, weights: np.ndarray | None) -> Batch:
        return Batch(
            obs=self._observations(self.obs[index]),
            actions=self.actions[index],
            rewards=self.rewards[index],
            next_obs=self._observations(self.next_obs[index]),
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

    def __init__(self, capacity, obs_shape, obs_dtype, rng, alpha: float, eps: float, frames=None) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, rng, frames)
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


def frame_capacity(hp, stack: int) -> int:
    """Frames to keep for ``buffer_size`` transitions. Each env step writes one frame (the next
    observation's newest; a terminal transition's next observation is never used, so not stored), plus the
    first frame of the next episode after a time-limit cut. Beyond the transitions' own frames the ring
    holds the oldest transitions' older stack frames, the n-step transitions still being summed, and
    room for one time-limit cut per 100 transitions (Atari cuts games at 27,000 agent steps). ``stacks``
    raises rather than return a wrong frame, should that room ever run out."""
    return hp.buffer_size + hp.n_envs * (stack + hp.n_step + 1) + max(hp.buffer_size // 100, 64)


def uses_frame_store(obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> bool:
    return len(obs_shape) == 3 and np.dtype(obs_dtype) == np.uint8


def replay_bytes(hp, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> int:
    """Memory the replay buffer will fill, computed before allocating it."""
    per_transition = 8 + 4 + 4 + 4  # action, reward, terminated, horizon
    if hp.prioritized_replay:
        per_transition += 16  # the sum tree: about two float64 nodes per leaf
    if uses_frame_store(obs_shape, obs_dtype):
        frame_bytes = int(np.prod(obs_shape[1:])) * np.dtype(obs_dtype).itemsize + 8  # frame + link
        return hp.buffer_size * (per_transition + 2 * 8) + frame_capacity(hp, obs_shape[0]) * frame_bytes
    obs_bytes = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    return hp.buffer_size * (per_transition + 2 * obs_bytes)


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_replay_fits(hp, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
    """Fail before training, in one line, when the buffer would outgrow memory hours into a run (the
    arrays are allocated lazily, so nothing else would notice until the kernel kills the process)."""
    needed, available = replay_bytes(hp, obs_shape, obs_dtype), available_memory()
    if available is not None and needed > available:
        raise UserError(
            f"a replay buffer of {hp.buffer_size:,} transitions needs {needed / 1e9:.1f} GB but only "
            f"{available / 1e9:.1f} GB of memory is available; lower buffer_size (--set buffer_size=N)"
        )


def make_replay(
    hp, obs_shape: tuple[int, ...], obs_dtype: np.dtype, rng: np.random.Generator
) -> ReplayBuffer:
    frames = None
    if uses_frame_store(obs_shape, obs_dtype):
        frames = FrameStore(frame_capacity(hp, obs_shape[0]), obs_shape[0], obs_shape[1:], obs_dtype)
    if hp.prioritized_replay:
        return PrioritizedReplayBuffer(
            hp.buffer_size,
            obs_shape,
            obs_dtype,
            rng,
            hp.prioritized_replay_alpha,
            hp.prioritized_replay_eps,
            frames,
        )
    return ReplayBuffer(hp.buffer_size, obs_shape, obs_dtype, rng, frames)


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
