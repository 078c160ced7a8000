"""Every file the tool reads is untrusted (issue 13): damaged, edited by hand, swapped for a FIFO, a folder
or a huge file, or written by a newer version. Each is refused in one line with exit 2 before anything is
written; a command that lists many runs lists a damaged one with a one-line warning instead of failing.

Most tests run the real CLI inside this process (``cli.main``, the function the ``dqn`` script calls), so
that hundreds of damaged files cost seconds rather than a torch import each; a few run it as a subprocess.
The fuzz tests at the end feed random bytes, truncations and type-mangled JSON/TOML to each kind of file,
through every command that reads it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import json
import operator
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from helpers import assert_one_line_error, dqn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dqn_cli import training
from dqn_cli.cli import main
from dqn_cli.errors import UserError
from dqn_cli.presets import resolve
from dqn_cli.runfiles import MAX_SETTINGS_BYTES

RUN = "runs/CartPole-v1/run"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_dqn(*args: str, cwd: Path) -> Result:
    """``dqn ARGS`` in ``cwd``, run by the CLI's own entry point in this process."""
    out, err = io.StringIO(), io.StringIO()
    previous_dir, previous_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = ["dqn", *args]
    code: Any = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.chdir(previous_dir)
        sys.argv = previous_argv
    return Result(code or 0, out.getvalue(), err.getvalue())


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its bytes: equal before and after means nothing written."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"
        for path in root.rglob("*")
    }


@pytest.fixture
def workdir(tiny_run: Path, tmp_path: Path) -> Path:
    """A folder holding a copy of the tiny run at ``RUN``, as ./runs would."""
    shutil.copytree(tiny_run, tmp_path / RUN)
    return tmp_path


def refused(result: Result, cwd: Path, before: dict[str, str], *fragments: str) -> None:
    assert_one_line_error(result, *fragments)
    assert tree(cwd) == before


# ----------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", ["-1", str(2**32), "12345678901234567890"])
@pytest.mark.parametrize("command", [["train", "CartPole-v1"], ["eval"], ["record"]])
def test_seeds_outside_0_to_2_32_are_refused_before_anything_is_created(tmp_path: Path, command, seed):
    refused(run_dqn(*command, "--seed", seed, cwd=tmp_path), tmp_path, {}, "--seed")


def test_bench_refuses_more_seeds_than_there_are(tmp_path: Path):
    refused(run_dqn("bench", "CartPole-v1", "--seeds", str(2**32), cwd=tmp_path), tmp_path, {}, "--seeds")


def test_the_library_refuses_such_seeds_and_takes_the_largest_valid_one(tmp_path: Path):
    _, hp = resolve("CartPole-v1", sets=["n_timesteps=64", "learning_starts=32", "eval_freq=0"])
    for seed in (-1, 2**32, 1.0):
        with pytest.raises(UserError, match="seed must be an integer from 0 to 4,294,967,295"):
            training.train("CartPole-v1", hp, seed=seed, runs_root=tmp_path, device="cpu", quiet=True)
    assert list(tmp_path.iterdir()) == []
    result = training.train(
        "CartPole-v1", hp, seed=2**32 - 1, run_dir=tmp_path / "run", device="cpu", quiet=True
    )
    assert result.steps == 64


# ------------------------------------------------------------------------------------------ model.json


