"""`maskgen pairs`: verification pairs in identity-disjoint folds, balanced per fold.

Pair types: masked-unmasked (the main one: a masked probe against an unmasked gallery
image), masked-masked and unmasked-unmasked. A positive pairs two different source photos
of one identity; a negative pairs photos of two identities of the same fold. Everything is
drawn from a seed, so the same inputs give the same pairs. LFW's `pairs.txt` reads and writes
in the same form, so LFW, MFR2-style and private sets are handled alike.

Also here: the one convention for image paths in every manifest maskgen writes (trainset,
pairs, evaluate's scores): a relative path starts from the folder holding the file."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from maskgen.files import write_atomic, write_parquet
from maskgen.schemas import PAIRS_SCHEMA, PATHS_BASE_KEY, PATHS_FROM_MANIFEST, read_key

PAIR_TYPES = ("masked-unmasked", "masked-masked", "unmasked-unmasked")
_KINDS = {"masked": "masked", "unmasked": "original"}



class PairsError(ValueError):
    pass


@dataclass(frozen=True)
class Photo:
    """One source photo of an identity, with its unmasked image and masked variants (rows)."""

    identity: str
    src: str
    original: dict | None
    masked: tuple[dict, ...]

    def image(self, kind: str, rng: random.Random) -> dict | None:
        if kind == "original":
            return self.original
        return rng.choice(self.masked) if self.masked else None


def photos_by_identity(images: pd.DataFrame) -> dict[str, list[Photo]]:
    """Group collected images (runs.collect_images) into source photos per identity."""
    out: dict[str, list[Photo]] = {}
    for (identity, src), group in images.sort_values("path").groupby(["identity", "src_path"], sort=True):
        records = group.to_dict("records")
        original = next((r for r in records if r["variant"] == "original"), None)
        masked = tuple(r for r in records if r["variant"] == "masked")
        out.setdefault(identity, []).append(Photo(identity, src, original, masked))
    return out


def assign_folds(identities: list[str], folds: int, seed: int) -> list[list[str]]:
    """Identities shuffled by the seed and dealt round-robin: no identity in two folds."""
    order = sorted(identities)
    random.Random(f"folds/{seed}").shuffle(order)
    return [sorted(order[f::folds]) for f in range(folds)]


def _row(fold: int, pair_type: str, a: dict, b: dict) -> dict:
    return {
        "fold": fold, "pair_type": pair_type, "same": a["identity"] == b["identity"],
        "path_a": a["path"], "path_b": b["path"], "identity_a": a["identity"], "identity_b": b["identity"],
        "src_a": a["src_path"], "src_b": b["src_path"], "mask_type_a": a["mask_type"] or "",
        "mask_type_b": b["mask_type"] or "", "wear_a": a["wear"] or "", "wear_b": b["wear"] or "",
    }


def _positives(photos: dict[str, list[Photo]], fold_ids, kinds, rng) -> list[tuple[Photo, Photo]]:
    """Every ordered pair of two different photos of one identity that has both kinds."""
    found, symmetric = [], kinds[0] == kinds[1]
    for identity in fold_ids:
        for p in photos[identity]:
            for q in photos[identity]:
                distinct = p.src < q.src if symmetric else p.src != q.src  # (p, q) == (q, p) when symmetric
                if distinct and _has(p, kinds[0]) and _has(q, kinds[1]):
                    found.append((p, q))
    rng.shuffle(found)
    return found


def _has(photo: Photo, kind: str) -> bool:
    return photo.original is not None if kind == "original" else bool(photo.masked)


def _negatives(photos: dict[str, list[Photo]], fold_ids, kinds, n: int, rng) -> list[tuple[Photo, Photo]]:
    pools = [[p for i in fold_ids for p in photos[i] if _has(p, kind)] for kind in kinds]
    if not all(pools) or len({p.identity for p in pools[0]} | {p.identity for p in pools[1]}) < 2:
        return []
    seen, found, tries = set(), [], 0
    while len(found) < n and tries < 50 * n + 1000:
        tries += 1
        a, b = rng.choice(pools[0]), rng.choice(pools[1])
        key = frozenset((a.src, b.src)) if kinds[0] == kinds[1] else (a.src, b.src)
        if a.identity != b.identity and key not in seen:
            seen.add(key)
            found.append((a, b))
    return found


def make_pairs(
    images: pd.DataFrame, folds: int = 10, per_fold: int | None = None, types=("masked-unmasked",), seed: int = 0
) -> pd.DataFrame:
    """Pairs with `per_fold` positives and as many negatives per fold and type.
    per_fold None: the most that every fold can give (at most 300, LFW's number)."""
    for t in types:
        if t not in PAIR_TYPES:
            raise PairsError(f"unknown pair type {t!r} (choose from {', '.join(PAIR_TYPES)})")
    photos = photos_by_identity(images)
    if len(photos) < 2 * folds:
        raise PairsError(
            f"{len(photos)} identities cannot fill {folds} identity-disjoint folds with negatives "
            f"(need at least {2 * folds}); the most that works is --folds {len(photos) // 2}"
        )
    fold_ids = assign_folds(list(photos), folds, seed)
    rows = []
    for pair_type in types:
        kinds = tuple(_KINDS[k] for k in pair_type.split("-"))
        rng = random.Random(f"pairs/{seed}/{pair_type}")
        positives = [_positives(photos, ids, kinds, rng) for ids in fold_ids]
        negatives = [_negatives(photos, ids, kinds, max(len(p), 1), rng) for p, ids in zip(positives, fold_ids)]
        possible = min(min(len(p), len(n)) for p, n in zip(positives, negatives))
        n = min(possible, 300) if per_fold is None else per_fold
        if n == 0 or n > possible:
            raise PairsError(
                f"cannot balance {pair_type} pairs: the poorest fold allows {possible} positive and negative pairs"
                + (f", asked for {per_fold}" if per_fold else "")
                + (_fewer_folds(images, folds, pair_type, seed) if n == 0 else "")
                + " (more images per identity, masked variants of every photo, or fewer folds help)"
            )
        for fold, (pos, neg) in enumerate(zip(positives, negatives)):
            for same, chosen in ((True, pos[:n]), (False, neg[:n])):
                for a, b in chosen:
                    rows.append(_row(fold, pair_type, a.image(kinds[0], rng), b.image(kinds[1], rng)))
    return pd.DataFrame(rows)


def write_pairs(pairs: pd.DataFrame, target: Path) -> None:
    pairs = pairs.assign(path_a=paths_for_manifest(pairs.path_a, target), path_b=paths_for_manifest(pairs.path_b, target))
    table = pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False)
    write_parquet(target, table, {PATHS_BASE_KEY: PATHS_FROM_MANIFEST})


