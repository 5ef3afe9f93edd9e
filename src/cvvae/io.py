"""Video and image files <-> tensors in [-1, 1], atomic writes, and listing a dataset's files.

Videos are ``(3, T, H, W)`` float32 tensors, images ``(3, H, W)``; RGB, values in [-1, 1].
Videos are read with PyAV (anything FFmpeg reads) and written as H.264 with libx264; images are
read and written with Pillow. Problems the user can fix raise :class:`UserInputError` with one line
naming the problem and the file. :func:`list_videos` and :func:`list_images` find the files of a
dataset (folders, CSV and JSONL lists) for training and latent encoding.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cvvae.errors import UserInputError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_WRITE_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"})


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`read_video` learned about the source file.

    ``fps`` is the source frame rate (``float(rate)``), ``rate`` the exact rational rate (e.g.
    30000/1001); ``total_frames`` is the container's frame count, or None if it does not say;
    ``height``/``width`` are the source frame size before any resize.
    """

    fps: float
    rate: Fraction
    total_frames: int | None
    height: int
    width: int


def is_image_path(path: str | os.PathLike) -> bool:
    """True if the file extension is a still-image format (png, jpg, jpeg, bmp, webp, tif)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the extension (writers infer formats from it) and is hidden
    (``.name.<random>.partial.ext``). On any exception the temporary file is deleted, so
    ``path`` is either the complete new file or untouched. Raises :class:`UserInputError` if the
    output folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserInputError(f"output folder does not exist: {path}")
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resize_center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(..., C, H, W)`` so it covers ``size=(h, w)`` keeping aspect, then center-crop.

    The scale is ``max(h / H, w / W)`` (bilinear, antialiased when shrinking), so no borders are
    added and the crop removes the excess along one axis only. Returns ``(..., C, h, w)``.
    """
    th, tw = size
    H, W = x.shape[-2:]
    if (H, W) != (th, tw):
        scale = max(th / H, tw / W)
        rh, rw = max(th, round(H * scale)), max(tw, round(W * scale))
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:]).float()
        flat = F.interpolate(
            flat, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False
        )
        x = flat.reshape(*lead, *flat.shape[-3:])
    top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
    return x[..., top : top + th, left : left + tw]


def _from_uint8(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(3, ..., H, W)`` in [-1, 1] -> ``(..., H, W, 3)`` uint8 (clamped, rounded)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(0, -1).numpy()


def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) with positive values, got {size}")