def _network(change: dict[str, Any]) -> Callable[[dict], dict]:
    return lambda meta: {**meta, "network": {**meta["network"], **change}}


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (
            lambda meta: {**meta, "env_id": "Acrobot-v1"},
            ["network takes observations [4] and 2 actions", "Acrobot-v1 has observations [6] and 3"],
        ),
        (lambda meta: {k: v for k, v in meta.items() if k != "env_id"}, ["env_id must name a gymnasium"]),
        (lambda meta: {**meta, "env_id": "NoSuchGame-v0"}, ["unknown environment id 'NoSuchGame-v0'"]),
        (lambda meta: {**meta, "hyperparameters": "oops"}, ["has no valid hyperparameters table"]),
        (
            lambda meta: {**meta, "hyperparameters": {**meta["hyperparameters"], "gamma": "high"}},
            ["saved hyperparameters are not valid", "gamma"],
        ),
        (lambda meta: {**meta, "network": [16]}, ["network must be a table"]),
        (_network({"n_actions": None}), ["network.n_actions must be an integer >= 1"]),
        (_network({"obs_shape": "4"}), ["network.obs_shape must be a list of sizes"]),
        (_network({"net_arch": [10**12]}), ["does not match its description", "not the layers"]),
        (_network({"kind": "nature_cnn"}), ["network.precision is missing"]),
        (_network({"kind": "transformer"}), ["unknown network kind 'transformer'"]),
        (
            lambda meta: _network({"n_actions": 3})({**meta, "action_space": {"n": 3}}),
            ["network takes observations [4] and 3 actions", "CartPole-v1 has observations [4] and 2"],
        ),
        (lambda meta: {**meta, "action_space": {"n": 3}}, ["action_space.n must equal network.n_actions"]),
        (lambda meta: {**meta, "format": "dqn-model/2"}, ["not a dqn model description"]),
        (lambda meta: [meta], ["not a dqn model description"]),
    ],
)
def test_edited_or_mismatched_model_descriptions_are_one_line(workdir: Path, edit, fragments):
    description = workdir / RUN / "best.json"
    description.write_text(json.dumps(edit(json.loads(description.read_text()))))
    before = tree(workdir)
    refused(
        run_dqn("eval", RUN, "--episodes", "1", "--device", "cpu", cwd=workdir), workdir, before, *fragments
    )
    refused(run_dqn("record", RUN, "--device", "cpu", cwd=workdir), workdir, before, *fragments)


# ------------------------------------------------------------------------- unreadable files of each kind

NOT_UTF8 = b"# \xff\xfe not UTF-8\n"


def _oversized(path: Path) -> None:
    """Valid content (TOML comments, JSON whitespace), just more of it than any such file holds."""
    filler = b" " if path.suffix == ".json" else b"#"
    path.write_bytes(filler * MAX_SETTINGS_BYTES + (b"{}" if path.suffix == ".json" else b"\n"))


PROBLEMS: dict[str, tuple[Callable[[Path], None], str]] = {
    "not UTF-8": (lambda path: path.write_bytes(NOT_UTF8), "not UTF-8 text (byte 2 is 0xff)"),
    "oversized": (_oversized, "bytes, more than"),
    "FIFO": (os.mkfifo, "it is a FIFO, not a regular file"),
    "folder": (lambda path: path.mkdir(), "it is a folder, not a file"),
    "device": (lambda path: path.symlink_to("/dev/zero"), "it is a device, not a regular file"),
}
FILE_KINDS: dict[str, tuple[str, list[str], str]] = {  # file, command reading it, what errors call it
    "--config": ("config.toml", ["train", "CartPole-v1", "--config", "config.toml"], "config file"),
    "--space": (
        "space.toml",
        ["tune", "CartPole-v1", "--trials", "1", "--space", "space.toml"],
        "search space",
    ),
    "config.toml": (f"{RUN}/config.toml", ["plot", RUN], "run config"),
    "metrics.csv": (f"{RUN}/metrics.csv", ["plot", RUN], "metrics file"),
    "model.json": (f"{RUN}/best.json", ["eval", RUN], "model metadata"),
    "checkpoint": (f"{RUN}/checkpoint.safetensors", ["train", "--resume", RUN], "checkpoint"),
    "model weights": (f"{RUN}/best.safetensors", ["eval", RUN], "model file"),
}
BINARY = {"checkpoint", "model weights"}  # read by safetensors: any bytes, of any size
UNREADABLE = [
    (kind, problem)
    for kind in FILE_KINDS
    for problem in PROBLEMS
    if kind not in BINARY or problem not in ("not UTF-8", "oversized")
]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize(("kind", "problem"), UNREADABLE)
def test_each_kind_of_file_that_is_not_readable_text_is_one_line(workdir: Path, monkeypatch, kind, problem):
    name, command, what = FILE_KINDS[kind]
    monkeypatch.setattr("dqn_cli.metrics.MAX_METRICS_BYTES", MAX_SETTINGS_BYTES)
    path = workdir / name
    path.unlink(missing_ok=True)
    damage, fragment = PROBLEMS[problem]
    damage(path)
    fragments = [f"cannot read {what} {name}", fragment]
    if kind == "config.toml" and problem in ("FIFO", "folder", "device"):
        fragments = [f"{RUN} is not a run folder"]  # a run folder is one holding a config.toml file
    before = tree(workdir)
    refused(run_dqn(*command, cwd=workdir), workdir, before, *fragments)


