"""Evaluation follows a published protocol and ends in bounded time: episodes stop at eval_max_frames
(truncated, their return so far counted) in every evaluation, and play uses the run's eval_epsilon;
`dqn record` stops at --max-frames and --best-of films the best of N episodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, dqn

from dqn_cli.atari import AtariSettings
from dqn_cli.envs import make_vector_env
from dqn_cli.errors import UserError
from dqn_cli.evaluation import evaluate, load_trained, make_policy, record_video, score_policy
from dqn_cli.hyperparameters import Hyperparameters, apply_overrides, saved_hyperparameters
from dqn_cli.networks import build_q_network, network_spec
from dqn_cli.presets import resolve
from dqn_cli.training import train

ATARI = "ALE/Breakout-v5"


class Idle:
    """Action 0 in every env, counting the vector steps asked for. Breakout's NOOP never serves again once
    the first ball is lost, and MountainCar pushed left never reaches the flag: only a cap ends them."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.steps += 1
        return np.zeros(len(obs), dtype=np.int64)


def capped(hp: Hyperparameters, **overrides) -> Hyperparameters:
    return apply_overrides(hp, overrides)


def returns_of(result) -> list[float]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["returns"]


# ------------------------------------------------------------------------------------- the protocol


def test_the_atari_preset_evaluates_as_mnih_et_al_2015_and_others_greedily():
    atari, classic = resolve("ALE/Pong-v5")[1], resolve("CartPole-v1")[1]
    assert (atari.eval_epsilon, atari.eval_max_frames, atari.noop_max) == (0.05, 18_000, 30)
    assert (classic.eval_epsilon, classic.eval_max_frames) == (0.0, 18_000)
    old_run = saved_hyperparameters({"n_timesteps": 1_000}, "an old run's config.toml")  # keys missing
    assert (old_run.eval_epsilon, old_run.eval_max_frames) == (0.0, 18_000)


@pytest.mark.parametrize("frame_skip", [4, 2])
def test_an_atari_evaluation_episode_ends_at_eval_max_frames_emulator_frames(frame_skip: int):
    hp = capped(resolve(ATARI)[1], frame_skip=frame_skip, eval_max_frames=400)
    idle = Idle()
    assert len(evaluate(idle, ATARI, 2, 0, hp)) == 2
    assert idle.steps == 400 // frame_skip  # both envs' games end together, at the cap
    # Only evaluation is capped, never beyond the id's own 108,000 frames; training keeps the id's cap.
    assert AtariSettings.for_env(ATARI, hp).max_frames_per_episode == 108_000
    assert AtariSettings.for_env(ATARI, hp, 10**9).max_frames_per_episode == 108_000


def test_a_classic_evaluation_episode_ends_at_eval_max_frames_never_past_the_envs_limit():
    short = capped(Hyperparameters(), eval_max_frames=50)
    assert evaluate(Idle(), "MountainCar-v0", 3, 0, short) == [-50.0] * 3  # -1 per step, counted to the cap
    long = capped(Hyperparameters(), eval_max_frames=1_000)
    assert evaluate(Idle(), "MountainCar-v0", 1, 0, long) == [-200.0]  # MountainCar's own limit stays
    training = make_vector_env("MountainCar-v0", 1, short)  # a training env: the env's limit, uncapped
    try:
        training.reset(seed=0)
        ended = [bool(training.step(np.zeros(1, dtype=np.int64))[3][0]) for _ in range(200)]
        assert ended.index(True) == 199
    finally:
        training.close()


def test_training_evaluates_with_the_frame_cap(tmp_path: Path):
    sets = ["n_timesteps=200", "learning_starts=100", "eval_freq=200", "eval_episodes=2", "net_arch=[16]"]
    preset, hp = resolve("MountainCar-v0", sets=[*sets, "eval_max_frames=30"])
    result = train(
        "MountainCar-v0", hp, seed=0, preset=preset, run_dir=tmp_path / "run", device="cpu", quiet=True
    )
    assert result.last_eval == -30.0  # no policy reaches the flag in 30 steps


def test_scoring_plays_with_the_runs_eval_epsilon_by_default(tiny_run: Path):
    trained = load_trained(tiny_run, device="cpu")
    random_eval = capped(trained.hyperparameters, eval_epsilon=1.0)

    def score(hp: Hyperparameters, epsilon: float | None = None) -> list[float]:
        return score_policy(
            trained.q_network, trained.n_actions, "CartPole-v1", hp, 6, 0, trained.device, epsilon
        )

    assert (
        score(random_eval)
        == score(random_eval, 1.0)
        != score(random_eval, 0.0)
        == score(trained.hyperparameters)
    )


