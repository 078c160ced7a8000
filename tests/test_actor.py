"""``actor_process``: the training envs play in a forked child a phase at a time while the parent runs the
updates. Lockstep: the updates see the replay a sequential loop gives them, each phase is played with the
weights from before the updates its start made due, the same seed gives the same run (resumed exactly:
tests/test_variants.py), and the child's failures and its parent's death end it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_gone, descendants, launch
from safetensors.numpy import load_file

from dqn_cli.actor import ActorFailed, phase_length
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.presets import resolve
from dqn_cli.replay import Replay
from dqn_cli.rollout import Rollout
from dqn_cli.training import train

TINY = [
    "n_timesteps=600",
    "learning_starts=200",
    "n_envs=1",
    "train_freq=4",
    "gradient_steps=1",
    "batch_size=16",
    "net_arch=[16]",
    "eval_freq=300",
    "eval_episodes=1",
    "checkpoint_freq=300",
    "target_update_interval=100",
    "stop_at_eval_return=inf",
]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the actor process is forked")


def _train(tmp_path: Path, name: str, *sets: str) -> Path:
    _, hp = resolve("CartPole-v1", sets=[*TINY, *sets])
    train("CartPole-v1", hp, seed=3, run_dir=tmp_path / name, device="cpu", quiet=True)
    return tmp_path / name


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(run / "model.safetensors")


def test_phases_end_at_the_training_phases_wherever_a_session_starts():
    hp = apply_overrides(Hyperparameters(), {"train_freq": 10, "n_envs": 1})
    assert [phase_length(hp, step, 100) for step in (0, 3, 10, 95)] == [10, 7, 10, 5]
    assert phase_length(hp, 97, 98) == 1  # up to the end the session was given
    four_envs = apply_overrides(Hyperparameters(), {"train_freq": 10, "n_envs": 4})
    assert [phase_length(four_envs, step, 100) for step in (0, 8, 12)] == [3, 1, 2]  # whole vector steps


def test_updates_see_the_replay_of_a_sequential_loop(monkeypatch, tmp_path: Path):
    seen: dict[str, list[int]] = {}
    sample = Replay.sample

    def recording(self, *args, **kwargs):
        seen.setdefault(current, []).append(len(self))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(Replay, "sample", recording)
    for current in ("plain", "actor"):
        _train(tmp_path, current, *(["actor_process=true"] if current == "actor" else []))
    assert seen["actor"] == seen["plain"] == list(range(204, 601, 4))


def test_each_step_gets_the_n_step_horizon_of_a_sequential_loop(monkeypatch, tmp_path: Path):
    seen: dict[str, list[int]] = {}
    set_horizon = Replay.set_horizon

    def recording(self, n: int) -> None:
        seen.setdefault(current, []).append(n)
        set_horizon(self, n)

    monkeypatch.setattr(Replay, "set_horizon", recording)
    annealed = ["n_step=2", "n_step_initial=7", "n_step_fraction=0.5"]
    for current in ("plain", "actor"):
        _train(tmp_path, current, *annealed, *(["actor_process=true"] if current == "actor" else []))
    assert seen["actor"] == seen["plain"]
    assert seen["plain"][0] == 7 and seen["plain"][-1] == 2 and len(seen["plain"]) == 600


def test_same_seed_same_run_and_acting_is_one_phase_behind(tmp_path: Path):
    first = _train(tmp_path, "a", "actor_process=true")
    again = _train(tmp_path, "b", "actor_process=true")
    plain = _train(tmp_path, "c")
    assert all(np.array_equal(_weights(first)[k], _weights(again)[k]) for k in _weights(first))
    assert _metrics(first) == _metrics(again)
    # the same updates on the same replay, but acted with older weights: another run
    assert not all(np.array_equal(_weights(first)[k], _weights(plain)[k]) for k in _weights(first))


def _metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv's rows less their wall times."""
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [
        {k: v for k, v in zip(header, row.split(","), strict=True) if k != "wall_time"} for row in rows[1:]
    ]


def test_episodes_reach_the_metrics_at_the_steps_they_ended(tmp_path: Path):
    episodes = [row for row in _metrics(_train(tmp_path, "a", "actor_process=true")) if row["episode_length"]]
    lengths = [int(row["episode_length"]) for row in episodes]
    # one env: an episode ends at the step that sums its length and those of all before it
    assert len(lengths) > 5 and [int(row["step"]) for row in episodes] == np.cumsum(lengths).tolist()
    assert [float(row["episode_return"]) for row in episodes] == lengths  # CartPole: +1 per step


def test_a_failure_in_the_child_is_raised_in_the_parent(monkeypatch, tmp_path: Path):
    step = Rollout.step
    calls = []

    def failing(self, actions):
        calls.append(1)
        if len(calls) == 250:
            raise ValueError("the env broke at its 250th step")
        return step(self, actions)

    monkeypatch.setattr(Rollout, "step", failing)  # before the fork: the child inherits it
    with pytest.raises(ActorFailed, match="the env broke at its 250th step"):
        _train(tmp_path, "a", "actor_process=true")


def test_a_user_error_in_the_child_stays_a_user_error(monkeypatch, tmp_path: Path):
    def refusing(self, actions):
        raise UserError("the env refuses this action")

    monkeypatch.setattr(Rollout, "step", refusing)
    with pytest.raises(UserError, match=r"^the env refuses this action$"):
        _train(tmp_path, "a", "actor_process=true")


def test_a_child_that_dies_is_an_error_not_a_hang(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(Rollout, "step", lambda self, actions: os._exit(3))
    with pytest.raises(ActorFailed, match="exited without a word"):
        _train(tmp_path, "a", "actor_process=true")


def test_atari_is_refused_in_one_line(tmp_path: Path):
    _, hp = resolve("ALE/Pong-v5", preset="atari-cpu", sets=["actor_process=true"])
    with pytest.raises(UserError, match="overlap_emulation"):
        train("ALE/Pong-v5", hp, run_dir=tmp_path / "a", device="cpu", quiet=True)
    assert not (tmp_path / "a").exists()


def _rows(csv: Path) -> int:
    try:
        return len(csv.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_the_child_ends_with_its_parent(tmp_path: Path, signum: int):
    """Ctrl-C (to the whole group, as a terminal sends it) checkpoints and exits 130 with the child gone;
    kill -9 of the parent takes the child down too."""
    process = launch(
        "train", "CartPole-v1", "--run-dir", "run", "--device", "cpu", "--set", "actor_process=true",
        "--set", "n_timesteps=10000000", "--set", "learning_starts=1000", cwd=tmp_path, own_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    metrics = tmp_path / "run" / "metrics.csv"
    while not (children := descendants(process.pid)) or _rows(metrics) < 2:  # training, episodes ending
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the actor process never started"
        time.sleep(0.05)
    (os.killpg if signum == signal.SIGINT else os.kill)(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert_gone(children, seconds=10)
    if signum == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