@pytest.mark.parametrize("problem", ["not UTF-8", "FIFO", "folder", "newer format"])
def test_dqn_runs_lists_a_run_whose_status_cannot_be_read_with_a_warning(workdir: Path, monkeypatch, problem):
    monkeypatch.setenv("COLUMNS", "200")  # run names unfolded
    status = workdir / RUN / "status.json"
    if problem == "newer format":
        status.write_text(json.dumps({**json.loads(status.read_text()), "format": "dqn-status/2"}))
    else:
        status.unlink()
        {"not UTF-8": lambda: status.write_bytes(NOT_UTF8), "FIFO": lambda: os.mkfifo(status)}.get(
            problem, status.mkdir
        )()
    before = tree(workdir)
    result = run_dqn("runs", cwd=workdir)
    assert result.returncode == 0 and "CartPole-v1/run" in result.stdout
    assert result.stderr == (
        f"warning: {RUN}/status.json is unreadable, damaged or of an unknown format; the run is listed "
        "with what could be read\n"
    )
    assert tree(workdir) == before


def test_dqn_runs_reads_status_values_of_absurd_size_as_unknown(workdir: Path, monkeypatch):
    """A process id no system has, 400-digit counts, an infinite wall time: shown as unknown, not a crash."""
    monkeypatch.setenv("COLUMNS", "200")
    (workdir / RUN / "status.json").write_text(
        f'{{"state": "running", "pid": {10**30}, "step": {10**400}, "wall_time": Infinity, "best_eval": NaN}}'
    )
    result = run_dqn("runs", cwd=workdir)
    assert (result.returncode, result.stderr) == (0, "")
    row = next(line for line in result.stdout.splitlines() if "CartPole-v1/run" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][1:] == [
        "0 / 0",
        "0",
        "-",
        "-",
        "0.0s",
        "interrupted",
    ]


