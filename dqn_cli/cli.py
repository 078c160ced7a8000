"""The `dqn` command line: parse, call the library, print. Heavy imports (torch, gymnasium) happen inside
commands so `dqn --help` stays fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial, wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from dqn_cli.errors import UserError

MAX_SEED = 2**32 - 1  # runfiles.SEED_LIMIT - 1, not imported: `dqn --help` loads no library module
VIDEO_FRAMES = 10_000  # `dqn record`'s length limit: a video of an untrained Atari agent stays short
UNLIMITED_WIDTH = 10_000  # `dqn runs` into a file or a pipe: as wide as its rows
DEBUG_VARIABLE = "DQN_DEBUG"  # set to 1: an unexpected error shows its traceback, for a bug report

app = typer.Typer(
    name="dqn",
    help="Train, evaluate and record Deep Q-Network agents on gymnasium games.\n\n"
    "Start with `dqn train CartPole-v1`, then `dqn eval` and `dqn record` on the newest run; "
    "`dqn runs` lists runs, `dqn plot` draws them, `dqn tune` searches hyperparameters.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion, for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    # Click's plain help: "markdown" drops every <placeholder> (runs/<env-id>/...), and "rich" prints the
    # docstrings' line breaks where the source has them.
    rich_markup_mode=None,
)


def _print_version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        from dqn_cli import __version__

        try:
            installed = version("dqn-cli")
        except PackageNotFoundError:  # run from a source tree that pip never installed
            installed = __version__
        typer.echo(f"dqn {installed}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print dqn's version and exit."
        ),
    ] = False,
) -> None:
    # Options of `dqn` itself, given before any command; the app's help stays the one above.
    pass


RunOrModel = Annotated[
    Path | None,
    typer.Argument(
        metavar="RUN_OR_MODEL",
        help="A run folder (uses its best.safetensors, else model.safetensors) or a .safetensors model file. "
        "Default: the newest run under ./runs.",
        show_default=False,
    ),
]
Device = Annotated[str, typer.Option(help="Where the network runs: auto (CUDA if present), cpu or cuda.")]
PresetName = Annotated[
    str | None,
    typer.Option(
        "--preset",
        metavar="NAME",
        help="Start from this shipped preset (`dqn presets` lists them, e.g. atari-cpu) instead of the "
        "one the env id picks.",
        show_default=False,
    ),
]
EnvOverride = Annotated[
    str | None,
    typer.Option(
        "--env",
        help="Play on this env id instead of the model's own (same observation shape and action count).",
        show_default=False,
    ),
]
Epsilon = Annotated[
    float | None,
    typer.Option(
        help="Probability of a random action (0 = greedy). Default: the run's eval_epsilon, as its "
        "evaluations played (0; 0.05 with the atari preset, as Mnih et al. 2015).",
        min=0.0,
        max=1.0,
        show_default=False,
    ),
]
Final = Annotated[
    bool,
    typer.Option(
        "--final", help="Use the weights at the end of training instead of the best-evaluated ones."
    ),
]
TrainEnvKwargs = Annotated[
    list[str] | None,
    typer.Option(
        "--env-kwargs",
        metavar="KEY=VALUE",
        help="Keyword argument for the env's constructor (RL Zoo's env_kwargs), e.g. --env-kwargs "
        "continuous=false; the value is TOML, a bare word a string. Repeatable; set over the preset's "
        "env_kwargs key by key and saved with the run, so eval and record make the same env.",
        show_default=False,
    ),
]
PlayEnvKwargs = Annotated[
    list[str] | None,
    typer.Option(
        "--env-kwargs",
        metavar="KEY=VALUE",
        help="Keyword argument for the env's constructor, replacing the run's own of that key (the run's "
        "others are kept; with --env, the run's are not used). The value is TOML, a bare word a string. "
        "Repeatable.",
        show_default=False,
    ),
]
GymPackages = Annotated[
    list[str] | None,
    typer.Option(
        "--gym-packages",
        metavar="MODULE",
        help="Import this module first: a package that registers gymnasium envs (RL Zoo's option). "
        "Repeatable. An id can name its module too: mygym:MyEnv-v0. Importing runs the module's code: a "
        "saved run whose env needs a package is played or resumed only when this names it.",
        show_default=False,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run each seed (bench) or trial (tune) as a task on a Ray cluster: auto (the cluster "
        "`ray start` made), ray://HOST:10001 (a remote head, through Ray Client) or local (a throwaway Ray "
        'on this machine). Needs pip install -e ".[ray]".',
        show_default=False,
    ),
]
RayStorage = Annotated[
    str,
    typer.Option(
        "--ray-storage",
        metavar="MODE",
        help="With --ray, how run folders reach this machine: shared (every node mounts runs/ at the same "
        "path, tasks write in place), return (tasks send their files back) or auto (shared if every node "
        "sees a marker file written here, else return).",
    ),
]


def _say(kind: str, message: str) -> None:
    """``kind: message`` on stderr, one line even when it quotes a file name holding a line break."""
    typer.echo(f"{kind}: {message}".replace("\r", "\\r").replace("\n", "\\n"), err=True)


def _fail(message: str, code: int = 2) -> None:
    _say("error", message)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into one line on stderr and exit code 2, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            _fail(str(exc))

    return wrapper


@app.command()
@user_errors
def train(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="ENV_ID | RUN",
            help="Gymnasium id of the game, e.g. CartPole-v1, LunarLander-v3 or ALE/Pong-v5. With "
            "--resume: the run folder to continue (default: the newest run with a checkpoint).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a run from its checkpoint, with its own config (--steps may raise the total).",
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(
            help="Seeds every random source; same seed on CPU gives the same run.", min=0, max=MAX_SEED
        ),
    ] = 0,
    steps: Annotated[
        int | None,
        typer.Option(help="Environment steps to train for (overrides the preset's n_timesteps).", min=1),
    ] = None,
    preset: PresetName = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of hyperparameters applied over the preset (a run's config.toml works too), "
            "or an RL Zoo .yml file such as rl_zoo3/hyperparams/dqn.yml: its entry for the env (else "
            "'atari' or 'default'), converted; keys with no equivalent are named in one warning line."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one hyperparameter, key=value with SB3 / RL Zoo names, e.g. "
            "--set learning_rate=1e-3 --set net_arch=[128,128]. Repeatable; applied last.",
        ),
    ] = None,
    env_kwargs: TrainEnvKwargs = None,
    gym_packages: GymPackages = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for this run (must be new or empty). Default: runs/<env-id>/<time>-s<seed>."
        ),
    ] = None,
    device: Device = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Train a DQN agent with the game's tuned preset, or the one --preset names (see `dqn presets`), and
    save the run folder.

    Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits 130 (143);
    `dqn train --resume` continues from it. A second Ctrl-C exits at once.
    """
    from contextlib import ExitStack

    from dqn_cli.envpackages import env_source, naming_options
    from dqn_cli.progress import log_seconds
    from dqn_cli.runfiles import read_config, run_to_resume
    from dqn_cli.runlock import hold_run_lock

    if not quiet:
        log_seconds()  # a bad DQN_PROGRESS_SECONDS is refused before anything is written
    held = ExitStack()
    if resume:
        if preset is not None or config is not None or set_ or env_kwargs or run_dir is not None:
            raise UserError(
                "--resume continues a run with its own config; "
                "drop --preset/--config/--set/--env-kwargs/--run-dir"
            )
        run = run_to_resume(Path(target) if target else None)
        # Locked before torch is imported or the checkpoint read, so a second writer is refused at once.
        held.enter_context(hold_run_lock(run))
    from dqn_cli.presets import resolve as resolve_preset
    from dqn_cli.training import TrainingDiverged, TrainingInterrupted, set_training_threads
    from dqn_cli.training import resume as resume_training
    from dqn_cli.training import train as run_training

    packages = tuple(gym_packages or [])
    try:
        if resume:
            set_training_threads(str(read_config(run).get("env_id", "")))
            result, exact = resume_training(
                run, steps=steps, device=device, quiet=quiet, gym_packages=packages
            )
            if not exact and not quiet:
                typer.echo(
                    "Episodes that were in flight restarted: this env's state cannot be saved exactly."
                )
        else:
            if target is None:
                raise UserError("missing ENV_ID: e.g. dqn train CartPole-v1 (or dqn train --resume [RUN])")
            sets = list(set_ or [])
            if steps is not None:
                sets.append(f"n_timesteps={steps}")
            source = env_source(target, packages)
            packages = source.packages  # with the module a module:EnvId-v0 id names
            preset, hp = resolve_preset(
                source.env_id, config, sets, preset, warn=partial(_say, "warning"), env_kwargs=env_kwargs
            )
            set_training_threads(source.env_id)
            result = run_training(
                source.env_id,
                hp,
                seed=seed,
                preset=preset,
                run_dir=run_dir,
                device=device,
                quiet=quiet,
                gym_packages=packages,
            )
    except TrainingDiverged as exc:
        _fail(f"{exc}; the files saved before it are kept", code=1)
    except TrainingInterrupted as exc:
        typer.echo(
            f"Interrupted at step {exc.step:,}; checkpoint saved in {exc.run_dir}. "
            f"Resume with: dqn train --resume {exc.run_dir}{naming_options(packages)}",
            err=True,
        )
        raise typer.Exit(exc.exit_code) from None
    finally:
        held.close()
    if not quiet:
        if result.stopped_early:
            typer.echo(result.stopped_early)
        best = "-" if result.best_eval is None else f"{result.best_eval:.1f}"
        typer.echo(f"Trained {result.steps:,} steps in {result.wall_time:.1f}s; best eval return {best}")
        typer.echo(f"Run saved in {result.run_dir}")
        again = f"{result.run_dir}{naming_options(packages)}"
        typer.echo(f"Next: dqn eval {again}  |  dqn record {again}")


