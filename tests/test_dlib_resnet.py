"""The PyTorch port of dlib's face-recognition ResNet: dlib's own descriptors, to 1e-5 per
component, on the real sample chips and on chips with the lower face painted over, at batch 1
and 32; a clear error for a damaged .dat; gradients everywhere; fine-tuning lowers a loss.
(Fine-tuning through `maskgen train`: tests/test_recognition_train.py.)"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
dlib = pytest.importorskip("dlib")

from conftest import aligned_files  # noqa: E402

import maskgen.recognition.dlib_resnet as port  # noqa: E402 - the module (the package's function has its name too)
from maskgen.faces.models import model_path  # noqa: E402
from maskgen.recognition.dlib_resnet import PARAMETERS, DlibModelError, DlibResNet  # noqa: E402
from maskgen.recognition.nets import centre, get_model  # noqa: E402

TOLERANCE = 1e-5  # per component; dlib's descriptors have norms ~1.4


def paint_lower_face(rgb: np.ndarray) -> np.ndarray:
    """A crude surgical mask: the nose tip down, cheek to cheek, one flat colour."""
    masked = rgb.copy()
    cv2.fillPoly(masked, [np.array([[22, 88], [128, 88], [120, 132], [75, 148], [30, 132]], np.int32)], (170, 200, 225))
    return masked


@pytest.fixture(scope="module")
def chips() -> dict[str, np.ndarray]:
    clean = np.stack([np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1]) for p in aligned_files()])
    assert clean.shape == (55, 150, 150, 3)
    return {"clean": clean, "masked": np.stack([paint_lower_face(c) for c in clean])}


@pytest.fixture(scope="module")
def dlibs(chips) -> dict[str, np.ndarray]:
    """dlib's compute_face_descriptor: the reference."""
    net = dlib.face_recognition_model_v1(str(model_path("resnet")))
    return {kind: np.array(net.compute_face_descriptor(list(rgb)), np.float32) for kind, rgb in chips.items()}


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    return port.dlib_resnet()


def embed(net, rgb: np.ndarray, batch: int) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("kind", ["clean", "masked"])
def test_embeddings_equal_dlibs(net, chips, dlibs, kind, batch):
    got, want = embed(net, chips[kind], batch), dlibs[kind]
    assert got.shape == (55, 128)
    assert np.abs(got - want).max() <= TOLERANCE
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99999


def test_the_painted_mask_moves_the_descriptor(dlibs):
    """The masked chips are a real test: dlib itself sees them differently."""
    assert np.linalg.norm(dlibs["clean"] - dlibs["masked"], axis=1).mean() > 0.1


def test_the_architecture_and_the_files_input_layer(net):
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS == 5_614_592
    np.testing.assert_allclose(net.mean.numpy(), [122.782, 117.001, 104.298], atol=1e-4)
    assert net.fc.weight.shape == (128, 256) and net.fc.bias is None
    assert not net.training


