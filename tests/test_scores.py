"""Human-normalized Atari scores, their aggregates (IQM, mean, median) with bootstrap intervals, and how
`dqn bench` reports them."""

import json
import tomllib
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import dqn

from dqn_cli.atari import ALE_ENTRY_POINT, register_atari_ids
from dqn_cli.bench import SeedResult, _json_row, _table
from dqn_cli.scores import (
    SCORES_FILE,
    atari_game,
    baselines,
    interval_estimates,
    iqm,
    mean_of_games,
    median_of_games,
    reference_scores,
)

# The 49 games of Mnih et al. 2015 (Nature), Extended Data Table 2, and the 8 more of Atari-57, by
# ale-py name.
# fmt: off
NATURE_GAMES = [
    "alien", "amidar", "assault", "asterix", "asteroids", "atlantis", "bank_heist", "battle_zone",
    "beam_rider", "bowling", "boxing", "breakout", "centipede", "chopper_command", "crazy_climber",
    "demon_attack", "double_dunk", "enduro", "fishing_derby", "freeway", "frostbite", "gopher", "gravitar",
    "hero", "ice_hockey", "jamesbond", "kangaroo", "krull", "kung_fu_master", "montezuma_revenge",
    "ms_pacman", "name_this_game", "pong", "private_eye", "qbert", "riverraid", "road_runner", "robotank",
    "seaquest", "space_invaders", "star_gunner", "tennis", "time_pilot", "tutankham", "up_n_down",
    "venture", "video_pinball", "wizard_of_wor", "zaxxon",
]
ATARI_57_EXTRA = [
    "berzerk", "defender", "phoenix", "pitfall", "skiing", "solaris", "surround", "yars_revenge",
]
# fmt: on


def test_the_data_file_holds_random_below_human_for_the_57_games_by_ale_py_name():
    text = (resources.files("dqn_cli") / SCORES_FILE).read_text(encoding="utf-8")
    table = tomllib.loads(text)
    assert len(NATURE_GAMES) == 49
    assert sorted(table) == sorted(NATURE_GAMES + ATARI_57_EXTRA)
    register_atari_ids()
    ale_games = {s.kwargs["game"] for s in gym.registry.values() if s.entry_point == ALE_ENTRY_POINT}
    assert set(table) <= ale_games
    assert all(set(scores) == {"random", "human"} for scores in table.values())
    assert all(scores.human > scores.random for scores in reference_scores().values())
    assert "Human-level control" in text and "Agent57" in text  # the papers are cited


def test_human_normalized_is_zero_at_random_and_one_at_human_play():
    pong = baselines("ALE/Pong-v5")
    assert (pong.random, pong.human) == (-20.7, 14.6)
    assert pong.normalize(-20.7) == 0.0
    assert pong.normalize(14.6) == 1.0
    assert pong.normalize(-3.05) == pytest.approx(0.5)
    assert pong.normalize(21.0) == pytest.approx(41.7 / 35.3)  # above human: above 1
    breakout = baselines("BreakoutNoFrameskip-v4")  # any id of a game: its ale-py name is the key
    assert breakout.normalize(1.7) == 0.0 and breakout.normalize(30.5) == 1.0


def test_only_atari_games_in_the_data_file_have_a_scale():
    assert atari_game("ALE/SpaceInvaders-v5") == "space_invaders"
    assert atari_game("CartPole-v1") is None and baselines("CartPole-v1") is None
    assert atari_game("ALE/Adventure-v5") == "adventure" and baselines("ALE/Adventure-v5") is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5, 1, 8, 3, 2, 7, 4, 6], (3 + 4 + 5 + 6) / 4),  # 8 values: the middle 4
        ([-100, 1000, 2, 0, 1, 3, 1, 2], (1 + 1 + 2 + 2) / 4),  # the outliers are cut
        ([10, 1, 2, 3, -10], (1 + 2 + 3) / 3),  # int(5 / 4) = 1 cut from each end
        ([1, 2, 9], 4.0),  # int(3 / 4) = 0: nothing cut, the mean
        ([4, 4, 4, 1, 4, 9, 4, 4, 0, 4], 4.0),  # ties: 2 cut from each end, 6 fours left
    ],
)
def test_iqm_is_the_25_percent_trimmed_mean_of_every_run(values: list[float], expected: float):
    assert iqm(np.array([values], dtype=float)) == pytest.approx(expected)
    assert iqm(np.array([values], dtype=float).T) == pytest.approx(expected)  # pooled over runs and games


def test_mean_and_median_are_over_the_games_mean_scores():
    scores = np.array([[0.0, 1.0, 10.0], [2.0, 3.0, 20.0]])  # runs x games; game means 1, 2, 15
    assert mean_of_games(scores) == pytest.approx(6.0)
    assert median_of_games(scores) == pytest.approx(2.0)


def test_bootstrap_intervals_hold_their_estimate_and_repeat_with_their_seed():
    scores = np.random.default_rng(7).normal(1.0, 0.5, size=(5, 4))
    estimates = interval_estimates(scores, reps=2_000)
    assert list(estimates) == ["IQM", "mean", "median"]
    assert estimates["IQM"].value == pytest.approx(iqm(scores))
    for e in estimates.values():
        assert e.low < e.value < e.high
    assert interval_estimates(scores, reps=2_000) == estimates
    assert interval_estimates(scores, reps=2_000, seed=1) != estimates


