"""`dqn bench`: train several seeds per env with the shipped presets and summarise them in one folder.

``runs/bench/<name>/`` gets a run folder per (env, seed), ``results.md`` (a markdown table: mean ± std of
the final 20-episode evaluation, env steps, wall time; for Atari games also human-normalized scores and
their aggregate), ``results.json`` and one learning-curve PNG per env (mean over seeds with a min-max band).

With ``--ray`` each seed is a Ray task (see ``cluster``): a seed whose task failed for good (its worker
died more than the retries allow, or dqn raised) is marked in both files, and the others are summarised.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import statistics
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqn_cli.atari import is_atari
from dqn_cli.cluster import FileMode
from dqn_cli.envpackages import env_source, import_packages
from dqn_cli.envs import check_env_id
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.interrupts import Interrupted, die_with_parent, stop_processes
from dqn_cli.presets import resolve
from dqn_cli.runfiles import RUNS_ROOT, check_seed, env_folder_name, write_atomic
from dqn_cli.scores import CONFIDENCE, SCORES_FILE, atari_game, baselines, interval_estimates

if TYPE_CHECKING:
    from dqn_cli.cluster import Storage, TaskRun
    from dqn_cli.training import TrainResult

# env id, seed, run folder, preset name, its values, the modules that register the env (--gym-packages)
Task = tuple[str, int, Path, str, Hyperparameters, tuple[str, ...]]

FINAL_EVAL_EPISODES = 20
FINAL_EVAL_SEED = 0  # the same episodes `dqn eval` plays by default


@dataclass
class SeedResult:
    env_id: str
    seed: int
    run_dir: str
    steps: int
    wall_time: float
    best_model_return: float  # 20 evaluation episodes of best.safetensors, what `dqn eval RUN` reports
    final_model_return: float  # the same for model.safetensors, the weights at the end of training
    ray_node_id: str | None = None  # the Ray node that trained it (--ray), else None


@dataclass(frozen=True)
class FailedSeed:
    """A seed whose Ray task failed for good, and why in one line."""

    env_id: str
    seed: int
    run_dir: str
    reason: str


class WorkerDied(RuntimeError):
    """A worker process ended without handing back its run (killed, out of memory)."""


def _evaluation_mean(run_dir: Path, final: bool, gym_packages: tuple[str, ...]) -> float:
    """As `dqn eval` scores a model: the run's eval_epsilon (0.05 for Atari, else greedy) and frame cap."""
    from dqn_cli.evaluation import load_trained

    trained = load_trained(run_dir, final=final, device="cpu", gym_packages=gym_packages)
    return statistics.mean(trained.score(FINAL_EVAL_EPISODES, FINAL_EVAL_SEED))


def _train_and_score(
    env_id: str,
    seed: int,
    run_dir: Path,
    preset: str,
    hp: Hyperparameters,
    gym_packages: tuple[str, ...],
    device: str,
) -> SeedResult:
    from dqn_cli.training import TrainingInterrupted, set_training_threads, train

    set_training_threads(env_id)  # this worker process trains one run after another
    try:
        result = train(
            env_id,
            hp,
            seed=seed,
            preset=preset,
            run_dir=run_dir,
            device=device,
            quiet=True,
            gym_packages=gym_packages,
        )
    except TrainingInterrupted as exc:  # checkpointed: the bench stops as at Ctrl-C anywhere else
        raise Interrupted(exc.exit_code - 128) from None
    return _scored(env_id, seed, run_dir, result, run_dir, gym_packages)


def _scored(
    env_id: str,
    seed: int,
    run_dir: Path,
    result: TrainResult,
    trained_in: Path,
    gym_packages: tuple[str, ...],
    ray_node_id: str | None = None,
) -> SeedResult:
    """The seed's row: its training, and its models (in ``trained_in``) scored as `dqn eval` scores them."""
    return SeedResult(
        env_id,
        seed,
        str(run_dir),
        result.steps,
        result.wall_time,
        _evaluation_mean(trained_in, False, gym_packages),
        _evaluation_mean(trained_in, True, gym_packages),
        ray_node_id,
    )


def _spread(values: list[float], digits: int = 1) -> str:
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({min(values):.{digits}f})"


def _normalized(result: SeedResult) -> float | None:
    """The best model's score on its game's human-normalized scale; None where the game has none."""
    scale = baselines(result.env_id)
    return None if scale is None else scale.normalize(result.best_model_return)


