"""The hyperparameter schema: every name, its type, bounds and default, and how values are validated.

Names follow Stable-Baselines3 / RL Zoo. This module depends on nothing but ``errors``, so everything
above it (presets, env construction, the agent) can import it without cycles.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dqn_cli.errors import UserError


def _positive(x: float) -> bool:
    return x > 0


def _non_negative(x: float) -> bool:
    return x >= 0


def _unit_interval(x: float) -> bool:
    return 0.0 <= x <= 1.0


def _tau_range(x: float) -> bool:
    return 0.0 < x <= 1.0


def _gradient_steps_range(x: int) -> bool:
    return x >= 1 or x == -1


def _probability_or_default(x: float) -> bool:
    return x == -1 or 0.0 <= x <= 1.0


def _layer_sizes(x: list[int]) -> bool:
    return len(x) >= 1 and all(n >= 1 for n in x)


MAX_NESTING = 16  # lists and tables in an env kwarg: an edited file's nesting is refused, not recursed into


def _plain_value(x: Any, depth: int = 0) -> bool:
    """A value TOML (config.toml) and JSON (model.json) both hold: no dates, no null."""
    if isinstance(x, list | dict) and depth >= MAX_NESTING:
        return False
    if isinstance(x, list):
        return all(_plain_value(item, depth + 1) for item in x)
    if isinstance(x, dict):
        return all(isinstance(key, str) and _plain_value(v, depth + 1) for key, v in x.items())
    return isinstance(x, bool | int | float | str)


def _keyword_table(x: dict[str, Any]) -> bool:
    """Keyword arguments: identifiers as keys, plain values."""
    return all(isinstance(key, str) and key.isidentifier() for key in x) and _plain_value(x)


@dataclass(frozen=True)
class Rule:
    """How one hyperparameter is typed and bounded; ``describe`` is what error messages quote."""

    kind: type
    check: Callable[[Any], bool] | None = None
    describe: str = ""
    choices: tuple[str, ...] = ()
    allow_infinity: bool = False


def _hp(default: Any, rule: Rule, doc: str) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule, "doc": doc})
    return field(default=default, metadata={"rule": rule, "doc": doc})


POSITIVE_INT = Rule(int, _positive, "an integer > 0")
NON_NEGATIVE_INT = Rule(int, _non_negative, "an integer >= 0")
POSITIVE_FLOAT = Rule(float, _positive, "a number > 0")
NON_NEGATIVE_FLOAT = Rule(float, _non_negative, "a number >= 0")
UNIT_FLOAT = Rule(float, _unit_interval, "a number in [0, 1]")
BOOL = Rule(bool, describe="true or false")


@dataclass
class Hyperparameters:
    """Everything that shapes learning. Defaults are Stable-Baselines3's DQN defaults unless noted."""

    n_timesteps: int = _hp(100_000, POSITIVE_INT, "total environment steps to train for")
    learning_rate: float = _hp(1e-4, POSITIVE_FLOAT, "Adam step size (at the start, if it is scheduled)")
    learning_rate_final: float = _hp(
        0.0,
        NON_NEGATIVE_FLOAT,
        "Adam's step size after learning_rate_fraction of n_timesteps (RL Zoo's lin_ schedules end at 0)",
    )
    learning_rate_fraction: float = _hp(
        0.0,
        UNIT_FLOAT,
        "fraction of n_timesteps over which the step size moves linearly from learning_rate to "
        "learning_rate_final, then holds (smaller steps late, once there is less to learn and more to "
        "keep); 0 = learning_rate throughout",
    )
    adam_eps: float = _hp(
        1e-8,
        POSITIVE_FLOAT,
        "Adam's epsilon (PyTorch's default; RL Zoo: policy_kwargs optimizer_kwargs eps); Rainbow and "
        "data-efficient Rainbow use 1.5e-4, which keeps parameters whose gradients are tiny from taking "
        "full-size steps",
    )
    buffer_size: int = _hp(1_000_000, POSITIVE_INT, "replay buffer capacity in transitions")
    learning_starts: int = _hp(100, NON_NEGATIVE_INT, "env steps of uniformly random play before learning")
    batch_size: int = _hp(32, POSITIVE_INT, "transitions per gradient step")
    tau: float = _hp(
        1.0, Rule(float, _tau_range, "a number in (0, 1]"), "target update coefficient; 1 = copy"
    )
    gamma: float = _hp(0.99, UNIT_FLOAT, "discount factor")
    train_freq: int = _hp(4, POSITIVE_INT, "env steps between training phases")
    gradient_steps: int = _hp(
        1,
        Rule(int, _gradient_steps_range, "an integer >= 1, or -1"),
        "gradient steps per training phase; -1 = as many as env steps collected since the last phase",
    )
    target_update_interval: int = _hp(10_000, POSITIVE_INT, "env steps between target-network updates")
    exploration_fraction: float = _hp(0.1, UNIT_FLOAT, "fraction of n_timesteps over which epsilon decays")
    exploration_initial_eps: float = _hp(1.0, UNIT_FLOAT, "epsilon at the start")
    exploration_final_eps: float = _hp(0.05, UNIT_FLOAT, "epsilon after the decay")
    max_grad_norm: float = _hp(
        10.0,
        Rule(float, _positive, "a number > 0, or inf", allow_infinity=True),
        "gradient-norm clipping threshold; inf = no clipping (CleanRL's DQN)",
    )
    net_arch: list[int] = _hp(
        [64, 64], Rule(list, _layer_sizes, "a list of layer sizes >= 1, e.g. [256, 256]"), "hidden layers"
    )
    double_q: bool = _hp(False, BOOL, "use Double DQN targets (van Hasselt et al. 2016)")
    dueling: bool = _hp(False, BOOL, "dueling head: Q = V + A - mean(A) (Wang et al. 2016)")
    n_step: int = _hp(1, POSITIVE_INT, "n-step returns: bootstrap after n rewards (1 = the paper's DQN)")
    n_step_initial: int = _hp(
        0,
        NON_NEGATIVE_INT,
        "n-step horizon at the start, moved linearly to n_step over n_step_fraction of n_timesteps "
        "(long returns while values are poor, short ones later; BBF, Schwarzer et al. 2023, anneals "
        "10 to 3); 0 = n_step throughout",
    )
    n_step_fraction: float = _hp(
        0.0, UNIT_FLOAT, "fraction of n_timesteps over which the horizon moves from n_step_initial to n_step"
    )
    prioritized_replay: bool = _hp(False, BOOL, "proportional prioritized replay (Schaul et al. 2016)")
    prioritized_replay_alpha: float = _hp(0.6, UNIT_FLOAT, "how strongly priorities skew sampling")
    prioritized_replay_beta0: float = _hp(
        0.4, UNIT_FLOAT, "initial importance-weight exponent, annealed linearly to 1 over n_timesteps"
    )
    prioritized_replay_eps: float = _hp(1e-6, POSITIVE_FLOAT, "added to |TD error| so no priority is 0")
    loss: str = _hp(
        "huber", Rule(str, describe="one of huber, mse", choices=("huber", "mse")), "TD loss function"
    )
    n_envs: int = _hp(1, POSITIVE_INT, "environments stepped in parallel while collecting")
    eval_freq: int = _hp(10_000, NON_NEGATIVE_INT, "env steps between greedy evaluations; 0 = never")
    eval_episodes: int = _hp(10, POSITIVE_INT, "episodes per periodic evaluation")
    eval_epsilon: float = _hp(
        0.0,
        UNIT_FLOAT,
        "chance of a random action in every evaluation (training's, dqn bench, eval and record); "
        "0 = greedy, as RL Zoo evaluates; the atari preset uses Mnih et al. 2015's 0.05",
    )
    eval_max_frames: int = _hp(
        18_000,
        POSITIVE_INT,
        "an evaluated, watched or filmed episode ends (truncated, its return counted) after this many "
        "emulator frames: agent steps x frame_skip for Atari, env steps otherwise; 18,000 = Nature DQN's "
        "5 minutes. Never beyond the env's own limit; training episodes keep theirs",
    )
    checkpoint_freq: int = _hp(
        50_000,
        NON_NEGATIVE_INT,
        "env steps between checkpoints for --resume (one is always written at the end)",
    )
    precision: str = _hp(
        "auto",
        Rule(str, describe="one of auto, float32, bfloat16", choices=("auto", "float32", "bfloat16")),
        "arithmetic of the convolutional layers (Atari); bfloat16 about halves their cost where the "
        "hardware has it, while weights, optimizer and fully connected layers stay float32; auto = "
        "bfloat16 on such hardware (CUDA, or a CPU with AVX-512 BF16 / AMX), else float32",
    )
    clip_reward: bool = _hp(False, BOOL, "learn from sign(reward); returns are still reported raw (Atari)")
    terminal_on_life_loss: bool = _hp(
        False, BOOL, "a lost life is a terminal state for learning only; episodes are whole games (Atari)"
    )
    encoder: str = _hp(
        "nature",
        Rule(str, describe="one of nature, der", choices=("nature", "der")),
        "convolutional encoder of frame stacks (Atari): nature = Mnih et al. 2015's three convolutions; "
        "der = data-efficient Rainbow's two 5x5 stride-5 convolutions (van Hasselt et al. 2019), about "
        "a seventh of the cost per frame",
    )
    augment_shift: int = _hp(
        0,
        NON_NEGATIVE_INT,
        "shift each replayed frame stack (obs and next obs) by a random whole number of pixels up to this "
        "many, edges repeated (DrQ, Kostrikov et al. 2020; 4 in DrQ(eps)); 0 = off (Atari)",
    )
    overlap_emulation: bool = _hp(
        False,
        BOOL,
        "run a training phase's gradient steps while the envs play the vector step (ale-py's send/recv: "
        "Atari's emulators step on their own threads meanwhile); those updates sample replay without "
        "that newest step",
    )
    actor_process: bool = _hp(
        False,
        BOOL,
        "play the training envs in a second process, a training phase at a time, while this one runs the "
        "phase's gradient steps (two cores: the env loop and the update each get one); each phase is "
        "played with the weights from before the updates its start made due (not Atari: use "
        "overlap_emulation there; needs fork: Linux or macOS)",
    )
    frame_stack: int = _hp(4, POSITIVE_INT, "frames per observation (Atari)")
    frame_skip: int = _hp(4, POSITIVE_INT, "emulator frames per action, max-pooled over the last two (Atari)")
    noop_max: int = _hp(30, NON_NEGATIVE_INT, "up to this many no-op actions at each reset (Atari)")
    repeat_action_probability: float = _hp(
        -1.0,
        Rule(float, _probability_or_default, "a number in [0, 1], or -1"),
        "sticky actions: chance the emulator repeats the previous action; -1 = as the env id defines "
        "(0.25 for ALE/*-v5, 0 for *NoFrameskip-v4) (Atari)",
    )
    stop_at_eval_return: float = _hp(
        math.inf,
        Rule(float, describe="a number, or inf", allow_infinity=True),
        "stop once a periodic evaluation's mean return reaches this (SB3's StopTrainingOnRewardThreshold)",
    )
    env_kwargs: dict[str, Any] = _hp(
        {},
        Rule(dict, _keyword_table, 'a table of keyword arguments, e.g. {map_name = "8x8"}'),
        "keyword arguments for the env's constructor (RL Zoo's env_kwargs), e.g. {continuous = false}; "
        "evaluation, dqn eval and dqn record make the env with them too",
    )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def docs(cls) -> dict[str, str]:
        return {f.name: f.metadata["doc"] for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def learning_rate_at(self, step: int) -> float:
        """Adam's step size for the updates due at env step ``step``."""
        if not self.learning_rate_fraction:
            return self.learning_rate
        span = self.learning_rate_fraction * self.n_timesteps
        return _linear(self.learning_rate, self.learning_rate_final, step, span)

    def importance_exponent(self, step: int) -> float:
        """Prioritized replay's beta: from beta0 at the start to 1 at n_timesteps."""
        return _linear(self.prioritized_replay_beta0, 1.0, step, self.n_timesteps)

    def horizon(self, step: int) -> int:
        """The n of the n-step returns that env step ``step`` starts: n_step_initial moving to n_step."""
        if not self.n_step_initial:
            return self.n_step
        span = self.n_step_fraction * self.n_timesteps
        return round(_linear(self.n_step_initial, self.n_step, step, span))

    @property
    def longest_horizon(self) -> int:
        return max(self.n_step, self.n_step_initial)

    def exploration_rate(self, step: int) -> float:
        """Linear epsilon schedule of Mnih et al.: decay over a fraction of training, then hold."""
        span = self.exploration_fraction * self.n_timesteps
        return _linear(self.exploration_initial_eps, self.exploration_final_eps, step, span)


def _linear(start: float, end: float, step: int, span: float) -> float:
    """``start`` moving linearly to ``end`` over the first ``span`` env steps, then held (at once if 0)."""
    progress = 1.0 if span <= 0 else min(step / span, 1.0)
    return start + progress * (end - start)


_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(Hyperparameters)}


