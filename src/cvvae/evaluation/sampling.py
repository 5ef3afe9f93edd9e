"""Uniform frame sampling, the temporal compression that CV-VAE replaces.

Of a clip of ``T = 1 + 4k`` frames, the keyframes ``0, 4, 8, ..., T - 1`` are kept (``1 + k``
frames: the latent count of a CV-VAE on the same clip). Frame ``t = 4j + r`` (``0 <= r < 4``) is
then filled from keyframes ``j`` and ``j + 1``:

- ``repeat``: keyframe ``j`` (hold the last kept frame, as playback at a quarter of the rate);
- ``linear``: ``(1 - r/4) * key_j + (r/4) * key_{j+1}``.

Keyframes themselves are reproduced as they are by both.
"""

from __future__ import annotations

import torch

from cvvae.training.latent_reg import GROUP

FILL_MODES = ("repeat", "linear")


def keyframe_indices(num_frames: int) -> torch.Tensor:
    """Indices ``0, 4, ..., num_frames - 1`` of the kept frames, shape ``(1 + k,)``."""
    if num_frames < 1 or (num_frames - 1) % GROUP:
        raise ValueError(f"uniform sampling needs 1 + 4k frames, got {num_frames}")
    return torch.arange(0, num_frames, GROUP)


def fill_frames(keys: torch.Tensor, mode: str) -> torch.Tensor:
    """Fill the frames between keyframes: ``(C, 1+k, H, W)`` -> ``(C, 1+4k, H, W)``."""
    if mode not in FILL_MODES:
        raise ValueError(f"fill mode must be one of {FILL_MODES}, got {mode!r}")
    num_keys = keys.shape[1]
    t = torch.arange(1 + GROUP * (num_keys - 1))
    j, r = t // GROUP, t % GROUP
    if mode == "repeat":
        return keys[:, j]
    after = (j + 1).clamp(max=num_keys - 1)  # only the last frame (r = 0) would step past the end
    weight = (r.to(keys.dtype) / GROUP).view(1, -1, 1, 1)
    return (1 - weight) * keys[:, j] + weight * keys[:, after]
