"""Baselines measured in the same protocol as the video VAEs, built from the image VAE.

- ``image-vae-per-frame``: the image VAE on every frame (no temporal compression: ``T`` latent
  frames for a ``T``-frame clip, about 4x a CV-VAE's ``1 + (T-1)/4``);
- ``uniform-repeat`` / ``uniform-linear``: the image VAE on keyframes ``0, 4, ..., T-1`` only
  (the CV-VAE latent count), the frames between filled by repetition or linear interpolation
  (:mod:`cvvae.evaluation.sampling`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from cvvae.evaluation.codecs import image_reconstruct
from cvvae.evaluation.sampling import FILL_MODES, fill_frames, keyframe_indices

PER_FRAME = "image-vae-per-frame"
UNIFORM = {mode: f"uniform-{mode}" for mode in FILL_MODES}
BASELINE_NAMES = (PER_FRAME, *UNIFORM.values())


def baseline_reconstructions(
    image_vae: AutoencoderKL, clip: torch.Tensor
) -> dict[str, tuple[torch.Tensor, int]]:
    """Every baseline on ``clip`` ``(3, 1+4k, H, W)``: name -> (reconstruction ``(3, 1+4k, H, W)``,
    latent frames used)."""
    per_frame = image_reconstruct(image_vae, clip)
    keys = keyframe_indices(clip.shape[1])
    # The image VAE works frame by frame, so its keyframe reconstructions are those of per_frame.
    kept = per_frame[:, keys]
    out = {PER_FRAME: (per_frame, clip.shape[1])}
    for mode, name in UNIFORM.items():
        out[name] = (fill_frames(kept, mode), len(keys))
    return out