def _load(
    run_or_model: Path | None,
    final: bool,
    device: str,
    env_id: str | None,
    env_kwargs: list[str] | None,
    gym_packages: list[str] | None,
):
    from dqn_cli.evaluation import load_trained

    return load_trained(run_or_model, final, device, env_id, env_kwargs, gym_packages or [])


@contextmanager
def _stops_on_signal(outcome: str) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM outside training: what was running cleans up, then one line saying what is
    left (``outcome``) and exit 130 or 143, as a shell reports a process the signal ended."""
    from dqn_cli.interrupts import exit_code, interruptible

    try:
        with interruptible():
            yield
    except KeyboardInterrupt as exc:
        _say("interrupted", outcome)
        raise typer.Exit(exit_code(exc)) from None


@app.command("eval")
@user_errors
def eval_(
    run_or_model: RunOrModel = None,
    episodes: Annotated[int, typer.Option(help="Number of episodes to play.", min=1)] = 10,
    epsilon: Epsilon = None,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation episodes.", min=0, max=MAX_SEED)] = 0,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: env_id, episodes, mean_return, std_return, returns (and "
            "optimal_return on toy-text envs).",
        ),
    ] = False,
    render: Annotated[
        bool, typer.Option("--render", help="Show the game in a window while it plays.")
    ] = False,
    final: Final = False,
    env: EnvOverride = None,
    env_kwargs: PlayEnvKwargs = None,
    gym_packages: GymPackages = None,
    device: Device = "auto",
) -> None:
    """Play episodes with a trained model as its evaluations did and report the returns: greedy or with the
    run's eval_epsilon, each episode ended at eval_max_frames (Atari: 18,000 frames, 5 minutes). On envs
    that publish their transition table (FrozenLake, Taxi, CliffWalking) it also prints the optimal
    policy's expected return over such episodes, by value iteration."""
    with _stops_on_signal("no returns were reported"):
        import numpy as np

        from dqn_cli.evaluation import play_rendered, prepare_play_process
        from dqn_cli.progress import EpisodeProgress

        prepare_play_process()
        trained = _load(run_or_model, final, device, env, env_kwargs, gym_packages)
        if render:
            policy = trained.policy(seed, epsilon)
            returns = play_rendered(policy, trained.env_id, episodes, seed, trained.hyperparameters)
        else:
            with EpisodeProgress(f"eval {trained.env_id}", episodes) as progress:
                returns = trained.score(episodes, seed, epsilon, progress.advance)
        optimum = trained.optimal_return()
    summary = {
        "env_id": trained.env_id,
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "min_return": float(np.min(returns)),
        "max_return": float(np.max(returns)),
        "returns": returns,
        "model": str(trained.path),
    }
    if optimum is not None:
        summary["optimal_return"] = optimum
    if json_:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"{trained.env_id} ({trained.path}), {episodes} episodes: "
        f"{summary['mean_return']:.2f} ± {summary['std_return']:.2f} "
        f"(min {summary['min_return']:.2f}, max {summary['max_return']:.2f})"
    )
    if optimum is not None:
        typer.echo(
            f"optimal policy's expected return (value iteration): {optimum:.3f}; "
            f"gap {optimum - summary['mean_return']:.3f}"
        )


