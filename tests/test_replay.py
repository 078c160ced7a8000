"""Replay: the ring storage, uniform sampling, and the facade the training loop feeds step by step."""

import numpy as np
import pytest

from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.replay import EnvStep, Replay, TransitionStorage


def _add(storage: TransitionStorage, start: int, count: int) -> None:
    """Transitions whose every field encodes their id, so a sample can be checked for consistency."""
    ids = np.arange(start, start + count)
    obs = np.repeat(ids[:, None], 3, axis=1).astype(np.float32)
    storage.add(obs, ids, ids.astype(np.float32), obs + 0.5, (ids % 2).astype(np.float32), 1)


def _replay(capacity: int, seed: int, **overrides) -> Replay:
    hp = apply_overrides(Hyperparameters(), {"buffer_size": capacity, **overrides})
    return Replay(hp, (3,), np.dtype(np.float32), np.random.default_rng(seed))


def _feed(replay: Replay, start: int, count: int, step: int = 1) -> None:
    """One env step per id through the facade, as the rollout feeds it; odd ids are terminal."""
    for i in range(start, start + count * step, step):
        ids = np.array([i])
        replay.start(np.full((1, 3), i, dtype=np.float32))
        no = np.zeros(1, dtype=bool)
        reached = np.full((1, 3), i + 0.5, dtype=np.float32)
        replay.add_step(EnvStep(ids, ids.astype(np.float32), ids % 2 == 1, no, no, reached, reached))


def test_wraps_around_and_overwrites_the_oldest():
    storage = TransitionStorage(5, (3,), np.dtype(np.float32))
    _add(storage, 0, 3)
    assert storage.size == 3 and storage.position == 3
    _add(storage, 3, 4)  # ids 3..6: 5 and 6 overwrite slots 0 and 1
    assert storage.size == 5 and storage.position == 2
    assert storage.actions.tolist() == [5, 6, 2, 3, 4]
    assert storage.obs[0].tolist() == [5, 5, 5]
    assert storage.next_obs[1].tolist() == [6.5, 6.5, 6.5]


def test_batch_larger_than_capacity_keeps_the_newest():
    storage = TransitionStorage(4, (3,), np.dtype(np.float32))
    _add(storage, 0, 2)
    _add(storage, 2, 3)
    assert sorted(storage.actions.tolist()) == [1, 2, 3, 4]


def test_samples_whole_stored_transitions_only():
    replay = _replay(100, seed=1)
    _feed(replay, 0, 30)
    batch = replay.sample(512)
    assert batch.obs.shape == (512, 3) and batch.actions.dtype == np.int64 and batch.weights is None
    assert set(batch.actions.tolist()) <= set(range(30))
    assert np.all(batch.obs[:, 0] == batch.actions)
    assert np.all(batch.next_obs[:, 0] == batch.actions + 0.5)
    assert np.all(batch.rewards == batch.actions)
    assert np.all(batch.terminated == batch.actions % 2)
    assert np.all(batch.horizons == 1)


def test_sampling_is_uniform_over_stored_transitions():
    replay = _replay(10, seed=2)
    _feed(replay, 0, 10)
    counts = np.bincount(replay.sample(20_000).actions, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200


def test_same_seed_same_samples():
    batches = []
    for _ in range(2):
        replay = _replay(10, seed=7)
        _feed(replay, 0, 10)
        batches.append(replay.sample(8).actions)
    assert np.array_equal(*batches)


def test_empty_replay_refuses_to_sample():
    with pytest.raises(ValueError):
        _replay(4, seed=0).sample(1)


def test_a_new_episode_drops_the_n_step_transitions_still_pending():
    replay = _replay(10, seed=0, n_step=3)
    _feed(replay, 0, 4, step=2)  # ids 0, 2, 4, 6, none terminal, each in a new episode
    assert len(replay) == 0  # each start dropped the one step pending before it
    state = replay.state_dict()
    assert state["accumulator/0/actions"].tolist() == [6]  # the last step waits for two more rewards
