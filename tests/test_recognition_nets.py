"""SphereFace networks: shapes, parameter counts and the released initialisation."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from maskgen.recognition.nets import UNITS, get_model  # noqa: E402


def expected_params(units: tuple[int, ...]) -> int:
    """Counted from the architecture: per stage a biased stride-2 conv + PReLU, then units of
    two bias-free 3x3 convs + PReLUs; fc 512*7*6 -> 512 with bias."""
    total, cin = 0, 3
    for cout, n in zip((64, 128, 256, 512), units):
        total += cin * cout * 9 + cout + cout
        total += n * 2 * (cout * cout * 9 + cout)
        cin = cout
    return total + 512 * 7 * 6 * 512 + 512


@pytest.mark.parametrize("name", list(UNITS))
def test_every_variant_has_the_architecture_parameter_count_and_512d_output(name):
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected_params(UNITS[name])
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 112, 96)).shape == (1, 512)


def test_sphereface20_has_about_22_7_million_parameters():
    count = sum(p.numel() for p in get_model("sphereface20").parameters())
    assert abs(count - 22.7e6) / 22.7e6 < 0.01, count


def test_units_per_stage_follow_the_paper():
    def units(name):
        return [sum(isinstance(m, torch.nn.Module) and type(m).__name__ == "ResidualUnit" for m in stage)
                for stage in get_model(name).stages]

    assert units("sphereface20") == [1, 2, 4, 1]
    assert units("sphereface64") == [3, 8, 16, 3]


@torch.no_grad()
def test_initialisation_matches_the_caffe_prototxt():
    torch.manual_seed(0)
    model = get_model("sphereface20")
    down = model.stages[1][0]  # stride-2 conv: Caffe xavier = U(+-sqrt(3 / fan_in)), zero bias
    bound = math.sqrt(3 / (64 * 9))
    assert down.stride == (2, 2) and down.weight.abs().max() <= bound
    assert down.weight.abs().max() > 0.95 * bound and down.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(down.bias) == 0
    unit = model.stages[2][2]
    assert unit.conv1.bias is None and unit.conv1.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(unit.prelu1.weight == 0.25) and unit.prelu1.weight.numel() == 256
    fc_bound = math.sqrt(3 / (512 * 7 * 6))
    assert model.fc5.weight.abs().max() <= fc_bound
    assert model.fc5.weight.std().item() == pytest.approx(fc_bound / math.sqrt(3), rel=0.05)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="sphereface20"):
        get_model("resnet50")
