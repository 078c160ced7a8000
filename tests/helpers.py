"""Helpers shared by the test modules (no tests here): run the `dqn` command, check its errors, find its
processes.

Imported as ``from helpers import ...``: pytest's default (prepend) import mode puts tests/ on sys.path.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dqn_cli.replay import Batch


def random_batch(
    rng: np.random.Generator, size: int, rewards: np.ndarray, terminated: np.ndarray | None = None
) -> Batch:
    """``size`` uniformly weighted transitions of a 4-float observation and 2 actions, with normal random
    observations and random actions: enough to drive the agent's update by hand."""
    return Batch(
        obs=rng.normal(size=(size, 4)).astype(np.float32),
        actions=rng.integers(0, 2, size),
        rewards=rewards.astype(np.float32),
        next_obs=rng.normal(size=(size, 4)).astype(np.float32),
        terminated=np.zeros(size, dtype=np.float32) if terminated is None else terminated.astype(np.float32),
        horizons=np.ones(size, dtype=np.float32),
        weights=None,
        indices=np.arange(size),
    )


def dqn(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dqn_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def launch(*args: str, cwd: Path, own_session: bool = False) -> subprocess.Popen:
    """`dqn` started in the background, for tests that signal or race it; ``own_session`` keeps a signal
    sent to its process group from reaching pytest."""
    return subprocess.Popen(
        [sys.executable, "-m", "dqn_cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- processes, read from /proc (Linux) ---------------------------------------------------------------


def process_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = process_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its command line."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := process_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child in (p for p, pp in parents.items() if pp == parent):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            frontier.append(child)
    return found


def assert_gone(processes: dict[int, str], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [command for pid, command in processes.items() if alive(pid)]
