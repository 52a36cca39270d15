"""maskgen: realistic synthetic face masks at dataset scale, and a recogniser trained on them.

The public Python API (each name is imported on first use, so `import maskgen` is light):

    import cv2, maskgen
    face = cv2.imread("face.jpg")                        # BGR uint8, an aligned crop or a photo
    masked = maskgen.mask_image(face, seed=7, type="surgical", wear="nose")
    masked.image, masked.occlusion, masked.record        # BGR, 255 = covered, every parameter

    landmarker = maskgen.Landmarker()                    # dlib's 68 points
    points = landmarker.aligned(face).points             # (or .detect(photo) for every face)

    summary = maskgen.generate_tree("casia/aligned", "out/webface", variants=1, keep_original=True)

    masks = maskgen.OnlineMasks.parse(p=0.5, seed=1, type="surgical:0.6,cloth:0.4")
    image, was_masked = masks(face, points, index=i, epoch=e)   # in a Dataset: no dlib there

Everything else is importable from its package: maskgen.masks (templates, fit, render),
maskgen.faces (landmarks, crop layouts), maskgen.jobs (per-image jobs), maskgen.pipeline
(sharded, resumable execution on Ray), maskgen.datasets (reading finished runs, training
manifests, pairs), maskgen.recognition (the trainer), maskgen.evaluation (verification).
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["Landmarker", "MaskOptions", "MaskSpec", "MaskedFace", "OnlineMasks", "RenderError", "generate_tree", "mask_image"]

_LAZY = {
    "Landmarker": "maskgen.faces.landmarks",
    "MaskOptions": "maskgen.masks.options",
    "MaskSpec": "maskgen.masks.options",
    "OnlineMasks": "maskgen.masks.online",
    "RenderError": "maskgen.masks.render",
    "MaskedFace": "maskgen.api",
    "mask_image": "maskgen.api",
    "generate_tree": "maskgen.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maskgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
