"""How long a run's schedule takes on this machine, measured rather than guessed: a probe of a second or
two times env steps and gradient steps like the run's, and backs the warning that an Atari schedule
meant for a GPU (the atari preset's 10M steps) would take days on a CPU.

The probe touches nothing of the run: it steps its own throwaway envs into its own small replay and
trains a copy of the agent, so the run's weights, replay, envs and files are as they were; the random
streams it may draw from (torch's, for ``augment_shift``) are the run's, which ``Trainer.step_costs``
restores after it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dqn_cli.agent import DQNAgent, greedy_actions
from dqn_cli.atari import is_atari
from dqn_cli.envs import make_vector_env
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides
from dqn_cli.presets import ATARI_CPU_PRESET
from dqn_cli.replay import Replay
from dqn_cli.rollout import Rollout

LONG_SCHEDULE_STEPS = 2_000_000  # env steps from which an Atari run on a CPU is warned about
PROBE_ENV_STEPS = 100  # timed env steps (summed over the envs), after one untimed vector step
PROBE_UPDATES = 4  # timed gradient steps, after one untimed
PROBE_SECONDS = 0.75  # each of the two is cut short here on a slow or busy machine


@dataclass(frozen=True)
class StepCosts:
    """Seconds per env step (acting, the env, storing it in replay) and per gradient step (sampling a
    batch and the TD update), as measured here."""

    env_step: float
    update: float

    def seconds_per_env_step(self, hp: Hyperparameters) -> float:
        """An env step and its share of the updates: ``gradient_steps`` per ``train_freq`` env steps."""
        per_phase = hp.gradient_steps if hp.gradient_steps > 0 else hp.train_freq
        return self.env_step + self.update * per_phase / hp.train_freq


def is_long_cpu_schedule(env_id: str, steps: int, device: torch.device) -> bool:
    return is_atari(env_id) and device.type == "cpu" and steps >= LONG_SCHEDULE_STEPS


def measure_step_costs(
    env_id: str, hp: Hyperparameters, online: nn.Module, device: torch.device
) -> StepCosts:
    """Time ~``PROBE_ENV_STEPS`` env steps of throwaway envs like the run's, acting greedily with a copy
    of its Q-network, then ``PROBE_UPDATES`` gradient steps of a copy of its agent on batches from them
    (fewer where either takes over ``PROBE_SECONDS``)."""
    probe_hp = apply_overrides(hp, {"buffer_size": PROBE_ENV_STEPS})  # a ring that small just wraps
    agent = DQNAgent(copy.deepcopy(online), probe_hp, device)
    envs = make_vector_env(env_id, hp.n_envs, probe_hp)
    try:
        space = envs.single_observation_space
        replay = Replay(probe_hp, space.shape, space.dtype, np.random.default_rng(0))
        rollout = Rollout(envs, probe_hp, replay, seed=0)

        def update() -> None:
            batch = replay.sample(hp.batch_size)
            replay.update_priorities(batch.indices, agent.update(batch)[1])

        def act() -> None:
            rollout.step(greedy_actions(agent.online, rollout.obs, device))

        env_step = _seconds_each(act, max(PROBE_ENV_STEPS // hp.n_envs, 1)) / hp.n_envs
        while len(replay) == 0:  # an n-step transition is complete only after n steps
            act()
        return StepCosts(env_step, _seconds_each(update, PROBE_UPDATES))
    finally:
        envs.close()


def _seconds_each(action: Callable[[], object], times: int) -> float:
    """Mean seconds per call over ``times`` calls or ``PROBE_SECONDS``, whichever ends first, after one
    untimed call: first calls allocate and pick kernels."""
    action()
    calls, start = 0, time.perf_counter()
    while calls < times and time.perf_counter() - start <= PROBE_SECONDS:
        action()
        calls += 1
    return (time.perf_counter() - start) / calls


def schedule_warning(costs: StepCosts, hp: Hyperparameters, steps: int, preset: str) -> str:
    """One line: how long ``steps`` env steps take at the measured speed, and what to do instead."""
    rate = 1 / costs.seconds_per_env_step(hp)
    advice = (
        "fewer --steps take proportionally less"
        if preset == ATARI_CPU_PRESET
        else f"--preset {ATARI_CPU_PRESET} is made for Atari on a CPU (dqn presets {ATARI_CPU_PRESET})"
    )
    return (
        f"{steps:,} env steps will take about {_about(steps / rate)} on this CPU, at the {rate:,.1f} env "
        f"steps/s measured here; {advice}"
    )


def _about(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"
