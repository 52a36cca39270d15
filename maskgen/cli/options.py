"""What the commands share: option types (typer `Annotated`) and the one-line error."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from maskgen.faces.layouts import LAYOUTS
from maskgen.masks.families import FAMILIES
from maskgen.masks.options import PATTERNS, WEAR_SHIFTS

MaskType = Annotated[str, typer.Option("--type", help=f"Mask types: random, one of {', '.join(FAMILIES)}, a family file (my_mask.json, from `maskgen template new`) or a name from $MASKGEN_MASKS, or weights like surgical:0.7,n95:0.3.")]
Color = Annotated[str, typer.Option("--color", help="Colours: random (each type's own palette) or a comma list of CSS names / #hex.")]
Pattern = Annotated[str, typer.Option("--pattern", help=f"Patterns: random (each type's own mix), one of {', '.join(PATTERNS)}, or weights like plain:0.8,stripes:0.2.")]
Wear = Annotated[str, typer.Option("--wear", help=f"How masks are worn: one of {', '.join(WEAR_SHIFTS)}, or weights like proper:0.8,nose:0.1,chin:0.1 (nose = nose exposed, chin = on the chin).")]
WearJitter = Annotated[float, typer.Option("--wear-jitter", help="Random shift (0..0.5) added to each wear position, for continuous variety.")]
TextureWeight = Annotated[Optional[float], typer.Option("--texture-weight", help="Pattern strength 0..1 (default: random 0.5..1).")]
Variants = Annotated[int, typer.Option("--variants", "-n", min=1, help="Masked variants per face.")]
KeepOriginal = Annotated[bool, typer.Option("--keep-original/--no-keep-original", help="Also write each original image, with its own manifest row.")]
Seed = Annotated[int, typer.Option("--seed", help="Global seed; each image's randomness is hash(seed, its path): same seed, same bytes.")]
Aligned = Annotated[bool, typer.Option("--aligned/--wild", help="Inputs are aligned face crops (face box from the crop, no detector) or photos in the wild (every face detected).")]
Layout = Annotated[str, typer.Option("--layout", help=f"Aligned crop layout: {', '.join(LAYOUTS)} (auto: 96x112 -> sphereface, 112x112 -> arcface, else dlib chips).")]
Detector = Annotated[str, typer.Option("--detector", help="Face detector for --wild: hog (fast) or cnn (dlib's mmod: finds more turned/small faces, ~10x slower on a CPU).")]
Landmarks = Annotated[str, typer.Option("--landmarker", help="Landmark engine: batched (maskgen's compiled evaluator of dlib's model, several times faster) or dlib (dlib's own, the reference); the same landmarks.")]
Upsample = Annotated[Optional[int], typer.Option("--upsample", min=0, max=3, help="HOG upsampling for --wild (finds smaller faces, ~4x time each); default 1 up to 2000 px, else 0.")]
OutputFormat = Annotated[str, typer.Option("--output-format", help="How images are stored: files (loose, under images/), rec (insightface's train.rec/.idx/property under rec/, joined when the run completes), webdataset (wds/shard-000000.tar: KEY.jpg, KEY.mask.png, KEY.json) or parquet (the image and occlusion bytes in the manifest rows).")]
ImageFormat = Annotated[Optional[str], typer.Option("--format", help="Output image format: jpg, png, webp... (default: the input's own).")]
Quality = Annotated[Optional[int], typer.Option("--quality", min=1, max=100, help="JPEG/WEBP quality (default: the input's own, estimated from its tables).")]
QAReject = Annotated[bool, typer.Option("--qa-reject/--no-qa-reject", help="A render that fails the quality checks (eyes covered, mask off the face, landmarks that are no face...) becomes a qa_reject row and its image is not written. The checks' signals are in the manifest either way.")]
QAThresholds = Annotated[str, typer.Option("--qa-thresholds", help="The quality checks' thresholds: default, or key=value,... overriding some (e.g. max_shape=0.4,min_face=-1); the keys are in maskgen/masks/quality.py.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary; errors only.")]


EXIT_USAGE = 2  # a user mistake: bad input, options or output
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


def console(stderr: bool = False):
    """A rich console (rich is imported here, on first output: `--help` does not need it)."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)  # a message with a long path stays one line


def fail(message: str, *, code: int = EXIT_USAGE, as_json: bool = False) -> typer.Exit:
    """Print `error: message` on one line (stderr; also a JSON object on stdout with
    as_json) and return the typer.Exit to raise. The message is escaped: a path with
    [brackets] is shown as it is, never read as rich markup."""
    if as_json:
        print(json.dumps({"error": message}))
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
