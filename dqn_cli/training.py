"""The training loop: collect with epsilon-greedy, store, update every ``train_freq`` steps, sync the
target network, evaluate periodically and keep the best model."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dqn_cli.agent import DQNAgent, epsilon_greedy
from dqn_cli.config import Hyperparameters
from dqn_cli.envs import describe_spaces, final_observations, make_vector_env
from dqn_cli.evaluation import evaluate, make_policy
from dqn_cli.metrics import MetricsLogger
from dqn_cli.networks import build_q_network, network_spec, resolve_device
from dqn_cli.progress import TrainingProgress
from dqn_cli.replay import ReplayBuffer
from dqn_cli.runfiles import (
    BEST_MODEL,
    FINAL_MODEL,
    RUNS_ROOT,
    create_run_dir,
    save_model,
    write_config,
    write_status,
)

EVAL_SEED_OFFSET = 10_000  # periodic evaluations use episodes the training envs never see


EvaluationHook = Callable[[int, float], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the models saved so far are kept and nothing else is written."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    wall_time: float
    best_eval: float | None
    last_eval: float | None


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, torch and numpy; returns the generator the loop draws exploration and replay from."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _crossed(step: int, previous: int, interval: int) -> int:
    """How many multiples of ``interval`` lie in (previous, step]."""
    return step // interval - previous // interval if interval > 0 else 0


def train(
    env_id: str,
    hp: Hyperparameters,
    *,
    seed: int = 0,
    preset: str = "",
    run_dir: Path | None = None,
    device: str = "auto",
    quiet: bool = False,
    runs_root: Path = RUNS_ROOT,
    on_evaluation: EvaluationHook | None = None,
) -> TrainResult:
    """Train a DQN agent on ``env_id`` and write the run folder; returns where it went and how it scored.

    ``on_evaluation(step, mean_return)`` runs after each periodic evaluation (Optuna reports and prunes
    there); an exception it raises ends training, with the run folder left as it was at that point.
    """
    torch_device = resolve_device(device)
    envs = make_vector_env(env_id, hp.n_envs)  # validates the env id and spaces before any file exists
    try:
        run_dir = create_run_dir(env_id, seed, run_dir, runs_root)
        run_info = {"env_id": env_id, "seed": seed, "preset": preset, "device": str(torch_device)}
        write_config(run_dir, run_info, hp.to_dict())
        return _train_loop(envs, env_id, hp, seed, preset, run_dir, torch_device, quiet, on_evaluation)
    finally:
        envs.close()


def _train_loop(envs, env_id, hp, seed, preset, run_dir, device, quiet, on_evaluation) -> TrainResult:
    rng = seed_everything(seed)
    if device.type == "cpu":
        torch.set_num_threads(1)  # small networks: thread hand-offs cost more than they save
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    n_envs, n_actions = hp.n_envs, int(action_space.n)
    spec = network_spec(obs_space.shape, n_actions, hp.net_arch)
    agent = DQNAgent(build_q_network(spec), hp, device)
    buffer = ReplayBuffer(hp.buffer_size, obs_space.shape, obs_space.dtype, rng)
    model_meta = {
        "env_id": env_id,
        "preset": preset,
        "seed": seed,
        **describe_spaces(obs_space, action_space),
        "network": spec,
        "hyperparameters": hp.to_dict(),
    }
    metrics = MetricsLogger(run_dir)
    progress = TrainingProgress(env_id, hp.n_timesteps, quiet)

    def run_evaluation(step: int) -> float:
        policy = make_policy(agent.online, n_actions, 0.0, seed, device)
        mean = float(np.mean(evaluate(policy, env_id, hp.eval_episodes, seed + EVAL_SEED_OFFSET)))
        agent.online.train()
        metrics.evaluation(step, time.perf_counter() - start, mean, hp.exploration_rate(step))
        return mean

    def report(state: str) -> None:
        write_status(
            run_dir,
            state=state,
            step=step,
            planned_steps=hp.n_timesteps,
            wall_time=time.perf_counter() - start,
            best_eval=best_eval,
            last_eval=last_eval,
        )

    start = time.perf_counter()
    obs, _ = envs.reset(seed=seed)
    episode_returns = np.zeros(n_envs)
    episode_lengths = np.zeros(n_envs, dtype=np.int64)
    recent_returns: deque[float] = deque(maxlen=100)
    loss_sum, loss_count = torch.zeros((), device=device), 0
    best_eval: float | None = None
    last_eval: float | None = None
    last_eval_step = -1
    step = last_train_step = 0
    report("running")
    try:
        with progress:
            while step < hp.n_timesteps:
                epsilon = hp.exploration_rate(step)
                if step < hp.learning_starts:
                    actions = rng.integers(0, n_actions, size=n_envs)
                else:
                    actions = epsilon_greedy(agent.online, obs, epsilon, n_actions, rng, device)
                next_obs, rewards, terminated, truncated, infos = envs.step(actions)
                done = terminated | truncated
                buffer.add(obs, actions, rewards, final_observations(next_obs, infos, done), terminated)
                obs = next_obs
                previous, step = step, step + n_envs

                episode_returns += rewards
                episode_lengths += 1
                for i in np.flatnonzero(done):
                    mean_loss = None
                    if loss_count:
                        mean_loss = float(loss_sum) / loss_count
                        if not math.isfinite(mean_loss):
                            raise TrainingDiverged(
                                f"training diverged: the TD loss became {mean_loss} at step {step}"
                            )
                        loss_sum.zero_()
                        loss_count = 0
                    metrics.episode(
                        step,
                        time.perf_counter() - start,
                        float(episode_returns[i]),
                        int(episode_lengths[i]),
                        mean_loss,
                        epsilon,
                    )
                    recent_returns.append(float(episode_returns[i]))
                    episode_returns[i], episode_lengths[i] = 0.0, 0

                if step > hp.learning_starts and _crossed(step, previous, hp.train_freq):
                    n_updates = hp.gradient_steps if hp.gradient_steps > 0 else step - last_train_step
                    for _ in range(n_updates):
                        loss_sum += agent.update(buffer.sample(hp.batch_size))
                    loss_count += n_updates
                    last_train_step = step
                if _crossed(step, previous, hp.target_update_interval):
                    agent.update_target()
                if _crossed(step, previous, hp.eval_freq) or (hp.eval_freq and step >= hp.n_timesteps):
                    last_eval, last_eval_step = run_evaluation(step), step
                    if best_eval is None or last_eval > best_eval:
                        best_eval = last_eval
                        save_model(
                            run_dir,
                            BEST_MODEL,
                            agent.online.state_dict(),
                            {**model_meta, "step": step, "eval_return": best_eval},
                        )
                    report("running")
                    if on_evaluation is not None:
                        on_evaluation(step, last_eval)
                progress.update(step, epsilon, recent_returns, last_eval)
                if last_eval_step == step and last_eval >= hp.stop_at_eval_return:
                    break
    except TrainingDiverged:
        report("diverged")
        raise
    except BaseException:
        report("interrupted")
        raise
    finally:
        metrics.close()
    save_model(
        run_dir,
        FINAL_MODEL,
        agent.online.state_dict(),
        {**model_meta, "step": step, "eval_return": last_eval if last_eval_step == step else None},
    )
    report("finished")
    return TrainResult(run_dir, step, time.perf_counter() - start, best_eval, last_eval)
