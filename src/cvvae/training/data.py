"""Training data: video and image sources, random clips, joint batches, resumable sampling.

Every batch is planned up front by :class:`BatchPlan` from ``(seed, rank, batch index)`` alone:
its kind (video or image), shape, files and a per-sample seed. The dataset turns each planned
:class:`SampleKey` into a tensor in a DataLoader worker. So the data position of a run is one
integer (the batch index), and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cvvae.errors import UserInputError
from cvvae.io import read_image, read_video
from cvvae.training.config import DataConfig


@dataclass(frozen=True)
class SampleKey:
    """One planned sample: ``kind`` ``video``/``image``, file ``index`` in that kind's list,
    clip ``frames`` (1 for images) and square crop ``size``, the sample's random ``seed``, and
    whether colour augmentation may apply (not to validation clips)."""

    kind: str
    index: int
    frames: int
    size: int
    seed: int
    augment: bool = True


class ClipDataset(Dataset):
    """Decodes :class:`SampleKey` s into ``{"video": (3, T, S, S) in [-1, 1], "skipped": [str]}``.

    A file that cannot be read (or is too short for the clip) is replaced by other files of the
    same kind in an order drawn from the sample's seed, up to ``config.max_read_tries``; the skipped
    ones are reported as ``"path: reason"`` strings so the trainer can count and log them.
    """

    def __init__(self, videos: list[Path], images: list[Path], config: DataConfig):
        self.files = {"video": videos, "image": images}
        self.config = config

    def __getitem__(self, key: SampleKey) -> dict:
        rng = np.random.default_rng(key.seed)
        files = self.files[key.kind]
        fallbacks = [int(i) for i in rng.permutation(len(files)) if i != key.index]
        candidates = [key.index, *fallbacks][: self.config.max_read_tries]
        skipped = []
        for index in candidates:
            try:
                if key.kind == "video":
                    clip = self._read_clip(files[index], key.frames, key.size, rng)
                else:
                    clip = self._read_still(files[index], key.size, rng)
                if key.augment and rng.random() < self.config.hue_rotation:
                    clip = rotate_hue(clip, float(rng.uniform(0.0, 2 * np.pi)))
                return {"video": clip, "skipped": skipped}
            except UserInputError as err:
                skipped.append(str(err))
        raise UserInputError(
            f"no readable {key.kind} after {len(candidates)} tries; last: {skipped[-1]}"
        )

    def _read_clip(
        self, path: Path, frames: int, size: int, rng: np.random.Generator
    ) -> torch.Tensor:
        """Random ``frames``-frame clip with a random stride, resized and randomly cropped."""
        _, info = read_video(path, num_frames=1)
        total = info.total_frames or frames
        if total < frames:
            raise UserInputError(f"video has {total} frames, clip needs {frames}: {path}")
        low, high = self.config.frame_stride
        stride = int(rng.integers(low, high + 1))
        stride = max(1, min(stride, (total - 1) // max(frames - 1, 1)))
        start = int(rng.integers(0, total - (frames - 1) * stride))
        scale = size * float(rng.uniform(*self.config.resize_range)) / min(info.height, info.width)
        cover = (max(size, round(info.height * scale)), max(size, round(info.width * scale)))
        video, _ = read_video(path, start=start, num_frames=frames, stride=stride, size=cover)
        if video.shape[1] != frames:
            raise UserInputError(f"video ended after {video.shape[1]} of {frames} frames: {path}")
        return _random_crop(video, size, rng)

    def _read_still(self, path: Path, size: int, rng: np.random.Generator) -> torch.Tensor:
        """Image as a one-frame clip ``(3, 1, S, S)``, resized and randomly cropped."""
        image = read_image(path)
        scale = size * float(rng.uniform(*self.config.resize_range)) / min(image.shape[-2:])
        cover = (
            max(size, round(image.shape[-2] * scale)),
            max(size, round(image.shape[-1] * scale)),
        )
        image = F.interpolate(image[None], size=cover, mode="bilinear", antialias=True)[0]
        return _random_crop(image[:, None], size, rng)


def _random_crop(video: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random ``size x size`` crop of ``(3, T, H, W)``."""
    top = int(rng.integers(0, video.shape[-2] - size + 1))
    left = int(rng.integers(0, video.shape[-1] - size + 1))
    return video[..., top : top + size, left : left + size].contiguous()


# RGB -> YIQ (luma Y, chroma I and Q; NTSC) and back; a hue rotation turns the (I, Q) plane
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rotate_hue(video: torch.Tensor, angle: float) -> torch.Tensor:
    """Turn the hue of ``(3, ...)`` RGB in [-1, 1] by ``angle`` radians, keeping luma and
    greys; results outside [-1, 1] are clipped. A colour augmentation: a VAE trained on few
    sources learns to reproduce colours it has not seen."""
    cos, sin = np.cos(angle), np.sin(angle)
    turn = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=torch.float64)
    matrix = (_YIQ_TO_RGB @ turn @ _RGB_TO_YIQ).to(video.dtype)
    return torch.einsum("ij,j...->i...", matrix, video).clamp(-1.0, 1.0)


def collate(items: list[dict]) -> dict:
    """Stack samples: ``{"video": (B, 3, T, S, S), "skipped": [str, ...]}``."""
    return {
        "video": torch.stack([item["video"] for item in items]),
        "skipped": [message for item in items for message in item["skipped"]],
    }


class BatchPlan:
    """Endless, deterministic batch sampler for one process, starting at batch ``start``.

    Batch ``b`` of rank ``r`` depends only on ``(seed, r, b)``: an image batch with probability
    ``image_ratio``, else a video batch with one of ``video_shapes``; files drawn from this
    rank's shard (every ``world``-th file, or all files when there are fewer than ``world``).
    """

    def __init__(
        self,
        num_videos: int,
        num_images: int,
        config: DataConfig,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ):
        self.shards = {
            "video": _shard(num_videos, rank, world),
            "image": _shard(num_images, rank, world),
        }
        self.config, self.seed, self.rank, self.start = config, seed, rank, start

    def batch(self, b: int) -> list[SampleKey]:
        rng = np.random.default_rng([self.seed, self.rank, b])
        if rng.random() < self.config.image_ratio:
            kind, frames, size = "image", 1, self.config.image_size
        else:
            shape = self.config.video_shapes[int(rng.integers(len(self.config.video_shapes)))]
            kind, frames, size = "video", shape[0], shape[1]
        shard = self.shards[kind]
        return [
            SampleKey(
                kind, int(shard[rng.integers(len(shard))]), frames, size, int(rng.integers(2**62))
            )
            for _ in range(self.config.batch_size)
        ]

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


def _shard(count: int, rank: int, world: int) -> np.ndarray:
    return np.arange(rank, count, world) if count >= world else np.arange(count)


def validation_keys(dataset: ClipDataset, count: int, seed: int) -> list[SampleKey]:
    """Fixed keys for ``count`` validation clips: the first videos (cycled) at the first video
    shape, or images when there are no videos; the same crops every time, colours untouched."""
    config = dataset.config
    if dataset.files["video"]:
        kind, (frames, size) = "video", config.video_shapes[0]
    else:
        kind, frames, size = "image", 1, config.image_size
    num_files = len(dataset.files[kind])
    return [
        SampleKey(kind, i % num_files, frames, size, seed + i, augment=False) for i in range(count)
    ]


def make_loader(dataset: ClipDataset, plan: BatchPlan, num_workers: int) -> DataLoader:
    """DataLoader decoding the plan's batches in ``num_workers`` worker processes."""
    return DataLoader(
        dataset,
        batch_sampler=plan,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
