"""One writer per run folder: a process that trains into a run holds ``<run>/.lock`` from its first read
to its last write, and a second writer is refused at once, naming the holder's process id (and host, when
it is another machine's).

The lock file holds ``"<pid> <host>\\n"``. Two mechanisms decide whether its holder still lives:

- On the holder's own host, ``fcntl.flock`` on that file: the kernel drops it when its holder dies, so a
  run killed with ``kill -9`` never blocks the next one, and no stale-lock guessing is needed.
- From another host (two Ray nodes writing one folder on NFS), where ``flock`` may not reach the holder's
  kernel: a heartbeat. The holder touches the file's modification time every ``HEARTBEAT_SECONDS``; a
  file not touched for ``STALE_SECONDS`` belongs to a dead holder (or a lost machine) and is taken over.
  Clocks of the hosts must agree to well within that (NTP does). A holder paused for longer than it (a
  suspended machine) may find its run taken over when it wakes.

A new lock file is made with ``O_EXCL``, which is atomic on a local disk and on NFS (v3 on), so of two
hosts racing for a fresh folder exactly one gets it. Taking over a stale file written by another host is
verified by reading the file back a moment later (``TAKEOVER_SETTLE``): of two hosts taking it over at
once, the one whose line is not there backs off.

Windows has no ``fcntl``; there runs are not locked. Readers (`dqn eval`, `record`, `runs`, `plot`) never
take it: every file they read is written whole (``runfiles.write_atomic``).

The lock is re-entrant in the thread that holds it, so `dqn train --resume` can lock the run before
importing torch and ``training.resume`` (which any caller may use) locks it again without deadlocking on
itself; another thread of the same process is refused like another process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from dqn_cli.errors import UserError

LOCK_FILE = ".lock"
PID_WAIT = 1.0  # seconds a refused writer waits for a holder that has just made the file to write its line
HEARTBEAT_SECONDS = 10.0  # how often a holder touches its lock file
STALE_SECONDS = 60.0  # a lock file of another host untouched this long has no live holder
TAKEOVER_SETTLE = 0.5  # seconds between writing a taken-over lock file and reading it back
RETRY_SECONDS = 0.5  # while waiting for a holder (``wait``), how often to look again


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str

    def line(self) -> str:
        return f"{self.pid} {self.host}\n"


@dataclass
class _Holding:
    fd: int
    thread: int
    depth: int = 0


_holdings: dict[tuple[int, int], _Holding] = {}  # by the run folder's (device, inode)
_holdings_guard = threading.Lock()
_heartbeat_stop: threading.Event | None = None  # set: the heartbeat thread ends


class _Busy(Exception):
    """The run is held; ``holder`` is None while its line is not written yet."""

    def __init__(self, holder: Holder | None) -> None:
        super().__init__()
        self.holder = holder


def _busy(run_dir: Path, holder: Holder | None) -> UserError:
    if holder is None:
        who = "another process"
    else:
        who = f"process {holder.pid}" + ("" if holder.host == this_host() else f" on {holder.host}")
    return UserError(f"run folder {run_dir} is being trained by {who}; wait for it to end, or stop it")


def _parse(text: str) -> Holder | None:
    """The holder a whole line names; None for an empty or partly written file."""
    if not text.endswith("\n"):
        return None
    pid, _, host = text.strip().partition(" ")
    return Holder(int(pid), host) if pid.isdigit() and host else None


def _read_holder(fd: int) -> Holder | None:
    """The holder the open lock file names, waiting briefly if it has made the file but not yet written."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            holder = _parse(os.pread(fd, 256, 0).decode("ascii"))
        except (OSError, ValueError):
            holder = None
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.02)


def _age(fd: int) -> float:
    """Seconds since the lock file was last touched (by its holder's heartbeat)."""
    return time.time() - os.fstat(fd).st_mtime


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file ``fd`` has open (its holder may have removed it meanwhile)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def _claim(fd: int, me: Holder) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.line().encode(), 0)
    os.fsync(fd)