def test_dqn_runs_lists_every_run_when_one_is_broken(workdir: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    broken = workdir / "runs" / "CartPole-v1" / "broken"
    broken.mkdir()
    (broken / "config.toml").write_bytes(b'env_id = "\xff"\n')
    result = run_dqn("runs", cwd=workdir)
    assert result.returncode == 0
    assert "CartPole-v1/run" in result.stdout and "CartPole-v1/broken" in result.stdout
    assert result.stderr == (
        "warning: cannot read run config runs/CartPole-v1/broken/config.toml: not UTF-8 text (byte 10 is "
        "0xff); the run is listed with what could be read\n"
    )


def test_a_file_name_holding_a_line_break_is_still_one_line(tmp_path: Path):
    result = run_dqn("train", "CartPole-v1", "--config", "two\nlines.toml", cwd=tmp_path)
    assert_one_line_error(result, "cannot read config file two\\nlines.toml")


# ---------------------------------------------------------------------- envs that cannot be made here

MISSING = [
    ("Ant-v5", "mujoco", 'MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`'),
    ("GymV26Environment-v0", "shimmy", 'pip install "shimmy[gym-v26]"'),
    (
        "phys2d/CartPole-v0",
        "jax",
        """needs the Python module 'jax', which is not installed; pip install "gymnasium[jax]\"""",
    ),
]


@pytest.mark.parametrize(("env_id", "module", "fragment"), MISSING)
def test_an_env_whose_optional_dependency_is_missing_says_what_to_install(tmp_path, env_id, module, fragment):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    refused(run_dqn("train", env_id, cwd=tmp_path), tmp_path, {}, f"cannot create {env_id}: ", fragment)


def test_did_you_mean_offers_only_ids_that_can_be_made_here(tmp_path: Path):
    result = run_dqn("train", "CartPol-v1", cwd=tmp_path)
    assert_one_line_error(
        result, "unknown environment id 'CartPol-v1'; did you mean CartPole-v1, CartPole-v0"
    )
    if importlib.util.find_spec("jax") is None:  # phys2d/CartPole-v1 is as close, but needs jax
        assert "phys2d" not in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["bench", "CartPole-v1", "Blackjack-v1"], ["Blackjack-v1 has a Tuple observation space"]),
        (["bench", "CartPole-v1", "Blackjack-v1", "--jobs", "2"], ["Blackjack-v1 has a Tuple observation"]),
        (["bench", "CartPole-v1", "Pendulum-v1"], ["Pendulum-v1 has a Box action space"]),
        (["bench", "CartPole-v1", "--set", "net_arch=[100000,100000,100000]"], ["20,000,900,002 parameters"]),
        (["bench", "CartPole-v1", "--set", "n_envs=100000"], ["n_envs = 100,000: at most 1,024"]),
        (["tune", "Blackjack-v1", "--trials", "1"], ["Blackjack-v1 has a Tuple observation space"]),
    ],
)
def test_bench_and_tune_check_every_env_before_writing_anything(tmp_path: Path, monkeypatch, args, fragments):
    monkeypatch.setattr(training, "available_memory", lambda: 8 * 10**9)  # the same on any machine
    refused(run_dqn(*args, "--device", "cpu", cwd=tmp_path), tmp_path, {}, *fragments)


@pytest.mark.parametrize("command", [["bench", "CartPole-v1", "Ant-v5"], ["tune", "Ant-v5", "--trials", "1"]])
def test_bench_and_tune_refuse_an_env_missing_its_dependency_up_front(tmp_path: Path, command):
    if importlib.util.find_spec("mujoco") is not None:
        pytest.skip("mujoco is installed here")
    refused(run_dqn(*command, cwd=tmp_path), tmp_path, {}, "cannot create Ant-v5", "gymnasium[mujoco]")


# ------------------------------------------------------------------------------------ absurd settings


def test_a_network_or_batch_too_large_for_memory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "available_memory", lambda: 8 * 10**9)
    for sets, fragment in [
        ("net_arch=[100000,100000,100000]", "a Q-network of 20,000,900,002 parameters"),
        ("batch_size=100000000", "trained on batches of 100,000,000 needs 628.8 GB"),
    ]:
        result = run_dqn("train", "CartPole-v1", "--set", sets, "--device", "cpu", cwd=tmp_path)
        refused(result, tmp_path, {}, fragment, "8.0 GB of memory is available")


def test_the_network_check_counts_weights_five_times_and_a_batch_six_times(monkeypatch):
    """CartPole, one hidden layer of 1,000, batches of 128: (4+1)*1000 + (1000+1)*2 = 7,002 parameters,
    4 + 1000 + 2 = 1,006 values per transition; 4 bytes * (5 * 7,002 + 6 * 128 * 1,006) = 3,230,472."""
    spec = {"kind": "mlp", "obs_shape": [4], "n_actions": 2, "net_arch": [1000], "dueling": False}
    cpu = training.torch.device("cpu")
    monkeypatch.setattr(training, "available_memory", lambda: 3_230_472)
    training._check_network_fits(spec, 128, cpu)
    monkeypatch.setattr(training, "available_memory", lambda: 3_230_471)
    with pytest.raises(UserError, match=r"needs 0\.0 GB"):
        training._check_network_fits(spec, 128, cpu)


