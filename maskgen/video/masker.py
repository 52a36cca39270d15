"""Frames in, masked frames out: tracking plus one fixed mask per tracked person.

Frames are held back from one detection frame to the next (at most MAX_HELD of them), so a
face first detected at a detection frame can be followed backwards and masked in the frames
before it too. Each person's mask is drawn once, from (seed, track id), and kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from maskgen.faces.landmarks import Landmarker
from maskgen.masks.options import MaskOptions, MaskSpec, variant_seed
from maskgen.masks.render import RenderError, render_mask
from maskgen.video.tracking import FaceTracker, Track, TrackedFace, TrackerConfig

MAX_HELD = 30  # frames held back for filling in; bounds memory when detections are far apart


@dataclass
class MaskedFrame:
    index: int
    original: np.ndarray  # BGR, as read
    image: np.ndarray  # BGR, masked (the original object itself when there is no face)
    occlusion: np.ndarray  # HxW uint8, 255 where a mask covers a face
    faces: list[TrackedFace]


@dataclass
class _Pending:
    index: int
    frame: np.ndarray
    gray: np.ndarray
    faces: list[TrackedFace] = field(default_factory=list)


class VideoMasker:
    """`push` frames in order (say which is the last), get masked frames back in order."""

    def __init__(self, fps: float, options: MaskOptions = MaskOptions(), seed: int = 0,
                 config: TrackerConfig = TrackerConfig(), landmarker: Landmarker | None = None):
        self.options, self.seed, self.config = options, seed, config
        self.tracker = FaceTracker(fps, config, landmarker)
        self.render_failures = 0
        self._specs: dict[int, MaskSpec] = {}
        self._pending: list[_Pending] = []
        self._next_index = 0

    def spec(self, track_id: int) -> MaskSpec:
        """The mask of one tracked person: the same for the whole clip, and for every run."""
        if track_id not in self._specs:
            self._specs[track_id] = self.options.sample(variant_seed(self.seed, f"track{track_id}"))
        return self._specs[track_id]

    def push(self, frame: np.ndarray, last: bool = False) -> list[MaskedFrame]:
        """Masked frames that are ready, oldest first. `frame` is kept (not copied) until it
        comes back: do not reuse its buffer for the next frame."""
        index, self._next_index = self._next_index, self._next_index + 1
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        detect = index % self.config.detect_every == 0 or last  # the last one: faces that just came in
        faces, confirmed = self.tracker.step(frame, gray, index, detect)
        self._pending.append(_Pending(index, frame, gray, faces))
        if not detect:
            return [self._render(self._pending.pop(0))] if len(self._pending) > MAX_HELD else []
        for track in confirmed:
            self._fill_in_backwards(track)
        return self.flush()

    def flush(self) -> list[MaskedFrame]:
        """Render and hand back every frame held back (call once more after the last frame
        if it was not pushed with last=True)."""
        done = [self._render(p) for p in self._pending]
        self._pending.clear()
        return done

    def _fill_in_backwards(self, track: Track) -> None:
        """Add `track`'s face to the held-back frames just before this one that lack it."""
        gap = []
        for pending in reversed(self._pending[:-1]):
            if any(f.track_id == track.id for f in pending.faces):
                break
            gap.append(pending)
        found = self.tracker.backtrack(track, [(p.gray, [f.box for f in p.faces]) for p in gap])
        for pending, face in zip(gap, found):
            pending.faces.append(face)

    def _render(self, pending: _Pending) -> MaskedFrame:
        image, occlusion = pending.frame, np.zeros(pending.frame.shape[:2], np.uint8)
        for face in sorted(pending.faces, key=lambda f: f.track_id):
            try:
                rendered = render_mask(image, face.smoothed, self.spec(face.track_id))
            except RenderError:
                self.render_failures += 1
                continue
            image = rendered.image
            np.maximum(occlusion, rendered.occlusion, out=occlusion)
        return MaskedFrame(pending.index, pending.frame, image, occlusion, pending.faces)
