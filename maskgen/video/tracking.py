"""Faces across video frames: detect every N frames, follow each face in between.

Following a face costs one landmark fit (~1 ms) instead of a detection (~20 ms at 640x480):
the 68 points are re-fitted in a box predicted from the previous frame (constant velocity),
and the new points give the next box. Two checks end a track between detections: the box
leaves the frame, or the face patch stops resembling the one the detector last confirmed
(normalised cross-correlation) — the predictor always returns 68 points, even on a wall.

At a detection frame, detections are matched to tracks by the overlap of boxes. A track the
detector misses for a few rounds (a turned head) is kept while it still looks like the face;
a lost track keeps its id for a while, so a person who is briefly hidden gets the same mask
back. `backtrack` follows a newly confirmed face backwards through the frames since the
previous detection, so a face that appears between detections is masked from its first frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from maskgen.faces.landmarks import DETECTORS, ENGINES, Box, Landmarker, box_iou
from maskgen.video.smoothing import OneEuroFilter, landmark_scale

_PATCH = 24  # side of the face patch compared between frames (pixels)


@dataclass(frozen=True)
class TrackerConfig:
    detect_every: int = 5  # frames between detections; faces are followed in between
    detector: str = "hog"  # hog, or cnn (dlib's mmod: more turned faces, ~10x slower on a CPU)
    upsample: int = 0  # HOG upsampling: 0 finds faces from ~80 px, each step halves that at ~4x time
    detect_max_side: int = 1280  # larger frames are shrunk to this for detection only
    smooth: bool = True  # One Euro filter on the landmarks the mask is fitted to
    match_iou: float = 0.3  # a detection continues a track whose predicted box overlaps it this much
    min_similarity: float = 0.5  # below this correlation with its template, a followed face is gone
    max_unconfirmed: int = 2  # detection rounds a followed face may go unseen by the detector
    remember_s: float = 2.0  # a lost face that reappears where it vanished within this keeps its id
    landmarker: str = "batched"  # landmark engine: batched or dlib (the same landmarks)

    def __post_init__(self):
        if self.detect_every < 1:
            raise ValueError(f"--detect-every must be at least 1, got {self.detect_every}")
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector: unknown detector {self.detector!r} (choose from {', '.join(DETECTORS)})")
        if not 0 <= self.upsample <= 3:
            raise ValueError(f"--upsample must be between 0 and 3, got {self.upsample}")
        if self.landmarker not in ENGINES:
            raise ValueError(f"--landmarker: unknown engine {self.landmarker!r} (choose from {', '.join(ENGINES)})")


@dataclass(frozen=True)
class TrackedFace:
    track_id: int
    points: np.ndarray  # (68, 2) float32, this frame's landmark fit
    smoothed: np.ndarray  # (68, 2) float32, the points the mask is fitted to
    box: Box


@dataclass(frozen=True)
class BoxShape:
    """Where a face's detector box sits relative to its landmarks, in landmark-scale units:
    the predictor expects boxes like the detector's, so followed boxes keep this shape."""

    offset: np.ndarray  # box centre - landmark centroid
    size: np.ndarray  # box width, height

    @classmethod
    def of(cls, box: Box, points: np.ndarray) -> BoxShape:
        scale = landmark_scale(points)
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        return cls((centre - points.mean(0)) / scale, np.array([box[2] - box[0], box[3] - box[1]]) / scale)

    def around(self, points: np.ndarray, shift: np.ndarray | None = None) -> Box:
        scale = landmark_scale(points)
        centre = points.mean(0) + self.offset * scale + (0 if shift is None else shift)
        half = self.size * scale / 2
        return tuple(int(round(v)) for v in (*(centre - half), *(centre + half)))  # type: ignore[return-value]


@dataclass(eq=False)  # identity, not field equality (fields hold arrays)
class Track:
    id: int
    points: np.ndarray  # latest landmark fit (raw)
    shape: BoxShape
    template: np.ndarray  # face patch when the detector last confirmed it
    filter: OneEuroFilter
    last_seen: int  # frame index
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centroid motion per frame
    unconfirmed: int = 0  # detection rounds since the detector last saw it
    lost: bool = False

    @property
    def box(self) -> Box:
        return self.shape.around(self.points)

    def predicted_box(self) -> Box:
        return self.shape.around(self.points, self.velocity)


