"""dlib's pretrained ResNet as the reference recogniser, on the real sample faces with masks
from the real mask engine: clean unmasked pairs verify almost perfectly, masks cost accuracy.
`dlib-resnet` runs on the PyTorch port where torch is installed; dlib's own path
(DlibResNetReference) gives the same features, and is what runs without torch."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ALIGNED, aligned_files

from maskgen.datasets.samples import build_sample_pairs
from maskgen.evaluation.embedders import DlibResNet, DlibResNetReference, EmbedderError, get_embedder
from maskgen.evaluation.evaluate import evaluate_pairs
from maskgen.faces.align import align_face, five_points

WEAR_MIX = "proper:0.6,nose:0.2,chin:0.2"


@pytest.fixture(scope="module")
def dlib_resnet(tmp_path_factory) -> DlibResNet:
    pytest.importorskip("torch")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASKGEN_CACHE", str(tmp_path_factory.mktemp("cache")))  # not the user's cache
        embedder = get_embedder("dlib-resnet", "cpu")
    assert isinstance(embedder, DlibResNet) and embedder.info()["implementation"] == "pytorch"
    return embedder


@pytest.fixture(scope="module")
def reference() -> DlibResNetReference:
    return DlibResNetReference()


@pytest.fixture(scope="module")
def sample_evaluation(tmp_path_factory, dlib_resnet):
    """All three pair types from the 5 sample identities (2 folds), one mask per face, wear varied."""
    pairs = build_sample_pairs(tmp_path_factory.mktemp("sample"), source=ALIGNED, wear=WEAR_MIX)
    return evaluate_pairs(pairs, dlib_resnet)


def group(evaluation, name: str) -> dict:
    return next(g for g in evaluation.report["groups"] if g["group"] == name)


def test_clean_unmasked_pairs_verify_almost_perfectly(sample_evaluation):
    plain = group(sample_evaluation, "unmasked-unmasked")
    assert plain["pairs"] == 440 and plain["folds"] == 2
    assert plain["accuracy"] >= 0.97 and plain["auc"] >= 0.995


def test_masks_cost_accuracy_and_pull_same_identity_scores_down(sample_evaluation):
    plain, masked = group(sample_evaluation, "unmasked-unmasked"), group(sample_evaluation, "masked-unmasked")
    assert masked["accuracy"] < plain["accuracy"]
    positives = sample_evaluation.scores[sample_evaluation.scores.same]
    by_type = positives.groupby("pair_type").score.mean()
    assert by_type["masked-unmasked"] < by_type["unmasked-unmasked"] - 0.01


def test_breakdown_by_mask_type_and_wear(sample_evaluation):
    rows = [r for r in sample_evaluation.report["breakdown"] if r["pair_type"] == "masked-unmasked"]
    assert {r["value"] for r in rows if r["by"] == "wear"} == {"proper", "nose", "chin"}
    assert len({r["value"] for r in rows if r["by"] == "mask_type"}) >= 4
    assert sum(r["pairs"] for r in rows if r["by"] == "mask_type") == 880


def test_features_are_the_descriptor_of_the_chip_then_of_its_mirror(dlib_resnet, reference, tmp_path):
    source = aligned_files()[0]
    mirrored = tmp_path / "mirrored.png"  # lossless, so the mirror is exact
    cv2.imwrite(str(mirrored), cv2.imread(str(source))[:, ::-1])
    features, failed = dlib_resnet.embed([str(source), str(mirrored)])
    assert features.shape == (2, 256) and not failed
    rgb = np.ascontiguousarray(cv2.imread(str(source))[:, :, ::-1])
    np.testing.assert_allclose(features[0, :128], np.array(reference.net.compute_face_descriptor(rgb)), atol=1e-5)
    np.testing.assert_allclose(features[1], np.concatenate([features[0, 128:], features[0, :128]]), atol=1e-6)
    assert np.linalg.norm(features[0, :128] - features[0, 128:]) > 1e-3  # the mirror is a different view


def test_sphereface_crops_are_rechipped_and_still_match_their_person(dlib_resnet, landmarker, tmp_path):
    files = [aligned_files()[0], aligned_files()[1], aligned_files()[-1]]  # two of one person, one other
    crops = []
    for i, path in enumerate(files):
        chip = cv2.imread(str(path))
        crop, _ = align_face(chip, five_points(landmarker.aligned(chip).points), "sphereface")
        assert crop.shape == (112, 96, 3)
        crops.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(crops[-1]), crop)
    on_chips, _ = dlib_resnet.embed([str(p) for p in files])
    on_crops, _ = dlib_resnet.embed([str(p) for p in crops])
    distance = lambda x, y: float(np.linalg.norm(x[:128] - y[:128]))  # noqa: E731
    assert distance(on_crops[0], on_chips[0]) < 0.3  # the same photo through 96x112 and back
    assert distance(on_crops[0], on_crops[1]) < 0.6 < distance(on_crops[0], on_crops[2])


def test_an_undecodable_image_is_reported_not_raised(dlib_resnet, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    features, failed = dlib_resnet.embed([str(aligned_files()[0]), str(bad)])
    assert list(failed) == [str(bad)] and np.isnan(features[1]).all() and not np.isnan(features[0]).any()


def test_the_port_gives_dlibs_own_features_on_chips_and_rechipped_crops(dlib_resnet, reference, landmarker, tmp_path):
    files = [str(p) for p in aligned_files()[::6]]
    chip = cv2.imread(files[0])
    crop, _ = align_face(chip, five_points(landmarker.aligned(chip).points), "sphereface")
    cv2.imwrite(str(tmp_path / "crop.png"), crop)  # 96x112: re-chipped by dlib, then embedded
    paths = files + [str(tmp_path / "crop.png")]
    ported, failed = dlib_resnet.embed(paths)
    own, _ = reference.embed(paths)
    assert not failed and ported.shape == own.shape == (len(paths), 256)
    assert np.abs(ported - own).max() <= 1e-5


def test_the_port_runs_on_the_device_asked_for(dlib_resnet):
    assert dlib_resnet.info()["device"] == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(EmbedderError, match="CUDA"):
            get_embedder("dlib-resnet", "cuda")


def test_without_torch_dlib_resnet_runs_on_dlib_itself(tmp_path):
    """The evaluation modules never import torch, and with no torch at all (stubbed out)
    `dlib-resnet` still embeds, on dlib's own path; a GPU then is a clear error."""
    code = (
        "import sys\n"
        "from maskgen.cli import evaluation as commands\n"
        "from maskgen.evaluation import evaluate, report, embedders\n"
        "from maskgen.bench import evaluate as bench\n"
        "bench.bench_protocol(pairs=200, folds=2, dim=16)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "sys.modules['torch'] = None  # as if not installed: importing it fails\n"
        "embedder = embedders.get_embedder('dlib-resnet')\n"
        "assert type(embedder) is embedders.DlibResNetReference, type(embedder)\n"
        f"features, failed = embedder.embed([{str(aligned_files()[0])!r}])\n"
        "assert features.shape == (1, 256) and not failed and (features == features).all()\n"
        "try:\n"
        "    embedders.get_embedder('dlib-resnet', 'cuda')\n"
        "    raise SystemExit('no error for cuda without torch')\n"
        "except embedders.EmbedderError as exc:\n"
        "    assert 'PyTorch' in str(exc), exc\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
