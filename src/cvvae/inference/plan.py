"""Inference plans: how one encode or decode call runs in chunks and tiles.

:class:`InferencePlan` is the whole choice; :func:`plan_for_tiles` makes the plan of
``CVVAE.enable_tiling`` from its three sizes, :func:`plan_for_budget` the plan of
``CVVAE.set_memory_budget`` from a memory budget.

The budget's cost model counts the largest live activations: the trunk's full-resolution feature
maps for one chunk (``ACTIVATION_COPIES[direction]`` tensors of ``C0 x frames x H x W``, with two
cached frames), plus what stays whole (the input and output clips and the latent-resolution
head). With tiles in lockstep the conv caches of all tiles (whole frames' worth) dominate and
tile sizes change the peak little (``TILED_FRAMES``, at the smallest chunks); what the budget
leaves above that buys longer encoder chunks (``TILED_CHUNK_COPIES`` per frame and padded tile:
fewer, fuller statistics, so latents closer to the full pass); below that, tiles run one at a time
(``"sequential"``), sized like chunks, with the clip between the trunk's parts kept. The
constants were calibrated against peaks counted on the meta device for the full-size SD 2.1 and
SD3 architectures at 720p and the tiny reference models at 360p, and set to the largest seen
(docs/performance.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

STATS_MODES = ("two_pass", "running", "chunk")
TILE_ORDERS = ("lockstep", "sequential")

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
MIN_TILE = 128
TILE_HALO = 32  # video pixels around a tile, for the estimates (16 / 24 for the released models)
MIN_ENCODE_FRAMES = 4
logger = logging.getLogger("cvvae")


@dataclass(frozen=True)
class InferencePlan:
    """How one call runs (expert settings; ``CVVAE.enable_tiling(plan=...)``).

    ``encode_frames``: video frames per encoder chunk (a multiple of 4); ``decode_latents``:
    latent frames per decoder chunk. ``tile_height`` x ``tile_width``: the largest spatial tile in
    video pixels (``None``: whole frames), cut at the ``tile_levels`` finest levels (of 4);
    ``tile_order``: tiles advance together, chunk by chunk (``"lockstep"``: one pass, all tiles'
    caches alive) or one after the other over the whole clip (``"sequential"``: least memory,
    two passes). ``*_stats``: how each direction gets its clip-wide GroupNorm statistics
    (``"running"``, ``"two_pass"``, ``"chunk"``; :mod:`cvvae.inference.norms`).
    """

    encode_frames: int = 16
    decode_latents: int = 1
    tile_height: int | None = None
    tile_width: int | None = None
    tile_levels: int = 2
    tile_order: str = "lockstep"
    encode_stats: str = "running"
    decode_stats: str = "running"

    def __post_init__(self):
        if isinstance(self.encode_frames, bool) or not isinstance(self.encode_frames, int):
            raise ValueError(f"encode_frames must be an int, got {self.encode_frames!r}")
        if self.encode_frames < MIN_ENCODE_FRAMES or self.encode_frames % 4:
            raise ValueError(
                f"encode_frames must be a multiple of 4 and >= 4, got {self.encode_frames}"
            )
        if isinstance(self.decode_latents, bool) or not isinstance(self.decode_latents, int):
            raise ValueError(f"decode_latents must be an int, got {self.decode_latents!r}")
        if self.decode_latents < 1:
            raise ValueError(f"decode_latents must be >= 1, got {self.decode_latents}")
        if (self.tile_height is None) != (self.tile_width is None):
            raise ValueError("tile_height and tile_width are given together or not at all")
        for name in ("tile_height", "tile_width"):
            size = getattr(self, name)
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
                raise ValueError(f"{name} must be an int, got {size!r}")
            if size is not None and size < 64:
                raise ValueError(f"{name} must be >= 64 pixels, got {size}")
        if self.tile_levels < 1:
            raise ValueError(f"tile_levels must be >= 1, got {self.tile_levels}")
        if self.tile_order not in TILE_ORDERS:
            raise ValueError(f"tile_order must be one of {TILE_ORDERS}, got {self.tile_order!r}")
        for stats in (self.encode_stats, self.decode_stats):
            if stats not in STATS_MODES:
                raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")

    @property
    def tile(self) -> tuple[int, int] | None:
        """``(tile_height, tile_width)``, or ``None`` for whole frames."""
        return None if self.tile_height is None else (self.tile_height, self.tile_width)


def plan_for_tiles(height: int, width: int, frames: int) -> InferencePlan:
    """The plan of ``enable_tiling``: tiles of at most ``height x width`` video pixels, encoder
    chunks of ``frames`` video frames, decoder chunks of ``frames // 16`` latents (at least one:
    the decoder holds about twice the encoder's activations per frame, and longer decoder calls
    do not bring it closer to the full pass; docs/performance.md). Running statistics."""
    for name, value in (("tile_sample_min_height", height), ("tile_sample_min_width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 64:
            raise ValueError(f"{name} must be an int >= 64 pixels, got {value!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 4 or frames % 4:
        raise ValueError(
            f"tile_sample_min_num_frames must be a multiple of 4 and >= 4, got {frames!r}"
        )
    return InferencePlan(frames, max(1, frames // 16), height, width)


def tiled_peak(
    shape: tuple[int, int, int],
    channels: tuple[int, int],
    itemsize: int,
    direction: str,
    tile: int,
    encode_frames: int = MIN_ENCODE_FRAMES,
) -> float:
    """Estimated peak bytes of ``direction`` on a ``(frames, height, width)`` video with
    ``tile``-pixel tiles advancing in lockstep (mostly their caches), the encoder taking
    ``encode_frames`` per chunk; ``channels``: widths of the first and last level."""
    frames, height, width = shape
    base, top = channels
    caches = itemsize * base * height * width * TILED_FRAMES[direction]
    longer = 0.0
    if direction == "encode":
        padded = (min(tile, height) + 2 * TILE_HALO) * (min(tile, width) + 2 * TILE_HALO)
        longer = itemsize * base * padded * TILED_CHUNK_COPIES * (encode_frames - MIN_ENCODE_FRAMES)
    return _whole(frames, height * width, top, itemsize) + caches + longer


def _whole(frames: int, pixels: int, top_channels: int, itemsize: int) -> float:
    """Bytes that stay whole: input and output clips, the latent-resolution head."""
    return itemsize * (
        2 * 3 * frames * pixels + HEAD_COPIES * top_channels * frames * pixels // 256
    )


def plan_for_budget(
    budget_bytes: float,
    shape: tuple[int, int, int],
    channels: tuple[int, int],
    itemsize: int,
    direction: str,
) -> InferencePlan:
    """The largest chunks whose estimated peak fits ``budget_bytes`` when ``direction``
    (``"encode"`` or ``"decode"``) runs on a ``(frames, height, width)`` video (``channels``:
    widths of the first and last level); if even 4-frame / 1-latent chunks do not fit, tiles of
    half the frame's shorter side too (peak about :func:`tiled_peak`; the encoder's chunks as
    long as the rest of the budget allows, up to the clip), and below that, tiles one at a
    time, sized to the budget."""
    frames, height, width = shape
    pixels = height * width
    whole = _whole(frames, pixels, channels[1], itemsize)
    per_pixel_frame = itemsize * ACTIVATION_COPIES[direction] * channels[0]
    room = max(0.0, budget_bytes - whole) / (per_pixel_frame * pixels) - 2  # two cached frames
    encode_frames = max(MIN_ENCODE_FRAMES, int(room) // 4 * 4)
    decode_latents = max(1, int(room) // 4)
    if room >= MIN_ENCODE_FRAMES:
        return InferencePlan(encode_frames, decode_latents)
    # even the smallest chunk is too big: tile the frame too
    tile = max(MIN_TILE, min(height, width) // 2 // 8 * 8)
    order = "lockstep"
    if budget_bytes < tiled_peak(shape, channels, itemsize, direction, tile):
        order = "sequential"  # all tiles' caches do not fit: one tile at a time, the clip kept
        tile = _sequential_tile(budget_bytes, shape, channels, itemsize, direction)
    if tile >= max(height, width):
        return InferencePlan(encode_frames, decode_latents)
    if order == "lockstep":  # what the caches leave: longer encoder chunks
        while encode_frames + 4 < frames and budget_bytes >= tiled_peak(
            shape, channels, itemsize, direction, tile, encode_frames + 4
        ):
            encode_frames += 4
    return InferencePlan(encode_frames, decode_latents, tile, tile, tile_order=order)


def _sequential_tile(
    budget_bytes: float,
    shape: tuple[int, int, int],
    channels: tuple[int, int],
    itemsize: int,
    direction: str,
) -> int:
    """The tile side that fits ``budget_bytes`` with tiles one at a time (at least 64 px; a
    warning when even that does not fit)."""
    frames, height, width = shape
    pixels = height * width
    per_pixel_frame = itemsize * ACTIVATION_COPIES[direction] * channels[0]
    kept = (
        _whole(frames, pixels, channels[1], itemsize)
        + itemsize * channels[1] * frames * pixels // 32
    )
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
    return tile


def describe_plan(plan: InferencePlan, direction: str) -> str:
    """One line saying how ``direction`` (``"encode"`` or ``"decode"``) runs under ``plan``."""
    if direction == "encode":
        chunks, stats = f"{plan.encode_frames} frames per chunk", plan.encode_stats
    else:
        chunks, stats = f"{plan.decode_latents} latent frames per chunk", plan.decode_stats
    if plan.tile and plan.tile_order == "sequential":
        stats = "two_pass"  # one tile at a time needs the statistics first
    line = f"{direction}: {chunks}, {stats} statistics"
    if plan.tile:
        line += (
            f", spatial tiles of {plan.tile_height}x{plan.tile_width} px at the "
            f"{plan.tile_levels} finest levels ({plan.tile_order})"
        )
    return line
