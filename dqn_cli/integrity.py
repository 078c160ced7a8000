"""Integrity of saved files: a digest of a safetensors file's tensors and metadata, kept in its header and
checked on load, so bytes changed on disk are refused instead of resumed or played.

What is hashed: the metadata (but the digest), then every tensor's name, dtype and shape, then its bytes,
in name order. A flip anywhere is caught: in a tensor's bytes by the digest, in the header's tensor table
or metadata by the digest or by safetensors itself (bad JSON, offsets that do not tile the data).

Why from the arrays rather than the file's bytes: the digest lives in the header, which safetensors writes
before the data, so hashing the serialised file would mean serialising it twice, or copying a multi-GB
result to patch its header. Hashing the arrays costs one pass over memory at save (before serialising)
and one at load (after reading), and does not depend on the order in which safetensors lays tensors out.

Why sha256 in chunks: hashlib releases the GIL, so 16 MiB chunks are hashed on a thread pool and their
digests hashed in order, one core's speed times the cores. sha256 rather than blake2b: OpenSSL's sha256
uses the CPU's SHA instructions (x86 since Ice Lake and Zen, ARMv8), 1.2 GB/s a core against blake2b's
0.5 (a 2-core x86 VM, 1 GiB buffer: 2.3 against 0.86 GB/s pooled); ``benchmarks/checkpoint_digest.py``
measures both and what the digest adds to saving and loading a 7 GB Atari checkpoint.

Files written before digests have none; they are accepted (``Verdict.UNSIGNED``). A file whose format
always carries one but lacks it has lost it to damage, and is as corrupt as one whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where tensors are hashed: `dqn --help` and `dqn runs` stay light
    import numpy as np

DIGEST_KEY = "tensors_sha256"
CHUNK_BYTES = 16 << 20  # part of the digest's definition: changing it would refuse every saved file


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def tensors_digest(metadata: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> str:
    """The digest of ``metadata`` (its DIGEST_KEY left out) and ``tensors``, as hex."""
    import numpy as np

    names = sorted(tensors)
    table = [[name, tensors[name].dtype.name, list(tensors[name].shape)] for name in names]
    described = {key: metadata[key] for key in sorted(metadata) if key != DIGEST_KEY}
    chunks = []
    for name in names:
        raw = memoryview(np.ascontiguousarray(tensors[name]).reshape(-1).view(np.uint8))
        chunks += [raw[start : start + CHUNK_BYTES] for start in range(0, len(raw), CHUNK_BYTES)]
    outer = hashlib.sha256(json.dumps([described, table]).encode())
    with ThreadPoolExecutor() as pool:
        for digest in pool.map(_sha256, chunks):
            outer.update(digest)
    return outer.hexdigest()


def signed(metadata: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> dict[str, str]:
    """``metadata`` with the digest of itself and ``tensors`` added, for the file's header."""
    return {**metadata, DIGEST_KEY: tensors_digest(metadata, tensors)}


class Verdict(StrEnum):
    INTACT = "intact"
    UNSIGNED = "unsigned"
    CORRUPT = "corrupt"


def verdict(metadata: Mapping[str, str], tensors: Mapping[str, np.ndarray], must_be_signed: bool) -> Verdict:
    """Whether the tensors and metadata read from a file are those that were saved. ``must_be_signed``:
    the file's format always carries a digest, so a missing one means damage, not age."""
    if DIGEST_KEY not in metadata:
        return Verdict.CORRUPT if must_be_signed else Verdict.UNSIGNED
    return Verdict.INTACT if metadata[DIGEST_KEY] == tensors_digest(metadata, tensors) else Verdict.CORRUPT


def read_model_file(path: Path) -> tuple[Verdict, dict[str, np.ndarray]]:
    """A model file's tensors and their verdict; safetensors' errors (unreadable, truncated) propagate.
    Model files have header metadata only since digests, so any metadata means one is due."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    return verdict(metadata, tensors, must_be_signed=bool(metadata)), tensors


def model_file_verdict(path: Path) -> Verdict:
    from safetensors import SafetensorError

    try:
        return read_model_file(path)[0]
    except (OSError, SafetensorError, ValueError):
        return Verdict.CORRUPT


def other_models(folder: Path, names: Iterable[str]) -> list[tuple[str, Verdict]]:
    """The verdict of each model file ``names`` present in ``folder`` (models are small: cheap to check),
    for an error about a damaged file to say what is still usable."""
    return [(name, model_file_verdict(folder / name)) for name in names if (folder / name).is_file()]


def describe(verdicts: list[tuple[str, Verdict]]) -> str:
    """'best.safetensors and model.safetensors are intact' (empty for no files)."""
    said = {  # (one file, several)
        Verdict.INTACT: ("is intact", "are intact"),
        Verdict.UNSIGNED: ("predates digests (unchecked)", "predate digests (unchecked)"),
        Verdict.CORRUPT: ("is corrupt too", "are corrupt too"),  # said beside the file the error is about
    }
    phrases = []
    for found in Verdict:
        names = [name for name, seen in verdicts if seen is found]
        if names:
            phrases.append(f"{' and '.join(names)} {said[found][len(names) > 1]}")
    return ", ".join(phrases)
