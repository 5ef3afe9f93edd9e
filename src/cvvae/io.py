"""Video and image files <-> tensors in [-1, 1], atomic writes, and listing a dataset's files.

Videos are ``(3, T, H, W)`` float32 tensors, images ``(3, H, W)``; RGB, values in [-1, 1].
Videos are read with PyAV (anything FFmpeg reads) and written as H.264 with libx264; images are
read and written with Pillow. Problems the user can fix raise :class:`UserInputError` with one line
naming the problem and the file. :func:`list_videos` and :func:`list_images` find the files of a
dataset (folders, CSV and JSONL lists) for training and latent encoding.

Reading follows what the file means: 16-bit and greyscale images keep their tones, a video read
with a start frame seeks to the keyframe before it (the same frames as decoding from the first),
and a video that ends before its header says (truncated) is read to its end with a warning.
Written files appear only when complete, with the mode the umask gives new files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
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

logger = logging.getLogger(__name__)

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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file: the same path, a symbolic link to it, or a
    hard link (same device and inode). A path that does not exist is not the same file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raise :class:`UserInputError` if ``output`` is one of ``inputs`` (same file, hard link or
    symbolic link), so that writing it cannot destroy an input."""
    for source in inputs:
        if same_file(output, source) or Path(output).absolute() == Path(source).absolute():
            raise UserInputError(
                f"the output is the input file {source} (same file, hard link or symbolic link); "
                f"choose another output: {output}"
            )


# The stem is cut so that the hidden name stays under the usual 255-byte limit.
_PARTIAL_STEM_BYTES = 120
_PARTIAL = re.compile(r"^\.(?P<stem>.*)\.(?:(?P<pid>\d+)-)?[0-9a-f]{8}\.partial(?P<ext>\.[^.]*)?$")


