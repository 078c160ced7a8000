import numpy as np
import pytest

from dqn_cli.replay import ReplayBuffer


def _add(buffer: ReplayBuffer, start: int, count: int) -> None:
    """Transitions whose every field encodes their id, so a sample can be checked for consistency."""
    ids = np.arange(start, start + count)
    obs = np.repeat(ids[:, None], 3, axis=1).astype(np.float32)
    buffer.add(obs, ids, ids.astype(np.float32), obs + 0.5, (ids % 2).astype(np.float32))


def test_wraps_around_and_overwrites_the_oldest():
    buffer = ReplayBuffer(5, (3,), np.float32, np.random.default_rng(0))
    _add(buffer, 0, 3)
    assert len(buffer) == 3 and buffer.position == 3
    _add(buffer, 3, 4)  # ids 3..6: 5 and 6 overwrite slots 0 and 1
    assert len(buffer) == 5 and buffer.position == 2
    assert buffer.actions.tolist() == [5, 6, 2, 3, 4]
    assert buffer.obs[0].tolist() == [5, 5, 5]
    assert buffer.next_obs[1].tolist() == [6.5, 6.5, 6.5]


def test_batch_larger_than_capacity_keeps_the_newest():
    buffer = ReplayBuffer(4, (3,), np.float32, np.random.default_rng(0))
    _add(buffer, 0, 2)
    _add(buffer, 2, 3)
    assert sorted(buffer.actions.tolist()) == [1, 2, 3, 4]


def test_samples_whole_stored_transitions_only():
    buffer = ReplayBuffer(100, (3,), np.float32, np.random.default_rng(1))
    _add(buffer, 0, 30)
    batch = buffer.sample(512)
    assert batch.obs.shape == (512, 3) and batch.actions.dtype == np.int64
    assert set(batch.actions.tolist()) <= set(range(30))
    assert np.all(batch.obs[:, 0] == batch.actions)
    assert np.all(batch.next_obs[:, 0] == batch.actions + 0.5)
    assert np.all(batch.rewards == batch.actions)
    assert np.all(batch.terminated == batch.actions % 2)


def test_sampling_is_uniform_over_stored_transitions():
    buffer = ReplayBuffer(10, (3,), np.float32, np.random.default_rng(2))
    _add(buffer, 0, 10)
    counts = np.bincount(buffer.sample(20_000).actions, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200


def test_same_seed_same_samples():
    batches = []
    for _ in range(2):
        buffer = ReplayBuffer(10, (3,), np.float32, np.random.default_rng(7))
        _add(buffer, 0, 10)
        batches.append(buffer.sample(8).actions)
    assert np.array_equal(*batches)


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(ValueError):
        ReplayBuffer(4, (3,), np.float32, np.random.default_rng(0)).sample(1)
