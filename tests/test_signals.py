"""Where a video may not go, and Ctrl-C / SIGTERM / `kill -9` outside training: one line, exit 2 (a bad
destination) or 130 / 143 (a signal), nothing half-written left behind, and no process left running.

The signal tests start `dqn` in a session of its own: a signal to its process group is what Ctrl-C at a
terminal sends, one to its pid alone is a plain `kill`. Processes are found through /proc (Linux)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_gone, assert_one_line_error, descendants, dqn, launch

from dqn_cli import runfiles
from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained, make_policy, record_video, video_path
from dqn_cli.interrupts import Interrupted, interruptible

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


# --- where a video may not go ---------------------------------------------------------------------------


def _film(run: Path, out: Path) -> None:
    """`dqn record RUN --out OUT` in this process: one short episode."""
    trained = load_trained(run, device="cpu")
    policy = make_policy(trained.q_network, trained.n_actions, 0.0, 0, trained.device)
    record_video(policy, "CartPole-v1", 1, 0, video_path(trained.path, out))


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which this process may not create a file: a read-only folder, or as root (whom file
    modes do not stop) sysfs, which refuses new files to everyone."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
        return folder
    return Path("/sys")


def _os_refusal(folder: Path) -> str:
    """What the OS itself says when a file is created in ``folder``: the reason the error must carry."""
    try:
        os.close(os.open(folder / "probe.mp4", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        return exc.strerror
    os.unlink(folder / "probe.mp4")
    pytest.skip(f"{folder} is writable here")


def _refusal(write: Callable[[], object]) -> str:
    """The one-line message that ``write`` is refused with."""
    with pytest.raises(UserError) as caught:
        write()
    return str(caught.value)


def test_unwritable_folder_is_refused_with_the_os_reason(tiny_run: Path, tmp_path: Path):
    folder = _unwritable_folder(tmp_path)
    reason = _os_refusal(folder)
    out = folder / "clip.mp4"
    assert _refusal(lambda: _film(tiny_run, out)) == f"cannot write {out}: {reason}"
    assert not list(folder.glob(".clip.*"))


@pytest.mark.parametrize(
    ("make", "kind"),
    [(lambda path: path.mkdir(), "a folder"), (lambda path: os.mkfifo(path), "a FIFO")],
    ids=["folder", "fifo"],
)
def test_special_destinations_are_refused_before_filming(
    tiny_run: Path, tmp_path: Path, make: Callable[[Path], None], kind: str
):
    out = tmp_path / "clip.mp4"
    make(out)
    assert _refusal(lambda: _film(tiny_run, out)) == (
        f"--out {out} is {kind}, not a video file; give a file name ending in .mp4 or .gif"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # left as it was, nothing beside it


def test_a_device_is_refused(tiny_run: Path):
    assert _refusal(lambda: _film(tiny_run, Path("/dev/null"))) == (
        "--out /dev/null is a device, not a video file; give a file name ending in .mp4 or .gif"
    )


def test_a_file_in_the_way_of_the_folder_is_the_error(tiny_run: Path, tmp_path: Path):
    (tmp_path / "notes").write_text("a file, not a folder")
    out = tmp_path / "notes" / "clip.mp4"
    assert _refusal(lambda: _film(tiny_run, out)) == f"cannot write {out}: Not a directory"
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]


def test_a_folder_that_cannot_be_made_is_named(tiny_run: Path):
    out = Path("/proc/dqn-videos/new/clip.mp4")  # /proc takes no new folders, whoever asks
    assert _refusal(lambda: _film(tiny_run, out)) == (
        f"cannot make the folder /proc/dqn-videos for {out}: No such file or directory"
    )


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _read_only(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EROFS, "Read-only file system")


def test_disk_full_gif_is_the_error_and_leaves_nothing(tiny_run: Path, tmp_path: Path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _full)  # Pillow writes the whole gif at the end
    out = tmp_path / "videos" / "clip.gif"
    assert _refusal(lambda: _film(tiny_run, out)) == f"cannot write {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # neither a temporary file nor the folder made for it


def test_cleanup_that_fails_does_not_hide_the_error(tiny_run: Path, tmp_path: Path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _full)
    monkeypatch.setattr(Path, "unlink", _read_only)
    monkeypatch.setattr(Path, "rmdir", _read_only)
    out = tmp_path / "videos" / "clip.gif"
    assert _refusal(lambda: _film(tiny_run, out)) == f"cannot write {out}: No space left on device"


def test_write_atomic_cleanup_that_fails_does_not_hide_the_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(runfiles.os, "replace", _full)
    monkeypatch.setattr(runfiles.os, "unlink", _read_only)
    target = tmp_path / "status.json"
    target.write_text("old")
    assert _refusal(lambda: runfiles.write_atomic(target, b"{}")) == (
        f"cannot write {target}: No space left on device; its previous version is kept"
    )
    assert target.read_text() == "old"


# Run in a mount namespace of its own, where it mounts a read-only and a full (4 KiB) file system.
IN_NAMESPACE = """
import json, subprocess, sys
from pathlib import Path
from dqn_cli import runfiles
from dqn_cli.errors import UserError
from dqn_cli.evaluation import load_trained, make_policy, record_video, video_path
run, ro, full = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for options, folder in (("ro", ro), ("size=4k", full)):
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "none", folder]).returncode != 0:
        sys.exit(3)
