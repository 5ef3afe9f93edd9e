"""Chunked and tiled encode / decode: the full-resolution trunks run a few frames at a time.

The networks split into a full-resolution *trunk* (local in time and space but for its GroupNorm
statistics) and a latent-resolution *head* (mid blocks with attention), which runs on the whole
clip at once. The trunk runs in time chunks (:mod:`.chunks`; exact convolution caches,
:mod:`.caches`; statistics, :mod:`.norms`) and, where frames are larger than a tile, its finest
levels tile by tile with halos (:mod:`.tiling`), the coarse levels on whole frames: the fine
levels hold most of the memory and little of the spatial reach.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .chunks import Part, run_parts, split_encoder_input, split_time
from .plan import InferencePlan
from .tiling import decoder_halo, encoder_halo, tile_grid, tiled_scale


def encoder_parts(
    encoder: nn.Module, height: int, width: int, tile: tuple[int, int] | None, tile_levels: int
) -> list[Part]:
    """The encoder trunk as parts: whole frames, or (with ``tile`` = (rows, cols) pixels) its
    first ``tile_levels`` levels by tiles with halos and the rest on whole frames."""
    num_levels = len(encoder.down)
    if tile is not None:
        scale = tiled_scale(tile_levels, num_levels)
        halo = encoder_halo(len(encoder.down[0].block), tile_levels, num_levels)
        tiles = tile_grid(height, width, tile, halo, align=scale)
        if len(tiles) > 1:
            high, low = range(tile_levels), range(tile_levels, num_levels)
            parts = [(functools.partial(encoder.trunk, levels=high), tiles, (1, scale))]
            if low:
                parts.append((functools.partial(encoder.trunk, levels=low), None, (1, 1)))
            return parts
    return [(encoder.trunk, None, (1, 1))]


def decoder_parts(
    decoder: nn.Module, height: int, width: int, tile: tuple[int, int] | None, tile_levels: int
) -> list[Part]:
    """The decoder trunk as parts for ``height x width`` output: whole frames, or (with
    ``tile`` = (rows, cols) pixels) its first levels on whole frames and its last
    ``tile_levels`` (the finest) by tiles with halos."""
    num_levels = len(decoder.up)
    if tile is not None:
        scale = tiled_scale(tile_levels, num_levels)
        halo = decoder_halo(len(decoder.up[0].block) - 1, tile_levels, num_levels)
        low_res_tile = tuple(max(1, side // scale) for side in tile)
        tiles = tile_grid(height // scale, width // scale, low_res_tile, halo, align=1)
        if len(tiles) > 1:
            high, low = range(tile_levels), range(tile_levels, num_levels)
            parts = [(functools.partial(decoder.trunk, levels=high), tiles, (scale, 1))]
            if low:
                parts.insert(0, (functools.partial(decoder.trunk, levels=low), None, (1, 1)))
            return parts
    return [(decoder.trunk, None, (1, 1))]


@torch.no_grad()
def encode_moments(encoder: nn.Module, x: torch.Tensor, plan: InferencePlan) -> torch.Tensor:
    """Encoder moments of ``(B, 3, 1 + 4k, H, W)`` under ``plan``."""
    latent_frames = 1 + (x.shape[2] - 1) // 4
    per_call = plan.encode_frames // 4 + 1  # the first chunk's 1 + n frames pass in one call
    parts = encoder_parts(encoder, x.shape[3], x.shape[4], plan.tile, plan.tile_levels)
    chunks = split_encoder_input(x, plan.encode_frames)
    h = run_parts(parts, chunks, plan.encode_stats, latent_frames, per_call, order=plan.tile_order)
    return encoder.head(h)


@torch.no_grad()
def decode_latents(decoder: nn.Module, z: torch.Tensor, plan: InferencePlan) -> torch.Tensor:
    """Decoded video of latents ``(B, C, t, h, w)`` under ``plan``."""
    frames = 1 + 4 * (z.shape[2] - 1)
    h = decoder.head(z)
    size = 2 ** (len(decoder.up) - 1)
    parts = decoder_parts(
        decoder, h.shape[3] * size, h.shape[4] * size, plan.tile, plan.tile_levels
    )
    chunks = split_time(h, plan.decode_latents)
    return run_parts(
        parts, chunks, plan.decode_stats, frames, plan.decode_latents, order=plan.tile_order
    )
