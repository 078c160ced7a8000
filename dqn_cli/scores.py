"""Human-normalized Atari scores and their aggregates over seeds and games, as Agarwal et al. (2021),
"Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS), recommend: the
interquartile mean (IQM), robust to the outlier games a mean follows and less noisy than a median, with
stratified-bootstrap confidence intervals, since a few seeds per game leave the estimate uncertain.

A few lines of numpy instead of their ``rliable`` library, which would bring scipy, arch and absl for
three statistics and one resampling loop. The definitions are rliable's: IQM is the 25% trimmed mean of
every (seed, game) score (``scipy.stats.trim_mean(x, 0.25)``: ``int(n / 4)`` scores cut from each end),
mean and median are taken over the games' mean scores, and the interval is the 95% percentile interval
of resamples that redraw each game's seeds from its own seeds. The resampling seed is fixed, so
results.md written from the same runs is the same.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np

from dqn_cli.atari import AtariSettings, is_atari

SCORES_FILE = "atari_scores.toml"  # in the package; its header cites the papers the scores come from
CONFIDENCE = 0.95
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Baselines:
    """A game's random-policy and human scores: 0 and 1 on its human-normalized scale."""

    random: float
    human: float

    def normalize(self, score: float) -> float:
        return (score - self.random) / (self.human - self.random)


@functools.cache
def reference_scores() -> dict[str, Baselines]:
    """The data file's games, by ale-py game name."""
    text = (resources.files("dqn_cli") / SCORES_FILE).read_text(encoding="utf-8")
    return {game: Baselines(**scores) for game, scores in tomllib.loads(text).items()}


def atari_game(env_id: str) -> str | None:
    """The ale-py game an Atari env id plays (``ALE/Pong-v5`` -> ``pong``); None for other envs."""
    return AtariSettings.for_env(env_id).game if is_atari(env_id) else None


def baselines(env_id: str) -> Baselines | None:
    """None where there is no scale: an env that is not Atari, or a game the data file lacks."""
    game = atari_game(env_id)
    return None if game is None else reference_scores().get(game)


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last two axes (runs, games), all runs of all games pooled."""
    pooled = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    cut = pooled.shape[-1] // 4
    return pooled[..., cut : pooled.shape[-1] - cut].mean(axis=-1)


def mean_of_games(scores: np.ndarray) -> np.ndarray:
    return scores.mean(axis=-2).mean(axis=-1)


def median_of_games(scores: np.ndarray) -> np.ndarray:
    return np.median(scores.mean(axis=-2), axis=-1)


# Each maps (..., runs, games) to (...), so that one call scores every bootstrap resample.
AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "IQM": iqm,
    "mean": mean_of_games,
    "median": median_of_games,
}


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # the confidence interval's bounds
    high: float


def interval_estimates(
    scores: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> dict[str, Estimate]:
    """Each of ``AGGREGATES`` over ``scores`` (runs x games) with its percentile interval from ``reps``
    stratified-bootstrap resamples: every game keeps its column and draws its runs with replacement from
    its own, so the interval is the uncertainty of re-running the seeds, not of choosing other games."""
    runs, games = scores.shape
    picks = np.random.default_rng(seed).integers(runs, size=(reps, runs, games))
    resamples = scores[picks, np.arange(games)]
    tail = 100 * (1 - CONFIDENCE) / 2
    estimates = {}
    for name, aggregate in AGGREGATES.items():
        low, high = np.percentile(aggregate(resamples), [tail, 100 - tail])
        estimates[name] = Estimate(float(aggregate(scores)), float(low), float(high))
    return estimates
