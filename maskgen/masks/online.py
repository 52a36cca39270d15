"""Online mask augmentation: mask an aligned face on the fly from its known landmarks (from
`maskgen landmarks`), for maskgen's trainer and for anyone's own PyTorch pipeline.

    masks = OnlineMasks.parse(p=0.5, seed=0, type="surgical:0.6,cloth:0.4", wear="proper:0.8,nose:0.2")
    image, masked = masks(image, landmarks, index=i, epoch=epoch)    # in a Dataset's __getitem__
    original, twin = masks.pair(image, landmarks, index=i, epoch=epoch)  # a face and its masked twin

A plain picklable callable (DataLoader workers get a copy), numpy in and out, no dlib and no
torch. Which faces are masked and with what is a pure function of (seed, epoch, index): a
rerun, or a resumed run, sees the same masks, and each epoch new ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from maskgen.masks.grading import grey_grade
from maskgen.masks.options import MaskOptions, MaskSpec, variant_seed
from maskgen.masks.render import RenderError, render_mask


@dataclass(frozen=True)
class OnlineMasks:
    p: float = 0.5  # share of the faces that get a mask
    seed: int = 0  # different from every offline (generate) and test-pair seed
    options: MaskOptions = field(default_factory=MaskOptions)

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ValueError(f"online masks: p must be between 0 and 1, got {self.p}")

    @classmethod
    def parse(cls, p: float = 0.5, seed: int = 0, **mask_options) -> OnlineMasks:
        """`mask_options` are `maskgen mask`'s: type, color, pattern, wear, wear_jitter,
        texture_weight (the same strings, e.g. type="surgical:0.7,n95:0.3")."""
        return cls(p, seed, MaskOptions.parse(**mask_options))

    def spec(self, index: int, epoch: int = 0) -> MaskSpec | None:
        """The mask sample `index` gets in `epoch` (None: none this time)."""
        key = variant_seed(self.seed, f"online\0{epoch}\0{index}")
        if (key & 0xFFFFFFFF) / 2**32 >= self.p:
            return None
        return self.options.sample(key >> 1)

    def __call__(self, image: np.ndarray, landmarks, index: int, epoch: int = 0) -> tuple[np.ndarray, bool]:
        """(the image, masked or as it was; whether it was masked). uint8 HxW or HxWx3 BGR
        in, the same shape out; `landmarks` (68, 2) or 136 floats in the image's pixels. A
        face the mask cannot be fitted to (degenerate landmarks) is returned as it was."""
        spec = self.spec(index, epoch)
        if spec is None or landmarks is None:
            return image, False
        return mask_face(image, landmarks, spec)

    def pair(self, image: np.ndarray, landmarks, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """(the image, its masked twin), the twin masked whatever p says (None when the mask
        cannot be fitted): for batches that hold both."""
        spec = self.options.sample(variant_seed(self.seed, f"twin\0{epoch}\0{index}"))
        twin, masked = mask_face(image, landmarks, spec) if landmarks is not None else (image, False)
        return image, twin if masked else None


def mask_face(image: np.ndarray, landmarks, spec: MaskSpec) -> tuple[np.ndarray, bool]:
    """`image` (uint8, grey or BGR) with the mask `spec` on the face at `landmarks`; a grey
    face, or grey stored as colour, gets a grey mask. (image, False) if it cannot be fitted."""
    points = np.asarray(landmarks, np.float32).reshape(68, 2)
    grey = image.ndim == 2
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if grey else image
    if not grey:
        b, g, r = cv2.split(bgr)
        grey = cv2.countNonZero(cv2.absdiff(b, g)) == 0 and cv2.countNonZero(cv2.absdiff(g, r)) == 0
    try:
        out = render_mask(bgr, points, spec, grey_grade() if grey else None).image
    except RenderError:
        return image, False
    return (cv2.cvtColor(out, cv2.COLOR_BGR2GRAY) if image.ndim == 2 else out), True
