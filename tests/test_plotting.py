import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, dqn
from PIL import Image

from dqn_cli.errors import UserError
from dqn_cli.plotting import eval_points, group_runs, load_run, plot_runs, rolling_mean, seed_band

HEADER = "step,wall_time,episode_return,episode_length,loss,epsilon,eval_return\n"


def fake_run(
    folder: Path,
    seed: int,
    returns: list[float],
    evals: dict[int, float],
    lr: float = 1e-3,
    env_id: str = "CartPole-v1",
) -> Path:
    """A run folder whose episodes end every 100 steps with the given returns."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        f'env_id = "{env_id}"\nseed = {seed}\n[hyperparameters]\nlearning_rate = {lr}\n'
    )
    rows = [f"{100 * (i + 1)},0,{r},{r},,0.1," for i, r in enumerate(returns)]
    rows += [f"{step},0,,,,0.1,{value}" for step, value in evals.items()]
    (folder / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return folder


def test_rolling_mean_averages_the_last_window_episodes():
    assert rolling_mean([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert rolling_mean([4, 8], 10).tolist() == [4.0, 6.0]


def test_seeds_become_a_mean_with_a_min_max_band(tmp_path: Path):
    low = load_run(fake_run(tmp_path / "a", 1, [10.0] * 5, {200: 12.0, 400: 20.0}))
    high = load_run(fake_run(tmp_path / "b", 2, [30.0] * 3, {200: 40.0}))  # a shorter run
    grid, mean, lowest, highest = seed_band([low, high], smooth=2)
    assert grid[0] == 100 and grid[-1] == 500
    within_both = grid <= 300
    assert np.allclose(mean[within_both], 20.0) and np.allclose(lowest[within_both], 10.0)
    assert np.allclose(highest[within_both], 30.0)
    assert np.allclose(mean[~within_both], 10.0)  # past the short run only the long one counts
    steps, means, mins, maxs = eval_points([low, high])
    assert steps.tolist() == [200, 400] and means.tolist() == [26.0, 20.0]
    assert mins.tolist() == [12.0, 20.0] and maxs.tolist() == [40.0, 20.0]


def test_runs_differing_only_in_seed_share_a_curve_and_games_get_a_panel_each(tmp_path: Path):
    seeds = [load_run(fake_run(tmp_path / f"s{seed}", seed, [1.0], {})) for seed in (1, 2, 3)]
    other_lr = load_run(fake_run(tmp_path / "lr", 1, [1.0], {}, lr=5e-4))
    acrobot = load_run(fake_run(tmp_path / "acro", 1, [1.0], {}, env_id="Acrobot-v1"))
    games = group_runs([seeds[0], other_lr, acrobot, seeds[1], seeds[2]])
    assert games == {"CartPole-v1": [seeds, [other_lr]], "Acrobot-v1": [[acrobot]]}
    with Image.open(plot_runs([run.run_dir for run in (*seeds, acrobot)])) as image:
        assert image.size == (800, 840)


def test_one_run_plots_beside_itself_and_several_in_their_common_folder(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "runs" / "CartPole-v1" / "a"
    shutil.copytree(tiny_run, run)
    one = plot_runs([run])
    assert one == run / "curves.png"
    with Image.open(one) as image:
        assert image.format == "PNG" and image.size == (800, 420)
    other = fake_run(run.parent / "b", 2, [20.0, 30.0], {200: 25.0}, lr=5e-4)
    several = plot_runs([run, other])
    assert several == run.parent / "curves.png"
    with Image.open(several) as image:
        assert image.size == (800, 420)


def test_a_glob_or_a_folder_of_runs_plots_every_run_in_it(tiny_run: Path, tmp_path: Path):
    game = tmp_path / "runs" / "CartPole-v1"
    shutil.copytree(tiny_run, game / "a")
    fake_run(game / "b", 2, [20.0, 30.0], {200: 25.0}, lr=5e-4)
    assert plot_runs([game]) == game / "curves.png"
    # `runs/CartPole-v1/*` now also names that curves.png: it is passed over, not refused
    assert plot_runs(sorted(game.iterdir())) == game / "curves.png"
    bench = tmp_path / "runs" / "bench" / "demo"
    shutil.copytree(tiny_run, bench / "CartPole-v1-s1")
    (bench / "results.md").write_text("| table |")
    assert plot_runs([bench, bench / "results.md"]) == bench / "CartPole-v1-s1" / "curves.png"


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(UserError, match="not a run folder"):
        plot_runs([tmp_path])
    assert_one_line_error(dqn("plot", "nowhere", cwd=tmp_path), "no such run folder: nowhere")
    (tmp_path / "notes.txt").write_text("")
    assert_one_line_error(dqn("plot", "notes.txt", cwd=tmp_path), "none of the paths")
    (tmp_path / "notes.txt").unlink()
    assert_one_line_error(dqn("plot", ".", "--out", "x.jpg", cwd=tmp_path), ".png")
    assert list(tmp_path.iterdir()) == []


def test_dqn_plot_writes_the_png_it_names(tiny_run: Path, tmp_path: Path):
    result = dqn("plot", str(tiny_run), "--out", "figures/curves.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "figures/curves.png"
    with Image.open(tmp_path / "figures" / "curves.png") as image:
        assert image.format == "PNG"
