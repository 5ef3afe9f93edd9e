"""Evaluate video VAEs and baselines on one clip or image, and average over many.

A *method* is anything that reconstructs a clip: each named video VAE, and with ``baselines``
the image-VAE baselines of :mod:`cvvae.evaluation.baselines`. :func:`evaluate_video` and
:func:`evaluate_image` take tensors and return scores (plus the reconstructions, for plots);
:func:`summarize_videos` and :func:`summarize_images` average results into plain dicts, the
numbers that reports and scripts use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL

from cvvae.evaluation.baselines import baseline_reconstructions
from cvvae.evaluation.codecs import image_reconstruct, video_decode, video_latents
from cvvae.evaluation.compatibility import (
    Compatibility,
    check_pair,
    first_frame_latent_error,
    image_latent_error,
    image_vae_on_psi,
    latent_compatibility,
)
from cvvae.evaluation.fvd import frechet_distance, i3d_features
from cvvae.evaluation.scores import FrameScores, frame_scores
from cvvae.models import CVVAE

IMAGE_VAE = "image-vae"  # the image VAE round trip, the baseline for images
INPUT = "input"  # key of the clip's own I3D features in VideoResult.features


@dataclass
class VideoResult:
    """One clip ``(3, T, H, W)``. Per method: ``scores`` per frame ``(T,)``, ``latent_frames``
    it used and its ``reconstructions`` ``(3, T, H, W)``. Per video VAE (given an image VAE):
    ``compatibility`` per psi mode and ``first_frame_error`` (relative latent error). Given an
    I3D network: ``features`` ``(D,)`` of every method's reconstruction and of the clip itself
    (key :data:`INPUT`), for FVD."""

    scores: dict[str, FrameScores]
    latent_frames: dict[str, int]
    reconstructions: dict[str, torch.Tensor]
    compatibility: dict[str, dict[str, Compatibility]]
    first_frame_error: dict[str, float]
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ImageResult:
    """One image ``(3, H, W)``: per method ``scores`` (0-d values) and ``reconstructions``;
    per video VAE (given an image VAE) the image-mode relative ``latent_error``."""

    scores: dict[str, FrameScores]
    reconstructions: dict[str, torch.Tensor]
    latent_error: dict[str, float]


def _check_inputs(
    models: dict[str, CVVAE], image_vae: AutoencoderKL | None, baselines: bool
) -> None:
    if baselines and image_vae is None:
        raise ValueError("baselines need the image VAE")
    if image_vae is not None:
        for model in models.values():
            check_pair(model, image_vae)


def evaluate_video(
    clip: torch.Tensor,
    models: dict[str, CVVAE],
    image_vae: AutoencoderKL | None = None,
    *,
    baselines: bool = False,
    lpips: torch.nn.Module | None = None,
    i3d: torch.nn.Module | None = None,
) -> VideoResult:
    """Reconstruct ``clip`` ``(3, 1+4k, H, W)`` in [-1, 1] with every model (and baseline) and
    score it; compatibility metrics for every model when ``image_vae`` is given; with ``i3d``
    (:func:`~cvvae.evaluation.fvd.load_i3d`) the FVD features of the clip and of every
    reconstruction."""
    _check_inputs(models, image_vae, baselines)
    num_frames, size = clip.shape[1], tuple(clip.shape[-2:])
    result = VideoResult({}, {}, {}, {}, {})
    reference = None if image_vae is None else image_vae_on_psi(image_vae, clip, lpips)
    for name, model in models.items():
        z = video_latents(model, clip)
        result.reconstructions[name] = video_decode(model, z, num_frames, size)
        result.latent_frames[name] = z.shape[1]
        if image_vae is not None:
            result.compatibility[name] = latent_compatibility(image_vae, clip, z, reference, lpips)
            result.first_frame_error[name] = first_frame_latent_error(image_vae, clip, z)
    if baselines:
        for name, (recon, latent_frames) in baseline_reconstructions(image_vae, clip).items():
            result.reconstructions[name] = recon
            result.latent_frames[name] = latent_frames
    for name, recon in result.reconstructions.items():
        result.scores[name] = frame_scores(clip, recon, lpips)
    if i3d is not None:
        result.features[INPUT] = i3d_features(i3d, clip)
        for name, recon in result.reconstructions.items():
            result.features[name] = i3d_features(i3d, recon)
    return result


def evaluate_image(
    image: torch.Tensor,
    models: dict[str, CVVAE],
    image_vae: AutoencoderKL | None = None,
    *,
    baselines: bool = False,
    lpips: torch.nn.Module | None = None,
) -> ImageResult:
    """Reconstruct ``image`` ``(3, H, W)`` with every model in image mode (and the image VAE with
    ``baselines``) and score it; the image-mode latent error when ``image_vae`` is given."""
    _check_inputs(models, image_vae, baselines)
    result = ImageResult({}, {}, {})
    for name, model in models.items():
        z = video_latents(model, image)
        result.reconstructions[name] = video_decode(model, z, None, tuple(image.shape[-2:]))
        if image_vae is not None:
            result.latent_error[name] = image_latent_error(image_vae, image, z)
    if baselines:
        result.reconstructions[IMAGE_VAE] = image_reconstruct(image_vae, image[:, None])[:, 0]
    for name, recon in result.reconstructions.items():
        result.scores[name] = frame_scores(image, recon, lpips)
    return result


def _average(scores: list[FrameScores]) -> dict[str, float | None]:
    """Metric -> mean over items of each item's mean over frames (None if not measured)."""
    means = [s.mean() for s in scores]
    return {
        key: None if means[0][key] is None else sum(m[key] for m in means) / len(means)
        for key in means[0]
    }


