"""The hooks a sharded run calls while it works (planning, progress, notes). `SilentReporter`
is for --quiet / --json and for library callers; the CLI's rich view is maskgen.cli.reports."""

from __future__ import annotations


class Reporter:
    """Hooks the pipeline calls; every one is optional."""

    def planning(self, files_seen: int) -> None: ...

    def planned(self, plan, outcome: str, shards_done: int, walk_report) -> None: ...

    def start(self, total_images: int, done_images: int, failures: int) -> None: ...

    def update(self, done_images: int, failures: int) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None:
        """Stop any live display (also after an error or Ctrl-C)."""


class SilentReporter(Reporter):
    pass