def _open_video(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise UserInputError(f"file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError:
        raise UserInputError(f"not a readable video file: {path}") from None
    if not container.streams.video:
        container.close()
        raise UserInputError(f"no video stream in file: {path}")
    return container


def read_video(
    path: str | os.PathLike,
    start: int = 0,
    num_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, VideoInfo]:
    """Read frames ``start, start + stride, ...`` (at most ``num_frames``; None = to the end).

    ``size=(H, W)`` resizes each frame to cover that size keeping aspect, then center-crops
    (:func:`resize_center_crop`). Decoding stops as soon as enough frames are read. Fewer than
    ``num_frames`` frames come back when the video ends first. Returns ``(video, info)`` with
    ``video`` float32 ``(3, T, H, W)`` in [-1, 1]. Raises :class:`UserInputError` for a missing,
    unreadable or corrupt file, a file without video frames, or ``start`` beyond the end.
    """
    if start < 0 or stride < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(
            f"need start >= 0, stride >= 1, num_frames >= 1; got {start}, {stride}, {num_frames}"
        )
    _check_size(size)
    path = Path(path)
    frames: list[torch.Tensor] = []
    decoded = 0
    with _open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        info = VideoInfo(
            fps=float(rate) if rate else 0.0,
            rate=Fraction(rate) if rate else Fraction(0),
            total_frames=stream.frames or None,
            height=stream.codec_context.height,
            width=stream.codec_context.width,
        )
        try:
            for frame in container.decode(stream):
                index, decoded = decoded, decoded + 1
                if index < start or (index - start) % stride:
                    continue
                x = _from_uint8(frame.to_ndarray(format="rgb24"))
                frames.append(resize_center_crop(x, size) if size else x)
                if num_frames is not None and len(frames) == num_frames:
                    break
        except av.FFmpegError:
            raise UserInputError(f"corrupt video stream: {path}") from None
    if decoded == 0:
        raise UserInputError(f"video has no frames: {path}")
    if not frames:
        raise UserInputError(f"start frame {start} is beyond the end ({decoded} frames): {path}")
    return torch.stack(frames, dim=1), info


def _as_rate(fps: float | Fraction) -> Fraction:
    """A float rate -> the nearest fraction with denominator <= 1001 (29.97002997 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def write_video(
    path: str | os.PathLike, video: torch.Tensor, fps: float | Fraction, crf: int = 18
) -> None:
    """Write ``video`` ``(3, T, H, W)`` in [-1, 1] as H.264 (libx264, quality ``crf``) at ``fps``.

    The container follows the extension (.mp4, .mov, .mkv). Pixel format is yuv420p when H and W
    are even; 4:2:0 cannot hold odd sizes, so odd sizes use yuv444p (High 4:4:4 profile) and keep
    the exact size rather than padding. A float ``fps`` becomes an exact fraction (29.97002997 ->
    30000/1001). The file appears only when complete (:func:`atomic_path`).
    """
    if video.ndim != 4 or video.shape[0] != 3 or video.shape[1] < 1:
        raise ValueError(f"video must be (3, T, H, W) with T >= 1, got {tuple(video.shape)}")
    path = Path(path)
    if path.suffix.lower() not in VIDEO_WRITE_EXTENSIONS:
        raise UserInputError(f"video output must end in .mp4, .mov or .mkv: {path}")
    rate = _as_rate(fps)
    height, width = video.shape[-2:]
    pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": str(crf)}
        for rgb in _to_uint8(video):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image as ``(3, H, W)`` float32 in [-1, 1] (alpha dropped, grey expanded to RGB).

    ``size=(H, W)`` resizes to cover and center-crops like :func:`read_video`. Raises
    :class:`UserInputError` for a missing, unrecognised or corrupt file.
    """
    _check_size(size)
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"file not found: {path}")
    try:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"))
    except UnidentifiedImageError:
        raise UserInputError(f"not an image file: {path}") from None
    except (OSError, SyntaxError, ValueError):
        raise UserInputError(f"corrupt image file: {path}") from None
    x = _from_uint8(rgb)
    return resize_center_crop(x, size) if size else x


def write_image(path: str | os.PathLike, image: torch.Tensor, quality: int = 95) -> None:
    """Write ``image`` ``(3, H, W)`` in [-1, 1]; format from the extension (PNG lossless, JPEG at
    ``quality``). The file appears only when complete (:func:`atomic_path`)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    path = Path(path)
    if not is_image_path(path):
        raise UserInputError(f"image output needs an image extension (.png, .jpg, ...): {path}")
    with atomic_path(path) as tmp:
        Image.fromarray(_to_uint8(image)).save(tmp, quality=quality)


def list_videos(sources: list[str]) -> list[Path]:
    """Video files from folders (searched recursively) and ``.csv``/``.jsonl`` lists.

    A CSV needs a ``path`` column, a JSONL file one object per line with a ``path`` key;
    relative paths are relative to the list file. Listed files are not opened here: a missing
    or broken one is skipped (and counted) when read.
    """
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.suffix.lower() == ".csv" and path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise UserInputError(f"CSV video list needs a 'path' column: {path}")
                found += [path.parent / row["path"] for row in reader]
        elif path.suffix.lower() == ".jsonl" and path.is_file():
            found += [
                path.parent / _jsonl_path(line, path)
                for line in path.read_text().splitlines()
                if line.strip()
            ]
        else:
            raise UserInputError(f"video source must be a folder, .csv or .jsonl file: {path}")
    return found


def _jsonl_path(line: str, source: Path) -> str:
    try:
        return json.loads(line)["path"]
    except (ValueError, KeyError, TypeError):
        raise UserInputError(f"JSONL video list lines need a 'path' key: {source}") from None


def list_images(sources: list[str]) -> list[Path]:
    """Image files in folders (searched recursively)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            raise UserInputError(f"image source must be a folder: {path}")
        found += sorted(p for p in path.rglob("*") if is_image_path(p))
    return found
