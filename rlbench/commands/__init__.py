"""Subcommands of the ``rlbench`` command line (see rlbench.cli.COMMAND_MODULES)."""
