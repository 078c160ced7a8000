"""The one Atari config both tools run in the throughput benchmark: RL Zoo's Atari DQN preset with a
short warm-up and a small replay, so the timed part is learning, not filling memory."""

ENV_ID = "PongNoFrameskip-v4"

ATARI_CONFIG = {
    "learning_rate": 1e-4,
    "buffer_size": 10_000,
    "learning_starts": 1_000,
    "batch_size": 32,
    "gamma": 0.99,
    "tau": 1.0,
    "target_update_interval": 1_000,
    "train_freq": 4,
    "gradient_steps": 1,
    "exploration_fraction": 0.1,
    "exploration_initial_eps": 1.0,
    "exploration_final_eps": 0.01,
    "max_grad_norm": 10.0,
}


def sb3_kwargs() -> dict:
    """ATARI_CONFIG as Stable-Baselines3 DQN arguments (same names; the network is its CnnPolicy)."""
    return dict(ATARI_CONFIG)
