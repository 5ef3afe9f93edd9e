"""Latent-space regularization through the frozen image VAE (the CV-VAE method).

``psi`` maps a clip of ``T = 1 + 4k`` frames to latent time ``1 + k``: frame 0 is always kept,
then one frame (or the mean) per group of 4 frames ``1+4j .. 4+4j``:

- ``first``: the first frame of each group (``1 + 4j``);
- ``slice``: a fixed frame of each group, ``1 + 4j + offset``; offset 3 (the default) is the
  released code's ``x[:, :, ::4]``;
- ``mean``: the average of the group's 4 frames;
- ``blend``: ``slice_share * slice + (1 - slice_share) * mean``, a frame between the two that
  an image decoder reading the latent frame can serve both as (not in the paper);
- ``random``: one frame of each group drawn uniformly (the paper's best).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvvae.errors import UserInputError

GROUP = 4


def psi_indices(
    num_frames: int, mode: str, *, slice_offset: int = 3, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Frame indices that ``psi`` picks, shape ``(1 + k,)``, for ``first``/``slice``/``random``.

    ``num_frames`` must be ``1 + 4k``; ``mode`` ``mean`` has no single index per group.
    """
    if num_frames < 1 or (num_frames - 1) % GROUP:
        raise UserInputError(f"psi needs 1 + 4k frames, got {num_frames}")
    groups = (num_frames - 1) // GROUP
    starts = 1 + GROUP * torch.arange(groups)
    if mode == "first":
        offsets = torch.zeros(groups, dtype=torch.long)
    elif mode == "slice":
        offsets = torch.full((groups,), slice_offset, dtype=torch.long)
    elif mode == "random":
        offsets = torch.randint(0, GROUP, (groups,), generator=generator)
    else:
        raise UserInputError(f"psi mode without indices: {mode!r}")
    return torch.cat([torch.zeros(1, dtype=torch.long), starts + offsets])


def psi(
    video: torch.Tensor,
    mode: str,
    *,
    slice_offset: int = 3,
    slice_share: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Map a clip ``(B, C, 1+4k, H, W)`` to latent time ``(B, C, 1+k, H, W)``."""
    if mode == "blend":
        picked = psi(video, "slice", slice_offset=slice_offset)
        return torch.lerp(psi(video, "mean"), picked, slice_share)
    if mode == "mean":
        num_frames = video.shape[2]
        if (num_frames - 1) % GROUP:
            raise UserInputError(f"psi needs 1 + 4k frames, got {num_frames}")
        b, c, _, h, w = video.shape
        groups = video[:, :, 1:].reshape(b, c, -1, GROUP, h, w).mean(dim=3)
        return torch.cat([video[:, :, :1], groups], dim=2)
    index = psi_indices(video.shape[2], mode, slice_offset=slice_offset, generator=generator)
    return video.index_select(2, index.to(video.device))


def frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B*T, C, H, W)``, frame-major within each clip."""
    return x.transpose(1, 2).flatten(0, 1)


def images_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B*T, C, H, W)`` -> ``(B, C, T, H, W)``; inverse of :func:`frames_to_images`."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-element mean L1 or squared L2 distance, a scalar."""
    if kind == "l1":
        return (a - b).abs().mean()
    return F.mse_loss(a, b)


class LatentRegularization(nn.Module):
    """Both latent regularizers around one frozen image VAE (a diffusers ``AutoencoderKL``).

    The image VAE is frozen, kept in eval mode (``train()`` does not change it) and is not
    part of this module's parameters or state dict.
    """

    def __init__(
        self,
        image_vae: nn.Module,
        *,
        psi_mode: str = "random",
        slice_offset: int = 3,
        slice_share: float = 0.5,
        distance_kind: str = "l1",
    ):
        super().__init__()
        image_vae.requires_grad_(False).eval()
        self._image_vae = (image_vae,)  # a tuple keeps it out of parameters() and state_dict()
        self.psi_mode = psi_mode
        self.slice_offset = slice_offset
        self.slice_share = slice_share
        self.distance_kind = distance_kind

    @property
    def image_vae(self) -> nn.Module:
        return self._image_vae[0]

    def target(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``psi(video)``: ``(B, 3, 1+4k, H, W)`` -> ``(B, 3, 1+k, H, W)``."""
        return psi(
            video,
            self.psi_mode,
            slice_offset=self.slice_offset,
            slice_share=self.slice_share,
            generator=generator,
        )

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Frozen image decoder on every latent frame: ``(B, z, t, h, w)`` -> ``(B, 3, t, H, W)``.

        Gradients flow to ``latents`` (and so to the video encoder), never to the image VAE.
        """
        images = self.image_vae.decode(frames_to_images(latents)).sample
        return images_to_frames(images, latents.shape[0])

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frozen image encoder (posterior mode) per frame: ``(B, 3, t, H, W)`` -> ``(B, z, t, h, w)``."""
        latents = self.image_vae.encode(frames_to_images(frames)).latent_dist.mode()
        return images_to_frames(latents, frames.shape[0])

    def decoder_reg(self, latents: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder-based term ``|psi(X) - D_img(E_vid(X))|``; ``latents`` from the video encoder."""
        decoded = self.decode_latents(latents)
        return {"decoder_reg": distance(decoded, target.to(decoded.dtype), self.distance_kind)}

    def encoder_reg(self, video: torch.Tensor, decoded: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder-based term ``|X - D_vid(E_img(psi(X)))|``: ``decoded`` is the video decoder's
        output ``(B, 3, 1+4k, H, W)`` for the latents :meth:`encode_frames` gave for ``psi(X)``."""
        return {"encoder_reg": distance(decoded, video.to(decoded.dtype), self.distance_kind)}

    def train(self, mode: bool = True) -> LatentRegularization:
        super().train(mode)
        self.image_vae.eval()
        return self
