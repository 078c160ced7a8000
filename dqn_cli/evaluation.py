"""Greedy (or epsilon-greedy) play: scoring a policy, watching it, and filming it."""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from itertools import takewhile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from dqn_cli.agent import Decision, epsilon_greedy, epsilon_greedy_decision
from dqn_cli.atari import NATIVE_SCREEN, AtariSettings, FilmedAtariEnv, is_atari
from dqn_cli.envpackages import env_source, import_packages, require_named, saved_packages
from dqn_cli.envs import check_env_fits, display_available, make_single_env, make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, saved_hyperparameters, with_env_kwargs
from dqn_cli.networks import build_q_network, resolve_device
from dqn_cli.optimal import optimal_return, tabular_mdp
from dqn_cli.overlay import QValueOverlay, action_names
from dqn_cli.runfiles import LoadedModel, load_model, resolve_model_path

Policy = Callable[[np.ndarray], np.ndarray]
EpisodeHook = Callable[[], None]
MAX_PARALLEL_EVAL_ENVS = 16
WINDOW_SCALE = 3  # `dqn eval --render` shows an Atari screen, 160x210, in a 480x630 window


@dataclass
class TrainedModel:
    path: Path
    meta: dict[str, Any]
    q_network: nn.Module
    device: torch.device
    env_id: str  # where it plays: the env it was trained on unless another was asked for
    # The training run's settings (Atari play must preprocess observations the same way), with the env
    # kwargs of the env it plays.
    hyperparameters: Hyperparameters

    @property
    def n_actions(self) -> int:
        return int(self.meta["network"]["n_actions"])  # checked by load_trained

    def score(
        self, episodes: int, seed: int, epsilon: float | None = None, on_episode: EpisodeHook | None = None
    ) -> list[float]:
        """``score_policy`` of this model; ``epsilon`` defaults to the run's ``eval_epsilon``."""
        return score_policy(
            self.q_network,
            self.n_actions,
            self.env_id,
            self.hyperparameters,
            episodes,
            seed,
            self.device,
            epsilon,
            on_episode,
        )

    def policy(self, seed: int, epsilon: float | None = None) -> EpsilonGreedy:
        """What `dqn eval --render` and `dqn record` play: by default, what evaluation plays."""
        chosen = _evaluation_epsilon(self.hyperparameters, epsilon)
        return make_policy(self.q_network, self.n_actions, chosen, seed, self.device)

    def optimal_return(self) -> float | None:
        """The best return an evaluation episode of its env can expect (by value iteration, over episodes
        as long as evaluation lets them run), where the env publishes its transition table, as gymnasium's
        toy-text games do (see dqn_cli/optimal.py); None elsewhere."""
        if is_atari(self.env_id):
            return None
        hp = self.hyperparameters
        with closing(make_single_env(self.env_id, max_steps=_episode_cap(hp), hp=hp)) as env:
            mdp = tabular_mdp(env)
            return None if mdp is None else optimal_return(mdp, env.spec.max_episode_steps)


def load_trained(
    run_or_model: Path | None,
    final: bool = False,
    device: str = "auto",
    env_id: str | None = None,
    env_kwargs: list[str] | None = None,
    gym_packages: Sequence[str] = (),
) -> TrainedModel:
    """Rebuild a saved Q-network from its JSON description and safetensors weights, to play on the env it
    was trained on, made with the run's env kwargs, or on ``env_id``, which must have the observation shape
    and action count it was trained with and is made without them (they were the run's env's).
    ``env_kwargs`` (``--env-kwargs key=value``) are set over those key by key. The modules
    ``gym_packages`` names are imported; a run whose env comes from packages plays only once they name
    them all (see envpackages)."""
    loaded = load_model(resolve_model_path(run_or_model, final))
    hp = _checked_description(loaded)
    saved = saved_packages(loaded.meta.get("gym_packages"), str(loaded.path.with_suffix(".json")))
    trained_on = env_source(loaded.env_id, saved)
    if env_id is None:
        require_named(trained_on.packages, gym_packages)
    played = env_source(env_id or trained_on.env_id, gym_packages)
    import_packages(played.packages)
    if played.env_id != trained_on.env_id:
        hp = apply_overrides(hp, {"env_kwargs": {}})
    hp = with_env_kwargs(hp, env_kwargs)
    check_env_fits(played.env_id, loaded.meta, trained_on.env_id, hp)
    torch_device = resolve_device(device)
    q_network = _rebuilt_network(loaded)
    return TrainedModel(loaded.path, loaded.meta, q_network.to(torch_device), torch_device, played.env_id, hp)


