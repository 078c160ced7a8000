import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_cli import dqn

from dqn_cli.runlist import list_runs

HEADER = "step,wall_time,episode_return,episode_length,loss,epsilon,eval_return\n"


def make_run(root: Path, env_id: str, name: str, started: int, status: dict | None = None) -> Path:
    run = root / env_id.replace("/", "-") / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'env_id = "{env_id}"\n[hyperparameters]\nn_timesteps = 5000\n')
    os.utime(run / "config.toml", (started, started))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    return run


def status(state: str, pid: int, step: int = 1000) -> dict:
    return {
        "state": state,
        "step": step,
        "planned_steps": 5000,
        "wall_time": 12.5,
        "best_eval": 200.0,
        "last_eval": 150.0,
        "pid": pid,
    }


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_states_come_from_status_json_and_a_vanished_trainer_means_interrupted(tmp_path: Path):
    make_run(tmp_path, "CartPole-v1", "alive", 3, status("running", os.getpid()))
    make_run(tmp_path, "CartPole-v1", "killed", 2, status("running", dead_pid()))
    make_run(tmp_path, "CartPole-v1", "done", 1, status("finished", dead_pid(), step=5000))
    runs = list_runs(tmp_path)
    assert [(r.run_dir.name, r.state) for r in runs] == [
        ("done", "finished"),
        ("killed", "interrupted"),
        ("alive", "running"),
    ]  # oldest first
    done = runs[0]
    assert (done.step, done.planned_steps, done.best_eval, done.last_eval, done.wall_time) == (
        5000,
        5000,
        200.0,
        150.0,
        12.5,
    )


def test_runs_without_status_are_described_from_their_files(tmp_path: Path):
    old = make_run(tmp_path, "Acrobot-v1", "old", 1)
    rows = ["100,1.5,-500,500,,1.0,", "200,3.0,,,,0.5,-120", "300,4.0,,,,0.5,-90"]
    (old / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (old / "model.safetensors").write_bytes(b"")
    make_run(tmp_path, "Acrobot-v1", "crashed", 2)
    old_run, crashed = list_runs(tmp_path)
    assert (old_run.state, old_run.step, old_run.planned_steps) == ("finished", 300, 5000)
    assert (old_run.best_eval, old_run.last_eval, old_run.wall_time) == (-90.0, -90.0, 4.0)
    assert (crashed.state, crashed.step, crashed.best_eval) == ("interrupted", None, None)


def test_env_filter_accepts_the_id_or_its_folder_name(tmp_path: Path):
    make_run(tmp_path, "ALE/Pong-v5", "a", 1)
    make_run(tmp_path, "CartPole-v1", "b", 2)
    assert [r.run_dir.name for r in list_runs(tmp_path, "ALE/Pong-v5")] == ["a"]
    assert [r.run_dir.name for r in list_runs(tmp_path, "ALE-Pong-v5")] == ["a"]
    assert list_runs(tmp_path / "nowhere") == []


def test_dqn_runs_prints_a_table_or_one_friendly_line(tiny_run: Path, tmp_path: Path):
    empty = dqn("runs", cwd=tmp_path)
    assert empty.returncode == 0 and empty.stdout.count("\n") == 1 and "No runs" in empty.stdout
    shutil.copytree(tiny_run, tmp_path / "runs" / "CartPole-v1" / "tiny")
    wide = {**os.environ, "COLUMNS": "200"}
    table = dqn("runs", cwd=tmp_path, env=wide)
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if "tiny" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:3] == ["CartPole-v1", "tiny", "600 / 600"] and cells[-1] == "finished"
    assert "No runs for Acrobot-v1" in dqn("runs", "--env", "Acrobot-v1", cwd=tmp_path).stdout
