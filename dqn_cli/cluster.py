"""`dqn bench --ray` and `dqn tune --ray`: each seed or trial is one Ray task, which Ray places on a node
with the CPUs (and GPU) it reserves. What both commands share lives here: joining the cluster, choosing how
run folders reach the driver, a task's resources and retries, training (or resuming) inside a task, and
the driver's loop that waits for the tasks, shows their progress and cancels them on Ctrl-C.

Ray is an optional extra (``pip install -e ".[ray]"``) and is imported only on the code path of ``--ray``.

Run folders are named on the driver, as absolute paths, and reach it one of two ways (``--ray-storage``):

- ``shared``: every node mounts the driver's ``runs/`` at the same path (NFS and the like), so a task
  trains straight into its run folder, and a retried task resumes from the run's checkpoint.
- ``return``: a task trains into a temporary folder on its node and hands the run's files back (models,
  metrics, config, status, TensorBoard events; not the checkpoint, which holds the replay buffer: GBs for
  Atari); the driver writes them. A retried task trains its seed again from the start.
- ``auto`` (the default) writes a marker file with a random name into the folder the runs go to and asks
  every node of the cluster, with a tiny task pinned to it, whether it sees that file: shared if all do,
  return otherwise. In shared mode every task checks the marker again before it writes, so a node that
  joins later without the mount fails its task with one line instead of writing where nobody looks.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dqn_cli.atari import is_atari
from dqn_cli.errors import UserError
from dqn_cli.interrupts import WORKER_GRACE_SECONDS
from dqn_cli.progress import TaskProgress, TaskState
from dqn_cli.runfiles import CHECKPOINT_FILE, create_run_dir, write_atomic
from dqn_cli.runlock import HEARTBEAT_SECONDS, LOCK_FILE, STALE_SECONDS, hold_run_lock

RAY_INSTALL = 'pip install -e ".[ray]"'
TASK_RETRIES = 2  # times Ray runs a task again after its worker process or node died
ATARI_TASK_CPUS = 2  # an Atari run steps its env and trains its CNN (torch threads = the CPUs reserved)
POLL_SECONDS = 0.5  # how often the driver looks at its tasks and redraws their progress
MARKER_PREFIX = ".dqn-storage-"


class FileMode(StrEnum):
    AUTO = "auto"
    SHARED = "shared"
    RETURN = "return"


def file_mode(text: str) -> FileMode:
    """``--ray-storage``'s value."""
    try:
        return FileMode(text)
    except ValueError:
        raise UserError(f"--ray-storage {text!r}: use auto, shared or return") from None


@dataclass(frozen=True)
class Storage:
    """How this command's run folders reach the driver; plain data, sent to every task."""

    shared: bool
    folder: str  # the driver's absolute folder that the run folders go under
    marker: str  # file name of the marker in ``folder`` (shared mode)
    reason: str  # why this mode, for the line the driver prints

    def describe(self) -> str:
        how = "written in place on the shared file system" if self.shared else "returned to the driver"
        return f"Run folders under {self.folder}: {how} ({self.reason})"


def _init_options(address: str) -> dict[str, Any]:
    if address == "local":
        return {"include_dashboard": False}
    if address == "auto" or address.startswith("ray://"):
        return {"address": address}
    raise UserError(f"--ray {address!r}: use auto, ray://HOST:PORT or local")


def require_ray(address: str, jobs: int = 1) -> Any:
    """Ray, once ``address`` is known to be one and no ``jobs`` were asked for besides; a one-line
    UserError saying what to install if Ray is not installed. Called before anything is written."""
    _init_options(address)
    if jobs > 1:
        raise UserError("--jobs starts processes here; with --ray, Ray places the tasks: drop --jobs")
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


@contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray, joined to the cluster at ``address`` for the block: ``auto`` (the one `ray start` made on this
    machine, or RAY_ADDRESS), ``ray://HOST:10001`` (Ray Client, a remote head) or ``local`` (a throwaway
    Ray of this machine, ended with the block)."""
    options = _init_options(address)
    ray = require_ray(address)
    try:
        ray.init(**options, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        if address.startswith("ray://"):  # the two causes met most, neither of which Ray's message names
            detail += (
                " (Ray Client needs ray[default] on the head, and a head with token authentication "
                "RAY_AUTH_MODE=token and its token here)"
            )
        raise UserError(f"cannot join the Ray cluster at {address}: {detail}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _sees(folder: str, marker: str) -> bool:
    """On a node: whether the driver's marker file is there, i.e. this node shares the driver's disk."""
    return (Path(folder) / marker).is_file()


@contextmanager
def run_storage(ray: Any, folder: Path, mode: FileMode) -> Iterator[Storage]:
    """Decide how run folders under ``folder`` reach the driver (see the module docstring); the marker
    file lives as long as the block."""
    folder = folder.resolve()
    if mode == FileMode.RETURN:
        yield Storage(False, str(folder), "", "--ray-storage return was given")
        return
    marker = f"{MARKER_PREFIX}{secrets.token_hex(8)}"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / marker, b"written by the dqn driver; every node that shares its disk sees it\n")
    try:
        if mode == FileMode.SHARED:
            yield Storage(True, str(folder), marker, "--ray-storage shared was given")
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(_sees)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        seen = ray.get(
            [
                probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(str(folder), marker)
                for node in nodes
            ]
        )
        blind = [node["NodeManagerAddress"] for node, sees in zip(nodes, seen, strict=True) if not sees]
        reason = f"every one of the {len(nodes)} Ray nodes sees it"
        if blind:
            reason = f"node {blind[0]} does not see it" + (
                f", nor {len(blind) - 1} more" if blind[1:] else ""
            )
        yield Storage(not blind, str(folder), marker, f"--ray-storage auto: {reason}")
    finally:
        (folder / marker).unlink(missing_ok=True)


def task_options(ray: Any, env_id: str, device: str) -> tuple[dict[str, Any], str]:
    """Ray options for one run's task (what it reserves, how often it is retried) and the device it
    trains on there. As `dqn train --device auto` picks CUDA where present, ``auto`` reserves a GPU per
    task on a cluster that has GPUs."""
    wants_gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    options = {
        "num_cpus": ATARI_TASK_CPUS if is_atari(env_id) else 1,
        "num_gpus": 1 if wants_gpu else 0,
        "max_retries": TASK_RETRIES,  # worker or node deaths only: an error in dqn is not retried
        "retry_exceptions": False,
    }
    return options, "cuda" if wants_gpu else "cpu"


# ------------------------------------------------------------------------------------ inside a task


class Reporter:
    """A task's end of the progress board: each report goes to the driver's display."""

    def __init__(self, board: Any, key: object) -> None:
        self._board, self._key, self._node = board, key, _node_address()

    def __call__(self, step: int, planned: int, last_eval: float | None) -> None:
        self._board.update.remote(self._key, step, planned, last_eval, self._node)


@dataclass
class TaskRun:
    """What a task hands back: its result and, in return mode, the run's files (path relative to the run
    folder -> content)."""

    result: Any
    files: dict[str, bytes] | None


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


@contextmanager
def task_folder(storage: Storage, run_dir: Path) -> Iterator[Path]:
    """Where a task trains the run whose folder on the driver is ``run_dir``: that folder itself on a
    shared file system, else a temporary folder on this node, removed afterwards."""
    if storage.shared:
        if not _sees(storage.folder, storage.marker):
            raise UserError(
                f"Ray node {_node_address()} does not see {storage.folder}, which --ray-storage shared says "
                "every node shares; use --ray-storage auto or return"
            )
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="dqn-ray-") as temporary:
        yield Path(temporary) / run_dir.name


def returned_files(storage: Storage, run_dir: Path) -> dict[str, bytes] | None:
    """In return mode, the run folder's files for the driver to write: all but the lock, the checkpoint
    and temporaries of interrupted writes."""
    if storage.shared:
        return None
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name not in (LOCK_FILE, CHECKPOINT_FILE) and not path.name.endswith(".tmp")
    }


def train_or_resume(
    env_id: str,
    hp: Any,
    *,
    seed: int,
    preset: str,
    run_dir: Path,
    device: str,
    gym_packages: tuple[str, ...],
    on_evaluation: Callable[[int, float], None] | None = None,
) -> Any:
    """Train a task's run into ``run_dir``. Ray runs a task again when its worker died; that attempt finds
    the folder the dead one left: it resumes from its checkpoint or, if none was written yet, starts the
    run again. It first waits for the dead attempt's lock to go stale (at once on the same node)."""
    from dqn_cli.training import resume, train

    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_lock(run_dir, wait=STALE_SECONDS + HEARTBEAT_SECONDS):
        if (run_dir / CHECKPOINT_FILE).is_file():
            result, _ = resume(
                run_dir, device=device, quiet=True, gym_packages=gym_packages, on_evaluation=on_evaluation
            )
            return result
        for leftover in run_dir.iterdir():  # of an attempt that died before its first checkpoint
            if leftover.name != LOCK_FILE:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return train(
            env_id,
            hp,
            seed=seed,
            preset=preset,
            run_dir=run_dir,
            device=device,
            quiet=True,
            on_evaluation=on_evaluation,
            gym_packages=gym_packages,
        )


