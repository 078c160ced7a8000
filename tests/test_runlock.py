"""One writer per run folder: a second `dqn train` / `--resume` on a run is refused at once, naming the
holder, and a holder killed with `kill -9` never blocks the next run."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_one_line_error, dqn

from dqn_cli import runlock
from dqn_cli.checkpoint import read_checkpoint_step
from dqn_cli.errors import UserError
from dqn_cli.metrics import COLUMNS
from dqn_cli.presets import resolve
from dqn_cli.runfiles import RunState, read_status
from dqn_cli.runlock import LOCK_FILE, hold_run_lock
from dqn_cli.training import resume, train

BASE_STEPS = 400
# n_envs=1 and no evaluations: no two metrics rows may share a step, so a duplicated step is a second writer
SETS = [f"n_timesteps={BASE_STEPS}", "learning_starts=100", "eval_freq=0", "net_arch=[16]", "n_envs=1"]
LONG = BASE_STEPS + 6_000  # a resume that trains for seconds, long enough for a rival to try and fail

HOLD = """\
import sys, time
from pathlib import Path
from dqn_cli.runlock import hold_run_lock
with hold_run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(300)
"""
RACE = """\
import sys, time
from pathlib import Path
from dqn_cli.errors import UserError
from dqn_cli.runfiles import create_run_dir
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with create_run_dir("CartPole-v1", 0, Path(sys.argv[1])) as run_dir:
        print("won", flush=True)
        time.sleep(1)  # the folder stays empty a while, as it does while a run starts
        (run_dir / "config.toml").write_text("")
except UserError as exc:
    print(exc, flush=True)
"""


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    preset, hp = resolve("CartPole-v1", sets=SETS)
    train("CartPole-v1", hp, seed=5, preset=preset, run_dir=run_dir, device="cpu", quiet=True)
    return run_dir


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still alive at its end are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start(processes: list[subprocess.Popen], *args: str, cwd: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    processes.append(process)
    return process


def _hold(processes: list[subprocess.Popen], folder: Path) -> subprocess.Popen:
    """A process that holds ``folder``'s lock until it is killed."""
    holder = _start(processes, "-c", HOLD, str(folder), cwd=folder.parent)
    assert holder.stdout.readline() == "held\n", holder.stderr.read()
    return holder


