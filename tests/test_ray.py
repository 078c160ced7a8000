"""`dqn bench --ray` and `dqn tune --ray` on a real Ray cluster of two nodes on this machine (one CPU each,
so two tasks at once must use both): tasks land on both nodes, a seed is the same run as with `--jobs`,
both file-system modes give the same folders, a killed worker's seed still completes (resumed from its
checkpoint), Ctrl-C leaves checkpointed runs and no results, and a tuning study gets exactly its trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_one_line_error, dqn
from safetensors.numpy import load_file

ray = pytest.importorskip(
    "ray", reason='Ray is not installed (pip install -e ".[ray]"), so --ray is not tested'
)

from ray.cluster_utils import Cluster  # noqa: E402

from dqn_cli.bench import run_bench  # noqa: E402
from dqn_cli.runfiles import RunState, read_status  # noqa: E402

pytestmark = pytest.mark.slow  # a real cluster and real training: about 2 minutes in all

TINY = ["n_timesteps=1000", "learning_starts=100", "eval_freq=500", "eval_episodes=2", "net_arch=[16]"]
# long enough to be killed mid-way after a checkpoint, short enough for CI
KILLED = ["n_timesteps=6000", "learning_starts=100", "eval_freq=1000", "checkpoint_freq=1000"]
KILLED += ["eval_episodes=2", "net_arch=[16]", "n_envs=1"]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Ray nodes (two raylets) on this machine, one CPU each; `--ray auto` finds them by RAY_ADDRESS."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()


def _env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": cluster.address}


def _dqn(cluster: Cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return dqn(*args, cwd=cwd, env=_env(cluster))


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert (first[name] == second[name]).all(), name


def test_bench_tasks_land_on_both_nodes_and_train_the_seeds_local_workers_train(
    cluster: Cluster, tmp_path: Path
):
    nodes = {node.node_id for node in cluster.list_all_nodes()}
    bench_on_ray = ["bench", "CartPole-v1", "--seeds", "2", "--ray", "auto", *_sets(TINY)]
    shared = _dqn(cluster, *bench_on_ray, "--name", "s", cwd=tmp_path)
    assert shared.returncode == 0, shared.stderr
    assert "written in place on the shared file system (--ray-storage auto: every one of the 2 Ray nodes" in (
        shared.stderr
    )
    bench = tmp_path / "runs" / "bench" / "s"
    rows = json.loads((bench / "results.json").read_text())
    assert [(row["env_id"], row["seed"], row["steps"]) for row in rows] == [
        ("CartPole-v1", 1, 1000),
        ("CartPole-v1", 2, 1000),
    ]
    assert {row["ray_node_id"] for row in rows} == nodes  # one task on each node
    assert all(row["run_dir"] == str(bench / f"CartPole-v1-s{row['seed']}") for row in rows)  # the driver's
    assert (bench / "CartPole-v1-s1" / "checkpoint.safetensors").is_file()

    returned = _dqn(cluster, *bench_on_ray, "--ray-storage", "return", "--name", "r", cwd=tmp_path)
    assert returned.returncode == 0, returned.stderr
    assert "returned to the driver (--ray-storage return was given)" in returned.stderr
    back = tmp_path / "runs" / "bench" / "r" / "CartPole-v1-s2"
    assert {"config.toml", "metrics.csv", "status.json", "model.safetensors", "best.safetensors"} <= {
        path.name for path in back.iterdir()
    }
    assert not (back / "checkpoint.safetensors").exists() and not (back / ".lock").exists()

    local = run_bench(
        ["CartPole-v1"], 2, jobs=1, name="l", device="cpu", runs_root=tmp_path / "runs", sets=TINY
    )
    for seed in (1, 2):
        _assert_same_weights(bench / f"CartPole-v1-s{seed}", local / f"CartPole-v1-s{seed}")
        _assert_same_weights(back.parent / f"CartPole-v1-s{seed}", local / f"CartPole-v1-s{seed}")
    local_rows = json.loads((local / "results.json").read_text())
    assert [row["best_model_return"] for row in rows] == [row["best_model_return"] for row in local_rows]


def _wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _launch(cluster: Cluster, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dqn_cli", *args],
        cwd=cwd,
        env=_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_seed_whose_worker_is_killed_resumes_from_its_checkpoint_and_completes(
    cluster: Cluster, tmp_path: Path
):
    driver = _launch(cluster, "bench", "CartPole-v1", "--seeds", "1", "--ray", "auto", "--name", "k",
                     *_sets(KILLED), cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "bench" / "k" / "CartPole-v1-s1"

    def checkpointed_mid_run() -> bool:
        status = read_status(run)
        return (run / "checkpoint.safetensors").is_file() and status is not None and status.step < 6000

    _wait_for(checkpointed_mid_run, driver)
    killed = read_status(run).pid
    os.kill(killed, signal.SIGKILL)  # the Ray worker process training the seed
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr

    rows = json.loads((run.parent / "results.json").read_text())
    assert [(row["seed"], row["steps"]) for row in rows] == [(1, 6000)]
    status = read_status(run)
    assert status.state == RunState.FINISHED and status.step == 6000 and status.pid != killed
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the killed attempt's and the resumed one's
    local = run_bench(["CartPole-v1"], 1, name="l", device="cpu", runs_root=tmp_path / "runs", sets=KILLED)
    _assert_same_weights(run, local / "CartPole-v1-s1")  # resumed exactly, as if never killed


def test_ctrl_c_on_the_driver_cancels_the_tasks_which_checkpoint_their_runs(cluster: Cluster, tmp_path: Path):
    long_runs = _sets(["n_timesteps=200000", "checkpoint_freq=100000"])
    bench_on_ray = ["bench", "CartPole-v1", "--seeds", "2", "--ray", "auto", "--name", "c", *long_runs]
    driver = _launch(cluster, *bench_on_ray, cwd=tmp_path)
    bench = tmp_path / "runs" / "bench" / "c"

    def both_training() -> bool:
        statuses = [read_status(run) for run in bench.glob("CartPole-v1-s*")]
        return len(statuses) == 2 and all(s is not None and s.step > 0 for s in statuses)

    _wait_for(both_training, driver)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted: finished runs are kept, stopped ones can be resumed; no results were written"
    )
    for run in bench.glob("CartPole-v1-s*"):
        assert read_status(run).state == RunState.INTERRUPTED
        assert (run / "checkpoint.safetensors").is_file()  # written as the task was cancelled
    assert not (bench / "results.md").exists()


SPACE = """
[fixed]
n_envs = 1
n_timesteps = 900
learning_starts = 100
eval_freq = 300
eval_episodes = 2
stop_at_eval_return = inf

[pruner]
n_startup_trials = 6

[params.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def test_tune_places_exactly_the_studys_trials_and_refuses_sqlite_without_a_shared_disk(
    cluster: Cluster, tmp_path: Path
):
    import optuna

    (tmp_path / "space.toml").write_text(SPACE)
    tune = [
        "tune",
        "CartPole-v1",
        "--trials",
        "3",
        "--ray",
        "auto",
        "--space",
        "space.toml",
        "--device",
        "cpu",
    ]
    result = _dqn(cluster, *tune, "--study", "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Study s: 3 complete" in result.stdout
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'runs' / 'tune' / 's.db'}")
    assert sorted(trial.number for trial in study.trials) == [0, 1, 2]
    for trial in study.trials:
        status = read_status(Path(trial.user_attrs["run_dir"]))
        assert status.state == RunState.FINISHED and status.step == 900

    refused = _dqn(cluster, *tune, "--study", "r", "--ray-storage", "return", cwd=tmp_path)
    assert_one_line_error(refused, "a SQLite study needs every Ray node on this machine's disk")
    assert not (tmp_path / "runs" / "tune" / "r.db").exists()  # refused before the study was made
