import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["n_timesteps=600", "learning_starts=100", "eval_freq=300", "eval_episodes=2", "net_arch=[16]"]


@pytest.mark.slow
def test_bench_trains_every_seed_of_every_env_and_writes_table_json_and_curves(tmp_path: Path):
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dqn_cli",
            "bench",
            "CartPole-v1",
            "Acrobot-v1",
            "--seeds",
            "2",
            "--jobs",
            "2",
            "--name",
            "t",
            *sets,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    bench = tmp_path / "runs" / "bench" / "t"
    rows = json.loads((bench / "results.json").read_text())
    assert sorted((r["env_id"], r["seed"]) for r in rows) == [
        ("Acrobot-v1", 1),
        ("Acrobot-v1", 2),
        ("CartPole-v1", 1),
        ("CartPole-v1", 2),
    ]
    assert all(r["steps"] == 600 for r in rows)
    table = (bench / "results.md").read_text()
    assert table in result.stdout
    cartpole = [r["best_model_return"] for r in rows if r["env_id"] == "CartPole-v1"]
    mean = sum(cartpole) / 2
    assert f"| CartPole-v1 | 2 | {mean:.1f} ± " in table
    for env in ("CartPole-v1", "Acrobot-v1"):
        assert (bench / f"{env}-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (bench / f"{env}-s1" / "best.safetensors").exists()


def test_bench_rejects_a_bad_env_before_training_anything(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "dqn_cli", "bench", "CartPole-v1", "NoSuchGame-v0", "--seeds", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "unknown environment id 'NoSuchGame-v0'" in result.stderr
    assert not (tmp_path / "runs").exists()
