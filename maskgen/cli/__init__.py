"""The `maskgen` command: the only package that imports typer or prints with rich.

Each module holds one group of thin commands (parse options, call one library function,
print); this one assembles them into the app, in the order of the workflow. Every import
of a heavy library (Ray, OpenCV, dlib, torch) happens inside a command's body, so
`maskgen --help` stays light."""

from __future__ import annotations

import typer

from maskgen.cli import bench, datasets, evaluation, experiments, masking, pipelines, recognition, sharded, templates, video

app = typer.Typer(
    help="Realistic synthetic face masks at dataset scale, and the data to train masked-face recognisers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rendering it with rich took longer than the rest of --help
)

COMMANDS = {  # --help lists them in this order: the order of the workflow
    "mask": masking.mask,
    "preview": masking.preview,
    "generate": sharded.generate,
    "inspect": sharded.inspect,
    "run": pipelines.run,
    "align": sharded.align,
    "landmarks": sharded.landmarks,
    "trainset": datasets.trainset,
    "pairs": datasets.pairs,
    "train": recognition.train,
    "evaluate": evaluation.evaluate,
    "export": recognition.export,
    "orl": experiments.orl,
    "report": experiments.report,
    "video": video.video,
    "bench": bench.bench,
    "bench-train": bench.bench_train,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(templates.app, name="template")  # maskgen template new / preview: masks of one's own