def write_returned(run: TaskRun, env_id: str, seed: int, run_dir: Path) -> None:
    """On the driver: write the files a task returned into ``run_dir``, which must be new, under its lock."""
    if run.files is None:
        return
    with create_run_dir(env_id, seed, run_dir):
        for name, data in run.files.items():
            path = run_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)


# ------------------------------------------------------------------------------------- the driver


class _Board:
    """A Ray actor: the latest (step, planned steps, last evaluation, node) each task reported."""

    def __init__(self) -> None:
        self.reports: dict[object, tuple[int, int, float | None, str]] = {}

    def update(self, key: object, step: int, planned: int, last_eval: float | None, node: str) -> None:
        self.reports[key] = (step, planned, last_eval, node)

    def read(self) -> dict[object, tuple[int, int, float | None, str]]:
        return self.reports


def progress_board(ray: Any) -> Any:
    """The actor tasks report their progress to; it takes no CPU from them."""
    return ray.remote(num_cpus=0)(_Board).remote()


@dataclass(frozen=True)
class Submission:
    """One task to start: its key, its progress label, and how to submit it (returns its ObjectRef)."""

    key: object
    label: str
    submit: Callable[[], Any]


def failure_reason(ray: Any, error: BaseException) -> str:
    """One line on why a task failed for good: its worker died (after the retries) or dqn raised."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause if error.cause is not None else error
        return f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
    return f"{type(error).__name__} after {TASK_RETRIES} retries: {(str(error).splitlines() or [''])[-1]}"


def drive(
    ray: Any,
    submissions: Iterator[Submission],
    *,
    total: int,
    slots: int,
    board: Any,
    on_done: Callable[[object, TaskRun], None],
    on_failed: Callable[[object, str], None],
    on_cancelled: Callable[[object], None] = lambda key: None,
) -> None:
    """Run the tasks, at most ``slots`` submitted at once (Ray queues them until a node has room), with one
    progress line per running task. Each result goes to ``on_done`` and each task that failed for good to
    ``on_failed``, as it ends. On Ctrl-C or SIGTERM the tasks are cancelled (one in training checkpoints
    its run first), given WORKER_GRACE_SECONDS to end, killed if still running, and handed to
    ``on_cancelled``; then the interrupt propagates."""
    in_flight: dict[Any, Submission] = {}
    done = 0
    with TaskProgress(total) as progress:
        try:
            while True:
                while len(in_flight) < slots and (submission := next(submissions, None)) is not None:
                    in_flight[submission.submit()] = submission
                if not in_flight:
                    return
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    submission = in_flight.pop(ref)
                    try:
                        run = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        on_failed(submission.key, failure_reason(ray, error))
                    else:
                        on_done(submission.key, run)
                    done += 1
                reports = ray.get(board.read.remote())
                progress.update(
                    {
                        s.key: TaskState(s.label, *reports[s.key])
                        for s in in_flight.values()
                        if s.key in reports
                    },
                    done,
                )
        except BaseException:
            _cancel(ray, in_flight, on_cancelled)
            raise


def _cancel(ray: Any, in_flight: dict[Any, Submission], on_cancelled: Callable[[object], None]) -> None:
    refs = list(in_flight)
    for ref in refs:
        ray.cancel(ref)  # a KeyboardInterrupt in the task: a run in training checkpoints and stops
    deadline = time.monotonic() + WORKER_GRACE_SECONDS
    pending = refs
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
    for ref in pending:
        ray.cancel(ref, force=True)
    for submission in in_flight.values():
        on_cancelled(submission.key)
