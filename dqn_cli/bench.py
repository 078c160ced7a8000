"""`dqn bench`: train several seeds per env with the shipped presets and summarise them in one folder.

``runs/bench/<name>/`` gets a run folder per (env, seed), ``results.md`` (a markdown table: mean ± std of
the final 20-episode evaluation, env steps, wall time; for Atari games also human-normalized scores and
their aggregate), ``results.json`` and one learning-curve PNG per env (mean over seeds with a min-max band).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from dqn_cli.atari import is_atari
from dqn_cli.envpackages import env_source, import_packages
from dqn_cli.envs import check_env_id
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.interrupts import Interrupted, die_with_parent, stop_processes
from dqn_cli.presets import resolve
from dqn_cli.runfiles import RUNS_ROOT, check_seed, env_folder_name, write_atomic
from dqn_cli.scores import CONFIDENCE, SCORES_FILE, atari_game, baselines, interval_estimates

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
    return SeedResult(
        env_id,
        seed,
        str(run_dir),
        result.steps,
        result.wall_time,
        _evaluation_mean(run_dir, False, gym_packages),
        _evaluation_mean(run_dir, True, gym_packages),
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
    paragraphs = []
    if scored:
        scores = np.array([[_normalized(r) for r in results if r.env_id == env_id] for env_id in scored]).T
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


def _table(results: list[SeedResult], env_ids: list[str]) -> str:
    """results.md. A bench with Atari games gets a human-normalized column and its aggregate; the
    tables of other benches are as before."""
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
        best = [r.best_model_return for r in rows]
        final = [r.final_model_return for r in rows]
        steps = statistics.mean(r.steps for r in rows)
        wall = statistics.mean(r.wall_time for r in rows)
        scale = baselines(env_id)
        lines.append(
            row(
                env_id,
                str(len(rows)),
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
) -> Path:
    """Train seeds 1..``seeds`` of every env (``jobs`` processes at once) and write the bench folder;
    every env starts from ``preset`` if given (else its own), and ``sets`` are ``key=value`` overrides
    applied over it, then ``env_kwargs``. ``gym_packages`` are imported first (see envpackages); an id may
    also name its module, ``mygym:MyEnv-v0``."""
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
        check_trainable(env_id, resolved[env_id][1], device, packages[env_id])
    bench_dir = runs_root / "bench" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[Task] = [
        (env_id, seed, bench_dir / f"{env_folder_name(env_id)}-s{seed}", *resolved[env_id], packages[env_id])
        for env_id in env_ids
        for seed in range(1, seeds + 1)
    ]
    results: list[SeedResult] = []

    def done(result: SeedResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    if jobs <= 1:
        for task in tasks:
            done(_train_and_score(*task, device))
    else:
        _train_in_workers(tasks, jobs, device, done)
    write_atomic(bench_dir / "results.md", _table(results, env_ids).encode())
    write_atomic(bench_dir / "results.json", json.dumps([_json_row(r) for r in results], indent=2).encode())
    for env_id in env_ids:
        runs = [Path(r.run_dir) for r in results if r.env_id == env_id]
        plot_runs(runs, out=bench_dir / f"{env_folder_name(env_id)}-curves.png")
    return bench_dir
