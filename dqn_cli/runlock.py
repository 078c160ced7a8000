"""One writer per run folder: a process that trains into a run holds ``<run>/.lock`` from its first read
to its last write, and a second writer is refused at once, naming the holder's process id.

The lock is ``fcntl.flock`` on that file: the kernel drops it when its holder dies, so a run killed with
``kill -9`` never blocks the next one, and no stale-lock guessing is needed. It is per host: two machines
writing one folder on a shared file system are not kept apart (that would need host + PID heartbeats).
Windows has no ``fcntl``; there runs are not locked. Readers (`dqn eval`, `record`, `runs`, `plot`) never
take it: every file they read is written whole (``runfiles.write_atomic``).

The lock is re-entrant in the thread that holds it, so `dqn train --resume` can lock the run before
importing torch and ``training.resume`` (which any caller may use) locks it again without deadlocking on
itself; another thread of the same process is refused like another process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dqn_cli.errors import UserError

LOCK_FILE = ".lock"
PID_WAIT = 1.0  # seconds a refused writer waits for a holder that has just locked to write its PID


@dataclass
class _Holding:
    fd: int
    thread: int
    depth: int = 0


_holdings: dict[tuple[int, int], _Holding] = {}  # by the run folder's (device, inode)
_holdings_guard = threading.Lock()


def _busy(run_dir: Path, pid: int | None) -> UserError:
    holder = "another process" if pid is None else f"process {pid}"
    return UserError(f"run folder {run_dir} is being trained by {holder}; wait for it to end, or stop it")


def _holder_pid(path: Path) -> int | None:
    """The PID the holder wrote into the lock file, waiting briefly if it has locked but not yet written."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, ValueError):
            text = ""
        if text.endswith("\n") and text.strip().isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _lock(run_dir: Path) -> int:
    """Lock ``run_dir`` for this process and return the lock file's descriptor, or raise a UserError."""
    import fcntl

    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write run directory {run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(run_dir, _holder_pid(path)) from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot lock run directory {run_dir}: {exc.strerror}") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # its holder removed the file between our open and lock: lock the new one


def _unlock(run_dir: Path, fd: int) -> None:
    """Remove the lock file while still holding it (a writer that opened it meanwhile sees it gone and
    opens afresh), then release it."""
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


@contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; a UserError naming the holder if another writer has it."""
    if os.name == "nt":  # no fcntl: unlocked (see the module docstring)
        yield
        return
    try:
        status = os.stat(run_dir)
    except OSError as exc:
        raise UserError(f"cannot open run directory {run_dir}: {exc.strerror}") from None
    key, thread = (status.st_dev, status.st_ino), threading.get_ident()
    with _holdings_guard:
        holding = _holdings.get(key)
        if holding is None:
            holding = _holdings[key] = _Holding(_lock(run_dir), thread)
        elif holding.thread != thread:
            raise _busy(run_dir, os.getpid())
        holding.depth += 1
    try:
        yield
    finally:
        with _holdings_guard:
            holding.depth -= 1
            if holding.depth == 0:
                del _holdings[key]
                _unlock(run_dir, holding.fd)
