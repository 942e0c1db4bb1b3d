"""privtune command line: one sub-command module per concern, each exposing ``register(subparsers)``.

Each module adds its sub-parsers and sets ``func`` on them; ``main`` only dispatches. Errors that are the
user's to fix (:class:`privtune.errors.PrivtuneError`) are printed as one clear line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from privtune.errors import PrivtuneError

# Sub-command modules, in the order their commands are listed in --help.
COMMAND_MODULES = (
    "privtune.cli.accounting",  # epsilon, noise, plan
    "privtune.cli.train",  # train, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privtune",
        description="Differentially private fine-tuning of language models, accounting and audits.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PrivtuneError as exc:
        print(f"privtune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
