"""Evaluation: reconstruction metrics, latent compatibility, baselines and reports.

Library functions take tensors and return numbers; only :func:`write_report` writes files.
A typical script::

    result = evaluate_video(clip, {"cvvae": model}, image_vae, baselines=True)
    summary = summarize_videos([result, ...])  # plain dicts of floats
"""

from cvvae.evaluation.baselines import BASELINE_NAMES, baseline_reconstructions
from cvvae.evaluation.compatibility import (
    PSI_MODES,
    Compatibility,
    first_frame_latent_error,
    image_latent_error,
    image_vae_on_psi,
    latent_compatibility,
    relative_error,
)
from cvvae.evaluation.metrics import clip_mean, lpips_per_frame, psnr, ssim
from cvvae.evaluation.protocol import Protocol, Segment
from cvvae.evaluation.report import (
    grid_figure,
    markdown_report,
    psnr_curve_figure,
    report_data,
    write_report,
)
from cvvae.evaluation.runner import (
    ImageResult,
    VideoResult,
    evaluate_image,
    evaluate_video,
    summarize_images,
    summarize_videos,
)
from cvvae.evaluation.sampling import fill_frames, keyframe_indices
from cvvae.evaluation.scores import FrameScores, frame_scores

__all__ = [
    "BASELINE_NAMES",
    "PSI_MODES",
    "Compatibility",
    "FrameScores",
    "ImageResult",
    "Protocol",
    "Segment",
    "VideoResult",
    "baseline_reconstructions",
    "clip_mean",
    "evaluate_image",
    "evaluate_video",
    "fill_frames",
    "first_frame_latent_error",
    "frame_scores",
    "grid_figure",
    "image_latent_error",
    "image_vae_on_psi",
    "keyframe_indices",
    "latent_compatibility",
    "lpips_per_frame",
    "markdown_report",
    "psnr",
    "psnr_curve_figure",
    "relative_error",
    "report_data",
    "ssim",
    "summarize_images",
    "summarize_videos",
    "write_report",
]