def _sizes(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(type(v) is int and v >= 1 for v in value)


def _observation_shape(network: dict[str, Any]) -> bool:
    """Sizes, or no size at all for a single categorical observation (Discrete: one integer)."""
    shape = network.get("obs_shape")
    return _sizes(shape) or (shape == [] and "one_hot" in network)


def _one_hot_fits(network: dict[str, Any]) -> bool:
    """No one-hot encoding, or one category count per entry of the observation."""
    one_hot, shape = network.get("one_hot"), network.get("obs_shape")
    if one_hot is None:
        return True
    return _sizes(one_hot) and _observation_shape(network) and len(one_hot) == math.prod(shape)


def _checked_description(loaded: LoadedModel) -> Hyperparameters:
    """The saved hyperparameters, once every field of model.json that the model is rebuilt and played
    from has been checked: the file may be edited or come from elsewhere, and a mismatch must be one
    line here, not a KeyError or a crash in the forward pass."""
    meta, origin = loaded.meta, loaded.path.with_suffix(".json")
    network = meta.get("network") if isinstance(meta.get("network"), dict) else {}
    spaces = {
        key: meta.get(key) if isinstance(meta.get(key), dict) else {}
        for key in ("observation_space", "action_space")
    }
    env_id = meta.get("env_id")
    checks = (
        (isinstance(env_id, str) and env_id != "", 'env_id must name a gymnasium env, e.g. "CartPole-v1"'),
        (isinstance(meta.get("network"), dict), "network must be a table"),
        (_observation_shape(network), "network.obs_shape must be a list of sizes >= 1 ([] for one category)"),
        (_one_hot_fits(network), "network.one_hot must give a category count >= 1 per observation entry"),
        (_sizes([network.get("n_actions")]), "network.n_actions must be an integer >= 1"),
        (_sizes(network.get("net_arch")), "network.net_arch must be a list of layer sizes >= 1"),
        (isinstance(network.get("dueling", False), bool), "network.dueling must be true or false"),
        (  # the spaces as saved say the same as the network, which is what is checked against the env
            spaces["observation_space"].get("shape", network.get("obs_shape")) == network.get("obs_shape"),
            "observation_space.shape must equal network.obs_shape",
        ),
        (
            spaces["observation_space"].get("one_hot", network.get("one_hot")) == network.get("one_hot"),
            "observation_space.one_hot must equal network.one_hot",
        ),
        (
            spaces["action_space"].get("n", network.get("n_actions")) == network.get("n_actions"),
            "action_space.n must equal network.n_actions",
        ),
    )
    for holds, rule in checks:
        if not holds:
            raise UserError(f"{origin} is not a valid model description: {rule}")
    return saved_hyperparameters(meta.get("hyperparameters", {}), f"model {loaded.path}")


def _rebuilt_network(loaded: LoadedModel) -> nn.Module:
    """The Q-network that model.json describes, with the saved weights. It is built on the meta device
    first, which allocates nothing, so a description whose layers the weights do not fit, however large
    it says the network is, is refused before any memory is taken."""
    spec, origin = loaded.meta["network"], loaded.path.with_suffix(".json")
    try:
        with torch.device("meta"):
            described = {key: tuple(value.shape) for key, value in build_q_network(spec).state_dict().items()}
        if described != {key: tuple(value.shape) for key, value in loaded.weights.items()}:
            raise ValueError("its tensors are not the layers the description gives")
        q_network = build_q_network(spec)
        q_network.load_state_dict(loaded.weights)
    except KeyError as exc:
        missing = f"network.{exc.args[0]} is missing"
        raise UserError(f"{origin} is not a valid model description: {missing}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise UserError(
            f"{loaded.path} does not match its description in {origin}: "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}"
        ) from None
    return q_network


def prepare_play_process(filming: bool = False) -> None:
    """Call once where `dqn eval` or `dqn record` starts (process-wide settings, so no constructor does it).
    Playing feeds a few observations at a time: one thread is fastest, and spinning worker threads would
    slow to a crawl whenever another process (a training run) holds the other cores. Filming renders
    off-screen, which needs no window system. Watching on X uses X only: where the display cannot be
    reached, SDL would fall back to drawing off-screen and play with no window; so it fails in one line."""
    torch.set_num_threads(1)
    if filming:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    elif sys.platform == "linux" and os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("SDL_VIDEODRIVER", "x11")


