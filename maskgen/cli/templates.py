"""`maskgen template new` (a mask family from a picture of a real mask) and `maskgen template
preview` (a family on the sample faces). Nothing heavy is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt

app = typer.Typer(
    help="Masks of one's own: make a mask family from a picture of a real mask, and preview it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

WEARS = ("proper", "nose", "chin")  # the preview's columns
PREVIEW_FACES = 4  # the preview's rows: one face of each of the first identities


@app.command("new")
def new(
    image: Annotated[Path, typer.Argument(help="Front-view picture of the mask: RGBA with alpha, or a photo on a plain background.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Family file to write (NAME.json); the texture goes beside it as NAME.png.", show_default=False)],
    anchors: Annotated[Path, typer.Option("--anchors", help='JSON of picture pixels: {"nose_top": [x, y], "chin_bottom", "left_ear", "right_ear", "left_cheek", "right_cheek"} (left = the picture\'s left; ears: the outermost point of each side; cheeks: the middle of each cheek, about a quarter in and a third down).', show_default=False)],
    like: Annotated[str, typer.Option("--like", help="Family whose fit (where it sits on the face) the new one copies: a name or a family file.")] = "surgical",
    name: Annotated[Optional[str], typer.Option("--name", help="Family name, recorded in manifests' mask_type (default: OUT's stem).")] = None,
    straps: Annotated[str, typer.Option("--straps", help="ear_loops or head_straps.")] = "ear_loops",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT and its texture if they exist.")] = False,
) -> None:
    """Make a mask family from a picture of a real mask and six anchor points on it.

    Use it as --type OUT (or put OUT in a folder of $MASKGEN_MASKS and use its name)."""
    from maskgen.masks.custom import TemplateError, new_family

    try:
        data = new_family(image, out, anchors, like=like, name=name, straps=straps, overwrite=overwrite)
    except TemplateError as exc:
        raise opt.fail(str(exc)) from None
    opt.console().print(f"mask family {data['name']!r} (fit like {data['like']}, colour {next(iter(data['colors']))}): "
                        f"{out} + {out.with_suffix('.png').name}", highlight=False)  # fmt: skip


@app.command("preview")
def preview(
    family_ref: Annotated[str, typer.Argument(metavar="FAMILY", help="A family file (my_mask.json) or a family's name.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: FAMILY's stem + _preview.png beside it, or in the current folder).")] = None,
    color: Annotated[Optional[str], typer.Option("--color", help="Colour to draw it in (default: the family's first).")] = None,
) -> None:
    """A contact sheet of a family on the built-in sample faces: a row per face, worn
    properly, nose exposed and on the chin."""
    import cv2
    import numpy as np

    from maskgen.assets import sample_faces
    from maskgen.faces.landmarks import Landmarker
    from maskgen.faces.models import ModelNotFound
    from maskgen.files import write_atomic
    from maskgen.masks.families import family
    from maskgen.masks.options import WEAR_SHIFTS, MaskOptions, MaskSpec, parse_colors, variant_seed
    from maskgen.masks.render import RenderError, render_mask

    try:
        options = MaskOptions.parse(type=family_ref)
        colors = parse_colors(color or "random")
    except ValueError as exc:
        raise opt.fail(str(exc)) from None
    if not options.types or len(options.types) != 1:
        raise opt.fail(f"give one family to preview, got {family_ref!r}")
    (name,) = options.types
    hex_color = colors[0] if colors else next(iter(family(name).colors))
    if out is None:
        ref = Path(family_ref)
        out = ref.with_name(ref.stem + "_preview.png") if family_ref.lower().endswith(".json") else Path(f"{name}_preview.png")
    identities = sorted(p for p in sample_faces().iterdir() if p.is_dir())[:PREVIEW_FACES]
    faces = [sorted(p.glob("*.jpg"))[0] for p in identities]
    try:
        landmarker = Landmarker()
    except ModelNotFound as exc:
        raise opt.fail(str(exc)) from None
    lines = []
    for path in faces:
        bgr = cv2.imread(str(path))
        points = landmarker.aligned(bgr).points
        tiles = [bgr]
        for wear in WEARS:
            spec = MaskSpec(name, hex_color, "plain", 0.0, wear, WEAR_SHIFTS[wear], variant_seed(0, path.name))
            try:
                tiles.append(render_mask(bgr, points, spec).image)
            except RenderError:
                tiles.append(np.full_like(bgr, 200))  # a face the mask cannot be fitted to: grey
        lines.append(np.hstack(tiles))
    sheet = np.vstack([_header(lines[0].shape[1], len(WEARS) + 1, ("original", *WEARS)), *lines])
    ok, png = cv2.imencode(".png", sheet)
    try:
        write_atomic(out, png.tobytes())
    except OSError as exc:
        raise opt.fail(f"cannot write {out}: {exc.strerror or exc}") from None
    opt.console().print(f"preview of {name!r}: {out}", highlight=False)


def _header(width: int, columns: int, labels):
    import cv2
    import numpy as np

    bar = np.full((18, width, 3), 255, np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(bar, label, (k * width // columns + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1, cv2.LINE_AA)
    return bar
