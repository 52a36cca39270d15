"""What a library user calls (re-exported lazily by `maskgen`): mask one image in memory, and
run the sharded, resumable mask job over a face tree, as `maskgen generate` does."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MaskedFace:
    image: np.ndarray  # uint8, the masked image: same size and channels as the input (grey stays grey)
    occlusion: np.ndarray  # HxW uint8, 255 where the mask covers the face
    record: dict  # every parameter (mask spec, seed, coverage, landmarks): what a manifest row holds


def mask_image(
    image: np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    seed: int = 0,
    aligned: bool = True,
    landmarker=None,
    **mask_options,
) -> MaskedFace:
    """Put one mask on the face in `image` (BGR uint8 HxWx3, or HxW grey).

    `landmarks` (68x2) skip the predictor; else `landmarker` (a maskgen.Landmarker, reused
    across calls: loading dlib's model takes a second) finds them, from the crop geometry when
    `aligned`, else with the detector (the largest face). `mask_options` are `maskgen mask`'s:
    type, color, pattern, wear, wear_jitter, texture_weight (same strings, e.g.
    type="surgical:0.7,n95:0.3"). The same seed gives the same pixels. Raises ValueError for
    a bad option, LookupError when no face is found, maskgen.RenderError when the landmarks do
    not fit the image. The mask takes the photo's own saturation and colour cast (a grey photo
    gets a grey mask: maskgen.masks.grading)."""
    import cv2

    from maskgen.faces.landmarks import Landmarker
    from maskgen.masks.grading import grey_grade
    from maskgen.masks.options import MaskOptions
    from maskgen.masks.render import render_mask

    bgr = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    if landmarks is None:
        landmarker = landmarker or Landmarker()
        faces = [landmarker.aligned(bgr)] if aligned else landmarker.detect(bgr)
        if not faces or faces[0] is None:
            raise LookupError("no face found in the image")
        landmarks = faces[0].points
    points = np.asarray(landmarks, dtype=np.float32).reshape(68, 2)
    spec = MaskOptions.parse(**mask_options).sample(seed)
    rendered = render_mask(bgr, points, spec, grey_grade() if image.ndim == 2 else None)
    record = asdict(spec) | {"coverage": rendered.coverage, "landmarks": points.tolist()}
    out = cv2.cvtColor(rendered.image, cv2.COLOR_BGR2GRAY) if image.ndim == 2 else rendered.image  # grey stays grey
    return MaskedFace(out, rendered.occlusion, record)


def generate_tree(
    input_root: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    **job_options,
):
    """Mask every face of `input_root` (<root>/<identity>/<image>) into `out_dir` with Ray,
    resumably, exactly as `maskgen generate` does; returns the run's summary (`.to_dict()`,
    `.statuses`, `.complete`). `job_options` are generate's (variants, keep_original, seed,
    aligned, layout, mask_type, color, pattern, wear, ...), with Python names."""
    from maskgen.jobs.masking import build_job_config
    from maskgen.pipeline.driver import GenerateRequest, generate

    request = GenerateRequest(
        input_root=Path(input_root), out_dir=Path(out_dir), config=build_job_config(**job_options),
        shard_size=shard_size, workers=workers, address=address, overwrite=overwrite,
    )
    return generate(request)
