"""Evaluation and recording report each finished episode (what the progress bars of `dqn eval` and
`dqn record` count), exactly once per episode asked for."""

from pathlib import Path

from dqn_cli.evaluation import evaluate, load_trained, make_policy, record_video


def test_every_evaluated_and_recorded_episode_is_reported_once(tiny_run: Path, tmp_path: Path):
    trained = load_trained(tiny_run, device="cpu")
    policy = make_policy(trained.q_network, trained.n_actions, 0.0, 0, trained.device)
    reported: list[str] = []
    returns = evaluate(policy, "CartPole-v1", 5, 0, on_episode=lambda: reported.append("eval"))
    assert len(returns) == 5 and reported == ["eval"] * 5

    reported.clear()
    returns = record_video(
        policy, "CartPole-v1", 2, 0, tmp_path / "two.mp4", on_episode=lambda: reported.append("rec")
    ).returns
    assert len(returns) == 2 and reported == ["rec"] * 2
