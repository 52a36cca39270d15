"""Masks of one's own: `maskgen template new` (a family from a picture of a mask), the family
used by `--type path.json` / $MASKGEN_MASKS in `mask` and `generate` (Ray), and `template preview`."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ALIGNED
from pipeline_helpers import ensure_ray
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.masks import families
from maskgen.masks.custom import template_anchors
from maskgen.masks.families import family
from maskgen.masks.options import MaskOptions
from maskgen.masks.render import render_mask
from maskgen.masks.templates import RELIEF_SCALE, TEMPLATE_H, TEMPLATE_W, template, texture_bgr, texture_mean

runner = CliRunner()
W, H = 600, 400
BOX = (110, 80, 490, 320)  # the drawn mask's left, top, right, bottom
PLEATS = (150, 200, 250)  # rows of its pleat lines
BLUE = (230, 203, 169)  # BGR of #a9cbe6
ANCHORS = {"nose_top": [300, 82], "chin_bottom": [300, 318], "left_ear": [112, 200], "right_ear": [488, 200],
           "left_cheek": [205, 160], "right_cheek": [395, 160]}  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def draw_mask() -> tuple[np.ndarray, np.ndarray]:
    """A light-blue rounded mask with three dark pleat lines: (BGR on white, its alpha)."""
    shape = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = BOX
    r = 30
    cv2.rectangle(shape, (x0 + r, y0), (x1 - r, y1), 255, -1)
    cv2.rectangle(shape, (x0, y0 + r), (x1, y1 - r), 255, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(shape, (cx, cy), r, 255, -1)
    image = np.full((H, W, 3), 255, np.uint8)
    image[shape > 0] = BLUE
    for y in PLEATS:
        cv2.line(image, (x0 + 6, y), (x1 - 6, y), (150, 120, 90), 3)
    return image, shape


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """The mask on a white background (PNG and JPEG), as RGBA over noise, and the anchors file."""
    folder = tmp_path_factory.mktemp("pictures")
    image, shape = draw_mask()
    cv2.imwrite(str(folder / "photo.png"), image)
    cv2.imwrite(str(folder / "photo.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)  # no plain background to cut out
    rgba = np.dstack([np.where(shape[..., None] > 0, image, noise), shape])
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "noise.png"), noise)
    (folder / "anchors.json").write_text(json.dumps(ANCHORS))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


@pytest.fixture(scope="module")
def my_mask(pictures, tmp_path_factory):
    """`template new` on the photo: the family file."""
    out = tmp_path_factory.mktemp("family") / "my_mask.json"
    result = invoke("template", "new", pictures / "photo.png", "-o", out, "--anchors", pictures / "anchors.json")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Two identities, three aligned sample chips each."""
    root = tmp_path_factory.mktemp("faces") / "faces"
    for identity in sorted(p.name for p in ALIGNED.iterdir())[:2]:
        (root / identity).mkdir(parents=True)
        for src in sorted((ALIGNED / identity).glob("*.jpg"))[:3]:
            shutil.copy(src, root / identity / src.name)
    return root


def test_template_anchors_of_the_built_in_fit():
    """Where the anchors go: nose and chin on the outline's midline, ears half-way up the
    outline's outer sides, cheeks where the mean face's cheeks fall under the fit."""
    a = template_anchors(family("surgical"))
    assert a["nose_top"] == (0.5, 0.0) and a["chin_bottom"] == (0.5, 1.0)
    assert a["left_ear"] == (0.0, 0.5) and a["right_ear"] == (1.0, 0.5)
    assert a["left_cheek"] == pytest.approx((0.246, 0.316), abs=0.01)
    assert a["right_cheek"][0] == pytest.approx(1 - a["left_cheek"][0]) and a["right_cheek"][1] == a["left_cheek"][1]
    assert template_anchors(family("kn95"))["left_ear"][1] == pytest.approx(0.41, abs=0.01)  # its pointed side


