"""The training loop: collect with epsilon-greedy, store, update every ``train_freq`` steps, sync the
target network, evaluate periodically and keep the best model, checkpoint so a run can resume exactly."""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqn_cli.agent import DQNAgent, epsilon_greedy
from dqn_cli.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from dqn_cli.config import Hyperparameters, apply_overrides
from dqn_cli.envs import describe_spaces, final_observations, make_vector_env, restore_envs, snapshot_envs
from dqn_cli.errors import UserError
from dqn_cli.evaluation import evaluate, make_policy
from dqn_cli.metrics import MetricsLogger
from dqn_cli.networks import build_q_network, network_spec, resolve_device, resolve_precision
from dqn_cli.progress import TrainingProgress
from dqn_cli.replay import NStepAccumulator, check_replay_fits, make_replay
from dqn_cli.runfiles import (
    BEST_MODEL,
    CONFIG_FILE,
    FINAL_MODEL,
    RUNS_ROOT,
    create_run_dir,
    newest_run,
    read_config,
    remove_stale_temporaries,
    save_model,
    write_config,
    write_status,
)

EVAL_SEED_OFFSET = 10_000  # periodic evaluations use episodes the training envs never see
RECENT_EPISODES = 100  # the progress bar's "recent mean return"

EvaluationHook = Callable[[int, float], None]


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the files saved before it are kept as they were."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was written and training can resume from it."""

    def __init__(self, signum: int, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step:,}")
        self.exit_code = 128 + signum
        self.run_dir = run_dir
        self.step = step


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    wall_time: float
    best_eval: float | None
    last_eval: float | None


@dataclass
class LoopState:
    """The training loop's counters and statistics: with the arrays, all that a checkpoint restores."""

    step: int = 0
    last_train_step: int = 0
    best_eval: float | None = None
    last_eval: float | None = None
    last_eval_step: int = -1
    wall_time: float = 0.0  # seconds spent in earlier sessions of this run
    loss_sum: float = 0.0
    loss_count: int = 0
    recent_returns: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, torch and numpy; returns the generator the loop draws exploration and replay from."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _crossed(step: int, previous: int, interval: int) -> int:
    """How many multiples of ``interval`` lie in (previous, step]."""
    return step // interval - previous // interval if interval > 0 else 0


