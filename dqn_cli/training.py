"""The training loop of Mnih et al. (2015), as named phases: collect a vector step with epsilon-greedy
actions, then whatever falls due — gradient steps on replayed batches, a target-network sync, a greedy
evaluation (keeping the best model), a checkpoint that lets the run resume exactly.

The schedule counts env steps summed over the envs (``phases_due``): after ``learning_starts``, every
``train_freq`` env steps run ``gradient_steps`` updates (-1: ``train_freq`` of them, one per env step).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dqn_cli.actor import ActorProcess, fork_available
from dqn_cli.agent import DQNAgent, training_actions
from dqn_cli.atari import is_atari
from dqn_cli.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    restore_parts,
    save_checkpoint,
)
from dqn_cli.envpackages import env_source, import_packages, require_named
from dqn_cli.envs import describe_spaces, make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.evaluation import score_policy
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, saved_hyperparameters
from dqn_cli.networks import build_q_network, network_spec, resolve_device, resolve_precision
from dqn_cli.observations import one_hot_sizes
from dqn_cli.randomness import RandomSources
from dqn_cli.replay import Replay
from dqn_cli.rollout import Rollout
from dqn_cli.runfiles import (
    BEST_MODEL,
    CONFIG_FILE,
    FINAL_MODEL,
    RUNS_ROOT,
    RunState,
    check_seed,
    create_run_dir,
    read_config,
    remove_stale_temporaries,
    run_to_resume,
    save_model,
    write_config,
)
from dqn_cli.runlock import hold_run_lock
from dqn_cli.session import LoopState, RunSession
from dqn_cli.speed import StepCosts, is_long_cpu_schedule, measure_step_costs, schedule_warning
from dqn_cli.state import Stateful

EVAL_SEED_OFFSET = 10_000  # periodic evaluations use episodes the training envs never see

EvaluationHook = Callable[[int, float], None]


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the files saved before it are kept as they were."""

    run_state = RunState.DIVERGED


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was written and training can resume from it."""

    run_state = RunState.INTERRUPTED

    def __init__(self, signum: int, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step:,}")
        self.exit_code = 128 + signum
        self.run_dir = run_dir
        self.step = step


class StopTraining(Exception):
    """Raised by an ``on_evaluation`` hook to end training early (a pruned tuning trial): the session
    records ``state`` in status.json, and the exception reaches the caller."""

    def __init__(self, state: RunState, message: str) -> None:
        super().__init__(message)
        self.run_state = state


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    wall_time: float
    best_eval: float | None
    last_eval: float | None
    updates: int
    stopped_early: str | None = None  # why training ended before its planned steps, in one line


@dataclass(frozen=True)
class Due:
    """What falls due when the env-step count moves on by one vector step."""

    updates: int
    target_syncs: int
    evaluate: bool
    checkpoint: bool


def _crossed(step: int, previous: int, interval: int) -> int:
    """How many multiples of ``interval`` lie in (previous, step]."""
    return step // interval - previous // interval if interval > 0 else 0


def phases_due(hp: Hyperparameters, previous: int, step: int) -> Due:
    """The phases due after the env steps (previous, step]: every multiple of ``train_freq`` beyond
    ``learning_starts`` is a training phase of ``gradient_steps`` updates (``train_freq`` for -1), every
    multiple of ``target_update_interval`` a sync, and so on. A vector step may cross several."""
    phases = (
        _crossed(step, max(previous, hp.learning_starts), hp.train_freq) if step > hp.learning_starts else 0
    )
    return Due(
        updates=phases * (hp.gradient_steps if hp.gradient_steps > 0 else hp.train_freq),
        target_syncs=_crossed(step, previous, hp.target_update_interval),
        evaluate=_crossed(step, previous, hp.eval_freq) > 0 or (hp.eval_freq > 0 and step >= hp.n_timesteps),
        checkpoint=_crossed(step, previous, hp.checkpoint_freq) > 0,
    )


def set_training_threads(env_id: str) -> None:
    """Call once where a training process starts (it is process-wide, so no constructor does it): the
    classic-control networks are so small that torch's thread hand-offs cost more than they save, so
    they train on one thread; Atari's CNN keeps torch's default."""
    if not is_atari(env_id):
        torch.set_num_threads(1)


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


NETWORK_COPIES = 5  # float32 copies of the parameters: online, gradients, target, Adam's two moments
BATCH_COPIES = 6  # float32 values per unit and transition: obs and next obs, online (and backward), target


def _check_network_fits(spec: dict, batch_size: int, device: torch.device) -> None:
    """Fail in one line when the Q-network's training state and a batch through it cannot fit (layers
    or a ``batch_size`` far too large), as the replay check does for replay, before anything is built:
    the parameters are counted on the meta device, which allocates nothing."""
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in build_q_network(spec).parameters())
    except RuntimeError:  # a layer whose size overflows 64 bits
        parameters = 2**64
    # values per transition in one pass, roughly: a CNN's feature maps are about its input's size
    units = math.prod(spec["obs_shape"]) + sum(spec["net_arch"]) + spec["n_actions"]
    needed = 4 * (NETWORK_COPIES * parameters + BATCH_COPIES * batch_size * units)
    available = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if needed > (available or 2**64):  # where memory is unknown, only what no machine has
        free = "" if available is None else f", and {available / 1e9:.1f} GB of memory is available"
        raise UserError(
            f"a Q-network of {parameters:,} parameters (hidden layers {spec['net_arch']}) trained on batches "
            f"of {batch_size:,} needs {needed / 1e9:,.1f} GB for its weights, gradients, target network, "
            f"Adam's state and a batch{free}; use smaller net_arch layers or batch_size"
        )


def _replay_that_fits(hp: Hyperparameters, obs_shape: tuple[int, ...], obs_dtype, rng) -> Replay:
    """Build replay, failing in one line when it would outgrow memory hours into a run: its arrays are
    mapped lazily, so nothing else would notice until the kernel kills the process."""
    available = available_memory()
    try:
        replay = Replay(hp, obs_shape, obs_dtype, rng)
        needed = f"{replay.allocated_bytes() / 1e9:.1f} GB"
    except (MemoryError, ValueError):  # so large that mapping it was refused, or its size overflows numpy's
        replay, needed = None, "more than this machine has"
    if replay is None or (available is not None and replay.allocated_bytes() > available):
        free = "" if available is None else f", and {available / 1e9:.1f} GB of memory is available"
        raise UserError(
            f"a replay buffer of {hp.buffer_size:,} transitions needs {needed}{free}; "
            "lower buffer_size (--set buffer_size=N)"
        )
    return replay


class Trainer:
    """One run's agent, replay, rollout and counters, and the loop that trains them. Building it
    validates everything and writes nothing; ``run`` writes the run folder."""

    def __init__(
        self,
        env_id: str,
        hp: Hyperparameters,
        seed: int,
        preset: str,
        device: torch.device,
        gym_packages: Sequence[str] = (),
    ) -> None:
        """``gym_packages``: the modules that register ``env_id`` (see envpackages), imported here, where
        every process that trains (a bench or tuning worker too) makes its envs, and saved with the run."""
        self.env_id, self.hp, self.seed, self.device = env_id, hp, check_seed(seed, "seed"), device
        import_packages(gym_packages)
        self.random = RandomSources(seed)  # first: the network's initial weights come from it
        envs = make_vector_env(env_id, hp.n_envs, hp)
        try:
            obs_space, action_space = envs.single_observation_space, envs.single_action_space
            self.n_actions = int(action_space.n)
            spec = network_spec(
                obs_space.shape,
                self.n_actions,
                hp.net_arch,
                hp.dueling,
                resolve_precision(hp.precision, device),
                obs_dtype=str(obs_space.dtype),
                encoder=hp.encoder,
                one_hot=one_hot_sizes(obs_space),
            )
            if hp.augment_shift and spec["kind"] in ("mlp", "one_hot_mlp", "minatar_cnn"):
                raise UserError(f"augment_shift shifts frame stacks (Atari); {env_id} gives no images")
            _check_network_fits(spec, hp.batch_size, device)
            self.agent = DQNAgent(build_q_network(spec), hp, device)
            self.replay = _replay_that_fits(hp, obs_space.shape, obs_space.dtype, self.random.numpy)
            self.rollout = Rollout(envs, hp, self.replay, seed)
            self.actor = self._actor_process(env_id, seed)
        except BaseException:
            envs.close()
            raise
        self.device_loss_sum = torch.zeros((), device=device)  # summed where computed: no sync per update
        self.state = LoopState()
        self.model_meta = {
            "env_id": env_id,
            "gym_packages": list(gym_packages),
            "preset": preset,
            "seed": seed,
            **describe_spaces(obs_space, action_space),
            "network": spec,
            "hyperparameters": hp.to_dict(),
        }

    def _actor_process(self, env_id: str, seed: int) -> ActorProcess | None:
        if not self.hp.actor_process:
            return None
        if is_atari(env_id):  # ale-py's emulator threads would not survive the fork
            raise UserError("actor_process plays non-Atari envs; for Atari, overlap_emulation overlaps them")
        if not fork_available():
            raise UserError("actor_process needs processes started by fork (Linux, macOS); set it false")
        return ActorProcess(self.rollout, self.agent.online, self.hp, self.n_actions, seed)

    def close(self) -> None:
        if self.actor is not None:
            self.actor.close()
        self.rollout.close()

    def step_costs(self) -> StepCosts:
        """This run's env and gradient step times here, from a probe of throwaway copies; every random
        stream of the run is as it was after it, so the same seed still gives the same run."""
        streams = self.random.state_dict()
        try:
            return measure_step_costs(self.env_id, self.hp, self.agent.online, self.device)
        finally:
            self.random.load_state_dict(streams)

    def parts(self) -> dict[str, Stateful]:
        """Everything a checkpoint holds, by name."""
        parts: dict[str, Stateful] = {
            "agent": self.agent,
            "replay": self.replay,
            "rollout": self.rollout,
            "random": self.random,
            "loop": self.state,
        }
        if self.actor is not None:
            parts["actor"] = self.actor
        return parts

    def restore(self, state: dict, origin: Path) -> bool:
        """Load a checkpoint; returns False when the envs could not be restored and were reset instead."""
        restore_parts(self.parts(), state, origin)
        if not self.rollout.restored_exactly:
            self.rollout.restart(self.seed + self.state.step)  # the episodes in flight start again
        return self.rollout.restored_exactly

    # ------------------------------------------------------------------------------------------ the loop

    def run(
        self,
        run_dir: Path,
        quiet: bool = False,
        on_evaluation: EvaluationHook | None = None,
        until_step: int | None = None,
    ) -> TrainResult:
        """Train to ``until_step`` env steps (default: ``n_timesteps``), or until an evaluation reaches
        ``stop_at_eval_return``; ``on_evaluation(step, mean_return)`` runs after each evaluation."""
        s, until = self.state, self.hp.n_timesteps if until_step is None else until_step
        if self.actor is not None:
            self.actor.start()  # forked before the session's threads (TensorBoard's writer) exist
        with RunSession(run_dir, self.env_id, self.hp, s, quiet) as session:
            if self.actor is None:
                self._run_steps(session, until, on_evaluation)
            else:
                self._run_with_actor(session, until, on_evaluation)
            self.save_model(session, FINAL_MODEL, s.last_eval if s.last_eval_step == s.step else None)
            self.checkpoint(session)
        stopped_early = None
        if s.step < until:  # only an evaluation that reached its target ends the loop before `until`
            stopped_early = (
                f"Stopped early at step {s.step:,}: evaluation mean {s.last_eval:.1f} reached "
                f"stop_at_eval_return = {self.hp.stop_at_eval_return:g}"
            )
        return TrainResult(run_dir, s.step, s.wall_time, s.best_eval, s.last_eval, s.updates, stopped_early)

    def _run_steps(self, session: RunSession, until: int, on_evaluation: EvaluationHook | None) -> None:
        """The loop a vector step per turn: collect it, then whatever it made due."""
        s = self.state
        while s.step < until and not self._reached_target():
            after = s.step + self.hp.n_envs
            due = phases_due(self.hp, s.step, after)
            if self.hp.overlap_emulation:
                self.collect(session, while_stepping=partial(self.learn, due.updates, after))
            else:
                self.collect(session)
                self.learn(due.updates, after)
            self.after_updates(session, due, on_evaluation)
            session.show_progress(self.hp.exploration_rate(s.step))
            self._stop_if_signalled(session)

    def _run_with_actor(self, session: RunSession, until: int, on_evaluation: EvaluationHook | None) -> None:
        """The loop with the envs in the actor process (``actor.py``), a phase per turn: take in the phase
        just played, start the next (unless something below needs the envs idle), then the updates the
        boundary made due, meanwhile."""
        s, actor = self.state, self.actor
        assert actor is not None
        published = s.updates  # updates done when the acting weights were last published (restored too)
        while actor.in_flight or (s.step < until and not self._reached_target()):
            before = s.step
            if actor.in_flight:
                for ended in actor.finish(self.replay):
                    epsilon = self.hp.exploration_rate(s.step)
                    s.step += self.hp.n_envs
                    if ended.returns:
                        session.episodes_ended(ended.returns, ended.lengths, self._drain_loss(), epsilon)
            due = phases_due(self.hp, before, s.step)
            if published != s.updates:
                actor.publish(self.agent.online)
                published = s.updates
            if not (due.evaluate or due.checkpoint):  # else after them: they need the envs idle
                self._play_next(actor, session, until)
            self.learn(due.updates, s.step)
            self.after_updates(session, due, on_evaluation)
            self._play_next(actor, session, until)
            session.show_progress(self.hp.exploration_rate(s.step))
            if not actor.in_flight:
                self._stop_if_signalled(session)

    def _play_next(self, actor: ActorProcess, session: RunSession, until: int) -> None:
        """Start the next phase unless one is in flight or the loop is about to end."""
        if actor.in_flight or self.state.step >= until or session.stop_signal is not None:
            return
        if not self._reached_target():
            actor.play(self.state.step, until)

    def after_updates(self, session: RunSession, due: Due, on_evaluation: EvaluationHook | None) -> None:
        """What a boundary makes due after its gradient steps: target syncs, an evaluation, a checkpoint."""
        self.sync_target(due.target_syncs)
        if due.evaluate:
            self.evaluate(session, on_evaluation)
        if due.checkpoint:
            self.checkpoint(session)

    def _stop_if_signalled(self, session: RunSession) -> None:
        if session.stop_signal is not None:
            self.checkpoint(session)
            raise TrainingInterrupted(session.stop_signal, session.run_dir, self.state.step)

    def _reached_target(self) -> bool:
        s = self.state
        return s.last_eval_step == s.step and s.last_eval >= self.hp.stop_at_eval_return

    def collect(self, session: RunSession, while_stepping: Callable[[], None] | None = None) -> None:
        """One vector step: random actions before ``learning_starts``, epsilon-greedy after;
        ``while_stepping`` runs while the envs play it (``overlap_emulation``)."""
        s, epsilon, rng = self.state, self.hp.exploration_rate(self.state.step), self.random.numpy
        actions = training_actions(
            self.agent.online, self.rollout.obs, s.step, self.hp, self.n_actions, rng, self.device
        )
        self.replay.set_horizon(self.hp.horizon(s.step))
        self.rollout.send(actions)
        if while_stepping is not None:
            while_stepping()
        ended = self.rollout.receive()
        s.step += self.hp.n_envs
        if ended.returns:
            session.episodes_ended(ended.returns, ended.lengths, self._drain_loss(), epsilon)

    def learn(self, updates: int, step: int) -> None:
        """``updates`` gradient steps on replayed batches, due at env step ``step``; none while replay is
        empty (an n-step accumulator may not have completed a transition yet)."""
        if updates == 0 or len(self.replay) == 0:
            return
        beta = self.hp.importance_exponent(step)
        self.agent.set_learning_rate(self.hp.learning_rate_at(step))
        for _ in range(updates):
            batch = self.replay.sample(self.hp.batch_size, beta)
            loss, td_errors = self.agent.update(batch)
            self.device_loss_sum += loss
            self.replay.update_priorities(batch.indices, td_errors)
        self.state.loss_count += updates
        self.state.updates += updates

    def sync_target(self, times: int) -> None:
        for _ in range(times):
            self.agent.update_target()

    def evaluate(self, session: RunSession, on_evaluation: EvaluationHook | None) -> None:
        """Score the policy on episodes the training envs never play, as `dqn eval` does (``eval_epsilon``,
        episodes capped at ``eval_max_frames``); keep the best model."""
        s = self.state
        returns = score_policy(
            self.agent.online,
            self.n_actions,
            self.env_id,
            self.hp,
            self.hp.eval_episodes,
            self.seed + EVAL_SEED_OFFSET,
            self.device,
        )
        self.agent.online.train()
        s.last_eval, s.last_eval_step = float(np.mean(returns)), s.step
        if s.best_eval is None or s.last_eval > s.best_eval:
            s.best_eval = s.last_eval
            self.save_model(session, BEST_MODEL, s.best_eval)
        session.evaluated(s.last_eval, self.hp.exploration_rate(s.step))
        if on_evaluation is not None:
            on_evaluation(s.step, s.last_eval)

    def checkpoint(self, session: RunSession) -> None:
        if self.actor is not None:
            self.actor.sync()  # the envs' state, from the process that plays them
        self._collect_loss()
        self._check_finite()
        session.bank_time()
        save_checkpoint(session.run_dir, self.parts(), self.state.step)

    def save_model(self, session: RunSession, name: str, eval_return: float | None) -> None:
        self._check_finite()
        meta = {**self.model_meta, "step": self.state.step, "eval_return": eval_return}
        save_model(session.run_dir, name, self.agent.online.state_dict(), meta)

    # ------------------------------------------------------------------------------- loss and divergence

    def _collect_loss(self) -> None:
        """Move the losses summed on the device into the loop state (one sync), before it is read."""
        self.state.loss_sum += float(self.device_loss_sum)
        self.device_loss_sum.zero_()

    def _drain_loss(self) -> float | None:
        """The mean loss since the last metrics row (None if no update ran); a NaN stops training."""
        self._collect_loss()
        s = self.state
        if not s.loss_count:
            return None
        self._check_loss()
        mean, s.loss_sum, s.loss_count = s.loss_sum / s.loss_count, 0.0, 0
        return mean

    def _check_loss(self) -> None:
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


def announce(trainer: Trainer, preset: str) -> None:
    """A session's first line names the preset in use (runs saved before presets were recorded name
    none); where an Atari schedule would take days on this CPU, a warning says how long, as measured."""
    if preset:
        print(f"Preset {preset} for {trainer.env_id} (dqn presets {preset} shows it)", flush=True)
    steps_left = trainer.hp.n_timesteps - trainer.state.step
    if is_long_cpu_schedule(trainer.env_id, steps_left, trainer.device):
        warning = schedule_warning(trainer.step_costs(), trainer.hp, steps_left, preset)
        print(f"warning: {warning}", file=sys.stderr, flush=True)


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
    gym_packages: Sequence[str] = (),
) -> TrainResult:
    """Train a DQN agent on ``env_id`` (registered by importing ``gym_packages``, if any) and write the
    run folder; returns where it went and how it scored.

    ``on_evaluation(step, mean_return)`` runs after each periodic evaluation (Optuna reports and prunes
    there); an exception it raises ends training, with the run folder left as it was at that point.
    """
    torch_device = resolve_device(device)
    # validates everything, writes nothing
    trainer = Trainer(env_id, hp, seed, preset, torch_device, gym_packages)
    try:
        if not quiet:  # before the folder is made: a Ctrl-C during the probe leaves nothing behind
            announce(trainer, preset)
        with create_run_dir(env_id, seed, run_dir, runs_root) as run_dir:  # locked while it is written
            write_config(
                run_dir,
                {
                    "env_id": env_id,
                    "gym_packages": list(gym_packages),
                    "seed": seed,
                    "preset": preset,
                    "device": str(torch_device),
                },
                hp.to_dict(),
            )
            return trainer.run(run_dir, quiet, on_evaluation)
    finally:
        trainer.close()


def check_trainable(
    env_id: str, hp: Hyperparameters, device: str = "auto", gym_packages: Sequence[str] = ()
) -> None:
    """Refuse now, writing nothing, whatever ``train`` would refuse for this env and these settings
    (the env cannot be made here, its spaces, memory): `dqn bench` and `dqn tune` check every env so
    before their first run."""
    Trainer(env_id, hp, 0, "", resolve_device(device), gym_packages).close()


def resume(
    run_dir: Path | None,
    *,
    steps: int | None = None,
    device: str = "auto",
    quiet: bool = False,
    gym_packages: Sequence[str] = (),
    on_evaluation: EvaluationHook | None = None,
) -> tuple[TrainResult, bool]:
    """Continue a run (default: the newest with a checkpoint) from its checkpoint, to ``steps`` in total if
    given. Returns the result and whether the episodes in flight were restored exactly (classic control)
    rather than restarted. The run is locked from before its checkpoint is read until the run ends.

    A run whose env comes from packages continues only if ``gym_packages`` (``--gym-packages``) names
    them all: importing runs their code, and the run folder must not be what chooses it."""
    run_dir = run_to_resume(run_dir)
    with hold_run_lock(run_dir):
        config = read_config(run_dir)
        hp = saved_hyperparameters(config.get("hyperparameters"), str(run_dir / CONFIG_FILE))
        source = env_source(config["env_id"], config["gym_packages"])
        require_named(source.packages, gym_packages)
        import_packages(gym_packages)
        checkpoint = load_checkpoint(run_dir)
        if steps is not None:
            if steps <= checkpoint.step:
                raise UserError(f"--steps {steps:,} is not beyond the checkpoint's step {checkpoint.step:,}")
            hp = apply_overrides(hp, {"n_timesteps": steps})
        torch_device = resolve_device(device)
        trainer = Trainer(
            source.env_id, hp, config["seed"], config.get("preset", ""), torch_device, source.packages
        )
        try:
            exact = trainer.restore(checkpoint.state, run_dir / CHECKPOINT_FILE)
            if not quiet:
                announce(trainer, config.get("preset", ""))
            if steps is not None:  # only once the checkpoint is known to fit
                saved_info = {k: v for k, v in config.items() if k != "hyperparameters"}
                write_config(run_dir, saved_info, hp.to_dict())
            remove_stale_temporaries(run_dir)
            return trainer.run(run_dir, quiet, on_evaluation), exact
        finally:
            trainer.close()
