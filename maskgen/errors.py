"""One way to say what went wrong on one line: for a manifest row's `error` and for the
CLI's `error: ...` message."""

from __future__ import annotations


def one_line(error: BaseException | str, *, limit: int = 500, last: bool = False, joined: bool = False) -> str:
    """The first line of an exception's text (last=True: its last line, where a remote
    traceback ends with the message; joined=True: all its lines joined), whitespace
    collapsed, at most `limit` characters; the exception's class name when it has no text."""
    lines = [" ".join(line.split()) for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    if joined:
        lines = [" ".join(lines)] if lines else []
    text = (lines[-1] if last else lines[0]) if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
    return text if len(text) <= limit else text[: limit - 1] + "…"
