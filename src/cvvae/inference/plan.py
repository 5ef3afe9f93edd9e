"""Inference plans: how one encode or decode call runs in chunks and tiles.

:class:`InferencePlan` is the whole choice; :func:`plan_for_tiles` makes the plan of
``CVVAE.enable_tiling`` from its three sizes, :func:`plan_for_budget` the plan of
``CVVAE.set_memory_budget`` from a memory budget.

The budget's plan is the first that fits, in this order: the longest time chunks on whole
frames; tiles of half the frame's shorter side advancing in lockstep (all tiles' conv caches
alive), the encoder's chunks as long as the rest allows (fewer, fuller statistics, so latents
closer to the full pass); tiles one at a time (``"sequential"``), as large as fit, with the clip
kept between the trunk's parts. Peaks are estimated by :class:`~.costs.PlanCosts`, fitted to
peaks of the model itself counted on the meta device.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .costs import PlanCosts

STATS_MODES = ("two_pass", "running", "chunk")
TILE_ORDERS = ("lockstep", "sequential")

MIN_TILE = 128  # the smallest side of lockstep tiles, in video pixels (a choice, not a fit)
MIN_ENCODE_FRAMES = 4  # the encoder's time stride
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
    do not bring it closer to the full pass; docs/memory.md). Running statistics."""
    for name, value in (("tile_sample_min_height", height), ("tile_sample_min_width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 64:
            raise ValueError(f"{name} must be an int >= 64 pixels, got {value!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 4 or frames % 4:
        raise ValueError(
            f"tile_sample_min_num_frames must be a multiple of 4 and >= 4, got {frames!r}"
        )
    return InferencePlan(frames, max(1, frames // 16), height, width)


def plan_for_budget(
    budget_bytes: float, shape: tuple[int, int, int], costs: PlanCosts
) -> InferencePlan:
    """The largest chunks whose peak (estimated by ``costs``, :func:`~.costs.plan_costs` of the
    encoder or the decoder) fits ``budget_bytes`` on a ``(frames, height, width)`` video; if
    even 4-frame / 1-latent chunks do not fit, tiles of half the frame's shorter side in
    lockstep too (the encoder's chunks as long as the rest of the budget allows, up to the
    clip), and below that, tiles one at a time, sized to the budget."""
    frames, height, width = shape
    chunk = _longest(lambda c: costs.chunked_peak(shape, c), budget_bytes, frames + 3)
    if chunk is not None:
        return InferencePlan(chunk, chunk // 4)
    # even the smallest chunk is too big: tile the frame too
    tile = max(MIN_TILE, min(height, width) // 2 // 8 * 8)
    if tile < max(height, width) and costs.lockstep_peak(shape, tile, MIN_ENCODE_FRAMES) <= (
        budget_bytes
    ):
        chunk = MIN_ENCODE_FRAMES
        if costs.direction == "encode":  # what the caches leave: longer encoder chunks
            peak = functools.partial(costs.lockstep_peak, shape, tile)
            chunk = _longest(peak, budget_bytes, frames - 1)
        return InferencePlan(chunk, 1, tile, tile)
    # all tiles' caches do not fit: one tile at a time, the clip kept
    tile = _sequential_tile(budget_bytes, shape, costs)
    if tile >= max(height, width):
        return InferencePlan(MIN_ENCODE_FRAMES, 1)
    return InferencePlan(MIN_ENCODE_FRAMES, 1, tile, tile, tile_order="sequential")


def _longest(peak: Callable[[int], float], budget_bytes: float, limit: int) -> int | None:
    """The longest chunk (video frames, a multiple of 4, from 4 to ``limit``) whose
    ``peak(frames)`` fits ``budget_bytes``; ``None`` if not even 4 frames fit."""
    if peak(MIN_ENCODE_FRAMES) > budget_bytes:
        return None
    chunk = MIN_ENCODE_FRAMES
    while chunk + 4 <= limit and peak(chunk + 4) <= budget_bytes:
        chunk += 4
    return chunk


def _sequential_tile(budget_bytes: float, shape: tuple[int, int, int], costs: PlanCosts) -> int:
    """The largest tile side (a multiple of 8, at least 64 px) that fits ``budget_bytes`` with
    tiles one at a time; below what 64-px tiles need (a warning), the largest tile that needs
    no more than they do (the whole-frame part's peak can set that floor)."""
    frames, height, width = shape
    least = costs.sequential_peak(shape, 64)
    tile = max(height, width) // 8 * 8
    while tile > 64 and costs.sequential_peak(shape, tile) > max(budget_bytes, least):
        tile -= 8
    if tile < max(height, width) and least > budget_bytes:
        logger.warning(
            "memory budget %.2f GiB is below what 64-px tiles need to %s %d frames %dx%d",
            budget_bytes / 2**30,
            costs.direction,
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
