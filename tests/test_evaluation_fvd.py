"""FVD: the Fréchet distance against closed forms and an independent eigenvalue path, the I3D
network's layout, and its safetensors loading, with small random networks of the same interface."""

import math

import pytest
import torch
from safetensors.torch import save_file

from cvvae.errors import UserInputError
from cvvae.evaluation import I3D, frechet_distance, i3d_features, load_i3d
from cvvae.evaluation.fvd import _same_padding


def small_i3d(seed: int = 0, classes: int = 10) -> I3D:
    """A random I3D with every width divided by 16 (4 to 24 channels), BatchNorm statistics set."""
    torch.manual_seed(seed)
    model = I3D(classes, width_divisor=16)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_i3d(model: I3D, path, drop_counters: bool = True) -> None:
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (drop_counters and k.endswith("num_batches_tracked"))
    }
    save_file(state, str(path))


# ---------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = torch.randn(50, 6, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_shifted_sets_is_the_squared_shift():
    a = torch.randn(40, 5, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-9)


def test_frechet_distance_of_scaled_one_dimensional_sets():
    # 1-D: (mu_a - mu_b)^2 + (s_a - s_b)^2 with s the standard deviations
    a = torch.randn(30, 1, dtype=torch.float64)
    b = 3 * a + 1
    s = a.std().item()
    expected = (a.mean().item() * 2 + 1) ** 2 + (s - 3 * s) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_eigenvalues_of_the_covariance_product():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 8, generator=g, dtype=torch.float64
    )
    b = (
        torch.randn(150, 8, generator=g, dtype=torch.float64)
        @ torch.randn(8, 8, generator=g, dtype=torch.float64)
        + 1
    )
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)): the eigenvalues of the (non-symmetric) product are real and >= 0
    cross = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    expected = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-7)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-7)


def test_frechet_distance_rejects_single_samples_and_shape_mismatches():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(torch.randn(4, 3), torch.randn(4, 2))


# ---------------------------------------------------------------------------- I3D network
def test_same_padding_gives_ceil_sizes_with_the_odd_pixel_at_the_end():
    x = torch.ones(1, 1, 5, 7, 8)
    y = _same_padding(x, (3, 3, 3), (2, 2, 2))
    # T 5 (5 % 2 = 1): pad 3 - 1 = 2 -> 1 + 1; H 7: 2 -> 1 + 1; W 8 (8 % 2 = 0): pad 1 -> 0 + 1
    assert y.shape == (1, 1, 7, 9, 9)
    assert y[0, 0, :, :, 0].sum() == 5 * 7 and y[0, 0, :, :, -1].sum() == 0
    assert torch.nn.functional.max_pool3d(y, 3, 2).shape[2:] == (3, 4, 4)


def test_full_size_i3d_has_the_published_layout():
    with torch.device("meta"):
        model = I3D()
    state = model.state_dict()
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["Conv3d_2c_3x3.conv3d.weight"].shape == (192, 64, 3, 3, 3)
    assert state["Mixed_4b.b1b.conv3d.weight"].shape == (208, 96, 3, 3, 3)
    assert state["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert state["logits.conv3d.bias"].shape == (400,)
    assert "Mixed_3b.b0.bn.running_var" in state and "logits.bn.weight" not in state
    params = sum(p.numel() for p in model.parameters())
    assert 12_000_000 < params < 13_000_000  # Inception-v1 I3D: about 12.3 M parameters


def test_i3d_output_is_the_time_average_and_independent_per_clip():
    model = small_i3d()
    clips = torch.rand(3, 3, 9, 64, 64) * 2 - 1
    out = model(clips)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(model(clips[1:2]), out[1:2], rtol=1e-4, atol=1e-5)


def test_i3d_features_resize_frames_and_batch():
    model = small_i3d()
    clips = torch.rand(5, 3, 5, 48, 40) * 2 - 1
    features = i3d_features(model, clips, size=32)
    assert features.shape == (5, 10) and features.dtype == torch.float64
    torch.testing.assert_close(i3d_features(model, clips[2], size=32), features[2])
    # at the network's size the clip goes in unchanged
    square = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    torch.testing.assert_close(i3d_features(model, square, size=32), model(square).double())


def test_load_i3d_round_trip_infers_width_and_classes(tmp_path):
    model = small_i3d(seed=3, classes=7)
    save_i3d(model, tmp_path / "i3d.safetensors")
    loaded = load_i3d(tmp_path / "i3d.safetensors")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    clips = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(clips), model(clips))
    save_i3d(model, tmp_path / "with_counters.safetensors", drop_counters=False)
    load_i3d(tmp_path / "with_counters.safetensors")


def test_load_i3d_names_the_problem_and_the_file(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_i3d(tmp_path / "missing.safetensors")
    (tmp_path / "i3d.pt").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(UserInputError, match="not a readable safetensors file: .*i3d.pt"):
        load_i3d(tmp_path / "i3d.pt")
    state = {k: v for k, v in small_i3d().state_dict().items() if "Mixed_5c.b0" not in k}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(UserInputError, match="missing keys .*Mixed_5c.b0"):
        load_i3d(tmp_path / "partial.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserInputError, match="no tensor"):
        load_i3d(tmp_path / "other.safetensors")


def test_fvd_grows_with_the_distortion():
    """With a fixed random I3D, reconstructions with more noise lie further from the clips."""
    model = small_i3d()
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(6, 3, 5, 32, 32, generator=g) * 2 - 1
    real = i3d_features(model, clips, size=32)
    values = []
    for sigma in (0.05, 0.3):
        noisy = (clips + sigma * torch.randn(clips.shape, generator=g)).clamp(-1, 1)
        values.append(frechet_distance(real, i3d_features(model, noisy, size=32)))
    assert 0 < values[0] < values[1] and math.isfinite(values[1])
