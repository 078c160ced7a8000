"""Run folders and model files: where a run lives, and how models are saved and loaded without pickle.

Layout: ``runs/<env-id>/<run-name>/`` with ``config.toml``, ``metrics.csv``, TensorBoard events in the
folder itself (so ``tensorboard --logdir runs`` finds every run), ``status.json``, ``model.safetensors`` +
``model.json`` (end of training), ``best.safetensors`` + ``best.json`` (best periodic evaluation),
``checkpoint.safetensors``, ``videos/``, and ``.lock`` while a process trains it (``runlock``). Every file
is written to a temporary name and renamed, so a crash never leaves a half-written model or config. Runs
may sit deeper (`dqn bench` makes ``runs/bench/<name>/<env-id>-s<seed>/``), so a run folder is recognised
by its ``config.toml``, at any depth.
"""

from __future__ import annotations

import json
import math
import os
import platform
import stat
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import tomli_w

from dqn_cli import __version__
from dqn_cli.envpackages import saved_packages
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import saved_hyperparameters
from dqn_cli.integrity import Verdict, describe, other_models, read_model_file, signed
from dqn_cli.runlock import LOCK_FILE, hold_run_lock

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.toml"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.safetensors"  # written by ``checkpoint``; named here, found without torch
FINAL_MODEL = "model"
BEST_MODEL = "best"
MODEL_FORMAT = "dqn-model/1"
RUN_FORMAT = "dqn-run/1"  # config.toml
STATUS_FORMAT = "dqn-status/1"  # status.json


def env_folder_name(env_id: str) -> str:
    return env_id.replace("/", "-")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    On failure (disk full, permissions) the temporary file is removed, ``path`` keeps its old content and
    the error is a one-line UserError.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:  # owns fd from here: closed whatever fails
            os.fchmod(fd, 0o666 & ~_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):  # a failure to clean up must not hide the failure that made it necessary
            os.unlink(tmp)
        if isinstance(exc, OSError):
            kept = "; its previous version is kept" if path.exists() else ""
            raise UserError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None
        raise


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files a killed process left mid-write (the finished files are never touched)."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _holds_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` exists as anything but an empty folder (a lock file left by a killed run aside)."""
    return run_dir.exists() and (
        not run_dir.is_dir() or any(entry.name != LOCK_FILE for entry in run_dir.iterdir())
    )


def _make_new_folder(env_id: str, seed: int, runs_root: Path) -> Path:
    """A new timestamped folder; mkdir, not a look first, so two runs started in one second never share."""
    base = runs_root / env_folder_name(env_id) / f"{datetime.now():%Y%m%d-%H%M%S}-s{seed}"
    base.parent.mkdir(parents=True, exist_ok=True)
    run_dir, n = base, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")


@contextmanager
def create_run_dir(
    env_id: str, seed: int, run_dir: Path | None = None, runs_root: Path = RUNS_ROOT
) -> Iterator[Path]:
    """Create the folder for a new run and hold its lock (``runlock``) for the block; a given ``run_dir``
    must not already hold files. Emptiness is checked again under the lock, so of two runs racing for one
    folder exactly one gets it; the other is refused and leaves nothing behind."""
    refused = f"run directory {run_dir} already exists and is not empty; choose another --run-dir"
    if run_dir is not None and _holds_files(run_dir):
        raise UserError(refused)
    try:
        if run_dir is None:
            run_dir = _make_new_folder(env_id, seed, runs_root)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write run directory {run_dir}: {exc.strerror}") from None
    with hold_run_lock(run_dir):  # creating the lock file also proves the folder writable
        if _holds_files(run_dir):  # a racing run took it, and ended, between our look and our lock
            raise UserError(refused)
        yield run_dir


def write_config(run_dir: Path, run_info: dict[str, Any], hyperparameters: dict[str, Any]) -> None:
    text = tomli_w.dumps({"format": RUN_FORMAT, **run_info, "hyperparameters": hyperparameters})
    write_atomic(run_dir / CONFIG_FILE, text.encode())


