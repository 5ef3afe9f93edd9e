"""Spatial tiles with halos for the high-resolution levels of the trunks.

Each tile owns a region of the frame and is computed from that region plus a halo of
neighbouring pixels, as wide as the tiled levels' spatial reach, so that (with shared GroupNorm
statistics) its own region comes out as in one pass over the whole frame. :class:`TiledStage`
runs one part of a trunk tile by tile, each tile with its own state (its caches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def encoder_halo(layers_per_block: int, levels: int, num_levels: int) -> int:
    """Spatial reach, in input pixels, of the encoder trunk's first ``levels`` levels: the input
    conv, then at level ``i`` (``2**i`` input pixels per pixel) two convs per ResNet block and
    the downsampler (every level but the last), each reaching one pixel."""
    per_level = [2 * layers_per_block + (i + 1 < num_levels) for i in range(levels)]
    return 1 + sum(n * 2**i for i, n in enumerate(per_level))


def decoder_halo(layers_per_block: int, levels: int, num_levels: int) -> int:
    """Spatial reach of the decoder trunk's last ``levels`` levels (the finest), in pixels of
    their input: from the output conv back through each level's ResNet blocks (two convs each,
    ``layers_per_block + 1`` blocks) and the conv and nearest 2x of the upsampler into it."""
    reach = 1  # the output conv
    for i in range(levels):
        reach += 2 * (layers_per_block + 1)
        if i + 1 < num_levels:  # upsampled from level i + 1: its conv, then halve (rounding up)
            reach = -(-(reach + 1) // 2)
    return reach


def tiled_scale(levels: int, num_levels: int) -> int:
    """Pixels of the full-resolution side per pixel of the low-resolution side of the first
    ``levels`` encoder levels (the last ``levels`` decoder levels)."""
    return 2 ** min(levels, num_levels - 1)


@dataclass(frozen=True)
class Tile:
    """``own``: the (rows, cols) region the tile is responsible for; ``padded``: that region
    with its halo, clipped to the frame."""

    own: tuple[slice, slice]
    padded: tuple[slice, slice]

    def own_part(self, x: torch.Tensor) -> torch.Tensor:
        """The own region of ``x (..., h, w)``, an activation computed from the padded region at
        any whole scale (``h`` pixels for the padded region's rows)."""
        rows, cols = (
            self.crop(axis, x.shape[-2 + axis], self.padded[axis].stop - self.padded[axis].start)
            for axis in (0, 1)
        )
        return x[..., rows, cols]

    def crop(self, axis: int, num: int, den: int) -> slice:
        """Where ``own`` lies inside ``padded`` along ``axis``, in output pixels (x num / den)."""
        offset = (self.own[axis].start - self.padded[axis].start) * num // den
        length = (self.own[axis].stop - self.own[axis].start) * num // den
        return slice(offset, offset + length)


def _spans(size: int, tile: int, halo: int, align: int) -> list[tuple[slice, slice]]:
    """``ceil(size / tile)`` spans of near-equal length (multiples of ``align`` but the last),
    each with its halo clipped to ``[0, size)``."""
    tile = max(align, tile // align * align)
    n = -(-size // tile)
    bounds = [i * size // n // align * align for i in range(n)] + [size]
    return [
        (slice(a, b), slice(max(0, a - halo), min(size, b + halo)))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def tile_grid(
    height: int, width: int, tile: int | tuple[int, int], halo: int, align: int
) -> list[Tile]:
    """The fewest tiles of at most about ``tile`` pixels (a side, or ``(rows, cols)``) covering
    ``height x width``, of near-equal sizes (the largest tile sets the peak memory); sizes and
    halos are multiples of ``align`` (the trunk's downsampling factor)."""
    rows_max, cols_max = (tile, tile) if isinstance(tile, int) else tile
    halo = -(-halo // align) * align
    return [
        Tile((rows, cols), (rows_p, cols_p))
        for rows, rows_p in _spans(height, rows_max, halo, align)
        for cols, cols_p in _spans(width, cols_max, halo, align)
    ]


class TiledStage:
    """One part of a trunk in a chunked pass, run tile by tile.

    ``part(x, state)`` is the part (a trunk restricted to some levels). Each call runs every
    tile's padded region of the chunk with the tile's own state (its caches; made by
    ``new_state(tile)``) and writes the tile's own region into the output; ``scale = (num,
    den)`` maps input to output pixels. GroupNorm statistics count only own regions, so tiles
    pool exactly the whole frame's; within a call, a tile is normalised with what the earlier
    calls and the tiles before it pooled.
    """

    def __init__(
        self, part: Callable, tiles: list[Tile], scale: tuple[int, int], new_state: Callable
    ):
        self.part, self.tiles, self.scale = part, tiles, scale
        self.states = [new_state(tile) for tile in tiles]

    def __call__(self, x: torch.Tensor, final: bool) -> tuple[torch.Tensor, bool]:
        """The part's output for chunk ``x`` and whether it is final (everything flushed)."""
        out, done = None, True
        for tile, state in zip(self.tiles, self.states, strict=True):
            state.begin_call(final)
            y = self.part(x[..., tile.padded[0], tile.padded[1]], state)
            done = done and state.upstream_done
            out = place(out, y, tile, x.shape[3:], self.scale)
        return out, done


def place(
    out: torch.Tensor | None,
    y: torch.Tensor,
    tile: Tile,
    size: tuple[int, int],
    scale: tuple[int, int],
) -> torch.Tensor:
    """Write the own region of ``y`` (a tile's output) into ``out``, the output for a
    ``size`` input frame (allocated on the first tile), ``scale = (num, den)``."""
    num, den = scale
    if out is None:
        out = y.new_empty(*y.shape[:3], size[0] * num // den, size[1] * num // den)
    rows, cols = (tile.crop(axis, num, den) for axis in (0, 1))
    out[
        ...,
        tile.own[0].start * num // den : tile.own[0].stop * num // den,
        tile.own[1].start * num // den : tile.own[1].stop * num // den,
    ] = y[..., rows, cols]
    return out
