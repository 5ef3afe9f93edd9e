"""Autoencoder loss terms, each a small module returning ``{name: scalar tensor}``.

Every term is a per-element mean over its inputs; the trainer multiplies each by its weight
from the config and sums them (:func:`weighted_sum`).
"""

from __future__ import annotations

import torch
from torch import nn

from cvvae.training.discriminator import hinge_g_loss
from cvvae.training.latent_reg import frames_to_images


class L1Loss(nn.Module):
    """Pixel L1 between input and reconstruction, both ``(B, 3, T, H, W)``."""

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"l1": (x_hat - x.to(x_hat.dtype)).abs().mean()}


class KLLoss(nn.Module):
    """KL of the diagonal Gaussian posterior to N(0, 1), averaged over every latent element
    (all of ``(B, z, t, h, w)``, time included)."""

    def forward(self, mean: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return {"kl": kl.mean()}


class PerceptualLoss(nn.Module):
    """LPIPS on every frame. ``lpips``: a frozen :class:`cvvae.training.lpips.LPIPS`, kept out
    of this module's parameters and state dict."""

    def __init__(self, lpips: nn.Module):
        super().__init__()
        self._lpips = (lpips,)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        lpips = self._lpips[0]
        value = lpips(frames_to_images(x.to(x_hat.dtype)), frames_to_images(x_hat))
        return {"lpips": value.mean()}


class GeneratorLoss(nn.Module):
    """Hinge generator loss of a discriminator on the reconstruction ``(B, 3, T, H, W)``.

    ``discriminator`` is called as given; the trainer passes the bare module with frozen
    parameters so that only the autoencoder receives gradients.
    """

    def forward(self, discriminator: nn.Module, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gan": hinge_g_loss(discriminator(x_hat))}


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum(weights[k] * terms[k])`` over the terms present; every term needs a weight."""
    return sum(weights[name] * value for name, value in terms.items())
