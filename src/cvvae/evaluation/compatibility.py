"""How well a video VAE's latents fit the image VAE it was made for.

Decoder side: the frozen image decoder applied to each latent frame of the video VAE,
``D_img(E_vid(X))`` (``1 + k`` frames for ``T = 1 + 4k``), scored against ``psi(X)`` for each
mapping in :data:`PSI_MODES` (see :mod:`cvvae.training.latent_reg`: latent frame 0 is always
clip frame 0; latent frame ``1 + j`` is frame ``1 + 4j`` for ``first``, frame ``4 + 4j`` for
``slice`` (offset 3, the released code's ``x[:, :, ::4]``) and the mean of frames
``1+4j .. 4+4j`` for ``mean``). Beside it, the image VAE's own round trip of the same frames,
``D_img(E_img(psi(X)))``: the gap between the two is what compatibility costs.

Encoder side (image mode): the relative error ``||E_vid(x) - E_img(x)|| / ||E_img(x)||`` of
the posterior means, for an image (the video VAE in image mode), and for the first frame of a
clip (the clip's latent frame 0 against the image latent of frame 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

from cvvae.evaluation.codecs import image_decode, image_latents, image_reconstruct
from cvvae.evaluation.scores import FrameScores, frame_scores
from cvvae.models import CVVAE
from cvvae.training.latent_reg import psi

PSI_MODES = ("first", "slice", "mean")


@dataclass
class Compatibility:
    """Scores per latent frame ``(1 + k,)`` against ``psi(X)`` for one mapping: ``decoded`` for
    the image decoder on the video VAE's latents, ``image_vae`` for the image VAE round trip."""

    decoded: FrameScores
    image_vae: FrameScores


def check_pair(model: CVVAE, image_vae: AutoencoderKL) -> None:
    """Raise ValueError unless the two autoencoders have the same latent channels."""
    ours, theirs = model.config.latent_channels, image_vae.config.latent_channels
    if ours != theirs:
        raise ValueError(f"latent channels differ: video VAE {ours}, image VAE {theirs}")


def image_vae_on_psi(
    image_vae: AutoencoderKL, clip: torch.Tensor, lpips: torch.nn.Module | None = None
) -> dict[str, FrameScores]:
    """The image VAE's own round trip of ``psi(clip)``, scored against ``psi(clip)``, per mode in
    :data:`PSI_MODES`: the reference for :func:`latent_compatibility` (the same for every video
    VAE, so computed once per clip). ``clip`` ``(3, 1+4k, H, W)``; scores ``(1 + k,)``."""
    out = {}
    for mode in PSI_MODES:
        target = psi(clip[None], mode)[0]
        out[mode] = frame_scores(target, image_reconstruct(image_vae, target), lpips)
    return out


def latent_compatibility(
    image_vae: AutoencoderKL,
    clip: torch.Tensor,
    latents: torch.Tensor,
    reference: dict[str, FrameScores],
    lpips: torch.nn.Module | None = None,
) -> dict[str, Compatibility]:
    """Decoder-side compatibility for each mode in :data:`PSI_MODES`.

    ``clip`` ``(3, 1+4k, H, W)``; ``latents`` ``(z, 1+k, h, w)``: the video VAE's posterior mean
    of ``clip`` (:func:`cvvae.evaluation.codecs.video_latents`); ``reference``: what
    :func:`image_vae_on_psi` gives for ``clip``.
    """
    decoded = image_decode(image_vae, latents)
    return {
        mode: Compatibility(
            decoded=frame_scores(psi(clip[None], mode)[0], decoded, lpips),
            image_vae=reference[mode],
        )
        for mode in PSI_MODES
    }


def relative_error(z: torch.Tensor, reference: torch.Tensor) -> float:
    """``||z - reference|| / ||reference||`` over all elements, in float64."""
    z, reference = z.double(), reference.double()
    return ((z - reference).norm() / reference.norm()).item()


def image_latent_error(
    image_vae: AutoencoderKL, image: torch.Tensor, latent: torch.Tensor
) -> float:
    """Image mode: ``latent`` ``(z, h, w)``, the video VAE's latent of ``image`` ``(3, H, W)``,
    against the image VAE's latent of it (:func:`relative_error`)."""
    return relative_error(latent, image_latents(image_vae, image[:, None])[:, 0])


def first_frame_latent_error(
    image_vae: AutoencoderKL, clip: torch.Tensor, latents: torch.Tensor
) -> float:
    """The clip's latent frame 0 (``latents`` ``(z, t, h, w)`` of ``clip`` ``(3, T, H, W)``)
    against the image VAE's latent of clip frame 0 (:func:`relative_error`)."""
    return image_latent_error(image_vae, clip[:, 0], latents[:, 0])
