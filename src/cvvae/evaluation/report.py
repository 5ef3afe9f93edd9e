"""Evaluation reports: one JSON document with every number and the protocol, a Markdown table
made from it, and PNG plots (per-frame PSNR curves; the comparison picture of
:mod:`cvvae.evaluation.grid`).

:func:`report_data` builds the JSON document from results; :func:`markdown_report` and
:func:`psnr_curve_figure` need only that document, so both can be redrawn from a saved
``results.json``. Figures are plain ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot
state). :func:`write_report` writes everything into a folder, each file atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from cvvae.evaluation.protocol import Protocol, Segment
from cvvae.evaluation.runner import (
    ImageResult,
    VideoResult,
    summarize_images,
    summarize_videos,
)
from cvvae.evaluation.scores import FrameScores
from cvvae.io import atomic_path

FORMAT = "cvvae-evaluation"
FILES = {
    "json": "results.json",
    "markdown": "results.md",
    "curves": "psnr_per_frame.png",
    "grid": "grid.png",
}


# ---------------------------------------------------------------------------- JSON document
def _finite(value):
    """Non-finite floats -> None (JSON has no infinity; an infinite PSNR means identical frames)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _per_frame(scores: FrameScores) -> dict:
    return {
        "psnr": scores.psnr.tolist(),
        "ssim": scores.ssim.tolist(),
        "lpips": None if scores.lpips is None else scores.lpips.tolist(),
    }


def _clip_entry(segment: Segment, result: VideoResult) -> dict:
    methods = {
        name: {
            "latent_frames": result.latent_frames[name],
            "clip": scores.mean(),
            "per_frame": _per_frame(scores),
        }
        for name, scores in result.scores.items()
    }
    compatibility = {
        name: {
            "first_frame_latent_error": result.first_frame_error[name],
            **{
                mode: {"decoded": _per_frame(c.decoded), "image_vae": _per_frame(c.image_vae)}
                for mode, c in modes.items()
            },
        }
        for name, modes in result.compatibility.items()
    }
    return {
        "source": segment.source,
        "segment": segment.index,
        "source_frames": list(segment.source_frames),
        "fps": segment.fps,
        "methods": methods,
        "compatibility": compatibility,
    }


def report_data(
    protocol: Protocol,
    segments: list[Segment],
    videos: list[VideoResult],
    image_sources: list[str],
    images: list[ImageResult],
    environment: dict[str, str],
) -> dict:
    """The JSON document: ``protocol`` (plus ``environment``, e.g. device and dtype), and for
    videos and images (None when there are none) every item's numbers and their ``summary``
    (:func:`~cvvae.evaluation.runner.summarize_videos` / ``summarize_images``)."""
    video_part = None
    if videos:
        video_part = {
            "clips": [_clip_entry(s, r) for s, r in zip(segments, videos, strict=True)],
            "summary": summarize_videos(videos),
        }
    image_part = None
    if images:
        image_part = {
            "items": [
                {
                    "source": source,
                    "methods": {name: s.mean() for name, s in result.scores.items()},
                    "latent_error": result.latent_error,
                }
                for source, result in zip(image_sources, images, strict=True)
            ],
            "summary": summarize_images(images),
        }
    return _finite(
        {
            "format": FORMAT,
            "version": 1,
            "protocol": {**protocol.to_dict(), **environment},
            "videos": video_part,
            "images": image_part,
        }
    )


# ---------------------------------------------------------------------------- Markdown
def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _protocol_lines(data: dict) -> list[str]:
    p = data["protocol"]
    lines = [
        f"Frames {p['frames']} at {p['width']}x{p['height']} (resize to cover, center crop), "
        f"stride {p['stride']}, start {p['start']}, up to {p['segments']} segment(s) per video; "
        f"seed {p['seed']}; every encoder uses its posterior mean.",
        f"Frame selection: {p['frame_selection']}.",
        f"Uniform sampling keeps clip frames {p['uniform_sampling_keyframes']}.",
        "",
        "Models: " + ", ".join(f"`{k}` = {v}" for k, v in p["models"].items()) + ".",
        f"Image VAE: {p['image_vae'] or 'none'}. LPIPS weights: {p['lpips'] or 'none'}. "
        f"I3D weights (FVD): {p.get('i3d') or 'none'}.",
    ]
    if p.get("fvd_features"):
        lines.append(f"FVD: {p['fvd_features']}.")
    return lines