def face_patch(gray: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The face resampled upright (eyes level) and at a fixed size, zero-mean and unit-variance:
    comparable across head roll and distance."""
    dx, dy = points[42:48].mean(0) - points[36:42].mean(0)
    step = 2.6 * landmark_scale(points) / _PATCH  # image pixels per patch pixel
    eye_line = max(float(np.hypot(dx, dy)), 1e-6)
    cos, sin = step * dx / eye_line, step * dy / eye_line
    cx, cy = points.mean(0) - (_PATCH - 1) / 2 * np.array([cos - sin, sin + cos])
    to_image = np.float32([[cos, -sin, cx], [sin, cos, cy]])  # patch (u, v) -> image (x, y)
    patch = cv2.warpAffine(gray, to_image, (_PATCH, _PATCH), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    return (patch - patch.mean()) / (patch.std() + 1e-3)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).mean())  # normalised cross-correlation of two face_patch outputs


def _inside_fraction(box: Box, width: int, height: int) -> float:
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1)
    ix = max(0, min(box[2], width) - max(box[0], 0))
    iy = max(0, min(box[3], height) - max(box[1], 0))
    return ix * iy / area


class FaceTracker:
    """Feed it every frame in order; it returns the faces in each."""

    def __init__(self, fps: float, config: TrackerConfig = TrackerConfig(), landmarker: Landmarker | None = None):
        self.fps, self.config = fps, config
        self.landmarker = landmarker or Landmarker(detector=config.detector, upsample=config.upsample, engine=config.landmarker)
        if (self.landmarker.detector_name, self.landmarker.upsample) != (config.detector, config.upsample):
            raise ValueError("the landmarker's detector and upsample differ from the tracker config's")
        self.tracks: list[Track] = []
        self.tracks_started = 0  # also the next track's id

    def step(self, frame: np.ndarray, gray: np.ndarray, index: int, detect: bool) -> tuple[list[TrackedFace], list[Track]]:
        """This frame's faces, and the tracks the detector confirmed in it (new, revived or
        re-seen: the ones worth following backwards through earlier frames)."""
        confirmed = self._match_detections(frame, gray, index) if detect else []
        for track in self._active():
            if track not in confirmed and not self._follow(track, gray, index):
                track.lost = True
        self._drop_duplicates()
        forget = index - self.config.remember_s * self.fps
        self.tracks = [t for t in self.tracks if not t.lost or t.last_seen >= forget]
        faces = [self._face(t) for t in self._active()]
        return faces, [t for t in confirmed if t in self.tracks and not t.lost]

    def backtrack(self, track: Track, earlier: list[tuple[np.ndarray, list[Box]]]) -> list[TrackedFace]:
        """Follow `track` backwards through `earlier` frames (gray, boxes of faces already
        there), newest first; stops where the face is gone or another face is in its place."""
        points, velocity, found = track.points, np.zeros(2), []
        smoother = OneEuroFilter(self.fps)
        smoother(points)
        for gray, taken in earlier:
            fitted = self._refit(gray, points, velocity, track)
            if fitted is None:
                break
            box = track.shape.around(fitted)
            if any(box_iou(box, other) > 0.5 for other in taken):
                break
            velocity, points = fitted.mean(0) - points.mean(0), fitted
            smoothed = smoother(fitted) if self.config.smooth else fitted
            found.append(TrackedFace(track.id, fitted, smoothed, box))
        return found

    # -- detection frames

    def _match_detections(self, frame: np.ndarray, gray: np.ndarray, index: int) -> list[Track]:
        detections = self._detect(frame, gray)
        pairs = sorted(
            ((box_iou(box, t.box if t.lost else t.predicted_box()), d, t)
             for d, (box, _) in enumerate(detections) for t in self.tracks),
            key=lambda p: (-p[0], p[1], p[2].id),
        )
        used_detections, confirmed = set(), []
        for iou, d, track in pairs:
            if iou < self.config.match_iou or d in used_detections or track in confirmed:
                continue
            used_detections.add(d)
            confirmed.append(track)
            self._confirm(track, gray, index, *detections[d])
        for d, (box, points) in enumerate(detections):
            if d not in used_detections:
                confirmed.append(self._start(gray, index, box, points))
        for track in self._active():
            if track not in confirmed:
                track.unconfirmed += 1
                track.lost = track.unconfirmed > self.config.max_unconfirmed
        return confirmed

    def _detect(self, frame: np.ndarray, gray: np.ndarray) -> list[tuple[Box, np.ndarray]]:
        scale = min(1.0, self.config.detect_max_side / max(gray.shape))
        if scale == 1.0:
            return [(f.box, f.points) for f in self.landmarker.detect(frame)]
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = [tuple(int(round(v / scale)) for v in f.box) for f in self.landmarker.detect(small)]
        return [(box, self._fit(gray, box)) for box in boxes]

    def _start(self, gray: np.ndarray, index: int, box: Box, points: np.ndarray) -> Track:
        track = Track(self.tracks_started, points, BoxShape.of(box, points), face_patch(gray, points),
                      OneEuroFilter(self.fps), index)
        self.tracks.append(track)
        self.tracks_started += 1
        return track

    def _confirm(self, track: Track, gray: np.ndarray, index: int, box: Box, points: np.ndarray) -> None:
        """A detection matched `track`: keep following it in its own box (steadier than
        jumping to the detector's), unless it has drifted off the detection."""
        followed = None if track.lost else self._refit(gray, track.points, track.velocity, track, check=False)
        if followed is None or box_iou(track.shape.around(followed), box) < 0.5:
            if track.lost:
                track.filter.reset()  # a gap: do not smooth across it
            track.shape, track.velocity, followed = BoxShape.of(box, points), np.zeros(2), points
        else:
            track.velocity = followed.mean(0) - track.points.mean(0)
        track.points, track.last_seen, track.unconfirmed, track.lost = followed, index, 0, False
        track.template = face_patch(gray, track.points)

    # -- every frame

    def _follow(self, track: Track, gray: np.ndarray, index: int) -> bool:
        fitted = self._refit(gray, track.points, track.velocity, track)
        if fitted is None:
            return False
        track.velocity, track.points, track.last_seen = fitted.mean(0) - track.points.mean(0), fitted, index
        return True

    def _refit(self, gray: np.ndarray, points: np.ndarray, velocity: np.ndarray, track: Track,
               check: bool = True) -> np.ndarray | None:
        """Landmarks re-fitted in the box predicted from `points` moving at `velocity`;
        None when that is no longer `track`'s face."""
        fitted = self._fit(gray, track.shape.around(points, velocity))
        box = track.shape.around(fitted)
        h, w = gray.shape
        if _inside_fraction(box, w, h) < 0.5 or min(box[2] - box[0], box[3] - box[1]) < 20:
            return None
        if check and not similarity(face_patch(gray, fitted), track.template) >= self.config.min_similarity:
            return None  # (written so that a NaN correlation also ends the track)
        return fitted

    def _fit(self, gray: np.ndarray, box: Box) -> np.ndarray:
        return self.landmarker.fit(gray, box)

    def _face(self, track: Track) -> TrackedFace:
        smoothed = track.filter(track.points) if self.config.smooth else track.points
        return TrackedFace(track.id, track.points, smoothed, track.box)

    def _active(self) -> list[Track]:
        return [t for t in self.tracks if not t.lost]

    def _drop_duplicates(self) -> None:
        """Two tracks that converged on one face: the older one keeps it."""
        kept: list[Track] = []
        for track in sorted(self._active(), key=lambda t: t.id):
            if any(box_iou(track.box, k.box) > 0.5 for k in kept):
                self.tracks.remove(track)
            else:
                kept.append(track)
