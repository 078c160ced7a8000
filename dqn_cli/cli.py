"""The `dqn` command line: parse, call the library, print. Heavy imports (torch, gymnasium) happen inside
commands so `dqn --help` stays fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from dqn_cli.errors import UserError

MAX_SEED = 2**32 - 1  # runfiles.SEED_LIMIT - 1, not imported: `dqn --help` loads no library module
VIDEO_FRAMES = 10_000  # `dqn record`'s length limit: a video of an untrained Atari agent stays short
DEBUG_VARIABLE = "DQN_DEBUG"  # set to 1: an unexpected error shows its traceback, for a bug report

app = typer.Typer(
    name="dqn",
    help="Train, evaluate and record Deep Q-Network agents on gymnasium games.\n\n"
    "Start with `dqn train CartPole-v1`, then `dqn eval` and `dqn record` on the newest run; "
    "`dqn runs` lists runs, `dqn plot` draws them, `dqn tune` searches hyperparameters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

RunOrModel = Annotated[
    Path | None,
    typer.Argument(
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
            help="TOML file of hyperparameters applied over the preset (a run's config.toml works too)."
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

    from dqn_cli.runfiles import read_config, run_to_resume
    from dqn_cli.runlock import hold_run_lock

    held = ExitStack()
    if resume:
        if preset is not None or config is not None or set_ or run_dir is not None:
            raise UserError(
                "--resume continues a run with its own config; drop --preset/--config/--set/--run-dir"
            )
        run = run_to_resume(Path(target) if target else None)
        # Locked before torch is imported or the checkpoint read, so a second writer is refused at once.
        held.enter_context(hold_run_lock(run))
    from dqn_cli.presets import resolve as resolve_preset
    from dqn_cli.training import TrainingDiverged, TrainingInterrupted, set_training_threads
    from dqn_cli.training import resume as resume_training
    from dqn_cli.training import train as run_training

    try:
        if resume:
            set_training_threads(str(read_config(run).get("env_id", "")))
            result, exact = resume_training(run, steps=steps, device=device, quiet=quiet)
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
            preset, hp = resolve_preset(target, config, sets, preset)
            set_training_threads(target)
            result = run_training(
                target, hp, seed=seed, preset=preset, run_dir=run_dir, device=device, quiet=quiet
            )
    except TrainingDiverged as exc:
        _fail(f"{exc}; the files saved before it are kept", code=1)
    except TrainingInterrupted as exc:
        typer.echo(
            f"Interrupted at step {exc.step:,}; checkpoint saved in {exc.run_dir}. "
            f"Resume with: dqn train --resume {exc.run_dir}",
            err=True,
        )
        raise typer.Exit(exc.exit_code) from None
    finally:
        held.close()
    if not quiet:
        best = "-" if result.best_eval is None else f"{result.best_eval:.1f}"
        typer.echo(f"Trained {result.steps:,} steps in {result.wall_time:.1f}s; best eval return {best}")
        typer.echo(f"Run saved in {result.run_dir}")
        typer.echo(f"Next: dqn eval {result.run_dir}  |  dqn record {result.run_dir}")


def _load(run_or_model: Path | None, final: bool, device: str, env_id: str | None):
    from dqn_cli.evaluation import load_trained

    return load_trained(run_or_model, final, device, env_id)


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
            "--json", help="Print one JSON object: env_id, episodes, mean_return, std_return, returns."
        ),
    ] = False,
    render: Annotated[
        bool, typer.Option("--render", help="Show the game in a window while it plays.")
    ] = False,
    final: Final = False,
    env: EnvOverride = None,
    device: Device = "auto",
) -> None:
    """Play episodes with a trained model as its evaluations did and report the returns: greedy or with the
    run's eval_epsilon, each episode ended at eval_max_frames (Atari: 18,000 frames, 5 minutes)."""
    with _stops_on_signal("no returns were reported"):
        import numpy as np

        from dqn_cli.evaluation import play_rendered, prepare_play_process
        from dqn_cli.progress import EpisodeProgress

        prepare_play_process()
        trained = _load(run_or_model, final, device, env)
        if render:
            policy = trained.policy(seed, epsilon)
            returns = play_rendered(policy, trained.env_id, episodes, seed, trained.hyperparameters)
        else:
            with EpisodeProgress(f"eval {trained.env_id}", episodes) as progress:
                returns = trained.score(episodes, seed, epsilon, progress.advance)
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
    if json_:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"{trained.env_id} ({trained.path}), {episodes} episodes: "
        f"{summary['mean_return']:.2f} ± {summary['std_return']:.2f} "
        f"(min {summary['min_return']:.2f}, max {summary['max_return']:.2f})"
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
    final: Final = False,
    env: EnvOverride = None,
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
        trained = _load(run_or_model, final, device, env)
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
    name: Annotated[
        str | None, typer.Option(help="Folder name under runs/bench/ (default: the start time).")
    ] = None,
    device: Device = "auto",
) -> None:
    """Train N seeds of each env with its preset (or all with --preset's); write a results table and
    learning curves.

    Output: runs/bench/<name>/ with a run folder per seed, results.md, results.json and <env>-curves.png.
    """

    def report(result) -> None:
        typer.echo(
            f"{result.env_id} seed {result.seed}: {result.best_model_return:.1f} (best model), "
            f"{result.final_model_return:.1f} (final), {result.steps:,} steps, {result.wall_time:.0f} s",
            err=True,
        )

    with _stops_on_signal("finished runs are kept, stopped ones can be resumed; no results were written"):
        from dqn_cli.bench import WorkerDied, run_bench

        try:
            bench_dir = run_bench(
                env_ids, seeds, jobs, name, device, sets=set_, on_result=report, preset=preset
            )
        except WorkerDied as exc:
            _fail(str(exc), code=1)
    typer.echo((bench_dir / "results.md").read_text())
    typer.echo(f"Saved in {bench_dir}")


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


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


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
    from rich.table import Table
    from rich.text import Text

    from dqn_cli.runfiles import RUNS_ROOT, RunState
    from dqn_cli.runlist import list_runs

    state_styles = {
        RunState.FINISHED: "green",
        RunState.RUNNING: "cyan",
        RunState.INTERRUPTED: "yellow",
        RunState.PRUNED: "magenta",
        RunState.DIVERGED: "red",
    }
    found = list_runs(RUNS_ROOT, env_id=env)
    for problem in (problem for run in found for problem in run.problems):
        _say("warning", f"{problem}; the run is listed with what could be read")
    if not found:
        where = f" for {env}" if env else ""
        typer.echo(f"No runs{where} under ./runs yet; start one with `dqn train ENV_ID`.")
        return
    table = Table()
    table.add_column("run (under runs/)", overflow="fold")  # the path names the game: no env column
    for numeric in ("steps", "updates", "best eval", "last eval", "wall time"):
        table.add_column(numeric, justify="right")
    table.add_column("status", no_wrap=True)
    for run in found:
        table.add_row(  # names as plain Text: a "[" in a folder name is not rich markup
            Text(run.run_dir.relative_to(RUNS_ROOT).as_posix()),  # tells bench/ and tune runs apart
            f"{_number(run.step, 0)} / {_number(run.planned_steps, 0)}",
            _number(run.updates, 0),
            _number(run.best_eval),
            _number(run.last_eval),
            _duration(run.wall_time),
            Text(run.state, style=state_styles[run.state]),
        )
    Console().print(table)