def video_path(model_path: Path, out: Path | None) -> Path:
    """Where a recording goes: ``out`` as given, a bare name in the run's videos/, or a timestamped mp4.
    What is there already must be a file the video may replace: a folder, a FIFO or a device is refused
    before anything is filmed. Missing folders are made by ``record_video``, which removes them on failure."""
    if out is None:
        out = Path(f"{model_path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.mp4")
    if out.parent == Path():
        out = model_path.parent / "videos" / out
    try:
        kind = stat.S_IFMT(out.stat().st_mode)
    except FileNotFoundError:
        kind = stat.S_IFREG  # a new file
    except OSError as exc:  # a parent that is a file, or that may not be searched
        raise _cannot_write(out, exc) from None
    if kind != stat.S_IFREG:
        kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
        raise UserError(
            f"--out {out} is {kinds.get(kind, 'a device')}, not a video file; "
            "give a file name ending in .mp4 or .gif"
        )
    if out.suffix not in (".mp4", ".gif"):
        raise UserError(f"--out must end in .mp4 or .gif, got {out.name!r}")
    return out


def _cannot_write(path: Path, exc: OSError) -> UserError:
    """The file system's own reason (``Read-only file system``, ``No space left on device``), in one line."""
    return UserError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass
class EpsilonGreedy:
    """Batch of observations -> actions; epsilon > 0 adds seeded random actions (e.g. 0.05 for Atari).
    Its generator is in sight so that an episode can be played again exactly (`dqn record --best-of`)."""

    q_network: nn.Module
    n_actions: int
    epsilon: float
    rng: np.random.Generator
    device: torch.device

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return epsilon_greedy(self.q_network, obs, self.epsilon, self.n_actions, self.rng, self.device)

    def decide(self, obs: np.ndarray) -> Decision:
        """The actions calling the policy would take, with the Q-values behind them (`--overlay`)."""
        return epsilon_greedy_decision(
            self.q_network, obs, self.epsilon, self.n_actions, self.rng, self.device
        )


def make_policy(
    q_network: nn.Module, n_actions: int, epsilon: float, seed: int, device: torch.device
) -> EpsilonGreedy:
    q_network.eval()
    return EpsilonGreedy(q_network, n_actions, epsilon, np.random.default_rng(seed), device)


def _evaluation_epsilon(hp: Hyperparameters | None, asked: float | None) -> float:
    """``asked``, or the run's ``eval_epsilon``: a model plays as it is evaluated unless told otherwise."""
    return (hp or Hyperparameters()).eval_epsilon if asked is None else asked


def _episode_cap(hp: Hyperparameters | None) -> int:
    """``eval_max_frames``: every evaluated, watched or filmed episode ends there at the latest."""
    return (hp or Hyperparameters()).eval_max_frames


def score_policy(
    q_network: nn.Module,
    n_actions: int,
    env_id: str,
    hp: Hyperparameters | None,
    episodes: int,
    seed: int,
    device: torch.device,
    epsilon: float | None = None,
    on_episode: EpisodeHook | None = None,
) -> list[float]:
    """Returns of ``episodes`` episodes of the (epsilon-)greedy policy of ``q_network``: how training,
    `dqn eval` and `dqn bench` all score a model, by default with the run's ``eval_epsilon`` and
    ``eval_max_frames``. The seed fixes both the episodes and the random actions."""
    policy = make_policy(q_network, n_actions, _evaluation_epsilon(hp, epsilon), seed, device)
    return evaluate(policy, env_id, episodes, seed, hp, on_episode)


