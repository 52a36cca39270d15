"""`maskgen video` on short clips built from the real sample photos: faces cut from
tests/fixtures/wild, moved and scaled over a face-free background, written with OpenCV."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from conftest import WILD
from typer.testing import CliRunner

from maskgen.bench.video import loop_fps, synthetic_clip
from maskgen.cli.video import video
from maskgen.faces.landmarks import outer_eye_distance
from maskgen.masks.options import MaskOptions, variant_seed
from maskgen.video.demo import VideoError, mask_video, open_video
from maskgen.video.masker import MAX_HELD, VideoMasker
from maskgen.video.tracking import TrackerConfig

W, H, FPS = 640, 480, 25.0
BLUE = MaskOptions.parse(type="surgical", color="#2060e0", pattern="plain")  # far from skin and lips
# HOG boxes of the photos' faces; a sprite is the box grown by 15 % on each side.
FACE_BOXES = {"obama.jpg": (366, 136, 624, 394), "Tom_Cruise_avp_2014_4.jpg": (76, 290, 461, 675)}


@cache
def sprite(name: str) -> np.ndarray:
    left, t, r, b = FACE_BOXES[name]
    pad = (r - left) * 15 // 100
    return cv2.imread(str(WILD / name))[t - pad : b + pad, left - pad : r + pad]


@cache
def background() -> np.ndarray:
    return cv2.resize(cv2.imread(str(WILD / "dogs.jpg")), (W, H), interpolation=cv2.INTER_AREA)  # no faces


@pytest.fixture(scope="module")
def sprite_mouths(landmarker) -> dict[str, np.ndarray]:
    """Mouth centre of each sprite's face, as a fraction of the sprite's side."""
    found = {}
    for name in FACE_BOXES:
        image = sprite(name)
        points = landmarker.detect(image)[0].points
        found[name] = points[48:68].mean(0) / image.shape[0]
    return found


def compose(placements: list[tuple[str, int, int, int]], noise: float = 0.0, rng=None) -> np.ndarray:
    """A frame with each (sprite name, x, y, side) pasted onto the background."""
    frame = background().copy()
    for name, x, y, side in placements:
        frame[y : y + side, x : x + side] = cv2.resize(sprite(name), (side, side), interpolation=cv2.INTER_AREA)
    if noise:
        frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
    return frame


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_clip(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    capture.release()
    return frames


def run_in_memory(frames: list[np.ndarray], **kw) -> tuple[VideoMasker, list]:
    masker = VideoMasker(FPS, **kw)
    done = []
    for i, frame in enumerate(frames):
        done += masker.push(frame, last=i == len(frames) - 1)
    return masker, done


def changed(a: np.ndarray, b: np.ndarray, threshold: int = 40) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(2) > threshold


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def window(image: np.ndarray, centre: np.ndarray, radius: int) -> np.ndarray:
    x, y = np.round(centre).astype(int)
    return image[y - radius : y + radius + 1, x - radius : x + radius + 1]


# ------------------------------------------------------------------ masks follow the face


def test_moving_scaling_face_is_masked_on_every_frame_and_the_mask_follows_it(tmp_path, sprite_mouths):
    name = "obama.jpg"
    path = [(40 + 9 * i, 60 + 3 * i, 140 + 2 * i) for i in range(36)]  # x, y, side: right, down, closer
    source = write_clip(tmp_path / "in.avi", [compose([(name, *p)]) for p in path])
    occlusions = []
    summary = mask_video(source, tmp_path / "out.avi", BLUE, on_frame=lambda f: occlusions.append(f.occlusion))

    inputs, outputs = read_clip(source), read_clip(tmp_path / "out.avi")
    assert len(outputs) == len(inputs) == summary.frames == 36
    assert outputs[0].shape == inputs[0].shape == (H, W, 3)
    assert summary.tracks == 1 and summary.frames_with_faces == 36
    offsets = []
    for (x, y, side), before, after, occlusion in zip(path, inputs, outputs, occlusions):
        mouth = np.array([x, y]) + sprite_mouths[name] * side
        assert window(occlusion, mouth, 3).min() == 255  # the mask covers the mouth...
        assert window(changed(before, after), mouth, 3).all()  # ...visibly, in the written file
        offsets.append((centroid(changed(before, after)) - mouth) / side)
    # The painted region keeps its place on the face while the face moves 315 px and grows 50 %.
    assert np.ptp(np.array(offsets), axis=0).max() < 0.06


def test_static_face_mask_does_not_jitter(sprite_mouths):
    """Per-frame sensor noise makes raw dlib landmarks jitter; the smoothed ones barely move."""
    rng = np.random.default_rng(0)
    frames = [compose([("obama.jpg", 220, 120, 170)], noise=5, rng=rng) for _ in range(30)]

    def jitter(done, attr):
        points = np.stack([getattr(f.faces[0], attr) for f in done])
        step = np.linalg.norm(np.diff(points, axis=0), axis=2).mean(1)  # mean point motion per frame
        return float(step.mean() / outer_eye_distance(points[0]))

    def mask_motion(done):  # mean frame-to-frame motion of the mask's centroid, pixels
        return float(np.linalg.norm(np.diff([centroid(f.occlusion) for f in done], axis=0), axis=1).mean())

    _, smooth = run_in_memory(frames, options=BLUE)
    _, raw = run_in_memory(frames, options=BLUE, config=TrackerConfig(smooth=False))
    assert all(len(f.faces) == 1 for f in smooth + raw)
    assert jitter(smooth, "points") > 0.004  # the noise does shake the raw fit (the test can fail)
    assert jitter(smooth, "smoothed") < 0.3 * jitter(smooth, "points")
    assert jitter(smooth, "smoothed") < 0.003  # of the outer-eye distance
    assert mask_motion(smooth) < 0.15 < mask_motion(raw)


def test_frames_come_back_in_order_when_detections_are_far_apart():
    """With a detection every 100 frames, held-back frames are released before the next one."""
    frames = [compose([("obama.jpg", 200 + i, 120, 170)]) for i in range(40)]
    masker, returned_per_push = VideoMasker(FPS, config=TrackerConfig(detect_every=100)), []
    for i, frame in enumerate(frames):
        returned_per_push.append(masker.push(frame, last=i == len(frames) - 1))
    done = [f for batch in returned_per_push for f in batch]
    assert [f.index for f in done] == list(range(40))
    assert max(map(len, returned_per_push)) <= MAX_HELD + 1
    assert all(len(f.faces) == 1 for f in done)


# ------------------------------------------------------------------ faces come and go


def test_faces_entering_and_leaving_between_detections(tmp_path, sprite_mouths):
    """The face appears at frame 7 and vanishes at 23, neither a detection frame (every 5th)."""
    present = range(7, 23)
    placements = {i: ("obama.jpg", 100 + 6 * i, 120, 170) for i in present}
    frames = [compose([placements[i]]) if i in placements else background().copy() for i in range(36)]
    source = write_clip(tmp_path / "in.avi", frames)
    seen = []
    summary = mask_video(source, tmp_path / "out.mp4", BLUE, on_frame=seen.append)

    inputs, outputs = read_clip(source), read_clip(tmp_path / "out.mp4")
    assert len(outputs) == summary.frames == 36 and outputs[0].shape == (H, W, 3)
    assert [f.index for f in seen] == list(range(36))
    for frame, before, after in zip(seen, inputs, outputs):
        if frame.index in present:
            name, x, y, side = placements[frame.index]
            mouth = np.array([x, y]) + sprite_mouths[name] * side
            assert len(frame.faces) == 1 and window(frame.occlusion, mouth, 3).min() == 255, frame.index
            assert window(changed(before, after), mouth, 3).all(), frame.index
        else:
            assert frame.faces == [] and frame.image is frame.original, frame.index  # untouched
            assert not changed(before, after).any(), frame.index  # only codec noise in the file


def test_two_faces_get_two_different_masks_each_constant(sprite_mouths):
    left = [("obama.jpg", 40, 60 + 4 * i, 170) for i in range(24)]
    right = [("Tom_Cruise_avp_2014_4.jpg", 400, 220 - 4 * i, 170) for i in range(24)]
    frames = [compose([a, b]) for a, b in zip(left, right)]
    masker, done = run_in_memory(frames, seed=0)

    colours = {0: [], 1: []}
    for frame, a, b in zip(done, left, right):
        by_id = {f.track_id: f for f in frame.faces}
        assert sorted(by_id) == [0, 1]  # the same two people throughout
        for track_id, (name, x, y, side) in zip((0, 1), (a, b) if by_id[0].box[0] < W / 2 else (b, a)):
            mouth = np.array([x, y]) + sprite_mouths[name] * side
            assert np.linalg.norm(by_id[track_id].smoothed[48:68].mean(0) - mouth) < 0.05 * side
            colours[track_id].append(window(frame.image, mouth, 4).reshape(-1, 3).mean(0))
    specs = masker.spec(0), masker.spec(1)
    assert specs[0] == MaskOptions().sample(variant_seed(0, "track0"))  # from (seed, track) alone
    assert (specs[0].mask_type, specs[0].color) != (specs[1].mask_type, specs[1].color)
    for track_id in (0, 1):
        assert np.ptp(np.array(colours[track_id]), axis=0).max() < 25  # one mask all along
    assert np.abs(np.mean(colours[0], axis=0) - np.mean(colours[1], axis=0)).max() > 25  # two masks


# ------------------------------------------------------------------ files, errors, the command


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> Path:
    frames = [compose([("obama.jpg", 100 + 5 * i, 100, 170)])[:240, :320] for i in range(8)]
    return write_clip(tmp_path_factory.mktemp("clip") / "small.avi", frames)


def cli(*args: str):
    app = typer.Typer()
    app.command()(video)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_command_writes_side_by_side_video(tmp_path, small_clip):
    result = cli(small_clip, tmp_path / "sub" / "out.mp4", "--side-by-side", "--detect-every", "3")
    assert result.exit_code == 0, result.output
    assert "8 frames, 640x240" in result.stdout and "frames/s" in result.stdout
    inputs, outputs = read_clip(small_clip), read_clip(tmp_path / "sub" / "out.mp4")
    assert len(outputs) == len(inputs) == 8
    assert outputs[0].shape == (240, 640, 3)
    assert changed(outputs[0][:, :320], inputs[0]).mean() < 0.001  # left: the original
    assert changed(outputs[0][:, 320:], inputs[0]).mean() > 0.02  # right: masked
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.mp4"]


def test_same_seed_same_video(tmp_path, small_clip):
    for name in ("a.avi", "b.avi"):
        assert cli(small_clip, tmp_path / name, "--quiet", "--seed", "7").exit_code == 0
    assert (tmp_path / "a.avi").read_bytes() == (tmp_path / "b.avi").read_bytes()


def test_help_says_audio_is_not_kept():
    result = cli("--help")
    assert result.exit_code == 0 and "Audio is not kept" in " ".join(result.output.split())


@pytest.mark.parametrize("case", ["missing", "not a video", "empty", "folder", "unknown output", "same file"])
def test_command_errors_are_one_line(tmp_path, small_clip, case):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    (tmp_path / "empty.avi").touch()
    src, dst = {
        "missing": (tmp_path / "nope.mp4", tmp_path / "out.mp4"),
        "not a video": (notes, tmp_path / "out.mp4"),
        "empty": (tmp_path / "empty.avi", tmp_path / "out.mp4"),
        "folder": (tmp_path, tmp_path / "out.mp4"),
        "unknown output": (small_clip, tmp_path / "out.gif"),
        "same file": (small_clip, small_clip),
    }[case]
    result = cli(src, dst)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.gif").exists()


def test_bad_options_are_one_line_errors(tmp_path, small_clip):
    result = cli(small_clip, tmp_path / "out.mp4", "--type", "balaclava")
    assert result.exit_code == 2 and result.stderr.startswith("error: --type")


def test_failure_midway_leaves_no_file(tmp_path, small_clip):
    def explode(frame):
        if frame.index == 4:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        mask_video(small_clip, tmp_path / "out.avi", on_frame=explode)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its partial file


def test_open_video_rejects_text(tmp_path):
    (tmp_path / "a.avi").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(VideoError, match="not a video"):
        open_video(tmp_path / "a.avi")


def test_benchmark_clip_is_masked_throughout():
    cpu, wall, masked = loop_fps(synthetic_clip(12), detect_every=5, repeats=1)
    assert cpu > 0 and wall > 0 and masked == 1.0