def _partial_stem(path: Path) -> str:
    return path.stem.encode()[:_PARTIAL_STEM_BYTES].decode(errors="ignore")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to another user
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it (those of a
    process that no longer runs, or of older versions, which named no process). Returns them."""
    path = Path(path)
    stem, removed = _partial_stem(path), []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(stem)}.*.partial{path.suffix}"))
    except OSError:
        return removed
    for candidate in candidates:
        match = _PARTIAL.match(candidate.name)
        if match is None or match["stem"] != stem or (match["ext"] or "") != path.suffix:
            continue
        pid = match["pid"]
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def glob_escape(text: str) -> str:
    """``text`` with the glob characters ``*?[`` matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the extension (writers infer formats from it) and is hidden
    (``.name.<pid>-<random>.partial.ext``). On any exception (Ctrl-C and SIGTERM under the CLI
    included) the temporary file is deleted, so ``path`` is either the complete new file or
    untouched; temporary files of killed earlier writers of ``path`` are removed first. The
    file gets the mode the umask gives new files (some writers create theirs private).
    Raises :class:`UserInputError` if the output folder does not exist or ``path`` is a folder;
    an OSError of the write names ``path``, not the temporary file.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserInputError(f"output folder does not exist: {path}")
    if path.is_dir():
        raise UserInputError(f"the output is a folder, not a file: {path}")
    remove_stale_partials(path)
    tmp = path.with_name(
        f".{_partial_stem(path)}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}"
    )
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.filename is not None and Path(error.filename) in (tmp, path):
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
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
    (:func:`resize_center_crop`). With ``start > 0`` decoding begins at the keyframe before the
    start frame when the stream's timestamps allow it (else at the first frame): the frames are
    those of a decode from the first frame. Decoding stops as soon as enough frames are read.
    Fewer than ``num_frames`` frames come back when the video ends first; a video that ends
    before the frame count its header gives, or whose data breaks off, is read up to there with
    a warning giving the counts. Returns ``(video, info)`` with ``video`` float32
    ``(3, T, H, W)`` in [-1, 1]. Raises :class:`UserInputError` for a missing, unreadable or
    corrupt file, a file without video frames, or ``start`` beyond the end.
    """
    if start < 0 or stride < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(
            f"need start >= 0, stride >= 1, num_frames >= 1; got {start}, {stride}, {num_frames}"
        )
    _check_size(size)
    path = Path(path)
    plan = _seek_plan(path, start) if start > 0 else None
    try:
        return _read_frames(path, start, num_frames, stride, size, plan)
    except _SeekFailed:
        return _read_frames(path, start, num_frames, stride, size, None)


class _SeekFailed(Exception):
    """The frames after a keyframe seek cannot be numbered as a full decode numbers them."""


@dataclass(frozen=True)
class _SeekPlan:
    """Frame ``start`` has timestamp ``start_pts``; seek to the keyframe before it."""

    start_pts: int


def _seek_plan(path: Path, start: int) -> _SeekPlan | None:
    """Where frame ``start`` of a full decode is, from the packet timestamps alone, or None if
    they do not tell it for sure (variable rate, missing or discarded packets)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            first_pts = None if first is None else first.pts
        if first_pts is None:
            return None
        with av.open(str(path)) as container:
            stream, pts = container.streams.video[0], []
            for packet in container.demux(stream):
                if packet.pts is None:
                    if packet.size:
                        return None  # a frame without a timestamp: cannot be placed
                    continue
                if packet.is_discard:
                    return None
                pts.append(packet.pts)
                if len(pts) > start and packet.dts is not None:
                    # later packets have pts >= dts: once dts passes frame `start`, it is known
                    if packet.dts > sorted(pts)[start]:
                        break
    except (av.FFmpegError, OSError, IndexError, StopIteration):
        return None
    pts.sort()
    if len(pts) <= start or pts[0] != first_pts:
        return None
    step = pts[1] - pts[0]
    if step <= 0 or any(b - a != step for a, b in zip(pts, pts[1 : start + 1], strict=False)):
        return None
    return _SeekPlan(pts[start])


def _read_frames(
    path: Path,
    start: int,
    num_frames: int | None,
    stride: int,
    size: tuple[int, int] | None,
    plan: _SeekPlan | None,
) -> tuple[torch.Tensor, VideoInfo]:
    frames: list[torch.Tensor] = []
    decoded = 0  # frames of a full decode passed so far (the next one's index)
    broke_off = False
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
            if plan is not None:
                container.seek(plan.start_pts, backward=True, any_frame=False, stream=stream)
            for frame in container.decode(stream):
                if plan is not None and decoded == 0:
                    if frame.pts is None:
                        raise _SeekFailed()
                    if frame.pts < plan.start_pts:
                        continue  # between the keyframe and the start frame
                    if frame.pts != plan.start_pts:
                        raise _SeekFailed()
                    decoded = start
                index, decoded = decoded, decoded + 1
                if index < start or (index - start) % stride:
                    continue
                x = _from_uint8(frame.to_ndarray(format="rgb24"))
                frames.append(resize_center_crop(x, size) if size else x)
                if num_frames is not None and len(frames) == num_frames:
                    break
        except av.FFmpegError:
            if decoded == 0 or plan is not None and decoded <= start:
                raise UserInputError(f"corrupt video stream: {path}") from None
            broke_off = True
    if decoded == 0:
        if plan is not None:
            raise _SeekFailed()
        raise UserInputError(f"video has no frames: {path}")
    if not frames:
        raise UserInputError(f"start frame {start} is beyond the end ({decoded} frames): {path}")
    wanted_all = num_frames is None or len(frames) < num_frames
    if broke_off:
        logger.warning("the video data breaks off after frame %d (truncated?): %s", decoded, path)
    elif wanted_all and info.total_frames and decoded < info.total_frames:
        logger.warning(
            "the video ends after %d of the %d frames its header gives (truncated?): %s",
            decoded,
            info.total_frames,
            path,
        )
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
            x = _image_tensor(img)
    except UnidentifiedImageError:
        raise UserInputError(f"not an image file: {path}") from None
    except Image.DecompressionBombError:
        raise UserInputError(
            f"image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels; PIL's decompression bomb "
            f"guard): {path}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise UserInputError(f"corrupt image file: {path}") from None
    return resize_center_crop(x, size) if size else x


# Pillow modes of single-channel images with more than 8 bits, and their full-scale value.
_DEEP_GREY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def _image_tensor(img: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` in [-1, 1]: 16-bit greyscale scaled by its full range (not clipped to 8
    bits), 32-bit integer greyscale (how Pillow opens some 16-bit PNGs) as 16-bit, everything
    else through RGB (greyscale repeated, palette expanded, alpha dropped)."""
    if img.mode in _DEEP_GREY or img.mode == "I":
        grey = np.asarray(img).astype(np.float32)
        peak = _DEEP_GREY.get(img.mode, 65535.0)
        x = torch.from_numpy(np.clip(grey / peak, 0.0, 1.0)) * 2.0 - 1.0
        return x[None].expand(3, -1, -1).contiguous()
    if img.mode == "F":  # floating-point greyscale (TIFF): taken as values in [0, 1]
        x = torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)) * 2.0 - 1.0
        return x[None].expand(3, -1, -1).contiguous()
    return _from_uint8(np.array(img.convert("RGB")))


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
            found += [path.parent / p for p in _csv_paths(path)]
        elif path.suffix.lower() == ".jsonl" and path.is_file():
            lines = _list_text(path).splitlines()
            found += [
                path.parent / _jsonl_path(line, n, path)
                for n, line in enumerate(lines, 1)
                if line.strip()
            ]
        else:
            raise UserInputError(f"video source must be a folder, .csv or .jsonl file: {path}")
    return found


def _list_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserInputError(f"video list is not UTF-8 text (byte {error.start}): {path}") from None


def _csv_paths(path: Path) -> list[str]:
    """The ``path`` column of a CSV list; every row must have a non-empty one."""
    reader = csv.DictReader(_list_text(path).splitlines())
    if "path" not in (reader.fieldnames or []):
        raise UserInputError(f"CSV video list needs a 'path' column: {path}")
    paths = []
    for row in reader:
        value = row.get("path")
        if not isinstance(value, str) or not value.strip():
            raise UserInputError(f"CSV video list row {reader.line_num} has no path: {path}")
        paths.append(value)
    return paths


def _jsonl_path(line: str, number: int, source: Path) -> str:
    try:
        value = json.loads(line)["path"]
    except (ValueError, KeyError, TypeError):
        raise UserInputError(
            f"JSONL video list line {number} needs a 'path' key: {source}"
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(
            f"JSONL video list line {number}: 'path' must be a non-empty string, got "
            f"{value!r}: {source}"
        )
    return value


def list_images(sources: list[str]) -> list[Path]:
    """Image files in folders (searched recursively)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            raise UserInputError(f"image source must be a folder: {path}")
        found += sorted(p for p in path.rglob("*") if is_image_path(p))
    return found
