"""Paired comparisons of late-training levers: continue one run from its checkpoint, in a copy of its
folder, with some hyperparameters changed, so that every arm starts from the same networks, replay and
Adam state and differs only in the levers named.

    python benchmarks/pong_continue.py runs/explore/pong-J-n5-s3 runs/explore/pong-Jc-lr6.25e-5 \
        --steps 653224 --set learning_rate=6.25e-5

An exploration harness, not a product feature: `dqn train --resume` keeps a run's own config, which is
what makes resume bit-exact. Here the changed values are written to the copy's config.toml (so the copy
says what it ran), and `learning_rate` also reaches Adam, whose step the checkpoint would otherwise
restore. A control arm is the same command with no --set. Every arm takes the same --steps: n_timesteps
also sets the span of prioritized replay's beta.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dqn_cli import training
from dqn_cli.hyperparameters import apply_overrides, parse_set_option


def continue_with(source: Path, arm: Path, steps: int, overrides: dict) -> None:
    """Copy ``source`` to ``arm`` and resume ``arm`` to ``steps`` with ``overrides`` applied."""
    if arm.exists():
        raise SystemExit(f"{arm} exists; each arm needs a fresh copy of the run")
    shutil.copytree(source, arm)
    saved_hyperparameters, restore = training.saved_hyperparameters, training.Trainer.restore

    def changed_hyperparameters(*args, **kwargs):
        return apply_overrides(saved_hyperparameters(*args, **kwargs), overrides)

    def restore_with_learning_rate(trainer: training.Trainer, state: dict, origin: Path) -> bool:
        exact = restore(trainer, state, origin)
        for group in trainer.agent.optimizer.param_groups:
            group["lr"] = trainer.hp.learning_rate
        return exact

    training.saved_hyperparameters = changed_hyperparameters
    training.Trainer.restore = restore_with_learning_rate
    try:
        training.resume(arm, steps=steps, quiet=True)
    finally:
        training.saved_hyperparameters, training.Trainer.restore = saved_hyperparameters, restore


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="run folder with a checkpoint (left untouched)")
    parser.add_argument("arm", type=Path, help="new folder: the copy that continues")
    parser.add_argument("--steps", type=int, required=True, help="total env steps to continue to")
    parser.add_argument("--set", action="append", default=[], help="key=value, as dqn train's --set")
    args = parser.parse_args()
    continue_with(args.source, args.arm, args.steps, dict(map(parse_set_option, args.set)))


if __name__ == "__main__":
    main()
