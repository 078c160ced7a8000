"""The command line where it runs: progress on a terminal and in a log, at 80 and 120 columns; help text as
written; `--version`, shell completion, `dqn plot`'s default and the line that explains an early stop."""

import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from helpers import assert_one_line_error, dqn
from rich.console import Console
from typer.testing import CliRunner

from dqn_cli.cli import app
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.progress import (
    FIRST_LINE_SECONDS,
    LOG_SECONDS_VARIABLE,
    EpisodeProgress,
    TrainingProgress,
    log_seconds,
)
from dqn_cli.runfiles import RunState, RunStatus, write_config, write_status
from dqn_cli.runlist import RunsView, list_runs

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOG_LINE = re.compile(
    r"CartPole-v1  step (?P<step>[\d,]+)/(?P<total>[\d,]+) \(\d+%\)  (?P<rate>[\d,]+|-) steps/s  "
    r"ε (\d\.\d{3}|-)  return (-?\d+\.\d|-)  eval (?P<eval>-?\d+\.\d|-)  elapsed \d+:\d\d:\d\d  "
    r"eta (\d+:\d\d:\d\d|-:--:--)"
)
STOP_LINE = re.compile(
    r"Stopped early at step (?P<step>[\d,]+): evaluation mean (?P<eval>-?\d+\.\d) reached "
    r"stop_at_eval_return = (?P<target>\S+)"
)
SMALL_TRAINING = ["--set", "learning_starts=200", "--set", "eval_freq=1000", "--set", "eval_episodes=3"]


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without COLUMNS (rich would honour it), plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", LOG_SECONDS_VARIABLE)}
    return {**env, **variables}


def number(text: str) -> int:
    return int(text.replace(",", ""))


# ------------------------------------------------------------------------- progress where it is not a tty


def test_log_interval_defaults_to_at_most_ten_seconds_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv(LOG_SECONDS_VARIABLE, raising=False)
    assert 0 < log_seconds() <= 10
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "2.5")
    assert log_seconds() == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(LOG_SECONDS_VARIABLE, bad)
        with pytest.raises(UserError, match=LOG_SECONDS_VARIABLE):
            log_seconds()


def test_a_bad_log_interval_is_one_line_and_writes_nothing(tmp_path: Path):
    result = dqn("train", "CartPole-v1", cwd=tmp_path, env=environment(**{LOG_SECONDS_VARIABLE: "often"}))
    assert_one_line_error(result, LOG_SECONDS_VARIABLE, "'often'")
    assert not (tmp_path / "runs").exists()


def test_log_lines_keep_their_pace_while_the_loop_is_held_up(monkeypatch):
    """No update for 0.65 s (an evaluation, say): lines still come every 0.1 s, then one final line."""
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "0.1")
    log = io.StringIO()
    with TrainingProgress("CartPole-v1", 40_000, quiet=False, console=Console(file=log)) as progress:
        progress.update(12_000, 0.05, [100.0, 200.0], None)
        time.sleep(0.65)
        progress.update(28_000, 0.05, [100.0, 200.0], 500.0)
    lines = log.getvalue().splitlines()
    assert 5 <= len(lines) <= 8
    assert all(LOG_LINE.fullmatch(line) for line in lines), lines
    assert all("step 12,000/40,000 (30%)" in line and "eval -" in line for line in lines[:-1])
    assert "step 28,000/40,000 (70%)" in lines[-1] and "return 150.0" in lines[-1]
    assert "eval 500.0" in lines[-1]  # the final line has the final numbers
    assert "eta -:--:--" in lines[-1]  # stopped short of its total: nothing left to estimate


def test_first_log_line_comes_soon_with_the_default_interval(monkeypatch):
    monkeypatch.delenv(LOG_SECONDS_VARIABLE, raising=False)
    log = io.StringIO()
    with TrainingProgress("CartPole-v1", 40_000, quiet=False, console=Console(file=log)) as progress:
        progress.update(1_000, 1.0, [], None)
        time.sleep(FIRST_LINE_SECONDS + 0.3)
        assert len(log.getvalue().splitlines()) == 1
    assert FIRST_LINE_SECONDS <= 2


