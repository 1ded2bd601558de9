"""The `brainmm` command line: one subcommand module per stage, user errors as one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from brainmm import __version__

# Subcommand modules, each with `register(subparsers)`; they import heavy libraries lazily in handlers.
COMMAND_MODULES = (
    "brainmm.commands.data",
    "brainmm.commands.fmri",
    "brainmm.commands.pretrain",
    "brainmm.commands.embed",
    "brainmm.commands.genetics",
    "brainmm.commands.align",
    "brainmm.commands.evaluate",
    "brainmm.commands.pipeline",
    "brainmm.commands.brainlm",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="brainmm",
        description="Align brain activity (BrainLM) and genetics in one shared 512-D space.",
    )
    parser.add_argument("--version", action="version", version=f"brainmm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    from brainmm.errors import USER_ERRORS
    from brainmm.runtime import discard_new_log, setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.func(args)
    except USER_ERRORS as err:
        discard_new_log()  # a run refused for bad input leaves no files behind
        print(f"brainmm: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainmm: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
