"""Pick chunk sizes for chunked (streaming) inference from a memory budget.

The cost model counts the largest live activations: the trunk's full-resolution feature maps
for one chunk (``ACTIVATION_COPIES[direction]`` tensors of ``C0 x frames x H x W``, with two
cached frames), plus what stays whole (the input and output clips and the latent-resolution
head). With tiles in lockstep the conv caches of all tiles (whole frames' worth) dominate and
tile sizes change the peak little (``TILED_FRAMES``, at the smallest chunks); what the budget
leaves above that buys longer encoder chunks (``TILED_CHUNK_COPIES`` per frame and padded tile:
fewer, fuller statistics, so latents closer to the full pass); below that, tiles run one at a time
(``"sequential"``), sized like chunks, with the clip between the trunk's parts kept. The
constants were calibrated against peaks counted on the meta device for the full-size SD 2.1 and
SD3 architectures at 720p and the tiny reference models at 360p, and set to the largest seen
(docs/performance.md). :func:`describe_plan` says what a plan does for one direction, for the
``cvvae`` logger.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .streaming import STATS_MODES, TILE_ORDERS

# live C0 x frame x H x W tensors per chunk frame at the trunk's widest point; the non-causal
# decoder holds more (delayed skips, held-back frames, three blocks per level)
ACTIVATION_COPIES = {"encode": 6, "decode": 13}
HEAD_COPIES = 6  # live top_channels x frames x h x w tensors of the latent-resolution head
# with tiles (two tiled levels, tiles of half the shorter side): the peak, in whole C0 x H x W
# frames, mostly all tiles' conv caches, which tiles cannot shrink
TILED_FRAMES = {"encode": 12, "decode": 30}
# live C0 x tile x tile tensors (tile with its halos) per encoder chunk frame beyond the smallest
# chunk, tiles of half the shorter side in lockstep (the coarse levels' whole frames included)
TILED_CHUNK_COPIES = 3
# tiles sampled on crops (streaming.TileSampler, a third of a tile's side): the crops' batch and
# caches add up to this share to the lockstep peak (counted on meta at 17x720p: 5-9% for the tiny
# reference models, 9-14% for the full-size SD 2.1 / SD3 architectures)
SAMPLING_OVERHEAD = 0.15
MIN_TILE = 128
TILE_HALO = 32  # video pixels around a tile, for the estimates (16 / 24 for the released models)
MIN_ENCODE_FRAMES = 4
logger = logging.getLogger("cvvae")


@dataclass(frozen=True)
class ChunkPlan:
    """Chunked execution settings: video frames per encoder chunk (a multiple of 4), latent
    frames per decoder chunk, and how each gathers GroupNorm statistics (see streaming.py).

    The default, running statistics in both directions, keeps to about the full pass's time and
    stays several times closer to it than the released tiling; ``"two_pass"`` brings the
    encoder's latents closer again for a second pass (docs/performance.md).
    """

    encode_frames: int = 16
    decode_latents: int = 4
    encode_stats: str = "running"
    decode_stats: str = "running"
    tile_size: int | None = None  # spatial tiles of about this many video pixels ...
    tile_levels: int = 2  # ... for this many full-resolution levels (streaming.encoder_parts) ...
    tile_order: str = (
        "lockstep"  # ... all advancing together, or one at a time (streaming.run_parts)
    )
    # lockstep tiles, running statistics: each call first samples the tiles on crops of 1/N of their
    # side (0: off); it brings the decoder closer, the encoder (one long call) not (docs/performance.md)
    encode_sampling: int = 0
    decode_sampling: int = 3

    def __post_init__(self):
        if self.encode_frames < MIN_ENCODE_FRAMES or self.encode_frames % 4:
            raise ValueError(
                f"encode_frames must be a multiple of 4 and >= 4, got {self.encode_frames}"
            )
        if self.decode_latents < 1:
            raise ValueError(f"decode_latents must be >= 1, got {self.decode_latents}")
        if self.tile_size is not None and self.tile_size < 64:
            raise ValueError(f"tile_size must be >= 64 pixels, got {self.tile_size}")
        if self.tile_levels < 1:
            raise ValueError(f"tile_levels must be >= 1, got {self.tile_levels}")
        if min(self.encode_sampling, self.decode_sampling) < 0:
            raise ValueError(
                f"tile sampling must be >= 0 (0: off), got {self.encode_sampling}, {self.decode_sampling}"
            )
        if self.tile_order not in TILE_ORDERS:
            raise ValueError(f"tile_order must be one of {TILE_ORDERS}, got {self.tile_order!r}")
        for stats in (self.encode_stats, self.decode_stats):
            if stats not in STATS_MODES:
                raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")


def tiled_peak(
    frames: int,
    height: int,
    width: int,
    base_channels: int,
    top_channels: int,
    itemsize: int,
    direction: str,
    tile: int,
    encode_frames: int = MIN_ENCODE_FRAMES,
    sampled: bool = True,
) -> float:
    """Estimated peak bytes of ``direction`` with ``tile``-pixel tiles advancing in lockstep
    (mostly their caches), the encoder taking ``encode_frames`` per chunk, each call
    ``sampled`` on crops first or not."""
    caches = itemsize * base_channels * height * width * TILED_FRAMES[direction]
    longer = 0.0
    if direction == "encode":
        padded = (min(tile, height) + 2 * TILE_HALO) * (min(tile, width) + 2 * TILE_HALO)
        longer = (
            itemsize
            * base_channels
            * padded
            * TILED_CHUNK_COPIES
            * (encode_frames - MIN_ENCODE_FRAMES)
        )
    peak = _whole(frames, height * width, top_channels, itemsize) + caches + longer
    return peak * (1 + SAMPLING_OVERHEAD) if sampled else peak


def _whole(frames: int, pixels: int, top_channels: int, itemsize: int) -> float:
    """Bytes that stay whole: input and output clips, the latent-resolution head."""
    return itemsize * (
        2 * 3 * frames * pixels + HEAD_COPIES * top_channels * frames * pixels // 256
    )


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
    :func:`tiled_peak`; sampled on crops if that fits too; the encoder's chunks as long as the
    rest of the budget allows, up to the clip), and below that, tiles one at a time, sized to
    the budget."""
    pixels = height * width
    whole = _whole(frames, pixels, top_channels, itemsize)
    per_pixel_frame = itemsize * ACTIVATION_COPIES[direction] * base_channels
    room = (
        max(0.0, budget_bytes - whole) / (per_pixel_frame * pixels) - 2
    )  # two cached frames ride along
    encode_frames = max(MIN_ENCODE_FRAMES, int(room) // 4 * 4)
    decode_latents = max(1, int(room) // 4)
    tile, order = None, "lockstep"
    sampling = {"encode": ChunkPlan.encode_sampling, "decode": ChunkPlan.decode_sampling}
    if room < MIN_ENCODE_FRAMES:  # even the smallest chunk is too big: tile the frame too
        tile = max(MIN_TILE, min(height, width) // 2 // 8 * 8)
        shape = (frames, height, width, base_channels, top_channels, itemsize, direction, tile)
        sampled = sampling[direction] > 0
        if sampled and tiled_peak(*shape, sampled=False) <= budget_bytes < tiled_peak(*shape):
            sampling[direction] = sampled = 0  # the crops do not fit: the tiles alone
        elif budget_bytes < tiled_peak(*shape, sampled=sampled):
            order = "sequential"  # all tiles' caches do not fit: one tile at a time, and the clip kept between
            kept = whole + itemsize * top_channels * frames * pixels // 32
            area = max(0.0, budget_bytes - kept) / (per_pixel_frame * (MIN_ENCODE_FRAMES + 2))
            tile = max(64, (int(math.sqrt(area)) - 2 * TILE_HALO) // 8 * 8)
            least = kept + per_pixel_frame * (MIN_ENCODE_FRAMES + 2) * (64 + 2 * TILE_HALO) ** 2
            if tile < max(height, width) and least > budget_bytes:
                logger.warning(
                    "memory budget %.2f GiB is below what 64-px tiles need to %s %d frames %dx%d",
                    budget_bytes / 2**30,
                    direction,
                    frames,
                    width,
                    height,
                )
        if tile >= max(height, width):
            tile = None
        elif order == "lockstep":  # what the caches leave: longer encoder chunks
            while encode_frames + 4 < frames and budget_bytes >= tiled_peak(
                *shape, encode_frames + 4, sampled
            ):
                encode_frames += 4
    return ChunkPlan(
        encode_frames,
        decode_latents,
        tile_size=tile,
        tile_order=order,
        encode_sampling=sampling["encode"],
        decode_sampling=sampling["decode"],
    )


def describe_plan(plan: ChunkPlan, direction: str) -> str:
    """One line saying how ``direction`` (``"encode"`` or ``"decode"``) runs under ``plan``."""
    if direction == "encode":
        chunks, stats, sampling = (
            f"{plan.encode_frames} frames per chunk",
            plan.encode_stats,
            plan.encode_sampling,
        )
    else:
        chunks, stats, sampling = (
            f"{plan.decode_latents} latent frames per chunk",
            plan.decode_stats,
            plan.decode_sampling,
        )
    if plan.tile_size and plan.tile_order == "sequential":
        stats = "two_pass"  # one tile at a time needs the statistics first
    line = f"{direction}: {chunks}, {stats} statistics"
    if plan.tile_size:
        line += f", spatial tiles of {plan.tile_size} px at the {plan.tile_levels} finest levels ({plan.tile_order})"
        if plan.tile_order == "lockstep" and stats != "chunk" and sampling:
            line += f", sampled on crops of 1/{sampling} of their side"
    return line
