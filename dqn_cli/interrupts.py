"""Ctrl-C and SIGTERM outside the training loop (which handles them itself, in session.py), and worker
processes that never outlive the command that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKER_GRACE_SECONDS = 30.0  # a worker stopped mid-run writes its checkpoint first; then it is killed
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESEND_DELAY_SECONDS = 0.01  # after a signal Python dropped: long enough to be out of the callback


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM. A KeyboardInterrupt, so that all that cleans up after Ctrl-C (every ``finally``,
    no ``except Exception``) does so for SIGTERM too; it pickles, so a worker process can hand it back."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum  # what a shell reports for a process the signal ended


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """130 for Python's own KeyboardInterrupt, else the Interrupted's code."""
    return getattr(interrupt, "exit_code", 128 + signal.SIGINT)


@contextmanager
def interruptible(signals: Iterable[int] = STOP_SIGNALS, second_exits: bool = True) -> Iterator[None]:
    """Within: the first of ``signals`` raises Interrupted where the main thread is, which unwinds through
    the cleanup of what it was doing. A second one exits at once, as a second Ctrl-C does in training (it is
    the cleanup the first began that it cuts short); or, with ``second_exits=False``, is ignored: a worker
    may be signalled both by the terminal and by its parent.

    A signal that lands while Python runs a weakref callback or ``__del__`` (an import lock's, say) raises
    there, where Python prints the exception and drops it; the hook below catches that, forgets the signal
    and sends it again a moment later, from a thread, so that it lands in ordinary code."""
    received: list[int] = []
    raised: list[Interrupted] = []

    def handle(signum: int, frame: object) -> None:
        if received:
            if second_exits:
                os._exit(128 + received[0])
            return
        received.append(signum)
        raised.append(Interrupted(signum))
        raise raised[-1]

    previous_hook = sys.unraisablehook

    def resend_dropped(unraisable: sys.UnraisableHookArgs) -> None:
        if not (raised and unraisable.exc_value is raised[-1]):
            previous_hook(unraisable)
            return
        signum = received.pop()
        resend = threading.Timer(RESEND_DELAY_SECONDS, os.kill, (os.getpid(), signum))
        resend.daemon = True
        resend.start()

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    sys.unraisablehook = resend_dropped
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this worker process when its parent dies, even by ``kill -9``, so that no worker
    is left running on its own (Linux only: elsewhere it is the parent's handler of SIGINT and SIGTERM that
    stops its workers). SIGKILL, not a signal to stop gracefully on: the kernel may send it more than once,
    as the parent's threads exit one by one, and a parent killed outright ends its work abruptly anyway."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request was made
        os._exit(128 + signal.SIGKILL)


def stop_processes(processes: Iterable[BaseProcess], grace: float = WORKER_GRACE_SECONDS) -> None:
    """SIGTERM every process still running (a worker in training checkpoints its run and stops), wait up
    to ``grace`` seconds for them all, then kill the rest."""
    running = [process for process in processes if process.is_alive()]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in running:
        if process.is_alive():
            process.kill()
            process.join()
