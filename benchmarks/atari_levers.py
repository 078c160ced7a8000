"""What each throughput lever buys on Pong (ALE/Pong-v5, the atari-cpu preset): env steps/s while
learning, and the compute floor each configuration could reach at best.

The floor of a configuration is the measured gradient-step time x updates per env step (gradient_steps /
train_freq) plus the emulator's own time per env step (random actions, no learning): what one env step
costs if acting, replay and the loop were free and nothing overlapped.

Levers measured:
- bfloat16 convolutions (precision=auto on a CPU with AVX-512 BF16), against float32;
- batched acting: n_envs=4 envs share one acting forward pass (and the emulators step on threads);
- ``channels_last`` memory format and ``torch.compile`` of the gradient step (its compile time counted),
  on the gradient step alone: kept out of dqn unless they pay;
- overlapping emulation with the gradient step: ale-py's ``send``/``recv`` let the emulator threads step
  while the update runs (``overlap_emulation``), alone (real env, real update) and in the training loop,
  with torch on its default threads and on one (leaving the other core to the emulators).

    python benchmarks/atari_levers.py --steps 6000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from results import append_results

HERE = Path(__file__).parent
ENV_ID = "ALE/Pong-v5"

# Each probe runs in its own process, so compiled code, thread pools and allocator state never carry over.
COMMON = """
import json, sys, time
import numpy as np, torch
from dqn_cli.agent import DQNAgent
from dqn_cli.envs import make_vector_env
from dqn_cli.hyperparameters import apply_overrides
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import resolve
_, HP = resolve({env_id!r}, preset="atari-cpu")
HP = apply_overrides(HP, {overrides!r})

def agent(precision):
    spec = network_spec((4, 84, 84), 6, HP.net_arch, HP.dueling, precision, obs_dtype="uint8",
                        encoder=HP.encoder)
    return DQNAgent(build_q_network(spec), HP, torch.device("cpu"))

def batch(rng):
    from dqn_cli.replay import Batch
    n = HP.batch_size
    frames = rng.integers(0, 256, size=(2, n, 4, 84, 84), dtype=np.uint8)
    return Batch(obs=frames[0], actions=rng.integers(0, 6, size=n),
                 rewards=rng.choice([-1.0, 0.0, 1.0], size=n).astype(np.float32), next_obs=frames[1],
                 terminated=np.zeros(n, dtype=np.float32), horizons=np.ones(n, dtype=np.float32),
                 weights=np.ones(n, dtype=np.float32), indices=np.arange(n))

def per_call_ms(action, count, warmup=5):
    for _ in range(warmup):
        action()
    start = time.perf_counter()
    for _ in range(count):
        action()
    return (time.perf_counter() - start) / count * 1000
"""

UPDATE_PROBE = """
a, b = agent({precision!r}), batch(np.random.default_rng(0))
compile_s = 0.0
if {channels_last!r}:
    a.online.to(memory_format=torch.channels_last)
    a.target.to(memory_format=torch.channels_last)
if {compiled!r}:
    start = time.perf_counter()
    a.update = torch.compile(a.update)
    a.update(b)
    compile_s = time.perf_counter() - start
print(json.dumps({{"ms": per_call_ms(lambda: a.update(b), 60), "compile_s": compile_s}}))
"""

EMULATOR_PROBE = """
envs = make_vector_env({env_id!r}, HP.n_envs, HP)
envs.reset(seed=0)
rng = np.random.default_rng(0)
steps = 2000 // HP.n_envs
ms = per_call_ms(lambda: envs.step(rng.integers(0, 6, size=HP.n_envs)), steps, warmup=50)
print(json.dumps({{"ms_per_env_step": ms / HP.n_envs}}))
"""

OVERLAP_PROBE = """
envs = make_vector_env({env_id!r}, HP.n_envs, HP)
envs.reset(seed=0)
rng = np.random.default_rng(0)
a, b = agent({precision!r}), batch(rng)
def sequential():
    envs.step(rng.integers(0, 6, size=HP.n_envs))
    a.update(b)
def overlapped():
    envs.send(rng.integers(0, 6, size=HP.n_envs))
    a.update(b)
    envs.recv()
times = {{"sequential": [], "overlapped": []}}
for _ in range(3):
    times["sequential"].append(per_call_ms(sequential, 100))
    times["overlapped"].append(per_call_ms(overlapped, 100))
print(json.dumps({{k: float(np.median(v)) / HP.n_envs for k, v in times.items()}}))
"""

TRAINING_PROBE = """
sys.path.insert(0, {here!r})
from learning_phase import learning_steps_per_second
hp = apply_overrides(HP, {{"eval_freq": 0, "checkpoint_freq": 0, "learning_starts": 2000,
                          "n_timesteps": 2000 + {steps}}})
