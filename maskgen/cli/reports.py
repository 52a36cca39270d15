"""What the sharded commands print with rich: the live progress of a run, its summary, and
`maskgen inspect`'s report."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from maskgen.pipeline.progress import Reporter


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} img/s" if speed else "-- img/s", style="progress.data.speed")


class FailuresColumn(ProgressColumn):
    def render(self, task) -> Text:
        failures = task.fields.get("failures", 0)
        return Text(f"{failures:,} failed", style="red" if failures else "dim")


class RichReporter(Reporter):
    """The live view, on stderr so that stdout stays for results."""

    def __init__(self, console: Console | None = None, label: str = "generate"):
        self.console = console or Console(stderr=True)
        self.label = label  # the command's name, shown on the bar
        self.progress: Progress | None = None
        self.task = None
        self.completed = 0
        self.status = None

    def planning(self, files_seen: int) -> None:
        text = f"planning: {files_seen:,} inputs so far"
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def planned(self, plan, outcome: str, shards_done: int, walk_report) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        what = {"new": "planned", "resumed": "resuming", "replaced": "replaced the previous run;",
                "retried": "retrying the failed inputs of"}[outcome]
        extra = f", {walk_report.hidden} hidden files skipped" if walk_report.hidden else ""
        self.console.print(
            f"{what} {plan.n_inputs:,} inputs in {plan.n_shards:,} shards of {plan.shard_size:,}"
            f" ({shards_done:,} already done{extra})"
        )

    def start(self, total_images: int, done_images: int, failures: int) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            FailuresColumn(),
            console=self.console,
            speed_estimate_period=60,
        )
        self.progress.start()
        self.completed = done_images
        self.task = self.progress.add_task(self.label, total=total_images, completed=done_images, failures=failures)

    def update(self, done_images: int, failures: int) -> None:
        if self.progress is not None and done_images >= self.completed:
            self.completed = done_images
            self.progress.update(self.task, completed=done_images, failures=failures)

    def note(self, message: str) -> None:
        (self.progress.console if self.progress else self.console).print(f"[yellow]{escape(message)}[/yellow]", soft_wrap=True)

    def close(self) -> None:
        for live in (self.status, self.progress):
            if live is not None:
                live.stop()
        self.status = self.progress = None


def summary_table(summary, label: str = "generate") -> Table:
    table = Table(title=f"{label}: summary", show_header=True, header_style="bold")
    table.add_column("status")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for status, count in sorted(summary.statuses.items(), key=lambda kv: (kv[0] != "ok", -kv[1])):
        share = f"{count / summary.rows:.1%}" if summary.rows else "-"
        table.add_row(Text(status, style="green" if status == "ok" else "red"), f"{count:,}", share)
    table.add_section()
    table.add_row("all rows", f"{summary.rows:,}", "")
    return table


def print_summary(summary, console: Console, label: str = "generate") -> None:
    console.print(summary_table(summary, label))
    if summary.examples:
        console.print("[bold]failure examples[/bold]")
        for ex in summary.examples[:5]:
            console.print(f"  [red]{ex['status']}[/red] {escape(ex['src_path'])}: {escape(ex['error'])}", highlight=False, soft_wrap=True)
    shards = f"{summary.shards_already_done + summary.shards_done_now:,}/{summary.shards_total:,} shards done"
    rate = (
        f" ({summary.images_this_run:,} images in {summary.processing_s:,.1f} s, {summary.images_per_s:,.1f} images/s"
        f" on {summary.workers} worker{'s' if summary.workers != 1 else ''})" if summary.images_this_run else ""
    )
    console.print(f"{summary.inputs:,} inputs, {shards}, {summary.shards_already_done:,} of them from before; "
                  f"{summary.elapsed_s:,.1f} s in all{rate}", soft_wrap=True)
    if summary.stopped:  # one message: the shards in flight failed the same way
        console.print(f"[bold red]stopped:[/bold red] {escape(summary.stopped)}; no shard was started after it. "
                      "Fix it and re-run the same command to finish", highlight=False, soft_wrap=True)
        return print_outputs(summary, console)
    for index, error in summary.failed_shards.items():
        console.print(f"[bold red]shard {index} failed:[/bold red] {escape(error)}", highlight=False, soft_wrap=True)
    if summary.failed_shards:
        console.print("[red]incomplete run[/red]: re-run the same command to retry the failed shards")
    if getattr(summary, "finished", ""):
        console.print(escape(summary.finished), highlight=False, soft_wrap=True)
    print_outputs(summary, console)


def print_outputs(summary, console: Console) -> None:
    console.print(f"images:   {escape(summary.images_dir)}", highlight=False, soft_wrap=True)
    console.print(f"manifest: {escape(summary.manifest_dir)}   (pandas.read_parquet on this folder)", highlight=False, soft_wrap=True)


def print_preview(shown, console: Console, label: str = "generate") -> None:
    """`--dry-run`: the plan and what the run would do, in a few lines (printed even with --quiet)."""
    what = {"new": "a new run", "resumed": "a resume", "replaced": "replacing the run there (--overwrite)",
            "retried": "retrying the failed inputs"}[shown.plan]
    hidden = f", {shown.skipped_hidden:,} hidden files skipped" if shown.skipped_hidden else ""
    console.print(f"{label} --dry-run: {what} of {escape(shown.out_dir)}", highlight=False, soft_wrap=True)
    console.print(f"  {shown.inputs:,} inputs in {shown.shards_total:,} shards of {shown.shard_size:,}{hidden}")
    console.print(f"  config hash {shown.config_hash}, input fingerprint {shown.fingerprint[:16]}")
    console.print(f"  shards: {shown.shards_done:,} done, {shown.shards_to_do:,} to do ({shown.inputs_to_do:,} inputs)")
    if shown.locked_by:
        console.print(f"  [yellow]another run writes there now[/yellow] ({escape(shown.locked_by)})", highlight=False)
    console.print("  nothing was processed or written", style="dim")


def _count_table(title: str, counts: dict, total: int) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    for name, n in counts.items():
        table.add_row(str(name), f"{n:,}", f"{n / total:.1%}" if total else "")
    return table


def print_inspection(report: dict, console: Console, top: int = 10, short: bool = False) -> None:
    """The report as rich tables; `short` leaves out identities and failure examples."""
    shards, inputs = report["shards"], report["inputs"]
    planned = f" of {shards['planned']:,} planned" if shards["planned"] else ""
    console.print(
        f"[bold]{escape(report['out_dir'])}[/bold]: {report['rows']:,} rows for {inputs['in_manifest']:,} inputs, "
        f"{shards['written']:,} shards{planned} (schema {report['schema_version']})", highlight=False, soft_wrap=True,
    )
    if shards["planned"] and shards["written"] < shards["planned"]:
        console.print("[yellow]incomplete: some shards are missing; re-run generate to finish[/yellow]")
    masked = sum(report["mask_type"].values())
    console.print(_count_table("status", report["status"], report["rows"]))
    console.print(_count_table("mask type (ok masked rows)", report["mask_type"], masked))
    console.print(_count_table("wear (ok masked rows)", report["wear"], masked))
    cov = report["coverage"]
    if cov["count"]:
        console.print(
            f"coverage: mean {cov['mean']:.3f} ± {cov['std']:.3f}, p05 {cov['p05']:.3f}, "
            f"median {cov['p50']:.3f}, p95 {cov['p95']:.3f} (min {cov['min']:.3f}, max {cov['max']:.3f})",
            soft_wrap=True,
        )
    if "qa" in report:
        _print_qa(report["qa"], console, top, short)
    if short:
        return
    ids = report["identities"]
    console.print(
        f"identities: {ids['count']:,} (rows per identity: min {ids['rows_min']}, median {ids['rows_median']:g}, "
        f"max {ids['rows_max']})",
        soft_wrap=True,
    )
    for item in ids["most_failures"][:top]:
        console.print(f"  {escape(item['identity'])}: {item['failed']} of {item['rows']} rows failed", highlight=False)
    if report["failure_examples"]:
        console.print("[bold]failure examples[/bold]")
        for ex in report["failure_examples"][:top]:
            console.print(f"  [red]{ex['status']}[/red] {escape(ex['src_path'])}: {escape(ex['error'])}", highlight=False, soft_wrap=True)


def _print_qa(qa: dict, console: Console, top: int, short: bool) -> None:
    """The qa section: how many rendered rows fail the checks and which; in full, each signal's
    spread and the failing rows (src_path, variant, why)."""
    failing = qa["failing"]
    checks = ", ".join(f"{check}: {n:,}" for check, n in failing["by_check"].items())
    console.print(
        f"qa: {failing['count']:,} of {qa['rows']:,} rendered rows ({failing['share']:.1%}) fail the checks"
        + (f" ({escape(checks)})" if checks else ""), highlight=False, soft_wrap=True,
    )
    if short or not qa["rows"]:
        return
    table = Table(title="qa signals (rendered rows)", title_justify="left", box=None, padding=(0, 2), header_style="bold")
    for column in ("signal", "p05", "p50", "p95", "max"):
        table.add_column(column, justify="left" if column == "signal" else "right")
    for signal, stats in qa["signals"].items():
        if stats["count"]:
            table.add_row(signal, *(f"{stats[k]:.3f}" for k in ("p05", "p50", "p95", "max")))
    console.print(table)
    if qa["failing_examples"]:
        console.print("[bold]qa outliers[/bold] (failing the checks)")
        for ex in qa["failing_examples"][:top]:
            which = f" #{ex['variant_index']}" if ex.get("variant_index", -1) >= 0 else ""
            where = escape(f"{ex['src_path']} ({ex['variant']}{which})")
            console.print(f"  [red]{ex['status']}[/red] {where}: {escape('; '.join(ex['reasons']))}", highlight=False, soft_wrap=True)


class FramesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:5.1f} frames/s" if speed else "  ... frames/s", style="progress.data.speed")