@app.command()
@user_errors
def record(
    run_or_model: RunOrModel = None,
    episodes: Annotated[int, typer.Option(help="Number of episodes to film.", min=1)] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Video file, .mp4 or .gif. A bare file name goes into the run's videos/ folder. "
            "Default: videos/<model>-<time>.mp4."
        ),
    ] = None,
    epsilon: Epsilon = None,
    seed: Annotated[int, typer.Option(help="Seed of the filmed episodes.", min=0, max=MAX_SEED)] = 0,
    max_frames: Annotated[
        int,
        typer.Option(help="Length limit of the video in frames; an episode in progress there is cut.", min=1),
    ] = VIDEO_FRAMES,
    best_of: Annotated[
        int,
        typer.Option(
            help="Play N episodes (seeds SEED to SEED+N-1) unfilmed, then film only the highest-scoring one.",
            min=1,
        ),
    ] = 1,
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay",
            help="Draw beside the game a bar per action: the Q-values the network computed for each frame, "
            "the chosen action highlighted, the score so far, and whether the action was greedy or random.",
        ),
    ] = False,
    final: Final = False,
    env: EnvOverride = None,
    env_kwargs: PlayEnvKwargs = None,
    gym_packages: GymPackages = None,
    device: Device = "auto",
) -> None:
    """Film episodes of a trained model, played as its evaluations were, to an mp4 or gif and print its
    path; the returns go to stderr."""
    if best_of > 1 and episodes > 1:
        raise UserError("--best-of films one episode, the best of N; drop --episodes")
    with _stops_on_signal("nothing was written"):
        from dqn_cli.evaluation import prepare_play_process, record_video, video_path
        from dqn_cli.progress import EpisodeProgress

        prepare_play_process(filming=True)
        trained = _load(run_or_model, final, device, env, env_kwargs, gym_packages)
        path = video_path(trained.path, out)
        policy = trained.policy(seed, epsilon)
        played_episodes = episodes if best_of == 1 else best_of + 1  # the best is played twice
        with EpisodeProgress(f"record {trained.env_id}", played_episodes) as progress:
            played = record_video(
                policy,
                trained.env_id,
                episodes,
                seed,
                path,
                trained.hyperparameters,
                progress.advance,
                max_frames,
                best_of,
                overlay,
            )
    typer.echo(str(path))
    summary = f"{played.frames} frames, returns {', '.join(f'{r:.1f}' for r in played.returns)}"
    if played.candidates:
        scored = ", ".join(f"{r:.1f}" for r in played.candidates)
        summary += f" (seed {played.seed}, the best of {best_of} episodes scored: {scored})"
    if played.cut:
        summary += f"; cut at --max-frames {max_frames}: the last return counts only what was filmed"
    print(summary, file=sys.stderr)