# -- image paths in manifests ----------------------------------------------------------------
# Stored relative to the manifest's folder (PATHS_BASE_KEY says so), so that a manifest and its
# images can move together and the working folder of whoever reads it does not matter.


def paths_for_manifest(paths, manifest: Path) -> list[str]:
    """Image paths (absolute, or relative to the current folder) as a manifest written to
    `manifest` stores them: relative to its folder, POSIX."""
    # Real folders on both sides: a leading `..` is then right even when a folder is a symlink,
    # as the OS resolves `..` in the real folder.
    folder = os.path.realpath(Path(manifest).parent)
    stored_parents: dict[str, str | None] = {}  # one relpath per image folder (millions of rows)

    def stored(path: str) -> str:
        parent, name = os.path.split(str(path))
        if parent not in stored_parents:
            try:
                stored_parents[parent] = Path(os.path.relpath(os.path.realpath(parent or "."), folder)).as_posix()
            except ValueError:  # on another drive (Windows): no relative path exists
                stored_parents[parent] = None
        rel = stored_parents[parent]
        return str(Path(path).absolute()) if rel is None else f"{rel}/{name}" if rel != "." else name

    return [stored(p) for p in paths]


def resolve_manifest_paths(paths, manifest: Path, metadata: dict | None) -> list[str]:
    """A manifest's stored image paths as absolute paths (`metadata`: its Parquet schema's)."""
    base = read_key(metadata, PATHS_BASE_KEY)
    folder = Path(os.path.realpath(Path(manifest).parent))
    if base == PATHS_FROM_MANIFEST:
        return [_joined(folder, p) for p in paths]
    if base is not None:
        raise PairsError(f"{manifest}: image paths relative to {base!r}, which this maskgen does not know "
                         "(written by a newer version?)")
    return [_legacy_path(p, folder) for p in paths]


def _legacy_path(path: str, folder: Path) -> str:
    """A path in a file without PATHS_BASE_KEY: written by hand (relative to the file's folder,
    the convention), or by maskgen before the key (relative to the folder it ran in): the
    file's folder wins, the current folder is the fallback."""
    beside = _joined(folder, path)
    if Path(path).is_absolute() or os.path.exists(beside) or not Path(path).exists():
        return beside
    return _joined(Path(os.path.realpath(os.getcwd())), path)


