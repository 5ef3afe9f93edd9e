"""Commands that run a model on files: reconstruct, encode, decode, info.

torch, the model and the file readers are imported inside the functions, so that building the
parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from cvvae.cli.common import (
    BUNDLED_SHORT_SIDE,
    Formatter,
    add_model_options,
    default_model_path,
    load_model,
    model_folder,
    non_negative,
    positive,
    resolve_device,
    torch_dtype,
)
from cvvae.cli.progress import frame_counter, stages
from cvvae.errors import UserInputError

logger = logging.getLogger("cvvae")

if TYPE_CHECKING:
    import torch

    from cvvae.models import CVVAE

LATENTS_FORMAT = "cvvae-latents"
MAX_SIZE = 16384  # pixels per side accepted for --height/--width and latent metadata
MAX_FPS = 10000  # frames per second accepted in latent metadata
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; clip i adds i in encode-dataset


def frame_size(text: str) -> int:
    """An argparse type: a frame side in pixels, 1..MAX_SIZE."""
    value = positive(text)
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_SIZE}, got {value}")
    return value


def seed_type(text: str) -> int:
    """An argparse type: a random seed in [0, 2**63 - 1]."""
    value = non_negative(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be <= 2**63 - 1, got {value}")
    return value


# ---------------------------------------------------------------------------- inputs and outputs
@dataclass
class Clip:
    """An input read from disk: ``pixels`` is a video ``(3, T, H, W)`` (``rate`` set) or an image
    ``(3, H, W)`` (``rate`` None), in [-1, 1]."""

    pixels: torch.Tensor
    rate: Fraction | None

    @property
    def is_image(self) -> bool:
        return self.rate is None


def clip_size(args: argparse.Namespace) -> tuple[int, int] | None:
    if (args.height is None) != (args.width is None):
        raise UserInputError("--height and --width must be given together")
    return None if args.height is None else (args.height, args.width)


def read_clip(path: Path, args: argparse.Namespace) -> Clip:
    """Read ``path`` as an image (by extension) or a video, with the clip options in ``args``.

    A video read with ``--stride k`` keeps its playback speed: its rate becomes source rate / k.
    With the bundled model and no --height/--width, the input is read at :func:`_bundled_size`.
    """
    from cvvae.io import is_image_path, read_image, read_video, resize_center_crop

    size = clip_size(args)
    bundled = size is None and getattr(args, "model", "") is None
    if is_image_path(path):
        if args.frames is not None or args.start != 0 or args.stride != 1:
            raise UserInputError(f"--frames, --start and --stride apply to videos only: {path}")
        if not bundled:
            return Clip(read_image(path, size=size), None)
        image = read_image(path)  # read once; its size gives the bundled model's
        return Clip(resize_center_crop(image, _bundled_size(path, *image.shape[-2:])), None)
    if bundled:
        _, info = read_video(path, num_frames=1)
        size = _bundled_size(path, info.height, info.width)
    video, info = read_video(path, args.start, args.frames, args.stride, size)
    if not info.rate:
        raise UserInputError(f"video has no frame rate: {path}")
    return Clip(video, info.rate / args.stride)


def _bundled_size(path: Path, height: int, width: int) -> tuple[int, int]:
    """The size the bundled model reads a ``height x width`` source at when no --height/--width
    is given: the source's aspect with a BUNDLED_SHORT_SIDE short side, the scale it was
    trained at (logged)."""
    scale = BUNDLED_SHORT_SIDE / min(height, width)
    size = (round(height * scale), round(width * scale))
    logger.info(
        "the bundled model was trained on frames with a %d-pixel short side: reading %s at "
        "%dx%d (--height/--width choose another size)",
        BUNDLED_SHORT_SIDE,
        path.name,
        *size,
    )
    return size


def _check_output(path: Path, is_image: bool, source: Path) -> None:
    """Fail before any work if ``path`` cannot take an image / a video or is the input."""
    from cvvae.io import VIDEO_WRITE_EXTENSIONS, check_not_input, is_image_path

    check_not_input(path, source)
    if is_image and not is_image_path(path):
        raise UserInputError(
            f"the input is an image, so the output needs an image extension: {path}"
        )
    if not is_image and path.suffix.lower() not in VIDEO_WRITE_EXTENSIONS:
        raise UserInputError(
            f"the input is a video, so the output must end in .mp4, .mov or .mkv: {path}"
        )
    if not path.parent.is_dir():
        raise UserInputError(f"output folder does not exist: {path}")
    if path.is_dir():
        raise UserInputError(f"the output is a folder, not a file: {path}")


def _write_clip(path: Path, clip: Clip) -> None:
    from cvvae.io import write_image, write_video

    if clip.is_image:
        write_image(path, clip.pixels)
    else:
        write_video(path, clip.pixels, clip.rate)


def _describe(clip: Clip) -> str:
    *_, h, w = clip.pixels.shape
    if clip.is_image:
        return f"image {w}x{h}"
    return f"{clip.pixels.shape[1]} frames {w}x{h} at {float(clip.rate):.3f} fps"


def encode_clip(
    model: CVVAE, clip: Clip, device: torch.device, sample: bool, seed: int
) -> torch.Tensor:
    """Latents of one clip, float32 on the CPU: ``(C, t, h, w)`` or ``(C, h, w)`` for an image."""
    import torch

    with torch.inference_mode():
        x = clip.pixels[None].to(device, model.dtype)
        posterior = model.encode(x).latent_dist
        if sample:
            z = posterior.sample(torch.Generator(device).manual_seed(seed))
        else:
            z = posterior.mean
        z = z[0].float().cpu()
    _check_finite(z, "latents")
    return z


def decode_clip(
    model: CVVAE, z: torch.Tensor, frames: int | None, height: int, width: int, device
) -> torch.Tensor:
    """Pixels ``(3, T, H, W)`` or ``(3, H, W)`` in [-1, 1], float32 on the CPU."""
    import torch

    with torch.inference_mode():
        x = model.decode(
            z[None].to(device, model.dtype), num_frames=frames, height=height, width=width
        )
        x = x.sample[0].float().cpu()
    _check_finite(x, "decoded frames")
    return x.clamp(-1, 1)


def _padded_frames(frames: int) -> int:
    """Frames the model runs for a ``frames``-frame clip (padded to ``1 + 4k``)."""
    return 1 + -(-(frames - 1) // 4) * 4


def _encoding(model: CVVAE, clip: Clip):
    """The frame bar of encoding ``clip`` (None for an image: nothing to count)."""
    return (
        None
        if clip.is_image
        else frame_counter(model, "encode", _padded_frames(clip.pixels.shape[1]))
    )


def _decoding(model: CVVAE, z: torch.Tensor):
    """The frame bar of decoding latents ``z`` (None for an image)."""
    return None if z.ndim != 4 else frame_counter(model, "decode", 1 + 4 * (z.shape[1] - 1))


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Non-finite model outputs (NaN/Inf weights or latents, or an fp16 overflow) are an error,
    not a file of black frames."""
    import torch

    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise FloatingPointError(
            f"the model produced non-finite {what} ({bad} of {x.numel()} values); check the "
            f"model weights and inputs, or use --dtype float32"
        )


