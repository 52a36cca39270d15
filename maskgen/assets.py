"""Where the project's own assets live: mask templates and the sample faces."""

from __future__ import annotations

import os
from pathlib import Path


def assets_dir() -> Path:
    """$MASKGEN_ASSETS, else the copy inside an installed wheel, else the source tree's."""
    if os.environ.get("MASKGEN_ASSETS"):
        return Path(os.environ["MASKGEN_ASSETS"])
    packaged = Path(__file__).parent / "_assets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "assets"


def sample_faces() -> Path:
    """The built-in aligned sample tree: 5 identities x 11 150x150 face chips."""
    return assets_dir() / "faces" / "aligned"
