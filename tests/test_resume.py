"""Checkpoints, exact resume after kill -9, clean interrupts, and refusing to diverge onto disk."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import launch
from safetensors.numpy import load_file

from dqn_cli.checkpoint import CHECKPOINT_FILE, load_checkpoint, read_checkpoint_step
from dqn_cli.errors import UserError
from dqn_cli.presets import resolve
from dqn_cli.runfiles import read_status
from dqn_cli.training import TrainingDiverged, resume, train

STEPS = 16_000
SETS = [
    f"n_timesteps={STEPS}",
    f"checkpoint_freq={STEPS // 2}",
    "learning_starts=500",
    "train_freq=4",
    "gradient_steps=1",
    "buffer_size=5000",
    "batch_size=32",
    "net_arch=[32]",
    "target_update_interval=200",
    "eval_freq=4000",
    "eval_episodes=2",
    "stop_at_eval_return=inf",
    "n_envs=2",
]


def _set_args() -> list[str]:
    return [arg for item in SETS for arg in ("--set", item)]


def _wait_for_checkpoint(run: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while read_checkpoint_step(run) != step:
        assert process.poll() is None, "training ended before its mid-run checkpoint was seen"
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(run / "model.safetensors")


@pytest.mark.slow
def test_kill_9_after_checkpoint_then_resume_is_bit_identical_to_uninterrupted(tmp_path: Path):
    straight = launch(
        "train", "CartPole-v1", "--seed", "4", "--quiet", "--run-dir", "straight", *_set_args(), cwd=tmp_path
    )
    assert straight.wait() == 0, straight.stderr.read()

    killed = launch(
        "train", "CartPole-v1", "--seed", "4", "--quiet", "--run-dir", "killed", *_set_args(), cwd=tmp_path
    )
    _wait_for_checkpoint(tmp_path / "killed", STEPS // 2, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # it really died mid-run

    resumed = launch("train", "--resume", "killed", "--quiet", cwd=tmp_path)
    assert resumed.wait() == 0, resumed.stderr.read()

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert read_status(tmp_path / "killed").state == "finished"
    # the resumed metrics continue the first session's rows instead of duplicating them
    steps = [
        int(line.split(",")[0]) for line in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert steps == sorted(steps)
    straight_rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    assert len(steps) == len(straight_rows) - 1


@pytest.mark.slow
def test_sigint_checkpoints_prints_resume_command_and_exits_130(tmp_path: Path):
    process = launch("train", "CartPole-v1", "--run-dir", "run", "--quiet", *_set_args(), cwd=tmp_path)
    _wait_for_checkpoint(tmp_path / "run", STEPS // 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "dqn train --resume run" in stderr
    step = read_checkpoint_step(tmp_path / "run")
    assert STEPS // 2 <= step < STEPS
    assert read_status(tmp_path / "run").state == "interrupted"
    resumed = launch("train", "--resume", "--quiet", cwd=tmp_path)  # newest run with a checkpoint
    # (it lives in ./run, not under ./runs, so name it)
    assert resumed.wait() != 0
    resumed = launch("train", "--resume", "run", "--quiet", cwd=tmp_path)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert read_checkpoint_step(tmp_path / "run") == STEPS


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_leaving_a_good_checkpoint(tmp_path: Path):
    process = launch("train", "CartPole-v1", "--run-dir", "run", "--quiet", *_set_args(), cwd=tmp_path)
    _wait_for_checkpoint(tmp_path / "run", STEPS // 2, process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    state = load_checkpoint(tmp_path / "run").state  # whole and loadable, whichever one it is
    assert state["loop/step"] >= STEPS // 2 and "agent/online/hidden.0.weight" in state


@pytest.mark.slow
def test_sigterm_exits_143_with_a_checkpoint(tmp_path: Path):
    process = launch("train", "CartPole-v1", "--run-dir", "run", "--quiet", *_set_args(), cwd=tmp_path)
    _wait_for_checkpoint(tmp_path / "run", STEPS // 2, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 143
    assert read_checkpoint_step(tmp_path / "run") >= STEPS // 2


@pytest.mark.slow
def test_checkpoint_holds_everything_training_needs(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=[*SETS[1:], "n_timesteps=1000", "checkpoint_freq=500"])
    train("CartPole-v1", hp, seed=1, run_dir=tmp_path / "run", device="cpu", quiet=True)
    state = load_checkpoint(tmp_path / "run").state
    assert {k.split("/")[0] for k in state} == {"agent", "replay", "rollout", "random", "loop"}
    for part in ("online", "target", "optimizer"):  # both networks and Adam's moments, tensor by tensor
        assert any(k.startswith(f"agent/{part}/") and isinstance(v, np.ndarray) for k, v in state.items())
    assert state["replay/storage/obs"].shape == (1000, 4)
    assert (state["replay/storage/position"], state["replay/storage/size"]) == (1000 % 5000, 1000)
    assert state["loop/step"] == 1000 and state["loop/updates"] == (1000 - 500) // 4
    assert {"random/numpy", "random/python", "random/torch"} <= state.keys()
    assert state["rollout/envs"] is not None and state["rollout/obs"].shape == (2, 4)
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.slow
def test_resume_can_extend_a_finished_run(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=[*SETS[1:], "n_timesteps=1000"])
    train("CartPole-v1", hp, seed=1, run_dir=tmp_path / "run", device="cpu", quiet=True)
    result, exact = resume(tmp_path / "run", steps=1500, device="cpu", quiet=True)
    assert result.steps == 1500 and exact
    with pytest.raises(UserError, match="not beyond"):
        resume(tmp_path / "run", steps=1200, device="cpu", quiet=True)


def test_nan_loss_stops_training_and_keeps_the_last_good_files(tmp_path: Path, monkeypatch):
    from dqn_cli.agent import DQNAgent

    _, hp = resolve("CartPole-v1", sets=[*SETS[1:], "n_timesteps=3000", "checkpoint_freq=1000"])
    real_update = DQNAgent.update
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, errors = real_update(self, batch)
        return (
            loss * float("nan") if calls["n"] > 200 else loss
        ), errors  # ~step 1300, after the 1000 checkpoint

    monkeypatch.setattr(DQNAgent, "update", poisoned)
    with pytest.raises(TrainingDiverged, match="diverged"):
        train("CartPole-v1", hp, seed=1, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert read_checkpoint_step(tmp_path / "run") == 1000
    assert read_status(tmp_path / "run").state == "diverged"
    assert not (tmp_path / "run" / "model.safetensors").exists()
    state = load_checkpoint(tmp_path / "run").state
    assert all(np.isfinite(v).all() for k, v in state.items() if k.startswith("agent/online/"))


def test_nan_weights_are_never_saved(tmp_path: Path, monkeypatch):
    from dqn_cli.agent import DQNAgent

    _, hp = resolve("CartPole-v1", sets=[*SETS[1:], "n_timesteps=2000", "checkpoint_freq=1000"])
    real_update = DQNAgent.update

    def poison_weights(self, batch):
        loss, errors = real_update(self, batch)
        with torch.no_grad():
            next(self.online.parameters()).fill_(float("inf"))
        return loss.zero_(), errors  # a finite loss must not hide broken weights

    monkeypatch.setattr(DQNAgent, "update", poison_weights)
    with pytest.raises(TrainingDiverged, match="weights"):
        train("CartPole-v1", hp, seed=1, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_diverged_cli_run_prints_one_line_and_exits_1(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dqn_cli",
            "train",
            "CartPole-v1",
            "--quiet",
            "--run-dir",
            "run",
            "--set",
            "learning_rate=1e30",
            "--set",
            "max_grad_norm=1e30",
            "--set",
            "learning_starts=64",
            "--set",
            "net_arch=[16]",
            "--steps",
            "20000",
            "--set",
            "eval_freq=0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode == 0:
        pytest.skip("this torch build did not overflow at learning_rate=1e30")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged"), result.stderr
