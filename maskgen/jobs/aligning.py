"""One raw photo in, aligned face crops out: detect, 5 points, similarity warp, write.

Built once per worker (it holds the dlib models); `process` never raises for a bad input:
every failure is a row, and every crop's row says how to trace it back to the photo."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from maskgen.errors import one_line
from maskgen.faces.align import align_face, five_points, template_points
from maskgen.faces.landmarks import Face, Landmarker, ShapePredictor
from maskgen.faces.models import model_path
from maskgen.images import ImageError, decode_image, encode_image, output_format
from maskgen.jobs.masking import check_relative
from maskgen.jobs.protocol import OneByOne, read_input
from maskgen.jobs.sinks import as_sink
from maskgen.schemas import ALIGN_SCHEMA, identity_of

SELECTIONS = ("largest", "central", "all")


@dataclass(frozen=True)
class AlignConfig:
    """Everything that changes the output bytes."""

    template: str = "sphereface"  # sphereface (96x112) or arcface (112x112)
    size: tuple[int, int] | None = None  # crop (width, height); None = the template's own
    detector: str = "hog"  # hog or cnn (mmod)
    upsample: int | None = None  # HOG upsampling; None = by photo size
    points: int = 68  # 68: eye centres/nose tip/mouth corners from dlib's 68; 5: dlib's 5-point model
    select: str = "largest"  # largest | central | all faces of a photo
    fallback: bool = False  # faceless photos: a centre crop, marked method=center_crop
    image_format: str = "JPEG"
    quality: int = 95
    # batched (maskgen's numba engine) or dlib: the same landmarks, so not part of the config hash
    landmarker: str = field(default="batched", metadata={"same_output": True})


class AlignJob(OneByOne):
    schema = ALIGN_SCHEMA  # the manifest a run of this job writes

    def __init__(self, config: AlignConfig):
        if config.select not in SELECTIONS:
            raise ValueError(f"--select: choose from {', '.join(SELECTIONS)}")
        template_points(config.template, config.size)  # validates the template name
        self.config = config
        self.landmarker = Landmarker(detector=config.detector, upsample=config.upsample, engine=config.landmarker)
        self.five = ShapePredictor(model_path("landmarks5"), config.landmarker) if config.points == 5 else None

    def process(self, src: Path, rel: str, out_root: Path) -> list[dict]:
        start = time.perf_counter()
        base = {"identity": identity_of(rel), "src_path": rel, "template": self.config.template}
        try:
            check_relative(rel)
        except ValueError as err:
            return [_row(base, start, status="write_error", error=one_line(err))]
        try:
            bgr = decode_image(read_input(src)).bgr
        except ImageError as err:
            return [_row(base, start, status="decode_error", error=one_line(err))]
        except OSError as err:
            return [_row(base, start, status="decode_error", error=f"cannot read the file: {err.strerror or err}")]
        faces = self._select(self.landmarker.detect(bgr), bgr.shape)
        if not faces:
            return [self._no_face(base, bgr, rel, out_root, start)]
        rows = []
        for index, face in enumerate(faces):
            points = self._points5(bgr, face)
            crop, matrix = align_face(bgr, points, self.config.template, self.config.size)
            out_rel = self._out_name(rel, index if len(faces) > 1 else None)
            rows.append(self._write(base, start, crop, out_rel, out_root, face_index=index, faces_found=len(faces),
                                    method="detected", box=list(face.box), score=face.score,
                                    points5=points.ravel().tolist(), transform=matrix.ravel().tolist()))
        return rows

    def _select(self, faces: list[Face], shape) -> list[Face]:
        if self.config.select == "all" or not faces:
            return faces
        if self.config.select == "largest":
            return faces[:1]  # the landmarker sorts largest first
        centre = np.array([shape[1], shape[0]]) / 2
        return [min(faces, key=lambda f: np.linalg.norm(np.array(f.box[:2]) / 2 + np.array(f.box[2:]) / 2 - centre))]

    def _points5(self, bgr: np.ndarray, face: Face) -> np.ndarray:
        if self.five is None:
            return five_points(face.points)
        # dlib's 5-point model: outer/inner corners of each eye, and the nose base. It has no
        # mouth corners, so those come from the 68-point fit.
        p = self.five.predict([bgr], [face.box])[0].astype(np.float64)
        full = five_points(face.points)
        return np.array([(p[2] + p[3]) / 2, (p[0] + p[1]) / 2, full[2], full[3], full[4]])

    def _no_face(self, base, bgr, rel, out_root, start) -> dict:
        if not self.config.fallback:
            return _row(base, start, status="no_face", error="no face found", faces_found=0)
        h, w = bgr.shape[:2]
        size = template_points(self.config.template, self.config.size)[1]
        scale = min(w / size[0], h / size[1]) * 0.8  # the middle 80 %: a face, if any, is usually there
        matrix = np.array([[1 / scale, 0, size[0] / 2 - w / 2 / scale], [0, 1 / scale, size[1] / 2 - h / 2 / scale]])
        crop = cv2.warpAffine(bgr, matrix, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        return self._write(base, start, crop, self._out_name(rel, None), out_root, face_index=0, faces_found=0,
                           method="center_crop", transform=matrix.ravel().tolist(), error="no face found: centre crop")

    def _out_name(self, rel: str, index: int | None) -> str:
        ext = output_format(self.config.image_format)[1]
        stem = str(PurePosixPath(rel).with_suffix(""))
        return f"{stem}{ext}" if index is None else f"{stem}_f{index}{ext}"

    def _write(self, base, start, crop, out_rel, out_root, **fields) -> dict:
        row = _row(base, start, out_path=out_rel, status="ok", **fields)
        try:
            as_sink(out_root).put([row], {out_rel: encode_image(crop, self.config.image_format, self.config.quality)})
        except OSError as err:
            return _row(base, start, status="write_error", error=one_line(err), **fields)
        return row


def _row(base: dict, start: float, **fields) -> dict:
    row = {
        **base, "out_path": "", "face_index": 0, "faces_found": 0, "method": "", "box": None, "score": None,
        "points5": None, "transform": None, "status": "ok", "error": "",
    }
    row.update(fields)
    row["elapsed_ms"] = (time.perf_counter() - start) * 1e3
    return row