def _json_row(result: SeedResult) -> dict:
    """An Atari game's row also holds its human-normalized score (null where the game has none)."""
    row = asdict(result)
    if is_atari(result.env_id):
        row["human_normalized"] = _normalized(result)
    return row


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _normalized_summary(results: list[SeedResult], env_ids: list[str]) -> list[str]:
    """Paragraphs under the per-env table: the aggregate over every (seed, game) run that has a
    human-normalized score, and a note for each Atari game that has none."""
    scored = [env_id for env_id in env_ids if baselines(env_id) is not None]
    # the seeds that finished in every scored game (with --ray, a seed may have failed in one)
    finished = [{r.seed for r in results if r.env_id == env_id} for env_id in scored]
    common = set.intersection(*finished) if finished else set()
    paragraphs = []
    if common:
        runs = [r for r in results if r.seed in common]
        scores = np.array([[_normalized(r) for r in runs if r.env_id == env_id] for env_id in scored]).T
        estimates = interval_estimates(scores).items()
        summary = ", ".join(f"{name} {e.value:.2f} [{e.low:.2f}, {e.high:.2f}]" for name, e in estimates)
        seeds, games = scores.shape
        paragraphs.append(
            f"Human-normalized score of the best models over {_count(scores.size, 'run')} "
            f"({_count(seeds, 'seed')} of {_count(games, 'Atari game')}), with {CONFIDENCE:.0%} "
            f"stratified-bootstrap confidence intervals (Agarwal et al. 2021): {summary}."
        )
    paragraphs += [
        f"Note: {env_id} has no human-normalized score (-): {SCORES_FILE} has no random and human scores "
        f"for its game, {atari_game(env_id)}, so it is left out of the aggregate."
        for env_id in env_ids
        if is_atari(env_id) and env_id not in scored
    ]
    return [line for paragraph in paragraphs for line in ("", paragraph)]


def _table(results: list[SeedResult], env_ids: list[str], failed: list[FailedSeed] | None = None) -> str:
    """results.md. A bench with Atari games gets a human-normalized column and its aggregate; the
    tables of other benches are as before. Seeds that failed for good (``--ray``) are marked."""
    failed = failed or []
    normalizing = any(is_atari(env_id) for env_id in env_ids)

    def row(*cells: str, normalized: str) -> str:
        return "| " + " | ".join([*cells, normalized] if normalizing else cells) + " |"

    lines = [
        row(
            "env",
            "seeds",
            f"best model, {FINAL_EVAL_EPISODES} evaluation episodes: mean ± std (min)",
            "final model: mean ± std (min)",
            "env steps (mean)",
            "wall time per seed (mean)",
            normalized="best model, human-normalized: mean ± std (min)",
        ),
        row(*["---"] * 6, normalized="---"),
    ]
    for env_id in env_ids:
        rows = [r for r in results if r.env_id == env_id]
        lost = sum(f.env_id == env_id for f in failed)
        seeds = str(len(rows)) + (f" ({lost} failed)" if lost else "")
        if not rows:
            lines.append(row(env_id, seeds, *["-"] * 4, normalized="-"))
            continue
        best = [r.best_model_return for r in rows]
        final = [r.final_model_return for r in rows]
        steps = statistics.mean(r.steps for r in rows)
        wall = statistics.mean(r.wall_time for r in rows)
        scale = baselines(env_id)
        lines.append(
            row(
                env_id,
                seeds,
                _spread(best),
                _spread(final),
                f"{steps:,.0f}",
                f"{wall:.1f} s",
                normalized="-" if scale is None else _spread([scale.normalize(b) for b in best], digits=2),
            )
        )
    if normalizing:
        lines += _normalized_summary(results, env_ids)
    lines += [
        "",
        row(
            "env",
            "seed",
            "best model",
            "final model",
            "env steps",
            "wall time",
            normalized="human-normalized",
        ),
        row(*["---"] * 6, normalized="---"),
    ]
    lines += [
        row(
            r.env_id,
            str(r.seed),
            f"{r.best_model_return:.1f}",
            f"{r.final_model_return:.1f}",
            f"{r.steps:,}",
            f"{r.wall_time:.1f} s",
            normalized="-" if (n := _normalized(r)) is None else f"{n:.2f}",
        )
        for r in results
    ]
    lines += [row(f.env_id, str(f.seed), "failed", "-", "-", "-", normalized="-") for f in failed]
    if failed:
        lines += ["", "Failed for good (no result for these seeds):"]
        lines += [f"- {f.env_id} seed {f.seed}: {f.reason}" for f in failed]
    return "\n".join(lines) + "\n"


