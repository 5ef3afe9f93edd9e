"""Spatial tiles with halos for the full-resolution trunks.

Each tile owns a region of the frame and is computed from that region plus a halo of
neighbouring pixels, as wide as the trunk's spatial reach, so that (with shared GroupNorm
statistics) its own region comes out as in one pass over the whole frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def encoder_halo(layers_per_block: int) -> int:
    """Spatial reach of the encoder trunk in input pixels: 1 (conv_in) + 2 convs per ResNet
    block at scales 1, 2, 4, 8 (30 per block) + the downsamplers, rounded up."""
    return 30 * layers_per_block + 16


def decoder_halo(layers_per_block: int) -> int:
    """Spatial reach of the decoder trunk in latent pixels: 2 convs per ResNet block
    (``layers_per_block + 1`` per level) at scales 1, 1/2, 1/4, 1/8, plus the upsamplers and
    the output conv, rounded up with one pixel to spare."""
    return math.ceil(3.75 * (layers_per_block + 1) + 1) + 1


@dataclass(frozen=True)
class Tile:
    """``own``: the (rows, cols) region the tile is responsible for; ``padded``: that region
    with its halo, clipped to the frame."""

    own: tuple[slice, slice]
    padded: tuple[slice, slice]

    def crop(self, axis: int, num: int, den: int) -> slice:
        """Where ``own`` lies inside ``padded`` along ``axis``, in output pixels (x num / den)."""
        offset = (self.own[axis].start - self.padded[axis].start) * num // den
        length = (self.own[axis].stop - self.own[axis].start) * num // den
        return slice(offset, offset + length)


def _spans(size: int, tile: int, halo: int, align: int) -> list[tuple[slice, slice]]:
    """``ceil(size / tile)`` spans of near-equal length (multiples of ``align`` but the last),
    each with its halo clipped to ``[0, size)``."""
    n = -(-size // tile)
    bounds = [i * size // n // align * align for i in range(n)] + [size]
    return [
        (slice(a, b), slice(max(0, a - halo), min(size, b + halo)))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def tile_grid(height: int, width: int, tile: int, halo: int, align: int) -> list[Tile]:
    """The fewest tiles of at most about ``tile`` x ``tile`` pixels covering ``height x width``,
    of near-equal sizes (the largest tile sets the peak memory); sizes and halos are multiples of
    ``align`` (the trunk's downsampling factor)."""
    tile = max(align, tile // align * align)
    halo = -(-halo // align) * align
    return [
        Tile((rows, cols), (rows_p, cols_p))
        for rows, rows_p in _spans(height, tile, halo, align)
        for cols, cols_p in _spans(width, tile, halo, align)
    ]
