"""What mask to put on a face: user-facing distributions (`MaskOptions`) and one concrete
draw from them (`MaskSpec`), made deterministic by a per-image seed."""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
from dataclasses import asdict, dataclass

from maskgen.masks.families import (
    FAMILIES,
    FamilyError,
    family,
    is_builtin,
    known_names,
    looks_like_path,
    register,
    register_source,
)

PATTERNS = ("plain", "stripes", "dots", "checks", "woven")

# Named ways of wearing a mask -> position of its top edge (`wear_shift`):
# 0 = properly (nose bridge to under the chin), 0.5 = nose exposed, 1 = on the chin.
WEAR_SHIFTS = {"proper": 0.0, "high": -0.12, "low": 0.2, "nose": 0.5, "chin": 1.0}


def variant_seed(global_seed: int, key: str, variant: int = 0) -> int:
    """A 64-bit seed from (global seed, image path, variant): stable across processes,
    machines and worker counts (unlike Python's salted hash())."""
    digest = hashlib.blake2b(f"{global_seed}\0{key}\0{variant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def parse_distribution(spec: str, choices, option: str) -> dict[str, float] | None:
    """`random` -> None (each family's own choice); `a` -> {a: 1}; `a:0.7,b:0.3` -> weights."""
    spec = spec.strip().lower()
    if spec in ("", "random"):
        return None
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in choices:
            raise ValueError(f"{option}: unknown value {name!r} (choose from random, {', '.join(choices)})")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"{option}: weight of {name!r} is not a number: {weight!r}") from None
        if weights[name] < 0:
            raise ValueError(f"{option}: weight of {name!r} is negative")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{option}: the weights add up to zero")
    return weights


def parse_colors(spec: str) -> list[str] | None:
    """`random` -> None; otherwise a comma list of CSS names or #hex, as #rrggbb."""
    spec = spec.strip()
    if spec.lower() in ("", "random"):
        return None
    colors = []
    for name in spec.split(","):
        try:
            from PIL import ImageColor  # here: the CLI's --help reads this module

            r, g, b = ImageColor.getrgb(name.strip())[:3]
        except ValueError:
            raise ValueError(f"--color: {name.strip()!r} is not a colour name or #hex value") from None
        colors.append(f"#{r:02x}{g:02x}{b:02x}")
    return colors


def parse_types(spec: str) -> tuple[dict[str, float] | None, dict[str, dict] | None]:
    """`--type`: `random` -> None (the built-in families equally); otherwise a comma list of
    entries, each a family name (built-in, case-insensitive; or from $MASKGEN_MASKS) or a
    family file's path (`my_mask.json`), with an optional `:weight`. -> (family name ->
    weight, the families of one's own used: name -> {"path": absolute, "digest": ...})."""
    if spec.strip().lower() in ("", "random"):
        return None, None
    weights: dict[str, float] = {}
    sources: dict[str, dict] = {}
    for part in spec.split(","):
        part = part.strip()
        ref, weight = (part, "") if part.lower().endswith(".json") else _split_weight(part)
        if not ref:
            raise ValueError(f"--type: empty entry in {spec!r}")
        if looks_like_path(ref):
            try:
                fam = register(ref)
            except ValueError as exc:
                raise ValueError(f"--type: {exc}") from None
            earlier = sources.get(fam.name)
            if earlier is not None and earlier["path"] != fam.source:
                raise ValueError(f"--type: two family files named {fam.name!r}: {earlier['path']} and {fam.source}")
            name = fam.name
        else:
            name = ref.lower() if is_builtin(ref.lower()) else ref
            try:
                fam = family(name)
            except ValueError as exc:
                if isinstance(exc, FamilyError):  # a broken file in $MASKGEN_MASKS
                    raise ValueError(f"--type: {exc}") from None
                raise ValueError(
                    f"--type: unknown value {ref!r} (choose from random, {', '.join(known_names())}, or a family file's path)"
                ) from None
        if fam.source is not None:
            sources[name] = {"path": fam.source, "digest": fam.digest}
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--type: weight of {ref!r} is not a number: {weight!r}") from None
        if weights[name] < 0:
            raise ValueError(f"--type: weight of {ref!r} is negative")
    if sum(weights.values()) <= 0:
        raise ValueError("--type: the weights add up to zero")
    return weights, sources or None


def _split_weight(part: str) -> tuple[str, str]:
    """`name:0.5` -> (name, "0.5"); a colon not followed by a weight belongs to the name."""
    ref, colon, weight = part.rpartition(":")
    return (ref.strip(), weight.strip()) if colon and ref else (part, "")


