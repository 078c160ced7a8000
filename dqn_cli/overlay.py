"""`dqn record --overlay`: beside each frame of the game, what the network made of it.

A panel to the right of the game holds one bar per action, the Q-values the network computed for that
frame, the chosen action's bar highlighted (orange when greedy, red when epsilon drew it at random), and
above them the episode, its step, the score so far and the action taken. A bar's length is where its
Q-value lies between the lowest and the highest of that frame: the lowest gets a stub, the highest the
full width (all full when they are equal); the number beside it is the Q-value itself. Q-values have any
sign and scale, and what decides the action is how they compare within one frame, which this shows at any
scale; the printed values give the scale.

The overlay decides as soon as an observation arrives, so each frame is drawn with the Q-values of that
very frame, and the policy handed to the player returns the action decided then: the values drawn are the
output of the forward pass the action was chosen from, never of a second one. The network runs at every
step, even where epsilon picks the action at random (plain play skips it there), and the policy's
generator gives the same draws in the same order, so the overlay plays the same episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dqn_cli.agent import Decision
from dqn_cli.atari import FilmedAtariEnv

MIN_GAME_HEIGHT = 400  # smaller screens are scaled up by a whole factor (Atari's 210 rows to 420)
PANEL_WIDTH = 320
FONT_SIZE = 15  # legible in a 420-row video; Pillow's default font (Aileron) at this size
ROW = 22  # pixels per line of text or bar
MARGIN = 10
STUB = 0.04  # the lowest Q-value's bar, as a share of the full length
BACKGROUND, TEXT, DIM = (24, 24, 28), (235, 235, 235), (150, 150, 160)
BAR, GREEDY, RANDOM = (80, 110, 150), (255, 165, 0), (230, 60, 60)

# gymnasium's documented actions of the classic-control games (and LunarLander), by the id's name
KNOWN_ACTIONS = {
    "CartPole": ("push left", "push right"),
    "Acrobot": ("torque -1", "torque 0", "torque +1"),
    "MountainCar": ("push left", "no push", "push right"),
    "LunarLander": ("no-op", "left engine", "main engine", "right engine"),
}
MINATAR_ACTIONS = ("no-op", "left", "up", "right", "down", "fire")


class Filmed(Protocol):
    """What `dqn record` films: an env giving the agent observations and the camera a frame per step."""

    fps: int

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, float, bool, np.ndarray]: ...

    def close(self) -> None: ...


def action_names(env: Filmed, n_actions: int) -> list[str]:
    """The bars' labels: ale-py's names of the game's action set for Atari (NOOP, FIRE, UPRIGHT, ...),
    gymnasium's documented meanings for the classic-control games, MinAtar's moves, the env's own
    ``get_action_meanings()`` where it has one, else the actions' indices."""
    if isinstance(env, FilmedAtariEnv):
        names = [action.name for action in env.agent_view.ale.get_action_set()]
    else:
        names = _gymnasium_names(getattr(env, "env", None))
    return names if len(names) == n_actions else [str(action) for action in range(n_actions)]


def _gymnasium_names(game: gym.Env | None) -> list[str]:
    if game is None:
        return []
    spec, base = game.spec, game.unwrapped
    if spec is not None and spec.namespace is None and spec.name in KNOWN_ACTIONS:
        return list(KNOWN_ACTIONS[spec.name])
    if type(base).__module__ == "minatar.gym":  # its action_set indexes the package's n, l, u, r, d, f
        return [MINATAR_ACTIONS[action] for action in base.action_set]
    if hasattr(base, "get_action_meanings"):
        return list(base.get_action_meanings())
    return []


@dataclass(frozen=True)
class Reading:
    """What the panel shows for one frame."""

    episode: int  # counted from 1
    step: int  # agent steps taken in the episode before this frame
    score: float  # the episode's return so far
    q_values: np.ndarray | None = None  # None on an episode's last frame: nothing is decided there
    action: int | None = None
    random: bool = False


