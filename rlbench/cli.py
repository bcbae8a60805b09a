"""The ``rlbench`` command line. Each subcommand lives in its own module with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rlbench.errors import USER_ERRORS

#: Modules that contribute subcommands; each defines ``register(subparsers)`` which adds a
#: parser whose ``func(args) -> int`` runs the command.
COMMAND_MODULES = [
    "rlbench.commands.envs_cmd",
    "rlbench.commands.runs_cmd",
    "rlbench.commands.plan_cmd",
    "rlbench.commands.compare_cmd",
    "rlbench.commands.linreg_cmd",
    "rlbench.commands.maml_variants_cmd",
]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2 (argparse's default code),
    without the usage text; the command line's and scripts/'s."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog.split()[0]}: error: {message}\n")


def check_out(out: str | None, makes_dirs: bool = False) -> str | None:
    """What is wrong with an ``--out`` path (checked before a benchmark runs, so that one that
    cannot be written does not cost the run), or None. ``makes_dirs``: the script creates a
    missing directory itself. For scripts/'s benchmarks, whose ``--out`` is one JSON file."""
    if not out:
        return None
    path = os.path.abspath(out)
    if os.path.isdir(path):
        return f"--out {out} is a directory"
    if not makes_dirs and not os.path.isdir(os.path.dirname(path)):
        return f"--out {out}: directory {os.path.dirname(path)} does not exist"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rlbench", description="Equal-budget meta-RL benchmark: DRS vs MAML.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"rlbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only or vanished destination: one line, files intact
        where = f"{e.filename}: " if e.filename and str(e.filename) not in str(e.strerror or "") else ""
        print(f"rlbench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
