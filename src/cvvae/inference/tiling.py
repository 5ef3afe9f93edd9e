"""Spatial tiles with halos for the high-resolution levels of the trunks.

Each tile owns a region of the frame and is computed from that region plus a halo of
neighbouring pixels, as wide as the tiled levels' spatial reach, so that (with shared GroupNorm
statistics) its own region comes out as in one pass over the whole frame.
"""

from __future__ import annotations

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


def centre_crops(
    tiles: list[Tile], size: tuple[int, int], align: int, fraction: int
) -> list[Tile] | None:
    """One crop per tile of a ``size`` frame, at the tile's centre, all of one shape: a side of
    ``1 / fraction`` of the smallest tile's (a multiple of ``align``) and the tiles' widest halo
    on every side, which stays inside the tile since the side is at least three halos. ``None``
    where crops would be narrower than that (measured: such crops sample worse than none)."""
    halo = max(
        max(t.own[a].start - t.padded[a].start, t.padded[a].stop - t.own[a].stop)
        for t in tiles
        for a in (0, 1)
    )
    sides = [
        min(t.own[a].stop - t.own[a].start for t in tiles) // fraction // align * align
        for a in (0, 1)
    ]
    if min(sides) < max(align, 3 * halo):
        return None
    crops = []
    for t in tiles:
        spans = []
        for a in (0, 1):
            start = ((t.own[a].start + t.own[a].stop) // 2 - sides[a] // 2) // align * align
            spans.append(
                (slice(start, start + sides[a]), slice(start - halo, start + sides[a] + halo))
            )
        crops.append(Tile((spans[0][0], spans[1][0]), (spans[0][1], spans[1][1])))
    return crops
