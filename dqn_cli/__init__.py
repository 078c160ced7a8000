"""dqn: train, evaluate and record Deep Q-Network agents on games from the command line."""

import sys

__version__ = "0.1.0"


def main() -> None:
    """The `dqn` command. Ctrl-C while its modules are still loading (before the command can handle it)
    ends it quietly with exit 130 instead of a traceback from inside an import."""
    try:
        from dqn_cli.cli import main as run_command
    except KeyboardInterrupt:
        sys.exit(130)
    run_command()