def summarize_videos(results: list[VideoResult]) -> dict:
    """Average clip results (all with the same methods and frame count) into::

        {"methods": {name: {"psnr", "ssim", "lpips", "fvd", "latent_frames",
                            "psnr_per_frame": [T]}},
         "compatibility": {model: {"first_frame_latent_error": float,
                                   mode: {"psnr", "ssim", "lpips", "image_vae_psnr",
                                          "image_vae_ssim", "image_vae_lpips", "psnr_gap"}}}}

    ``psnr_gap`` is ``image_vae_psnr - psnr``: what the video VAE's latents lose against the
    image VAE's own on the same frames. ``fvd`` is the Fréchet distance between the I3D features
    of the clips and of the method's reconstructions; None without features or with fewer than
    2 clips (it needs a covariance; published FVDs use hundreds of clips or more).
    """
    first = results[0]
    with_fvd = bool(first.features) and len(results) >= 2
    methods = {}
    for name in first.scores:
        scores = [r.scores[name] for r in results]
        methods[name] = {
            **_average(scores),
            "fvd": (
                frechet_distance(
                    torch.stack([r.features[INPUT] for r in results]),
                    torch.stack([r.features[name] for r in results]),
                )
                if with_fvd
                else None
            ),
            "latent_frames": first.latent_frames[name],
            "psnr_per_frame": torch.stack([s.psnr for s in scores]).mean(0).tolist(),
        }
    compatibility = {}
    for name, modes in first.compatibility.items():
        entry: dict = {
            "first_frame_latent_error": sum(r.first_frame_error[name] for r in results)
            / len(results)
        }
        for mode in modes:
            decoded = _average([r.compatibility[name][mode].decoded for r in results])
            own = _average([r.compatibility[name][mode].image_vae for r in results])
            entry[mode] = {
                **decoded,
                **{f"image_vae_{k}": v for k, v in own.items()},
                "psnr_gap": own["psnr"] - decoded["psnr"],
            }
        compatibility[name] = entry
    return {"methods": methods, "compatibility": compatibility}


def summarize_images(results: list[ImageResult]) -> dict:
    """Average image results into ``{"methods": {name: {"psnr", "ssim", "lpips"}},
    "latent_error": {model: mean relative error}}``."""
    first = results[0]
    return {
        "methods": {name: _average([r.scores[name] for r in results]) for name in first.scores},
        "latent_error": {
            name: sum(r.latent_error[name] for r in results) / len(results)
            for name in first.latent_error
        },
    }
