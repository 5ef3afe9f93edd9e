"""Diagonal Gaussian posterior over image and video latents: diffusers' class, with the KL and
NLL summed over every non-batch axis.

diffusers' ``DiagonalGaussianDistribution.kl()`` sums over axes 1-3, which for video latents
``(B, C, t, h, w)`` leaves the width axis unsummed (``(B, w)``, not ``(B,)``); here both sum over
all latent axes, so the result is ``(B,)`` for images and videos alike.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


class DiagonalGaussian(DiagonalGaussianDistribution):
    """Posterior from encoder moments ``(B, 2C, ...)``: mean and log-variance split on channels
    (log-variance clamped to ``[-30, 20]`` by the base class). ``isinstance`` of diffusers'
    ``DiagonalGaussianDistribution``; ``sample(generator)``, ``mode()``, ``kl()``, ``nll(x)``."""

    def _latent_axes(self) -> tuple[int, ...]:
        return tuple(range(1, self.mean.dim()))

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over all non-batch
        axes: ``(B,)``."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var
                + self.var / other.var
                - 1.0
                - self.logvar
                + other.logvar
            )
        return 0.5 * terms.sum(dim=self._latent_axes())

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims`` (default: all non-batch
        axes)."""
        return super().nll(sample, dims=self._latent_axes() if dims is None else dims)