trained = load_trained(run, device="cpu")
def _film(run, out):
    policy = make_policy(trained.q_network, trained.n_actions, 0.0, 0, trained.device)
    record_video(policy, "CartPole-v1", 1, 0, video_path(trained.path, out))
outcome = {}
for name, write in [
    ("ro.mp4", lambda: _film(run, ro / "clip.mp4")),
    ("ro-new-folder.gif", lambda: _film(run, ro / "new" / "clip.gif")),
    ("full.mp4", lambda: _film(run, full / "clip.mp4")),
    ("full.gif", lambda: _film(run, full / "clip.gif")),
    ("ro write_atomic", lambda: runfiles.write_atomic(ro / "status.json", b"{}")),
]:
    try:
        write()
        outcome[name] = "written"
    except UserError as exc:
        outcome[name] = str(exc)
outcome["left in ro"] = sorted(p.name for p in ro.iterdir())
outcome["left in full"] = sorted(p.name for p in full.iterdir())
print(json.dumps(outcome))
"""


@pytest.mark.slow
def test_read_only_and_full_file_systems(tiny_run: Path, tmp_path: Path):
    """Real ones: tmpfs mounts in a private mount namespace (as root, or as a user where user namespaces
    are allowed), gone when the process ends."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir(), full.mkdir()
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]
    script = [sys.executable, "-c", IN_NAMESPACE, str(tiny_run), str(ro), str(full)]
    result = subprocess.run([*namespace, *script], capture_output=True, text=True, timeout=300)
    if result.returncode == 3 or result.stderr.startswith("unshare:"):
        pytest.skip(f"cannot mount file systems here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {
        "ro.mp4": f"cannot write {ro / 'clip.mp4'}: Read-only file system",
        "ro-new-folder.gif": f"cannot make the folder {ro / 'new'} for {ro / 'new' / 'clip.gif'}: "
        "Read-only file system",
        "full.mp4": f"cannot write {full / 'clip.mp4'}: ffmpeg: Error closing file: No space left on device",
        "full.gif": f"cannot write {full / 'clip.gif'}: No space left on device",
        "ro write_atomic": f"cannot write {ro / 'status.json'}: Read-only file system",
        "left in ro": [],
        "left in full": [],
    }


@pytest.mark.slow
def test_record_to_a_bad_destination_is_one_line(tiny_run: Path, tmp_path: Path):
    os.mkfifo(tmp_path / "pipe.mp4")
    assert_one_line_error(
        dqn("record", str(tiny_run), "--out", str(tmp_path / "pipe.mp4"), cwd=tmp_path), "is a FIFO"
    )
    folder = _unwritable_folder(tmp_path)
    reason = _os_refusal(folder)
    assert_one_line_error(
        dqn("record", str(tiny_run), "--out", str(folder / "clip.mp4"), cwd=tmp_path), reason
    )


# --- signals --------------------------------------------------------------------------------------------


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return launch(*args, cwd=cwd, own_session=True)  # signals sent to its group never reach pytest


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (Python has one for SIGINT from the start)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"dqn ended before it was signalled: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("dqn never reached the point to signal it at")
        time.sleep(0.05)


