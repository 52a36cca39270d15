"""Temporal smoothing of a face's 68 landmarks: a One Euro filter (Casiez et al., CHI 2012).

Why One Euro rather than an EMA or a Kalman filter: landmark noise matters when the face is
still (a jittering mask is obvious) and lag matters when it moves (a mask trailing the face
is obvious). One Euro is a low-pass filter whose cutoff rises with the measured speed, so it
smooths hard at rest and follows quickly in motion; an EMA has one fixed trade-off, and a
constant-velocity Kalman filter needs noise models per video that we cannot know.

One cutoff is shared by all 68 points (from their mean speed), so the shape moves as a whole
and the mask is not distorted by some points lagging others. Speeds are measured in face
sizes per second, so the same settings work for small and large faces."""

from __future__ import annotations

import math

import numpy as np

MIN_CUTOFF_HZ = 0.6  # cutoff at rest: lower = steadier, slower to settle
SPEED_GAIN = 3.0  # extra Hz of cutoff per face size per second of motion: higher = less lag
SPEED_CUTOFF_HZ = 1.0  # low-pass on the speed estimate itself


def landmark_scale(points: np.ndarray) -> float:
    """The face's size: RMS distance of the landmarks from their centroid (pixels)."""
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def _alpha(cutoff_hz: float, fps: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau * fps)


class OneEuroFilter:
    """Smooths one face's (68, 2) landmarks, frame after frame, at a fixed frame rate."""

    def __init__(self, fps: float, min_cutoff: float = MIN_CUTOFF_HZ, speed_gain: float = SPEED_GAIN):
        self.fps, self.min_cutoff, self.speed_gain = fps, min_cutoff, speed_gain
        self._points: np.ndarray | None = None
        self._velocity: np.ndarray | None = None

    def reset(self) -> None:
        self._points = self._velocity = None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = points.astype(np.float64)
        if self._points is None:
            self._points, self._velocity = points, np.zeros_like(points)
            return points.astype(np.float32)
        velocity = (points - self._points) * self.fps
        self._velocity += _alpha(SPEED_CUTOFF_HZ, self.fps) * (velocity - self._velocity)
        speed = float(np.linalg.norm(self._velocity, axis=1).mean()) / max(landmark_scale(points), 1.0)
        cutoff = self.min_cutoff + self.speed_gain * speed
        self._points = self._points + _alpha(cutoff, self.fps) * (points - self._points)
        return self._points.astype(np.float32)
