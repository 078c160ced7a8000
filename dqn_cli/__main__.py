"""`python -m dqn_cli` runs the `dqn` command."""

from dqn_cli import main

main()