@pytest.mark.parametrize("buffer_size", [2**40, 2**59, 2**63 - 1])
def test_a_replay_beyond_any_memory_is_one_line(buffer_size: int):
    """Sizes whose bytes overflow numpy's index type (2**59 transitions of 40 bytes and more) are refused
    as ones merely larger than memory are, not as a bug."""
    _, hp = resolve("CartPole-v1", sets=[f"buffer_size={buffer_size}"])
    with pytest.raises(UserError, match=f"a replay buffer of {buffer_size:,} transitions needs"):
        training._replay_that_fits(hp, (4,), np.dtype(np.float32), np.random.default_rng(0))


# ------------------------------------------------------------------------------------- format versions


def test_metadata_files_carry_their_format_and_a_newer_one_is_refused(workdir: Path):
    config = workdir / RUN / "config.toml"
    assert config.read_text().startswith('format = "dqn-run/1"\n')
    assert json.loads((workdir / RUN / "status.json").read_text())["format"] == "dqn-status/1"
    config.write_text(config.read_text().replace("dqn-run/1", "dqn-run/2"))
    shutil.copy(config, workdir / "config.toml")
    before = tree(workdir)
    newer = ["has format 'dqn-run/2', which this version of dqn cannot read (it reads dqn-run/1)"]
    for command in (
        ["plot", RUN],
        ["train", "--resume", RUN],
        ["train", "CartPole-v1", "--config", "config.toml"],
    ):
        refused(run_dqn(*command, cwd=workdir), workdir, before, *newer)
    config.write_text(config.read_text().replace("dqn-run/2", "dqn-run/1"))
    (workdir / RUN / "metrics.csv").write_text("step,wall_time,episode_return,new_column\n")
    result = run_dqn("plot", RUN, cwd=workdir)
    assert_one_line_error(result, "metrics.csv is not a dqn metrics file: its first line is not step,")


def test_run_files_without_a_format_written_before_it_still_load(workdir: Path):
    run = workdir / RUN
    config = run / "config.toml"
    config.write_text(config.read_text().removeprefix('format = "dqn-run/1"\n'))
    status = json.loads((run / "status.json").read_text())
    del status["format"]
    (run / "status.json").write_text(json.dumps(status))
    listed = run_dqn("runs", cwd=workdir)
    assert listed.returncode == 0 and listed.stderr == "" and "finished" in listed.stdout
    plotted = run_dqn("plot", RUN, "--out", "curves.png", cwd=workdir)
    assert plotted.returncode == 0 and (workdir / "curves.png").is_file()


# ------------------------------------------------------------------------------------ bare dqn, bugs


def test_bare_dqn_prints_the_help_and_no_error_line(tmp_path: Path):
    result = dqn(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "train" in result.stdout and "tune" in result.stdout
    assert result.stderr == ""


def test_an_unexpected_error_is_one_line_asking_for_a_report_unless_dqn_debug_is_set(tmp_path, monkeypatch):
    def broken() -> list[str]:
        raise RuntimeError("boom\nand a second line")

    monkeypatch.setattr("dqn_cli.presets.available_presets", broken)
    result = run_dqn("presets", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        "error: unexpected RuntimeError: boom; this is a bug in dqn, please report it with the traceback "
        "that DQN_DEBUG=1 shows\n",
    )
    monkeypatch.setenv("DQN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        run_dqn("presets", cwd=tmp_path)


# ------------------------------------------------------------------------------------------------ fuzz

SCALARS = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([-1, 0, 2**32, 2**62]),
    st.floats(),
    st.booleans(),
)
WRONG = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=6), SCALARS, max_size=2),
)


