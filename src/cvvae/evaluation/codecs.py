"""Running the two autoencoders on one clip or image, as every evaluation does.

The video VAE is a :class:`~cvvae.CVVAE`; the image VAE a diffusers ``AutoencoderKL`` applied
frame by frame. Inputs may live on any device; they are moved to the model's device and dtype,
and results come back as float32 CPU tensors. Every encoder uses its posterior mean and decoded
pixels are clamped to [-1, 1].
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from cvvae.models import CVVAE

FRAME_BATCH = 8  # frames per image-VAE call: bounds memory on long clips


@torch.no_grad()
def video_latents(model: CVVAE, x: torch.Tensor) -> torch.Tensor:
    """CV-VAE latents: a clip ``(3, T, H, W)`` -> ``(z, 1+k, h, w)``; an image ``(3, H, W)``
    (image mode) -> ``(z, h, w)``."""
    z = model.encode(x[None].to(model.device, model.dtype)).latent_dist.mean
    return z[0].float().cpu()


@torch.no_grad()
def video_decode(model: CVVAE, z: torch.Tensor, num_frames: int | None, size: tuple[int, int]):
    """CV-VAE decoder: ``(z, t, h, w)`` -> ``(3, num_frames, H, W)``, or image latents
    ``(z, h, w)`` -> ``(3, H, W)`` (``num_frames`` None); cropped to ``size = (H, W)``."""
    out = model.decode(
        z[None].to(model.device, model.dtype), num_frames=num_frames, height=size[0], width=size[1]
    ).sample
    return out[0].float().cpu().clamp(-1, 1)


@torch.no_grad()
def image_latents(image_vae: AutoencoderKL, frames: torch.Tensor) -> torch.Tensor:
    """Image-VAE latents of every frame: ``(3, T, H, W)`` -> ``(z, T, h, w)``."""
    out = [
        image_vae.encode(chunk.to(image_vae.device, image_vae.dtype)).latent_dist.mean.float().cpu()
        for chunk in frames.transpose(0, 1).split(FRAME_BATCH)
    ]
    return torch.cat(out).transpose(0, 1)


@torch.no_grad()
def image_decode(image_vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Image-VAE decoder on every latent frame: ``(z, t, h, w)`` -> ``(3, t, H, W)``."""
    out = [
        image_vae.decode(chunk.to(image_vae.device, image_vae.dtype)).sample.float().cpu()
        for chunk in z.transpose(0, 1).split(FRAME_BATCH)
    ]
    return torch.cat(out).transpose(0, 1).clamp(-1, 1)


def image_reconstruct(image_vae: AutoencoderKL, frames: torch.Tensor) -> torch.Tensor:
    """Image VAE round trip, frame by frame: ``(3, T, H, W)`` -> ``(3, T, H, W)``."""
    return image_decode(image_vae, image_latents(image_vae, frames))