def _start_worker(parent_pid: int) -> None:
    """A pool worker's first act. Ctrl-C at the terminal reaches the whole process group: an idle worker
    ignores it (it would print a traceback), as the parent stops its workers with SIGTERM; a worker in
    training checkpoints its run on either. A worker dies with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def _train_in_worker(
    env_id: str,
    seed: int,
    run_dir: Path,
    preset: str,
    hp: Hyperparameters,
    gym_packages: tuple[str, ...],
    device: str,
) -> SeedResult:
    """``_train_and_score`` in a pool worker. A worker whose run a signal stopped exits rather than take
    the next run from the pool's queue: the bench is being stopped."""
    try:
        return _train_and_score(env_id, seed, run_dir, preset, hp, gym_packages, device)
    except Interrupted as exc:
        os._exit(exc.exit_code)


def _train_in_workers(
    tasks: list[Task],
    jobs: int,
    device: str,
    done: Callable[[SeedResult], None],
) -> None:
    """Train each task in one of ``jobs`` processes (not threads: each trains with its own torch and its own
    core) and hand its result to ``done`` in task order. On any exception, Ctrl-C and SIGTERM included, the
    other runs are stopped (checkpointed) and the workers ended before it propagates: none outlives the
    bench, and no half-finished run is scored."""
    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )
    try:
        futures = [pool.submit(_train_in_worker, *task, device) for task in tasks]
        for future in futures:
            done(future.result())
    except BaseException as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_processes(multiprocessing.active_children())
        if isinstance(exc, BrokenProcessPool):
            raise WorkerDied(
                "a bench worker process died (killed, or out of memory?); the runs finished before are kept"
            ) from None
        raise
    pool.shutdown()


def _train_as_ray_task(task: Task, device: str, storage: Storage, board: Any) -> TaskRun:
    """One seed as a Ray task, on whichever node Ray chose: the same run, and so the same weights, as a
    local worker trains for this seed; scored there; its files handed back if the driver cannot see them."""
    import ray

    from dqn_cli.cluster import Reporter, TaskRun, returned_files, task_folder, train_or_resume
    from dqn_cli.training import set_training_threads

    env_id, seed, run_dir, preset, hp, gym_packages = task
    set_training_threads(env_id)
    report = Reporter(board, (env_id, seed))
    report(0, hp.n_timesteps, None)
    node_id = ray.get_runtime_context().get_node_id()
    with task_folder(storage, run_dir) as folder:
        result = train_or_resume(
            env_id,
            hp,
            seed=seed,
            preset=preset,
            run_dir=folder,
            device=device,
            gym_packages=gym_packages,
            on_evaluation=lambda step, mean_return: report(step, hp.n_timesteps, mean_return),
        )
        scored = _scored(env_id, seed, run_dir, result, folder, gym_packages, node_id)
        return TaskRun(scored, returned_files(storage, folder))


def _train_on_ray(
    tasks: list[Task],
    address: str,
    file_mode: FileMode,
    device: str,
    bench_dir: Path,
    done: Callable[[SeedResult], None],
    failed: Callable[[FailedSeed], None],
) -> None:
    """Train each task as a Ray task on the cluster at ``address``; see ``cluster.drive`` for Ctrl-C."""
    from dqn_cli.cluster import (
        Submission,
        connected,
        drive,
        progress_board,
        run_storage,
        task_options,
        write_returned,
    )

    by_key = {(task[0], task[1]): task for task in tasks}
    with connected(address) as ray, run_storage(ray, bench_dir, file_mode) as storage:
        print(storage.describe(), file=sys.stderr, flush=True)
        board, remote = progress_board(ray), ray.remote(_train_as_ray_task)

        def submissions() -> Iterator[Submission]:
            for task in tasks:
                options, task_device = task_options(ray, task[0], device)
                submit = remote.options(**options).remote
                yield Submission(
                    (task[0], task[1]),
                    f"{task[0]} seed {task[1]}",
                    lambda submit=submit, task=task, task_device=task_device: submit(
                        task, task_device, storage, board
                    ),
                )

        def on_done(key: object, run: TaskRun) -> None:
            env_id, seed, run_dir, *_ = by_key[key]
            write_returned(run, env_id, seed, run_dir)
            done(run.result)

        def on_failed(key: object, reason: str) -> None:
            env_id, seed, run_dir, *_ = by_key[key]
            failed(FailedSeed(env_id, seed, str(run_dir), reason))

        slots = len(tasks)  # all submitted at once: Ray queues each until a node has its CPUs free
        drive(ray, submissions(), total=slots, slots=slots, board=board, on_done=on_done, on_failed=on_failed)


