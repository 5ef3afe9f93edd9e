"""``cvvae evaluate``: reconstruction and compatibility metrics of video VAEs and baselines."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cvvae.cli.common import (
    Formatter,
    add_device_options,
    default_model_path,
    load_model,
    non_negative,
    positive,
    resolve_device,
    torch_dtype,
)
from cvvae.errors import UserInputError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

    from cvvae.evaluation.protocol import Protocol, Segment

# names the report uses for other things (cvvae.evaluation.baselines.BASELINE_NAMES,
# runner.IMAGE_VAE and runner.INPUT; tests check they agree)
RESERVED_NAMES = ("image-vae-per-frame", "uniform-repeat", "uniform-linear", "image-vae", "input")

DESCRIPTION = """\
Evaluate one or more video VAEs on video clips (and images) in one stated protocol, optionally
beside baselines built from the image VAE, and write results.json (every number + the protocol),
results.md (tables) and plots (psnr_per_frame.png, grid.png) into --out.

Frames used: each video is read at HEIGHTxWIDTH (resized to cover, center-cropped), taking
every STRIDE-th frame. Segment s = 0..SEGMENTS-1 of a video is FRAMES consecutive read frames:
source frames START + STRIDE * (s * FRAMES + i), i = 0..FRAMES-1, so segments do not overlap.
Segments running past the end of a video are not used. FRAMES must be 1 + 4k. results.json
lists the source frames of every clip; every encoder uses its posterior mean.

Metrics per frame and per clip (mean over frames): PSNR and SSIM in [-1, 1] (data range 2),
and LPIPS with --lpips-weights. FVD over all clips with --i3d-weights (I3D logits of 224x224
frames; needs 2 clips or more, and many more for a stable value).

grid.png (first clip): the input at a few frames (--grid-frames) with an enlarged crop and an
x-t slice (one pixel row over time, where flicker shows as streaks), then per method its error
at those frames on one colour scale for all methods, its crop and its x-t slice.

With --image-vae (the image VAE the models were made for):
  compatibility: the image decoder on each latent frame of a model vs psi(clip), psi = first /
    slice / mean: latent frame 0 = clip frame 0, then per group of 4 frames its first frame,
    its last frame, or their mean; beside it the image VAE's own round trip of those frames.
  image mode: relative error between a model's latent of an image and the image VAE's latent
    (and the same for the first frame of each clip).
