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
    "brainmm.commands.explain",
    "brainmm.commands.pipeline",
    "brainmm.commands.brainlm",
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose (sub)commands accept flags anywhere among the KEY=VALUE overrides.

    `--overwrite` between two overrides ends the `nargs="*"` positional for plain argparse; parsing intermixed
    (argparse's parse_intermixed_args) takes flags first and gives every remaining word to the positionals.
    Parsers that hold subcommands cannot be parsed that way and parse as usual.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """Intermixed where possible (see the class docstring)."""
        if self._intermixing or not self._can_intermix():
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def _can_intermix(self) -> bool:
        positionals = [a for a in self._actions if not a.option_strings]
        if any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in positionals):
            return False
        return not any(a in positionals for g in self._mutually_exclusive_groups for a in g._group_actions)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
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
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command without a description its one-line help as one, so `--help` always says what it does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if child.description is None and helps.get(name):
                    child.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe(child)


def _mark_interrupted_runs(before: set[str]) -> None:
    """End as KILLED the MLflow runs an interrupt left open: still active, or started by this process (through
    brainmm.tracking or the pipeline's client) and not ended. brainmm.tracking.start_run already ends its runs
    KILLED on the way out; this catches what an interrupt at an unlucky moment left behind (`before`: the runs
    that were open when this command started, left alone)."""
    fluent = sys.modules.get("mlflow")
    if fluent is None:
        return
    from brainmm.tracking import OPEN_RUNS, terminate

    try:
        while (active := fluent.active_run()) is not None:
            try:
                fluent.end_run("KILLED")  # leaves the active runs first, then sets the status
            except Exception as err:
                if "database is locked" not in str(err):
                    raise
                terminate(fluent.MlflowClient(), active.info.run_id, "KILLED")
            OPEN_RUNS.pop(active.info.run_id, None)
        for run_id, uri in list(OPEN_RUNS.items()):  # runs driven through the client (the pipeline's parent)
            if run_id not in before:
                terminate(fluent.MlflowClient(uri), run_id, "KILLED")
    except Exception as err:  # the interrupt is what the user must see; a tracking hiccup is secondary
        reason = " ".join(str(err).split())[:300]
        print(f"brainmm: could not mark the MLflow run as KILLED ({type(err).__name__}: {reason})", file=sys.stderr)


def _exit_interrupted() -> None:
    """Exit the program with 130 now that the interrupt is handled: flush the console and the run log, then skip
    the interpreter's shutdown, where a late signal (or CPython's record of a KeyboardInterrupt that crossed a C
    boundary) can still turn the exit into death by SIGINT (a stress run saw exit -2 once in 8)."""
    import contextlib
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted by Ctrl-C or SIGTERM)."""
    from brainmm.errors import USER_ERRORS
    from brainmm.interrupts import caused_by_interrupt, handle_interrupts, stop_on_first
    from brainmm.runtime import discard_new_log, setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    open_before = set(sys.modules["brainmm.tracking"].OPEN_RUNS) if "brainmm.tracking" in sys.modules else set()
    with handle_interrupts():  # Ctrl-C and SIGTERM: KeyboardInterrupt, held while a write is in progress
        try:
            rc = args.func(args)
        except BaseException as err:
            if caused_by_interrupt(err):  # also an error raised by the cleanup of an interrupt
                stop_on_first()  # a second Ctrl-C / SIGTERM must not cut the cleanup short
                _mark_interrupted_runs(open_before)
                print("brainmm: interrupted", file=sys.stderr)
                if argv is None:  # the program itself (console script, python -m brainmm.cli), not a caller
                    _exit_interrupted()
                return 130
            if not isinstance(err, USER_ERRORS):  # a bug: its traceback
                raise
            discard_new_log()  # a run refused for bad input leaves no files behind
            print(f"brainmm: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