speed, _ = learning_steps_per_second({env_id!r}, hp, "atari-cpu")
print(json.dumps({{"steps_per_second": speed}}))
"""


def probe(body: str, overrides: dict, threads: int | None = None, **fields) -> dict:
    """Run one probe in a fresh process; ``threads``: torch's thread count there (default: torch's)."""
    source = COMMON.format(env_id=ENV_ID, overrides=overrides) + body.format(env_id=ENV_ID, **fields)
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    with tempfile.TemporaryDirectory() as cache:  # compile time counted cold: no kernels from earlier runs
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        command = [sys.executable, "-c", source]
        result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_of(
    repeats: int, body: str, overrides: dict, key: str, threads: int | None = None, **fields
) -> float:
    return statistics.median(probe(body, overrides, threads, **fields)[key] for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="timed learning env steps per training run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each probe (median kept)")
    parser.add_argument("--smoke", action="store_true", help="print the tables; keep them out of RESULTS.md")
    args = parser.parse_args()
    repeats = args.repeats

    from dqn_cli.presets import resolve

    _, hp = resolve(ENV_ID, preset="atari-cpu")
    updates_per_step = hp.gradient_steps / hp.train_freq

    emulator = {
        n: median_of(repeats, EMULATOR_PROBE, {"n_envs": n}, "ms_per_env_step", steps=0) for n in (1, 4)
    }
    print("emulator ms/env step", emulator, flush=True)

    update_variants = {
        "float32": ("float32", False, False),
        "bfloat16": ("bfloat16", False, False),
        "bfloat16 + channels_last": ("bfloat16", True, False),
        "bfloat16 + torch.compile": ("bfloat16", False, True),
    }
    update_ms, compile_s = {}, {}
    for label, (precision, channels_last, compiled) in update_variants.items():
        runs = [
            probe(UPDATE_PROBE, {}, precision=precision, channels_last=channels_last, compiled=compiled)
            for _ in range(repeats)
        ]
        update_ms[label] = statistics.median(r["ms"] for r in runs)
        compile_s[label] = statistics.median(r["compile_s"] for r in runs)
        print(label, update_ms[label], compile_s[label], flush=True)

    overlap = [probe(OVERLAP_PROBE, {"n_envs": 4}, precision="bfloat16") for _ in range(repeats)]
    sequential_ms = statistics.median(r["sequential"] for r in overlap)
    overlapped_ms = statistics.median(r["overlapped"] for r in overlap)
    print("overlap", sequential_ms, overlapped_ms, flush=True)

    overlap = {"precision": "bfloat16", "n_envs": 4, "overlap_emulation": True}
    training = {  # label: (overrides, precision, n_envs, torch threads)
        "float32, 1 env": ({"precision": "float32", "n_envs": 1}, "float32", 1, None),
        "bfloat16, 1 env": ({"precision": "bfloat16", "n_envs": 1}, "bfloat16", 1, None),
        "bfloat16, 4 envs (batched acting)": ({"precision": "bfloat16", "n_envs": 4}, "bfloat16", 4, None),
        "bfloat16, 4 envs, overlap_emulation": (overlap, "bfloat16", 4, None),
        "bfloat16, 4 envs, overlap_emulation, torch on 1 thread": (overlap, "bfloat16", 4, 1),
    }
    rows = []
    for label, (overrides, precision, n_envs, threads) in training.items():
        speed = median_of(
            repeats, TRAINING_PROBE, overrides, "steps_per_second", threads, steps=args.steps, here=str(HERE)
        )
        floor_ms = update_ms[precision] * updates_per_step + emulator[n_envs]
        rows.append(
            f"| {label} | {speed:,.0f} | {floor_ms:.2f} | {1000 / floor_ms:,.0f} | "
            f"{floor_ms * speed / 1000:.0%} |"
        )
        print(rows[-1], flush=True)

    lines = [
        "Whole training loop, learning phase (`Trainer` on the atari-cpu preset, prioritized replay, Double, "
        f"dueling, 3-step; {args.steps:,} timed env steps after 2,000 random ones; median of {repeats} "
        "runs):",
        "",
        "| configuration | env steps/s | floor (ms per env step) | floor (env steps/s) | fraction of floor |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Floor = gradient step x {updates_per_step:g} updates per env step + emulator time per env step "
        f"(1 env: {emulator[1]:.2f} ms; 4 envs on threads: {emulator[4]:.2f} ms).",
        "",
        f"Gradient step alone (batch {hp.batch_size}, the atari-cpu network and update; median of {repeats} "
        "processes, 60 steps each after warm-up):",
        "",
        "| gradient step | ms | compile time (s) |",
        "| --- | --- | --- |",
        *(f"| {label} | {update_ms[label]:.2f} | {compile_s[label]:.1f} |" for label in update_variants),
        "",
        "Emulation overlapped with the gradient step (4 envs, one bfloat16 update per vector step, real env "
        "and update):",
        "",
        "| loop | ms per env step |",
        "| --- | --- |",
        f"| `step`, then update | {sequential_ms:.2f} |",
        f"| `send`, update, `recv` | {overlapped_ms:.2f} |",
    ]
    append_results("Atari throughput levers on Pong (atari-cpu preset)", lines, print_only=args.smoke)


if __name__ == "__main__":
    main()
