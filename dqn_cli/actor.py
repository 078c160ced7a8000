"""The actor process (``actor_process``): the training envs play in a forked child, one training phase at a
time, while this process runs the gradient steps, so on two cores the Python env loop and torch's update
each have a core (the actor/learner split of Ape-X, Horgan et al. 2018, kept in lockstep).

Lockstep keeps the same seed giving the same run. At each phase boundary the learner takes in the phase
just played (into replay, in order), hands the child the weights it acts with (``publish``) and starts the
next phase (``play``) before running the updates that boundary made due. Those updates see exactly the
replay a sequential loop gives them; the next phase is played with the weights from before them (one
phase behind). When a phase starts never changes what is computed, only how much overlaps, so
checkpoints, evaluations and stops simply wait for an idle child.

The child owns the envs; the parent's copy of the rollout is brought up to date when a checkpoint asks
(``sync``). Signals are the parent's: the child ignores Ctrl-C and SIGTERM, and it stops when asked, when
its parent is gone, or on an error, which the parent raises again.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import mmap
import multiprocessing
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import nn

from dqn_cli.agent import network_arrays, state_tensors, training_actions
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters
from dqn_cli.interrupts import die_with_parent
from dqn_cli.replay import EnvStep, Replay
from dqn_cli.rollout import FinishedEpisodes, Rollout
from dqn_cli.state import State, nest, section

# slots of the control array: phases started, phases finished, env step the started phase begins at,
# vector steps it plays, the child's failure flag
STARTED, FINISHED, START_STEP, LENGTH, FAILED = range(5)
IDLE_SPIN = 0.002  # seconds a waiting side spins before it sleeps between looks
IDLE_SLEEP = 1e-4
ACTOR_STREAM = 0xAC7  # the actor's random stream: the run's seed with this, apart from replay sampling's


class ActorFailed(RuntimeError):
    """The actor process raised, or exited without saying why."""


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def phase_length(hp: Hyperparameters, step: int, until: int) -> int:
    """Vector steps from env step ``step`` to the next training phase (a multiple of ``train_freq``
    env steps), or to ``until``: phases end at the same env steps wherever a session started."""
    boundary = min((step // hp.train_freq + 1) * hp.train_freq, until)
    return max(1, -(-(boundary - step) // hp.n_envs))


class _Staging:
    """One phase of vector steps in memory both processes map: the child writes each ``EnvStep`` and the
    episodes it ended; the parent reads them back. Stands in for replay in the child's rollout."""

    def __init__(self, capacity: int, n_envs: int, obs: np.ndarray) -> None:
        per_step = {
            "actions": ((n_envs,), np.int64),
            "rewards": ((n_envs,), np.float32),
            "terminal": ((n_envs,), np.bool_),
            "game_over": ((n_envs,), np.bool_),
            "truncated": ((n_envs,), np.bool_),
            "reached": (obs.shape, obs.dtype),
            "next_obs": (obs.shape, obs.dtype),
            "ended": ((), np.int64),  # how many episodes the step ended: the first entries of these two
            "returns": ((n_envs,), np.float64),
            "lengths": ((n_envs,), np.int64),
        }
        self.arrays = {name: _shared((capacity, *shape), dtype) for name, (shape, dtype) in per_step.items()}
        self.cursor = 0

    def add_step(self, step: EnvStep) -> None:
        for name in _STEP_FIELDS:
            self.arrays[name][self.cursor] = getattr(step, name)

    def start(self, obs: np.ndarray) -> None:
        raise RuntimeError("the actor's envs restart only by autoreset")

    def add_episodes(self, finished: FinishedEpisodes) -> None:
        count = len(finished.returns)
        self.arrays["ended"][self.cursor] = count
        self.arrays["returns"][self.cursor, :count] = finished.returns
        self.arrays["lengths"][self.cursor, :count] = finished.lengths

    def read(self, length: int) -> list[tuple[EnvStep, FinishedEpisodes]]:
        """The first ``length`` steps, copied out (one copy per field: replay may keep what it is given)."""
        fields = [self.arrays[name][:length].copy() for name in _STEP_FIELDS]
        counts, returns, lengths = (self.arrays[name] for name in ("ended", "returns", "lengths"))
        none = FinishedEpisodes([], [])
        return [
            (
                EnvStep(*(field[index] for field in fields)),
                FinishedEpisodes(returns[index, :count].tolist(), lengths[index, :count].tolist())
                if (count := int(counts[index]))
                else none,
            )
            for index in range(length)
        ]


_STEP_FIELDS = tuple(EnvStep.__dataclass_fields__)  # in the order EnvStep takes them