With --baselines, also:
  image-vae-per-frame: the image VAE on every frame (FRAMES latent frames, ~4x a CV-VAE's);
  uniform-repeat / uniform-linear: the image VAE on clip frames 0, 4, ..., FRAMES-1 only (the
    CV-VAE latent count), frames between filled by repeating the previous kept frame or by
    linear interpolation.
"""

EXAMPLES = """\
example:
  cvvae evaluate --model cvvae=models/vae3d --image-vae models/sd21-vae --baselines \\
      --videos a.mp4 b.mp4 --frames 17 --height 256 --width 256 --segments 2 --out eval/
"""


def model_spec(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a bare PATH is named after its folder."""
    name, sep, path = text.partition("=")
    if not sep:
        return Path(text).name, Path(text)
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _file_id(path: Path) -> str:
    """``path (sha256 <first 16 hex digits>)``, identifying weights in the report."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path} (sha256 {digest.hexdigest()[:16]})"


def _folder_id(folder: Path) -> str:
    weights = sorted(folder.glob("diffusion_pytorch_model.*"))
    return _file_id(weights[0]) if weights else str(folder)


def _models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    specs = args.model
    if not specs:
        bundled = default_model_path()
        if bundled is None:
            raise UserInputError("no --model given and no bundled model installed")
        specs = [("bundled", bundled)]
    names = [name for name, _ in specs]
    for name in names:
        if names.count(name) > 1:
            raise UserInputError(f"two models are named {name!r}; use --model NAME=PATH")
        if name in RESERVED_NAMES:
            raise UserInputError(f"model name {name!r} is reserved for a baseline")
    return specs


def _load_image_vae(folder: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    if not (folder / "config.json").is_file():
        raise UserInputError(f"image VAE folder has no config.json: {folder}")
    try:
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserInputError(f"cannot load the image VAE ({error}): {folder}") from None
    return vae.to(device).eval()


def _video_paths(args: argparse.Namespace) -> list[Path]:
    from cvvae.io import is_image_path

    if args.video_list is None:
        paths = list(args.videos or [])
    else:
        if not args.video_list.is_file():
            raise UserInputError(f"file not found: {args.video_list}")
        base = args.video_list.parent
        lines = [line.strip() for line in args.video_list.read_text().splitlines()]
        paths = [base / line for line in lines if line and not line.startswith("#")]
        if not paths:
            raise UserInputError(f"video list names no videos: {args.video_list}")
    for path in paths:
        if is_image_path(path):
            raise UserInputError(f"an image among the videos (use --images DIR): {path}")
    return paths


def _image_paths(folder: Path | None) -> list[Path]:
    from cvvae.io import is_image_path

    if folder is None:
        return []
    if not folder.is_dir():
        raise UserInputError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not paths:
        raise UserInputError(f"no images (.png, .jpg, ...) in folder: {folder}")
    return paths


def _segments(path: Path, protocol: Protocol) -> list[tuple[Segment, torch.Tensor]]:
    """The complete segments of one video (see the protocol), each a ``(3, F, H, W)`` clip."""
    from cvvae.evaluation.protocol import Segment
    from cvvae.io import read_video

    f = protocol.frames
    video, info = read_video(
        path,
        protocol.start,
        protocol.segments * f,
        protocol.stride,
        (protocol.height, protocol.width),
    )
    count = video.shape[1] // f
    if count == 0:
        raise UserInputError(
            f"video has fewer than {f} frames at stride {protocol.stride} from frame "
            f"{protocol.start} (one segment): {path}"
        )
    fps = float(info.rate / protocol.stride)
    return [
        (
            Segment(str(path), s, tuple(protocol.source_frames(s)), fps),
            video[:, s * f : (s + 1) * f],
        )
        for s in range(count)
    ]


def _output_folder(path: Path) -> Path:
    if not path.parent.is_dir():
        raise UserInputError(f"the parent of the output folder does not exist: {path}")
    if path.exists() and not path.is_dir():
        raise UserInputError(f"output exists and is not a folder: {path}")
    return path


def _print_summary(data: dict) -> None:
    if data["videos"]:
        summary = data["videos"]["summary"]
        print(f"videos: {len(data['videos']['clips'])} clips")
        for name, m in summary["methods"].items():
            print(
                f"  {name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
                f"{m['latent_frames']} latent frames/clip"
            )
        for name, entry in summary["compatibility"].items():
            c = entry["slice"]
            print(
                f"  {name} compatibility (slice): image decoder {c['psnr']:.2f} dB vs image VAE "
                f"{c['image_vae_psnr']:.2f} dB; first-frame latent rel. error "
                f"{entry['first_frame_latent_error']:.4f}"
            )
    if data["images"]:
        print(f"images: {len(data['images']['items'])}")
        for name, m in data["images"]["summary"]["methods"].items():
            print(f"  {name}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate the models on the clips and images; write the report into ``--out``."""
    import torch

    from cvvae.evaluation.compatibility import check_pair
    from cvvae.evaluation.fvd import load_i3d
    from cvvae.evaluation.grid import default_grid_frames, grid_figure
    from cvvae.evaluation.protocol import Protocol
    from cvvae.evaluation.report import report_data, write_report
    from cvvae.evaluation.runner import evaluate_image, evaluate_video
    from cvvae.io import read_image
    from cvvae.training.lpips import load_lpips

    if args.videos is None and args.video_list is None and args.images is None:
        raise UserInputError("nothing to evaluate: give --videos, --video-list or --images")
    if args.baselines and args.image_vae is None:
        raise UserInputError("--baselines needs --image-vae (the baselines are built from it)")
    out = _output_folder(args.out)
    specs = _models(args)
    videos, images = _video_paths(args), _image_paths(args.images)
    device, dtype = resolve_device(args.device), torch_dtype(args.dtype)
    protocol = Protocol(  # checks the clip options before anything is loaded
        frames=args.frames,
        height=args.height,
        width=args.width,
        stride=args.stride,
        start=args.start,
        segments=args.segments,
        seed=args.seed,
    )
    for frame in args.grid_frames or []:
        if frame >= args.frames:
            raise UserInputError(f"--grid-frames {frame} is not below --frames {args.frames}")
    models = {name: load_model(path, device, dtype) for name, path in specs}
    image_vae = None if args.image_vae is None else _load_image_vae(args.image_vae, device, dtype)
    if image_vae is not None:
        for name, model in models.items():
            try:
                check_pair(model, image_vae)
            except ValueError as error:
                raise UserInputError(
                    f"model {name!r} does not fit the image VAE: {error}"
                ) from None
    lpips = None if args.lpips_weights is None else load_lpips(args.lpips_weights).to(device)
    i3d = None if args.i3d_weights is None else load_i3d(args.i3d_weights).to(device)
    protocol = replace(
        protocol,
        models={name: _folder_id(path) for name, path in specs},
        image_vae=None if args.image_vae is None else _folder_id(args.image_vae),
        lpips=None if args.lpips_weights is None else _file_id(args.lpips_weights),
        i3d=None if args.i3d_weights is None else _file_id(args.i3d_weights),
    )
    torch.manual_seed(args.seed)
    options = dict(baselines=args.baselines, lpips=lpips)
    grid_frames = args.grid_frames or default_grid_frames(args.frames)
    segments, video_results, image_results, grid = [], [], [], None
    total = len(videos) * args.segments + len(images)
    with (
        logging_redirect_tqdm([logging.getLogger("cvvae")]),
        tqdm(total=total, unit="clip", leave=False, disable=None, file=sys.stderr) as bar,
    ):
        for path in videos:
            bar.set_description(path.name)
            clips = _segments(path, protocol)
            bar.total -= args.segments - len(clips)
            for segment, clip in clips:
                result = evaluate_video(clip, models, image_vae, i3d=i3d, **options)
                if grid is None:
                    grid = grid_figure(
                        clip,
                        result.reconstructions,
                        f"{path.name}, segment {segment.index} (source frames "
                        f"{segment.source_frames[0]}..{segment.source_frames[-1]})",
                        grid_frames,
                    )
                result.reconstructions.clear()  # only the grid needs them
                segments.append(segment)
                video_results.append(result)
                bar.update()
        for path in images:
            bar.set_description(path.name)
            image = read_image(path, (protocol.height, protocol.width))
            result = evaluate_image(image, models, image_vae, **options)
            if grid is None:
                grid = grid_figure(image, result.reconstructions, path.name)
            result.reconstructions.clear()
            image_results.append(result)
            bar.update()
    environment = {"device": str(device), "dtype": args.dtype, "torch": torch.__version__}
    data = report_data(
        protocol, segments, video_results, [str(p) for p in images], image_results, environment
    )
    out.mkdir(exist_ok=True)
    written = write_report(out, data, grid)
    _print_summary(data)
    for path in written:
        print(f"wrote {path}")


def register(sub) -> None:
    """Add ``evaluate`` to the subcommand set ``sub``."""
    p = sub.add_parser(
        "evaluate",
        formatter_class=Formatter,
        help="measure reconstruction and latent compatibility, with baselines",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        type=model_spec,
        action="append",
        metavar="NAME=PATH",
        help="a video VAE folder to evaluate, named NAME in the report (repeat for several); "
        "a bare PATH is named after its folder. Default: the bundled model, if installed",
    )
    g.add_argument(
        "--image-vae",
        type=Path,
        metavar="PATH",
        help="the image VAE (diffusers AutoencoderKL folder) the models were made for; "
        "enables the compatibility metrics",
    )
    g.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate image-vae-per-frame, uniform-repeat and uniform-linear",
    )
    g.add_argument(
        "--lpips-weights",
        type=Path,
        metavar="PATH",
        help="LPIPS safetensors file (see docs/training.md); adds the LPIPS metric",
    )
    g.add_argument(
        "--i3d-weights",
        type=Path,
        metavar="PATH",
        help="I3D (Kinetics-400) safetensors file (see docs/evaluation.md); adds FVD",
    )
    add_device_options(g)

    g = p.add_argument_group("inputs and protocol")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--videos", type=Path, nargs="+", metavar="VIDEO", help="video files")
    src.add_argument(
        "--video-list",
        type=Path,
        metavar="FILE",
        help="text file with one video path per line (relative to the file; # comments)",
    )
    g.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="folder of images (.png, .jpg, ...), evaluated in image mode",
    )
    g.add_argument("--frames", type=positive, default=17, help="frames per clip, 1 + 4k")
    g.add_argument("--height", type=positive, default=256, help="clip and image height")
    g.add_argument("--width", type=positive, default=256, help="clip and image width")
    g.add_argument("--stride", type=positive, default=1, help="read every k-th source frame")
    g.add_argument("--start", type=non_negative, default=0, help="first source frame (0-based)")
    g.add_argument(
        "--segments",
        type=positive,
        default=1,
        help="consecutive clips per video (fewer if the video ends first)",
    )
    g.add_argument("--seed", type=int, default=0, help="torch seed, recorded in the report")
    g.add_argument(
        "--grid-frames",
        type=non_negative,
        nargs="+",
        metavar="N",
        help="clip frames shown in grid.png (first clip); default: the first, one between two "
        "uniform-sampling keyframes near the middle, and the last",
    )
    g.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder (created if missing; its parent must exist)",
    )
    p.set_defaults(run=cmd_evaluate)