@app.command()
@user_errors
def bench(
    env_ids: Annotated[
        list[str], typer.Argument(metavar="ENV_ID...", help="Games to benchmark, e.g. CartPole-v1.")
    ],
    seeds: Annotated[int, typer.Option(help="Seeds per env (1..N).", min=1, max=MAX_SEED)] = 5,
    jobs: Annotated[int, typer.Option(help="Runs trained at once, each in its own process.", min=1)] = 1,
    preset: PresetName = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a hyperparameter of every env's preset, key=value. Repeatable."),
    ] = None,
    env_kwargs: TrainEnvKwargs = None,
    gym_packages: GymPackages = None,
    name: Annotated[
        str | None, typer.Option(help="Folder name under runs/bench/ (default: the start time).")
    ] = None,
    device: Device = "auto",
    ray: RayAddress = None,
    ray_storage: RayStorage = "auto",
) -> None:
    """Train N seeds of each env with its preset (or all with --preset's); write a results table and
    learning curves.

    Output: runs/bench/<name>/ with a run folder per seed, results.md, results.json and <env>-curves.png.
    """
    failures = []

    def report(result) -> None:
        from dqn_cli.bench import FailedSeed

        if isinstance(result, FailedSeed):  # a seed whose Ray task failed for good
            failures.append(result)
            typer.echo(f"{result.env_id} seed {result.seed}: failed: {result.reason}", err=True)
            return
        typer.echo(
            f"{result.env_id} seed {result.seed}: {result.best_model_return:.1f} (best model), "
            f"{result.final_model_return:.1f} (final), {result.steps:,} steps, {result.wall_time:.0f} s",
            err=True,
        )

    with _stops_on_signal("finished runs are kept, stopped ones can be resumed; no results were written"):
        from dqn_cli.bench import WorkerDied, run_bench
        from dqn_cli.cluster import file_mode

        try:
            bench_dir = run_bench(
                env_ids,
                seeds,
                jobs,
                name,
                device,
                sets=set_,
                on_result=report,
                preset=preset,
                env_kwargs=env_kwargs,
                gym_packages=gym_packages,
                ray=ray,
                ray_storage=file_mode(ray_storage),
            )
        except WorkerDied as exc:
            _fail(str(exc), code=1)
    typer.echo((bench_dir / "results.md").read_text())
    typer.echo(f"Saved in {bench_dir}")
    if failures:
        _fail(f"{len(failures)} seed(s) failed for good (see results.md); the others are summarised", code=1)


