"""Dataset encoding logic on lists and rows: who encodes which clip, manifest rows, resume.

A dataset is a list of clips in a fixed order; clip ``i`` has a stable ``key`` (its path relative
to the list) and, for posterior samples, the seed ``seed + i``. Rank ``r`` of ``W`` owns the clips
``r, r + W, r + 2W, ...`` (no communication needed). Each finished clip is one manifest row
(a dict, one JSON line); a rerun skips every key that already has a row, whichever rank or world
size wrote it, so no clip is encoded twice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class ClipSource:
    """Clip ``index`` of the list: ``key`` names it in the manifest, ``path`` is its file."""

    index: int
    key: str
    path: Path


def clip_sources(paths: list[Path], base: Path) -> list[ClipSource]:
    """Number the listed files and key each by its path relative to ``base`` (the listed folder
    or the list file's folder), so keys do not depend on the working directory. Raises
    ValueError naming the first duplicate."""
    sources, seen = [], set()
    for index, path in enumerate(paths):
        key = Path(os.path.relpath(path, base)).as_posix()
        if key in seen:
            raise ValueError(f"listed twice: {key}")
        seen.add(key)
        sources.append(ClipSource(index, key, path))
    return sources


def rank_share(num_clips: int, rank: int, world_size: int) -> range:
    """The list indices rank ``rank`` of ``world_size`` encodes: every ``world_size``-th from it."""
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return range(rank, num_clips, world_size)


def clip_seed(seed: int, index: int) -> int:
    """Seed of clip ``index`` when sampling the posterior (``cvvae encode --seed`` reproduces it)."""
    return seed + index


def merge_rows(rows: list[dict]) -> dict[str, dict]:
    """One row per key from the rows of every rank: a done row beats a failed one (a retried
    clip), and among rows of the same status the latest ``time`` wins."""
    merged: dict[str, dict] = {}
    for row in rows:
        old = merged.get(row["key"])
        if old is None or _rank(row) > _rank(old):
            merged[row["key"]] = row
    return merged


def _rank(row: dict) -> tuple[bool, float]:
    return row["status"] == DONE, row["time"]


def pending(
    sources: list[ClipSource], share: range, merged: dict[str, dict], retry_failed: bool
) -> list[ClipSource]:
    """The clips of ``share`` still to encode: no row yet, or a failed row when retrying."""
    todo = []
    for index in share:
        row = merged.get(sources[index].key)
        if row is None or (retry_failed and row["status"] == FAILED):
            todo.append(sources[index])
    return todo


def short_clip_reason(frames_read: int, frames_wanted: int | None) -> str | None:
    """Why a clip breaks a fixed frame count (the video ended early), or None if it does not."""
    if frames_wanted is None or frames_read == frames_wanted:
        return None
    return f"only {frames_read} frames after start/stride, --frames asks for {frames_wanted}"


def failed_row(source: ClipSource, rank: int, error: str) -> dict:
    """Manifest row of a clip that could not be read."""
    return {
        "key": source.key,
        "index": source.index,
        "source": str(source.path),
        "status": FAILED,
        "error": error,
        "rank": rank,
        "time": time.time(),
    }


def done_row(
    source: ClipSource,
    rank: int,
    pixels_shape: tuple[int, ...],
    fps: str | None,
    latents: torch.Tensor,
    shard: str,
    seed: int | None,
) -> dict:
    """Manifest row of an encoded clip. ``pixels_shape`` is the clip as encoded, ``(3, T, H, W)``
    or ``(3, H, W)`` for an image (``fps`` None); ``latents`` ``(C, t, h, w)`` or ``(C, h, w)``
    is stored in ``shard`` under the tensor name ``key``."""
    image = len(pixels_shape) == 3
    return {
        "key": source.key,
        "index": source.index,
        "source": str(source.path),
        "status": DONE,
        "error": None,
        "kind": "image" if image else "video",
        "frames": 1 if image else pixels_shape[1],
        "fps": fps,
        "height": pixels_shape[-2],
        "width": pixels_shape[-1],
        "latent_shape": list(latents.shape),
        "shard": shard,
        "tensor": source.key,
        "seed": seed,
        "rank": rank,
        "time": time.time(),
    }


@dataclass
class Summary:
    """What one rank did in one run."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0
    latent_bytes: int = 0
    seconds: float = 0.0

    def add(self, row: dict) -> None:
        if row["status"] == DONE:
            self.done += 1
            self.frames += row["frames"]
            self.latent_bytes += 4 * _numel(row["latent_shape"])
        else:
            self.failed += 1

    def line(self) -> str:
        rate = self.seconds if self.seconds > 0 else float("inf")
        return (
            f"{self.done} clips done, {self.failed} failed, {self.skipped} already in the manifest; "
            f"{self.done} latents written ({self.latent_bytes / 2**20:.1f} MiB) in "
            f"{self.seconds:.1f} s: {self.done / rate:.2f} clips/s, {self.frames / rate:.1f} frames/s"
        )


def _numel(shape: list[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n
