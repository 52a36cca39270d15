"""Reading a `maskgen landmarks` run back: each image's 68 points, by the image's real path
(what the trainer's online masks look up, whatever manifest names the image)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskgen.datasets.runs import RunError, open_run


def read_landmarks(run: str | Path) -> dict[str, np.ndarray]:
    """{real path of the image: (68, 2) float32} for every `ok` row of the run (its folder, or
    its manifest when it records the input root)."""
    opened = open_run(Path(run))
    if opened.source is None:
        raise RunError(f"{run}: the run does not record its input folder (a `maskgen landmarks` run folder does)")
    table = opened.read(["src_path", "landmarks", "status"]).to_pydict()
    if "landmarks" not in table:
        raise RunError(f"{run} is not a landmarks run (no landmarks column)")
    root = os.path.realpath(opened.source)
    return {
        os.path.join(root, rel): np.asarray(points, np.float32).reshape(68, 2)
        for rel, points, status in zip(table["src_path"], table["landmarks"], table["status"])
        if status == "ok" and points is not None
    }