def _wait_until_training(run: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``process`` holds the run's lock and its session has begun (status.json names it)."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(run)
        if status is not None and status.pid == process.pid and _lock_text(run) == _line(process.pid):
            return
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _line(pid: int) -> str:
    """What a holder on this host writes into the lock file."""
    return f"{pid} {socket.gethostname()}\n"


def _lock_text(run: Path) -> str | None:
    try:
        return (run / LOCK_FILE).read_text()
    except FileNotFoundError:
        return None


def _metric_steps(run: Path) -> list[int]:
    text = (run / "metrics.csv").read_text()
    assert text.endswith("\n")  # no torn last line
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == list(COLUMNS) and all(len(row) == len(COLUMNS) for row in rows[1:])
    return [int(row[0]) for row in rows[1:]]


def _event_files(run: Path) -> int:
    return len(list(run.glob("events.out.tfevents.*")))


def test_the_lock_is_reentrant_in_its_thread_and_refused_to_another(tmp_path: Path):
    refusals: list[UserError] = []

    def rival() -> None:
        try:
            with hold_run_lock(tmp_path):
                pass
        except UserError as exc:
            refusals.append(exc)

    with hold_run_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == _line(os.getpid())
        with hold_run_lock(tmp_path):  # as `dqn train --resume` and then `training.resume` take it
            pass
        thread = threading.Thread(target=rival)
        thread.start()
        thread.join()
        assert (tmp_path / LOCK_FILE).exists()  # the inner block's exit kept it
    assert [str(e) for e in refusals] == [
        f"run folder {tmp_path} is being trained by process {os.getpid()}; wait for it to end, or stop it"
    ]
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_resume_is_refused_before_torch_is_imported(
    tmp_path: Path, processes: list[subprocess.Popen]
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("not even read\n")
    holder = _hold(processes, run)
    probe = (
        "import sys\nfrom dqn_cli.cli import main\nsys.argv = ['dqn', 'train', '--resume', 'run']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout == "2 False\n"
    assert result.stderr == (
        f"error: run folder run is being trained by process {holder.pid}; wait for it to end, or stop it\n"
    )


@pytest.mark.slow
def test_a_second_writer_is_refused_through_the_library_and_a_killed_holder_blocks_nothing(
    run: Path, tmp_path: Path, processes: list[subprocess.Popen]
):
    holder = _hold(processes, run)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(UserError, match=f"run folder .*run is being trained by process {holder.pid};"):
        resume(run, steps=BASE_STEPS + 200, device="cpu", quiet=True)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before

    empty = tmp_path / "fresh"
    empty.mkdir()
    fresh_holder = _hold(processes, empty)
    preset, hp = resolve("CartPole-v1", sets=SETS)
    with pytest.raises(UserError, match=f"is being trained by process {fresh_holder.pid};"):
        train("CartPole-v1", hp, preset=preset, run_dir=empty, device="cpu", quiet=True)
    assert [path.name for path in empty.iterdir()] == [LOCK_FILE]  # the holder's, nothing of ours

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / LOCK_FILE).read_text() == _line(holder.pid)  # left behind by the dead holder
    result, _ = resume(run, steps=BASE_STEPS + 200, device="cpu", quiet=True)
    assert result.steps == BASE_STEPS + 200
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_of_two_concurrent_resumes_exactly_one_proceeds(run: Path, processes: list[subprocess.Popen]):
    first = _start(
        processes, "-m", "dqn_cli", "train", "--resume", "run", "--steps", str(LONG), "-q", cwd=run.parent
    )
    _wait_until_training(run, first)

    second = dqn("train", "--resume", "run", "-q", cwd=run.parent)
    assert first.poll() is None  # they overlapped: the first was still training when the second ended
    assert_one_line_error(second, f"run folder run is being trained by process {first.pid};")

    assert first.wait(timeout=300) == 0, first.stderr.read()
    steps = _metric_steps(run)
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    assert _event_files(run) == 2  # the base run's and the first resume's; the refused one wrote none
    assert read_status(run).state == RunState.FINISHED and read_status(run).step == LONG
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_resume_killed_with_kill_9_never_blocks_the_next(run: Path, processes: list[subprocess.Popen]):
    killed = _start(
        processes, "-m", "dqn_cli", "train", "--resume", "run", "--steps", str(LONG), "-q", cwd=run.parent
    )
    _wait_until_training(run, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (run / LOCK_FILE).read_text() == _line(killed.pid)  # its lock file is still there

    target = read_checkpoint_step(run) + 200
    resumed = dqn("train", "--resume", "run", "--steps", str(target), "-q", cwd=run.parent)
    assert resumed.returncode == 0, resumed.stderr
    assert read_status(run).state == RunState.FINISHED and read_status(run).step == target
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_of_runs_racing_for_one_new_folder_exactly_one_gets_it(
    tmp_path: Path, processes: list[subprocess.Popen]
):
    shared, go = tmp_path / "deep" / "shared", tmp_path / "go"
    racers = [_start(processes, "-c", RACE, str(shared), str(go), cwd=tmp_path) for _ in range(4)]
    for racer in racers:
        assert racer.stdout.readline() == "ready\n", racer.stderr.read()
    go.touch()  # they reach the emptiness check at about the same instant
    said = [racer.communicate(timeout=60)[0] for racer in racers]
    winners = [racer for racer, line in zip(racers, said, strict=True) if line == "won\n"]
    assert len(winners) == 1, said
    refusals = {  # by the lock, or, for a racer that came late, by the winner's file
        f"run folder {shared} is being trained by process {winners[0].pid}; wait for it to end, or stop it\n",
        f"run directory {shared} already exists and is not empty; choose another --run-dir\n",
    }
    assert all(line in refusals for line in said if line != "won\n"), said
    assert [path.name for path in shared.iterdir()] == ["config.toml"]  # the losers left nothing


@pytest.mark.slow
def test_of_two_fresh_trains_racing_for_one_run_dir_exactly_one_proceeds(
    tmp_path: Path, processes: list[subprocess.Popen]
):
    sets = [arg for item in [*SETS, "n_timesteps=5000"] for arg in ("--set", item)]
    racers = [
        _start(
            processes,
            "-m",
            "dqn_cli",
            "train",
            "CartPole-v1",
            "--run-dir",
            "shared",
            "-q",
            *sets,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    codes = [racer.wait(timeout=300) for racer in racers]
    assert sorted(codes) == [0, 2], [racer.stderr.read() for racer in racers]
    winner, loser = racers if codes[0] == 0 else racers[::-1]
    # refused by the lock, or by finding the winner's files: one line either way
    refusal = subprocess.CompletedProcess(loser.args, 2, loser.stdout.read(), loser.stderr.read())
    assert_one_line_error(refusal, "shared")

    run = tmp_path / "shared"
    steps = _metric_steps(run)
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    assert _event_files(run) == 1
    status = read_status(run)
    assert status.state == RunState.FINISHED and status.step == 5000 and status.pid == winner.pid
    assert not (run / LOCK_FILE).exists()


def _foreign_lock(run: Path, age: float) -> None:
    """A lock file as a holder on another machine leaves it, last touched ``age`` seconds ago."""
    (run / LOCK_FILE).write_text("4242 other-node\n")
    touched = time.time() - age
    os.utime(run / LOCK_FILE, (touched, touched))


def test_another_hosts_lock_is_refused_while_its_heartbeat_is_fresh_and_taken_over_once_stale(tmp_path: Path):
    _foreign_lock(tmp_path, age=runlock.STALE_SECONDS - 5)
    with pytest.raises(UserError) as refused, hold_run_lock(tmp_path):
        pass
    assert str(refused.value) == (
        f"run folder {tmp_path} is being trained by process 4242 on other-node; "
        "wait for it to end, or stop it"
    )
    assert (tmp_path / LOCK_FILE).read_text() == "4242 other-node\n"  # the refused writer left it alone

    _foreign_lock(tmp_path, age=runlock.STALE_SECONDS + 5)
    with hold_run_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == _line(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_waiting_writer_gets_the_run_once_the_other_hosts_holder_goes_stale(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(runlock, "STALE_SECONDS", 1.0)
    monkeypatch.setattr(runlock, "RETRY_SECONDS", 0.05)
    _foreign_lock(tmp_path, age=0)
    started = time.monotonic()
    with hold_run_lock(tmp_path, wait=5.0):
        waited = time.monotonic() - started
    assert 1.0 - 0.1 < waited < 1.0 + runlock.TAKEOVER_SETTLE + 1.0


def test_the_holder_keeps_its_lock_fresh_with_a_heartbeat(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_SECONDS", 0.05)
    with hold_run_lock(tmp_path):
        long_ago = time.time() - 1000
        os.utime(tmp_path / LOCK_FILE, (long_ago, long_ago))
        time.sleep(0.5)
        assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 1.0  # touched again, so another
        # host, which sees only the file, finds its holder alive