def test_template_new_writes_a_family_and_its_texture(my_mask):
    data = json.loads(my_mask.read_text())
    surgical = family("surgical")
    assert data["name"] == "my_mask" and data["texture"] == "my_mask.png"
    assert data["fit"] == {k: getattr(surgical.fit, k) for k in ("top", "side", "width", "bottom", "sag")}
    assert data["straps"] == "ear_loops" and data["patterns"] == {"plain": 1}
    (color,) = data["colors"]
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    assert np.abs(rgb - BLUE[::-1]).max() < 20  # the mask's mean colour (pleats darken it a little)

    texture = cv2.imread(str(my_mask.with_name("my_mask.png")), cv2.IMREAD_UNCHANGED)
    assert texture.shape == (2 * TEMPLATE_H, 2 * TEMPLATE_W, 4)
    alpha = texture[..., 3]
    assert (alpha[10:-10, 10:-10] >= 250).all()  # the picture fills the template ...
    assert alpha[0, 0] < 128 and alpha[-1, -1] < 128  # ... but for its rounded corners
    assert np.abs(texture[20, 40, :3].astype(int) - BLUE).max() < 12  # colours: the picture's
    # the pleat lines land in proportion between nose_top (v=0) and chin_bottom (v=1)
    rows = texture[:, TEMPLATE_W, :3].astype(int).sum(1)
    for y in PLEATS:
        v = (y - BOX[1]) / (BOX[3] - BOX[1])
        row = round(v * (2 * TEMPLATE_H - 1))
        assert rows[row - 3 : row + 4].min() < rows[row + 12] - 100, f"no pleat near v={v:.2f}"


def test_textured_template_planes(my_mask):
    MaskOptions.parse(type=str(my_mask))  # registers it
    planes = template("my_mask")
    assert planes.shape == (TEMPLATE_H, TEMPLATE_W, 4) and planes.dtype == np.uint8
    texture = cv2.imread(str(my_mask.with_name("my_mask.png")), cv2.IMREAD_UNCHANGED)
    small = cv2.resize(texture, (TEMPLATE_W, TEMPLATE_H), interpolation=cv2.INTER_AREA)
    assert np.abs(planes[..., 0].astype(int) - small[..., 3]).max() <= 1
    relief = planes[..., 1].astype(float) / RELIEF_SCALE
    assert np.abs(relief - 1).max() < 0.01  # flat: the picture's folds are in its colours
    assert not planes[..., 2].any() and not planes[..., 3].any()
    bgr = texture_bgr("my_mask")
    assert bgr.shape == (TEMPLATE_H, TEMPLATE_W, 3) and np.abs(bgr[30, 80].astype(int) - BLUE).max() < 12
    assert np.abs(texture_mean("my_mask") * 255 - BLUE).max() < 20
    assert texture_bgr("surgical") is None


