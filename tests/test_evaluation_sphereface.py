"""A SphereFace checkpoint as the recogniser: features concat(f(x), f(flip x)) prepared as
the trainer prepares images, and checkpoints that are not usable refused in one line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import aligned_files  # noqa: E402

from maskgen.evaluation.embedders import EmbedderError, get_embedder  # noqa: E402
from maskgen.faces.layouts import fit_to  # noqa: E402
from maskgen.recognition.embeddings import save_untrained_checkpoint  # noqa: E402
from maskgen.recognition.nets import get_model  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("sf4") / "checkpoint.pt", "sphereface4")


def test_features_are_the_net_on_the_image_then_on_its_mirror(checkpoint, tmp_path):
    embedder = get_embedder(str(checkpoint), "cpu")
    crop = fit_to(cv2.imread(str(aligned_files()[0])), 112, 96)  # a 96x112 crop: fitted as it is
    original, mirrored = tmp_path / "crop.png", tmp_path / "mirrored.png"
    cv2.imwrite(str(original), crop)
    cv2.imwrite(str(mirrored), crop[:, ::-1])
    features, failed = embedder.embed([str(original), str(mirrored)])
    assert features.shape == (2, 1024) and features.dtype == np.float32 and not failed
    net = embedder.inner.net
    x = torch.from_numpy(np.ascontiguousarray(crop[:, :, ::-1])).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = net((x - 127.5) / 128.0)[0].numpy()
    np.testing.assert_allclose(features[0, :512], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features[1], np.concatenate([features[0, 512:], features[0, :512]]), rtol=1e-4, atol=1e-4)


def test_sample_chips_are_fitted_to_the_checkpoints_input_size(checkpoint):
    embedder = get_embedder(str(checkpoint.parent), "cpu", batch_size=2)  # the training folder works too
    batches = []
    features, _ = embedder.embed([str(p) for p in aligned_files()[:3]], on_batch=batches.append)
    assert features.shape == (3, 1024) and batches == [2, 1]
    chip = cv2.imread(str(aligned_files()[0]))
    again, _ = embedder.embed([str(aligned_files()[0])])
    np.testing.assert_allclose(again[0], embedder.inner.features(fit_to(chip, 112, 96)[None, :, :, ::-1].copy())[0], rtol=1e-4, atol=1e-4)


def edited_checkpoint(source, target, **changes):
    state = torch.load(source, weights_only=True)
    state["config"] = {**state["config"], **changes.pop("config", {})}
    state.update(changes)
    torch.save(state, target)
    return target


@pytest.mark.parametrize("make, message", [
    (lambda src, dst: edited_checkpoint(src, dst, config={"model": "sphereface20"}),
     "weights do not fit sphereface20"),
    (lambda src, dst: edited_checkpoint(src, dst, config={"model": "iresnet50"}),
     "'iresnet50' is not a SphereFace net"),
    (lambda src, dst: torch.save(get_model("sphereface4").state_dict(), dst),
     "not a maskgen training checkpoint"),
    (lambda src, dst: dst.write_bytes(b"not a checkpoint"),
     "is not a maskgen checkpoint"),
])
def test_unusable_checkpoints_are_refused_with_one_line(checkpoint, tmp_path, make, message):
    target = tmp_path / "bad.pt"
    make(checkpoint, target)
    with pytest.raises(EmbedderError, match=message) as caught:
        get_embedder(str(target), "cpu")
    assert "\n" not in str(caught.value)


def test_a_checkpoint_that_does_not_exist_names_the_alternative(tmp_path):
    with pytest.raises(EmbedderError, match="dlib-resnet"):
        get_embedder(str(tmp_path / "nothing.pt"))
