"""Diagonal Gaussian posterior over video latents (the KL sums over every latent axis, time too)."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """Posterior from encoder moments ``(B, 2C, ...)``: mean and log-variance split on channels.

    Works for image latents ``(B, 2C, h, w)`` and video latents ``(B, 2C, t, h, w)``; the
    log-variance is clamped to ``[-30, 20]`` as in the image VAE.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised sample, shape of ``mean``."""
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, summed over all non-batch axes: ``(B,)``."""
        dims = tuple(range(1, self.mean.dim()))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