@dataclass(frozen=True)
class MaskOptions:
    """Distributions the masks are drawn from. None = each family's own realistic choice."""

    types: dict[str, float] | None = None  # family -> weight; None = all families equally
    colors: list[str] | None = None  # picked uniformly; None = the family's palette
    patterns: dict[str, float] | None = None  # pattern -> weight; None = the family's mix
    wear: dict[str, float] | None = None  # way of wearing -> weight; None = always proper
    wear_jitter: float = 0.0  # +- uniform noise added to each wear shift
    texture_weight: float | None = None  # 0..1 strength of the pattern; None = random 0.5..1
    families: dict[str, dict] | None = None  # families of one's own in `types`: name -> {"path", "digest"}

    def __post_init__(self):
        # Registered again wherever the options are rebuilt (a Ray worker: from_dict of the job
        # config), so that family(name) finds them there too; a no-op where they are known.
        for name, source in (self.families or {}).items():
            register_source(name, source["path"], source.get("digest"))

    @classmethod
    def parse(
        cls,
        type: str = "random",
        color: str = "random",
        pattern: str = "random",
        wear: str = "proper",
        wear_jitter: float = 0.0,
        texture_weight: float | None = None,
    ) -> MaskOptions:
        if texture_weight is not None and not 0 <= texture_weight <= 1:
            raise ValueError(f"--texture-weight must be between 0 and 1, got {texture_weight}")
        if not 0 <= wear_jitter <= 0.5:
            raise ValueError(f"--wear-jitter must be between 0 and 0.5, got {wear_jitter}")
        types, families = parse_types(type)
        return cls(
            types=types,
            colors=parse_colors(color),
            patterns=parse_distribution(pattern, PATTERNS, "--pattern"),
            wear=parse_distribution(wear, tuple(WEAR_SHIFTS), "--wear"),
            wear_jitter=wear_jitter,
            texture_weight=texture_weight,
            families=families,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["families"] is None:  # only there when used: the built-in types' config hashes stay as they were
            del data["families"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MaskOptions:
        return cls(**data)

    def sample(self, seed: int) -> MaskSpec:
        """One concrete mask, fully determined by `seed`."""
        u = iter(_uniforms(seed, 6))
        mask_type = _pick(next(u), self.types or dict.fromkeys(FAMILIES, 1.0))
        fam = family(mask_type)
        color = self.colors[int(next(u) * len(self.colors))] if self.colors else _pick(next(u), fam.colors)
        pattern = _pick(next(u), self.patterns or fam.patterns)
        wear = _pick(next(u), self.wear or {"proper": 1.0})
        shift = WEAR_SHIFTS[wear] + (2 * next(u) - 1) * self.wear_jitter
        weight = self.texture_weight if self.texture_weight is not None else 0.5 + 0.5 * next(u)
        return MaskSpec(mask_type, color, pattern, float(weight), wear, float(shift), seed)


@dataclass(frozen=True)
class MaskSpec:
    """One mask, every parameter recorded so the result can be reproduced exactly."""

    mask_type: str
    color: str  # "#rrggbb"
    pattern: str
    texture_weight: float
    wear: str
    wear_shift: float
    seed: int  # drives the remaining randomness: pattern phase, sensor noise


def _uniforms(seed: int, n: int) -> list[float]:
    """n uniform draws in [0, 1) from a 64-bit seed: one hash, about 30x cheaper per image
    than building a numpy Generator, and the same on every platform."""
    digest = hashlib.blake2b((seed % 2**64).to_bytes(8, "little"), digest_size=8 * n, person=b"maskgen.spec").digest()
    return [(int.from_bytes(digest[i : i + 8], "little") >> 11) * 2.0**-53 for i in range(0, 8 * n, 8)]  # 53 bits: < 1


def _pick(u: float, weights: dict[str, float]) -> str:
    """The name whose slice of the cumulative weights holds u (names sorted: stable order)."""
    names, cumulative = _cumulative(tuple(weights.items()))
    return names[min(bisect.bisect_right(cumulative, u * cumulative[-1]), len(names) - 1)]


@functools.lru_cache(maxsize=1024)
def _cumulative(items: tuple[tuple[str, float], ...]) -> tuple[list[str], list[float]]:
    """A distribution's names, sorted, and their cumulative weights: the same few
    distributions are drawn from for every image (4 draws a mask: a third of its cost)."""
    weights = dict(items)
    names = sorted(weights)
    return names, list(itertools.accumulate(weights[n] for n in names))
