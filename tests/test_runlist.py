import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import dqn

from dqn_cli.runfiles import RunState
from dqn_cli.runlist import list_runs

HEADER = "step,wall_time,episode_return,episode_length,loss,epsilon,eval_return\n"
WIDE = {**os.environ, "COLUMNS": "200"}  # no folded cells


def make_run(run: Path, env_id: str, started: int, status: dict | None = None) -> Path:
    run.mkdir(parents=True)
    config = f'env_id = "{env_id}"\nseed = 0\n[hyperparameters]\nn_timesteps = 5000\n'
    (run / "config.toml").write_text(config)
    os.utime(run / "config.toml", (started, started))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    return run


def status(state: str, pid: int, step: int = 1000) -> dict:
    return {
        "state": state,
        "step": step,
        "planned_steps": 5000,
        "updates": 1234,
        "wall_time": 12.5,
        "best_eval": 200.0,
        "last_eval": 150.0,
        "pid": pid,
    }


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The cells of each row of `dqn runs`, by the run column."""
    lines = [line.replace("┃", "│") for line in stdout.splitlines() if line.startswith(("│", "┃"))]
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in lines]
    return {row[0]: row for row in rows}


def test_states_come_from_status_json_and_a_vanished_trainer_means_interrupted(tmp_path: Path):
    make_run(tmp_path / "CartPole-v1" / "alive", "CartPole-v1", 3, status("running", os.getpid()))
    make_run(tmp_path / "CartPole-v1" / "killed", "CartPole-v1", 2, status("running", dead_pid()))
    make_run(tmp_path / "CartPole-v1" / "done", "CartPole-v1", 1, status("finished", dead_pid(), step=5000))
    runs = list_runs(tmp_path)
    assert [(r.run_dir.name, r.state) for r in runs] == [
        ("done", RunState.FINISHED),
        ("killed", RunState.INTERRUPTED),
        ("alive", RunState.RUNNING),
    ]  # oldest first
    done = runs[0]
    assert (done.step, done.planned_steps, done.updates, done.best_eval, done.last_eval, done.wall_time) == (
        5000,
        5000,
        1234,
        200.0,
        150.0,
        12.5,
    )


def test_runs_without_status_are_described_from_their_files(tmp_path: Path):
    old = make_run(tmp_path / "Acrobot-v1" / "old", "Acrobot-v1", 1)
    rows = ["100,1.5,-500,500,,1.0,", "200,3.0,,,,0.5,-120", "300,4.0,,,,0.5,-90"]
    (old / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (old / "model.safetensors").write_bytes(b"")
    make_run(tmp_path / "Acrobot-v1" / "crashed", "Acrobot-v1", 2)
    old_run, crashed = list_runs(tmp_path)
    assert (old_run.state, old_run.step, old_run.planned_steps) == (RunState.FINISHED, 300, 5000)
    assert (old_run.best_eval, old_run.last_eval, old_run.wall_time) == (-90.0, -90.0, 4.0)
    assert old_run.updates is None  # not recorded before status.json
    assert (crashed.state, crashed.step, crashed.best_eval) == (RunState.INTERRUPTED, None, None)


def test_env_filter_accepts_the_id_or_its_folder_name(tmp_path: Path):
    make_run(tmp_path / "ALE-Pong-v5" / "a", "ALE/Pong-v5", 1)
    make_run(tmp_path / "CartPole-v1" / "b", "CartPole-v1", 2)
    make_run(tmp_path / "bench" / "x" / "ALE-Pong-v5-s1", "ALE/Pong-v5", 3)
    assert [r.run_dir.name for r in list_runs(tmp_path, "ALE/Pong-v5")] == ["a", "ALE-Pong-v5-s1"]
    assert [r.run_dir.name for r in list_runs(tmp_path, "ALE-Pong-v5")] == ["a", "ALE-Pong-v5-s1"]
    assert list_runs(tmp_path / "nowhere") == []


def test_broken_run_folders_are_listed_with_what_can_be_read(tmp_path: Path):
    bad_config = make_run(tmp_path / "CartPole-v1" / "bad-config", "CartPole-v1", 1, status("finished", 1))
    (bad_config / "config.toml").write_bytes(b'env_id = "\xff"\n')
    os.utime(bad_config / "config.toml", (1, 1))
    bad_status = make_run(tmp_path / "CartPole-v1" / "bad-status", "CartPole-v1", 2)
    (bad_status / "status.json").write_bytes(b'{"state": "\xff"}')
    bad_metrics = make_run(tmp_path / "CartPole-v1" / "bad-metrics", "CartPole-v1", 3)
    (bad_metrics / "metrics.csv").write_bytes(HEADER.encode() + b"100,1.5,\xff,500,,1.0,\n")
    odd_config = make_run(tmp_path / "CartPole-v1" / "odd-config", "CartPole-v1", 4)
    (odd_config / "config.toml").write_text('env_id = 7\nhyperparameters = "none"\n')
    os.utime(odd_config / "config.toml", (4, 4))
    odd_status = make_run(tmp_path / "CartPole-v1" / "odd-status", "CartPole-v1", 5)
    (odd_status / "status.json").write_text(json.dumps({"state": "exploded", "step": "many", "pid": "x"}))
    make_run(tmp_path / "CartPole-v1" / "good", "CartPole-v1", 6, status("finished", 1, step=5000))

    runs = list_runs(tmp_path)
    summaries = [(r.run_dir.name, r.env_id, r.state, r.step, r.planned_steps, r.updates) for r in runs]
    assert summaries == [
        ("bad-config", "?", RunState.FINISHED, 1000, 5000, 1234),
        ("bad-status", "CartPole-v1", RunState.INTERRUPTED, None, 5000, None),  # from config.toml alone
        ("bad-metrics", "CartPole-v1", RunState.INTERRUPTED, None, 5000, None),
        ("odd-config", "?", RunState.INTERRUPTED, None, None, None),
        ("odd-status", "CartPole-v1", RunState.INTERRUPTED, 0, 0, 0),
        ("good", "CartPole-v1", RunState.FINISHED, 5000, 5000, 1234),
    ]


def test_dqn_runs_shows_bench_and_tune_runs_by_their_path_and_updates(tmp_path: Path):
    runs = tmp_path / "runs"
    make_run(runs / "CartPole-v1" / "20261125-050000-s0", "CartPole-v1", 1)
    bench = runs / "bench" / "20261125-060000" / "CartPole-v1-s1"
    make_run(bench, "CartPole-v1", 2, status("finished", dead_pid(), step=5000))
    make_run(runs / "CartPole-v1" / "tune-study-t3", "CartPole-v1", 3, {**status("pruned", 1), "updates": 90})
    (runs / "[broken]" / "run").mkdir(parents=True)  # a name rich would read as markup
    (runs / "[broken]" / "run" / "config.toml").write_bytes(b"\xff")
    result = dqn("runs", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    header = ["run (under runs/)", "steps", "updates", "best eval", "last eval", "wall time", "status"]
    assert rows["run (under runs/)"] == header
    assert rows["CartPole-v1/20261125-050000-s0"][1:] == ["- / 5,000", "-", "-", "-", "-", "interrupted"]
    assert rows["bench/20261125-060000/CartPole-v1-s1"] == [
        "bench/20261125-060000/CartPole-v1-s1",
        "5,000 / 5,000",
        "1,234",
        "200.0",
        "150.0",
        "12.5s",
        "finished",
    ]
    assert rows["CartPole-v1/tune-study-t3"][1:3] == ["1,000 / 5,000", "90"]
    assert rows["CartPole-v1/tune-study-t3"][-1] == "pruned"
    assert rows["[broken]/run"][-1] == "interrupted"  # listed, not a crash


def test_dqn_runs_prints_a_table_or_one_friendly_line(tiny_run: Path, tmp_path: Path):
    empty = dqn("runs", cwd=tmp_path)
    assert empty.returncode == 0 and empty.stdout.count("\n") == 1 and "No runs" in empty.stdout
    shutil.copytree(tiny_run, tmp_path / "runs" / "CartPole-v1" / "tiny")
    table = dqn("runs", cwd=tmp_path, env=WIDE)
    assert table.returncode == 0, table.stderr
    cells = table_rows(table.stdout)["CartPole-v1/tiny"]
    assert cells[:2] == ["CartPole-v1/tiny", "600 / 600"] and cells[-1] == "finished"
    assert "No runs for Acrobot-v1" in dqn("runs", "--env", "Acrobot-v1", cwd=tmp_path).stdout
