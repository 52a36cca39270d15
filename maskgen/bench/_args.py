"""What the benchmarks' argparse parsers share (argparse and the standard library only, so
that `python -m maskgen.bench --help` stays fast)."""

from __future__ import annotations

import argparse
import os
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


def memory_folder() -> str | None:
    """tmpfs where there is one: a benchmark then times maskgen, not the disk. (On this
    project's ext4 VM, creating a file costs ~0.07 ms, or ~0.4 ms a few seconds after many
    were deleted and synced: that would swamp a per-image figure, and make one run of a
    comparison slower than the next for no reason of its own.)"""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
