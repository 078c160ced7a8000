"""What the checkpoint digest (``dqn_cli/integrity.py``) costs on a 1M-transition Atari checkpoint: save and
load times with the digest and without it, and the hashing speed of blake2b and sha256 on its frames, on
one thread and on the thread pool the digest uses.

The checkpoint holds the Pong preset's frame replay with ``buffer_size`` = ``--transitions``, filled with
random frames (about 7.2 GB at 1M: 7,056 bytes a frame). The agent's weights and Adam moments (about
27 MB) are left out: next to the replay they change nothing. Files go to a temporary folder under
``--dir``, which needs that much free space; the machine needs about twice that in memory (the replay,
plus the serialised file at save or the read arrays at load). Rounds alternate with and without the
digest, so a drifting machine load hits both alike.

    python benchmarks/checkpoint_digest.py --repeats 3
    python benchmarks/checkpoint_digest.py --transitions 1000 --print-only   # a smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from results import append_results

from dqn_cli import integrity
from dqn_cli.checkpoint import load_checkpoint, save_checkpoint
from dqn_cli.presets import resolve
from dqn_cli.replay import Replay
from dqn_cli.state import nest

FRAME_CHUNK = 10_000  # frames drawn at a time while filling, so no second 7 GB array is ever made


def filled_replay(transitions: int, rng: np.random.Generator) -> Replay:
    """A full frame replay of random frames and transitions (contents do not change hashing speed, but
    pages never written would be read as the shared zero page, faster than real memory)."""
    _, hp = resolve("PongNoFrameskip-v4", sets=[f"buffer_size={transitions}"])
    replay = Replay(hp, (hp.frame_stack, 84, 84), np.dtype(np.uint8), rng)
    frames = replay.keeping
    for start in range(0, frames.capacity, FRAME_CHUNK):
        stop = min(start + FRAME_CHUNK, frames.capacity)
        frames.frames[start:stop] = rng.integers(0, 256, size=(stop - start, 84, 84), dtype=np.uint8)
    frames.links[:] = np.arange(frames.capacity) - 1
    frames.count = frames.capacity
    storage = replay.storage
    storage.obs[:] = rng.integers(0, frames.capacity, size=storage.obs.shape)
    storage.next_obs[:] = storage.obs + 1
    storage.actions[:] = rng.integers(0, 6, size=storage.actions.shape)
    storage.rewards[:] = rng.choice([-1.0, 0.0, 1.0], size=storage.rewards.shape)
    storage.terminated[:] = rng.random(storage.terminated.shape) < 0.001
    storage.horizons[:] = 1
    storage.size, storage.position = transitions, 0
    return replay


@contextmanager
def digest_off() -> Iterator[None]:
    """Save and load as they were before digests: every file gets the same constant, which matches."""
    original = integrity.tensors_digest
    integrity.tensors_digest = lambda metadata, tensors: "off"
    try:
        yield
    finally:
        integrity.tensors_digest = original


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def hash_rate(name: str, buffer: memoryview, pooled: bool) -> float:
    """GB/s of ``name`` over ``buffer``, in one call or in the digest's chunks on a thread pool."""

    def chunk_digest(chunk: memoryview) -> bytes:
        return hashlib.new(name, chunk).digest()

    step = integrity.CHUNK_BYTES
    start = time.perf_counter()
    if pooled:
        with ThreadPoolExecutor() as pool:
            list(pool.map(chunk_digest, [buffer[i : i + step] for i in range(0, len(buffer), step)]))
    else:
        chunk_digest(buffer)
    return len(buffer) / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000, help="replay size, transitions")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds with and without")
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoint is written")
    parser.add_argument("--print-only", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    start = time.perf_counter()
    replay = filled_replay(args.transitions, np.random.default_rng(0))
    fill = time.perf_counter() - start
    parts = {"replay": replay}
    arrays = {k: v for k, v in nest({"replay": replay.state_dict()}).items() if isinstance(v, np.ndarray)}
    gigabytes = sum(a.nbytes for a in arrays.values()) / 1e9
    print(f"replay of {args.transitions:,} transitions filled in {fill:.0f} s: {gigabytes:.2f} GB of arrays")

    frames = memoryview(replay.keeping.frames.reshape(-1))
    rates = {(n, p): hash_rate(n, frames, p) for n in ("blake2b", "sha256") for p in (False, True)}
    digest = statistics.median(seconds(lambda: integrity.tensors_digest({}, arrays)) for _ in range(3))

    times: dict[str, dict[str, list[float]]] = {
        "with": {"save": [], "load": []},
        "off": {"save": [], "load": []},
    }
    folder = Path(tempfile.mkdtemp(prefix="checkpoint-digest-", dir=args.dir))
    try:
        for _ in range(args.repeats):
            for mode in ("with", "off"):
                with digest_off() if mode == "off" else nullcontext():
                    times[mode]["save"].append(seconds(lambda: save_checkpoint(folder, parts, 1)))
                    times[mode]["load"].append(seconds(lambda: load_checkpoint(folder)))
        size = (folder / "checkpoint.safetensors").stat().st_size / 1e9
    finally:
        shutil.rmtree(folder)

    def median(mode: str, what: str) -> float:
        return statistics.median(times[mode][what])

    lines = [
        f"Checkpoint of a {args.transitions:,}-transition Pong frame replay: {size:.2f} GB on disk.",
        "",
        "| | with digest (median s) | without (median s) | cost of the digest |",
        "| --- | --- | --- | --- |",
    ]
    for what in ("save", "load"):
        with_digest, off = median("with", what), median("off", what)
        lines.append(f"| {what} | {with_digest:.2f} | {off:.2f} | {with_digest - off:+.2f} s |")
    lines += [
        "",
        f"The digest alone over the checkpoint's arrays: {digest:.2f} s (median of 3), "
        f"{gigabytes / digest:.1f} GB/s, once at save and once at load.",
        "",
        "| hash, over the 84x84 frames | one thread (GB/s) | 16 MiB chunks on the thread pool (GB/s) |",
        "| --- | --- | --- |",
        *(f"| {n} | {rates[n, False]:.2f} | {rates[n, True]:.2f} |" for n in ("blake2b", "sha256")),
        "",
        f"{args.repeats} alternating rounds; save includes the fsync of `write_atomic`; load reads a file "
        "just written, so from the page cache where memory allows.",
    ]
    append_results(
        f"Checkpoint digest cost ({args.transitions:,}-transition Atari replay)", lines, args.print_only
    )


if __name__ == "__main__":
    main()
