"""Chunked execution over time: the full-resolution trunks run a few frames at a time.

Each temporal convolution keeps the input frames it has not consumed yet (its explicit cache)
and pads only at the true ends of the clip, so chunking adds no recomputation and no causality
restart: with the same GroupNorm statistics, a chunked pass equals the full pass for any chunk
size. The latent-resolution heads (mid blocks with attention) run on the whole clip at once.

What chunking cannot see is the clip-wide GroupNorm statistics of the trunk. ``stats`` picks
how they are obtained:

- ``"two_pass"``: a first chunked pass accumulates every norm's statistics over the whole clip
  (each norm normalising with what it has seen so far), a second pass uses them frozen.
- ``"running"``: one pass, each chunk normalised with the statistics of all frames seen so far.
- ``"chunk"``: one pass, each chunk normalised with its own statistics (as the released code's
  windows do).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..models.layers import PaddedConv3d, VideoGroupNorm
from .tiling import Tile, decoder_halo, encoder_halo, tile_grid

STATS_MODES = ("two_pass", "running", "chunk")
TILE_ORDERS = ("sequential", "lockstep")


class StreamState:
    """Per-pass state of chunked execution: conv caches, skip delays, GroupNorm statistics.

    ``stats_mode``: ``"running"``, ``"chunk"`` or ``"frozen"`` (use ``frozen_stats``).
    Call :meth:`begin_call` before each call of the network, with ``final`` from the last
    chunk on; a convolution pads the end of the clip once everything before it has flowed.
    ``max_latents`` caps what one convolution emits per call to that many latent frames' worth;
    the rest waits for the next call (at the end of the clip, calls
    with no new frames drain it), so the frames that the non-causal decoder holds back never
    all flow at once.
    """

    def __init__(
        self,
        stats_mode: str,
        frozen_stats: dict | None = None,
        max_latents: int | None = None,
        totals: dict | None = None,
    ):
        self.stats_mode = stats_mode
        self.frozen_stats = frozen_stats or {}
        self.max_latents = max_latents
        self.totals: dict[nn.Module, _Moments] = {} if totals is None else totals  # may be shared
        self._upstream_done = False
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._started: set[nn.Module] = set()
        self._ended: set[nn.Module] = set()

    def begin_call(self, final: bool) -> None:
        """Start one call of the network; ``final``: no new input frames will follow."""
        self._upstream_done = final

    # -- temporal convolutions -----------------------------------------------------------
    def conv(self, conv: PaddedConv3d, x: torch.Tensor) -> torch.Tensor:
        """Run ``conv`` on the frames now available; keep the unconsumed ones for later."""
        if conv not in self._pending and x.shape[2] == 0:
            self._upstream_done = False
            return self._empty_output(conv, x)
        x = self._with_cache_and_padding(conv, x)
        k, s = conv.kernel_size[0], conv.stride[0]
        available = (x.shape[2] - k) // s + 1 if x.shape[2] >= k else 0
        n = available
        if self.max_latents is not None:
            n = min(n, self.max_latents * conv.frames_per_latent)
        if n < available:  # held back: what follows this conv has not received everything
            self._upstream_done = False
        self._pending[conv] = x[:, :, n * s:].clone()  # a copy: a view would pin the whole chunk
        if n == 0:
            return self._empty_output(conv, x)
        return conv.conv_valid_time(x[:, :, : (n - 1) * s + k])

    def _with_cache_and_padding(self, conv: PaddedConv3d, x: torch.Tensor) -> torch.Tensor:
        """``x`` after ``conv``'s cached frames (or its start padding, on the first call) and, once
        upstream is done, its end padding: one copy. Nothing here outlives the call, so the old
        cache is freed as soon as the caller replaces it."""
        before, after = conv.pad_spec.time
        if conv in self._pending:
            parts = [self._pending[conv], x]
        else:
            parts = [conv.time_pad_frames(x[:, :, :1], before), x]
        if self._upstream_done and conv not in self._ended:
            edge = x if x.shape[2] else parts[0]
            parts.append(conv.time_pad_frames(edge[:, :, -1:], after))
            self._ended.add(conv)
        parts = [part for part in parts if part.shape[2]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    @staticmethod
    def _empty_output(conv: PaddedConv3d, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = conv.pad_spec.space
        h = (x.shape[3] + top + bottom - conv.kernel_size[1]) // conv.stride[1] + 1
        w = (x.shape[4] + left + right - conv.kernel_size[2]) // conv.stride[2] + 1
        return x.new_empty(x.shape[0], conv.out_channels, 0, h, w)

    def delay(self, owner: nn.Module, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The next ``frames`` frames of the stream ``x`` feeds for ``owner`` (a FIFO)."""
        if owner in self._pending:
            x = torch.cat([self._pending[owner], x], dim=2)
        self._pending[owner] = x[:, :, frames:].clone()
        return x[:, :, :frames]

    def is_first_output(self, owner: nn.Module, x: torch.Tensor) -> bool:
        """True exactly once per ``owner``: on its first non-empty output."""
        if owner in self._started or x.shape[2] == 0:
            return False
        self._started.add(owner)
        return True

    # -- GroupNorm statistics ------------------------------------------------------------
    def group_norm(self, norm: VideoGroupNorm, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` with statistics chosen by ``stats_mode``; accumulate clip totals."""
        if x.shape[2] == 0:
            return x
        return self._normalise(norm, x, self._count(norm, x))

    def _count(self, norm: VideoGroupNorm, x: torch.Tensor) -> _Moments:
        """The moments of ``x`` per group, added to the clip totals."""
        b, c = x.shape[:2]
        g = norm.num_groups
        var, mean = torch.var_mean(x.reshape(b, g, -1), dim=-1, correction=0)
        chunk = _Moments(x[0, 0].numel() * (c // g), mean.double(), var.double())
        total = self.totals.get(norm)
        self.totals[norm] = chunk if total is None else total.merge(chunk)
        return chunk

    def _normalise(self, norm: VideoGroupNorm, x: torch.Tensor, chunk: _Moments) -> torch.Tensor:
        """``x`` normalised by ``stats_mode``'s statistics (``chunk``: this call's moments)."""
        b, c = x.shape[:2]
        g = norm.num_groups
        if self.stats_mode == "frozen":
            mean, var = self.frozen_stats[norm]
        else:
            use = chunk if self.stats_mode == "chunk" else self.totals[norm]
            mean, var = use.mean, use.var
        rstd = torch.rsqrt(var + norm.eps)
        scale = norm.weight.double().view(1, g, c // g) * rstd.unsqueeze(-1)
        shift = norm.bias.double().view(1, g, c // g) - mean.unsqueeze(-1) * scale
        view = (b, c) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.reshape(view).to(x.dtype), x, scale.reshape(view).to(x.dtype))

    def clip_stats(self) -> dict:
        """Per-norm ``(mean, var)`` of everything seen in this pass, ``(B, G)`` float64."""
        return _as_stats(self.totals)


def _as_stats(totals: dict) -> dict:
    return {norm: (m.mean, m.var) for norm, m in totals.items()}


class _Moments:
    """Count, mean and variance of a group's values; ``merge`` pools two sets exactly (Chan)."""

    def __init__(self, count: int, mean: torch.Tensor, var: torch.Tensor):
        self.count, self.mean, self.var = count, mean, var

    def merge(self, other: _Moments) -> _Moments:
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.var * self.count + other.var * other.count + delta.square() * (self.count * other.count / n)
        return _Moments(n, mean, m2 / n)


def chunk_calls(trunk: Callable, chunks: list[torch.Tensor], state: StreamState, out_frames: int) -> Iterator[torch.Tensor]:
    """Feed ``chunks`` to ``trunk`` in order, then empty chunks until ``out_frames`` output frames
    are out, yielding each call's output (possibly no frames)."""
    filled, calls = 0, 0
    empty = chunks[-1][:, :, :0]
    while filled < out_frames:
        if calls >= len(chunks) + 4 * out_frames:
            raise RuntimeError(f"chunked pass stalled at {filled} of {out_frames} frames")
        state.begin_call(final=calls >= len(chunks) - 1)
        y = trunk(chunks[calls] if calls < len(chunks) else empty, state)
        calls += 1
        filled += y.shape[2]
        yield y
    if filled != out_frames:
        raise RuntimeError(f"chunked pass produced {filled} frames, expected {out_frames}")


def _run_chunks(trunk: Callable, chunks: list[torch.Tensor], state: StreamState, out_frames: int) -> torch.Tensor:
    """All of :func:`chunk_calls`, written into one preallocated clip (statistics-only passes
    :func:`drain` the calls instead)."""
    out, filled = None, 0
    for y in chunk_calls(trunk, chunks, state, out_frames):
        if out is None:
            out = y.new_empty(*y.shape[:2], out_frames, *y.shape[3:])
        out[:, :, filled : filled + y.shape[2]] = y
        filled += y.shape[2]
    return out


def run_trunk(
    trunk: Callable,
    chunks: list[torch.Tensor],
    stats: str,
    out_frames: int,
    max_latents: int,
) -> torch.Tensor:
    """Run ``trunk(chunk, state)`` over consecutive time chunks of one clip; the output clip
    has ``out_frames`` frames; ``max_latents`` caps each conv's output per call."""
    if stats not in STATS_MODES:
        raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")
    if stats != "two_pass":
        return _run_chunks(trunk, chunks, StreamState(stats, max_latents=max_latents), out_frames)
    first = StreamState("running", max_latents=max_latents)
    drain([chunk_calls(trunk, chunks, first, out_frames)], "sequential")
    frozen = StreamState("frozen", first.clip_stats(), max_latents)
    return _run_chunks(trunk, chunks, frozen, out_frames)


def tile_statistics(
    trunk: Callable,
    x: torch.Tensor,
    split: Callable[[torch.Tensor], list[torch.Tensor]],
    out_frames: int,
    max_latents: int,
    tiles: list[Tile],
    order: str = "sequential",
) -> dict:
    """Clip statistics estimated over the tiles' own regions (no halos), pooled across tiles,
    each call normalised with what has been pooled so far.

    ``order``: ``"sequential"`` runs one tile after the other (holds one tile's conv caches);
    ``"lockstep"`` advances every tile one time chunk at a time, so that after the first chunk
    every tile is normalised with statistics of the whole frame, not mostly its own (closer to
    the full pass, but holds every tile's caches at once; docs/performance.md).
    """
    if order not in TILE_ORDERS:
        raise ValueError(f"tile statistics order must be one of {TILE_ORDERS}, got {order!r}")
    totals: dict = {}
    passes = [
        chunk_calls(trunk, split(x[..., t.own[0], t.own[1]]),
                    StreamState("running", max_latents=max_latents, totals=totals), out_frames)
        for t in tiles
    ]
    drain(passes, order)
    return _as_stats(totals)


def drain(passes: list[Iterator], order: str) -> None:
    """Run chunked passes (:func:`chunk_calls`) to their ends: ``"sequential"``, one after the
    other, or ``"lockstep"``, one call of each in turn."""
    if order == "lockstep":
        while passes:
            passes = [p for p in passes if next(p, None) is not None]
    else:
        for p in passes:
            for _ in p:
                pass


def run_trunk_tiled(
    trunk: Callable,
    x: torch.Tensor,
    split: Callable[[torch.Tensor], list[torch.Tensor]],
    out_frames: int,
    max_latents: int,
    tiles: list[Tile],
    scale: tuple[int, int],
    frozen: dict | None = None,
    order: str = "sequential",
) -> torch.Tensor:
    """Like :func:`run_trunk` with ``"two_pass"`` statistics, over spatial tiles of ``x`` too.

    The first pass estimates the statistics over the tiles (:func:`tile_statistics`, in
    ``order``); the second runs each tile with its halo under them, frozen, and keeps its own
    region, so tiles agree on normalisation and meet without seams. ``split`` cuts a tile's
    clip into time chunks; ``scale = (num, den)`` maps input to output pixels; ``frozen``
    statistics, when given, replace the first pass.
    """
    num, den = scale
    if frozen is None:
        frozen = tile_statistics(trunk, x, split, out_frames, max_latents, tiles, order)
    out = None
    for tile in tiles:
        state = StreamState("frozen", frozen, max_latents)
        y = _run_chunks(trunk, split(x[..., tile.padded[0], tile.padded[1]]), state, out_frames)
        if out is None:
            out = y.new_empty(*y.shape[:3], x.shape[3] * num // den, x.shape[4] * num // den)
        rows, cols = (tile.crop(axis, num, den) for axis in (0, 1))
        out[..., tile.own[0].start * num // den : tile.own[0].stop * num // den,
            tile.own[1].start * num // den : tile.own[1].stop * num // den] = y[..., rows, cols]
    return out


def split_encoder_input(x: torch.Tensor, chunk_frames: int) -> list[torch.Tensor]:
    """Split ``(B, C, 1 + 4k, H, W)`` into a first chunk of ``1 + n`` frames and then chunks of
    ``n`` frames, ``n = chunk_frames`` rounded down to a multiple of 4 (at least 4)."""
    n = max(4, chunk_frames // 4 * 4)
    bounds = [0, 1 + n] + list(range(1 + 2 * n, x.shape[2], n))
    bounds = [b for b in bounds if b < x.shape[2]] + [x.shape[2]]
    return [x[:, :, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def split_time(x: torch.Tensor, chunk_frames: int) -> list[torch.Tensor]:
    """Split ``(B, C, t, h, w)`` into chunks of ``chunk_frames`` frames (the last may be shorter)."""
    return list(torch.split(x, max(1, chunk_frames), dim=2))


@torch.no_grad()
def encode_moments(
    encoder: nn.Module, x: torch.Tensor, chunk_frames: int, stats: str, tile: int | None = None,
    tile_order: str = "sequential",
) -> torch.Tensor:
    """Encoder moments of ``(B, 3, 1 + 4k, H, W)`` with the trunk run ``chunk_frames`` at a time
    (and over ``tile``-pixel spatial tiles with halos, two-pass statistics gathered in
    ``tile_order``, when given)."""
    latent_frames = 1 + (x.shape[2] - 1) // 4
    per_chunk = max(4, chunk_frames) // 4 + 1  # the first chunk's 1 + n frames pass in one call
    if tile is not None:
        tiles = tile_grid(x.shape[3], x.shape[4], tile, encoder_halo(len(encoder.down[0].block)), align=8)
        if len(tiles) > 1:
            split = functools.partial(split_encoder_input, chunk_frames=chunk_frames)
            h = run_trunk_tiled(encoder.trunk, x, split, latent_frames, per_chunk, tiles, (1, 8),
                                order=tile_order)
            return encoder.head(h)
    chunks = split_encoder_input(x, chunk_frames)
    return encoder.head(run_trunk(encoder.trunk, chunks, stats, latent_frames, per_chunk))


@torch.no_grad()
def decode_latents(
    decoder: nn.Module, z: torch.Tensor, chunk_latents: int, stats: str, tile: int | None = None,
    tile_order: str = "sequential",
) -> torch.Tensor:
    """Decoded video of latents ``(B, C, t, h, w)``, the trunk run ``chunk_latents`` latent
    frames at a time (and over ``tile``-pixel output tiles with halos, two-pass statistics
    gathered in ``tile_order``, when given)."""
    frames = 1 + 4 * (z.shape[2] - 1)
    h = decoder.head(z)
    if tile is not None:
        halo = decoder_halo(len(decoder.up[0].block) - 1)
        tiles = tile_grid(h.shape[3], h.shape[4], max(1, tile // 8), halo, align=1)
        if len(tiles) > 1:
            split = functools.partial(split_time, chunk_frames=chunk_latents)
            return run_trunk_tiled(decoder.trunk, h, split, frames, chunk_latents, tiles, (8, 1),
                                   order=tile_order)
    return run_trunk(decoder.trunk, split_time(h, chunk_latents), stats, frames, chunk_latents)


