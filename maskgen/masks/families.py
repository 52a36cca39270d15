"""Mask families: one JSON file each in assets/masks/ says how the mask sits on the face
(`fit`), its outline in template space, its relief (pleats, seams, cup...), its straps, and
the colours and patterns it usually comes in.

Besides the built-in families, a family can come from a file of one's own (`--type
path/to/my_mask.json`, see `register`), or from the folders in $MASKGEN_MASKS
(folder1:folder2; each *.json there is a family, by its name). A family file may carry a
`texture`: a BGRA picture of the mask in template space (`maskgen template new` makes one).
Each file is read once per process; `family(name)` finds all of them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from maskgen.assets import assets_dir

ENV_FOLDERS = "MASKGEN_MASKS"  # folder1:folder2 (os.pathsep) of family files
STRAPS = ("ear_loops", "head_straps")
RELIEF_KINDS = ("pleats", "band", "nose_wire", "cup", "rim", "fold", "seam", "cartridges", "valve")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


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
    outline: str | tuple  # "ellipse", "texture" (the texture's alpha) or polygon [(u, v), ...] in the unit square
    relief: tuple  # feature dicts, drawn by templates.py
    straps: str  # "ear_loops" | "head_straps"
    colors: dict  # "#rrggbb" -> weight, used when the user asks for random colours
    patterns: dict  # pattern -> weight, used when the user asks for random patterns
    source: str | None = None  # absolute path of a family file of one's own; None = built-in
    texture: str | None = None  # absolute path of its texture PNG (BGRA, template space), if any
    digest: str | None = None  # of the family file and its texture: what the outputs depend on
    texture_png: bytes | None = field(default=None, repr=False, compare=False)  # the texture file's bytes (read once)


class FamilyError(ValueError):
    """A family file of one's own that cannot be used (one line, names the file)."""


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
    """The built-in families, by name."""
    return {f.name: f for f in map(_load, sorted((assets_dir() / "masks").glob("*.json")))}


FAMILIES = tuple(all_families())  # the built-in families' names: what `--type random` draws from

_lock = threading.Lock()
_registered: dict[str, Family] = {}  # families of one's own, by name
_by_path: dict[str, tuple[tuple, Family]] = {}  # by file: (its and its texture's stat, family)


def family(name: str) -> Family:
    """A family by name: built-in, registered (`register`), or in $MASKGEN_MASKS."""
    found = all_families().get(name) or _registered.get(name)
    if found is None and name:
        found = env_families().get(name)
    if found is None:
        raise ValueError(f"unknown mask type {name!r} (choose from {', '.join(known_names())}, or give a family file's path)")
    return found


def known_names() -> list[str]:
    """Every family name `family` can find now."""
    try:
        env = list(env_families())
    except FamilyError:
        env = []
    return list(dict.fromkeys([*FAMILIES, *_registered, *env]))


def is_builtin(name: str) -> bool:
    return name in all_families()


def looks_like_path(ref: str) -> bool:
    """Whether a --type entry names a family file rather than a family."""
    return ref.lower().endswith(".json") or "/" in ref or os.sep in ref


def register(path: str | Path) -> Family:
    """Read the family file at `path` and make its family known by name to `family`. A file
    is read once per process, again only if it or its texture changed on disk (size or
    mtime). A different file under the same name replaces the earlier one (a long-lived
    worker may run jobs with different files)."""
    with _lock:
        fam = _load_path(Path(path).expanduser().absolute())
        if is_builtin(fam.name):
            raise FamilyError(f"{fam.source}: family name {fam.name!r} is a built-in family's; give it another \"name\"")
        _registered[fam.name] = fam
        return fam


def _load_path(path: Path) -> Family:
    key = str(path)
    known = _by_path.get(key)
    if known is not None and known[0] == _stats(path, known[1].texture):
        return known[1]
    fam = _load_custom(path, _read(path))
    _by_path[key] = (_stats(path, fam.texture), fam)
    return fam


def _stats(path: Path, texture: str | None) -> tuple:
    def stat(p) -> tuple:
        try:
            s = os.stat(p)
        except OSError:
            return ()
        return s.st_size, s.st_mtime_ns

    return stat(path), stat(texture) if texture else ()


def register_source(name: str, path: str, digest: str | None = None) -> Family:
    """`register` for a family recorded in a job's options: its file must still hold that
    family (same name and, with `digest`, the same content)."""
    current = _registered.get(name)
    if current is not None and current.source == path and (digest is None or current.digest == digest):
        return current  # the usual case in a worker: nothing to read
    fam = register(path)
    if fam.name != name:
        raise FamilyError(f"{path} now holds mask family {fam.name!r}, not {name!r}")
    if digest is not None and fam.digest != digest:
        raise FamilyError(f"mask family file {path} (or its texture) changed since the job was configured")
    return fam


def env_families() -> dict[str, Family]:
    """The families in $MASKGEN_MASKS's folders, by name (read once per value of the variable)."""
    return _env_families(os.environ.get(ENV_FOLDERS, ""))