def _shared(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in anonymous shared memory, which a forked child maps too."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class ActorProcess:
    """The parent's handle on the child that plays the training envs."""

    def __init__(
        self, rollout: Rollout, online: nn.Module, hp: Hyperparameters, n_actions: int, seed: int
    ) -> None:
        self.hp, self.n_actions, self.rollout = hp, n_actions, rollout
        # the weights the child acts with: a CPU copy in shared memory, published between phases
        self.acting = copy.deepcopy(online).cpu().requires_grad_(False).share_memory()
        self.rng = np.random.default_rng([seed, ACTOR_STREAM])
        self.process: multiprocessing.process.BaseProcess | None = None
        self.in_flight = False

    # ------------------------------------------------------------------------------------ the parent

    def start(self) -> None:
        """Fork the child (once): it inherits the rollout, the acting weights and its generator as they are
        now, restored from a checkpoint if one was loaded."""
        if self.process is not None:
            return
        context = multiprocessing.get_context("fork")
        self.control = context.Array("q", 5)  # a lock around each access: ordered on every CPU
        self.staging = _Staging(self.hp.train_freq, self.hp.n_envs, self.rollout.obs)
        self.pipe, child_pipe = context.Pipe()
        self.process = context.Process(target=self._serve, args=(child_pipe,), daemon=True)
        self.process.start()
        child_pipe.close()
        # before multiprocessing's own exit handler, which would wait forever on a child that ignores SIGTERM
        atexit.register(self.close)

    def publish(self, online: nn.Module) -> None:
        """The weights the next phase acts with; only while the child is idle."""
        with torch.no_grad():
            for acting, learned in zip(self.acting.parameters(), online.parameters(), strict=True):
                acting.copy_(learned)

    def play(self, step: int, until: int) -> None:
        """Start the phase from env step ``step``; it ends at the next phase boundary or ``until``."""
        self.control[START_STEP] = step
        self.control[LENGTH] = phase_length(self.hp, step, until)
        self.control[STARTED] += 1
        self.in_flight = True

    def finish(self, replay: Replay) -> list[FinishedEpisodes]:
        """Wait for the phase in flight, add its steps to ``replay`` in order; the episodes each ended."""
        self._wait_for_phase()
        self.in_flight = False
        finished = []
        first = self.control[START_STEP]
        for index, (step, episodes) in enumerate(self.staging.read(self.control[LENGTH])):
            replay.set_horizon(self.hp.horizon(first + index * self.hp.n_envs))
            replay.add_step(step)
            finished.append(episodes)
        return finished

    def sync(self) -> None:
        """Bring the parent's rollout and the actor's generator up to date (the child must be idle)."""
        self.pipe.send("sync")
        rollout_state, rng_state = self._reply()
        self.rollout.load_state_dict(rollout_state)
        self.rng.bit_generator.state = rng_state

    def state_dict(self) -> State:
        """The actor's random stream and the weights it acts with (those of the last boundary's start)."""
        return {"rng": self.rng.bit_generator.state, **nest({"acting": network_arrays(self.acting)})}

    def load_state_dict(self, state: State) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.acting.load_state_dict(state_tensors(section(state, "acting")))  # in place: still shared

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # the child may be exiting already
                self.pipe.send("stop")
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.pipe.close()
        self.process = None
        atexit.unregister(self.close)

    def _wait_for_phase(self) -> None:
        started, since = self.control[STARTED], time.perf_counter()
        while self.control[FINISHED] < started:
            if self.control[FAILED]:
                self._raise_failure()
            if time.perf_counter() - since > IDLE_SPIN:
                if not self.process.is_alive():
                    self._raise_failure()
                time.sleep(IDLE_SLEEP)

    def _reply(self) -> Any:
        while not self.pipe.poll(0.1):
            if not self.process.is_alive():
                self._raise_failure()
        message = self.pipe.recv()
        if isinstance(message, tuple) and message and message[0] == "failed":
            self._raise_failure(message)
        return message

    def _raise_failure(self, message: Any = None) -> None:
        if message is None:
            with contextlib.suppress(EOFError, OSError):  # a child that died wrote nothing
                message = self.pipe.recv() if self.pipe.poll(1.0) else None
        self.close()
        if isinstance(message, tuple) and message[0] == "failed":
            _, user_error, text = message
            if user_error:
                raise UserError(text)
            raise ActorFailed(f"the actor process failed:\n{text}")
        raise ActorFailed("the actor process exited without a word")

    # ------------------------------------------------------------------------------------- the child

    def _serve(self, pipe: Connection) -> None:
        """The child's loop: play each phase started, answer requests, until told to stop."""
        parent = os.getppid()
        die_with_parent(parent)  # Linux; elsewhere the idle loop sees its parent gone
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        torch.set_num_threads(1)
        self.rollout.replay = self.staging
        played = 0
        try:
            while True:
                request = self._next_request(pipe, played, parent)
                if request == "stop":
                    return
                if request == "sync":
                    pipe.send((self.rollout.state_dict(), self.rng.bit_generator.state))
                    continue
                self._play_phase()
                played += 1
                self.control[FINISHED] = played
        except BaseException as exc:  # every failure goes back to the parent
            text = str(exc) if isinstance(exc, UserError) else "".join(traceback.format_exception(exc))
            self.control[FAILED] = 1
            pipe.send(("failed", isinstance(exc, UserError), text))
        finally:
            self.rollout.close()
            os._exit(0)  # no atexit handlers or buffers of the parent's are run or flushed twice

    def _next_request(self, pipe: Connection, played: int, parent: int) -> str:
        since = time.perf_counter()
        while True:
            if self.control[STARTED] > played:
                return "play"
            if pipe.poll():
                return pipe.recv()
            if time.perf_counter() - since > IDLE_SPIN:
                if os.getppid() != parent:
                    return "stop"
                time.sleep(IDLE_SLEEP)

    def _play_phase(self) -> None:
        hp, rollout, staging, step = self.hp, self.rollout, self.staging, self.control[START_STEP]
        for index in range(self.control[LENGTH]):
            actions = training_actions(self.acting, rollout.obs, step, hp, self.n_actions, self.rng, _CPU)
            staging.cursor = index
            staging.add_episodes(rollout.step(actions))
            step += hp.n_envs


_CPU = torch.device("cpu")
