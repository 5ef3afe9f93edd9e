"""The released CV-VAE code's runtime tiling, re-implemented as a baseline on our model.

Semantics of the released ``tiled_encode``/``tiled_decode``: 576-px spatial tiles with 0.2222
overlap blended linearly (tiles run independently, so each has its own GroupNorm statistics);
time windows of 16 frames + 1 overlap for encoding and 4 latents + 1 for decoding, each window
restarting causality, the overlapping first output frame of later windows dropped.
"""

from __future__ import annotations

import math

import torch

from cvvae import CVVAE

TILE = 576
OVERLAP = 0.2222
ENCODE_WINDOW = 16
DECODE_WINDOW = 4


def _blend(a: torch.Tensor, b: torch.Tensor, overlap: int, dim: int) -> None:
    """Linear cross-fade of ``a``'s last ``overlap`` rows/cols into ``b``'s first, in place."""
    if overlap <= 0:
        return
    n = min(overlap, a.shape[dim], b.shape[dim])
    shape = [1] * b.dim()
    shape[dim] = n
    w = (torch.arange(n, device=b.device, dtype=b.dtype) / overlap).view(shape)
    tail = a.narrow(dim, a.shape[dim] - n, n)
    head = b.narrow(dim, 0, n)
    head.copy_((1 - w) * tail + w * head)


def _tiled(fn, x: torch.Tensor, tile_in: int, tile_out: int) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` and blend them like the released code."""
    stride_in = round(tile_in * (1 - OVERLAP))
    overlap_out = round(tile_out * OVERLAP)
    stride_out = tile_out - overlap_out
    rows = []
    for i in range(0, x.shape[3], stride_in):
        cols = []
        for j in range(0, x.shape[4], stride_in):
            cols.append(fn(x[:, :, :, i : i + tile_in, j : j + tile_in]))
            if j + tile_in >= x.shape[4]:
                break
        rows.append(cols)
        if i + tile_in >= x.shape[3]:
            break
    for i, cols in enumerate(rows):
        for j, tile in enumerate(cols):
            if i > 0:
                _blend(rows[i - 1][j], tile, overlap_out, 3)
            if j > 0:
                _blend(cols[j - 1], tile, overlap_out, 4)
    out_rows = []
    for i, cols in enumerate(rows):
        cropped = []
        for j, tile in enumerate(cols):
            if i < len(rows) - 1:
                tile = tile[:, :, :, :stride_out]
            if j < len(cols) - 1:
                tile = tile[:, :, :, :, :stride_out]
            cropped.append(tile)
        out_rows.append(torch.cat(cropped, dim=4))
    return torch.cat(out_rows, dim=3)


def _windows(fn, x: torch.Tensor, window: int) -> torch.Tensor:
    rounds = max(1, math.ceil((x.shape[2] - 1) / window))
    parts = []
    for n in range(rounds):
        y = fn(x[:, :, n * window : (n + 1) * window + 1])
        parts.append(y if n == 0 else y[:, :, 1:])
    return torch.cat(parts, dim=2)


@torch.no_grad()
def reference_encode(model: CVVAE, x: torch.Tensor) -> torch.Tensor:
    """Encoder moments of ``(B, 3, 1 + 4k, H, W)`` with the released windows and tiles."""
    tile = lambda w: _tiled(model.encoder, w, TILE, TILE // 8)  # noqa: E731
    return _windows(tile, x, ENCODE_WINDOW)


@torch.no_grad()
def reference_decode(model: CVVAE, z: torch.Tensor) -> torch.Tensor:
    """Decoded video of latents ``(B, C, t, h, w)`` with the released windows and tiles."""
    tile = lambda w: _tiled(model.decoder, w, TILE // 8, TILE)  # noqa: E731
    return _windows(tile, z, DECODE_WINDOW)
