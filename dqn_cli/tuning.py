"""`dqn tune`: an Optuna study whose trials are ordinary training runs.

Each trial samples hyperparameters from a declared search space (``search_space.py``), trains with seed =
its trial number into ``runs/<env-id>/tune-<study>-t<number>/``, reports every periodic evaluation to
Optuna so its MedianPruner can stop a poor trial early, and scores its best evaluation return.

The study lives in Optuna's RDB storage: a SQLite file under ``runs/tune/`` by default, or any SQLAlchemy
URL (PostgreSQL, MySQL) that workers on many machines share. Workers are processes, not threads: torch
keeps the GIL in its Python parts and every run pins itself to one thread. A worker takes trials until
the study holds the requested number in total, counting and creating each trial under a lock so that two
workers starting at the same moment never make one too many.

With ``--ray`` Optuna stays the search engine and Ray only places the trials: the driver creates each
trial (under the same lock) as a node has room for it, and the trial runs as one Ray task (see
``cluster``) that samples, trains and reports into the study's storage. A SQLite study is refused there
unless every node shares the driver's disk.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from dqn_cli.cluster import FileMode
from dqn_cli.envpackages import env_source, import_packages, naming_options
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, with_env_kwargs
from dqn_cli.interrupts import Interrupted, die_with_parent, exit_code, interruptible, stop_processes
from dqn_cli.presets import resolve
from dqn_cli.runfiles import RUNS_ROOT, RunState, env_folder_name, write_atomic
from dqn_cli.search_space import SearchSpace, load_space, space_for

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

    from dqn_cli.cluster import Storage, TaskRun
    from dqn_cli.training import TrainResult

TUNE_DIR = "tune"  # under runs/: the default SQLite studies and the best presets
DRIVER_PACKAGES = {"psycopg": '"psycopg[binary]"', "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
SQLITE_BUSY_TIMEOUT = 60.0  # seconds a worker waits for another's write instead of failing
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class WorkerFailed(RuntimeError):
    """A worker process ended with an error; its traceback is on stderr."""


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker needs; plain data, so it pickles into a spawned process."""

    env_id: str
    preset: str
    base: Hyperparameters  # the preset with the space's [fixed] values applied
    space: SearchSpace
    storage: str
    study: str
    n_trials: int
    runs_root: Path
    device: str
    quiet: bool
    gym_packages: tuple[str, ...] = ()  # imported by each worker: they register env_id (see envpackages)


@dataclass(frozen=True)
class BestTrial:
    number: int
    value: float
    steps: int
    params: dict[str, Any]  # the searched hyperparameters, as the run used them
    run_dir: str
    preset_file: Path


@dataclass(frozen=True)
class TuneResult:
    study: str
    counts: dict[str, int]  # trial state name (COMPLETE, PRUNED, FAIL, RUNNING) -> trials
    best: BestTrial | None


def prepare(
    env_id: str,
    n_trials: int,
    *,
    storage: str | None = None,
    study: str | None = None,
    space_file: Path | None = None,
    runs_root: Path = RUNS_ROOT,
    device: str = "auto",
    quiet: bool = False,
    preset: str | None = None,
    env_kwargs: list[str] | None = None,
    gym_packages: list[str] | None = None,
) -> TuneJob:
    """Check everything a study needs before any file or database is touched. Trials start from
    ``preset`` (else the env id's own) with the space's [fixed] values, then ``env_kwargs``
    (``--env-kwargs key=value``, key by key), then its sampled values over it. ``gym_packages`` are
    imported first; ``env_id`` may also name its module, ``mygym:MyEnv-v0`` (see envpackages)."""
    from dqn_cli.envs import check_env_id
    from dqn_cli.training import check_trainable

    source = env_source(env_id, gym_packages or [])
    env_id = source.env_id
    import_packages(source.packages)
    check_env_id(env_id)
    preset_name, hp = resolve(env_id, preset=preset)
    named = f"{env_folder_name(env_id)}-{preset}" if preset else env_folder_name(env_id)
    study = study or f"{named}-{datetime.now():%Y%m%d-%H%M%S}"
    if not STUDY_NAME.fullmatch(study):
        raise UserError(f"study name {study!r} may use only letters, digits, '.', '_' and '-'")
    space = space_for(env_id) if space_file is None else load_space(space_file)
    base = with_env_kwargs(apply_overrides(hp, space.fixed), env_kwargs)
    if base.eval_freq <= 0:
        raise UserError("tuning scores trials by their evaluations: eval_freq must be > 0")
    storage = storage or f"sqlite:///{(runs_root / TUNE_DIR / f'{study}.db').resolve()}"
    url = parse_storage_url(storage)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise UserError("an in-memory SQLite study lives in one process only; give a file: sqlite:///FILE.db")
    # the env can be made here, DQN can play it, it fits in memory
    check_trainable(env_id, base, device, source.packages)
    return TuneJob(
        env_id, preset_name, base, space, storage, study, n_trials, runs_root, device, quiet, source.packages
    )