# ------------------------------------------------------------------------------------- untrusted files

MAX_SETTINGS_BYTES = 1 << 20  # a config, search space, status or model description is a few kB
_NOT_A_FILE = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}
_OPEN_FLAGS = os.O_RDONLY | sum(getattr(os, flag, 0) for flag in ("O_NONBLOCK", "O_NOCTTY", "O_BINARY"))


def _check_regular(info: os.stat_result, path: Path, what: str, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"cannot read {what} {path}: it is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = _NOT_A_FILE.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise UserError(f"cannot read {what} {path}: it is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise UserError(
            f"cannot read {what} {path}: it holds {info.st_size:,} bytes, more than a {what} can "
            f"({max_bytes:,})"
        )


def require_regular_file(path: Path, what: str) -> None:
    """A one-line UserError unless ``path`` is a regular file (FileNotFoundError if it is missing), for
    files read by libraries that would block on a FIFO or fail obscurely on a folder (safetensors)."""
    try:
        _check_regular(os.stat(path), path, what, max_bytes=2**63)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_untrusted_bytes(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a file the user or another program may have damaged, replaced or made huge. Anything
    but a regular file of at most ``max_bytes`` is a one-line UserError naming ``what`` it should be; a
    missing file raises FileNotFoundError, as what that means depends on the caller. Opened non-blocking,
    so a FIFO swapped in after the look cannot hang the read."""
    try:
        _check_regular(os.stat(path), path, what, max_bytes)
        with os.fdopen(os.open(path, _OPEN_FLAGS), "rb") as handle:
            _check_regular(os.fstat(handle.fileno()), path, what, max_bytes)
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew since the look
        raise UserError(f"cannot read {what} {path}: it holds more than {max_bytes:,} bytes")
    return data


def read_untrusted_text(path: Path, what: str, max_bytes: int) -> str:
    """``read_untrusted_bytes`` decoded as UTF-8; other bytes are a one-line UserError."""
    data = read_untrusted_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start:,} is {data[exc.start]:#04x}"
        raise UserError(f"cannot read {what} {path}: not UTF-8 text ({where})") from None


def read_untrusted_json(path: Path, what: str, max_bytes: int) -> Any:
    """``read_untrusted_text`` parsed as JSON; bad JSON, deep nesting included, is a one-line UserError."""
    text = read_untrusted_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise UserError(f"{what} {path} is unreadable or corrupt: not valid JSON ({detail})") from None


def parse_untrusted_toml(text: str, origin: str) -> dict[str, Any]:
    """TOML text as a table; bad TOML, nesting too deep included, is a one-line UserError."""
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "nested too deeply"
        raise UserError(f"{origin} is not valid TOML: {detail}") from None


def check_format(found: Any, known: str, origin: str) -> None:
    """Files without a ``format`` predate it and are read as today's; any other format than ``known`` is
    from a newer or a foreign program, whose meaning this version cannot know."""
    if found is not None and found != known:
        raise UserError(
            f"{origin} has format {found!r}, which this version of dqn cannot read (it reads {known}); "
            "it was written by a newer version or another program"
        )


SEED_LIMIT = 2**32  # numpy, torch and gymnasium all take seeds in [0, 2**32)


def check_seed(seed: Any, origin: str = "--seed") -> int:
    """A seed every random source accepts, or a one-line UserError naming where it came from."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{origin} must be an integer from 0 to {SEED_LIMIT - 1:,}, got {seed!r}")
    return seed


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.toml``, checked: a known format, ``env_id``, ``seed``, ``gym_packages`` (made a
    list, empty in runs from before them) and valid hyperparameters, so callers can index it. Any fault is
    a one-line UserError."""
    path = run_dir / CONFIG_FILE
    try:
        text = read_untrusted_text(path, "run config", MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        raise UserError(f"cannot read run config {path}: it is missing") from None
    data = parse_untrusted_toml(text, f"run config {path}")
    check_format(data.get("format"), RUN_FORMAT, str(path))
    env_id = data.get("env_id")
    if not isinstance(env_id, str) or not env_id:
        raise UserError(f"{path} names no env_id (a gymnasium id such as CartPole-v1)")
    check_seed(data.get("seed"), f"seed in {path}")
    for key in ("preset", "device"):
        if not isinstance(data.get(key, ""), str):
            raise UserError(f"{key} in {path} must be a string, got {data[key]!r}")
    data["gym_packages"] = list(saved_packages(data.get("gym_packages"), str(path)))
    saved_hyperparameters(data.get("hyperparameters"), str(path))
    return data


class RunState(StrEnum):
    """Where a run's life stands, as ``status.json`` records it."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped by a signal or an error; resumable from its checkpoint
    DIVERGED = "diverged"
    PRUNED = "pruned"  # stopped early by `dqn tune`


@dataclass
class RunStatus:
    """The content of ``status.json``: how far a run got, rewritten by the trainer as the run goes."""

    state: RunState
    step: int
    planned_steps: int
    updates: int = 0  # gradient steps done so far
    wall_time: float = 0.0
    best_eval: float | None = None
    last_eval: float | None = None
    pid: int | None = None  # of the writing process, so `dqn runs` can tell a live run from a killed one
    updated: str | None = None  # ISO time of the write


def write_status(run_dir: Path, status: RunStatus) -> None:
    """Write ``status.json``, stamped with this process's id and the current time."""
    stamped = replace(status, pid=os.getpid(), updated=datetime.now().isoformat(timespec="seconds"))
    data = {"format": STATUS_FORMAT, **asdict(stamped)}
    write_atomic(run_dir / STATUS_FILE, json.dumps(data, indent=2).encode())


def _int(value: object) -> int | None:
    """A count or process id: a whole number in [0, 2**63), as every field of status.json is."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an integer of hundreds of digits
        return None


def read_status(run_dir: Path) -> RunStatus | None:
    """``status.json`` as a RunStatus, or None if it is missing, unreadable, not a JSON object or of a
    format this version does not know.

    It may be from an older version or damaged, and one such file must not stop `dqn runs` from listing
    the others: a field of the wrong type reads as its default, an unknown state as interrupted.
    """
    try:
        data = read_untrusted_json(run_dir / STATUS_FILE, "status file", MAX_SETTINGS_BYTES)
    except (FileNotFoundError, UserError):
        return None
    if not isinstance(data, dict) or data.get("format", STATUS_FORMAT) != STATUS_FORMAT:
        return None
    try:
        state = RunState(data.get("state"))
    except ValueError:
        state = RunState.INTERRUPTED
    updated = data.get("updated")
    return RunStatus(
        state=state,
        step=_int(data.get("step")) or 0,
        planned_steps=_int(data.get("planned_steps")) or 0,
        updates=_int(data.get("updates")) or 0,
        wall_time=_float(data.get("wall_time")) or 0.0,
        best_eval=_float(data.get("best_eval")),
        last_eval=_float(data.get("last_eval")),
        pid=_int(data.get("pid")),
        updated=updated if isinstance(updated, str) else None,
    )


def is_run_dir(path: Path) -> bool:
    """A run folder is one holding ``config.toml``, the first file a run writes."""
    return (path / CONFIG_FILE).is_file()


def iter_runs(root: Path = RUNS_ROOT) -> Iterator[Path]:
    """Every run folder under ``root``, at any depth, in name order; a run folder's own subfolders
    (``videos/``) are not searched. Unreadable folders are skipped."""
    for folder, subfolders, _ in os.walk(root):
        if is_run_dir(Path(folder)):
            subfolders.clear()
            yield Path(folder)
        else:
            subfolders.sort()


def package_versions() -> dict[str, str]:
    versions = {"dqn_cli": __version__, "python": platform.python_version()}
    for dist in ("torch", "gymnasium", "numpy", "ale-py", "safetensors"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


# ------------------------------------------------------------------------------------------- models


def save_model(run_dir: Path, name: str, state_dict: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Save weights as ``<name>.safetensors`` and their description as ``<name>.json``. The weights' digest
    goes into the safetensors header, not the JSON: a kill between the two renames must not pair new
    weights with an old digest, and the header keeps the file plain safetensors for other tools."""
    from safetensors.torch import save

    weights = {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}
    path = run_dir / f"{name}.safetensors"
    write_atomic(path, save(weights, metadata=signed({}, {k: t.numpy() for k, t in weights.items()})))
    full_meta = {"format": MODEL_FORMAT, **meta, "versions": package_versions()}
    write_atomic(path.with_suffix(".json"), json.dumps(full_meta, indent=2).encode())
    return path


@dataclass
class LoadedModel:
    path: Path
    meta: dict[str, Any]
    weights: dict[str, Any]

    @property
    def env_id(self) -> str:
        return self.meta["env_id"]


MODEL_FILES = (f"{BEST_MODEL}.safetensors", f"{FINAL_MODEL}.safetensors")


def newest_run(
    runs_root: Path = RUNS_ROOT, having: tuple[str, ...] = MODEL_FILES, what: str = "a model"
) -> Path:
    """The most recently started run under ``runs_root`` holding one of the files ``having``."""
    candidates = [run for run in iter_runs(runs_root) if any((run / name).exists() for name in having)]
    if not candidates:
        raise UserError(f"no run with {what} found under {runs_root}/; train one with `dqn train ENV_ID`")
    return max(candidates, key=lambda d: (d / CONFIG_FILE).stat().st_mtime)


def run_to_resume(run_dir: Path | None) -> Path:
    """The run folder ``--resume`` continues: the one given, or the newest run with a checkpoint."""
    if run_dir is None:
        return newest_run(having=(CHECKPOINT_FILE,), what="a checkpoint")
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    return run_dir


def resolve_model_path(run_or_model: Path | None, final: bool = False) -> Path:
    """Pick the model file for a run folder (best by default), a model file, or the newest run."""
    target = newest_run() if run_or_model is None else run_or_model
    if target.is_dir():
        order = [FINAL_MODEL] if final else [BEST_MODEL, FINAL_MODEL]
        found = [path for path in (target / f"{name}.safetensors" for name in order) if path.exists()]
        if not found:
            raise UserError(f"{target} holds no model ({' or '.join(n + '.safetensors' for n in order)})")
        target = found[0]
    elif not target.exists():
        raise UserError(f"no such run or model: {target}")
    require_regular_file(target, "model file")  # safetensors would wait forever on a FIFO
    return target


def load_model(path: Path) -> LoadedModel:
    """Read weights and metadata; anything missing, corrupt or not ours is a UserError, never executed."""
    import torch
    from safetensors import SafetensorError

    meta_path = path.with_suffix(".json")
    try:
        meta = read_untrusted_json(meta_path, "model metadata", MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        raise UserError(f"model metadata {meta_path} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"model metadata {meta_path} is unreadable or corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise UserError(f"{meta_path} is not a dqn model description (format {MODEL_FORMAT})")
    try:
        found, tensors = read_model_file(path)
    except (OSError, SafetensorError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _damaged_model(path, f"corrupt or truncated (not a valid safetensors file: {detail})") from None
    if found is Verdict.CORRUPT:
        raise _damaged_model(path, "corrupt (its weights do not match their digest)")
    weights = {key: torch.from_numpy(array) for key, array in tensors.items()}
    return LoadedModel(path=path, meta=meta, weights=weights)


def _damaged_model(path: Path, problem: str) -> UserError:
    """One line naming the damaged model file and, of the run's other model files, which can be used."""
    others = other_models(path.parent, [name for name in MODEL_FILES if name != path.name])
    message = f"{path.name} in {path.parent} is {problem}"
    if others:
        message += f"; {describe(others)}"
    usable = [name for name, found in others if found is not Verdict.CORRUPT]
    if usable:
        message += f" (use {path.parent / usable[0]} instead)"
    return UserError(message)