@app.command()
@user_errors
def plot(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN...",
            help="Run folders to draw, or folders holding runs (every run below them), e.g. "
            "runs/CartPole-v1 or runs/bench/NAME.",
        ),
    ],
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
    from dqn_cli.plotting import plot_runs

    typer.echo(str(plot_runs(run_dirs, out, smooth)))


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
    device: Device = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
) -> None:
    """Search hyperparameters with Optuna: each trial is an ordinary run from the game's preset (or
    --preset's) with sampled values over it, pruned early when its evaluations trail the others'. Prints
    the best parameters and writes them as a preset for `dqn train --config`."""
    with _stops_on_signal("finished trials are kept in the study, stopped ones are marked failed"):
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
        )
        if not quiet:
            typer.echo(
                f"Study {job.study} in {shown_storage(job.storage)}: {trials} trials, {jobs} worker(s), "
                f"preset {job.preset}, search space {job.space.name}"
            )
        try:
            result = run_study(job, jobs)
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
    typer.echo(f"Next: dqn train {env_id} --config {best.preset_file}")


def main() -> None:
    """Run the app; usage errors (a bad option value, a missing argument) become one line and exit 2.
    Any other exception is a bug: one line asking for a report and exit 1, or, with DQN_DEBUG=1 in the
    environment, the traceback to put in it."""
    from typer.exceptions import Abort, TyperException

    try:
        code = app(standalone_mode=False)
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