# ---------------------------------------------------------------------------- latents files
def _latents_metadata(
    folder: Path, model: CVVAE, clip: Clip, sample: bool, seed: int, source: Path
) -> dict[str, str]:
    *_, height, width = clip.pixels.shape
    meta = {
        "format": LATENTS_FORMAT,
        "kind": "image" if clip.is_image else "video",
        "source": str(source),
        "model": str(folder),
        "latent_channels": str(model.config.latent_channels),
        "scaling_factor": repr(float(model.config.scaling_factor)),
        "shift_factor": repr(model.config.shift_factor),
        "latents_scaled": "false",
        "posterior": "sample" if sample else "mean",
        "seed": str(seed) if sample else "",
        "height": str(height),
        "width": str(width),
    }
    if not clip.is_image:
        meta["frames"] = str(clip.pixels.shape[1])
        meta["fps"] = str(clip.rate)
    return meta


def _read_latents(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Latents and metadata written by ``cvvae encode``; UserInputError if it is anything else."""
    import torch
    from safetensors import safe_open

    if not path.is_file():
        raise UserInputError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != LATENTS_FORMAT or "latents" not in f.keys():
                raise UserInputError(f"not a latents file written by cvvae encode: {path}")
            z = f.get_tensor("latents")
    except UserInputError:
        raise
    except Exception:  # safetensors raises several exception types for damaged files
        raise UserInputError(f"not a readable safetensors file: {path}") from None
    try:
        height, width = int(meta["height"]), int(meta["width"])
        kind = meta["kind"]
        frames, fps = (1, Fraction(1)) if kind == "image" else (int(meta["frames"]), None)
        if kind == "video":
            fps = Fraction(meta["fps"])
    except (KeyError, ValueError, ZeroDivisionError):
        raise UserInputError(f"latents file has incomplete metadata: {path}") from None
    if kind not in ("image", "video"):
        raise UserInputError(f"latents metadata kind={kind!r} is not image or video: {path}")
    for key, value in (("height", height), ("width", width)):
        if not 1 <= value <= MAX_SIZE:
            raise UserInputError(
                f"latents metadata {key}={value} is not in [1, {MAX_SIZE}]: {path}"
            )
    if frames < 1:
        raise UserInputError(f"latents metadata frames={frames} is not >= 1: {path}")
    if not 0 < fps <= MAX_FPS:
        raise UserInputError(f"latents metadata fps={meta['fps']} is not in (0, {MAX_FPS}]: {path}")
    if not z.is_floating_point():
        raise UserInputError(f"latents have dtype {z.dtype}, expected floating point: {path}")
    if not torch.isfinite(z).all():
        raise UserInputError(f"latents contain NaN or infinite values: {path}")
    return z, meta


def _check_latents_fit(z: torch.Tensor, meta: dict[str, str], model: CVVAE, path: Path) -> None:
    channels = model.config.latent_channels
    expected_dims = 3 if meta["kind"] == "image" else 4
    if z.ndim != expected_dims:
        raise UserInputError(
            f"latents have {z.ndim} dims, expected {expected_dims} for a {meta['kind']}: {path}"
        )
    if z.shape[0] != channels:
        raise UserInputError(
            f"latents have {z.shape[0]} channels but the model expects {channels}: {path}"
        )
    frames = int(meta.get("frames", 1))
    t, h, w = model.latent_shape(frames, int(meta["height"]), int(meta["width"]))
    expected = (channels, h, w) if meta["kind"] == "image" else (channels, t, h, w)
    if tuple(z.shape) != expected:
        raise UserInputError(
            f"latents shape {tuple(z.shape)} does not fit the recorded size (expected {expected}): {path}"
        )


# ---------------------------------------------------------------------------- commands
def cmd_reconstruct(args: argparse.Namespace) -> None:
    """Encode and decode IN with the posterior mean, write OUT, print PSNR/SSIM."""
    from cvvae.io import is_image_path

    folder, device = model_folder(args), resolve_device(args.device)
    _check_output(args.output, is_image_path(args.input), args.input)
    with stages(5) as stage:
        with stage("reading"):
            clip = read_clip(args.input, args)
            model = load_model(folder, device, torch_dtype(args.dtype), args.memory_budget)
        with stage("encoding", _encoding(model, clip)):
            z = encode_clip(model, clip, device, sample=False, seed=0)
        with stage("decoding", _decoding(model, z)):
            *_, height, width = clip.pixels.shape
            frames = None if clip.is_image else clip.pixels.shape[1]
            recon = Clip(decode_clip(model, z, frames, height, width, device), clip.rate)
        with stage("measuring PSNR and SSIM"):
            quality = _quality_line(clip.pixels, recon.pixels)
        with stage("writing"):
            _write_clip(args.output, recon)
    print(f"reconstructed {_describe(clip)} with {folder}")
    print(f"{quality} (model output vs input, before file encoding)")
    print(f"wrote {args.output}")


def _quality_line(x: torch.Tensor, y: torch.Tensor) -> str:
    from cvvae.evaluation.metrics import clip_mean, psnr, ssim

    p = clip_mean(psnr(x, y)).item()
    if min(x.shape[-2:]) < 11:
        return f"PSNR {p:.2f} dB, SSIM n/a (frames smaller than 11x11)"
    return f"PSNR {p:.2f} dB, SSIM {clip_mean(ssim(x, y)).item():.4f}"


def cmd_encode(args: argparse.Namespace) -> None:
    """Write the latents of IN (unscaled, posterior mean or a seeded sample) to OUT.safetensors."""
    from safetensors.torch import save_file

    from cvvae.io import atomic_path, check_not_input

    folder, device = model_folder(args), resolve_device(args.device)
    if args.output.suffix.lower() != ".safetensors":
        raise UserInputError(f"the output must end in .safetensors: {args.output}")
    check_not_input(args.output, args.input)
    if not args.output.parent.is_dir():
        raise UserInputError(f"output folder does not exist: {args.output}")
    if args.output.is_dir():
        raise UserInputError(f"the output is a folder, not a file: {args.output}")
    with stages(3) as stage:
        with stage("reading"):
            clip = read_clip(args.input, args)
            model = load_model(folder, device, torch_dtype(args.dtype), args.memory_budget)
        with stage("encoding", _encoding(model, clip)):
            z = encode_clip(model, clip, device, args.sample, args.seed)
        with stage("writing"):
            meta = _latents_metadata(folder, model, clip, args.sample, args.seed, args.input)
            with atomic_path(args.output) as tmp:
                save_file({"latents": z.contiguous()}, str(tmp), metadata=meta)
    print(f"encoded {_describe(clip)} to latents {tuple(z.shape)} (unscaled) with {folder}")
    print(f"wrote {args.output}")


def cmd_decode(args: argparse.Namespace) -> None:
    """Decode latents written by ``cvvae encode`` back to the original frame count and size."""
    folder, device = model_folder(args), resolve_device(args.device)
    z, meta = _read_latents(args.input)
    is_image = meta["kind"] == "image"
    _check_output(args.output, is_image, args.input)
    with stages(3) as stage:
        with stage("loading"):
            model = load_model(folder, device, torch_dtype(args.dtype), args.memory_budget)
            _check_latents_fit(z, meta, model, args.input)
            if meta.get("latents_scaled") == "true":
                z = model.unscale_latents(z)
        with stage("decoding", _decoding(model, z)):
            frames = None if is_image else int(meta["frames"])
            pixels = decode_clip(model, z, frames, int(meta["height"]), int(meta["width"]), device)
            clip = Clip(pixels, None if is_image else Fraction(meta["fps"]))
        with stage("writing"):
            _write_clip(args.output, clip)
    print(f"decoded {_describe(clip)} with {folder}")
    print(f"wrote {args.output}")


def cmd_info(args: argparse.Namespace) -> None:
    """Print a model's config, parameter counts, compression factors and latent channels."""
    import torch

    if args.model is None and default_model_path() is None:
        raise UserInputError("no MODEL given and no bundled model installed")
    folder = model_folder(args)
    model = load_model(folder, torch.device("cpu"), None)
    counts = {"encoder": 0, "decoder": 0, "other": 0}
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        counts[part if part in counts else "other"] += param.numel()
    total = sum(counts.values())
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    print(f"model: {folder}")
    print(f"latent channels: {model.config.latent_channels}")
    print(
        f"compression: {model.temporal_compression_ratio}x time, "
        f"{model.spatial_compression_ratio}x{model.spatial_compression_ratio} space"
    )
    print(
        f"scaling factor: {model.config.scaling_factor}, shift factor: {model.config.shift_factor}"
    )
    parts = [f"{k} {v:,}" for k, v in counts.items() if v or k != "other"]
    print(f"parameters: {', '.join(parts)}, total {total:,}")
    print("config: " + json.dumps(config, indent=2))


def add_clip_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("clip options (the input is read with these)")
    g.add_argument(
        "--height",
        type=frame_size,
        help="resize to cover HEIGHTxWIDTH keeping aspect, then center-crop (default: the "
        f"source size; with the bundled model, the source's aspect at a {BUNDLED_SHORT_SIDE}-pixel "
        "short side)",
    )
    g.add_argument("--width", type=frame_size, help="see --height; both or neither")
    g.add_argument(
        "--frames", type=positive, help="read at most this many frames (default: to the end)"
    )
    g.add_argument("--start", type=non_negative, default=0, help="first frame to read (0-based)")
    g.add_argument(
        "--stride",
        type=positive,
        default=1,
        help="read every k-th frame; the frame rate becomes source fps / k, so speed is kept",
    )


def register(sub) -> None:
    """Add reconstruct, encode, decode and info to the subcommand set ``sub``."""
    p = sub.add_parser(
        "reconstruct",
        formatter_class=Formatter,
        help="encode + decode a video or image, print PSNR/SSIM",
        description="Encode IN with the posterior mean, decode it, write OUT (a video at the input's frame "
        "rate, or an image), and print the mean per-frame PSNR and SSIM of the model output\n"
        "against the input frames (after the clip options, before OUT's lossy encoding).",
    )
    p.add_argument("input", type=Path, metavar="IN", help="input video or image")
    p.add_argument(
        "output",
        type=Path,
        metavar="OUT",
        help="output video (.mp4/.mov/.mkv) or image (.png/.jpg)",
    )
    add_model_options(p)
    add_clip_options(p)
    p.set_defaults(run=cmd_reconstruct)

    p = sub.add_parser(
        "encode",
        formatter_class=Formatter,
        help="write the latents of a video or image to .safetensors",
        description="Encode IN and write its latents to OUT.safetensors as tensor 'latents' (C, t, h, w) "
        "(or (C, h, w)\nfor an image), float32. The latents are raw, NOT multiplied by the scaling "
        "factor (metadata\nlatents_scaled=false); scale them as (z - shift_factor) * scaling_factor for "
        "diffusion. The\nmetadata also records the model, source, fps and the original frames/height/width, "
        "so that\n'cvvae decode' restores them.",
    )
    p.add_argument("input", type=Path, metavar="IN", help="input video or image")
    p.add_argument("output", type=Path, metavar="OUT", help="output latents file (.safetensors)")
    add_model_options(p)
    p.add_argument(
        "--sample", action="store_true", help="sample the posterior instead of taking its mean"
    )
    p.add_argument("--seed", type=seed_type, default=0, help="random seed for --sample")
    add_clip_options(p)
    p.set_defaults(run=cmd_encode)

    p = sub.add_parser(
        "decode",
        formatter_class=Formatter,
        help="decode a latents file from 'cvvae encode'",
        description="Decode a latents file written by 'cvvae encode' to OUT, restoring the original frame "
        "count,\nsize and frame rate from its metadata. The model must have the latents' channel count.",
    )
    p.add_argument(
        "input", type=Path, metavar="IN", help="latents file (.safetensors) from 'cvvae encode'"
    )
    p.add_argument(
        "output",
        type=Path,
        metavar="OUT",
        help="output video (.mp4/.mov/.mkv) or image (.png/.jpg)",
    )
    add_model_options(p)
    p.set_defaults(run=cmd_decode)

    p = sub.add_parser(
        "info",
        formatter_class=Formatter,
        help="show a model's config, size and compression",
        description="Print a model's latent channels, compression factors (time, space), scaling factor,\n"
        "parameter counts (encoder, decoder, total) and full config.",
    )
    p.add_argument(
        "model",
        type=Path,
        nargs="?",
        metavar="MODEL",
        help="model folder; default: the bundled model, if installed",
    )
    p.set_defaults(run=cmd_info)
