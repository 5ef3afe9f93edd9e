"""The chunk loop: a trunk, cut into parts, over consecutive time chunks of one clip.

A *part* is a trunk restricted to some of its levels, run on whole frames or tile by tile
(:class:`~.tiling.TiledStage`). One *call* feeds a chunk through every part in order; calls
without new frames follow until everything the convolutions held back has flowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .norms import Stats, as_stats
from .plan import STATS_MODES, TILE_ORDERS
from .state import StreamState
from .tiling import Tile, TiledStage, place

Part = tuple[Callable, list[Tile] | None, tuple[int, int]]  # (part, tiles or None, scale)


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


def chunk_calls(
    step: Callable[[torch.Tensor, bool], tuple[torch.Tensor, bool]], chunks: list[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """Feed ``chunks`` in order to ``step(chunk, final)`` (one call of the network; ``final``:
    no new frames follow; it returns its output and whether that was the last), then empty
    chunks until everything has flowed, yielding each call's output (possibly no frames)."""
    empty = chunks[-1][:, :, :0]
    limit = len(chunks) + 4 * sum(chunk.shape[2] for chunk in chunks) + 8
    for calls in range(limit):
        final = calls >= len(chunks) - 1
        y, done = step(chunks[calls] if calls < len(chunks) else empty, final)
        yield y
        if final and done:
            return
    raise RuntimeError(f"chunked pass stalled after {limit} calls")


class _WholeStage:
    """One part of a trunk on whole frames, with one state."""

    def __init__(self, part: Callable, state: StreamState):
        self.part, self.state = part, state

    def __call__(self, x: torch.Tensor, final: bool) -> tuple[torch.Tensor, bool]:
        self.state.begin_call(final)
        return self.part(x, self.state), self.state.upstream_done


def _state_factory(
    stats_mode: str, frozen: Stats | None, max_latents: int, totals: dict
) -> Callable[[Tile | None], StreamState]:
    """New states of one pass (all counting into ``totals``), for whole frames or a tile."""

    def new_state(tile: Tile | None) -> StreamState:
        return StreamState(stats_mode, frozen, max_latents, totals, tile.own_part if tile else None)

    return new_state


def lockstep_pass(
    parts: list[Part],
    chunks: list[torch.Tensor],
    stats_mode: str,
    max_latents: int,
    frozen: Stats | None = None,
) -> tuple[Iterator[torch.Tensor], dict]:
    """The calls of one chunked pass through ``parts`` in order (every call runs all parts, a
    tiled part all its tiles), and the clip totals it fills."""
    totals: dict = {}
    new_state = _state_factory(stats_mode, frozen, max_latents, totals)
    stages = [
        TiledStage(part, tiles, scale, new_state) if tiles else _WholeStage(part, new_state(None))
        for part, tiles, scale in parts
    ]

    def step(chunk: torch.Tensor, final: bool) -> tuple[torch.Tensor, bool]:
        for stage in stages:
            chunk, final = stage(chunk, final)
        return chunk, final

    return chunk_calls(step, chunks), totals


def sequential_pass(
    parts: list[Part],
    chunks: list[torch.Tensor],
    stats_mode: str,
    max_latents: int,
    frozen: Stats | None = None,
) -> tuple[torch.Tensor, dict]:
    """One chunked pass with each part over the whole clip in turn and a tiled part tile after
    tile (one tile's caches alive, the clip kept between parts): its output and the clip totals
    it counted (tiles normalised with what the tiles before them pooled, when ``"running"``)."""
    totals: dict = {}
    new_state = _state_factory(stats_mode, frozen, max_latents, totals)

    def run(part: Callable, part_chunks: list[torch.Tensor], tile: Tile | None) -> torch.Tensor:
        """``part`` over the whole clip (a tile's, when given), on whole frames."""
        return collect(chunk_calls(_WholeStage(part, new_state(tile)), part_chunks))

    y = None
    for part, tiles, scale in parts:
        if tiles is None:
            y = run(part, chunks, None)
        else:
            y = None
            for tile in tiles:
                tile_chunks = [c[..., tile.padded[0], tile.padded[1]] for c in chunks]
                y = place(y, run(part, tile_chunks, tile), tile, chunks[0].shape[3:], scale)
        chunks = list(torch.tensor_split(y, len(chunks), dim=2))
    return y, totals


def collect(calls: Iterator[torch.Tensor], out_frames: int | None = None) -> torch.Tensor:
    """All of a pass's calls as one clip, preallocated when ``out_frames`` is known."""
    if out_frames is None:
        return torch.cat(list(calls), dim=2)
    out, filled = None, 0
    for y in calls:
        if out is None:
            out = y.new_empty(*y.shape[:2], out_frames, *y.shape[3:])
        out[:, :, filled : filled + y.shape[2]] = y
        filled += y.shape[2]
    if filled != out_frames:
        raise RuntimeError(f"chunked pass produced {filled} frames, expected {out_frames}")
    return out


def run_parts(
    parts: list[Part],
    chunks: list[torch.Tensor],
    stats: str,
    out_frames: int,
    max_latents: int,
    frozen: Stats | None = None,
    order: str = "lockstep",
) -> torch.Tensor:
    """Run a trunk, cut into ``parts``, over consecutive time ``chunks`` of one clip; the output
    has ``out_frames`` frames; ``max_latents`` caps each conv's output per call. ``stats`` is
    the statistics mode (:mod:`.norms`); ``frozen`` statistics, when given, are used instead.
    ``order``: tiles in ``"lockstep"`` (:func:`lockstep_pass`) or ``"sequential"``
    (:func:`sequential_pass`, always with the statistics counted in a first pass)."""
    if stats not in STATS_MODES:
        raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")
    if order not in TILE_ORDERS:
        raise ValueError(f"tile order must be one of {TILE_ORDERS}, got {order!r}")
    if order == "sequential" and any(tiles for _, tiles, _ in parts):
        if frozen is None:
            frozen = as_stats(sequential_pass(parts, chunks, "running", max_latents)[1])
        out = sequential_pass(parts, chunks, "frozen", max_latents, frozen)[0]
        if out.shape[2] != out_frames:
            raise RuntimeError(
                f"chunked pass produced {out.shape[2]} frames, expected {out_frames}"
            )
        return out
    if frozen is None and stats == "two_pass":
        calls, totals = lockstep_pass(parts, chunks, "running", max_latents)
        for _ in calls:  # statistics only: each call's output is dropped at once
            pass
        frozen = as_stats(totals)
    mode = "frozen" if frozen is not None else stats
    calls, _ = lockstep_pass(parts, chunks, mode, max_latents, frozen)
    return collect(calls, out_frames)
