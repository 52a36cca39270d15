"""Mask families: one JSON file each in assets/masks/ says how the mask sits on the face
(`fit`), its outline in template space, its relief (pleats, seams, cup...), its straps, and
the colours and patterns it usually comes in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from maskgen.assets import assets_dir


@dataclass(frozen=True)
class Fit:
    """Where a properly worn mask sits, in landmark terms (see geometry.py)."""

    top: float  # top edge on the nose line: 0 = landmark 27 (bridge), 1 = 28, 2 = 29, 3 = 30 (tip)
    side: float  # jaw index where the top edge meets the cheek (jaw 0 = by the ear, 8 = chin)
    width: float  # how far the sides stand out from the jaw line, fraction of face size
    bottom: float  # how far below the chin the bottom edge goes, fraction of face size
    sag: float  # how much the top edge dips between nose and cheek, fraction of face size


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    fit: Fit
    outline: str | tuple  # "ellipse" or polygon [(u, v), ...] in the unit square
    relief: tuple  # feature dicts, drawn by templates.py
    straps: str  # "ear_loops" | "head_straps"
    colors: dict  # "#rrggbb" -> weight, used when the user asks for random colours
    patterns: dict  # pattern -> weight, used when the user asks for random patterns


def _load(path) -> Family:
    data = json.loads(path.read_text())
    outline = data["outline"]
    return Family(
        name=path.stem,
        description=data["description"],
        fit=Fit(**data["fit"]),
        outline=outline if isinstance(outline, str) else tuple(map(tuple, outline)),
        relief=tuple(data["relief"]),
        straps=data["straps"],
        colors=data["colors"],
        patterns=data["patterns"],
    )


@cache
def all_families() -> dict[str, Family]:
    return {f.name: f for f in map(_load, sorted((assets_dir() / "masks").glob("*.json")))}


FAMILIES = tuple(all_families())


def family(name: str) -> Family:
    try:
        return all_families()[name]
    except KeyError:
        raise ValueError(f"unknown mask type {name!r} (choose from {', '.join(FAMILIES)})") from None
