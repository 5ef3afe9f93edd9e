"""Evaluation: reconstruction metrics, latent compatibility, baselines and reports.

Library functions take tensors and return numbers; only :func:`write_report` writes files.
A typical script::

    result = evaluate_video(clip, {"cvvae": model}, image_vae, baselines=True, i3d=i3d)
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
from cvvae.evaluation.fvd import I3D, frechet_distance, i3d_features, load_i3d
from cvvae.evaluation.grid import Crop, default_grid_frames, grid_figure, worst_crop
from cvvae.evaluation.metrics import clip_mean, lpips_per_frame, psnr, ssim
from cvvae.evaluation.protocol import Protocol, Segment
from cvvae.evaluation.report import (
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
    "Crop",
    "I3D",
    "FrameScores",
    "ImageResult",
    "Protocol",
    "Segment",
    "VideoResult",
    "baseline_reconstructions",
    "clip_mean",
    "evaluate_image",
    "evaluate_video",
    "default_grid_frames",
    "fill_frames",
    "first_frame_latent_error",
    "frame_scores",
    "frechet_distance",
    "grid_figure",
    "i3d_features",
    "image_latent_error",
    "image_vae_on_psi",
    "keyframe_indices",
    "latent_compatibility",
    "load_i3d",
    "lpips_per_frame",
    "markdown_report",
    "psnr",
    "psnr_curve_figure",
    "relative_error",
    "report_data",
    "ssim",
    "summarize_images",
    "summarize_videos",
    "worst_crop",
    "write_report",
]