def tune(
    job: TuneJob, jobs: int = 1, ray: str | None = None, ray_storage: FileMode = FileMode.AUTO
) -> TuneResult:
    """Create (or join) the study, run ``jobs`` workers (or trials as tasks on the Ray cluster at ``ray``,
    run folders reaching this machine as ``ray_storage`` says) until it holds ``job.n_trials`` trials, and
    write the best trial's hyperparameters as a preset."""
    if ray:
        from dqn_cli.cluster import connected, require_ray, run_storage

        require_ray(ray, jobs)  # one line if Ray is missing, before the study is made
        job = replace(job, runs_root=job.runs_root.resolve())  # tasks run in other folders and machines
        runs = job.runs_root / env_folder_name(job.env_id)
        with connected(ray) as ray_api, run_storage(ray_api, runs, ray_storage) as storage:
            if parse_storage_url(job.storage).get_backend_name() == "sqlite" and not storage.shared:
                raise UserError(
                    f"a SQLite study needs every Ray node on this machine's disk, but {storage.reason}: "
                    "use a database server (--storage postgresql+psycopg://user:password@host/db) or a "
                    "shared disk"
                )
            _create_study(job)
            _run_on_ray(job, ray_api, storage)
        return summarize(job)
    _create_study(job)
    if jobs == 1:
        work(job)
    else:
        _run_workers(job, jobs)
    return summarize(job)


def _create_study(job: TuneJob) -> None:
    import optuna

    with _study_lock(job):  # a fresh database gets its tables once, not by two workers at a time
        study = optuna.create_study(
            study_name=job.study, storage=open_storage(job.storage), direction="maximize", load_if_exists=True
        )
        _keep_one_preset(study, job)


def _keep_one_preset(study: optuna.Study, job: TuneJob) -> None:
    """A study's trials all start from one preset, or its pruner and its best trial would compare unlike
    runs: the first `dqn tune` of a study records its preset, and continuing it with another is refused."""
    recorded = study.user_attrs.get("preset")
    if recorded is None:
        study.set_user_attr("preset", job.preset)
    elif recorded != job.preset:
        raise UserError(
            f"study {job.study} starts its trials from preset {recorded}, not {job.preset}: continue it "
            f"with --preset {recorded}, or start a new --study"
        )


def parse_storage_url(url: str) -> sqlalchemy.engine.URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"--storage {url!r} is not a database URL (e.g. sqlite:///tune.db or "
            "postgresql+psycopg://user:password@host/db)"
        ) from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI prints its own line per trial
    engine_kwargs: dict[str, Any] = {}
    if parse_storage_url(url).get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    with _storage_errors(url):
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def shown_storage(url: str) -> str:
    """The storage URL with its password masked, for printing."""
    return parse_storage_url(url).render_as_string(hide_password=True)


@contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """A missing database driver or an unreachable database is one line for the user, not a traceback."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ImportError as exc:  # Optuna re-raises the driver's ModuleNotFoundError as an ImportError
        module = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None) or "?"
        raise UserError(
            f"the database driver {module!r} for {parse_storage_url(url).drivername} URLs is not "
            f"installed: pip install {DRIVER_PACKAGES.get(module, module)}"
        ) from None
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise UserError(f"cannot open storage {shown_storage(url)}: {str(exc).splitlines()[0]}") from None


# Session-level named locks of the database servers that workers on many machines share; each query
# waits for the lock and returns 1 once held (MariaDB reads GET_LOCK's "-1 = forever" as "don't wait").
SERVER_LOCK_TIMEOUT = 3600  # seconds; the lock is held only while a trial is counted and created
SERVER_LOCKS = {
    "postgresql": "SELECT 1 FROM pg_advisory_lock(:lock)",
    "mysql": f"SELECT GET_LOCK(:lock, {SERVER_LOCK_TIMEOUT})",
}


@contextmanager
def _study_lock(job: TuneJob) -> Iterator[None]:
    """Serialize "count the trials, then start one" (and a fresh database's table creation) among the
    study's workers. On PostgreSQL and MySQL it is a named lock on the server, which workers on every
    machine queue for; a SQLite study's workers all share its file and lock a file beside it; any other
    storage is locked per machine."""
    url = parse_storage_url(job.storage)
    digest = hashlib.sha256(f"dqn-tune\n{job.study}".encode()).digest()
    if url.get_backend_name() in SERVER_LOCKS:
        lock = _server_lock(job.storage, digest)
    elif url.get_backend_name() == "sqlite" and url.database:
        path = Path(url.database).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(path)
    else:
        lock = _file_lock(Path(tempfile.gettempdir()) / f"dqn-tune-{digest.hex()[:16]}")
    with lock:
        yield


@contextmanager
def _server_lock(storage: str, digest: bytes) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    url = parse_storage_url(storage)
    lock_id: int | str = f"dqn-tune-{digest.hex()[:48]}"  # MySQL: a name of up to 64 characters
    if url.get_backend_name() == "postgresql":
        lock_id = int.from_bytes(digest[:8], "big", signed=True)  # a bigint key
    with _storage_errors(storage):
        engine = create_engine(url, poolclass=NullPool)
        connection = engine.connect()
        held = connection.execute(text(SERVER_LOCKS[url.get_backend_name()]), {"lock": lock_id}).scalar()
    try:
        if held != 1:
            raise UserError(f"could not take the study's lock on {shown_storage(storage)}")
        yield
    finally:
        connection.close()  # ends the database session, and with it the lock
        engine.dispose()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Optuna's lock file (``<path>.lock``, made with O_EXCL), which works on any OS and NFS."""
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _run_workers(job: TuneJob, jobs: int) -> None:
    """``jobs`` worker processes. On Ctrl-C or SIGTERM (an Interrupted) the parent stops them with SIGTERM
    and waits for them to record their trials as failed before it propagates: none outlives `dqn tune`."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: forking torch is unsafe
    workers = [
        context.Process(target=_worker, args=(job, os.getpid()), name=f"dqn-tune-{i}") for i in range(jobs)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    except BaseException:
        stop_processes(workers)
        raise
    failed = [worker.exitcode for worker in workers if worker.exitcode]
    if failed:
        raise WorkerFailed(f"{len(failed)} of {jobs} tuning workers failed (exit codes {failed})")


def _worker(job: TuneJob, parent_pid: int) -> None:
    """A worker process. Ctrl-C at the terminal reaches the whole process group, but the parent decides: it
    stops its workers with SIGTERM (a trial in training checkpoints first, on either signal). Stopped, a
    worker marks its trial failed and exits 143 without a traceback. It dies with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    try:
        with interruptible([signal.SIGTERM], second_exits=False):
            work(job)
    except KeyboardInterrupt as exc:
        sys.exit(exit_code(exc))


def work(job: TuneJob) -> None:
    """One worker: take trials until the study holds ``job.n_trials`` of them. A trial interrupted in
    training is recorded as failed, and the interrupt goes on as an Interrupted."""
    import optuna

    from dqn_cli.training import TrainingInterrupted, set_training_threads

    set_training_threads(job.env_id)  # where this worker process starts: it trains one trial after another

    study = optuna.load_study(
        study_name=job.study,
        storage=open_storage(job.storage),
        pruner=optuna.pruners.MedianPruner(**job.space.pruner),
    )
    try:
        while (trial := _claim_trial(study, job)) is not None:
            _say(job, _run_trial(study, trial, job))
    except TrainingInterrupted as exc:
        raise Interrupted(exc.exit_code - 128) from None


def _trial_as_ray_task(job: TuneJob, trial_id: int, storage: Storage, board: object) -> TaskRun:
    """One trial as a Ray task: the driver created it; here it is sampled, trained and told, as a worker
    runs a trial. Ray runs it again if its worker dies, on the same trial."""
    import optuna

    from dqn_cli.cluster import Reporter, TaskRun, returned_files, task_folder
    from dqn_cli.training import set_training_threads

    set_training_threads(job.env_id)
    study = optuna.load_study(
        study_name=job.study,
        storage=open_storage(job.storage),
        pruner=optuna.pruners.MedianPruner(**job.space.pruner),
    )
    trial = optuna.trial.Trial(study, trial_id)
    report = Reporter(board, trial.number)
    report(0, 0, None)
    with task_folder(storage, _trial_run_dir(job, trial.number)) as folder:
        line = _run_trial(study, trial, job, trained_in=folder, on_progress=report)
        return TaskRun(line, returned_files(storage, folder))


def _run_on_ray(job: TuneJob, ray: Any, storage: Storage) -> None:
    """Place the study's remaining trials on the Ray cluster, as many at once as its CPUs (or GPUs) hold.
    A trial whose task failed for good, or was cancelled, is told failed."""
    import optuna
    from optuna.trial import TrialState

    from dqn_cli.cluster import Submission, drive, progress_board, task_options, write_returned

    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage))
    _say(job, storage.describe())
    options, device = task_options(ray, job.env_id, job.device)
    unit = "GPU" if options["num_gpus"] else "CPU"
    per_task = options["num_gpus"] or options["num_cpus"]
    slots = max(1, int(ray.cluster_resources().get(unit, 0) // per_task))
    board, remote = progress_board(ray), ray.remote(_trial_as_ray_task).options(**options)
    on_node = replace(job, device=device, quiet=True)

    def submissions() -> Iterator[Submission]:
        while (trial := _claim_trial(study, job)) is not None:
            yield Submission(
                trial.number,
                f"trial {trial.number}",
                # the id Optuna's Trial(study, id) takes, to run this trial (not a new one) in the task
                lambda trial_id=trial._trial_id: remote.remote(on_node, trial_id, storage, board),
            )

    def on_done(number: object, run: TaskRun) -> None:
        write_returned(run, job.env_id, int(number), _trial_run_dir(job, int(number)))
        _say(job, run.result)

    def fail(number: object) -> None:
        """Tell a trial failed unless its task did (it does so when stopped in training)."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(trial.number == number for trial in running):
            study.tell(int(number), state=TrialState.FAIL)

    def on_failed(number: object, reason: str) -> None:
        fail(number)
        _say(job, f"trial {number} failed: {reason}")

    left = max(0, job.n_trials - len(study.get_trials(deepcopy=False)))
    drive(
        ray,
        submissions(),
        total=left,
        slots=slots,
        board=board,
        on_done=on_done,
        on_failed=on_failed,
        on_cancelled=fail,
    )


def _claim_trial(study: optuna.Study, job: TuneJob) -> optuna.Trial | None:
    with _study_lock(job):
        if len(study.get_trials(deepcopy=False)) >= job.n_trials:
            return None
        return study.ask()


def _trial_run_dir(job: TuneJob, number: int) -> Path:
    return job.runs_root / env_folder_name(job.env_id) / f"tune-{job.study}-t{number}"


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    job: TuneJob,
    trained_in: Path | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> str:
    """Train one sampled configuration, tell Optuna how it went (complete, pruned or failed) and return
    a line that says so. A Ray task trains ``trained_in`` (the run folder, or a temporary one whose files
    go back to the driver), resuming it if an attempt that died left a checkpoint there, and reports its
    progress to ``on_progress(step, planned steps, last evaluation)``."""
    from optuna.trial import TrialState

    from dqn_cli.cluster import train_or_resume
    from dqn_cli.training import StopTraining, TrainingDiverged, train

    run_dir = _trial_run_dir(job, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    params = job.space.sample(trial)
    started = time.perf_counter()

    def on_evaluation(step: int, mean_return: float) -> None:
        """Report to the pruner; the trainer records a pruned run as such in its status.json."""
        if on_progress is not None:
            on_progress(step, hp.n_timesteps, mean_return)
        trial.report(mean_return, step)
        if trial.should_prune():
            raise StopTraining(RunState.PRUNED, f"pruned at step {step:,} (eval return {mean_return:.1f})")

    try:
        hp = apply_overrides(job.base, params)
        trial.set_user_attr("hyperparameters", hp.to_dict())
        if trained_in is None:
            train_run = partial(train, run_dir=run_dir, quiet=True, runs_root=job.runs_root)
        else:
            train_run = partial(train_or_resume, run_dir=trained_in)
        result = train_run(
            job.env_id,
            hp,
            seed=trial.number,
            preset=job.preset,
            device=job.device,
            gym_packages=job.gym_packages,
            on_evaluation=on_evaluation,
        )
    except StopTraining as exc:  # raised only by on_evaluation, so the pruner asked for it
        study.tell(trial, state=TrialState.PRUNED)
        return f"trial {trial.number} {exc} after {time.perf_counter() - started:.1f}s"
    except (UserError, TrainingDiverged) as exc:
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return f"trial {trial.number} failed: {exc}"
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    _hold_after_stop(trial, hp, result)
    trial.set_user_attr("steps", result.steps)
    study.tell(trial, result.best_eval)
    shown = ", ".join(f"{key}={value}" for key, value in params.items())
    return (
        f"trial {trial.number}: best eval {result.best_eval:.1f} at {result.steps:,} steps in "
        f"{result.wall_time:.1f}s ({shown})"
    )


def _hold_after_stop(trial: optuna.Trial, hp: Hyperparameters, result: TrainResult) -> None:
    """A run that stopped because an evaluation reached ``stop_at_eval_return`` is reported as holding
    that return for the rest of its budget, so the pruner measures later steps of slower trials against
    it rather than only against other slow ones."""
    stopped_early = result.steps < hp.n_timesteps and result.last_eval is not None
    if not stopped_early or result.last_eval < hp.stop_at_eval_return:
        return
    first = (result.steps // hp.eval_freq + 1) * hp.eval_freq
    for step in range(first, hp.n_timesteps + 1, hp.eval_freq):
        trial.report(result.last_eval, step)


def _say(job: TuneJob, line: str) -> None:
    if not job.quiet:
        print(line, flush=True)


def summarize(job: TuneJob) -> TuneResult:
    """Count the study's trials and write the best one's hyperparameters as ``runs/tune/<study>-best.toml``.

    Best is the highest best-evaluation return; among equals (CartPole trials all stop at 500) the one
    that got there in the fewest env steps.
    """
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage))
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "steps" in t.user_attrs]
    if not complete:
        return TuneResult(job.study, counts, None)
    best = max(complete, key=lambda t: (t.value, -t.user_attrs["steps"]))
    hp = best.user_attrs["hyperparameters"]
    path = job.runs_root / TUNE_DIR / f"{job.study}-best.toml"
    header = (
        f"# Best trial ({best.number}, best eval return {best.value:.1f}) of Optuna study {job.study} "
        f"for {job.env_id}.\n# Train with it: dqn train {job.env_id} --config {path}"
        f"{naming_options(job.gym_packages)}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (header + tomli_w.dumps(hp)).encode())
    return TuneResult(
        job.study,
        counts,
        BestTrial(
            best.number,
            float(best.value),
            best.user_attrs["steps"],
            {key: hp[key] for key in best.params},
            best.user_attrs["run_dir"],
            path,
        ),
    )
