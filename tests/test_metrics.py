from pathlib import Path

from dqn_cli.metrics import read_metrics


def test_read_metrics_splits_episodes_from_evaluations_and_skips_a_half_written_row(tmp_path: Path):
    (tmp_path / "metrics.csv").write_text(
        "step,wall_time,episode_return,episode_length,loss,epsilon,eval_return\n"
        "10,0.1,10,10,,1.0,\n"
        "25,0.2,15,15,0.5,0.9,\n"
        "30,0.3,,,,0.9,42.5\n"
        "41,0.4,1"  # training was writing this row when it was read
    )
    curves = read_metrics(tmp_path)
    assert curves.episode_steps == [10, 25] and curves.episode_returns == [10.0, 15.0]
    assert curves.eval_steps == [30] and curves.eval_returns == [42.5]
    assert (curves.last_step, curves.last_wall_time) == (30, 0.3)


def test_tensorboard_reads_the_scalars_from_the_run_folder(tiny_run: Path):
    """`tensorboard --logdir runs` finds each run's events in the run folder itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/mean_return", "rollout/episode_return", "rollout/epsilon"} <= tags
    eval_steps = [scalar.step for scalar in events.Scalars("eval/mean_return")]
    assert eval_steps == read_metrics(tiny_run).eval_steps == [300, 600]