class Panel:
    """Draws frames of one size, whatever the size of the game's frames: the video encoders need every
    frame the same size, and mp4's both dimensions even. The layout is fixed by the first frame."""

    def __init__(self, names: list[str], epsilon: float) -> None:
        self.names, self.epsilon = names, epsilon
        self.font = ImageFont.load_default(size=FONT_SIZE)
        self._label_width = int(max(self.font.getlength(name) for name in names)) + MARGIN
        self._layout: tuple[tuple[int, int], Image.Image] | None = None  # game size, empty canvas

    def draw(self, frame: np.ndarray, reading: Reading) -> np.ndarray:
        """The game (scaled up) on the left, the panel for ``reading`` on the right: (H, W, 3) uint8."""
        if self._layout is None:
            self._layout = self._empty_canvas(*frame.shape[:2])
        game_size, empty = self._layout
        canvas = empty.copy()
        canvas.paste(Image.fromarray(frame).resize(game_size, Image.Resampling.NEAREST), (0, 0))
        self._draw_reading(ImageDraw.Draw(canvas), game_size[0], reading)
        return np.asarray(canvas)

    def _empty_canvas(self, height: int, width: int) -> tuple[tuple[int, int], Image.Image]:
        scale = max(1, math.ceil(MIN_GAME_HEIGHT / height))
        game_size = (width * scale, height * scale)
        rows_needed = (3 + len(self.names)) * ROW + 2 * MARGIN
        size = [_even(game_size[0] + PANEL_WIDTH), _even(max(game_size[1], rows_needed))]
        canvas = Image.new("RGB", tuple(size), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for row, name in enumerate(self.names):
            draw.text((game_size[0] + MARGIN, self._bar_top(row)), name, fill=DIM, font=self.font)
        return game_size, canvas

    def _draw_reading(self, draw: ImageDraw.ImageDraw, panel_left: int, reading: Reading) -> None:
        left, right = panel_left + MARGIN, panel_left + PANEL_WIDTH - MARGIN
        header = f"episode {reading.episode}   step {reading.step}   score {reading.score:.1f}"
        draw.text((left, MARGIN), header, fill=TEXT, font=self.font)
        if reading.q_values is None or reading.action is None:
            draw.text((left, MARGIN + ROW), "episode over", fill=TEXT, font=self.font)
            return
        chosen = RANDOM if reading.random else GREEDY
        how = f"random (epsilon {self.epsilon:g})" if reading.random else "greedy"
        draw.text((left, MARGIN + ROW), f"{self.names[reading.action]}: {how}", fill=chosen, font=self.font)
        draw.text((left, MARGIN + 2 * ROW), "Q-values, bars from lowest to highest", fill=DIM, font=self.font)
        bar_left = left + self._label_width
        full = right - int(self.font.getlength("-000.0000")) - MARGIN - bar_left
        values = reading.q_values
        decimals = _decimals(values)
        for row, (share, value) in enumerate(zip(bar_shares(values), values, strict=True)):
            top, colour = self._bar_top(row), chosen if row == reading.action else BAR
            draw.rectangle((bar_left, top + 3, bar_left + max(1, round(share * full)), top + ROW - 5), colour)
            draw.text((right, top), f"{value:.{decimals}f}", fill=TEXT, font=self.font, anchor="ra")

    @staticmethod
    def _bar_top(row: int) -> int:
        return MARGIN + (3 + row) * ROW


def bar_shares(q_values: np.ndarray) -> np.ndarray:
    """Each bar's length as a share of the full one: ``STUB`` for the frame's lowest Q-value, 1 for its
    highest, linear between (all 1 when they are equal; 0 for a value that is not finite)."""
    finite = np.isfinite(q_values)
    if not finite.any():
        return np.zeros(len(q_values))
    low, high = q_values[finite].min(), q_values[finite].max()
    spread = (q_values - low) / (high - low) if high > low else np.ones(len(q_values))
    return np.where(finite, STUB + (1 - STUB) * spread, 0.0)


def _decimals(q_values: np.ndarray) -> int:
    """Enough decimals to tell the frame's Q-values apart (2 significant digits of their spread): an
    untrained network's are all within a few hundredths of each other. 2 at least, 4 at most."""
    finite = q_values[np.isfinite(q_values)]
    spread = finite.max() - finite.min() if len(finite) else 0.0
    return 2 if spread == 0 else int(np.clip(1 - math.floor(math.log10(spread)), 2, 4))


def _even(pixels: int) -> int:
    return pixels + pixels % 2


class QValueOverlay:
    """A filmed env whose frames carry the panel, and (``act``) the policy that plays it.

    ``decide`` runs as each observation arrives (in ``reset`` and ``step``, except on an episode's last
    frame, where nothing is decided), and ``act`` then returns that decision's action: the player calls
    it next with that same observation."""

    def __init__(
        self, env: Filmed, decide: Callable[[np.ndarray], Decision], names: list[str], epsilon: float
    ) -> None:
        self._env, self._decide, self._panel = env, decide, Panel(names, epsilon)
        self.fps = env.fps
        self._episode, self._step, self._score = 0, 0, 0.0
        self._decision: Decision | None = None

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        obs, frame = self._env.reset(seed)
        self._episode, self._step, self._score = self._episode + 1, 0, 0.0
        return obs, self._drawn(obs, frame, done=False)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, float, bool, np.ndarray]:
        obs, reward, done, frame = self._env.step(actions)
        self._step, self._score = self._step + 1, self._score + reward
        return obs, reward, done, self._drawn(obs, frame, done)

    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self._decision is not None, "act follows reset or a step that did not end the episode"
        return self._decision.actions

    def close(self) -> None:
        self._env.close()

    def _drawn(self, obs: np.ndarray, frame: np.ndarray, done: bool) -> np.ndarray:
        self._decision = None if done else self._decide(obs)
        reading = Reading(self._episode, self._step, self._score)
        if self._decision is not None:
            chosen = self._decision
            action, random = int(chosen.actions[0]), bool(chosen.random[0])
            reading = replace(reading, q_values=chosen.q_values[0], action=action, random=random)
        return self._panel.draw(frame, reading)
