"""Tests for maskgen.images on real face crops and bad files made from them."""

from __future__ import annotations

import errno
import io
import os
import pickle
import stat
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from maskgen import images
from maskgen.assets import sample_faces
from maskgen.files import write_atomic
from maskgen.images import (
    MAX_PIXELS,
    Decoded,
    ImageError,
    decode_image,
    encode_image,
    encode_mask,
    output_format,
    read_image,
)

FIXTURES = sorted(sample_faces().glob("*/*.jpg"))
FACE = FIXTURES[0]


@pytest.fixture(scope="module")
def face_bytes() -> bytes:
    return FACE.read_bytes()


@pytest.fixture(scope="module")
def face_bgr(face_bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(face_bytes, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def face_pil() -> Image.Image:
    with Image.open(FACE) as im:
        return im.convert("RGB")


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cv_bytes(ext: str, a: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, a)
    assert ok
    return buf.tobytes()


def to_bgr(im: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a.astype(np.int32) - b.astype(np.int32))


def expect_error(data: bytes, reason: str | set[str], **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kw)
    err = info.value
    reasons = {reason} if isinstance(reason, str) else reason
    assert err.reason in reasons, f"{err.reason}: {err}"
    assert err.status == "decode_error"
    assert str(err) and "\n" not in str(err)
    return err


def check_bgr(d: Decoded, shape: tuple[int, int]) -> None:
    assert d.bgr.dtype == np.uint8
    assert d.bgr.shape == (*shape, 3)
    assert d.bgr.flags.c_contiguous


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height."""
    data = bytearray(cv_bytes(".png", np.zeros((1, 1, 3), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# ---------------------------------------------------------------------------- good input


def test_all_fixture_faces_decode_like_opencv():
    assert len(FIXTURES) >= 50
    for path in FIXTURES:
        data = path.read_bytes()
        d = decode_image(data)
        check_bgr(d, (150, 150))
        assert (d.format, d.mode) == ("JPEG", "RGB")
        assert 1 <= d.jpeg_quality <= 100
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert diff(d.bgr, ref).max() <= 2, path


def test_read_image_matches_decode_image(face_bytes):
    a, b = read_image(FACE), decode_image(face_bytes)
    assert np.array_equal(a.bgr, b.bgr)
    assert (a.format, a.mode, a.jpeg_quality) == (b.format, b.mode, b.jpeg_quality)
    assert np.array_equal(read_image(str(FACE)).bgr, a.bgr)


def test_decode_accepts_bytearray_and_memoryview(face_bytes, face_bgr):
    for data in (bytearray(face_bytes), memoryview(face_bytes)):
        assert diff(decode_image(data).bgr, face_bgr).max() <= 2


def test_grayscale_jpeg_becomes_three_equal_channels(face_pil):
    gray = face_pil.convert("L")
    d = decode_image(pil_bytes(gray, "JPEG", quality=95))
    check_bgr(d, (150, 150))
    assert d.mode == "L"
    assert np.array_equal(d.bgr[..., 0], d.bgr[..., 1])
    assert np.array_equal(d.bgr[..., 1], d.bgr[..., 2])
    assert diff(d.bgr[..., 0], np.asarray(gray)).mean() < 2


def test_grayscale_and_palette_png(face_pil):
    gray = face_pil.convert("L")
    d = decode_image(pil_bytes(gray, "PNG"))
    assert d.mode == "L" and d.format == "PNG"
    assert np.array_equal(d.bgr, cv2.cvtColor(np.asarray(gray), cv2.COLOR_GRAY2BGR))
    pal = face_pil.quantize(64)
    d = decode_image(pil_bytes(pal, "PNG"))
    assert d.mode == "P"
    assert np.array_equal(d.bgr, to_bgr(pal))
    bw = face_pil.convert("1")
    d = decode_image(pil_bytes(bw, "PNG"))
    assert d.mode == "1"
    assert np.array_equal(d.bgr, to_bgr(bw))


def test_progressive_jpeg(face_pil):
    data = pil_bytes(face_pil, "JPEG", quality=90, progressive=True)
    with Image.open(io.BytesIO(data)) as im:
        want = to_bgr(im)
    d = decode_image(data)
    assert d.jpeg_quality == 90
    assert diff(d.bgr, want).max() <= 2


def test_cmyk_jpeg_looks_like_the_original(face_pil, face_bgr):
    data = pil_bytes(face_pil.convert("CMYK"), "JPEG", quality=95)
    d = decode_image(data)
    check_bgr(d, (150, 150))
    assert d.mode == "CMYK"
    assert diff(d.bgr, face_bgr).mean() < 4  # inverted CMYK would be ~128 off


@pytest.mark.parametrize("gray", [True, False], ids=["I;16", "RGB16"])
def test_16bit_png_is_scaled_not_clipped(face_bgr, gray):
    src = cv2.cvtColor(face_bgr, cv2.COLOR_BGR2GRAY) if gray else face_bgr
    d = decode_image(cv_bytes(".png", src.astype(np.uint16) * 257))
    check_bgr(d, (150, 150))
    assert d.mode == ("I;16" if gray else "RGB")
    want = cv2.cvtColor(src, cv2.COLOR_GRAY2BGR) if gray else src
    assert diff(d.bgr, want).max() <= 1


def test_16bit_tiff_goes_through_pil_and_is_scaled(face_bgr):
    gray = cv2.cvtColor(face_bgr, cv2.COLOR_BGR2GRAY)
    im16 = Image.fromarray(gray.astype(np.uint16) * 257)
    assert im16.mode.startswith("I;16")
    d = decode_image(pil_bytes(im16, "TIFF"))
    assert d.format == "TIFF" and d.mode.startswith("I;16")
    assert diff(d.bgr, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)).max() <= 1


def test_rgba_png_is_composited_on_white(face_bgr):
    alpha = np.full((150, 150), 255, np.uint8)
    alpha[:, :50] = 0
    alpha[:, 50:100] = 128
    d = decode_image(cv_bytes(".png", np.dstack([face_bgr, alpha])))
    check_bgr(d, (150, 150))
    assert d.mode == "RGBA"
    assert (d.bgr[:, :50] == 255).all()
    half = (face_bgr[:, 50:100].astype(np.int32) * 128 + 255 * 127) / 255
    assert np.abs(d.bgr[:, 50:100] - half).max() <= 1
    assert np.array_equal(d.bgr[:, 100:], face_bgr[:, 100:])


def test_16bit_rgba_png(face_bgr):
    bgra = np.dstack([face_bgr, np.full((150, 150), 255, np.uint8)]).astype(np.uint16) * 257
    d = decode_image(cv_bytes(".png", bgra))
    assert diff(d.bgr, face_bgr).max() <= 1


def test_la_png_is_composited_on_white(face_pil):
    gray = face_pil.convert("L")
    alpha = np.full((150, 150), 255, np.uint8)
    alpha[:, :75] = 0
    d = decode_image(pil_bytes(Image.merge("LA", (gray, Image.fromarray(alpha))), "PNG"))
    assert d.mode == "LA"
    assert (d.bgr[:, :75] == 255).all()
    assert np.array_equal(d.bgr[:, 75:, 1], np.asarray(gray)[:, 75:])


def test_palette_transparency_is_white(face_pil):
    pal = face_pil.quantize(64)
    index = np.asarray(pal)
    clear = int(index[75, 75])
    d = decode_image(pil_bytes(pal, "PNG", transparency=clear))
    assert d.mode == "P"
    hidden = index == clear
    assert hidden.any() and not hidden.all()
    assert (d.bgr[hidden] == 255).all()
    assert np.array_equal(d.bgr[~hidden], to_bgr(pal)[~hidden])


def test_animated_gif_gives_first_frame(face_pil):
    frames = [face_pil, ImageOps.invert(face_pil)]
    data = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 2
        first = to_bgr(im)
    d = decode_image(data)
    assert d.format == "GIF"
    assert np.array_equal(d.bgr, first)
    assert diff(d.bgr, to_bgr(face_pil)).mean() < 15  # close to frame 0, not the inverted frame 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(face_pil, orientation):
    crop = face_pil.crop((0, 0, 150, 100))  # not square, not symmetric
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(crop, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        want = to_bgr(ImageOps.exif_transpose(im))
    d = decode_image(data)
    check_bgr(d, want.shape[:2])
    assert d.bgr.shape[:2] == ((150, 100) if orientation >= 5 else (100, 150))
    assert diff(d.bgr, want).mean() < 1


def test_a_damaged_exif_block_is_decoded_without_pil_warnings(face_pil):
    """A JPEG whose EXIF block names more data than the file holds: PIL warns about it on
    stderr (no file name, nothing a user can act on); maskgen decodes the image, applies the
    orientation that is still readable, and warns nothing."""
    crop = face_pil.crop((0, 0, 150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a description long enough to be stored past its IFD entry"
    block = bytearray(exif.tobytes())
    entry = block.index(struct.pack(">HH", 0x010E, 2))  # ImageDescription, ASCII (PIL writes big-endian "MM")
    block[entry + 4 : entry + 8] = struct.pack(">I", 1 << 20)  # its count: a megabyte the file does not have
    data = pil_bytes(crop, "JPEG", quality=95, exif=bytes(block))
    with warnings.catch_warnings(record=True) as pil_warned:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(data)) as im:
            im.getexif()
    assert pil_warned  # the damage is real: PIL itself complains
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        d = decode_image(data)
    assert not ours, [str(w.message) for w in ours]
    assert d.bgr.shape[:2] == (150, 100)  # orientation 6 still read and applied


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM"])
def test_lossless_formats_roundtrip(face_bgr, fmt):
    d = decode_image(encode_image(face_bgr, fmt))
    assert d.format == fmt and d.mode == "RGB" and d.jpeg_quality is None
    assert np.array_equal(d.bgr, face_bgr)


def test_webp_roundtrip(face_bgr):
    d = decode_image(encode_image(face_bgr, "WEBP", quality=90))
    assert d.format == "WEBP" and d.jpeg_quality is None
    assert diff(d.bgr, face_bgr).mean() < 5


def test_jpeg_with_trailing_bytes_after_eoi(face_bytes, face_bgr):
    d = decode_image(face_bytes + b"\0" * 64 + b"trailer")
    assert diff(d.bgr, face_bgr).max() <= 2


def test_png_without_iend_but_complete_pixels_still_decodes(face_bgr):
    data = cv_bytes(".png", face_bgr)
    assert data.endswith(b"IEND\xaeB`\x82")
    assert np.array_equal(decode_image(data[:-12]).bgr, face_bgr)


# ---------------------------------------------------------------------------- quality


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_quality_estimate_pil(face_pil, quality):
    est = decode_image(pil_bytes(face_pil, "JPEG", quality=quality)).jpeg_quality
    assert abs(est - quality) <= 2


@pytest.mark.parametrize("quality", [1, 10, 30, 60, 85, 99, 100])
def test_quality_estimate_opencv_whole_range(face_bgr, quality):
    est = decode_image(encode_image(face_bgr, "JPEG", quality=quality)).jpeg_quality
    assert abs(est - quality) <= 2


def test_quality_is_none_for_non_jpeg(face_bgr):
    assert decode_image(cv_bytes(".png", face_bgr)).jpeg_quality is None


# ---------------------------------------------------------------------------- bad input


def test_empty(face_bytes):
    expect_error(b"", "empty")


def test_text_and_random_bytes_are_not_images():
    expect_error(b"Hello, this is a text file pretending to be a JPEG.\n" * 20, "not_an_image")
    expect_error(np.random.default_rng(0).bytes(5000), "not_an_image")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg(face_bytes, keep):
    err = expect_error(face_bytes[: int(len(face_bytes) * keep)], "truncated")
    assert "JPEG" in str(err)


def test_jpeg_missing_only_eoi(face_bytes):
    # all entropy data there, only the end marker lost: an incomplete file either way
    expect_error(face_bytes[:-2], "truncated")


def test_jpeg_truncated_inside_header(face_bytes):
    expect_error(face_bytes[:300], "truncated")


def test_truncated_png(face_bgr):
    data = cv_bytes(".png", face_bgr)
    expect_error(data[: len(data) // 2], "truncated")
    expect_error(data[:60], "truncated")


def test_garbled_jpeg_never_crashes(face_bytes):
    rng = np.random.default_rng(1)
    data = bytearray(face_bytes)
    start = len(data) // 2
    data[start : start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    if images.STRICT_JPEG:
        expect_error(bytes(data), "corrupt")
    else:  # cv2 cannot report libjpeg's warning: the damaged image is decoded
        check_bgr(decode_image(bytes(data)), (150, 150))


def test_garbled_jpeg_header(face_bytes):
    data = bytearray(face_bytes)
    data[20:60] = bytes(40)  # wipes the quantisation table's marker
    expect_error(bytes(data), {"corrupt", "truncated"})


def test_corrupt_png_crc(face_bgr):
    data = bytearray(cv_bytes(".png", face_bgr))
    idat = data.find(b"IDAT")
    data[idat + 100 : idat + 140] = bytes(40)
    expect_error(bytes(data), "corrupt")


@pytest.mark.parametrize(
    "side", [20000, 10000, 8000], ids=["pil-error", "pil-warning", "our-limit"]
)
def test_huge_png_header_refused_before_decoding(side):
    # the IDAT holds one pixel: decoding would give "truncated", so "too_large" proves it never ran
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = expect_error(png_with_size(side, side), "too_large")
    assert "too large" in str(err)
    assert not caught, [str(w.message) for w in caught]  # PIL's bomb warning became the error


def test_huge_jpeg_header_refused(face_bytes):
    expect_error(jpeg_with_size(face_bytes, 20000, 20000), "too_large")


def test_max_pixels_argument(face_bytes):
    expect_error(face_bytes, "too_large", max_pixels=150 * 150 - 1)
    assert decode_image(face_bytes, max_pixels=150 * 150).bgr.shape == (150, 150, 3)
    assert MAX_PIXELS == 40_000_000


def test_read_image_unreadable(tmp_path):
    for path in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(ImageError) as info:
            read_image(path)
        assert info.value.reason == "unreadable" and "\n" not in str(info.value)


def test_bad_files_on_disk(tmp_path, face_bytes):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image\n")
    (tmp_path / "cut.jpg").write_bytes(face_bytes[: len(face_bytes) // 2])
    want = {"zero.jpg": "empty", "notes.jpg": "not_an_image", "cut.jpg": "truncated"}
    for name, reason in want.items():
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        assert info.value.reason == reason


def test_image_error_pickles_and_is_one_line():
    err = ImageError("corrupt", "corrupt JPEG:\nbad Huffman code")
    again = pickle.loads(pickle.dumps(err))
    assert again.reason == "corrupt" and again.status == "decode_error"
    assert str(again) == "corrupt JPEG: bad Huffman code"


# ---------------------------------------------------------------------------- encoding


def test_encode_jpeg_default_and_given_quality(face_bgr):
    assert decode_image(encode_image(face_bgr, "JPEG")).jpeg_quality == 95
    d = decode_image(encode_image(face_bgr, "jpg", quality=70))
    assert d.jpeg_quality == 70 and d.format == "JPEG"
    assert diff(d.bgr, face_bgr).mean() < 5


def test_encode_rejects_bad_arguments(face_bgr):
    with pytest.raises(ValueError):
        encode_image(face_bgr, "GIF")
    with pytest.raises(ValueError):
        encode_image(face_bgr, "XYZ")
    with pytest.raises(ValueError):
        encode_image(face_bgr.astype(np.float32), "PNG")
    with pytest.raises(ValueError):
        encode_image(face_bgr[..., :2], "PNG")
    with pytest.raises(ValueError):
        encode_image(face_bgr, "JPEG", quality=0)
    with pytest.raises(ValueError):
        encode_image(face_bgr, "JPEG", quality=101)


def test_encode_mask_roundtrip():
    mask = np.zeros((150, 150), np.uint8)
    mask[60:140, 20:130] = 255
    data = encode_mask(mask)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), mask)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
    assert encode_mask(mask.astype(bool)) == data
    with pytest.raises(ValueError):
        encode_mask(np.dstack([mask] * 3))
    with pytest.raises(ValueError):
        encode_mask(mask.astype(np.float32))


@pytest.mark.parametrize("shape", [(150, 150), (1, 1), (1, 7), (9, 1), (97, 145), (640, 480)])
def test_encode_mask_is_lossless_for_every_decoder(shape):
    """The hand-made PNG (one zlib stream per mask from a compressor reused per thread): the
    same pixels through cv2, PIL and decode_image, for binary masks and any uint8 values, mask
    after mask (each stream is independent of the one before)."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    binary = (rng.random(shape) < 0.4).astype(np.uint8) * 255
    blobs = np.zeros(shape, np.uint8)
    blobs[shape[0] // 4 : shape[0] * 3 // 4 + 1, shape[1] // 5 :] = 255
    any_values = rng.integers(0, 256, shape, dtype=np.uint8)
    for mask in (binary, blobs, any_values, binary[:, ::-1], np.zeros(shape, np.uint8)):
        data = encode_mask(mask)
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), mask)
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), mask)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.mode == "L" and np.array_equal(np.asarray(im), mask)
        assert np.array_equal(decode_image(data).bgr, np.repeat(mask[..., None], 3, 2))