def _check_new(tasks: list[Task]) -> None:
    """Ray runs a task again after its worker died, and that attempt takes over what it finds in the run
    folder: so a `--ray` bench starts only where no run folder holds files yet."""
    for task in tasks:
        run_dir = task[2]
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run folder {run_dir} already holds files; choose another --name")


def run_bench(
    env_ids: list[str],
    seeds: int,
    jobs: int = 1,
    name: str | None = None,
    device: str = "auto",
    runs_root: Path = RUNS_ROOT,
    sets: list[str] | None = None,
    on_result=None,
    preset: str | None = None,
    env_kwargs: list[str] | None = None,
    gym_packages: list[str] | None = None,
    ray: str | None = None,
    ray_storage: FileMode = FileMode.AUTO,
) -> Path:
    """Train seeds 1..``seeds`` of every env (``jobs`` processes at once, or as tasks on the Ray cluster
    at ``ray`` with run folders reaching this machine as ``ray_storage`` says) and write the bench folder;
    every env starts from ``preset`` if given (else its own), and ``sets`` are ``key=value`` overrides
    applied over it, then ``env_kwargs``. ``gym_packages`` are imported first (see envpackages); an id may
    also name its module, ``mygym:MyEnv-v0``. ``on_result`` gets each SeedResult, and each FailedSeed."""
    from dqn_cli.plotting import plot_runs
    from dqn_cli.training import check_trainable

    check_seed(seeds, "--seeds")  # seeds 1..seeds
    sources = [env_source(env_id, gym_packages or []) for env_id in env_ids]
    env_ids = [source.env_id for source in sources]
    packages = {source.env_id: source.packages for source in sources}
    resolved: dict[str, tuple[str, Hyperparameters]] = {}  # what is checked here is what is trained
    for env_id in env_ids:  # every env, preset and memory need is checked before anything is written
        import_packages(packages[env_id])
        check_env_id(env_id)
        resolved[env_id] = resolve(env_id, sets=sets, preset=preset, env_kwargs=env_kwargs)
        # on the driver: a Ray task's device is the node's (see cluster.task_options)
        check_trainable(env_id, resolved[env_id][1], "cpu" if ray else device, packages[env_id])
    bench_dir = runs_root / "bench" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if ray:
        from dqn_cli.cluster import require_ray

        require_ray(ray, jobs)  # one line if Ray is missing, before anything is written
        bench_dir = bench_dir.resolve()  # tasks run in other folders, on other machines
    bench_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[Task] = [
        (env_id, seed, bench_dir / f"{env_folder_name(env_id)}-s{seed}", *resolved[env_id], packages[env_id])
        for env_id in env_ids
        for seed in range(1, seeds + 1)
    ]
    results: list[SeedResult] = []
    failures: list[FailedSeed] = []

    def done(result: SeedResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    def failed(failure: FailedSeed) -> None:
        failures.append(failure)
        if on_result:
            on_result(failure)

    if ray:
        _check_new(tasks)
        _train_on_ray(tasks, ray, ray_storage, device, bench_dir, done, failed)
    elif jobs <= 1:
        for task in tasks:
            done(_train_and_score(*task, device))
    else:
        _train_in_workers(tasks, jobs, device, done)
    order = {(task[0], task[1]): index for index, task in enumerate(tasks)}  # Ray's come as they end
    results.sort(key=lambda r: order[(r.env_id, r.seed)])
    failures.sort(key=lambda f: order[(f.env_id, f.seed)])
    rows = [_json_row(r) for r in results]
    rows += [{"env_id": f.env_id, "seed": f.seed, "run_dir": f.run_dir, "failed": f.reason} for f in failures]
    write_atomic(bench_dir / "results.md", _table(results, env_ids, failures).encode())
    write_atomic(bench_dir / "results.json", json.dumps(rows, indent=2).encode())
    for env_id in env_ids:
        runs = [Path(r.run_dir) for r in results if r.env_id == env_id]
        if runs:
            plot_runs(runs, out=bench_dir / f"{env_folder_name(env_id)}-curves.png")
    return bench_dir