def test_dqn_eval_plays_with_the_runs_eval_epsilon_unless_given_one(tiny_run: Path, tmp_path: Path):
    model = tmp_path / "best.safetensors"
    shutil.copy(tiny_run / "best.safetensors", model)
    meta = json.loads((tiny_run / "best.json").read_text())
    meta["hyperparameters"]["eval_epsilon"] = 1.0
    model.with_suffix(".json").write_text(json.dumps(meta))
    trained = load_trained(model, device="cpu")
    args = ["eval", str(model), "--episodes", "4", "--json", "--device", "cpu"]
    assert returns_of(dqn(*args, cwd=tmp_path)) == trained.score(4, 0, epsilon=1.0)
    assert returns_of(dqn(*args, "--epsilon", "0", cwd=tmp_path)) == trained.score(4, 0, epsilon=0.0)


# ------------------------------------------------------------------------------------------ recording


def test_record_stops_at_max_frames_and_reports_the_cut(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "cut.mp4"
    result = dqn(
        "record", str(tiny_run), "--episodes", "50", "--max-frames", "40", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.split()[0] == "40" and "cut at --max-frames 40" in result.stderr
    assert len(list(iio.imiter(out))) == 40


def test_a_cut_episode_counts_what_was_filmed(tiny_run: Path, tmp_path: Path):
    trained = load_trained(tiny_run, device="cpu")
    played = record_video(trained.policy(0), "CartPole-v1", 50, 0, tmp_path / "c.mp4", max_frames=40)
    assert played.cut and played.frames == 40
    assert sum(r + 1 for r in played.returns) == 40  # CartPole: 1 per step, each episode a reset frame more


def test_best_of_films_the_highest_scoring_of_the_episodes_played(tiny_run: Path, tmp_path: Path):
    trained = load_trained(tiny_run, device="cpu")
    policy = trained.policy(5, epsilon=0.3)  # random actions too: the policy's generator is replayed
    played = record_video(policy, "CartPole-v1", 1, 5, tmp_path / "best.mp4", best_of=4)
    best = max(played.candidates)
    assert len(played.candidates) == 4 and played.returns == [best] and not played.cut
    assert played.seed == 5 + played.candidates.index(best)
    assert played.frames == best + 1  # the filmed episode is the scored one, step for step


def test_best_of_and_max_frames_on_atari_an_untrained_network_plays(tmp_path: Path):
    torch.manual_seed(0)
    spec = network_spec((4, 84, 84), 4, [512], dueling=False, precision="float32", obs_dtype="uint8")
    policy = make_policy(build_q_network(spec), 4, 0.05, 0, torch.device("cpu"))
    hp = capped(resolve(ATARI)[1], eval_max_frames=200)
    played = record_video(policy, ATARI, 1, 0, tmp_path / "best.mp4", hp, best_of=3)
    assert played.returns == [max(played.candidates)] and played.frames <= 51  # 200 frames, 50 steps
    cut = record_video(Idle(), ATARI, 3, 0, tmp_path / "cut.mp4", hp, max_frames=75)
    assert (cut.frames, cut.cut, len(cut.returns)) == (75, True, 2)  # a whole game of 51 frames, 24 more


@pytest.mark.slow
def test_dqn_record_bounds_an_untrained_atari_agent(untrained_atari_run: Path, tmp_path: Path):
    out = tmp_path / "best.mp4"
    result = dqn("record", str(untrained_atari_run), "--best-of", "2", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the best of 2 episodes" in result.stderr and "cut" not in result.stderr
    frames = list(iio.imiter(out))
    assert len(frames) <= 101 and frames[0].shape == (210, 160, 3)  # eval_max_frames 400 = 100 steps


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["record", "--best-of", "3", "--episodes", "2"], ["--best-of", "--episodes"]),
        (["record", "--best-of", "0"], ["--best-of"]),
        (["record", "--max-frames", "0"], ["--max-frames"]),
        (["eval", "--epsilon", "1.5"], ["--epsilon"]),
        (["train", "CartPole-v1", "--set", "eval_max_frames=0"], ["eval_max_frames", "> 0"]),
    ],
)
def test_bad_values_are_one_line(args: list[str], fragments: list[str], tmp_path: Path):
    assert_one_line_error(dqn(*args, cwd=tmp_path), *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("eval_epsilon", -0.1), ("eval_epsilon", 1.5), ("eval_max_frames", 0), ("eval_max_frames", 1.5)],
)
def test_the_evaluation_hyperparameters_are_checked(key: str, value: float):
    with pytest.raises(UserError, match=f"^invalid value for {key}: {value}"):
        apply_overrides(Hyperparameters(), {key: value})
