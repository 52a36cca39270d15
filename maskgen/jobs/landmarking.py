"""One image in, its 68 landmarks out (no image written): what online mask augmentation
needs to mask a face at training time without running dlib there (`maskgen landmarks`).

Built once per worker; `process_batch` never raises for a bad input: every failure is a row.
Aligned crops of a batch get their landmarks in one call of the batched engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskgen.errors import one_line
from maskgen.faces.landmarks import Face, Landmarker, to_gray
from maskgen.faces.layouts import guess_layout
from maskgen.images import ImageError, decode_image
from maskgen.jobs.masking import check_relative, is_blank
from maskgen.jobs.protocol import Input, read_input
from maskgen.schemas import LANDMARKS_SCHEMA, identity_of


@dataclass(frozen=True)
class LandmarkConfig:
    """Everything that changes the output (hashed into the run's config hash)."""

    aligned: bool = True  # aligned crops: the face box from the crop's layout; else the detector's largest face
    layout: str = "auto"  # aligned crop layout: auto, dlib, sphereface, arcface
    detector: str = "hog"  # --wild: hog or cnn (mmod)
    upsample: int | None = None  # --wild: HOG upsampling; None = by photo size
    # batched (maskgen's numba engine) or dlib: the same landmarks, so not part of the config hash
    landmarker: str = field(default="batched", metadata={"same_output": True})


class LandmarkJob:
    schema = LANDMARKS_SCHEMA  # the manifest a run of this job writes

    def __init__(self, config: LandmarkConfig):
        self.config = config
        self.landmarker = Landmarker(detector=config.detector, upsample=config.upsample, layout=config.layout,
                                     engine=config.landmarker)

    def process_batch(self, inputs: list[Input], out_root: Path) -> list[list[dict]]:
        """One row per input (its largest face), in input order."""
        started = time.perf_counter()
        rows, pending = [], []  # pending: (row, grey image) of aligned crops to fit in one call
        for src, rel, known in inputs:
            row, gray = self._read(src, rel)
            rows.append(row)
            if gray is None:
                continue
            if known is not None:
                self._found(row, gray, Face((0, 0, gray.shape[1], gray.shape[0]), float("inf"), np.asarray(known, np.float32).reshape(68, 2)), 1)
            elif not self.config.aligned:
                faces = self.landmarker.detect(gray)
                self._found(row, gray, faces[0] if faces else None, len(faces))
            elif is_blank(gray):
                self._found(row, gray, None, 0)
            else:
                pending.append((row, gray))
        for (row, gray), face in zip(pending, self.landmarker.aligned_batch([g for _, g in pending]) if pending else []):
            self._found(row, gray, face, 1)
        share = (time.perf_counter() - started) * 1e3 / max(1, len(rows))
        for row in rows:
            row["elapsed_ms"] = share
        return [[row] for row in rows]

    def _read(self, src: Path, rel: str) -> tuple[dict, np.ndarray | None]:
        row = {"identity": identity_of(rel), "src_path": rel, "status": "ok", "error": ""}
        try:
            check_relative(rel)
            image = decode_image(read_input(src))
        except ImageError as err:
            row.update(status=err.status, error=one_line(err))
            return row, None
        except ValueError as err:  # an unsafe relative path
            row.update(status="decode_error", error=one_line(err))
            return row, None
        except OSError as err:
            row.update(status="decode_error", error=f"cannot read the file: {err.strerror or err}")
            return row, None
        row.update(width=image.bgr.shape[1], height=image.bgr.shape[0])
        return row, to_gray(image.bgr)

    def _found(self, row: dict, gray: np.ndarray, face: Face | None, count: int) -> None:
        h, w = gray.shape[:2]
        row.update(faces_found=count, layout=guess_layout(w, h) if self.config.layout == "auto" else self.config.layout)
        if face is None:
            row.update(status="no_face", error="blank image: no face" if self.config.aligned else "no face found")
            return
        row.update(box=[int(v) for v in face.box], landmarks=face.points.ravel().tolist())