def test_the_bootstrap_redraws_seeds_within_each_game():
    """Each game's runs all score the same: every stratified resample is the data itself, where
    resampling across games would mix them."""
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    for e in interval_estimates(scores, reps=500).values():
        assert e.low == e.value == e.high == 0.5


def _results(scores: dict[str, list[float]]) -> list[SeedResult]:
    return [
        SeedResult(env_id, seed, f"runs/bench/t/{seed}", 600, 2.0, score, score - 1.0)
        for env_id, returns in scores.items()
        for seed, score in enumerate(returns, 1)
    ]


def test_an_atari_bench_table_has_human_normalized_scores_and_their_aggregate():
    results = _results({"ALE/Pong-v5": [-20.7, 14.6], "ALE/Breakout-v5": [1.7, 16.1]})
    table = _table(results, ["ALE/Pong-v5", "ALE/Breakout-v5"])
    assert "| best model, human-normalized: mean ± std (min) |" in table
    assert "| ALE/Pong-v5 | 2 | -3.0 ± 17.6 (-20.7) |" in table
    assert table.splitlines()[2].endswith("| 0.50 ± 0.50 (0.00) |")
    assert table.splitlines()[3].endswith("| 0.25 ± 0.25 (0.00) |")
    assert "over 4 runs (2 seeds of 2 Atari games), with 95% stratified-bootstrap" in table
    pong, breakout = baselines("ALE/Pong-v5"), baselines("ALE/Breakout-v5")
    runs = np.array([[pong.normalize(r), breakout.normalize(b)] for r, b in [(-20.7, 1.7), (14.6, 16.1)]])
    for name, e in interval_estimates(runs).items():
        assert f"{name} {e.value:.2f} [{e.low:.2f}, {e.high:.2f}]" in table
    assert interval_estimates(runs)["mean"].value == pytest.approx(0.375)
    assert "| env | seed | best model | final model | env steps | wall time | human-normalized |" in table
    assert "| ALE/Pong-v5 | 2 | 14.6 | 13.6 | 600 | 2.0 s | 1.00 |" in table
    assert "| ALE/Breakout-v5 | 2 | 16.1 | 15.1 | 600 | 2.0 s | 0.50 |" in table
    assert json.loads(json.dumps(_json_row(results[1])))["human_normalized"] == 1.0


def test_a_game_without_reference_scores_gets_a_dash_and_a_note_and_other_envs_a_dash():
    results = _results(
        {"ALE/Adventure-v5": [0.0, 1.0], "ALE/Pong-v5": [-20.7, -20.7], "CartPole-v1": [9, 11]}
    )
    table = _table(results, ["ALE/Adventure-v5", "ALE/Pong-v5", "CartPole-v1"])
    assert "| ALE/Adventure-v5 | 2 | 0.5 ± 0.5 (0.0) | -0.5 ± 0.5 (-1.0) | 600 | 2.0 s | - |" in table
    assert "| CartPole-v1 | 2 | 10.0 ± 1.0 (9.0) | 9.0 ± 1.0 (8.0) | 600 | 2.0 s | - |" in table
    assert "| ALE/Adventure-v5 | 1 | 0.0 | -1.0 | 600 | 2.0 s | - |" in table
    assert "Note: ALE/Adventure-v5 has no human-normalized score" in table and "adventure" in table
    assert "over 2 runs (2 seeds of 1 Atari game)" in table and "IQM 0.00 [0.00, 0.00]" in table
    assert _json_row(results[0])["human_normalized"] is None
    assert "human_normalized" not in _json_row(results[-1])


def test_a_bench_without_atari_games_has_no_human_normalized_scores():
    table = _table(_results({"CartPole-v1": [9, 11]}), ["CartPole-v1"])
    assert "normalized" not in table
    assert table.splitlines()[1] == "| --- | --- | --- | --- | --- | --- |"
    assert "| CartPole-v1 | 2 | 10.0 ± 1.0 (9.0) | 9.0 ± 1.0 (8.0) | 600 | 2.0 s |" in table


@pytest.mark.slow
def test_an_atari_bench_writes_human_normalized_scores(tmp_path: Path):
    tiny = [
        "n_timesteps=200",
        "learning_starts=100",
        "buffer_size=1000",
        "eval_freq=0",
        "eval_max_frames=100",
    ]
    sets = [arg for item in tiny for arg in ("--set", item)]
    result = dqn("bench", "ALE/Pong-v5", "--seeds", "2", "--name", "t", *sets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bench = tmp_path / "runs" / "bench" / "t"
    rows = json.loads((bench / "results.json").read_text())
    pong = baselines("ALE/Pong-v5")
    assert [r["human_normalized"] for r in rows] == [pong.normalize(r["best_model_return"]) for r in rows]
    table = (bench / "results.md").read_text()
    assert "over 2 runs (2 seeds of 1 Atari game)" in table and "IQM " in table