@cache
def _env_families(value: str) -> dict[str, Family]:
    found: dict[str, Family] = {}
    for folder in filter(None, value.split(os.pathsep)):
        folder_path = Path(folder).expanduser()
        if not folder_path.is_dir():
            raise FamilyError(f"{ENV_FOLDERS}: {folder} is not a folder")
        for path in sorted(folder_path.glob("*.json")):
            with _lock:
                fam = _load_path(path.absolute())
            if is_builtin(fam.name):
                raise FamilyError(f"{ENV_FOLDERS}: {path}: family name {fam.name!r} is a built-in family's")
            if fam.name in found:
                raise FamilyError(f"{ENV_FOLDERS}: two families named {fam.name!r}: {found[fam.name].source} and {path}")
            found[fam.name] = fam
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FamilyError(f"cannot read the mask family file {path}: {exc.strerror or exc}") from None


def _digest(raw: bytes, texture: bytes | None) -> str:
    h = hashlib.blake2b(raw, digest_size=12)
    h.update(b"\0" + (texture or b""))
    return h.hexdigest()


def _load_custom(path: Path, raw: bytes) -> Family:
    """A family of one's own, checked field by field (a bad file: one FamilyError naming it)."""

    def bad(message: str) -> FamilyError:
        return FamilyError(f"{path}: {message}")

    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not a JSON family file ({exc})") from None
    if not isinstance(data, dict):
        raise bad("not a JSON family file (expected an object)")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lower().endswith(".json"):
        raise bad(f"family name {name!r} must be letters, digits, '_', '-' or '.'")
    fit = data.get("fit")
    if not isinstance(fit, dict) or set(fit) != set(Fit.__dataclass_fields__):
        raise bad(f"\"fit\" must have exactly {', '.join(Fit.__dataclass_fields__)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fit.values()):
        raise bad("\"fit\" values must be numbers")
    straps = data.get("straps", "ear_loops")
    if straps not in STRAPS:
        raise bad(f"\"straps\" must be one of {', '.join(STRAPS)}")
    colors = _colors(data, bad)
    patterns = data.get("patterns", {"plain": 1})
    from maskgen.masks.options import PATTERNS  # here: options imports this module

    if not isinstance(patterns, dict) or not patterns or any(p not in PATTERNS for p in patterns):
        raise bad(f"\"patterns\" must map some of {', '.join(PATTERNS)} to weights")
    if not all(_weight(w) for w in patterns.values()) or sum(patterns.values()) <= 0:
        raise bad("\"patterns\" weights must be non-negative numbers, not all zero")
    relief = data.get("relief", [])
    if not isinstance(relief, list) or not all(isinstance(f, dict) and f.get("kind") in RELIEF_KINDS for f in relief):
        raise bad(f"\"relief\" must be a list of features whose \"kind\" is one of {', '.join(RELIEF_KINDS)}")

    texture, texture_png = data.get("texture"), None
    if texture is not None:
        if not isinstance(texture, str) or not texture:
            raise bad("\"texture\" must be the file name of a PNG")
        texture_path = (path.parent / texture).absolute()
        try:
            texture_png = texture_path.read_bytes()
        except OSError as exc:
            raise bad(f"cannot read its texture {texture_path}: {exc.strerror or exc}") from None
        _check_texture(texture_png, texture_path, bad)
        texture = str(texture_path)
    outline = data.get("outline", "texture" if texture else None)
    if outline == "texture" and texture is None:
        raise bad("\"outline\": \"texture\" needs a \"texture\"")
    if not (outline in ("ellipse", "texture") or _polygon(outline)):
        raise bad("\"outline\" must be \"ellipse\", \"texture\" or a polygon [[u, v], ...] in the unit square")
    return Family(
        name=name,
        description=str(data.get("description", "")),
        fit=Fit(**{k: float(v) for k, v in fit.items()}),
        outline=outline if isinstance(outline, str) else tuple(map(tuple, outline)),
        relief=tuple(relief),
        straps=straps,
        colors=colors,
        patterns={p: float(w) for p, w in patterns.items()},
        source=str(path),
        texture=texture,
        digest=_digest(raw, texture_png),
        texture_png=texture_png,
    )


def _weight(w) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0


def _colors(data: dict, bad) -> dict:
    """"colors": {"#rrggbb": weight} (as the built-in files), or "palette": ["#rrggbb", ...]."""
    colors = data.get("colors")
    if colors is None and isinstance(data.get("palette"), list):
        colors = dict.fromkeys(data["palette"], 1.0)
    if not isinstance(colors, dict) or not colors:
        raise bad("needs \"colors\" {\"#rrggbb\": weight, ...} or \"palette\" [\"#rrggbb\", ...]")
    if not all(isinstance(c, str) and _HEX.fullmatch(c) for c in colors):
        raise bad("colours must be #rrggbb")
    if not all(_weight(w) for w in colors.values()) or sum(colors.values()) <= 0:
        raise bad("colour weights must be non-negative numbers, not all zero")
    return {c.lower(): float(w) for c, w in colors.items()}


def _polygon(outline) -> bool:
    return (
        isinstance(outline, list)
        and len(outline) >= 3
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in p) for p in outline
        )
    )


def _check_texture(png: bytes, path: Path, bad) -> None:
    import cv2  # here: `maskgen --help` reads this module
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise bad(f"its texture {path} is not a readable image")
    if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
        raise bad(f"its texture {path} must be an 8-bit picture with alpha (BGRA)")