def test_quiet_training_and_short_episode_work_print_nothing_off_a_terminal(monkeypatch):
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "0.5")
    log = io.StringIO()
    with TrainingProgress("CartPole-v1", 1_000, quiet=True, console=Console(file=log)) as progress:
        progress.update(1_000, 0.05, [9.0], 9.0)
    with EpisodeProgress("eval CartPole-v1", 3, console=Console(file=log)) as episodes:
        episodes.advance()
    assert log.getvalue() == ""


def test_long_episode_work_logs_its_count_off_a_terminal(monkeypatch):
    monkeypatch.setenv(LOG_SECONDS_VARIABLE, "0.1")
    log = io.StringIO()
    with EpisodeProgress("record ALE/Pong-v5", 3, console=Console(file=log)) as episodes:
        episodes.advance()
        time.sleep(0.25)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(r"record ALE/Pong-v5  1/3 episodes  elapsed 0:00:00", line) for line in lines)


@pytest.mark.slow
def test_dqn_train_logs_whole_lines_to_a_pipe_and_says_why_it_stopped_early(tmp_path: Path):
    command = [sys.executable, "-m", "dqn_cli", "train", "CartPole-v1", "--steps", "20000", "--seed", "1"]
    command += [*SMALL_TRAINING, "--set", "stop_at_eval_return=100"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment(**{LOG_SECONDS_VARIABLE: "0.1"}),  # the run may take only a second
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(process.stdout))
    reader.start()
    arrivals = [(time.monotonic(), line.rstrip("\n")) for line in process.stderr]
    reader.join()
    assert process.wait() == 0, arrivals
    lines = [line for _, line in arrivals]
    assert len(lines) >= 3, lines
    for line in lines:  # whole: nothing cut at 80 columns, no escape codes
        assert LOG_LINE.fullmatch(line), line
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.1 + 1.0, gaps  # 0.1 s apart, with room for a busy machine
    stop = STOP_LINE.fullmatch(stdout[1].strip())
    assert stop, stdout
    final = LOG_LINE.fullmatch(lines[-1])
    assert final["step"] == stop["step"] and final["eval"] == stop["eval"]
    assert number(stop["step"]) < 20_000 and float(stop["eval"]) >= 100 and stop["target"] == "100"
    assert f"Trained {stop['step']} steps" in stdout[2] and f"best eval return {stop['eval']}" in stdout[2]


# ---------------------------------------------------------------------------------- progress on a terminal


def drawn(progress: TrainingProgress | EpisodeProgress, width: int) -> str:
    console = Console(width=width, force_terminal=True, record=True, file=io.StringIO())
    console.print(progress)
    return console.export_text()


