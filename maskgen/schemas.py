"""Every Parquet contract that crosses a layer, and every `maskgen.*` metadata key.

    MANIFEST_SCHEMA  a mask run's rows (`mask`, `generate`): one per input x variant [x face]
    ALIGN_SCHEMA     an `align` run's rows: one per crop (or faceless photo)
    LANDMARKS_SCHEMA a `landmarks` run's rows: one per image, its largest face's 68 points
    INPUTS_SCHEMA    a sharded run's plan/inputs.parquet: the sorted inputs
    TRAINING_SCHEMA  a training manifest (`trainset`, read by the trainer)
    PAIRS_SCHEMA     verification pairs (`pairs`, read by `evaluate`)

Readers take the columns they need by name, so a column may be added without breaking one;
a change of meaning bumps SCHEMA_VERSION (part of a run's config hash)."""

from __future__ import annotations

import pyarrow as pa

from maskgen.masks.quality import QA_SIGNALS

SCHEMA_VERSION = "2"  # 2: color_mode and the qa_ signals

# Parquet schema metadata keys (bytes, as pyarrow hands them back)
SCHEMA_VERSION_KEY = "maskgen.schema_version"
KIND_KEY = "maskgen.kind"  # "align" for align runs; absent for mask runs
SOURCE_ROOT_KEY = "maskgen.source_root"  # the input root of a `maskgen mask` run
CONFIG_KEY = "maskgen.config"  # a `maskgen mask` run's job config, JSON
NUM_CLASSES_KEY = "maskgen.num_classes"  # a training manifest's class count (labels 0..C-1)
# Where a relative image path in a trainset, pairs or scores file starts from: PATHS_FROM_MANIFEST,
# the folder holding the file. Files written before the key existed lack it (see datasets.pairs).
PATHS_BASE_KEY = "maskgen.paths_base"
PATHS_FROM_MANIFEST = "manifest"


def identity_of(rel: str) -> str:
    """A row's `identity`: the first folder of its path under the input root ("" for a loose file)."""
    return rel.split("/", 1)[0] if "/" in rel else ""


def read_key(metadata: dict | None, key: str, default: str | None = None) -> str | None:
    """A `maskgen.*` key from a pyarrow schema's metadata (None when absent)."""
    value = (metadata or {}).get(key.encode())
    return value.decode() if value is not None else default

# Status values a row can carry. `ok` is the only success.
STATUSES = (
    "ok",
    "decode_error",  # unreadable, empty, truncated, not an image, too large
    "no_face",  # wild mode: the detector found no face; aligned mode: a blank crop
    "render_error",  # fitting/rendering the mask failed
    "write_error",  # the output could not be written
    "qa_reject",  # rendered, but failed the quality checks (--qa-reject): its image is not written
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),  # first folder under the input root ("" for a loose file)
        ("src_path", pa.string()),  # input, relative to the input root, POSIX
        ("out_path", pa.string()),  # written image, relative to the output root ("" on failure)
        ("mask_path", pa.string()),  # occlusion PNG, 255 = covered ("" for originals/failures)
        ("variant", pa.string()),  # "original" | "masked"
        ("variant_index", pa.int16()),  # 0.. within the image's masked variants; -1 for original
        ("face_index", pa.int16()),  # which face of the photo (0 = largest); 0 in aligned mode
        ("mask_type", pa.string()),
        ("color", pa.string()),  # "#rrggbb"
        ("pattern", pa.string()),
        ("texture_weight", pa.float32()),
        ("wear", pa.string()),  # named way of wearing it: proper, low, high, nose, chin
        ("wear_shift", pa.float32()),  # continuous position of the top edge (0 = proper)
        ("seed", pa.uint64()),  # the variant's own seed: hash(global seed, src_path, variant)
        ("coverage", pa.float32()),  # fraction of the face box covered by the mask
        ("landmarks", pa.list_(pa.float32(), 136)),  # 68 (x, y) pairs, flattened; null on failure
        *[(name, pa.float32()) for name in QA_SIGNALS],  # the render's quality signals (masks.quality); null when not rendered
        ("color_mode", pa.string()),  # the input's: gray (one channel: so is the output), gray_rgb (B = G = R: so is the mask), color
        ("status", pa.string()),
        ("error", pa.string()),  # one-line message; "" when ok
        ("elapsed_ms", pa.float32()),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION},
)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's keys) as a table that carries the schema version."""
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

ALIGN_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("src_path", pa.string()),  # the photo, relative to the input root
        ("out_path", pa.string()),  # the aligned crop, relative to OUT/images ("" on failure)
        ("face_index", pa.int16()),  # 0 = largest face of the photo
        ("faces_found", pa.int16()),  # faces the detector found in the photo
        ("method", pa.string()),  # detected | center_crop (the --fallback for faceless photos)
        ("box", pa.list_(pa.int32(), 4)),  # detector box (left, top, right, bottom) in the photo
        ("score", pa.float32()),  # detector confidence
        ("points5", pa.list_(pa.float32(), 10)),  # eye centres, nose tip, mouth corners in the photo
        ("transform", pa.list_(pa.float64(), 6)),  # 2x3 similarity: photo -> crop
        ("template", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("elapsed_ms", pa.float32()),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION, KIND_KEY: "align"},
)

LANDMARKS_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("src_path", pa.string()),  # the image, relative to the input root, POSIX
        ("width", pa.int32()),  # the image's size (the landmarks are in its pixels)
        ("height", pa.int32()),
        ("layout", pa.string()),  # the aligned crop's layout (auto resolved: dlib, sphereface, arcface)
        ("faces_found", pa.int16()),  # 1 in aligned mode; the detector's count with --wild
        ("box", pa.list_(pa.int32(), 4)),  # the face box the predictor ran in (left, top, right, bottom)
        ("landmarks", pa.list_(pa.float32(), 136)),  # 68 (x, y) pairs, flattened; null on failure
        ("status", pa.string()),  # ok, decode_error or no_face
        ("error", pa.string()),
        ("elapsed_ms", pa.float32()),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION, KIND_KEY: "landmarks"},
)

INPUTS_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("rel", pa.string()),  # relative to the input root, POSIX
        ("landmarks", pa.list_(pa.float32(), 136)),  # precomputed, or null
    ]
)

TRAINING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the image: absolute, or relative to the manifest's folder (PATHS_BASE_KEY)
        ("label", pa.int32()),  # class index, 0..num_classes-1
        ("identity", pa.string()),
        ("variant", pa.string()),  # original | masked
        ("mask_type", pa.string()),
        ("wear", pa.string()),
        ("src_path", pa.string()),  # the source image it came from (relative to its run's input)
    ]
)

PAIRS_SCHEMA = pa.schema(
    [
        ("fold", pa.int16()),
        ("pair_type", pa.string()),
        ("same", pa.bool_()),  # same identity
        ("path_a", pa.string()),  # the images: absolute, or relative to the pairs file's folder (PATHS_BASE_KEY)
        ("path_b", pa.string()),
        ("identity_a", pa.string()),
        ("identity_b", pa.string()),
        ("src_a", pa.string()),  # the source photos (a masked image's original)
        ("src_b", pa.string()),
        ("mask_type_a", pa.string()),
        ("mask_type_b", pa.string()),
        ("wear_a", pa.string()),
        ("wear_b", pa.string()),
    ]
)
