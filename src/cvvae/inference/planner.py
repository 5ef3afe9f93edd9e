"""Pick chunk sizes for chunked (streaming) inference from a memory budget.

The cost model counts the largest live activations: the trunk's full-resolution feature maps
for one chunk (``ACTIVATION_COPIES[direction]`` tensors of ``C0 x frames x H x W``, with two
cached frames), plus what stays whole (the input and output clips and the latent-resolution
head). With tiles the conv caches of all tiles (whole frames' worth) dominate and tile sizes
change the peak little (``TILED_FRAMES``). The constants were calibrated against peaks counted
on the meta device for the full-size SD 2.1 and SD3 architectures at 720p and the tiny reference
models at 360p, and set to the largest seen (docs/performance.md). :func:`describe_plan` says what a plan does for
one direction, for the ``cvvae`` logger.
"""

from __future__ import annotations

from dataclasses import dataclass

from .streaming import STATS_MODES

# live C0 x frame x H x W tensors per chunk frame at the trunk's widest point; the non-causal
# decoder holds more (delayed skips, held-back frames, three blocks per level)
ACTIVATION_COPIES = {"encode": 6, "decode": 13}
HEAD_COPIES = 6  # live top_channels x frames x h x w tensors of the latent-resolution head
# with tiles (two tiled levels, tiles of half the shorter side): the peak, in whole C0 x H x W
# frames, mostly all tiles' conv caches, which tiles cannot shrink
TILED_FRAMES = {"encode": 12, "decode": 30}
MIN_TILE = 128
MIN_ENCODE_FRAMES = 4


@dataclass(frozen=True)
class ChunkPlan:
    """Chunked execution settings: video frames per encoder chunk (a multiple of 4), latent
    frames per decoder chunk, and how each gathers GroupNorm statistics (see streaming.py).

    The defaults are the measured best (docs/performance.md): two passes for the encoder,
    running statistics for the decoder.
    """

    encode_frames: int = 16
    decode_latents: int = 4
    encode_stats: str = "two_pass"
    decode_stats: str = "running"
    tile_size: int | None = None  # spatial tiles of about this many video pixels ...
    tile_levels: int = 2  # ... for this many full-resolution levels (streaming.encoder_parts)

    def __post_init__(self):
        if self.encode_frames < MIN_ENCODE_FRAMES or self.encode_frames % 4:
            raise ValueError(f"encode_frames must be a multiple of 4 and >= 4, got {self.encode_frames}")
        if self.decode_latents < 1:
            raise ValueError(f"decode_latents must be >= 1, got {self.decode_latents}")
        if self.tile_size is not None and self.tile_size < 64:
            raise ValueError(f"tile_size must be >= 64 pixels, got {self.tile_size}")
        if self.tile_levels < 1:
            raise ValueError(f"tile_levels must be >= 1, got {self.tile_levels}")
        for stats in (self.encode_stats, self.decode_stats):
            if stats not in STATS_MODES:
                raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")


def tiled_peak(frames: int, height: int, width: int, base_channels: int, top_channels: int, itemsize: int,
               direction: str) -> float:
    """Estimated peak bytes of ``direction`` with tiles (the least that a budget can ask for)."""
    return _whole(frames, height * width, top_channels, itemsize) + itemsize * base_channels * height * width * TILED_FRAMES[direction]


def _whole(frames: int, pixels: int, top_channels: int, itemsize: int) -> float:
    """Bytes that stay whole: input and output clips, the latent-resolution head."""
    return itemsize * (2 * 3 * frames * pixels + HEAD_COPIES * top_channels * frames * pixels // 256)


def plan_for_budget(
    budget_bytes: float,
    frames: int,
    height: int,
    width: int,
    base_channels: int,
    top_channels: int,
    itemsize: int,
    direction: str,
) -> ChunkPlan:
    """The largest chunks whose estimated peak fits ``budget_bytes`` when ``direction``
    (``"encode"`` or ``"decode"``) runs on a ``frames x height x width`` clip
    (``base_channels``/``top_channels``: widths of the first and last level); if even 4-frame /
    1-latent chunks do not fit, tiles of half the frame's shorter side too (peak about
    :func:`tiled_peak`, whatever the budget)."""
    pixels = height * width
    whole = _whole(frames, pixels, top_channels, itemsize)
    per_pixel_frame = itemsize * ACTIVATION_COPIES[direction] * base_channels
    room = max(0.0, budget_bytes - whole) / (per_pixel_frame * pixels) - 2  # two cached frames ride along
    encode_frames = max(MIN_ENCODE_FRAMES, int(room) // 4 * 4)
    decode_latents = max(1, int(room) // 4)
    tile = None
    if room < MIN_ENCODE_FRAMES:  # even the smallest chunk is too big: tile the frame too
        tile = max(MIN_TILE, min(height, width) // 2 // 8 * 8)
        if tile >= max(height, width):
            tile = None
    return ChunkPlan(encode_frames, decode_latents, tile_size=tile)


def describe_plan(plan: ChunkPlan, direction: str) -> str:
    """One line saying how ``direction`` (``"encode"`` or ``"decode"``) runs under ``plan``."""
    if direction == "encode":
        chunks = f"{plan.encode_frames} frames per chunk, {plan.encode_stats} statistics"
    else:
        chunks = f"{plan.decode_latents} latent frames per chunk, {plan.decode_stats} statistics"
    if plan.tile_size:
        chunks = f"{chunks}, spatial tiles of {plan.tile_size} px at the {plan.tile_levels} finest levels"
    return f"{direction}: {chunks}"
