"""Ray is an optional extra: without it, `--ray` is one line saying what to install, and nothing is
written. Runs whether Ray is installed or not (a stand-in package that fails to import hides it)."""

import os
from pathlib import Path

import pytest
from helpers import assert_one_line_error, dqn

HIDDEN_RAY = "raise ImportError(\"No module named 'ray'\")\n"


@pytest.fixture
def without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment in which ``import ray`` fails, as it does where Ray is not installed."""
    (tmp_path / "hide" / "ray").mkdir(parents=True)
    (tmp_path / "hide" / "ray" / "__init__.py").write_text(HIDDEN_RAY)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "hide"))
    return dict(os.environ)


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "CartPole-v1", "--seeds", "1", "--ray", "local", "--name", "b"],
        ["tune", "CartPole-v1", "--trials", "1", "--ray", "auto", "--study", "s"],
    ],
    ids=["bench", "tune"],
)
def test_ray_missing_is_one_line_naming_the_install(tmp_path: Path, without_ray: dict, command: list[str]):
    work = tmp_path / "work"
    work.mkdir()
    result = dqn(*command, "--device", "cpu", cwd=work, env=without_ray)
    assert_one_line_error(result, '--ray needs Ray, which is not installed: pip install -e ".[ray]"')
    assert not (work / "runs").exists()


def test_a_bad_ray_address_storage_mode_or_jobs_is_refused_before_anything_is_written(tmp_path: Path):
    from dqn_cli.bench import run_bench
    from dqn_cli.cluster import file_mode
    from dqn_cli.errors import UserError

    with pytest.raises(UserError, match=r"^--ray 'nowhere': use auto, ray://HOST:PORT or local$"):
        run_bench(["CartPole-v1"], 1, runs_root=tmp_path / "runs", ray="nowhere")
    with pytest.raises(UserError, match=r"^--jobs starts processes here; with --ray, Ray places the tasks"):
        run_bench(["CartPole-v1"], 1, jobs=2, runs_root=tmp_path / "runs", ray="local")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match=r"^--ray-storage 'nfs': use auto, shared or return$"):
        file_mode("nfs")


def test_results_md_marks_the_seeds_that_failed_for_good():
    from dqn_cli.bench import FailedSeed, SeedResult, _table

    finished = [SeedResult("CartPole-v1", 1, "runs/bench/t/CartPole-v1-s1", 500, 2.0, 100.0, 90.0, "node-a")]
    failed = [
        FailedSeed("CartPole-v1", 2, "runs/bench/t/CartPole-v1-s2", "WorkerCrashedError after 2 retries: x"),
        FailedSeed("Acrobot-v1", 1, "runs/bench/t/Acrobot-v1-s1", "UserError: no space left"),
    ]
    lines = _table(finished, ["CartPole-v1", "Acrobot-v1"], failed).splitlines()
    summary = "| CartPole-v1 | 1 (1 failed) | 100.0 ± 0.0 (100.0) | 90.0 ± 0.0 (90.0) | 500 | 2.0 s |"
    assert lines[2] == summary
    assert lines[3] == "| Acrobot-v1 | 0 (1 failed) | - | - | - | - |"
    assert lines[-6:] == [
        "| CartPole-v1 | 2 | failed | - | - | - |",
        "| Acrobot-v1 | 1 | failed | - | - | - |",
        "",
        "Failed for good (no result for these seeds):",
        "- CartPole-v1 seed 2: WorkerCrashedError after 2 retries: x",
        "- Acrobot-v1 seed 1: UserError: no space left",
    ]


def test_the_driver_shows_a_line_per_running_task_and_the_count_done():
    from rich.console import Console

    from dqn_cli.progress import TaskProgress, TaskState

    console = Console(width=100, force_terminal=False, record=True)
    progress = TaskProgress(8, console=console)
    progress.update(
        {
            ("CartPole-v1", 1): TaskState("CartPole-v1 seed 1", 12_000, 40_000, 187.5, "10.0.0.7"),
            ("Acrobot-v1", 3): TaskState("Acrobot-v1 seed 3", 0, 100_000, None, "10.0.0.8"),
        },
        done=3,
    )
    assert progress.log_line().splitlines() == [
        "3/8 tasks done, 2 running",
        "  CartPole-v1 seed 1  step 12,000/40,000  eval 187.5  on 10.0.0.7",
        "  Acrobot-v1 seed 3  step 0/100,000  eval -  on 10.0.0.8",
    ]
    console.print(progress)
    drawn = console.export_text().splitlines()
    # labels padded to the longest, so that the bars start in one column
    assert drawn[0].startswith("CartPole-v1 seed 1  ━")
    assert drawn[1].startswith("Acrobot-v1 seed 3    ")
    assert drawn[0].endswith("12,000/40,000  eval 187.5  10.0.0.7")
    assert drawn[1].endswith("0/100,000  eval -  10.0.0.8")
    assert drawn[2] == "3/8 tasks done, 2 running"
