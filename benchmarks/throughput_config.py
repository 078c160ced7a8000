"""The one fixed training config both tools run in the throughput benchmark (CleanRL's CartPole DQN)."""

FIXED_CONFIG = {
    "learning_rate": 2.5e-4,
    "buffer_size": 10_000,
    "learning_starts": 10_000,
    "batch_size": 128,
    "gamma": 0.99,
    "tau": 1.0,
    "target_update_interval": 500,
    "train_freq": 10,
    "gradient_steps": 1,
    "exploration_fraction": 0.5,
    "exploration_initial_eps": 1.0,
    "exploration_final_eps": 0.05,
    "max_grad_norm": 10.0,
    "net_arch": [120, 84],
}