def test_output_format():
    assert output_format("JPEG") == ("JPEG", ".jpg")
    assert output_format("jpeg") == ("JPEG", ".jpg")
    assert output_format("MPO") == ("JPEG", ".jpg")
    assert output_format("PNG") == ("PNG", ".png")
    assert output_format("BMP") == ("BMP", ".bmp")
    assert output_format("TIFF") == ("TIFF", ".tif")
    assert output_format("PPM") == ("PPM", ".ppm")
    assert output_format("WEBP") == ("WEBP", ".webp")
    for fmt in ("GIF", "ICO", "JPEG2000", "AVIF", ""):
        assert output_format(fmt) == ("PNG", ".png")


def test_output_format_is_always_encodable(face_bgr):
    for fmt in ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"):
        target, ext = output_format(fmt)
        assert decode_image(encode_image(face_bgr, target)).format == target
        assert ext.startswith(".")


# ---------------------------------------------------------------------------- write_atomic


def test_write_atomic_creates_dirs_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.jpg"
    write_atomic(path, b"first")
    write_atomic(str(path), b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["out.jpg"]


def test_write_atomic_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.png", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644


def test_write_atomic_failure_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "new.jpg", "text is not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
    (tmp_path / "old.jpg").write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "old.jpg", 12345)  # type: ignore[arg-type]
    assert (tmp_path / "old.jpg").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["old.jpg"]


