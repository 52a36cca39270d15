"""One image in, its variants out: decode, landmarks, masks, encode, write.

`ImageJob` holds the heavy state (the dlib models) and is built once per worker process or
Ray actor; `process` / `process_batch` never raise for a bad input: every failure is a row."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from maskgen.errors import one_line
from maskgen.faces.landmarks import Face, Landmarker, to_gray
from maskgen.images import Decoded, ImageError, color_mode, decode_image, encode_image, encode_mask, format_name, output_format
from maskgen.jobs.protocol import Input, read_input
from maskgen.jobs.sinks import as_sink, check_format
from maskgen.masks import quality as qa
from maskgen.masks.grading import grey_grade
from maskgen.masks.options import MaskOptions, MaskSpec, variant_seed
from maskgen.masks.render import RenderError, render_mask
from maskgen.schemas import MANIFEST_SCHEMA, identity_of

BATCH_BYTES = 32 << 20  # at most this much image data (decoded inputs and their masked variants) is held at once


@dataclass(frozen=True)
class JobConfig:
    """Everything that changes the output bytes (hashed into a run's config hash)."""

    aligned: bool = True  # inputs are aligned crops: face box from crop geometry, no detector
    layout: str = "auto"  # aligned crop layout: auto, dlib, sphereface, arcface
    detector: str = "hog"  # photos in the wild: hog or cnn (mmod)
    upsample: int | None = None  # HOG pyramid upsampling; None = by photo size
    variants: int = 1  # masked variants per face
    keep_original: bool = False  # also copy the original into the output and give it a row
    seed: int = 0  # global seed; each image's randomness is hash(seed, src_path, variant)
    mask: dict = field(default_factory=dict)  # MaskOptions fields (type/color/pattern/wear dists)
    image_format: str | None = None  # None = same format as the input
    quality: int | None = None  # JPEG quality; None = the input's own estimated quality
    qa_reject: bool = False  # a render failing the QA checks becomes a qa_reject row, its image unwritten
    qa_thresholds: str = "default"  # the QA checks' thresholds: "default" or "key=value,..." (masks.quality)
    output_format: str = "files"  # files | rec | webdataset | parquet (jobs.sinks): the container changes the bytes, so it is hashed
    # batched (maskgen's numba engine) or dlib: the same landmarks, so not part of the config hash
    landmarker: str = field(default="batched", metadata={"same_output": True})


def output_names(rel: str, ext: str, config: JobConfig) -> tuple[str | None, list[str]]:
    """(original's path or None, masked variants' paths), relative to the output root."""
    stem, _ = split_suffix(rel)
    if config.variants == 1 and not config.keep_original:
        return None, [stem + ext]
    return (stem + ext if config.keep_original else None), [f"{stem}_m{k}{ext}" for k in range(config.variants)]


def occlusion_name(image_rel: str) -> str:
    return split_suffix(image_rel)[0] + "_mask.png"


def split_suffix(rel: str) -> tuple[str, str]:
    """(rel without its suffix, the suffix), as PurePosixPath's with_suffix("") and suffix,
    in plain string operations: a tenth of the cost, and this runs a few times per image."""
    name = rel[rel.rfind("/") + 1 :]
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:  # ".hidden", "name.": no suffix
        return rel, ""
    return rel[: len(rel) - len(name) + dot], name[dot:]


def check_relative(rel: str) -> None:
    """An output path must stay inside the output folder, whatever the input is named."""
    parts = [part for part in rel.split("/") if part not in ("", ".")]  # PurePosixPath(rel).parts, less "/"
    if rel.startswith("/") or ".." in parts or not parts:
        raise ValueError(f"unsafe relative path {rel!r}")


@dataclass(eq=False)
class _Item:
    """One input on its way through ImageJob's stages."""

    src: Path
    rel: str
    landmarks: np.ndarray | None
    base: dict = field(init=False)  # the columns every row of this input shares
    data: bytes | None = None  # the file's bytes, kept for --keep-original copies
    image: Decoded | None = None
    gray: np.ndarray | None = None  # its grey (landmarks.to_gray), where the landmark step made one: the QA checks' face view reads it
    color_mode: str = ""  # gray | gray_rgb | color (images.color_mode): grey photos get grey masks
    faces: list[Face] = field(default_factory=list)
    fmt: str = ""  # the format its outputs are written in
    original: str | None = None  # the original's output path, with --keep-original
    variants: list[_Variant] = field(default_factory=list)  # rendered, not yet encoded
    rows: list[dict] | None = None  # set once the input is done (or failed)
    elapsed: float = 0.0  # seconds this input spent in the stages

    def __post_init__(self):
        self.base = {"identity": identity_of(self.rel), "src_path": self.rel, "color_mode": ""}


@dataclass(eq=False)
class _Variant:
    """One masked variant of an input between the render, the checks and the encoding."""

    k: int
    out_rel: str
    image: np.ndarray  # the photo with every face's mask so far
    specs: list[MaskSpec] = field(default_factory=list)  # one per face, as the next lists
    coverages: list[float] = field(default_factory=list)
    occlusions: list[np.ndarray] = field(default_factory=list)  # each face's own mask, for its checks
    checks: list[dict] = field(default_factory=list)
    error: Exception | None = None  # a RenderError (or ValueError) of any of its faces

    @property
    def occlusion(self) -> np.ndarray:
        """Every face's mask."""
        return functools.reduce(np.maximum, self.occlusions)


class ImageJob:
    schema = MANIFEST_SCHEMA  # the manifest a run of this job writes

    def __init__(self, config: JobConfig):
        self.config = config
        self.options = MaskOptions.from_dict(config.mask) if config.mask else MaskOptions()
        self.landmarker = Landmarker(detector=config.detector, upsample=config.upsample, layout=config.layout,
                                     engine=config.landmarker)
        self.thresholds = qa.QAThresholds.parse(config.qa_thresholds)

    def process(self, src: Path, rel: str, out_root: Path, landmarks: np.ndarray | None = None) -> list[dict]:
        """Mask the image at `src` (`rel`: its path relative to the input root, POSIX); write
        the outputs under `out_root` mirroring `rel`; return its manifest rows.
        `landmarks` (68x2), when given, skip the predictor (aligned mode only)."""
        return self.process_batch([(src, rel, landmarks)], out_root)[0]

    def process_batch(self, inputs: Iterable[Input], out_root: Path) -> list[list[dict]]:
        """`process` for many inputs, a stage at a time (read, landmarks, render, checks,
        encode, write) over up to BATCH_BYTES of images: more of dlib's ~75 MB landmark model
        stays in the CPU cache from one face to the next, which makes that step about twice as
        fast, and each of the others keeps its own code and tables in cache (render, checks
        and encode one image after the other were 10% slower)."""
        done, batch, size = [], [], 0
        copies = 1 + self.config.variants  # the decoded input, and its variants until they are encoded
        for src, rel, landmarks in inputs:
            batch.append(self._timed(self._read, _Item(src, rel, landmarks)))
            size += batch[-1].image.bgr.nbytes * copies if batch[-1].image else 0
            if size >= BATCH_BYTES:
                done += self._finish(batch, out_root)
                batch, size = [], 0
        return done + self._finish(batch, out_root)

    def _finish(self, batch: list[_Item], out_root) -> list[list[dict]]:
        self._aligned_landmarks(batch)
        for stage in (self._find_faces, self._render, self._check, self._encode):
            for item in batch:
                if item.rows is None:
                    self._timed(stage, item)
        for item in batch:
            self._timed(self._write_all, item, out_root)
            for row in item.rows:
                row["elapsed_ms"] = item.elapsed * 1e3
        return [item.rows for item in batch]

    @staticmethod
    def _timed(stage, item: _Item, *args) -> _Item:
        start = time.perf_counter()
        stage(item, *args)
        item.elapsed += time.perf_counter() - start
        return item

    # -- stages: each fills in the item, or its failure rows -----------------------------

    def _read(self, item: _Item) -> None:
        try:
            check_relative(item.rel)
        except ValueError as err:
            return self._failed(item, "write_error", err)
        try:
            data = read_input(item.src)
            item.image = decode_image(data)
            item.color_mode = color_mode(item.image)
            item.base["color_mode"] = item.color_mode
            item.data = data if self.config.keep_original else None  # held across the batch only if copied
        except OSError as err:
            self._failed(item, "decode_error", f"cannot read the file: {err.strerror or err}")
        except ImageError as err:
            self._failed(item, err.status, err)

    def _aligned_landmarks(self, batch: list[_Item]) -> None:
        """Aligned mode: the landmarks of every crop of the batch in one call (the engine is
        several times faster on many faces at once); a blank crop gets none."""
        if not self.config.aligned:
            return
        start = time.perf_counter()
        for item in batch:
            if item.rows is None and item.landmarks is None:
                item.gray = to_gray(item.image.bgr)
        todo = [item for item in batch if item.gray is not None and not is_blank(item.gray)]
        faces = self.landmarker.aligned_batch([item.gray for item in todo]) if todo else []
        share = (time.perf_counter() - start) / max(1, len(todo))
        for item, face in zip(todo, faces):
            item.faces, item.elapsed = [face], item.elapsed + share

    def _find_faces(self, item: _Item) -> None:
        item.faces = item.faces or self._faces(item.image.bgr, item.landmarks)
        if not item.faces:
            self._failed(item, "no_face", "blank image: no face" if self.config.aligned else "no face found")

    def _render(self, item: _Item) -> None:
        """Every variant's masks, each face its own."""
        fmt, ext = output_format(self.config.image_format or item.image.format)
        item.fmt = fmt
        item.original, masked = output_names(item.rel, self._keep_extension(item.rel, fmt, item.image.format, ext), self.config)
        item.variants = [self._masked(item, k, out_rel) for k, out_rel in enumerate(masked)]

    def _check(self, item: _Item) -> None:
        """The QA signals of each face of each variant, on the photo before its mask (its grey
        where there is one: the faceness view samples one channel, not three, ~10 us less)."""
        photo = item.image.bgr
        view = item.gray if item.gray is not None else photo
        for variant in item.variants:
            if variant.error is not None:
                continue
            try:
                variant.checks = [qa.measure(face.points, occlusion, photo.shape, view, None if self.config.aligned else face.box)
                                  for face, occlusion in zip(item.faces, variant.occlusions)]
            except ValueError as err:
                variant.error = err

    def _encode(self, item: _Item) -> None:
        """The variants' images and occlusion masks encoded, and the input's rows."""
        rows = [self._write_original(item, item.original, item.fmt)] if item.original else []
        quality = self.config.quality or item.image.jpeg_quality
        for variant in item.variants:
            rows += self._variant_rows(item, variant, quality)
        item.rows, item.data, item.image, item.gray, item.variants = rows, None, None, None, []  # done with the pixels

    # -- steps -------------------------------------------------------------------------

    def _faces(self, bgr: np.ndarray, landmarks: np.ndarray | None) -> list[Face]:
        if landmarks is not None:
            return [Face((0, 0, bgr.shape[1], bgr.shape[0]), float("inf"), np.asarray(landmarks, np.float32).reshape(68, 2))]
        if self.config.aligned:  # (found by _aligned_landmarks unless blank)
            return []
        return self.landmarker.detect(bgr)

    def _masked(self, item: _Item, k: int, out_rel: str) -> _Variant:
        """One masked variant: every face in the image gets its own mask."""
        variant = _Variant(k, out_rel, item.image.bgr)
        grade = None if item.color_mode == "color" else grey_grade()  # None: the photo's own (render_mask)
        try:
            for i, face in enumerate(item.faces):
                key = item.rel if i == 0 else f"{item.rel}#face{i}"
                spec = self.options.sample(variant_seed(self.config.seed, key, k))
                rendered = render_mask(variant.image, face.points, spec, grade)
                variant.image = rendered.image
                variant.specs.append(spec)
                variant.coverages.append(rendered.coverage)
                variant.occlusions.append(rendered.occlusion)
        except (RenderError, ValueError) as err:
            variant.error = err
        return variant

    def _variant_rows(self, item: _Item, variant: _Variant, quality) -> list[dict]:
        """A variant's rows (each face's), its image and occlusion mask encoded on the first."""
        base, faces, k = item.base, item.faces, variant.k
        if variant.error is not None:
            return [self._row(base, f, k, None, "render_error", variant.error, i) for i, f in enumerate(faces)]
        specs, coverages, checks = variant.specs, variant.coverages, variant.checks
        failed = [qa.reasons(signals, self.thresholds) for signals in checks] if self.config.qa_reject else []
        if any(failed):  # one face's bad render spoils the image: none of its faces is written as ok
            return [self._qa_row(base, face, k, spec, coverage, signals, why or ["another face of the photo failed"], i)
                    for i, (face, spec, coverage, signals, why) in enumerate(zip(faces, specs, coverages, checks, failed))]
        out_rel, mask_rel = variant.out_rel, occlusion_name(variant.out_rel)
        try:
            payload = {out_rel: encode_image(_as_input(variant.image, item.color_mode), item.fmt, quality),
                       mask_rel: encode_mask(variant.occlusion)}
        except ValueError as err:
            return [self._row(base, f, k, None, "render_error", err, i) for i, f in enumerate(faces)]
        rows = []
        for i, (face, spec, coverage, signals) in enumerate(zip(faces, specs, coverages, checks)):
            row = self._row(base, face, k, spec, "ok", "", i)
            row.update(out_path=out_rel, mask_path=mask_rel, coverage=coverage, **signals)
            rows.append(row)
        rows[0]["_payload"] = payload
        return rows

    def _qa_row(self, base, face, k, spec, coverage, signals, why: list[str], i: int) -> dict:
        row = self._row(base, face, k, spec, "qa_reject", "qa: " + "; ".join(why), i)
        row.update(coverage=coverage, **signals)
        return row

    def _write_original(self, item: _Item, out_rel, fmt) -> dict:
        # Same format: copy the bytes (no re-encoding loss); else convert once.
        image = item.image
        same = fmt == image.format
        payload = item.data if same else encode_image(_as_input(image.bgr, item.color_mode), fmt, self.config.quality or image.jpeg_quality)
        row = self._row(item.base, item.faces[0], -1, None, "ok", "", 0)
        row.update(variant="original", out_path=out_rel, _payload={out_rel: payload})
        return row

    def _write_all(self, item: _Item, out_root) -> None:
        """Each output image (with its occlusion) through the sink: files under `out_root`, or
        the shard's container (jobs.sinks); the rows of its faces go with it."""
        rows, sink = item.rows, as_sink(out_root)
        for row in rows:
            payload = row.pop("_payload", None)
            if not payload:
                continue
            group = [r for r in rows if r.get("out_path") == row["out_path"]]
            try:
                sink.put(group, payload)
            except OSError as err:
                for r in group:
                    r.update(status="write_error", error=one_line(err), out_path="", mask_path="")

    # -- rows --------------------------------------------------------------------------

    def _row(self, base, face: Face | None, k: int, spec: MaskSpec | None, status: str, error, face_index: int) -> dict:
        return {
            **base,
            "out_path": "",
            "mask_path": "",
            "variant": "masked" if k >= 0 else "original",
            "variant_index": k,
            "face_index": face_index,
            "mask_type": spec.mask_type if spec else "",
            "color": spec.color if spec else "",
            "pattern": spec.pattern if spec else "",
            "texture_weight": spec.texture_weight if spec else None,
            "wear": spec.wear if spec else "",
            "wear_shift": spec.wear_shift if spec else None,
            "seed": spec.seed if spec else variant_seed(self.config.seed, base["src_path"], max(k, 0)),
            "coverage": None,
            "landmarks": face.points.ravel() if face is not None else None,  # arrow converts arrays fast
            "status": status,
            "error": one_line(error) if error else "",
            "elapsed_ms": None,
        }

    def _failed(self, item: _Item, status: str, error) -> None:
        ks = ([-1] if self.config.keep_original else []) + list(range(self.config.variants))
        item.rows = [self._row(item.base, None, k, None, status, error, 0) for k in ks]

    @staticmethod
    def _keep_extension(rel: str, fmt: str, in_fmt: str, ext: str) -> str:
        """Keep the input's own extension (.jpeg, .JPG) when the format does not change."""
        suffix = split_suffix(rel)[1]
        return suffix if fmt == in_fmt and suffix else ext


def is_blank(gray: np.ndarray) -> bool:
    """Aligned mode trusts that a crop is a face (running a detector would cost more than the
    whole job); a blank crop is the one case cheap to catch."""
    return cv2.meanStdDev(gray)[1][0, 0] < 2.0


def _as_input(bgr: np.ndarray, mode: str) -> np.ndarray:
    """The pixels in the input's own colour mode: a one-channel input is written as one
    channel (its unmasked pixels, B = G = R, convert back exactly)."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if mode == "gray" else bgr


def build_job_config(
    *,
    variants: int = 1,
    mask_type: str = "random",
    color: str = "random",
    pattern: str = "random",
    wear: str = "proper",
    wear_jitter: float = 0.0,
    texture_weight: float | None = None,
    keep_original: bool = False,
    seed: int = 0,
    aligned: bool = True,
    layout: str = "auto",
    detector: str = "hog",
    upsample: int | None = None,
    image_format: str | None = None,
    quality: int | None = None,
    qa_reject: bool = False,
    qa_thresholds: str = "default",
    landmarker: str = "batched",
    output_format: str = "files",
):
    """A JobConfig from user-facing options; ValueError naming the option when one is wrong."""
    from maskgen.faces.landmarks import DETECTORS, ENGINES
    from maskgen.faces.layouts import face_box
    from maskgen.masks.options import MaskOptions

    if variants < 1:
        raise ValueError(f"--variants must be at least 1, got {variants}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"--quality must be between 1 and 100, got {quality}")
    if detector not in DETECTORS:
        raise ValueError(f"--detector: unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
    if landmarker not in ENGINES:
        raise ValueError(f"--landmarker: unknown engine {landmarker!r} (choose from {', '.join(ENGINES)})")
    try:
        face_box(112, 112, layout)
    except ValueError as exc:
        raise ValueError(f"--layout: {exc}") from None
    mask = MaskOptions.parse(
        type=mask_type, color=color, pattern=pattern, wear=wear, wear_jitter=wear_jitter, texture_weight=texture_weight
    )
    return JobConfig(
        aligned=aligned, layout=layout, detector=detector, upsample=upsample, variants=variants,
        keep_original=keep_original, seed=seed, mask=mask.to_dict(), image_format=format_name(image_format),
        quality=quality, qa_reject=qa_reject, qa_thresholds=_checked_thresholds(qa_thresholds), landmarker=landmarker,
        output_format=check_format(output_format),
    )


def _checked_thresholds(spec: str) -> str:
    try:
        qa.QAThresholds.parse(spec)
    except ValueError as exc:
        raise ValueError(f"--qa-thresholds: {str(exc).removeprefix('qa thresholds: ')}") from None
    return spec
