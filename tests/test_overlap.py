"""``overlap_emulation``: a training phase's gradient steps run while the envs play the vector step
(ale-py's send/recv), so those updates sample replay without that step; deterministic (resumed exactly:
tests/test_variants.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from dqn_cli.presets import resolve
from dqn_cli.replay import Replay
from dqn_cli.training import train

TINY_CARTPOLE = [
    "n_timesteps=1200",
    "learning_starts=200",
    "n_envs=1",
    "train_freq=1",
    "gradient_steps=1",
    "batch_size=16",
    "net_arch=[16]",
    "eval_freq=600",
    "eval_episodes=1",
    "checkpoint_freq=600",
    "target_update_interval=100",
]


def _replay_sizes_seen_by_updates(monkeypatch, sets: list[str], tmp_path: Path) -> list[int]:
    sizes: list[int] = []
    sample = Replay.sample

    def recording_sample(self, *args, **kwargs):
        sizes.append(len(self))
        return sample(self, *args, **kwargs)

    _, hp = resolve("CartPole-v1", sets=[*TINY_CARTPOLE, "n_timesteps=210", *sets])
    with monkeypatch.context() as patched:
        patched.setattr(Replay, "sample", recording_sample)
        train(
            "CartPole-v1",
            hp,
            seed=0,
            run_dir=tmp_path / "_".join(sets or ["plain"]),
            device="cpu",
            quiet=True,
        )
    return sizes


def test_overlapped_updates_sample_replay_without_the_step_in_flight(monkeypatch, tmp_path: Path):
    plain = _replay_sizes_seen_by_updates(monkeypatch, [], tmp_path)
    overlapped = _replay_sizes_seen_by_updates(monkeypatch, ["overlap_emulation=true"], tmp_path)
    # one update per env step after 200 random ones: the step that makes a phase due is in replay
    # when its update samples, unless the update ran while that step was being played
    assert plain == list(range(201, 211))
    assert overlapped == list(range(200, 210))


@pytest.mark.slow
def test_overlap_on_atari_is_deterministic_and_changes_what_updates_see(tmp_path: Path):
    sets = ["n_timesteps=600", "learning_starts=200", "buffer_size=2000", "eval_freq=0", "n_envs=2"]

    def weights(name: str, *extra: str) -> dict[str, np.ndarray]:
        _, hp = resolve("ALE/Pong-v5", preset="atari-cpu", sets=[*sets, *extra])
        train("ALE/Pong-v5", hp, seed=1, run_dir=tmp_path / name, device="cpu", quiet=True)
        return load_file(tmp_path / name / "model.safetensors")

    first, again = weights("a", "overlap_emulation=true"), weights("b", "overlap_emulation=true")
    plain = weights("c")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], plain[k]) for k in first)