def damaged_copies(tmp_path):
    data = model_path("resnet").read_bytes()
    loss = data.index(b"loss_metric_2")
    first_con = data.index(b"con_")
    yield "truncated", data[: len(data) // 2], "end of the file"
    yield "a few bytes", data[:40], "end of the file"
    yield "empty", b"", "end of the file"
    yield "another loss", data[:loss] + b"loss_metric_9" + data[loss + 13:], "'loss_metric_2'"
    yield "another layer", data[:first_con] + b"xyz_" + data[first_con + 4:], "'con_4'"
    yield "more bytes", data + b"\x01\x00", "the end of the file"
    yield "another model", model_path("landmarks5").read_bytes()[:4096], "expected"


def test_a_truncated_or_malformed_dat_gives_a_clear_error(tmp_path):
    for name, data, says in damaged_copies(tmp_path):
        path = tmp_path / f"{name.replace(' ', '_')}.dat"
        path.write_bytes(data)
        with pytest.raises(DlibModelError) as caught:
            port.dlib_resnet(path=path)
        message = str(caught.value)
        assert str(path) in message and says in message and "\n" not in message, (name, message)
        assert isinstance(caught.value, ValueError)


def test_gradients_reach_every_parameter(net, chips):
    model = port.dlib_resnet().train()
    x = torch.from_numpy(chips["masked"][:2]).permute(0, 3, 1, 2).float().requires_grad_()
    model(x).pow(2).sum().backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent and x.grad.abs().sum() > 0


def fine_tune(chips, balanced: bool, steps: int = 4) -> list[float]:
    """SGD (momentum 0.9) on the backbone and a cosine head, 4 chips of each of the 5 identities, half masked."""
    torch.manual_seed(0)
    names = [p.parent.name for p in aligned_files()]
    rows = [i for i, name in enumerate(names) if names[: i + 1].count(name) <= 4]
    labels = torch.tensor([sorted(set(names)).index(names[i]) for i in rows])
    x = torch.from_numpy(np.stack([chips["masked" if i % 2 else "clean"][i] for i in rows])).permute(0, 3, 1, 2).float()
    model = port.dlib_resnet().train()
    if balanced:
        model.balance_()
    head = torch.nn.Linear(128, 5, bias=False)
    optimiser = torch.optim.SGD([{"params": model.parameters(), "lr": 0.01}, {"params": head.parameters(), "lr": 0.005}],
                                momentum=0.9)

    def loss() -> torch.Tensor:
        cosine = torch.nn.functional.normalize(model(x)) @ torch.nn.functional.normalize(head.weight).T
        return torch.nn.functional.cross_entropy(16.0 * cosine, labels)

    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    with torch.no_grad():
        return losses + [loss().item()]


def test_balancing_is_exact(net, chips):
    balanced = port.dlib_resnet().balance_()
    assert balanced.output_scale.item() != 1.0 and not torch.equal(balanced.conv1.weight, net.conv1.weight)
    x = torch.from_numpy(chips["masked"][:8]).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        assert torch.equal(balanced(x), net(x))  # powers of two: bit for bit
    reloaded = DlibResNet()
    reloaded.load_state_dict(balanced.state_dict())  # the scale travels in the state_dict
    with torch.inference_mode():
        assert torch.equal(reloaded.eval()(x), net(x))


def test_fine_tuning_the_balanced_backbone_with_a_cosine_head_lowers_the_loss(chips):
    balanced = fine_tune(chips, balanced=True)
    assert balanced[-1] < 0.6 * balanced[0], balanced
    raw = fine_tune(chips, balanced=False, steps=2)  # dlib's own parametrisation: the same SGD steps overshoot
    assert raw[0] == pytest.approx(balanced[0], abs=1e-4) and min(raw[1:]) > raw[0], (raw, balanced)


def test_the_trainers_backbone_takes_its_centred_input_exactly(net, chips):
    backbone = get_model("dlib-resnet", 128, (150, 150))
    backbone.load_state_dict(net.state_dict())
    pretrained = get_model("dlib-resnet", 128, (150, 150), init="dlib-resnet")  # dlib's weights, balanced
    pixels = torch.from_numpy(chips["clean"][:4]).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        assert torch.equal(backbone.eval()(centre(pixels)), net(pixels))
        assert torch.equal(pretrained.eval()(centre(pixels)), net(pixels))
    assert pretrained.output_scale.item() != 1.0
    with pytest.raises(ValueError, match="150x150"):
        get_model("dlib-resnet", 128, (112, 96))
    with pytest.raises(ValueError, match="random initialisation only"):
        get_model("sphereface4", init="dlib-resnet")


def test_the_package_name_builds_the_net_before_and_after_the_module_is_imported():
    code = ("import sys, maskgen.recognition as r\n"
            "assert 'torch' not in sys.modules\n"
            "net = r.dlib_resnet(pretrained=False)\n"
            "assert r.dlib_resnet is sys.modules['maskgen.recognition.dlib_resnet']  # the module took the name\n"
            "assert type(r.dlib_resnet(pretrained=False)) is type(net)\n"
            "from maskgen.recognition import dlib_resnet\n"
            "assert dlib_resnet(pretrained=False, inputs='centred').inputs == 'centred'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
