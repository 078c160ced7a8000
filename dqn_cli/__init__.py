"""dqn: train, evaluate and record Deep Q-Network agents on games from the command line."""

__version__ = "0.1.0"