def evaluate(
    policy: Policy,
    env_id: str,
    episodes: int,
    seed: int,
    hp: Hyperparameters | None = None,
    on_episode: EpisodeHook | None = None,
) -> list[float]:
    """Undiscounted return (raw game score) of ``episodes`` episodes, played in parallel envs seeded from
    ``seed``, each to its end or to ``eval_max_frames`` (then truncated, its return so far counted); ``hp``
    carries that cap and the training run's Atari preprocessing, ``on_episode`` runs as each counted
    episode ends (a progress bar).

    Env ``i`` of ``k`` plays episodes ``i, i+k, ...``, so the result depends only on (policy, seed, episodes).
    """
    n_envs = min(episodes, MAX_PARALLEL_EVAL_ENVS)
    quota = [len(range(i, episodes, n_envs)) for i in range(n_envs)]
    envs = make_vector_env(env_id, n_envs, hp, _episode_cap(hp))
    try:
        obs, _ = envs.reset(seed=seed)
        running = np.zeros(n_envs)
        finished: list[list[float]] = [[] for _ in range(n_envs)]
        while any(len(done) < q for done, q in zip(finished, quota, strict=True)):
            obs, rewards, terminated, truncated, _ = envs.step(policy(obs))
            running += rewards
            for i in np.flatnonzero(terminated | truncated):
                if len(finished[i]) < quota[i]:
                    finished[i].append(float(running[i]))
                    if on_episode is not None:
                        on_episode()
                running[i] = 0.0
    finally:
        envs.close()
    # Interleave back into episode order i, i+k, ...
    return [finished[e % n_envs][e // n_envs] for e in range(episodes)]


def play_rendered(
    policy: Policy, env_id: str, episodes: int, seed: int, hp: Hyperparameters | None = None
) -> list[float]:
    """Play in a window so the user can watch: the env's own (human render mode), or for Atari, whose
    vector env has none, the filming camera's colour frames in a window of ours. Episodes end at
    ``eval_max_frames``, as evaluation's do."""
    if not display_available():
        raise UserError("--render needs a display, and none is available (DISPLAY is not set)")
    try:
        with ExitStack() as opened:
            env = opened.enter_context(closing(filmed_env(env_id, hp, render_mode="human")))
            if is_atari(env_id):
                show = opened.enter_context(closing(_GameWindow(env_id, env.fps))).show
            else:
                show = _drawn_by_the_env
            return _play_episodes(env, policy, episodes, seed, show).returns
    except Exception as exc:  # pygame/SDL failures surface as assorted exception types
        if isinstance(exc, UserError):
            raise
        raise UserError(
            f"cannot open a game window: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None


def _drawn_by_the_env(frame: None) -> None:
    """A human-mode env draws its window as it steps: nothing is left to show."""


class _GameWindow:
    """A pygame window for the Atari screen: each colour frame scaled up, shown at the game's speed."""

    def __init__(self, title: str, fps: int) -> None:
        import pygame

        pygame.display.init()
        height, width = NATIVE_SCREEN
        self._screen = pygame.display.set_mode((width * WINDOW_SCALE, height * WINDOW_SCALE))
        pygame.display.set_caption(title)
        self._pygame, self._clock, self._fps = pygame, pygame.time.Clock(), fps

    def show(self, frame: np.ndarray) -> None:
        pygame = self._pygame
        image = pygame.surfarray.make_surface(frame.swapaxes(0, 1))  # pygame indexes (x, y)
        self._screen.blit(pygame.transform.scale(image, self._screen.get_size()), (0, 0))
        pygame.event.pump()  # a window that takes no events is "not responding"
        pygame.display.flip()
        self._clock.tick(self._fps)

    def close(self) -> None:
        self._pygame.display.quit()


class _FilmedEnv:
    """A gymnasium env behind the interface of ``FilmedAtariEnv``. In ``rgb_array`` mode its frames are
    the rendered screens; in ``human`` mode it draws its own window as it steps and gives no frames."""

    def __init__(self, env_id: str, max_steps: int, render_mode: str, hp: Hyperparameters | None) -> None:
        self.env = make_single_env(env_id, render_mode, max_steps, hp)
        self.fps = int(self.env.metadata.get("render_fps") or 30)

    def _frame(self) -> np.ndarray | None:
        return self.env.render() if self.env.render_mode == "rgb_array" else None

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        obs, _ = self.env.reset(seed=seed)
        return _batch_of_one(obs), self._frame()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, float, bool, np.ndarray | None]:
        obs, reward, terminated, truncated, _ = self.env.step(int(actions[0]))
        return _batch_of_one(obs), float(reward), terminated or truncated, self._frame()

    def close(self) -> None:
        self.env.close()


def _batch_of_one(obs: Any) -> np.ndarray:
    """One observation as a batch of one, as the policy takes them; toy-text envs give a plain int."""
    return np.asarray(obs)[None]


def filmed_env(
    env_id: str, hp: Hyperparameters | None = None, render_mode: str = "rgb_array"
) -> _FilmedEnv | FilmedAtariEnv:
    """An env that gives the agent its observations and the camera a colour frame after every step (for
    Atari, whatever ``render_mode``), its episodes capped at ``eval_max_frames`` as evaluation's are."""
    if is_atari(env_id):
        return FilmedAtariEnv(AtariSettings.for_env(env_id, hp, _episode_cap(hp)))
    return _FilmedEnv(env_id, _episode_cap(hp), render_mode, hp)


@dataclass
class Played:
    """Episodes played one after another, each frame shown (filmed, or drawn in a window)."""

    returns: list[float]  # one per episode started; the last counts only what was shown when ``cut``
    frames: int
    cut: bool  # ``max_frames`` stopped play before the episodes asked for were over
    seed: int  # the first episode's
    candidates: list[float] = field(default_factory=list)  # best-of: the returns the first was chosen from


def _play_episodes(
    env: _FilmedEnv | FilmedAtariEnv,
    policy: Policy,
    episodes: int,
    seed: int,
    show: Callable[[Any], None],
    max_frames: float = math.inf,
    on_episode: EpisodeHook | None = None,
) -> Played:
    """Play episodes ``seed, seed + 1, ...``, giving ``show`` each one's reset frame and a frame per step,
    until ``episodes`` are over or ``max_frames`` were shown."""
    returns: list[float] = []
    frames = 0
    for episode in range(episodes):
        if frames == max_frames:
            return Played(returns, frames, True, seed)
        obs, frame = env.reset(seed=seed + episode)
        show(frame)
        frames += 1
        total, done = 0.0, False
        while not done:
            if frames == max_frames:
                return Played([*returns, total], frames, True, seed)
            obs, reward, done, frame = env.step(policy(obs))
            show(frame)
            frames += 1
            total += reward
        returns.append(total)
        if on_episode is not None:
            on_episode()
    return Played(returns, frames, False, seed)


def _best_episode(
    policy: EpsilonGreedy,
    env_id: str,
    candidates: int,
    seed: int,
    hp: Hyperparameters | None,
    on_episode: EpisodeHook | None,
) -> tuple[int, list[float]]:
    """Score episodes ``seed .. seed + candidates - 1`` one by one, unfilmed, and leave ``policy``'s
    generator as it was when the best began: the env is deterministic given its seed and the actions, so
    filming that seed plays the best episode again. Returns its seed and every return."""
    starts: list[dict[str, Any]] = []
    returns: list[float] = []
    for episode in range(candidates):
        starts.append(policy.rng.bit_generator.state)
        returns += evaluate(policy, env_id, 1, seed + episode, hp, on_episode)
    best = int(np.argmax(returns))
    policy.rng.bit_generator.state = starts[best]
    return seed + best, returns


def record_video(
    policy: EpsilonGreedy,
    env_id: str,
    episodes: int,
    seed: int,
    out_path: Path,
    hp: Hyperparameters | None = None,
    on_episode: EpisodeHook | None = None,
    max_frames: float = math.inf,
    best_of: int = 1,
    overlay: bool = False,
) -> Played:
    """Film ``episodes`` episodes into an mp4 or gif: the rendered game, for Atari the full-colour screen,
    with ``overlay`` the network's Q-values beside it (see dqn_cli/overlay.py).

    Each episode contributes its reset frame plus one frame per step, ``max_frames`` in all at most (the
    episode in progress there is cut), and ends at ``eval_max_frames`` as evaluation's do. ``best_of`` > 1
    first scores that many episodes from ``seed`` unfilmed, then films the best from its own seed.
    The video appears at ``out_path`` only once complete: an error or an interrupt leaves nothing behind
    (no partial file, no folder made for it), and the error is the file system's or the encoder's own.
    """
    candidates: list[float] = []
    if best_of > 1:
        seed, candidates = _best_episode(policy, env_id, best_of, seed, hp, on_episode)
    env = filmed_env(env_id, hp)
    if overlay:  # it decides each action as the observation arrives, to draw that frame with its Q-values
        env = QValueOverlay(env, policy.decide, action_names(env, policy.n_actions), policy.epsilon)
        policy = env.act
    try:
        with _staged_file(out_path) as tmp_path:
            writer = (_GifWriter if out_path.suffix == ".gif" else _Mp4Writer)(tmp_path, env.fps, out_path)
            try:
                played = _play_episodes(env, policy, episodes, seed, writer.append, max_frames, on_episode)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
    finally:
        env.close()
    played.candidates = candidates
    return played


@contextmanager
def _staged_file(path: Path) -> Iterator[Path]:
    """A new empty file beside ``path`` (and the folders it needs) that becomes ``path`` when the block
    ends without error. Otherwise the file and the folders made for it are removed, and removing never
    raises: the error the user sees is the one that stopped the recording."""
    made: list[Path] = []  # innermost first
    tmp: Path | None = None
    try:
        try:
            missing = list(takewhile(lambda folder: not folder.exists(), [path.parent, *path.parent.parents]))
            for folder in reversed(missing):
                folder.mkdir()
                made.insert(0, folder)
        except OSError as exc:
            raise UserError(f"cannot make the folder {exc.filename} for {path}: {exc.strerror}") from None
        try:
            staged = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
            os.close(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            tmp = staged
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        tmp, made = None, []
    finally:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink()
        for folder in made:
            with suppress(OSError):
                folder.rmdir()


MP4_CRF = 15  # libx264 quality: 0 lossless .. 51 worst; what imageio's quality=7 gave


class _Mp4Writer:
    """H.264 through imageio-ffmpeg's ffmpeg binary, run directly rather than through imageio: its messages
    are caught (a failure is one line, ffmpeg's last: "Error closing file: No space left on device"), and it
    runs in a session of its own, so Ctrl-C at the terminal reaches dqn, which stops it, and never ffmpeg."""

    def __init__(self, path: Path, fps: int, shown: Path) -> None:
        self._path, self._fps, self._shown = path, fps, shown
        self._ffmpeg: subprocess.Popen[bytes] | None = None
        self._messages: deque[str] = deque(maxlen=20)
        self._reader: threading.Thread | None = None  # drains ffmpeg's messages as they come

    def append(self, frame: np.ndarray) -> None:
        if self._ffmpeg is None:
            self._start(*frame.shape[:2])
        try:
            self._ffmpeg.stdin.write(frame.tobytes())
        except BrokenPipeError:  # ffmpeg stopped; its exit says why
            self.finish()
            raise UserError(f"cannot write {self._shown}: ffmpeg stopped reading frames") from None

    def finish(self) -> None:
        """Wait for ffmpeg to complete the file."""
        if self._ffmpeg is None:
            return
        with suppress(BrokenPipeError):
            self._ffmpeg.stdin.close()
        code = self._ffmpeg.wait()
        self._stop_reading()
        if code != 0:
            raise UserError(f"cannot write {self._shown}: {self._failure(code)}")

    def abort(self) -> None:
        if self._ffmpeg is None:
            return
        self._ffmpeg.kill()
        with suppress(OSError):
            self._ffmpeg.stdin.close()
        self._ffmpeg.wait()
        self._stop_reading()

    def _start(self, height: int, width: int) -> None:
        import imageio_ffmpeg

        try:
            command = [
                imageio_ffmpeg.get_ffmpeg_exe(),
                *("-hide_banner", "-nostats", "-loglevel", "error", "-y"),
                *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self._fps)),
                *("-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF)),
                str(self._path),
            ]
            self._ffmpeg = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except (RuntimeError, OSError) as exc:  # no ffmpeg binary for this platform, or not runnable
            raise UserError(f"cannot write {self._shown}: ffmpeg is not available ({exc})") from None
        self._reader = threading.Thread(target=self._read_messages, args=(self._ffmpeg.stderr,), daemon=True)
        self._reader.start()

    def _read_messages(self, stderr: IO[bytes]) -> None:
        for line in stderr:
            self._messages.append(line.decode(errors="replace").strip())

    def _stop_reading(self) -> None:
        """Once ffmpeg has exited: its last messages are in."""
        if self._reader is not None:
            self._reader.join()
            self._ffmpeg.stderr.close()

    def _failure(self, code: int) -> str:
        """ffmpeg's last message, without its ``[component @ 0x...]`` prefix."""
        messages = [m for m in self._messages if m and not m.startswith("Last message repeated")]
        if messages:
            return f"ffmpeg: {messages[-1].split('] ', 1)[-1]}"
        return f"ffmpeg was killed by signal {-code}" if code < 0 else f"ffmpeg failed with exit code {code}"


class _GifWriter:
    """Pillow, which encodes all frames at the end (as imageio did): an aborted recording writes nothing."""

    def __init__(self, path: Path, fps: int, shown: Path) -> None:
        self._path, self._fps, self._shown = path, fps, shown
        self._frames: list[Any] = []

    def append(self, frame: np.ndarray) -> None:
        from PIL import Image

        self._frames.append(Image.fromarray(frame))

    def finish(self) -> None:
        first, *rest = self._frames
        try:
            first.save(
                self._path, format="GIF", save_all=True, append_images=rest, duration=1000 / self._fps, loop=0
            )
        except OSError as exc:
            raise _cannot_write(self._shown, exc) from None

    def abort(self) -> None:
        self._frames.clear()