@pytest.mark.parametrize(
    ("env_id", "dropped_at_120"),
    [("CartPole-v1", []), ("ALE/MontezumaRevenge-v5", ["ε 0.050", "0:00:10"])],  # the lowest ranks go first
)
def test_the_bar_keeps_steps_and_speed_at_80_columns_and_shows_more_at_120(env_id: str, dropped_at_120):
    total = 10_000_000 if env_id.startswith("ALE") else 40_000
    progress = TrainingProgress(env_id, total, quiet=False, console=Console(file=io.StringIO()))
    progress._started -= 10  # ten seconds in
    progress.update(total // 4, 0.05, [143.25, 150.0], 149.1)
    steps, rate, eta = f"{total // 4:,}/{total:,}", r"[\d,]+ steps/s", r"eta 0:00:[23]\d"
    narrow = drawn(progress, 80).rstrip("\n")
    assert "\n" not in narrow and len(narrow) <= 80
    for kept in (re.escape(steps), rate, "eval 149.1", "return 146.6", eta):
        assert re.search(kept, narrow), (kept, narrow)
    wide = drawn(progress, 120).rstrip("\n")
    assert "\n" not in wide and len(wide) <= 120
    for shown in (re.escape(env_id), "━", "ε 0.050", "0:00:10", rate, "return 146.6", "eval 149.1", eta):
        assert bool(re.search(shown, wide)) == (shown not in dropped_at_120), (shown, wide)
    tiny = drawn(progress, 40)
    assert steps in tiny and re.search(rate, tiny)


def test_episode_bar_fits_80_columns():
    episodes = EpisodeProgress("record ALE/MontezumaRevenge-v5", 11, console=Console(file=io.StringIO()))
    episodes.advance()
    line = drawn(episodes, 80).rstrip("\n")
    assert len(line) <= 80 and "record ALE/MontezumaRevenge-v5" in line and "1/11 episodes" in line


def run_on_terminal(args: list[str], cwd: Path, columns: int) -> tuple[subprocess.CompletedProcess, str]:
    """`dqn` with stderr on a pseudo-terminal of ``columns`` columns: what it printed there, ANSI and all."""
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "dqn_cli", *args],
        cwd=cwd,
        env=environment(TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the last writer closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    stdout = process.stdout.read()
    return subprocess.CompletedProcess(process.args, process.wait(), stdout, ""), screen.decode()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_the_bars_last_frame_shows_the_evaluation_that_stopped_training(tmp_path: Path):
    args = ["train", "CartPole-v1", "--steps", "5000", *SMALL_TRAINING, "--set", "stop_at_eval_return=0"]
    result, screen = run_on_terminal(args, tmp_path, columns=80)
    assert result.returncode == 0, screen
    stop = STOP_LINE.search(result.stdout)
    assert stop and stop["step"] == "1,000" and stop["target"] == "0", result.stdout
    frames = [frame.strip() for frame in re.split(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\r|\n", screen) if frame]
    frames = [ANSI.sub("", frame) for frame in frames if "steps/s" in frame]
    last = frames[-1]
    assert len(last) <= 80 and "1,000/5,000" in last and re.search(r"[\d,]+ steps/s", last)
    assert f"eval {stop['eval']}" in last and "eta -:--:--" in last, (last, result.stdout)


# ----------------------------------------------------------------------------------------------- dqn runs

LONG_NAMES = [
    "CartPole-v1/20261125-061500-s0",
    "bench/demo/CartPole-v1-s1",
    "LunarLander-v3/tune-LunarLander-v3-20261124-210328-t12",
]


@pytest.fixture
def listed_runs(tmp_path: Path) -> Path:
    """Three finished runs under tmp_path/runs, with long names and large numbers."""
    for started, name in enumerate(LONG_NAMES):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        env_id = name.split("/")[0] if not name.startswith("bench") else "CartPole-v1"
        write_config(run, {"env_id": env_id, "seed": 0}, Hyperparameters().to_dict())
        os.utime(run / "config.toml", (1_000 + started, 1_000 + started))
        write_status(run, RunStatus(RunState.FINISHED, 100_000, 100_000, 25_000, 3_723.0, -123.4, -200.1))
    return tmp_path


def test_runs_keep_every_name_on_one_line_at_80_columns_and_fill_a_table_when_wide(listed_runs: Path):
    view = RunsView(list_runs(listed_runs / "runs"), listed_runs / "runs")
    for width in (60, 80, 120):
        lines = drawn(view, width).splitlines()
        assert all(len(line) <= width for line in lines)
        for name in LONG_NAMES:
            assert name in lines  # a line of its own
        numbers = lines[lines.index(LONG_NAMES[0]) + 1]  # under 80 columns the numbers are cut instead
        assert ("100,000 / 100,000" in numbers and "finished" in numbers) == (width >= 80)
    table = drawn(view, 160).splitlines()
    assert len(table) == 4 + len(LONG_NAMES)  # top, header, rule, a row per run, bottom
    row = next(line for line in table if LONG_NAMES[2] in line)
    assert [cell.strip() for cell in row.strip("│").split("│")][1:] == [
        "100,000 / 100,000",
        "25,000",
        "-123.4",
        "-200.1",
        "1h02m",
        "finished",
    ]


def test_dqn_runs_fits_the_terminal_and_writes_whole_rows_to_a_pipe(listed_runs: Path):
    narrow = dqn("runs", cwd=listed_runs, env=environment(COLUMNS="80"))
    assert narrow.returncode == 0, narrow.stderr
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines())
    assert all(name in narrow.stdout.splitlines() for name in LONG_NAMES)
    piped = dqn("runs", cwd=listed_runs, env=environment())  # no COLUMNS, not a terminal: a file, say
    rows = [line for line in piped.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == len(LONG_NAMES) and all(name in "\n".join(rows) for name in LONG_NAMES)


# ------------------------------------------------------------------------------------------------ help


def help_texts(command: typer.core.TyperCommand | typer.core.TyperGroup) -> list[str]:
    """What the code says about a command: its docstring and each parameter's help."""
    texts = [command.help or ""]
    texts += [param.help for param in command.params if getattr(param, "help", None)]
    return [" ".join(text.split()) for text in texts if text]


@pytest.mark.parametrize("width", [80, 120])
def test_every_help_shows_its_text_and_placeholders_as_written(width: int):
    group = typer.main.get_command(app)
    commands = {None: group, **group.commands}
    placeholders_seen = set()
    for name, command in commands.items():
        args = [name, "--help"] if name else ["--help"]
        result = CliRunner().invoke(app, args, prog_name="dqn", terminal_width=width)
        assert result.exit_code == 0, result.output
        shown = " ".join(result.output.split())
        for text in help_texts(command):
            assert text in shown, f"dqn {name} --help lost: {text}"
            placeholders_seen.update(re.findall(r"<[^<>\s]+>", text))
        assert all(len(line) <= width for line in result.output.splitlines())
    assert {"<env-id>", "<time>", "<seed>", "<name>", "<study>", "<model>"} <= placeholders_seen


def test_version_is_the_installed_packages():
    result = subprocess.run(
        [sys.executable, "-m", "dqn_cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"dqn {version('dqn-cli')}\n"


def test_shell_completion_script_and_completions(tmp_path: Path):
    shown = dqn(
        "--show-completion",
        "bash",
        cwd=tmp_path,
        env=environment(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"),
    )
    assert shown.returncode == 0, shown.stderr
    assert "_DQN_COMPLETE=complete_bash" in shown.stdout
    assert "complete -o default -F _dqn_completion dqn" in shown.stdout
    commands = dqn(
        cwd=tmp_path, env=environment(_DQN_COMPLETE="complete_bash", COMP_WORDS="dqn tr", COMP_CWORD="1")
    )
    assert commands.stdout.split() == ["train"]
    options = dqn(
        cwd=tmp_path,
        env=environment(_DQN_COMPLETE="complete_bash", COMP_WORDS="dqn train --se", COMP_CWORD="2"),
    )
    assert sorted(options.stdout.split()) == ["--seed", "--set"]
    assert "--install-completion" in dqn("--help", cwd=tmp_path).stdout


# ------------------------------------------------------------------------------------------------- plot


@pytest.mark.slow
def test_plot_without_a_run_draws_the_newest(tiny_run: Path, tmp_path: Path):
    missing = dqn("plot", cwd=tmp_path)
    assert_one_line_error(missing, "no run with metrics.csv")
    newer, older = tmp_path / "runs" / "CartPole-v1" / "a", tmp_path / "runs" / "CartPole-v1" / "b"
    for run, started in ((newer, 2_000), (older, 1_000)):  # newest by start time, not by name
        shutil.copytree(tiny_run, run)
        os.utime(run / "config.toml", (started, started))
    plotted = dqn("plot", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.strip() == str(Path("runs/CartPole-v1/a/curves.png"))
    assert (newer / "curves.png").read_bytes().startswith(b"\x89PNG") and not (older / "curves.png").exists()
