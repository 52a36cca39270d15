"""Every benchmark of maskgen (not tests): `python -m maskgen.bench WHAT [args...]`.

Each runs on data the installed package has (the sample faces and photos in its assets, or
synthetic data), so it needs no checkout. Only the chosen benchmark's module is imported."""

from __future__ import annotations

import importlib
import sys

# name: (module, one line about it)
BENCHMARKS = {
    "masking": ("maskgen.bench.masking", "mask engine: ms per image per stage on one core, then `maskgen mask` end to end"),
    "landmarks": ("maskgen.bench.landmarks", "68-point landmarks: ms per face, dlib's predictor vs the batched engine (batch 1..512), one core"),
    "pipeline": ("maskgen.bench.pipeline", "generate pipeline: images/s plain vs Ray 1 and 2 workers (speed), driver RSS (memory)"),
    "align": ("maskgen.bench.align", "`maskgen align`: faces per CPU-second on the sample wild photos, per detector setting"),
    "train": ("maskgen.bench.train", "training images/s (SphereFace): in-memory batches vs the real manifest loader"),
    "evaluate": ("maskgen.bench.evaluate", "evaluation: pairs/s with a SphereFace checkpoint; protocol + report on 6,000 pairs"),
    "formats": ("maskgen.bench.formats", "output formats: mxnet reads our .rec; generate and loader images/s per format; .rec join memory at 1M"),
    "video": ("maskgen.bench.video", "`maskgen video`: frames/s at 640x480 with one face, on one core"),
}
ALIASES = {"mask": "masking"}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: python -m maskgen.bench WHAT [args...]   (python -m maskgen.bench WHAT --help: its options)",
             "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in BENCHMARKS.items()]
    lines += ["", "aliases: " + ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    what = ALIASES.get(argv[0], argv[0])
    if what not in BENCHMARKS:
        choices = ", ".join([*BENCHMARKS, *ALIASES])
        print(f"error: no benchmark {argv[0]!r} (choose from {choices}; python -m maskgen.bench lists them)", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[what][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        print(f"error: python -m maskgen.bench {what} needs torch: pip install 'maskgen[recognition]'", file=sys.stderr)
        return 2
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