def _coerce(key: str, value: Any) -> Any:
    """Return ``value`` as the type ``key`` needs, or raise a one-line UserError naming key and rule."""
    rule = _RULES[key]
    bad = UserError(f"invalid value for {key}: {value!r} (expected {rule.describe})")
    if rule.kind is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if rule.kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # RL Zoo writes n_timesteps = 1e5
        if not isinstance(value, int):
            raise bad
    elif rule.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise bad
        if math.isinf(value) and not (rule.allow_infinity and value > 0):
            raise bad
        value = float(value)
    elif rule.kind is dict:
        if not isinstance(value, dict):
            raise bad
    elif rule.kind is list:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise bad
    elif rule.kind is str and (not isinstance(value, str) or (rule.choices and value not in rule.choices)):
        raise bad
    if rule.check is not None and not rule.check(value):
        raise bad
    return value


def _unknown_key(key: str) -> UserError:
    close = difflib.get_close_matches(key, Hyperparameters.names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown hyperparameter {key!r}{hint}; see `dqn presets --keys`")


def apply_overrides(hp: Hyperparameters, overrides: Mapping[str, Any]) -> Hyperparameters:
    """A copy of ``hp`` with ``overrides`` validated and applied."""
    values = hp.to_dict()
    for key, value in overrides.items():
        if key not in _RULES:
            raise _unknown_key(key)
        values[key] = _coerce(key, value)
    result = Hyperparameters(**values)
    if result.exploration_final_eps > result.exploration_initial_eps:
        raise UserError(
            "invalid value for exploration_final_eps: must not exceed exploration_initial_eps "
            f"({result.exploration_final_eps} > {result.exploration_initial_eps})"
        )
    return result


def parse_set_option(item: str, option: str = "--set") -> tuple[str, Any]:
    """Parse one ``--set key=value`` (or ``option``'s); the value is read as TOML (``1e-3``, ``[64, 64]``,
    ``true``)."""
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise UserError(f"{option} expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as `mse`
    return key, value


def with_env_kwargs(hp: Hyperparameters, items: list[str] | None) -> Hyperparameters:
    """``hp`` with each ``--env-kwargs key=value`` (a TOML value, or a bare word as a string) set over its
    ``env_kwargs`` key by key: the command line changes one kwarg and keeps the others (preset's, run's)."""
    if not items:
        return hp
    given = dict(parse_set_option(item, "--env-kwargs") for item in items)
    return apply_overrides(hp, {"env_kwargs": {**hp.env_kwargs, **given}})


def saved_hyperparameters(table: Any, origin: str) -> Hyperparameters:
    """Hyperparameters from a table a run saved (config.toml, model.json); ``origin`` names it in errors."""
    if not isinstance(table, dict):
        raise UserError(f"{origin} has no valid hyperparameters table")
    try:
        return apply_overrides(Hyperparameters(), table)
    except UserError as exc:
        raise UserError(f"{origin}'s saved hyperparameters are not valid: {exc}") from None
