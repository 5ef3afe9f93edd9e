"""The comparison picture of ``cvvae evaluate``: where and how each method's reconstruction
differs from the input, over several frames and over time.

One row shows the input: a few frames, an enlarged crop, and an x-t slice (one pixel row over
time: each picture row is a frame, so flicker shows as horizontal streaks and motion as slanted
edges). Each method's row then shows its error at the same frames on one colour scale shared by
all methods and chosen from the data, its reconstruction of the crop, and its x-t slice. The
crop is where the methods' errors are largest; the x-t row runs through the crop's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cvvae.evaluation.metrics import psnr
from cvvae.training.latent_reg import GROUP

ERROR_QUANTILE = 0.99  # the shared error scale ends at this quantile of all shown errors


def default_grid_frames(frames: int) -> list[int]:
    """Clip frames shown by default: the first, one midway between two uniform-sampling
    keyframes near the middle (where frame-sampling baselines are worst), and the last."""
    groups = (frames - 1) // GROUP
    middle = GROUP * (groups // 2) + GROUP // 2 if groups else 0
    return sorted({0, middle, frames - 1})


@dataclass(frozen=True)
class Crop:
    """A ``size x size`` square at ``(top, left)`` and the x-t slice ``row`` (pixels)."""

    top: int
    left: int
    size: int
    row: int


def worst_crop(reference: torch.Tensor, reconstructions: dict[str, torch.Tensor]) -> Crop:
    """The square (side a quarter of the shorter frame side, at least 16 px, at most the frame)
    with the largest error summed over methods, frames and channels, and its centre row.
    ``reference`` and reconstructions are ``(3, T, H, W)``."""
    height, width = reference.shape[-2:]
    size = min(height, width, max(16, min(height, width) // 4))
    error = sum(
        (r.float() - reference.float()).abs().mean(0).sum(0) for r in reconstructions.values()
    )
    windows = F.avg_pool2d(error[None, None], size, stride=1)[0, 0]  # (H - size + 1, W - size + 1)
    top, left = divmod(int(windows.argmax()), windows.shape[1])
    return Crop(top, left, size, top + size // 2)


def _rgb(x: torch.Tensor):
    """``(3, ..., W)`` in [-1, 1] -> ``(..., W, 3)`` numpy in [0, 1]."""
    return ((x.float().clamp(-1, 1) + 1) / 2).movedim(0, -1).numpy()


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def grid_figure(
    reference: torch.Tensor,
    reconstructions: dict[str, torch.Tensor],
    title: str,
    frames: list[int] | None = None,
    crop: Crop | None = None,
) -> Figure:
    """The picture described in the module docstring. ``reference`` and each reconstruction
    are a clip ``(3, T, H, W)`` or an image ``(3, H, W)`` in [-1, 1] (an image has no x-t slice);
    ``frames`` (default :func:`default_grid_frames`) are clip frames to show; ``crop`` defaults
    to :func:`worst_crop`. The error is ``|reconstruction - input|`` averaged over RGB, on a
    scale from 0 to the 99th percentile of all shown errors."""
    if reference.ndim == 3:
        reference = reference[:, None]
        reconstructions = {n: r[:, None] for n, r in reconstructions.items()}
    num_frames, (height, width) = reference.shape[1], reference.shape[-2:]
    frames = default_grid_frames(num_frames) if frames is None else list(frames)
    if not frames or min(frames) < 0 or max(frames) >= num_frames:
        raise ValueError(f"frames must lie in [0, {num_frames}), got {frames}")
    crop = worst_crop(reference, reconstructions) if crop is None else crop
    box = (slice(crop.top, crop.top + crop.size), slice(crop.left, crop.left + crop.size))
    video = num_frames > 1

    errors = {n: (r - reference)[:, frames].abs().mean(0) for n, r in reconstructions.items()}
    shown = torch.cat([e.flatten() for e in errors.values()])
    sample = shown[torch.linspace(0, len(shown) - 1, min(len(shown), 1 << 20)).long()]
    vmax = float(torch.quantile(sample.float(), ERROR_QUANTILE)) or 1.0

    columns = len(frames) + 1 + video
    rows = 1 + len(reconstructions)
    ratios = [width / height] * len(frames) + [1.0] + ([width / height] if video else [])
    fig = Figure(figsize=(2.2 * sum(ratios) + 1.2, 2.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, width_ratios=ratios)
    for j, t in enumerate(frames):
        ax = axes[0, j]
        ax.imshow(_rgb(reference[:, t]))
        ax.add_patch(
            Rectangle(
                (crop.left - 0.5, crop.top - 0.5), crop.size, crop.size, fill=False, color="cyan"
            )
        )
        if video:
            ax.axhline(crop.row, color="yellow", linewidth=0.8)
        ax.set_title(f"input, frame {t}", fontsize="small")
    middle = frames[len(frames) // 2]
    axes[0, len(frames)].imshow(_rgb(reference[:, middle, box[0], box[1]]))
    axes[0, len(frames)].set_title(f"crop, frame {middle}", fontsize="small")
    if video:
        axes[0, -1].imshow(_rgb(reference[:, :, crop.row]), aspect="auto")
        axes[0, -1].set_title(f"x-t slice, row {crop.row}", fontsize="small")
        axes[0, -1].set_ylabel("frame")
    axes[0, 0].set_ylabel("input")

    image = None
    for i, (name, recon) in enumerate(reconstructions.items(), start=1):
        value = psnr(reference, recon).mean().item()
        for j in range(len(frames)):
            image = axes[i, j].imshow(errors[name][j].numpy(), cmap="magma", vmin=0, vmax=vmax)
        axes[i, 0].set_ylabel(f"{name}\n{value:.2f} dB", fontsize="small")
        axes[i, len(frames)].imshow(_rgb(recon[:, middle, box[0], box[1]]))
        if video:
            axes[i, -1].imshow(_rgb(recon[:, :, crop.row]), aspect="auto")
    for ax in axes.flat:
        _bare(ax)
    if image is not None:
        fig.colorbar(
            image, ax=axes[1:, : len(frames)].ravel().tolist(), fraction=0.03, label="|error|"
        )
    fig.suptitle(
        f"{title}\nerror = |output - input| averaged over RGB, one scale for all methods "
        f"(0 to the {ERROR_QUANTILE:.0%} quantile); crop and x-t slice where errors are largest",
        fontsize="medium",
    )
    return fig