def _key_paths(table: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in table.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _key_paths(value, (*prefix, key))
    return paths


@st.composite
def mangled(draw: st.DrawFn, table: dict, values: st.SearchStrategy = WRONG) -> dict:
    """``table`` with one entry, at any depth, given a value of a wrong type, removed, or joined by an
    unknown key: valid syntax, wrong content."""
    table = copy.deepcopy(table)
    *parents, key = draw(st.sampled_from(_key_paths(table)))
    holder = functools.reduce(operator.getitem, parents, table)
    action = draw(st.sampled_from(("replace", "remove", "add")))
    if action == "replace":
        holder[key] = draw(values)
    elif action == "remove":
        del holder[key]
    else:
        holder[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return table


def _checkpoint_table(data: bytes) -> dict:
    from safetensors import safe_open

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as file:
        file.write(data)
        file.flush()
        with safe_open(file.name, framework="numpy") as handle:
            metadata = handle.metadata()
    return {key: json.loads(value) if key == "state" else value for key, value in metadata.items()}


def _signed_checkpoint(base: bytes, table: dict) -> bytes:
    """The base checkpoint's arrays under the mangled header, signed again, so that what is tested is how
    its content is checked, not only that a digest catches the change."""
    from safetensors.numpy import load, save

    from dqn_cli.integrity import DIGEST_KEY, signed

    arrays = load(base)
    metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in table.items()}
    metadata.pop(DIGEST_KEY, None)
    return save(arrays, metadata=signed(metadata, arrays))


@dataclass(frozen=True)
class FileKind:
    path: str  # in the case folder
    base: Callable[[Path], bytes]  # the real file, from the tiny run
    parse: Callable[[bytes], dict]
    write: Callable[[bytes, dict], bytes]  # (base bytes, mangled table) -> the file's bytes
    commands: tuple[tuple[str, ...], ...]
    prepare: Callable[[Path], None] = lambda case: None


def _toml(_: bytes, table: dict) -> bytes:
    return tomli_w.dumps(table).encode()


def _json(_: bytes, table: dict) -> bytes:
    return json.dumps(table).encode()


def _parse_toml(data: bytes) -> dict:
    import tomllib

    return tomllib.loads(data.decode())


def _csv_table(data: bytes) -> dict:
    lines = data.decode().splitlines()
    return {str(i): line.split(",") for i, line in enumerate(lines)}


def _csv(_: bytes, table: dict) -> bytes:
    return "".join(",".join(map(str, row)) + "\n" for row in table.values() if isinstance(row, list)).encode()


TAKEN = "taken"  # a non-empty --run-dir: a config file that is valid stops there, before training
FUZZED: dict[str, FileKind] = {
    "--config": FileKind(
        "config.toml",
        lambda run: (run / "config.toml").read_bytes(),
        _parse_toml,
        _toml,
        (("train", "CartPole-v1", "--config", "config.toml", "--run-dir", TAKEN, "--device", "cpu", "-q"),),
        lambda case: (case / TAKEN).mkdir() or (case / TAKEN / "file").touch(),
    ),
    "--space": FileKind(
        "space.toml",
        lambda run: (Path(training.__file__).parent / "search_spaces" / "cartpole.toml").read_bytes(),
        _parse_toml,
        _toml,
        (("tune", "CartPole-v1", "--trials", "1", "--space", "space.toml", "--storage", "nonsense", "-q"),),
    ),
    "config.toml": FileKind(
        f"{RUN}/config.toml",
        lambda run: (run / "config.toml").read_bytes(),
        _parse_toml,
        _toml,
        (("runs",), ("plot", RUN, "--out", "curves.png"), ("train", "--resume", RUN, "--steps", "1")),
    ),
    "status.json": FileKind(
        f"{RUN}/status.json", lambda run: (run / "status.json").read_bytes(), json.loads, _json, (("runs",),)
    ),
    "metrics.csv": FileKind(
        f"{RUN}/metrics.csv",
        lambda run: (run / "metrics.csv").read_bytes(),
        _csv_table,
        _csv,
        (("runs",), ("plot", RUN, "--out", "curves.png")),
        lambda case: (case / RUN / "status.json").unlink(),  # so that `dqn runs` reads metrics.csv
    ),
    "model.json": FileKind(
        f"{RUN}/best.json",
        lambda run: (run / "best.json").read_bytes(),
        json.loads,
        _json,
        (("eval", RUN, "--episodes", "1", "--device", "cpu"),),
    ),
    "checkpoint": FileKind(
        f"{RUN}/checkpoint.safetensors",
        lambda run: (run / "checkpoint.safetensors").read_bytes(),
        _checkpoint_table,
        _signed_checkpoint,
        (("train", "--resume", RUN, "--steps", "601", "--device", "cpu", "-q"),),
    ),
}
# What a command may write when it succeeds on a damaged file it can still use.
MAY_WRITE = {
    "plot": lambda new: new == {"curves.png"},
    "train": lambda new: all(p.startswith(RUN) for p in new),
}


def damaged(kind: FileKind, base: bytes, how: str) -> st.SearchStrategy[bytes]:
    if how == "random bytes":
        return st.binary(max_size=2048)
    if how == "truncated":
        return st.integers(0, len(base) - 1).map(lambda n: base[:n])
    return mangled(kind.parse(base)).map(lambda table: kind.write(base, table))


def check_outcome(command: tuple[str, ...], result: Result, before: dict[str, str], after: dict[str, str]):
    """Exit 2 with one line and nothing written; or, for a file the command can still use, exit 0 with
    only what the command writes; `dqn runs` always lists, with at most a warning per damaged file."""
    assert "Traceback" not in result.stderr, result.stderr
    if command[0] == "runs":
        assert result.returncode == 0, result.stderr
        assert all(line.startswith("warning: ") for line in result.stderr.splitlines()), result.stderr
        assert after == before
    elif result.returncode == 2:
        assert_one_line_error(result)
        assert after == before, result.stderr
    else:
        assert result.returncode == 0, result.stderr
        changed = {path for path in set(after) | set(before) if after.get(path) != before.get(path)}
        assert not changed or MAY_WRITE.get(command[0], lambda new: False)(changed), (command, changed)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["random bytes", "truncated", "type-mangled"])
