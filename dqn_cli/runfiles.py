"""Run folders and model files: where a run lives, and how models are saved and loaded without pickle.

Layout: ``runs/<env-id>/<run-name>/`` with ``config.toml``, ``metrics.csv``, TensorBoard events in the
folder itself (so ``tensorboard --logdir runs`` finds every run), ``status.json``, ``model.safetensors`` +
``model.json`` (end of training), ``best.safetensors`` + ``best.json`` (best periodic evaluation) and
``videos/``. Every file is written to a temporary name and renamed, so a crash never leaves a half-written
model or config. Runs may sit deeper (`dqn bench` makes ``runs/bench/<name>/<env-id>-s<seed>/``), so a run
folder is recognised by its ``config.toml``, at any depth.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import tomli_w

from dqn_cli import __version__
from dqn_cli.errors import UserError

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.toml"
STATUS_FILE = "status.json"
FINAL_MODEL = "model"
BEST_MODEL = "best"
MODEL_FORMAT = "dqn-model/1"


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
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; its previous version is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files a killed process left mid-write (the finished files are never touched)."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def create_run_dir(env_id: str, seed: int, run_dir: Path | None = None, runs_root: Path = RUNS_ROOT) -> Path:
    """Create the folder for a new run; a given ``run_dir`` must not already hold files."""
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = runs_root / env_folder_name(env_id) / f"{stamp}-s{seed}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"run directory {run_dir} already exists and is not empty; choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write run directory {run_dir}: {exc.strerror}") from None
    return run_dir


def write_config(run_dir: Path, run_info: dict[str, Any], hyperparameters: dict[str, Any]) -> None:
    text = tomli_w.dumps({**run_info, "hyperparameters": hyperparameters})
    write_atomic(run_dir / CONFIG_FILE, text.encode())


def read_config(run_dir: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {run_dir / CONFIG_FILE}: {exc}") from None


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
    write_atomic(run_dir / STATUS_FILE, json.dumps(asdict(stamped), indent=2).encode())


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_status(run_dir: Path) -> RunStatus | None:
    """``status.json`` as a RunStatus, or None if it is missing or not a JSON object.

    It may be from an older version or damaged, and one such file must not stop `dqn runs` from listing
    the others: a field of the wrong type reads as its default, an unknown state as interrupted.
    """
    try:
        data = json.loads((run_dir / STATUS_FILE).read_bytes())
    except (OSError, ValueError, RecursionError):  # ValueError covers bad JSON and non-UTF-8 bytes
        return None
    if not isinstance(data, dict):
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
    """Save weights as ``<name>.safetensors`` and their description as ``<name>.json``."""
    from safetensors.torch import save

    weights = {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}
    path = run_dir / f"{name}.safetensors"
    write_atomic(path, save(weights))
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


def resolve_model_path(run_or_model: Path | None, final: bool = False) -> Path:
    """Pick the model file for a run folder (best by default), a model file, or the newest run."""
    target = newest_run() if run_or_model is None else run_or_model
    if target.is_dir():
        order = [FINAL_MODEL] if final else [BEST_MODEL, FINAL_MODEL]
        for name in order:
            if (target / f"{name}.safetensors").exists():
                return target / f"{name}.safetensors"
        raise UserError(f"{target} holds no model ({' or '.join(n + '.safetensors' for n in order)})")
    if not target.exists():
        raise UserError(f"no such run or model: {target}")
    return target


def load_model(path: Path) -> LoadedModel:
    """Read weights and metadata; anything missing, corrupt or not ours is a UserError, never executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"model metadata {meta_path} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"model metadata {meta_path} is unreadable or corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise UserError(f"{meta_path} is not a dqn model description (format {MODEL_FORMAT})")
    try:
        weights = load(path.read_bytes())
    except (OSError, SafetensorError, ValueError) as exc:
        raise UserError(
            f"model file {path} is not a valid safetensors file (corrupt or truncated?): {exc}"
        ) from None
    return LoadedModel(path=path, meta=meta, weights=weights)
