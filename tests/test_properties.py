"""Property-based tests (hypothesis) for config parsing and the replay buffer's invariants."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, parse_set_option
from dqn_cli.replay import TransitionStorage

NAMES = Hyperparameters.names()
values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.lists(st.integers(-5, 600), max_size=4),
)


@given(key=st.sampled_from(NAMES), value=values)
def test_any_value_is_accepted_as_typed_or_refused_with_one_line(key, value):
    try:
        hp = apply_overrides(Hyperparameters(), {key: value})
    except UserError as exc:
        assert key in str(exc) and "\n" not in str(exc)
        return
    stored = getattr(hp, key)
    assert type(stored) is type(getattr(Hyperparameters(), key))
    if isinstance(stored, float) and math.isfinite(stored):
        assert stored == float(value)


@given(key=st.text(min_size=1, max_size=20).filter(lambda k: k not in NAMES), value=values)
def test_unknown_keys_are_always_refused(key, value):
    try:
        apply_overrides(Hyperparameters(), {key: value})
    except UserError as exc:
        assert "unknown hyperparameter" in str(exc)
    else:
        raise AssertionError("an unknown key was accepted")


@given(item=st.text(max_size=40))
def test_set_option_never_crashes(item):
    try:
        key, value = parse_set_option(item)
        apply_overrides(Hyperparameters(), {key: value})
    except UserError as exc:
        assert "\n" not in str(exc)


@given(key=st.sampled_from(NAMES), value=values)
def test_accepted_values_survive_the_config_file_round_trip(key, value):
    try:
        hp = apply_overrides(Hyperparameters(), {key: value})
    except UserError:
        return
    reread = tomllib.loads(tomli_w.dumps({"hyperparameters": hp.to_dict()}))["hyperparameters"]
    assert apply_overrides(Hyperparameters(), reread) == hp


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 12), batches=st.lists(st.integers(1, 15), min_size=1, max_size=12))
def test_replay_keeps_exactly_the_newest_transitions_in_ring_order(capacity, batches):
    storage = TransitionStorage(capacity, (2,), np.dtype(np.float32))
    next_id = 0
    for size in batches:
        ids = np.arange(next_id, next_id + size)
        storage.add(np.stack([ids, ids], 1), ids, ids, np.stack([ids, ids], 1) + 0.5, ids % 2, 1)
        next_id += size
    total = next_id
    assert storage.size == min(total, capacity)
    assert storage.position == total % capacity
    newest = set(range(max(0, total - capacity), total))
    stored = storage.state_dict()
    assert set(stored["actions"].tolist()) == newest
    for slot, transition_id in enumerate(stored["actions"]):
        assert transition_id % capacity == slot  # transition t always lives in slot t mod capacity
        assert stored["obs"][slot].tolist() == [transition_id] * 2
        assert stored["next_obs"][slot].tolist() == [transition_id + 0.5] * 2
        assert stored["rewards"][slot] == transition_id and stored["terminated"][slot] == transition_id % 2


@settings(max_examples=30, deadline=None)
@given(capacity=st.integers(1, 10), total=st.integers(1, 30))
def test_replay_restore_reproduces_the_buffer(capacity, total):
    source = TransitionStorage(capacity, (3,), np.dtype(np.float32))
    ids = np.arange(total)
    source.add(np.repeat(ids[:, None], 3, 1), ids, ids, np.repeat(ids[:, None], 3, 1), ids % 2, 1)
    copy = TransitionStorage(capacity, (3,), np.dtype(np.float32))
    copy.load_state_dict(
        {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in source.state_dict().items()}
    )
    assert (copy.position, copy.size) == (source.position, source.size)
    for name, value in source.state_dict().items():
        assert np.array_equal(copy.state_dict()[name], value)
    for name in ("obs", "next_obs", "actions", "rewards", "terminated", "horizons"):
        assert np.array_equal(getattr(copy, name), getattr(source, name))  # the unfilled rest too
