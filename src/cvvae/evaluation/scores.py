"""Per-frame scores of one output against its reference: PSNR, SSIM and optionally LPIPS."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cvvae.evaluation.metrics import lpips_per_frame, psnr, ssim


@dataclass
class FrameScores:
    """float64 values, one per frame ``(T,)`` (``()`` for an image); ``lpips`` is None when no
    LPIPS model was given."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    lpips: torch.Tensor | None = None

    def mean(self) -> dict[str, float | None]:
        """The clip scores: each metric averaged over frames."""
        return {
            "psnr": self.psnr.mean().item(),
            "ssim": self.ssim.mean().item(),
            "lpips": None if self.lpips is None else self.lpips.mean().item(),
        }


def frame_scores(
    reference: torch.Tensor, output: torch.Tensor, lpips: torch.nn.Module | None = None
) -> FrameScores:
    """Scores of ``output`` against ``reference``, both ``(3, T, H, W)`` or ``(3, H, W)``."""
    return FrameScores(
        psnr=psnr(reference, output),
        ssim=ssim(reference, output),
        lpips=None if lpips is None else lpips_per_frame(lpips, reference, output),
    )
