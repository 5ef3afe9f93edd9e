"""Per-frame reconstruction metrics: PSNR, SSIM and LPIPS on tensors in [-1, 1].

Inputs are ``(3, H, W)`` (an image), ``(3, T, H, W)`` (a video) or ``(B, 3, T, H, W)``; the two
inputs must have equal shapes. All metrics return one value per frame, shaped ``()``, ``(T,)`` or
``(B, T)``, computed in float64. The clip score used in reports is the mean of the per-frame
values (:func:`clip_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Both inputs -> float64 ``(N, 3, H, W)`` frames, plus the per-frame output shape."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim == 3 and x.shape[0] == 3:
        lead: tuple[int, ...] = ()
        x, y = x[None], y[None]
    elif x.ndim in (4, 5) and x.shape[-4] == 3:
        lead = tuple(x.shape[:-4]) + (x.shape[-3],)
        x, y = (t.movedim(-3, -4).reshape(-1, 3, *t.shape[-2:]) for t in (x, y))
    else:
        raise ValueError(
            f"expected (3, H, W), (3, T, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}"
        )
    return x.double(), y.double(), lead


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-frame PSNR in dB, ``10 log10(data_range^2 / MSE)`` with the MSE over channels and pixels.

    Identical frames give ``inf``. See the module docstring for shapes.
    """
    x, y, lead = _frames(x, y)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(data_range**2 / mse)).reshape(lead)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)`` in float64; the 2-D window is its outer product."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _window_mean(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean over every window fully inside ``(N, C, H, W)``, separably."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03.

    Computed per RGB channel and averaged; statistics use only windows fully inside the frame
    ("valid", no padding, no downsampling), so frames must be at least 11x11. This matches
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. See the module docstring for shapes.
    """
    x, y, lead = _frames(x, y)
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11, got {tuple(x.shape[-2:])}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian().to(x.device)
    values = []
    for xs, ys in zip(x.split(8), y.split(8), strict=True):  # bounded memory on long clips
        stats = _window_mean(torch.cat([xs, ys, xs * xs, ys * ys, xs * ys]), g)
        mx, my, exx, eyy, exy = stats.chunk(5)
        vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(s.mean(dim=(1, 2, 3)))
    return torch.cat(values).reshape(lead)


def clip_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the last (frame) axis of per-frame values: ``(B, T) -> (B,)``, ``(T,) -> ()``.

    A 0-d (image) value is returned as is.
    """
    return values if values.ndim == 0 else values.mean(dim=-1)


@torch.no_grad()
def lpips_per_frame(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-frame LPIPS distance with ``model`` (a :class:`cvvae.training.lpips.LPIPS`), float64.

    Shapes as for :func:`psnr`. Frames run in batches of 8 in float32 on the model's device.
    """
    x, y, lead = _frames(x, y)
    device = next(model.parameters()).device
    values = [
        model(xs.float().to(device), ys.float().to(device)).double().cpu()
        for xs, ys in zip(x.split(8), y.split(8), strict=True)
    ]
    return torch.cat(values).reshape(lead)
