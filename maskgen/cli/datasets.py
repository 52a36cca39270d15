"""`maskgen trainset` and `maskgen pairs`: training manifests and verification pairs from finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from maskgen.cli import options as opt


def trainset(
    runs: Annotated[list[Path], typer.Argument(help="Runs of `generate`/`mask`/`align` (folders or manifest files), or plain <identity>/<image> trees.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training manifest (.parquet) to write; image paths in it are relative to its folder; labels go to <name>.labels.json beside it.")],
    masked_per_original: Annotated[Optional[float], typer.Option("--masked-ratio", min=0, help="Masked images per original image, per identity (a seeded pick); default: all.")] = None,
    min_images: Annotated[int, typer.Option("--min-images", min=1, help="Leave out identities with fewer source photos.")] = 1,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Identities to leave out: names, comma lists, files with a name a line, or `lfw` (the 3 CASIA-WebFace identities in LFW). Repeatable.")] = None,
    holdout: Annotated[float, typer.Option("--holdout", min=0, max=0.9, help="Fraction of identities set aside into <name>.holdout.parquet (e.g. for pairs).")] = 0.0,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="An earlier labels.json: its identities keep their numbers (default: the one beside --out, if any).")] = None,
    renumber: Annotated[bool, typer.Option("--renumber", help="Number identities afresh, ignoring earlier labels.")] = False,
    seed: opt.Seed = 0,
) -> None:
    """Originals + masked faces from runs into one labelled training manifest (only `ok` rows)."""
    import json

    from maskgen.datasets.runs import RunError
    from maskgen.datasets.trainset import (
        TrainsetError,
        TrainsetOptions,
        build_trainset,
        labels_path,
        read_exclusions,
        write_trainset,
    )

    labels = labels or (labels_path(out) if labels_path(out).is_file() else None)
    try:
        previous = None if renumber or labels is None else json.loads(labels.read_text())
        options = TrainsetOptions(masked_per_original, min_images, read_exclusions(exclude or []), holdout, seed, previous)
        rows, held, mapping, summary = build_trainset(runs, options)
        write_trainset(rows, held, mapping, out, summary.num_classes)
    except (RunError, TrainsetError, OSError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    from rich.table import Table

    table = Table(title=f"training manifest: {out}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("identities (classes)", f"{summary.identities} ({summary.num_classes})")
    for variant, n in sorted(summary.rows.items()):
        table.add_row(f"{variant} images", str(n))
    if summary.holdout_identities:
        table.add_row("held out identities / images", f"{summary.holdout_identities} / {summary.holdout_rows}")
    for reason, n in summary.left_out.most_common():
        if n:
            table.add_row(f"left out: {reason}", str(n))
    opt.console().print(table)


def pairs(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Test runs (folders or manifests) or plain <identity>/<image> trees.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs file (.parquet) to write; image paths in it are relative to its folder. With --from-bin: a .bin (the masked verification file; the .parquet pairs and <name>_images/ beside it) or a .parquet.")] = ...,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Identity-disjoint folds (LFW: 10).")] = 10,
    per_fold: Annotated[Optional[int], typer.Option("--per-fold", min=1, help="Positive (and as many negative) pairs per fold and type; default: the most every fold allows, at most 300.")] = None,
    types: Annotated[str, typer.Option("--types", help="Comma list of masked-unmasked, masked-masked, unmasked-unmasked.")] = "masked-unmasked,masked-masked,unmasked-unmasked",
    lfw_pairs: Annotated[Optional[Path], typer.Option("--lfw-pairs", help="Read LFW's pairs.txt instead of drawing pairs (image numbers refer to the first source tree).")] = None,
    write_lfw: Annotated[Optional[Path], typer.Option("--write-lfw", help="Also write the unmasked-unmasked pairs as an LFW pairs.txt.")] = None,
    from_bin: Annotated[Optional[Path], typer.Option("--from-bin", help="An insightface verification file (lfw.bin, cfp_fp.bin, agedb_30.bin) to mask instead of SOURCES (see --mask).")] = None,
    mask: Annotated[str, typer.Option("--mask", help="With --from-bin: first (masked-unmasked pairs) or both (masked-masked); a pair's two masks are the same mask.")] = "first",
    mask_type: opt.MaskType = "random",
    wear: opt.Wear = "proper",
    seed: opt.Seed = 0,
) -> None:
    """Verification pairs in identity-disjoint folds with equal positives and negatives per fold."""
    from maskgen.datasets.pairs import PairsError, make_pairs, read_lfw_pairs, write_lfw_pairs, write_pairs
    from maskgen.datasets.runs import RunError, collect_images

    if from_bin is not None:
        return _masked_bin(from_bin, out, mask, mask_type, wear, seed)
    if not sources:
        raise opt.fail("give SOURCES (runs or trees), or --from-bin FILE.bin")
    try:
        if lfw_pairs:
            table = read_lfw_pairs(lfw_pairs, sources[0])
        else:
            images, _ = collect_images(sources)
            table = make_pairs(images, folds, per_fold, tuple(t.strip() for t in types.split(",")), seed)
        write_pairs(table, out)
        if write_lfw:
            plain = table[table.pair_type == "unmasked-unmasked"]
            write_lfw_pairs(plain, write_lfw, _source_root(sources[0]))
    except (PairsError, RunError, OSError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    from rich.table import Table

    summary = Table(title=f"pairs: {out}")
    for col in ("pair type", "folds", "positive", "negative"):
        summary.add_column(col, justify="right")
    for pair_type, group in table.groupby("pair_type"):
        summary.add_row(pair_type, str(group.fold.nunique()), str(int(group.same.sum())), str(int((~group.same).sum())))
    opt.console().print(summary)


def _masked_bin(source: Path, out: Path, mode: str, mask_type: str, wear: str, seed: int) -> None:
    """`pairs --from-bin`: the .bin masked (MLFW-style), as a .bin and/or Parquet pairs."""
    from maskgen.datasets.pairs import write_pairs
    from maskgen.datasets.verification_bin import MASK_MODES, BinError, bin_pairs, mask_bin, read_bin, write_bin
    from maskgen.masks.options import MaskOptions

    if mode not in MASK_MODES:
        raise opt.fail(f"--mask: choose from {', '.join(MASK_MODES)}, not {mode!r}")
    if out.suffix not in (".bin", ".parquet"):
        raise opt.fail(f"-o {out}: give a .bin (masked verification file) or a .parquet (pairs)")
    if out.resolve() == source.resolve():
        raise opt.fail(f"-o {out} is the --from-bin file itself: write the masked copy under another name")
    try:
        options = MaskOptions.parse(type=mask_type, wear=wear)
        bins = read_bin(source)
        masked = mask_bin(bins, mode, options, seed)
        if out.suffix == ".bin":
            write_bin(out, masked.images, bins.issame)
        pairs_file = out.with_suffix(".parquet")
        table = bin_pairs(type(bins)(masked.images, bins.issame), out.with_name(f"{out.stem}_images"),
                          "masked-unmasked" if mode == "first" else "masked-masked", masked.specs)
        write_pairs(table, pairs_file)
    except (BinError, ValueError) as exc:
        raise opt.fail(str(exc)) from None
    except OSError as exc:
        raise opt.fail(f"{exc.filename or out}: {exc.strerror or exc}") from None
    done = sum(s is not None for s in masked.specs)
    wanted = bins.pairs * (1 if mode == "first" else 2)
    opt.console().print(f"{bins.pairs} pairs from {source}: {done} of {wanted} images masked ({wanted - done} kept as they were: "
                        f"no mask could be fitted); wrote {out if out.suffix == '.bin' else ''} {pairs_file}", highlight=False)


def _source_root(path: Path) -> Path:
    from maskgen.datasets.runs import RunError, open_run

    try:
        return open_run(path).source or path
    except RunError:
        return path