class _StopSignals:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            # The checkpoint being written, if any, goes to a temporary name: the last good one stays.
            os._exit(130)
        self.received = signum

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a tuning worker thread): leave signals alone
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """Owns the envs, agent, replay and loop state of one run, and turns them into checkpoints and back."""

    def __init__(
        self,
        envs,
        env_id: str,
        hp: Hyperparameters,
        seed: int,
        preset: str,
        run_dir: Path,
        device: torch.device,
    ) -> None:
        self.envs, self.env_id, self.hp, self.seed, self.run_dir, self.device = (
            envs,
            env_id,
            hp,
            seed,
            run_dir,
            device,
        )
        self.rng = seed_everything(seed)
        obs_space, action_space = envs.single_observation_space, envs.single_action_space
        self.n_actions = int(action_space.n)
        spec = network_spec(
            obs_space.shape, self.n_actions, hp.net_arch, hp.dueling, resolve_precision(hp.precision, device)
        )
        if device.type == "cpu" and spec["kind"] == "mlp":
            torch.set_num_threads(1)  # small networks: thread hand-offs cost more than they save
        self.agent = DQNAgent(build_q_network(spec), hp, device)
        self.device_loss_sum = torch.zeros((), device=device)  # summed where computed: no sync per update
        self.buffer = make_replay(hp, obs_space.shape, obs_space.dtype, self.rng)
        self.accumulator = NStepAccumulator(hp.n_step, hp.gamma, hp.n_envs) if hp.n_step > 1 else None
        self.model_meta = {
            "env_id": env_id,
            "preset": preset,
            "seed": seed,
            **describe_spaces(obs_space, action_space),
            "network": spec,
            "hyperparameters": hp.to_dict(),
        }
        self.state = LoopState()
        self._begin_episodes(*envs.reset(seed=seed))
        self.episode_returns = np.zeros(hp.n_envs)
        self.episode_lengths = np.zeros(hp.n_envs, dtype=np.int64)

    # ------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        self._check_finite()
        optimizer = self.agent.optimizer.state_dict()
        arrays = {f"online/{k}": v.cpu().numpy() for k, v in self.agent.online.state_dict().items()}
        arrays |= {f"target/{k}": v.cpu().numpy() for k, v in self.agent.target.state_dict().items()}
        for index, moments in optimizer["state"].items():
            arrays |= {f"optimizer/{index}/{name}": t.cpu().numpy() for name, t in moments.items()}
        arrays |= {f"replay/{name}": array for name, array in self.buffer.stored().items()}
        if self.accumulator is not None:
            arrays |= {f"nstep/{name}": array for name, array in self.accumulator.state().items()}
        if self.buffer.frames is not None:
            arrays["loop/obs_refs"] = self.obs_refs
        if self.lives is not None:
            arrays["loop/lives"] = self.lives
        arrays |= {
            "loop/obs": self.obs,
            "loop/episode_returns": self.episode_returns,
            "loop/episode_lengths": self.episode_lengths,
            "rng/torch": torch.get_rng_state().numpy(),
        }
        state = {
            "loop": asdict(self.state),
            "replay": {"position": self.buffer.position, "size": self.buffer.size},
            "optimizer_groups": optimizer["param_groups"],
            "rng": {"numpy": self.rng.bit_generator.state, "python": _python_rng_state()},
            "envs": snapshot_envs(self.envs),
        }
        save_checkpoint(self.run_dir, arrays, state)

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> bool:
        """Load a checkpoint; returns False when the envs could not be restored and were reset instead."""

        def section(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}

        try:
            self.agent.online.load_state_dict(section("online/"))
            self.agent.target.load_state_dict(section("target/"))
            moments: dict[int, dict[str, torch.Tensor]] = {}
            for key, tensor in section("optimizer/").items():
                index, name = key.split("/")
                moments.setdefault(int(index), {})[name] = tensor
            self.agent.optimizer.load_state_dict(
                {"state": moments, "param_groups": state["optimizer_groups"]}
            )
            replay = {k.removeprefix("replay/"): v for k, v in arrays.items() if k.startswith("replay/")}
            self.buffer.restore(replay, **state["replay"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"checkpoint does not fit this run's network or replay: {exc}") from None
        self.state = LoopState(**state["loop"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        random.setstate(_to_python_rng_state(state["rng"]["python"]))
        torch.set_rng_state(torch.from_numpy(arrays["rng/torch"]))
        if state["envs"] is not None:
            restore_envs(self.envs, state["envs"])
            if self.accumulator is not None:
                self.accumulator.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("nstep/")})
            self.obs = arrays["loop/obs"]
            self.obs_refs = arrays.get("loop/obs_refs")
            self.lives = arrays.get("loop/lives")
            self.episode_returns = arrays["loop/episode_returns"].copy()
            self.episode_lengths = arrays["loop/episode_lengths"].copy()
            return True
        self._begin_episodes(*self.envs.reset(seed=self.seed + self.state.step))  # episodes in flight restart
        return False

    # ------------------------------------------------------------------------------ what learning sees

    def _begin_episodes(self, obs: np.ndarray, infos: dict[str, Any]) -> None:
        self.obs = obs
        self.obs_refs = self.buffer.frames.start(obs) if self.buffer.frames is not None else None
        self.lives = infos.get("lives")  # Atari only

    def _stored_observations(
        self, real_next: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray, done: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """What replay keeps of (obs, next_obs): the observations, or with a frame store their references."""
        if self.buffer.frames is None:
            return self.obs, real_next
        stored_obs = self.obs_refs
        stored_next, self.obs_refs = self.buffer.frames.follow(
            stored_obs, real_next, next_obs, terminated, done
        )
        return stored_obs, stored_next

    # ------------------------------------------------------------------------------------------ the loop

    def _collect_loss(self) -> None:
        """Move the losses summed on the device into the loop state (one sync), before it is read."""
        self.state.loss_sum += float(self.device_loss_sum)
        self.device_loss_sum.zero_()

    def _check_loss(self) -> None:
        """Cheap enough for every episode end: a NaN or infinite loss stops training."""
        if self.state.loss_count and not math.isfinite(self.state.loss_sum):
            raise TrainingDiverged(
                f"training diverged: the TD loss became {self.state.loss_sum} at step {self.state.step:,}"
            )

    def _check_finite(self) -> None:
        """Never let NaN or infinity reach a saved file: stop instead, keeping the last good files."""
        self._check_loss()
        if not all(torch.isfinite(p).all() for p in self.agent.online.parameters()):
            raise TrainingDiverged(
                f"training diverged: Q-network weights became NaN or infinite at step {self.state.step:,}"
            )

    def _save_model(self, name: str, eval_return: float | None) -> None:
        self._check_finite()
        meta = {**self.model_meta, "step": self.state.step, "eval_return": eval_return}
        save_model(self.run_dir, name, self.agent.online.state_dict(), meta)

    def _report(self, status: str, session_start: float) -> None:
        s = self.state
        write_status(
            self.run_dir,
            state=status,
            step=s.step,
            planned_steps=self.hp.n_timesteps,
            wall_time=s.wall_time + time.perf_counter() - session_start,
            best_eval=s.best_eval,
            last_eval=s.last_eval,
        )

    def _evaluate(self, metrics: MetricsLogger, wall_time: float) -> float:
        policy = make_policy(self.agent.online, self.n_actions, 0.0, self.seed, self.device)
        mean = float(
            np.mean(
                evaluate(policy, self.env_id, self.hp.eval_episodes, self.seed + EVAL_SEED_OFFSET, self.hp)
            )
        )
        self.agent.online.train()
        metrics.evaluation(self.state.step, wall_time, mean, self.hp.exploration_rate(self.state.step))
        return mean

    def _finish_episodes(self, done: np.ndarray, metrics: MetricsLogger, epsilon: float, wall_time: float):
        s = self.state
        for i in np.flatnonzero(done):
            mean_loss = None
            if s.loss_count:
                self._check_loss()
                mean_loss, s.loss_sum, s.loss_count = s.loss_sum / s.loss_count, 0.0, 0
            ret = float(self.episode_returns[i])
            metrics.episode(s.step, wall_time, ret, int(self.episode_lengths[i]), mean_loss, epsilon)
            s.recent_returns = [*s.recent_returns[-(RECENT_EPISODES - 1) :], ret]
            self.episode_returns[i], self.episode_lengths[i] = 0.0, 0

    def run(self, quiet: bool, on_evaluation: EvaluationHook | None = None) -> TrainResult:
        hp, s, n_envs = self.hp, self.state, self.hp.n_envs
        session_start = time.perf_counter()
        metrics = MetricsLogger(self.run_dir, resume_step=s.step)
        progress = TrainingProgress(self.env_id, hp.n_timesteps, quiet, start_step=s.step)
        self._report("running", session_start)
        try:
            with progress, _StopSignals() as signals:
                while s.step < hp.n_timesteps:
                    epsilon = hp.exploration_rate(s.step)
                    if s.step < hp.learning_starts:
                        actions = self.rng.integers(0, self.n_actions, size=n_envs)
                    else:
                        actions = epsilon_greedy(
                            self.agent.online, self.obs, epsilon, self.n_actions, self.rng, self.device
                        )
                    next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
                    done = terminated | truncated
                    real_next = final_observations(next_obs, infos, done)
                    learn_rewards, learn_terminal = learning_signals(
                        self.hp, rewards, terminated, done, self.lives, infos.get("lives")
                    )
                    self.lives = infos.get("lives")  # where a game ended: the new game's lives
                    stored_obs, stored_next = self._stored_observations(real_next, next_obs, terminated, done)
                    if self.accumulator is None:
                        self.buffer.add(stored_obs, actions, learn_rewards, stored_next, learn_terminal)
                    elif ready := self.accumulator.add(
                        stored_obs, actions, learn_rewards, stored_next, learn_terminal, truncated
                    ):
                        self.buffer.add(*ready)
                    self.obs = next_obs
                    previous, s.step = s.step, s.step + n_envs
                    wall_time = s.wall_time + time.perf_counter() - session_start

                    self.episode_returns += rewards
                    self.episode_lengths += 1
                    if done.any():
                        self._collect_loss()
                        self._finish_episodes(done, metrics, epsilon, wall_time)

                    if s.step > hp.learning_starts and _crossed(s.step, previous, hp.train_freq):
                        n_updates = hp.gradient_steps if hp.gradient_steps > 0 else s.step - s.last_train_step
                        beta = hp.importance_exponent(s.step)
                        for _ in range(n_updates):
                            batch = self.buffer.sample(hp.batch_size, beta)
                            loss, td_errors = self.agent.update(batch)
                            self.device_loss_sum += loss
                            if hp.prioritized_replay:
                                self.buffer.update_priorities(batch.indices, td_errors.cpu().numpy())
                        s.loss_count += n_updates
                        s.last_train_step = s.step
                    if _crossed(s.step, previous, hp.target_update_interval):
                        self.agent.update_target()
                    evaluate_now = _crossed(s.step, previous, hp.eval_freq) or (
                        hp.eval_freq and s.step >= hp.n_timesteps
                    )
                    if evaluate_now:
                        s.last_eval, s.last_eval_step = self._evaluate(metrics, wall_time), s.step
                        if s.best_eval is None or s.last_eval > s.best_eval:
                            s.best_eval = s.last_eval
                            self._save_model(BEST_MODEL, s.best_eval)
                        self._report("running", session_start)
                        if on_evaluation is not None:
                            on_evaluation(s.step, s.last_eval)
                    if _crossed(s.step, previous, hp.checkpoint_freq):
                        self._collect_loss()
                        self._checkpoint(session_start)
                    progress.update(s.step, epsilon, s.recent_returns, s.last_eval)
                    if signals.received is not None:
                        self._collect_loss()
                        self._checkpoint(session_start)
                        self._report("interrupted", session_start)
                        raise TrainingInterrupted(signals.received, self.run_dir, s.step)
                    if s.last_eval_step == s.step and s.last_eval >= hp.stop_at_eval_return:
                        break
            self._collect_loss()
            self._save_model(FINAL_MODEL, s.last_eval if s.last_eval_step == s.step else None)
            self._checkpoint(session_start)
        except TrainingDiverged:
            self._report("diverged", session_start)
            raise
        except TrainingInterrupted:
            raise
        except BaseException:
            self._report("interrupted", session_start)
            raise
        finally:
            metrics.close()
        self._report("finished", session_start)
        return TrainResult(
            self.run_dir, s.step, s.wall_time + time.perf_counter() - session_start, s.best_eval, s.last_eval
        )

    def _checkpoint(self, session_start: float) -> None:
        """Write a checkpoint whose wall time includes this session so far."""
        elapsed = time.perf_counter() - session_start
        self.state.wall_time += elapsed
        try:
            self.save_checkpoint()
        finally:
            self.state.wall_time -= elapsed


def learning_signals(
    hp: Hyperparameters,
    rewards: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    lives_before: np.ndarray | None,
    lives_after: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and terminals as the learner sees them: sign-clipped, and ending at each lost life (Atari),
    if the hyperparameters say so (Mnih et al. 2015). Metrics keep the raw score and whole games."""
    if hp.clip_reward:
        rewards = np.sign(rewards)
    if hp.terminal_on_life_loss and lives_before is not None and lives_after is not None:
        terminated = terminated | ((lives_after < lives_before) & ~done)
    return rewards, terminated


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng_state(saved: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = saved
    return version, tuple(internal), gauss


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
    envs = make_vector_env(env_id, hp.n_envs, hp)  # validates the env id and spaces before any file exists
    try:
        check_replay_fits(hp, envs.single_observation_space.shape, envs.single_observation_space.dtype)
        run_dir = create_run_dir(env_id, seed, run_dir, runs_root)
        run_info = {"env_id": env_id, "seed": seed, "preset": preset, "device": str(torch_device)}
        write_config(run_dir, run_info, hp.to_dict())
        trainer = Trainer(envs, env_id, hp, seed, preset, run_dir, torch_device)
        return trainer.run(quiet, on_evaluation)
    finally:
        envs.close()


def resume(
    run_dir: Path | None, *, steps: int | None = None, device: str = "auto", quiet: bool = False
) -> tuple[TrainResult, bool]:
    """Continue a run (default: the newest with a checkpoint) from its checkpoint, to ``steps`` in total if
    given. Returns the result and whether the episodes in flight were restored exactly (classic control)
    rather than restarted."""
    if run_dir is None:
        run_dir = newest_run(having=(CHECKPOINT_FILE,), what="a checkpoint")
    elif not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    config = read_config(run_dir)
    hp = apply_overrides(Hyperparameters(), config.get("hyperparameters", {}))
    arrays, state = load_checkpoint(run_dir)
    if steps is not None:
        if steps <= state["loop"]["step"]:
            raise UserError(
                f"--steps {steps:,} is not beyond the checkpoint's step {state['loop']['step']:,}"
            )
        hp = apply_overrides(hp, {"n_timesteps": steps})
        write_config(run_dir, {k: v for k, v in config.items() if k != "hyperparameters"}, hp.to_dict())
    torch_device = resolve_device(device)
    envs = make_vector_env(config["env_id"], hp.n_envs, hp)
    try:
        check_replay_fits(hp, envs.single_observation_space.shape, envs.single_observation_space.dtype)
        remove_stale_temporaries(run_dir)
        trainer = Trainer(
            envs, config["env_id"], hp, config["seed"], config.get("preset", ""), run_dir, torch_device
        )
        exact = trainer.restore(arrays, state)
        return trainer.run(quiet), exact
    finally:
        envs.close()