def _signal(process: subprocess.Popen, signum: int, group: bool) -> tuple[int, str, str]:
    """Send ``signum`` to dqn (``group``: as Ctrl-C at a terminal does, to its whole process group); its
    exit code, stdout and stderr."""
    (os.killpg if group else os.kill)(process.pid, signum)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def _assert_interrupted(code: int, stderr: str, signum: int, outcome: str) -> None:
    assert code == INTERRUPTED[signum], stderr
    assert stderr.splitlines() == [f"interrupted: {outcome}"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "kill"]
)
def test_interrupted_recording_leaves_nothing(tiny_run: Path, tmp_path: Path, signum: int, group: bool):
    out = tmp_path / "clips" / "clip.mp4"
    process = _start("record", str(tiny_run), "--episodes", "100000", "--out", str(out), cwd=tmp_path)
    _wait_for(lambda: any("ffmpeg" in c for c in descendants(process.pid).values()), process)
    filming = descendants(process.pid)
    code, stdout, stderr = _signal(process, signum, group)
    _assert_interrupted(code, stderr, signum, "nothing was written")
    assert stdout == ""
    assert not (tmp_path / "clips").exists()  # no video, no temporary file, not the folder made for them
    assert_gone(filming)  # ffmpeg too


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["kill", "ctrl-c"]
)
def test_interrupted_evaluation_is_one_line(tiny_run: Path, tmp_path: Path, signum: int, group: bool):
    process = _start("eval", str(tiny_run), "--episodes", "1000000", "--device", "cpu", cwd=tmp_path)
    _wait_for(lambda: _catches(process.pid, signal.SIGTERM), process)  # the command has begun
    time.sleep(1.0)  # into the episodes
    code, stdout, stderr = _signal(process, signum, group)
    _assert_interrupted(code, stderr, signum, "no returns were reported")
    assert stdout == ""


def _workers(pid: int) -> dict[int, str]:
    return {child: command for child, command in descendants(pid).items() if "spawn_main" in command}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGKILL, False)],
    ids=["kill", "ctrl-c", "kill-9"],
)
def test_stopped_bench_takes_its_workers_down(tmp_path: Path, signum: int, group: bool):
    process = _start(
        "bench", "CartPole-v1", "--seeds", "2", "--jobs", "2", "--set", "n_timesteps=200000",
        "--name", "b", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    bench = tmp_path / "runs" / "bench" / "b"
    _wait_for(lambda: len(_workers(process.pid)) == 2 and any(bench.glob("*/status.json")), process)
    below = descendants(process.pid)  # the two workers, and multiprocessing's resource tracker
    code, _, stderr = _signal(process, signum, group)
    assert_gone(below)
    if signum == signal.SIGKILL:  # the kernel ends the workers with their parent
        assert code == -signal.SIGKILL
        return
    _assert_interrupted(
        code, stderr, signum, "finished runs are kept, stopped ones can be resumed; no results were written"
    )
    started = sorted(bench.glob("*/status.json"))
    assert started  # and each run stopped mid-way was checkpointed and says so
    for status in started:
        assert json.loads(status.read_text())["state"] == "interrupted"
        assert (status.parent / "checkpoint.safetensors").is_file()
    assert not (bench / "results.md").exists() and not (bench / "results.json").exists()


@pytest.mark.slow
def test_stopped_tune_takes_its_workers_down(tmp_path: Path):
    import optuna

    process = _start(
        "tune", "CartPole-v1", "--trials", "4", "--jobs", "2", "--study", "s", "--device", "cpu", cwd=tmp_path
    )
    runs = tmp_path / "runs" / "CartPole-v1"
    _wait_for(lambda: len(_workers(process.pid)) == 2 and any(runs.glob("*/status.json")), process)
    below = descendants(process.pid)
    code, _, stderr = _signal(process, signal.SIGTERM, group=False)
    assert_gone(below)
    _assert_interrupted(
        code, stderr, signal.SIGTERM, "finished trials are kept in the study, stopped ones are marked failed"
    )
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'runs' / 'tune' / 's.db'}")
    states = [trial.state.name for trial in study.trials]
    assert states and set(states) == {"FAIL"}  # no trial left "running" for ever


def test_a_signal_python_drops_in_a_callback_is_raised_again():
    """A signal landing in a weakref callback (an import lock's, as in `dqn eval` starting up) raises there,
    where Python drops the exception: interruptible must raise it again in ordinary code, not lose it."""

    class Thing:
        pass

    def signal_inside(reference: weakref.ref) -> None:
        signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the callback

    with pytest.raises(Interrupted) as stopped, interruptible():
        thing = Thing()
        reference = weakref.ref(thing, signal_inside)
        del thing
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.001)
    assert stopped.value.exit_code == INTERRUPTED[signal.SIGTERM]
    assert reference() is None


def test_other_dropped_exceptions_still_reach_the_previous_hook(monkeypatch):
    seen: list[BaseException | None] = []

    def previous_hook(unraisable: sys.UnraisableHookArgs) -> None:
        seen.append(unraisable.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", previous_hook)

    class Failing:
        def __del__(self) -> None:
            raise ValueError("in __del__")

    with interruptible():
        Failing()
    assert [type(exception) for exception in seen] == [ValueError]
    assert sys.unraisablehook is previous_hook  # restored on leaving