def _open(path: Path, me: Holder) -> tuple[int, bool] | None:
    """The lock file, opened, and whether we made it (with our line already in it, so that a rival who
    finds it at once reads whose it is); None if it vanished between two looks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        try:
            return os.open(path, os.O_RDWR), False
        except FileNotFoundError:  # its holder removed it between our two opens
            return None
    try:
        _claim(fd, me)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _flock_made(fd: int) -> bool:
    """Lock the file we just made. A rival may hold its flock for an instant, to look at our line."""
    import fcntl

    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _try_lock(path: Path, me: Holder) -> int | None:
    """One attempt: the lock file's descriptor, held by us; None if the file changed under us (try again).
    Raises _Busy if a live holder has it."""
    import fcntl

    opened = _open(path, me)
    if opened is None:
        return None
    fd, made = opened
    try:
        if made:
            if not _flock_made(fd):
                raise _Busy(_read_holder(fd))
            return fd
        seen = _read_holder(fd)  # before the flock: a holder that has just made the file writes its line
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live holder on this host
            raise _Busy(_read_holder(fd) or seen) from None
        if not _same_file(path, fd):  # its holder removed it between our open and lock: lock the new one
            os.close(fd)
            return None
        holder, fresh = _read_holder(fd), _age(fd) < STALE_SECONDS
        if holder is not None and holder.host == me.host:
            # This host's holders hold their flock while they live; one that has made the file but not
            # yet locked it is alive too.
            if fresh and _alive(holder.pid):
                raise _Busy(holder)
            _claim(fd, me)
            return fd
        if fresh:  # another host's holder, whose heartbeat is recent (or a line not written yet)
            raise _Busy(holder)
        _claim(fd, me)
        time.sleep(TAKEOVER_SETTLE)  # another host taking it over at once writes its line too
        if (now := _read_holder(fd)) != me:
            raise _Busy(now)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lock(run_dir: Path, wait: float) -> int:
    """Lock ``run_dir`` for this process and return the lock file's descriptor, or raise a UserError; a
    busy run is tried again for up to ``wait`` seconds."""
    path, me = run_dir / LOCK_FILE, Holder(os.getpid(), this_host())
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = _try_lock(path, me)
        except _Busy as busy:
            if time.monotonic() >= deadline:
                raise _busy(run_dir, busy.holder) from None
            time.sleep(RETRY_SECONDS)
            continue
        except OSError as exc:
            raise UserError(f"cannot write run directory {run_dir}: {exc.strerror}") from None
        if fd is not None:
            return fd


def _unlock(run_dir: Path, fd: int) -> None:
    """Remove the lock file while still holding it (a writer that opened it meanwhile sees it gone and
    opens afresh), unless another host took it over while we were away; then release it."""
    path = run_dir / LOCK_FILE
    with suppress(OSError):
        if _same_file(path, fd) and _read_holder(fd) == Holder(os.getpid(), this_host()):
            path.unlink()
    os.close(fd)


def _beat(stopped: threading.Event) -> None:
    """The heartbeat thread: touch every held lock file until the last one is released."""
    while not stopped.wait(HEARTBEAT_SECONDS):
        with _holdings_guard:
            for holding in _holdings.values():
                with suppress(OSError):
                    os.utime(holding.fd)


def _start_heartbeat() -> None:
    """Called under ``_holdings_guard`` as a lock is taken; one thread serves every run this process holds."""
    global _heartbeat_stop
    if _heartbeat_stop is None:
        _heartbeat_stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(_heartbeat_stop,), name="dqn-lock-heartbeat", daemon=True)
        beat.start()


def _stop_heartbeat() -> None:
    """Called under ``_holdings_guard`` once no lock is held."""
    global _heartbeat_stop
    if _heartbeat_stop is not None:
        _heartbeat_stop.set()
        _heartbeat_stop = None


@contextmanager
def hold_run_lock(run_dir: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; a UserError naming the holder if another writer has it for
    more than ``wait`` seconds (0: refuse at once)."""
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
        if holding is not None and holding.thread != thread:
            raise _busy(run_dir, Holder(os.getpid(), this_host()))
    if holding is None:  # not under the guard: waiting for another holder must not stop the heartbeat
        fd = _lock(run_dir, wait)
        with _holdings_guard:
            holding = _holdings[key] = _Holding(fd, thread)
            _start_heartbeat()
    with _holdings_guard:
        holding.depth += 1
    try:
        yield
    finally:
        with _holdings_guard:
            holding.depth -= 1
            if holding.depth == 0:
                del _holdings[key]
                _unlock(run_dir, holding.fd)
                if not _holdings:
                    _stop_heartbeat()
