"""The manifest schema: one row per (input image, variant), failures included."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

# Status values a row can carry. `ok` is the only success.
STATUSES = (
    "ok",
    "decode_error",  # unreadable, empty, truncated, not an image, too large
    "no_face",  # wild mode: the detector found no face; aligned mode: a blank crop
    "render_error",  # fitting/rendering the mask failed
    "write_error",  # the output could not be written
)

SCHEMA = pa.schema(
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
        ("status", pa.string()),
        ("error", pa.string()),  # one-line message; "" when ok
        ("elapsed_ms", pa.float32()),
    ],
    metadata={"maskgen.schema_version": SCHEMA_VERSION},
)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's keys) as a table that carries the schema version."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)
