"""The command line: a thin layer over the modules; the only `__main__`.

Exit codes: 0 success, 2 bad input (one line naming the file, line, option or key), 1 internal
error (with a traceback, since it is a bug to report).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from hiersearch.cli import data, leaderboard, runs, serve, variants
from hiersearch.cli.common import EXIT_INPUT
from hiersearch.errors import InputError

__all__ = ["build_parser", "main"]

# The command groups in the order `hiersearch --help` lists them: each adds its subcommands'
# parsers and names their handlers (COMMANDS).
_GROUPS = (data, variants, runs, leaderboard, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiersearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = next(g.COMMANDS[args.command] for g in _GROUPS if args.command in g.COMMANDS)
    try:
        with _plain_warnings():
            return handler(args)
    except InputError as exc:
        print(f"hiersearch: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"hiersearch: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """What to run after a Ctrl-C: only `reproduce` and `search` can resume."""
    if args.command in runs.COMMANDS:
        return " (run the same command with --resume to continue)"
    return " (run the command again: no file is left half-written)"


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """Warnings as one line each, "hiersearch: warning: ...", without Python's
    `file:line: Category` prefix and the source line it prints after the message."""

    def show(message: Any, *_: Any, **__: Any) -> None:
        print(f"hiersearch: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # restores the default on the way out
        warnings.showwarning = show
        yield