def _joined(real_folder: Path, path: str) -> str:
    """`path` from a real (symlink-free) folder, its leading `..` taken off that folder: the
    file the OS would open, spelled without them."""
    parts = Path(path).parts
    ups = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    for _ in range(ups):
        real_folder = real_folder.parent
    return str(real_folder.joinpath(*parts[ups:]))


# -- LFW pairs.txt -------------------------------------------------------------------------
# Line 1: "<folds> <n>", then per fold n positives "name i j" and n negatives "name1 i name2 j";
# i, j are 1-based image numbers: <name>/<name>_<iiii>.jpg in LFW, else the i-th file by name.


def _lfw_file(root: Path, name: str, number: int) -> Path:
    lfw_named = root / name / f"{name}_{number:04d}.jpg"
    if lfw_named.is_file():
        return lfw_named
    files = sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))
    if not 1 <= number <= len(files):
        raise PairsError(f"pairs.txt names image {number} of {name!r}, which has {len(files)} images in {root}")
    return files[number - 1]


def read_lfw_pairs(pairs_txt: Path, root: Path) -> pd.DataFrame:
    """LFW's pairs.txt as unmasked-unmasked pairs with paths under `root`."""
    lines = [line.split() for line in Path(pairs_txt).read_text().splitlines() if line.strip()]
    if not lines or len(lines[0]) != 2:
        raise PairsError(f"{pairs_txt}: the first line must be '<folds> <pairs per fold>'")
    folds, n = map(int, lines[0])
    body = lines[1:]
    if len(body) != 2 * folds * n:
        raise PairsError(f"{pairs_txt}: expected {2 * folds * n} pair lines for {folds} folds of {n}, found {len(body)}")
    rows = []
    for k, tokens in enumerate(body):
        if len(tokens) == 3:
            (na, ia, ib), nb = tokens, tokens[0]
        elif len(tokens) == 4:
            na, ia, nb, ib = tokens
        else:
            raise PairsError(f"{pairs_txt}: line {k + 2} is not a pair: {' '.join(tokens)!r}")
        a, b = _lfw_file(root, na, int(ia)), _lfw_file(root, nb, int(ib))
        record = lambda p, name: {"path": str(p), "identity": name, "src_path": f"{name}/{p.name}", "mask_type": "", "wear": ""}  # noqa: E731
        rows.append(_row(k // (2 * n), "unmasked-unmasked", record(a, na), record(b, nb)))
    return pd.DataFrame(rows)


def write_lfw_pairs(pairs: pd.DataFrame, target: Path, root: Path) -> None:
    """Pairs (one pair type, same count per fold) in LFW's pairs.txt format."""
    if pairs.pair_type.nunique() != 1:
        raise PairsError("pairs.txt holds one pair type: pick one with --types")
    numbers = {}
    for identity in sorted(set(pairs.identity_a) | set(pairs.identity_b)):
        files = sorted(p.name for p in (root / identity).iterdir() if p.is_file() and not p.name.startswith("."))
        numbers.update({f"{identity}/{name}": i + 1 for i, name in enumerate(files)})
    per_fold = pairs.groupby("fold").size()
    if per_fold.nunique() != 1 or (per_fold % 2).any():
        raise PairsError("pairs.txt needs the same number of pairs in every fold")
    lines = [f"{len(per_fold)}\t{per_fold.iloc[0] // 2}"]
    for _, fold in pairs.sort_values(["fold", "same"], ascending=[True, False], kind="stable").groupby("fold"):
        for r in fold.itertuples():
            a, b = numbers[r.src_a], numbers[r.src_b]
            lines.append(f"{r.identity_a}\t{a}\t{b}" if r.same else f"{r.identity_a}\t{a}\t{r.identity_b}\t{b}")
    write_atomic(target, ("\n".join(lines) + "\n").encode())


def _fewer_folds(images: pd.DataFrame, folds: int, pair_type: str, seed: int) -> str:
    """`; the most that works is --folds N` (or how it cannot work at all), for an error."""
    for fewer in range(folds - 1, 1, -1):
        try:
            make_pairs(images, fewer, None, (pair_type,), seed)
        except PairsError:
            continue
        return f"; the most that works is --folds {fewer}"
    return "; no number of folds (2 or more) works for these images"
