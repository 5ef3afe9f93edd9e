"""Evaluation: reconstruction metrics."""

from cvvae.evaluation.metrics import clip_mean, psnr, ssim

__all__ = ["clip_mean", "psnr", "ssim"]
