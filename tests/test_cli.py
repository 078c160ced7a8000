"""The `dqn` command as a user runs it: real processes, real files, exit codes and stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
from helpers import assert_one_line_error, dqn
from PIL import Image, ImageSequence

TINY_SETS = [
    "--set",
    "learning_starts=100",
    "--set",
    "eval_freq=300",
    "--set",
    "eval_episodes=2",
    "--set",
    "net_arch=[16]",
]


@pytest.mark.slow
def test_train_eval_record_end_to_end(tmp_path: Path):
    trained = dqn(
        "train", "CartPole-v1", "--steps", "600", "--seed", "2", "--quiet", *TINY_SETS, cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout == "" and trained.stderr == ""
    (run,) = (tmp_path / "runs" / "CartPole-v1").iterdir()
    assert run.name.endswith("-s2") and (run / "best.safetensors").exists()

    evaluated = dqn("eval", "--json", "--episodes", "3", cwd=tmp_path)  # defaults to the newest run
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert {"env_id", "episodes", "mean_return", "std_return", "returns"} <= summary.keys()
    assert summary["env_id"] == "CartPole-v1" and summary["episodes"] == 3 and len(summary["returns"]) == 3
    assert summary["mean_return"] == pytest.approx(sum(summary["returns"]) / 3)

    text = dqn("eval", str(run), "--episodes", "2", "--final", cwd=tmp_path)
    assert text.returncode == 0 and "2 episodes" in text.stdout and "±" in text.stdout

    recorded = dqn("record", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    video = tmp_path / recorded.stdout.strip()
    assert video.parent == run / "videos" and video.suffix == ".mp4"
    frames = list(iio.imiter(video))
    # CartPole pays 1 per step, so the return is the episode length: one frame per step plus the reset frame
    episode_return = float(recorded.stderr.split("returns ")[1])
    assert len(frames) == int(episode_return) + 1
    assert frames[0].shape == (400, 600, 3)

    gif = dqn("record", str(run), "--out", "clip.gif", "--episodes", "2", cwd=tmp_path)
    assert gif.returncode == 0, gif.stderr
    assert Path(tmp_path / gif.stdout.strip()) == run / "videos" / "clip.gif"
    returns = [float(r) for r in gif.stderr.split("returns ")[1].split(",")]
    # GIF encoders merge identical consecutive frames, so count frames by their total display time
    with Image.open(run / "videos" / "clip.gif") as clip:
        shown_ms = sum(frame.info["duration"] for frame in ImageSequence.Iterator(clip))
    assert shown_ms == pytest.approx(sum(int(r) + 1 for r in returns) * 1000 / 50, rel=0.02)
    assert not list((run / "videos").glob(".*"))  # no temporary files left


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["train", "CartPole-v1", "--set", "lerning_rate=1"],
            ["unknown hyperparameter 'lerning_rate'", "learning_rate"],
        ),
        (["train", "CartPole-v1", "--set", "gamma=2"], ["gamma", "[0, 1]"]),
        (["train", "CartPole-v1", "--set", "batch_size=many"], ["batch_size", "integer > 0"]),
        (["train", "CartPol-v1"], ["unknown environment id 'CartPol-v1'", "CartPole-v1"]),
        (["train", "Pendulum-v1"], ["Pendulum-v1", "Box action space", "Discrete"]),
        (["train", "CartPole-v1", "--config", "missing.toml"], ["cannot read config file"]),
        (["eval"], ["no run with a model"]),
        (["record", "nowhere"], ["no such run or model"]),
        (["eval", "--episodes", "0"], ["--episodes"]),
        (["eval", "--episodes", "many"], ["--episodes", "integer"]),
        (["train", "CartPole-v1", "--sett", "x"], ["No such option: --sett"]),
        (["train"], ["missing ENV_ID"]),
        (["nosuch"], ["No such command"]),
        (["tune", "CartPol-v1", "--trials", "2"], ["unknown environment id 'CartPol-v1'"]),
        (["tune", "CartPole-v1", "--trials", "2", "--study", "a/b"], ["study name 'a/b'"]),
        (["tune", "CartPole-v1", "--trials", "2", "--storage", "nonsense"], ["not a database URL"]),
        (["tune", "CartPole-v1", "--trials", "2", "--storage", "sqlite://"], ["in-memory", "sqlite:///"]),
        (["tune", "CartPole-v1", "--trials", "2", "--space", "missing.toml"], ["cannot read search space"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args, fragments):
    result = dqn(*args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_render_without_display_fails_cleanly(tiny_run: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    assert_one_line_error(dqn("eval", str(tiny_run), "--render", cwd=tmp_path, env=env), "display")


def test_record_rejects_unknown_video_format(tiny_run: Path, tmp_path: Path):
    assert_one_line_error(dqn("record", str(tiny_run), "--out", "x.avi", cwd=tmp_path), ".mp4 or .gif")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (None, ["train", "eval", "record", "presets", "runs", "plot", "tune"]),
        ("train", ["--seed", "--steps", "--config", "--set", "--run-dir", "--device", "--quiet"]),
        ("eval", ["--episodes", "--epsilon", "--seed", "--json", "--render", "--final", "--device"]),
        ("record", ["--episodes", "--out", "--epsilon", "--seed", "--final", "--device"]),
        ("runs", ["--env"]),
        ("plot", ["--out", "--smooth"]),
        ("tune", ["--trials", "--storage", "--study", "--jobs", "--space", "--device", "--quiet"]),
    ],
)
def test_help_explains_every_option(tmp_path: Path, command, options):
    result = dqn(*([command] if command else []), "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in options:
        assert option in result.stdout
    if command:  # every option line carries an explanation
        assert result.stdout.count("--") >= len(options)


def test_help_imports_none_of_the_heavy_libraries(tmp_path: Path):
    probe = (
        "import sys\n"
        "from dqn_cli.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'gymnasium', 'numpy', 'optuna', 'matplotlib', 'sqlalchemy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run that a test may damage."""
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path / "work" / "run"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "args", "fragments"),
    [
        (
            lambda run: (run / "best.safetensors").unlink(),
            ["--final"],
            [],
        ),  # still fine: uses the final model
        (lambda run: (run / "model.json").unlink(), ["--final"], ["model.json is missing"]),
        (
            lambda run: (run / "model.safetensors").write_bytes(b"\x00" * 10),
            ["--final"],
            ["not a valid safetensors"],
        ),
        (
            lambda run: (run / "model.safetensors").write_bytes(
                (run / "model.safetensors").read_bytes()[:-64]
            ),
            ["--final"],
            ["corrupt or truncated"],
        ),
        (
            lambda run: None,
            ["--env", "Acrobot-v1"],
            ["trained on CartPole-v1", "Acrobot-v1 has observations [6]"],
        ),
    ],
)
def test_damaged_or_mismatched_models_are_refused_in_one_line(run_copy: Path, damage, args, fragments):
    damage(run_copy)
    result = dqn("eval", str(run_copy), "--episodes", "1", *args, cwd=run_copy.parent)
    if not fragments:
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_error(result, *fragments)