def _midline(image: np.ndarray, points: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Grey levels down the face's midline, where the mask covers it."""
    x = int(round(points[[30, 33, 51, 57, 8], 0].mean()))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
    rows = [y for y in range(len(gray)) if covered[y, x - 2 : x + 3].all()]
    return gray[rows, x - 2 : x + 3].mean(1)


@pytest.mark.parametrize("color", [None, "#c03030"])
def test_a_mask_from_a_picture_keeps_its_print(my_mask, chips, color):
    """The picture's own colours are the mask's albedo: its dark pleat lines show on the face
    (as dips down the midline), in the picture's blue, or re-coloured by --color."""
    options = MaskOptions.parse(type=str(my_mask), **({"color": color} if color else {}))
    for image, points in chips[:6]:
        spec = options.sample(3)
        rendered = render_mask(image, points, spec)
        covered = rendered.occlusion > 0
        profile = _midline(rendered.image, points, covered)
        dips = (profile < np.maximum.accumulate(profile) - 12) & (profile < np.maximum.accumulate(profile[::-1])[::-1] - 12)
        assert np.diff(dips.astype(int)).clip(0).sum() >= 2, profile.round()  # at least two separate dark lines
        b, g, r = np.median(rendered.image[covered], 0)
        assert (b > r + 12) if color is None else (r > b + 50), (b, g, r)  # graded to the photo, as every mask


def test_template_new_from_rgba_uses_its_alpha(pictures, tmp_path):
    out = tmp_path / "rgba_mask.json"
    result = invoke("template", "new", pictures / "rgba.png", "-o", out, "--anchors", pictures / "anchors.json",
                    "--like", "kn95", "--name", "Blue-RGBA", "--straps", "head_straps")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["name"] == "Blue-RGBA" and data["straps"] == "head_straps" and data["fit"]["top"] == family("kn95").fit.top
    texture = cv2.imread(str(tmp_path / "rgba_mask.png"), cv2.IMREAD_UNCHANGED)
    inside = texture[..., 3] > 250
    assert inside.mean() > 0.8 and np.abs(texture[inside][:, :3].astype(int) - BLUE).max(1).mean() < 30  # no noise came in
    # and a JPEG photo of it (no alpha, a slightly noisy white): cut out from its background
    jpg = invoke("template", "new", pictures / "photo.jpg", "-o", tmp_path / "jpg_mask.json", "--anchors", pictures / "anchors.json")
    assert jpg.exit_code == 0, jpg.output


def _with(**changes):
    return {**ANCHORS, **changes}


@pytest.mark.parametrize(
    ("picture", "anchors", "message"),
    [
        ("photo.png", {k: v for k, v in ANCHORS.items() if k != "left_cheek"}, "missing anchor 'left_cheek'"),
        ("photo.png", _with(right_ear=[700, 200]), "anchor 'right_ear' (700, 200) is outside the 600x400 picture"),
        ("photo.png", _with(chin_bottom=[300, 60]), "chin_bottom must be below nose_top"),
        ("photo.png", _with(left_cheek=[100, 160], left_ear=[150, 200]), "left_ear must be left of left_cheek"),
        ("photo.png", _with(right_cheek=[495, 200]), "right_cheek must be left of right_ear"),
        ("photo.png", _with(nose_top=[300, 10]), "anchor 'nose_top' (300, 10) is not on the mask"),
        ("photo.png", _with(left_cheek=[120, 315], right_cheek=[480, 90]), "fold over itself"),
        ("noise.png", ANCHORS, "no clear mask region"),
        ("broken.png", ANCHORS, "cannot read the picture"),
        ("missing.png", ANCHORS, "no such picture"),
    ],
)
def test_template_new_errors_are_one_line(pictures, tmp_path, picture, anchors, message):
    (tmp_path / "a.json").write_text(json.dumps(anchors))
    result = invoke("template", "new", pictures / picture, "-o", tmp_path / "m.json", "--anchors", tmp_path / "a.json")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.png").exists()


def test_template_new_refuses_to_overwrite(pictures, tmp_path):
    out = tmp_path / "m.json"
    args = ("template", "new", pictures / "photo.png", "-o", out, "--anchors", pictures / "anchors.json")
    assert invoke(*args).exit_code == 0
    before = out.with_suffix(".png").read_bytes()
    result = invoke(*args)
    assert result.exit_code == 2 and "exists (pass --overwrite" in result.stderr and result.stderr.count("\n") == 1
    assert invoke(*args, "--overwrite").exit_code == 0 and out.with_suffix(".png").read_bytes() == before
    built_in = invoke("template", "new", pictures / "photo.png", "-o", tmp_path / "surgical.json", "--anchors", pictures / "anchors.json")
    assert built_in.exit_code == 2 and "built-in" in built_in.stderr


def _masked_rows(out):
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert (manifest.status == "ok").all(), manifest.error.tolist()
    return manifest


def test_mask_with_a_family_file(my_mask, faces, tmp_path):
    out = tmp_path / "out"
    result = invoke("mask", faces, "-o", out, "--aligned", "--type", my_mask)
    assert result.exit_code == 0, result.output
    manifest = _masked_rows(out)
    assert len(manifest) == 6 and set(manifest.mask_type) == {"my_mask"}
    for row in manifest.itertuples():
        masked, original = cv2.imread(str(out / row.out_path)).astype(int), cv2.imread(str(faces / row.src_path)).astype(int)
        covered = cv2.imread(str(out / row.mask_path), 0) > 0
        assert 0.2 < covered.mean() < 0.7
        assert np.abs(masked - original)[covered].mean() > 20  # the mask is there
        assert np.abs(masked - original)[~covered].mean() < 8  # and only there (its rim, shadow and straps aside)

    mixed = tmp_path / "mixed"
    result = invoke("mask", faces, "-o", mixed, "--aligned", "--type", f"surgical:0.5,{my_mask}:0.5", "--seed", 4)
    assert result.exit_code == 0, result.output
    assert set(_masked_rows(mixed).mask_type) == {"surgical", "my_mask"}


def test_options_carry_the_family_file_to_other_processes(my_mask):
    options = MaskOptions.parse(type=f"{my_mask}:2,n95")
    data = options.to_dict()
    assert options.types == {"my_mask": 2.0, "n95": 1.0}
    assert data["families"]["my_mask"]["path"] == str(my_mask.absolute())
    assert "families" not in MaskOptions.parse(type="surgical").to_dict()  # built-in configs hash as before
    saved = dict(families._registered)
    families._registered.clear()  # a fresh worker: nothing registered
    try:
        with pytest.raises(ValueError):
            family("my_mask")
        assert MaskOptions.from_dict(json.loads(json.dumps(data))) == options
        assert family("my_mask").texture == str(my_mask.with_name("my_mask.png").absolute())
    finally:
        families._registered.update(saved)


def test_masks_folder_in_the_environment(my_mask, faces, tmp_path, monkeypatch):
    folder = tmp_path / "masks"
    folder.mkdir()
    data = json.loads(my_mask.read_text()) | {"name": "blue_env"}
    (folder / "blue.json").write_text(json.dumps(data))
    shutil.copy(my_mask.with_name("my_mask.png"), folder / "my_mask.png")
    monkeypatch.setenv("MASKGEN_MASKS", str(tmp_path / "nowhere"))
    assert invoke("mask", faces, "-o", tmp_path / "x", "--aligned", "--type", "blue_env").exit_code == 2  # not a folder
    monkeypatch.setenv("MASKGEN_MASKS", str(folder))
    out = tmp_path / "out"
    result = invoke("mask", faces / sorted(p.name for p in faces.iterdir())[0], "-o", out, "--aligned", "--type", "blue_env")
    assert result.exit_code == 0, result.output
    assert set(_masked_rows(out).mask_type) == {"blue_env"}
    unknown = invoke("mask", faces, "-o", tmp_path / "y", "--aligned", "--type", "blue_nowhere")
    assert unknown.exit_code == 2 and "blue_env" in unknown.stderr  # listed among the choices


def test_template_preview_writes_a_contact_sheet(my_mask, tmp_path):
    out = tmp_path / "sheet.png"
    result = invoke("template", "preview", my_mask, "-o", out)
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out))
    assert sheet.shape == (18 + 4 * 150, 4 * 150, 3)  # a header, then 4 faces x (original, proper, nose, chin)
    face, proper = sheet[18:168, :150].astype(int), sheet[18:168, 150:300].astype(int)
    assert np.abs(face - proper)[90:140, 40:110].mean() > 20  # the mask covers the mouth
    assert invoke("template", "preview", "nope.json").exit_code == 2


def test_generate_with_a_family_file_on_ray(my_mask, faces, tmp_path):
    ensure_ray()
    out = tmp_path / "gen"
    result = invoke("generate", faces, out, "--type", my_mask, "--workers", 2, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(out / "manifest")
    assert len(manifest) == 6 and (manifest.status == "ok").all(), manifest.error.tolist()
    assert set(manifest.mask_type) == {"my_mask"}