@app.command()
@user_errors
def presets(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME",
            help="Show this preset as written in its file: a comment saying what it is for, then its "
            "key = value pairs (keys it leaves out keep the defaults that --keys lists). The output works "
            "as a --config file.",
            show_default=False,
        ),
    ] = None,
    keys: Annotated[
        bool, typer.Option("--keys", help="List every hyperparameter key with its default.")
    ] = False,
) -> None:
    """List the shipped presets, each with what it is for; show one (NAME); or list the hyperparameter
    keys (--keys). `dqn train`, `bench` and `tune` take any of them with --preset NAME."""
    from dqn_cli.hyperparameters import Hyperparameters
    from dqn_cli.presets import available_presets, preset_description, preset_text

    if keys:
        if name is not None:
            raise UserError("give a preset NAME or --keys, not both")
        defaults = Hyperparameters().to_dict()
        for key, doc in Hyperparameters.docs().items():
            typer.echo(f"{key:24} {defaults[key]!s:12} {doc}")
    elif name is not None:
        typer.echo(preset_text(name), nl=False)
    else:
        names = available_presets()
        width = max(map(len, names))
        for shipped in names:
            typer.echo(f"{shipped:{width}}  {preset_description(shipped)}")


@app.command()
@user_errors
def runs(
    env: Annotated[
        str | None, typer.Option("--env", help="Only the runs of this game, e.g. CartPole-v1.")
    ] = None,
) -> None:
    """List the runs under ./runs (those of `dqn bench` and `dqn tune` too), oldest first: steps done and
    planned, gradient updates, evaluations, time and state (running, finished, interrupted, diverged, or
    pruned by `dqn tune`)."""
    from rich.console import Console

    from dqn_cli.runfiles import RUNS_ROOT
    from dqn_cli.runlist import RunsView, list_runs

    found = list_runs(RUNS_ROOT, env_id=env)
    for problem in (problem for run in found for problem in run.problems):
        _say("warning", f"{problem}; the run is listed with what could be read")
    if not found:
        where = f" for {env}" if env else ""
        typer.echo(f"No runs{where} under ./runs yet; start one with `dqn train ENV_ID`.")
        return
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or a pipe: whole rows, to grep
        console = Console(width=UNLIMITED_WIDTH)
    console.print(RunsView(found))


@app.command()
@user_errors
def plot(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="RUN",
            help="Run folders to draw, or folders holding runs (every run below them), e.g. "
            "runs/CartPole-v1 or runs/bench/NAME. Default: the newest run under ./runs.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="PNG file to write. Default: curves.png in the run folder for one run, or in the folder "
            "the runs share for several."
        ),
    ] = None,
    smooth: Annotated[
        int, typer.Option(help="Episodes in the rolling mean of the episode returns.", min=1)
    ] = 20,
) -> None:
    """Draw learning curves (episode return vs env steps, evaluations as dots) of runs into one PNG.
    Runs of one game that differ only in seed are drawn as their mean with a min-max band."""
    from dqn_cli.metrics import METRICS_FILE
    from dqn_cli.plotting import plot_runs
    from dqn_cli.runfiles import newest_run

    runs = run_dirs or [newest_run(having=(METRICS_FILE,), what=METRICS_FILE)]
    typer.echo(str(plot_runs(runs, out, smooth)))


