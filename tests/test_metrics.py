"""PSNR and SSIM against values known in closed form and an independent loop implementation."""

import math

import numpy as np
import pytest
import torch

from cvvae.evaluation import clip_mean, psnr, ssim


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_identical_inputs():
    x = rand(2, 3, 4, 16, 16)
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 4, dtype=torch.float64))


def test_output_shapes_are_per_frame():
    assert psnr(rand(3, 16, 16), rand(3, 16, 16, seed=1)).shape == ()
    assert psnr(rand(3, 5, 16, 16), rand(3, 5, 16, 16, seed=1)).shape == (5,)
    assert ssim(rand(2, 3, 5, 16, 16), rand(2, 3, 5, 16, 16, seed=1)).shape == (2, 5)


def test_frames_are_not_mixed():
    x = rand(2, 3, 3, 16, 16)
    y = x.clone()
    y[1, :, 2] += 0.1  # only clip 1, frame 2 differs
    values = psnr(x, y)
    assert torch.isinf(values[0]).all() and torch.isinf(values[1, :2]).all()
    assert values[1, 2] == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-4)
    s = ssim(x, y)
    assert (s[0] == 1).all() and (s[1, :2] == 1).all() and s[1, 2] < 1


def test_psnr_uniform_offset_is_exact():
    x = rand(3, 2, 16, 16) * 0.5
    values = psnr(x, x + 0.25)
    torch.testing.assert_close(
        values, torch.full((2,), 10 * math.log10(4 / 0.0625), dtype=torch.float64)
    )
    assert psnr(x, x + 0.25, data_range=1.0)[0] == pytest.approx(10 * math.log10(1 / 0.0625))


def test_psnr_gaussian_noise_matches_sigma():
    # 3*64*64 samples: the MSE estimate has relative sd sqrt(2/N) ~ 1.3%, i.e. ~0.06 dB
    x = torch.zeros(3, 64, 64)
    sigma = 0.1
    noise = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0)) * sigma
    assert psnr(x, x + noise).item() == pytest.approx(10 * math.log10(4 / sigma**2), abs=0.2)


def test_ssim_constant_frames_closed_form():
    # zero variance everywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.5, -0.25  # exact in float32
    c1 = (0.01 * 2) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = ssim(torch.full((3, 12, 12), a), torch.full((3, 12, 12), b))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def loop_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Independent SSIM: an explicit loop over every 11x11 window fully inside the image, with
    Gaussian-weighted (sigma 1.5) statistics, averaged over windows and channels."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                px, py = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                scores.append(
                    (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                )
    return float(np.mean(scores))


def test_ssim_matches_independent_loop_implementation():
    x = rand(3, 14, 17)
    y = (x + 0.3 * rand(3, 14, 17, seed=1)).clamp(-1, 1)
    expected = loop_ssim(x.double().numpy(), y.double().numpy())
    assert 0.3 < expected < 0.95  # a discriminating, non-trivial case
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-10)
    video = torch.stack([x, y], dim=1)  # per-frame values in a (3, T, H, W) clip
    assert ssim(video, video.flip(1))[1].item() == pytest.approx(
        loop_ssim(y.numpy(), x.numpy()), abs=1e-10
    )


def test_ssim_long_clip_is_chunked_consistently():
    x, y = rand(3, 19, 12, 12), rand(3, 19, 12, 12, seed=1)
    whole = ssim(x, y)
    one_by_one = torch.stack([ssim(x[:, t], y[:, t]) for t in range(19)])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(rand(3, 8, 8), rand(3, 8, 9))
    with pytest.raises(ValueError, match="expected"):
        psnr(rand(4, 8, 8), rand(4, 8, 8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(rand(3, 10, 20), rand(3, 10, 20))


def test_clip_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    torch.testing.assert_close(clip_mean(values), torch.tensor([2.0, 4.0]))
    assert clip_mean(torch.tensor(5.0)).item() == 5.0