def _video_lines(videos: dict) -> list[str]:
    summary, clips = videos["summary"], videos["clips"]
    n_sources = len({c["source"] for c in clips})
    rows = [
        [
            f"`{name}`",
            str(m["latent_frames"]),
            _num(m["psnr"], 2),
            _num(m["ssim"], 4),
            _num(m["lpips"], 4),
            _num(m.get("fvd"), 2),
        ]
        for name, m in summary["methods"].items()
    ]
    header = ["method", "latent frames / clip", "PSNR (dB)", "SSIM", "LPIPS", "FVD"]
    lines = [
        "",
        f"## Video reconstruction ({len(clips)} clips from {n_sources} videos)",
        "",
        "Per-frame metrics averaged over frames, then over clips. FVD is over all clips "
        "(n/a without I3D weights or with fewer than 2 clips; few clips give a biased, "
        "noisy FVD: compare methods only on the same clips).",
        "",
        *_table(header, rows),
    ]
    if summary["compatibility"]:
        rows = []
        for name, entry in summary["compatibility"].items():
            for mode, c in entry.items():
                if mode == "first_frame_latent_error":
                    continue
                rows.append(
                    [
                        f"`{name}`",
                        mode,
                        _num(c["psnr"], 2),
                        _num(c["ssim"], 4),
                        _num(c["image_vae_psnr"], 2),
                        _num(c["psnr_gap"], 2),
                        _num(entry["first_frame_latent_error"], 4),
                    ]
                )
        header = [
            "model",
            "psi",
            "image decoder on video latents: PSNR (dB)",
            "SSIM",
            "image VAE on the same frames: PSNR (dB)",
            "gap (dB)",
            "first-frame latent rel. error",
        ]
        lines += [
            "",
            "## Latent compatibility",
            "",
            "The image VAE's decoder applied to each latent frame of the video VAE, against "
            "psi(clip): latent frame 0 = clip frame 0; then per group of 4 frames, its first "
            "frame (`first`), its last frame (`slice`) or its mean (`mean`).",
            "",
            *_table(header, rows),
        ]
    lines += ["", "## Clips", ""]
    rows = [
        [
            c["source"],
            str(c["segment"]),
            f"{c['source_frames'][0]}..{c['source_frames'][-1]}",
            _num(c["fps"], 3),
        ]
        for c in clips
    ]
    return lines + _table(["source", "segment", "source frames", "fps"], rows)


def _image_lines(images: dict) -> list[str]:
    summary = images["summary"]
    rows = [
        [
            f"`{name}`",
            _num(m["psnr"], 2),
            _num(m["ssim"], 4),
            _num(m["lpips"], 4),
            _num(summary["latent_error"].get(name), 4),
        ]
        for name, m in summary["methods"].items()
    ]
    header = ["method", "PSNR (dB)", "SSIM", "LPIPS", "latent rel. error vs image VAE"]
    return [
        "",
        f"## Images ({len(images['items'])}, video VAEs in image mode)",
        "",
        *_table(header, rows),
    ]


def markdown_report(data: dict) -> str:
    """The Markdown tables of a :func:`report_data` document."""
    lines = ["# cvvae evaluation", "", *_protocol_lines(data)]
    if data["videos"]:
        lines += _video_lines(data["videos"])
    if data["images"]:
        lines += _image_lines(data["images"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- plots
def psnr_curve_figure(data: dict) -> Figure:
    """Per-frame PSNR averaged over clips, one line per method; uniform-sampling keyframes
    marked. Needs a document with videos."""
    videos, protocol = data["videos"], data["protocol"]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for key in protocol["uniform_sampling_keyframes"]:
        ax.axvline(key, color="0.85", linewidth=1, zorder=0)
    for name, m in videos["summary"]["methods"].items():
        values = [math.nan if v is None else v for v in m["psnr_per_frame"]]
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("clip frame (grey lines: frames kept by uniform sampling)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Per-frame PSNR, mean over {len(videos['clips'])} clips")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------------------- files
def _save_figure(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_report(folder: Path, data: dict, grid: Figure | None) -> list[Path]:
    """Write ``results.json``, ``results.md``, and with videos ``psnr_per_frame.png`` and the
    ``grid`` figure as ``grid.png``, each atomically, into the existing ``folder``. Returns the
    paths written."""
    folder = Path(folder)
    written = []
    with atomic_path(folder / FILES["json"]) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    written.append(folder / FILES["json"])
    with atomic_path(folder / FILES["markdown"]) as tmp:
        tmp.write_text(markdown_report(data))
    written.append(folder / FILES["markdown"])
    if data["videos"]:
        _save_figure(psnr_curve_figure(data), folder / FILES["curves"])
        written.append(folder / FILES["curves"])
    if grid is not None:
        _save_figure(grid, folder / FILES["grid"])
        written.append(folder / FILES["grid"])
    return written