def test_write_atomic_takes_the_longest_name_the_folder_takes_and_names_the_file_it_refuses(tmp_path):
    """A temp is named after its file: a 250-byte name, which fits the file system's 255,
    must not fail for its temp's tail; a name that does not fit is an error naming it."""
    longest = tmp_path / ("n" * 246 + ".jpg")
    write_atomic(longest, b"data")
    assert longest.read_bytes() == b"data"
    too_long = tmp_path / ("n" * 252 + ".jpg")
    with pytest.raises(OSError) as refused:
        write_atomic(too_long, b"data")
    assert refused.value.errno == errno.ENAMETOOLONG and refused.value.filename == str(too_long)
    assert os.listdir(tmp_path) == [longest.name]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_write_atomic_disk_error_mid_write(tmp_path):
    # a real short write: the file-size limit makes write() fail with EFBIG part-way through
    (tmp_path / "kept.jpg").write_bytes(b"old")
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from maskgen.files import write_atomic
for name in ("new.jpg", "kept.jpg"):
    try:
        write_atomic({str(tmp_path)!r} + "/" + name, b"x" * 100_000)
    except OSError:
        continue
    sys.exit("no OSError for " + name)
"""
    root = Path(__file__).resolve().parents[1]
    paths = [str(root), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["kept.jpg"]
    assert (tmp_path / "kept.jpg").read_bytes() == b"old"


def test_the_plain_jpeg_header_reads_as_pil_opens_it(face_pil):
    """decode_image reads a plain JPEG's header itself (PIL's parse cost a fifth of the
    decode): size, mode and quality as PIL gives them, on every real JPEG here and on made
    ones (grey, progressive, 4:4:4, the extremes of quality, 16-bit tables); a JPEG with EXIF
    (its orientation) or that PIL alone can name the trouble of is left to PIL."""
    real = [p.read_bytes() for root in (sample_faces(), Path(__file__).parent / "fixtures") for p in sorted(root.rglob("*.jp*g"))]
    made = [pil_bytes(face_pil, "JPEG", quality=q) for q in (1, 50, 100)]
    made += [pil_bytes(face_pil.convert("L"), "JPEG"), pil_bytes(face_pil, "JPEG", progressive=True),
             pil_bytes(face_pil, "JPEG", subsampling=0), pil_bytes(face_pil, "JPEG", qtables=[[300] * 64])]
    for data in real + made:
        header = images._plain_jpeg(data)
        pil = Image.open(io.BytesIO(data))
        if header is None:
            assert pil.getexif() or pil.format == "MPO", "a plain JPEG was left to PIL"
            continue
        size, mode, table = header
        assert (size, mode, table) == (pil.size, pil.mode, tuple(pil.quantization[min(pil.quantization)]))
        assert decode_image(data).jpeg_quality == images._jpeg_quality(pil)
    assert max(images._plain_jpeg(made[-1])[2]) == 300  # 16-bit entries
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = pil_bytes(face_pil.crop((0, 0, 150, 100)), "JPEG", exif=exif.tobytes())  # 150 wide, 100 high
    assert images._plain_jpeg(rotated) is None and decode_image(rotated).bgr.shape[:2] == (150, 100)  # turned upright
    assert images._plain_jpeg(made[0][:200]) is None  # cut in its header: PIL names the error
    expect_error(made[0][:200], {"truncated", "corrupt"})
