"""What the benchmarks' argparse parsers share (argparse and the standard library only, so
that `python -m maskgen.bench --help` stays fast)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn


def prog(what: str) -> str:
    """The name a benchmark's usage line shows: how it is run."""
    return f"python -m maskgen.bench {what}"


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (as typer's `min=`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    return parse


def fail(message: str, code: int = 2) -> NoReturn:
    """`error: message` on one line on stderr, then exit (2: a user mistake, as the CLI)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