@pytest.mark.parametrize("name", FUZZED)
@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_files_are_refused_in_one_line_or_used(tiny_run: Path, tmp_path: Path, name, how, data):
    kind = FUZZED[name]
    base = kind.base(tiny_run)
    content = data.draw(damaged(kind, base, how), label="file")
    for command in kind.commands:
        case = Path(tempfile.mkdtemp(dir=tmp_path))
        shutil.copytree(tiny_run, case / RUN)
        kind.prepare(case)
        (case / kind.path).write_bytes(content)
        before = tree(case)
        result = run_dqn(*command, cwd=case)
        check_outcome(command, result, before, tree(case))
        _tally(name, how, command[0], result)
        shutil.rmtree(case)


TALLY_VARIABLE = "DQN_FUZZ_TALLY"  # a file path: each fuzzed command's outcome is appended there


def _tally(name: str, how: str, command: str, result: Result) -> None:
    """With ``DQN_FUZZ_TALLY`` set, one JSON line per fuzzed command: the counts in README's Reliability
    table come from these lines."""
    path = os.environ.get(TALLY_VARIABLE)
    if not path:
        return
    outcome = {0: "ok", 2: "exit 2"}.get(result.returncode, f"exit {result.returncode}")
    if command == "runs":
        outcome = "listed, warning" if result.stderr.strip() else "listed"
    line = {"file": name, "how": how, "command": command, "outcome": outcome}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
