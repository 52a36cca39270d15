"""Margin heads: A-Softmax against a direct evaluation of its formula, monotonicity, finite
gradients at the ends of [0, pi], lambda annealing; CosFace and ArcFace target logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from maskgen.recognition.heads import ArcFace, ASoftmax, CosFace, get_head  # noqa: E402

ANGLES = np.linspace(0.0, math.pi, 1441)  # includes every k * pi / 4 boundary
EDGE_ANGLES = [0.0, 1e-7, 1e-4, math.pi - 1e-4, math.pi - 1e-7, math.pi]
RADIUS = 3.0


def direct_psi(theta: float, m: int = 4) -> float:
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def unit_weights(head, dtype=torch.float64):
    """Class c's weight is the c-th basis vector (times 2: the head must renormalise it)."""
    head = head.to(dtype)
    with torch.no_grad():
        head.weight.copy_(2 * torch.eye(*head.weight.shape, dtype=dtype))
    return head


def at_angles(angles, dtype=torch.float64) -> torch.Tensor:
    """Embeddings of norm RADIUS at `angles` from class 0's weight, orthogonal to the others."""
    t = torch.tensor(np.asarray(angles), dtype=dtype)
    x = torch.zeros(len(t), 4, dtype=dtype)
    x[:, 0], x[:, 3] = RADIUS * torch.cos(t), RADIUS * torch.sin(t)
    return x


def target_logits(head, angles) -> np.ndarray:
    labels = torch.zeros(len(angles), dtype=torch.long)
    logits, _ = head(at_angles(angles), labels)
    return logits[:, 0].detach().numpy()


@pytest.mark.parametrize("lam", [0.0, 5.0, 1000.0])
def test_asoftmax_target_logit_is_norm_times_lambda_mix_of_cos_and_psi(lam):
    head = unit_weights(ASoftmax(4, 3, m=4, base=lam, gamma=0.0, lambda_min=0.0)).eval()
    got = target_logits(head, ANGLES)
    want = [RADIUS * (lam * math.cos(t) + direct_psi(t)) / (1 + lam) for t in ANGLES]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_asoftmax_other_logits_are_norm_times_cosine():
    head = unit_weights(ASoftmax(4, 3)).eval()
    x = at_angles(ANGLES[::40]) + torch.tensor([0.0, 0.5, -0.7, 0.0], dtype=torch.float64)
    logits, cos = head(x, torch.zeros(len(x), dtype=torch.long))
    expected = x[:, 1:3] / x.norm(dim=1, keepdim=True) * x.norm(dim=1, keepdim=True)  # ||x|| cos = x . w
    torch.testing.assert_close(logits[:, 1:3], expected)
    torch.testing.assert_close(cos[:, 0], x[:, 0] / x.norm(dim=1))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_matches_direct_evaluation_for_every_margin(m):
    head = unit_weights(ASoftmax(4, 3, m=m, base=0.0, gamma=0.0, lambda_min=0.0)).eval()
    want = [RADIUS * direct_psi(t, m) for t in ANGLES]
    np.testing.assert_allclose(target_logits(head, ANGLES), want, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 5.0, 1000.0])
def test_asoftmax_target_logit_decreases_monotonically_in_theta(lam):
    head = unit_weights(ASoftmax(4, 3, base=lam, gamma=0.0, lambda_min=0.0)).eval()
    assert np.all(np.diff(target_logits(head, ANGLES)) < 0)


HEADS = {"asoftmax-lambda0": lambda: ASoftmax(4, 3, base=0.0, gamma=0.0, lambda_min=0.0),
         "asoftmax": lambda: ASoftmax(4, 3), "arcface": lambda: ArcFace(4, 3), "cosface": lambda: CosFace(4, 3)}


@pytest.mark.parametrize("make", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_near_theta_zero_and_pi(make, dtype):
    head = unit_weights(make(), dtype).train()
    x = at_angles(EDGE_ANGLES, dtype).requires_grad_(True)
    logits, _ = head(x, torch.zeros(len(EDGE_ANGLES), dtype=torch.long))
    F.cross_entropy(logits, torch.zeros(len(EDGE_ANGLES), dtype=torch.long)).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert x.grad.abs().sum() > 0


def test_lambda_anneals_from_base_to_lambda_min_one_step_per_training_forward():
    head = ASoftmax(4, 3)
    assert head.current_lambda() == pytest.approx(1000.0)
    x, labels = torch.randn(2, 4), torch.tensor([0, 1])
    head.eval()(x, labels)
    assert int(head.iteration) == 0  # evaluation does not advance the schedule
    head.train()(x, labels)
    head(x, labels)
    assert int(head.iteration) == 2 and head.current_lambda() == pytest.approx(1000 / (1 + 0.12 * 2))
    head.iteration.fill_(100)
    assert head.current_lambda() == pytest.approx(1000 / 13)
    head.iteration.fill_(10**6)
    assert head.current_lambda() == pytest.approx(5.0)
    assert ASoftmax(4, 3, base=100, gamma=1.0, power=2.0, lambda_min=1.0).current_lambda() == pytest.approx(100)


def test_cosface_and_arcface_target_logits():
    cos_head = unit_weights(CosFace(4, 3, scale=10.0, margin=0.35)).eval()
    arc_head = unit_weights(ArcFace(4, 3, scale=10.0, margin=0.5)).eval()
    np.testing.assert_allclose(target_logits(cos_head, ANGLES), 10 * (np.cos(ANGLES) - 0.35), atol=1e-9)
    arc = target_logits(arc_head, ANGLES)
    inside = ANGLES < math.pi - 0.5
    np.testing.assert_allclose(arc[inside], 10 * np.cos(ANGLES[inside] + 0.5), atol=1e-9)
    np.testing.assert_allclose(arc[~inside], 10 * (np.cos(ANGLES[~inside]) - 0.5 * math.sin(0.5)), atol=1e-9)
    assert np.all(np.diff(arc) < 0)


def test_weights_are_renormalised_every_forward():
    head = ASoftmax(4, 5).eval()
    x, labels = torch.randn(6, 4), torch.arange(6) % 5
    before, _ = head(x, labels)
    with torch.no_grad():
        head.weight.mul_(7.0)
    after, _ = head(x, labels)
    torch.testing.assert_close(before, after)


def test_get_head_reads_margin_settings_from_the_config():
    from maskgen.recognition.config import TrainConfig

    config = TrainConfig(head="asoftmax", m=3, lambda_base=50.0, lambda_min=2.0)
    head = get_head("asoftmax", 8, 4, config)
    assert head.m == 3 and head.current_lambda() == pytest.approx(50.0) and head.weight.shape == (4, 8)
    assert get_head("arcface", 8, 4, TrainConfig(arcface_margin=0.3)).margin == 0.3
    with pytest.raises(ValueError, match="asoftmax"):
        get_head("sphere", 8, 4)