@app.command()
@user_errors
def tune(
    env_id: Annotated[str, typer.Argument(help="Gymnasium id of the game, e.g. CartPole-v1.")],
    trials: Annotated[
        int, typer.Option(help="Trials the study holds when done, counting those run before.", min=1)
    ],
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage, a SQLAlchemy URL: workers on many machines share a study through "
            "e.g. postgresql+psycopg://user:password@host/db. Default: sqlite:///runs/tune/<study>.db."
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name; an existing one is continued. Default: <env-id>-<time>."),
    ] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes on this machine.", min=1)] = 1,
    space: Annotated[
        Path | None,
        typer.Option(help="Search space TOML file. Default: the space shipped for the game's family."),
    ] = None,
    preset: PresetName = None,
    env_kwargs: TrainEnvKwargs = None,
    gym_packages: GymPackages = None,
    device: Device = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
    ray: RayAddress = None,
    ray_storage: RayStorage = "auto",
) -> None:
    """Search hyperparameters with Optuna: each trial is an ordinary run from the game's preset (or
    --preset's) with sampled values over it, pruned early when its evaluations trail the others'. Prints
    the best parameters and writes them as a preset for `dqn train --config`."""
    with _stops_on_signal("finished trials are kept in the study, stopped ones are marked failed"):
        from dqn_cli.cluster import file_mode
        from dqn_cli.envpackages import naming_options
        from dqn_cli.tuning import WorkerFailed, prepare, shown_storage
        from dqn_cli.tuning import tune as run_study

        job = prepare(
            env_id,
            trials,
            storage=storage,
            study=study,
            space_file=space,
            device=device,
            quiet=quiet,
            preset=preset,
            env_kwargs=env_kwargs,
            gym_packages=gym_packages,
        )
        if not quiet:
            workers = f"on the Ray cluster {ray}" if ray else f"{jobs} worker(s)"
            typer.echo(
                f"Study {job.study} in {shown_storage(job.storage)}: {trials} trials, {workers}, "
                f"preset {job.preset}, search space {job.space.name}"
            )
        try:
            result = run_study(job, jobs, ray, file_mode(ray_storage))
        except WorkerFailed as exc:
            _fail(str(exc), code=1)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts.items()))
    typer.echo(f"Study {result.study}: {counts or 'no trials'}")
    if result.best is None:
        _fail("no trial completed, so there is no best preset", code=1)
    best = result.best
    typer.echo(f"Best: trial {best.number}, eval return {best.value:.1f} after {best.steps:,} steps")
    typer.echo(f"  run: {best.run_dir}")
    for key, value in best.params.items():
        typer.echo(f"  {key} = {value}")
    typer.echo(f"Preset written to {best.preset_file}")
    typer.echo(f"Next: dqn train {job.env_id} --config {best.preset_file}{naming_options(job.gym_packages)}")


def main() -> None:
    """Run the app; usage errors (a bad option value, a missing argument) become one line and exit 2.
    Any other exception is a bug: one line asking for a report and exit 1, or, with DQN_DEBUG=1 in the
    environment, the traceback to put in it."""
    from typer.exceptions import Abort, TyperException

    try:
        code = app(standalone_mode=False, prog_name="dqn")  # also `python -m dqn_cli`: completion keys on it
    except TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `dqn`: the help is the answer, not an error
            if exc.format_message():  # rich, when installed, has printed it already
                typer.echo(exc.format_message())
            sys.exit(0)
        _say("error", exc.format_message())
        sys.exit(2)
    except (Abort, KeyboardInterrupt):  # Ctrl-C outside training
        sys.exit(130)
    except Exception as exc:
        if os.environ.get(DEBUG_VARIABLE) == "1":
            raise
        detail = (str(exc).splitlines() or [""])[0]
        _say(
            "error",
            f"unexpected {type(exc).__name__}: {detail}; this is a bug in dqn, please report it with the "
            f"traceback that {DEBUG_VARIABLE}=1 shows",
        )
        sys.exit(1)
    sys.exit(code or 0)