def test_eval_on_another_env_with_the_same_spaces_is_allowed(run_copy: Path):
    result = dqn(
        "eval", str(run_copy), "--episodes", "1", "--env", "CartPole-v0", "--json", cwd=run_copy.parent
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["env_id"] == "CartPole-v0"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda run: (run / "checkpoint.safetensors").unlink(), ["has no checkpoint"]),
        (
            lambda run: (run / "checkpoint.safetensors").write_bytes(
                (run / "checkpoint.safetensors").read_bytes()[:-100]
            ),
            ["corrupt or truncated"],
        ),
        (lambda run: (run / "checkpoint.safetensors").write_bytes(b"garbage"), ["corrupt or truncated"]),
    ],
)
def test_resume_refuses_missing_or_damaged_checkpoints(run_copy: Path, damage, fragments):
    damage(run_copy)
    before = sorted(p.name for p in run_copy.iterdir())
    assert_one_line_error(dqn("train", "--resume", str(run_copy), cwd=run_copy.parent), *fragments)
    assert sorted(p.name for p in run_copy.iterdir()) == before


@pytest.mark.slow
def test_resume_of_something_that_is_not_a_run(tmp_path: Path):
    assert_one_line_error(dqn("train", "--resume", "nowhere", cwd=tmp_path), "not a run folder")
    assert_one_line_error(dqn("train", "--resume", cwd=tmp_path), "no run with a checkpoint")


@pytest.mark.slow
def test_unwritable_run_directory_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    result = dqn("train", "CartPole-v1", "--run-dir", "file/run", cwd=tmp_path)
    assert_one_line_error(result, "cannot write run directory file/run")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_disk_full_while_saving_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch):
    import errno

    from dqn_cli import runfiles
    from dqn_cli.errors import UserError

    target = tmp_path / "model.json"
    target.write_text("old")

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int, mode: str) -> None:
            self._handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfiles.os, "fdopen", FullDisk)
    with pytest.raises(UserError, match="No space left on device; its previous version is kept"):
        runfiles.write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
