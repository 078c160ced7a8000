"""How the Atari throughput benchmarks time learning: random play up to ``learning_starts`` untimed, then
the env steps per second of the rest of the run, in a throwaway run folder."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.training import Trainer


def learning_steps_per_second(env_id: str, hp: Hyperparameters, preset: str) -> tuple[float, str]:
    """Env steps/s from ``learning_starts`` to ``n_timesteps`` on the CPU, and the precision the run's
    convolutions resolved to."""
    trainer = Trainer(env_id, hp, 0, preset, torch.device("cpu"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer.run(Path(tmp), quiet=True, until_step=hp.learning_starts)
            start = time.perf_counter()
            trainer.run(Path(tmp), quiet=True)
            elapsed = time.perf_counter() - start
    finally:
        trainer.close()
    return (hp.n_timesteps - hp.learning_starts) / elapsed, trainer.model_meta["network"]["precision"]
