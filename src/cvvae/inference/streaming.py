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

Frames too large for memory are also cut into spatial tiles, but only at the high-resolution
levels, which hold most of the memory and little of the spatial reach: each call runs those
levels tile by tile (each tile with a halo as wide as their reach and its own caches) and the
low-resolution levels on whole frames (:class:`Stage`, :func:`encoder_parts`,
:func:`decoder_parts`). Tiles count statistics over their own regions only, so what they pool
is the whole frame's; within a call, a tile is normalised with what has been pooled up to it
and, with sampling (:class:`TileSampler`), with moments sampled on crops of the tiles after it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import PaddedConv3d, VideoGroupNorm
from .tiling import Tile, centre_crops, decoder_halo, encoder_halo, tile_grid, tiled_scale

STATS_MODES = ("two_pass", "running", "chunk")
TILE_ORDERS = ("lockstep", "sequential")


class _Window(NamedTuple):
    """The frames a temporal conv reads in one call: ``frames`` (cache, new frames, padding),
    ``n`` outputs, ``lead`` / ``tail`` padding frames at its ends, ``offset``, where the
    call's new frames start in it, and ``own``: whether ``frames`` is a new tensor (not a view
    of the call's input), free to be overwritten."""

    frames: torch.Tensor
    n: int
    lead: int
    tail: int
    offset: int
    own: bool


class StreamState:
    """Per-pass state of chunked execution: conv caches, GroupNorm statistics.

    ``stats_mode``: ``"running"``, ``"chunk"`` or ``"frozen"`` (use ``frozen_stats``).
    Call :meth:`begin_call` before each call of the network, with ``final`` from the last
    chunk on; a convolution pads the end of the clip once everything before it has flowed.
    ``max_latents`` caps what one convolution emits per call to that many latent frames' worth;
    the rest waits for the next call (at the end of the clip, calls
    with no new frames drain it), so the frames that the non-causal decoder holds back never
    all flow at once. ``totals`` (clip moments per norm) may be shared by several states;
    ``region`` picks the part of an activation whose moments count (a tile's own region);
    ``pool > 1``: the batch stacks that many samples (crops), normalised with their pooled
    moments, each sample's moments kept in ``samples`` (the latest call's, per norm).
    """

    def __init__(
        self,
        stats_mode: str,
        frozen_stats: dict | None = None,
        max_latents: int | None = None,
        totals: dict | None = None,
        region: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pool: int = 1,
    ):
        self.stats_mode = stats_mode
        self.region = region
        self.pool = pool
        self.samples: dict[nn.Module, _Moments] = {}  # with pool > 1: each sample's latest moments
        self._unseen: Callable[[nn.Module], _Moments | None] | None = None
        self.frozen_stats = frozen_stats or {}
        self.max_latents = max_latents
        self.totals: dict[nn.Module, _Moments] = {} if totals is None else totals  # may be shared
        self._upstream_done = False
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._padding: dict[nn.Module, tuple[int, int]] = {}  # padding frames at the cache's ends
        self._latest: dict[nn.Module, _Moments] = {}  # each norm's moments in its latest call
        self._started: set[nn.Module] = set()
        self._ended: set[nn.Module] = set()

    def begin_call(
        self, final: bool, unseen: Callable[[nn.Module], _Moments | None] | None = None
    ) -> None:
        """Start one call of the network; ``final``: no new input frames will follow.
        ``unseen(norm)``, when given: moments of what this call brings but this state does not
        see (other tiles), merged into its running statistics for this call."""
        self._upstream_done = final
        self._unseen = unseen

    @property
    def upstream_done(self) -> bool:
        """After a call: whether it flushed everything (its output is the last)."""
        return self._upstream_done

    # -- temporal convolutions -----------------------------------------------------------
    def conv(
        self,
        conv: PaddedConv3d,
        x: torch.Tensor,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run ``conv`` on the frames now available; keep the unconsumed ones for later.

        ``prepare``, a per-frame map (the upsampler's nearest 2x), is applied to the frames the
        conv reads, so the cache holds them before it (four times smaller).
        """
        w = self._window(conv, x)
        return self._run_window(conv, w.frames if prepare is None else prepare(w.frames), w.n)

    def block_conv(
        self, conv: PaddedConv3d, norm: VideoGroupNorm, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A ResNet block's ``conv(silu(norm(x)))`` on the frames now available, and the frames of
        ``x`` its outputs line up with (the skip). The cache holds ``x`` itself, normalised anew
        on each call, so the skip needs no cache of its own."""
        self._count(norm, x)
        frames, n, lead, tail, offset, own = self._window(conv, x)
        before = conv.pad_spec.time[
            0
        ]  # in the window: the frame each output is centred on (or ends at)
        if offset <= before and before - offset + n <= x.shape[2]:
            skip = x[
                :, :, before - offset : before - offset + n
            ]  # a view of what the caller holds anyway
        else:  # from the window, which is normalised in place below when it is our own
            skip = frames[:, :, before : before + n]
            skip = skip.clone() if own else skip
        if n:
            frames = F.silu(self._normalise(norm, frames, inplace=own), inplace=True)
            if (
                conv.pad_spec.time_mode == "zeros"
            ):  # padding frames are zeros after the norm, not before
                frames[:, :, :lead] = 0
                frames[:, :, frames.shape[2] - tail :] = 0
        return self._run_window(conv, frames, n), skip

    def _window(self, conv: PaddedConv3d, x: torch.Tensor) -> _Window:
        """What ``conv`` reads in this call (:class:`_Window`); the frames after those consumed
        become its cache."""
        if conv not in self._pending and x.shape[2] == 0:
            self._upstream_done = False
            return _Window(x, 0, 0, 0, 0, False)
        offset = self._pending[conv].shape[2] if conv in self._pending else conv.pad_spec.time[0]
        joined, lead, tail = self._with_cache_and_padding(conv, x)
        own, x = joined is not x, joined
        k, s = conv.kernel_size[0], conv.stride[0]
        available = (x.shape[2] - k) // s + 1 if x.shape[2] >= k else 0
        n = available
        if self.max_latents is not None:
            n = min(n, self.max_latents * conv.frames_per_latent)
        if n < available:  # held back: what follows this conv has not received everything
            self._upstream_done = False
        kept = x.shape[2] - n * s
        self._pending[conv] = x[:, :, n * s :].clone()  # a copy: a view would pin the whole chunk
        self._padding[conv] = (max(0, lead - n * s), min(tail, kept))
        read = (n - 1) * s + k if n else 0
        return _Window(
            x[:, :, :read], n, min(lead, read), max(0, read - (x.shape[2] - tail)), offset, own
        )

    def _run_window(self, conv: PaddedConv3d, window: torch.Tensor, n: int) -> torch.Tensor:
        if n == 0:
            return self._empty_output(conv, window)
        return conv.conv_valid_time(window)

    def _with_cache_and_padding(
        self, conv: PaddedConv3d, x: torch.Tensor
    ) -> tuple[torch.Tensor, int, int]:
        """``x`` after ``conv``'s cached frames (or its start padding, on the first call) and, once
        upstream is done, its end padding: one copy, and how many frames of it are start / end
        padding. Nothing here outlives the call, so the old cache is freed as soon as the caller
        replaces it."""
        before, after = conv.pad_spec.time
        if conv in self._pending:
            parts = [self._pending[conv], x]
            lead, tail = self._padding[conv]
        else:
            parts = [conv.time_pad_frames(x[:, :, :1], before), x]
            lead, tail = before, 0
        if self._upstream_done and conv not in self._ended:
            edge = x if x.shape[2] else parts[0]
            parts.append(conv.time_pad_frames(edge[:, :, -1:], after))
            tail += after
            self._ended.add(conv)
        parts = [part for part in parts if part.shape[2]]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)), lead, tail

    @staticmethod
    def _empty_output(conv: PaddedConv3d, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = conv.pad_spec.space
        h = (x.shape[3] + top + bottom - conv.kernel_size[1]) // conv.stride[1] + 1
        w = (x.shape[4] + left + right - conv.kernel_size[2]) // conv.stride[2] + 1
        return x.new_empty(x.shape[0], conv.out_channels, 0, h, w)

    def is_first_output(self, owner: nn.Module, x: torch.Tensor) -> bool:
        """True exactly once per ``owner``: on its first non-empty output."""
        if owner in self._started or x.shape[2] == 0:
            return False
        self._started.add(owner)
        return True

    # -- GroupNorm statistics ------------------------------------------------------------
    def norm_silu_(self, norm: VideoGroupNorm, x: torch.Tensor) -> torch.Tensor:
        """``silu(norm(x))``, written over ``x`` (the caller's own), with statistics chosen by
        ``stats_mode``; accumulate clip totals."""
        if x.shape[2] == 0:
            return x
        self._count(norm, x)
        return F.silu(self._normalise(norm, x, inplace=True), inplace=True)

    def _count(self, norm: VideoGroupNorm, x: torch.Tensor) -> None:
        """Add the moments of ``x`` (of its ``region``) per group to the clip totals (not when the
        statistics are frozen, or ``x`` has no frames)."""
        if self.stats_mode == "frozen" or x.shape[2] == 0:
            return
        if self.region is not None:
            x = self.region(x)
        chunk = _Moments.of_groups(x, norm.num_groups)
        if self.pool > 1:
            self.samples[norm] = chunk
            chunk = chunk.pooled(self.pool)
        total = self.totals.get(norm)
        self.totals[norm] = chunk if total is None else total.merge(chunk)
        self._latest[norm] = chunk

    def _normalise(
        self, norm: VideoGroupNorm, x: torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """``x`` normalised by ``stats_mode``'s statistics (``"chunk"``: the latest call's), in
        place when ``inplace`` (no new activation-sized tensor)."""
        b, c = x.shape[:2]
        g = norm.num_groups
        if self.stats_mode == "frozen":
            mean, var = self.frozen_stats[norm]
        else:
            use = self._latest[norm] if self.stats_mode == "chunk" else self.totals[norm]
            unseen = (
                None if self._unseen is None else self._unseen(norm)
            )  # given in running mode only
            use = use if unseen is None else use.merge(unseen)
            mean, var = use.mean, use.var
        if self.pool > 1:
            mean, var = mean.repeat(self.pool, 1), var.repeat(self.pool, 1)
        rstd = torch.rsqrt(var + norm.eps)
        scale = norm.weight.double().view(1, g, c // g) * rstd.unsqueeze(-1)
        shift = norm.bias.double().view(1, g, c // g) - mean.unsqueeze(-1) * scale
        view = (b, c) + (1,) * (x.dim() - 2)
        scale, shift = scale.reshape(view).to(x.dtype), shift.reshape(view).to(x.dtype)
        if inplace:
            return x.mul_(scale).add_(shift)
        return torch.addcmul(shift, x, scale)

    def clip_stats(self) -> dict:
        """Per-norm ``(mean, var)`` of everything seen in this pass, ``(B, G)`` float64."""
        return _as_stats(self.totals)


def _as_stats(totals: dict) -> dict:
    return {norm: (m.mean, m.var) for norm, m in totals.items()}


class _Moments:
    """Count, mean and variance of a group's values; ``merge`` pools two sets exactly (Chan)."""

    def __init__(self, count: int, mean: torch.Tensor, var: torch.Tensor):
        self.count, self.mean, self.var = count, mean, var

    @staticmethod
    def of_groups(x: torch.Tensor, groups: int) -> _Moments:
        """Moments per group of ``x (B, C, ...)`` (float64 ``(B, groups)``), from float32 sums and
        sums of squares along rows, pooled in float64: a few times faster than ``torch.var_mean``
        on the CPU, as precise, and no copy of a strided region."""
        b, c = x.shape[:2]
        sums = x.sum(dim=-1, dtype=torch.float32).double().reshape(b, groups, -1).sum(-1)
        squares = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).double().square()
        squares = squares.reshape(b, groups, -1).sum(-1)
        count = x[0, 0].numel() * (c // groups)
        mean = sums / count
        return _Moments(count, mean, (squares / count - mean.square()).clamp_min(0))

    def pooled(self, samples: int) -> _Moments:
        """The moments of ``samples`` sets stacked along the batch ``(samples * B, G)``, pooled:
        ``(B, G)``."""
        return functools.reduce(
            _Moments.merge, [self.sample(i, samples, self.count) for i in range(samples)]
        )

    def sample(self, i: int, samples: int, count: int) -> _Moments:
        """Sample ``i`` of ``samples`` stacked along the batch, standing for ``count`` values."""
        b = self.mean.shape[0] // samples
        return _Moments(count, self.mean[i * b : (i + 1) * b], self.var[i * b : (i + 1) * b])

    def merge(self, other: _Moments) -> _Moments:
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = (
            self.var * self.count
            + other.var * other.count
            + delta.square() * (self.count * other.count / n)
        )
        return _Moments(n, mean, m2 / n)


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


class Stage:
    """One part of a trunk in a chunked pass, on whole frames (``tiles=None``) or tile by tile.

    ``part(x, state)`` is the part (a trunk restricted to some levels). With tiles, each call
    runs every tile's padded region of the chunk with the tile's own :class:`StreamState` (its
    caches) and writes the tile's own region into the output; ``scale = (num, den)`` maps input
    to output pixels. GroupNorm statistics count only own regions, so tiles pool exactly the
    whole frame's. ``new_state(tile)`` makes a state (``tile=None`` for whole frames).
    ``sampling`` (with running statistics): each call first samples the tiles' moments on
    crops of ``1 / sampling`` of their side (:class:`TileSampler`); 0: no sampling.
    """

    def __init__(
        self,
        part: Callable,
        tiles: list[Tile] | None,
        scale: tuple[int, int],
        new_state: Callable[[Tile | None], StreamState],
        sampling: int = 0,
    ):
        self.part, self.tiles, self.scale = part, tiles, scale
        self.states = [new_state(tile) for tile in tiles] if tiles else [new_state(None)]
        running = self.states[0].stats_mode == "running"
        self.sampler = (
            TileSampler(part, tiles, scale[1], sampling, self.states[0].max_latents)
            if tiles and sampling and running
            else None
        )

    def __call__(self, x: torch.Tensor, final: bool) -> tuple[torch.Tensor, bool]:
        """The part's output for chunk ``x`` and whether it is final (everything flushed)."""
        if self.tiles is None:
            state = self.states[0]
            state.begin_call(final)
            return self.part(x, state), state.upstream_done
        priors = self.sampler(x, final) if self.sampler is not None else [None] * len(self.tiles)
        out, done = None, True
        for tile, state, prior in zip(self.tiles, self.states, priors, strict=True):
            state.begin_call(final, prior)
            y = self.part(x[..., tile.padded[0], tile.padded[1]], state)
            done = done and state.upstream_done
            out = _place(out, y, tile, x.shape[3:], self.scale)
        return out, done


class TileSampler:
    """Samples the moments of every tile of a call before the tiles run, so that no tile is
    normalised with its own region alone.

    Each call first runs the part on one crop at the centre of each tile (side ``1 / sampling``
    of the tile's, with the tiles' halo; :func:`~cvvae.inference.tiling.centre_crops`), all
    crops as one batch with caches of their own and normalised with their pooled moments. Tile
    ``j`` is then normalised with what the earlier calls and tiles ``0..j`` counted plus, for
    each later tile, its crop's moments standing for the tile's area (a stratified estimate of
    the whole frame's). Costs about ``(1 / sampling)**2`` of the tiled part, plus halos.
    """

    def __init__(
        self, part: Callable, tiles: list[Tile], align: int, sampling: int, max_latents: int | None
    ):
        self.part, self.tiles, self.align, self.sampling = part, tiles, align, sampling
        self.max_latents = max_latents
        self.crops: list[Tile] | None = None  # made on the first call, when the frame size is known
        self.state: StreamState | None = None
        self.ratios: list[float] = []  # each tile's own area per crop's

    def __call__(
        self, x: torch.Tensor, final: bool
    ) -> list[Callable[[nn.Module], _Moments | None] | None]:
        """Per tile: the moments of the tiles after it in this call, by norm (``None`` where no
        crop fits the frame or the chunk has no frames)."""
        if self.crops is None:
            self.crops = centre_crops(self.tiles, x.shape[3:], self.align, self.sampling) or []
            if self.crops:
                self.state = StreamState(
                    "running",
                    max_latents=self.max_latents,
                    region=self.crops[0].own_part,
                    pool=len(self.crops),
                )
                self.ratios = [
                    _area(t.own) / _area(c.own) for t, c in zip(self.tiles, self.crops, strict=True)
                ]
        if not self.crops or x.shape[2] == 0:
            return [None] * len(self.tiles)
        state, n = self.state, len(self.crops)
        state.begin_call(final)
        self.part(torch.cat([x[..., c.padded[0], c.padded[1]] for c in self.crops], dim=0), state)
        sampled = state.samples
        state.samples = {}
        ratios = self.ratios

        def after(j: int) -> Callable[[nn.Module], _Moments | None]:
            def moments(norm: nn.Module) -> _Moments | None:
                crops = sampled.get(norm)
                if crops is None or j + 1 == n:
                    return None
                later = [
                    crops.sample(k, n, round(crops.count * ratios[k])) for k in range(j + 1, n)
                ]
                return functools.reduce(_Moments.merge, later)

            return moments

        return [after(j) for j in range(n)]


def _area(region: tuple[slice, slice]) -> int:
    return (region[0].stop - region[0].start) * (region[1].stop - region[1].start)


def _place(
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


Part = tuple[Callable, list[Tile] | None, tuple[int, int]]  # (part, tiles or None, scale): a Stage


def _chunked_pass(
    parts: list[Part],
    chunks: list[torch.Tensor],
    stats_mode: str,
    max_latents: int,
    frozen: dict | None = None,
    sampling: int = 0,
) -> tuple[Iterator[torch.Tensor], dict]:
    """The calls of one chunked pass through ``parts`` in order, and the clip totals it fills
    (tiled parts with ``sampling``, see :class:`Stage`)."""
    totals: dict = {}
    new_state = _state_factory(stats_mode, frozen, max_latents, totals)
    stages = [Stage(part, tiles, scale, new_state, sampling) for part, tiles, scale in parts]

    def step(chunk: torch.Tensor, final: bool) -> tuple[torch.Tensor, bool]:
        for stage in stages:
            chunk, final = stage(chunk, final)
        return chunk, final

    return chunk_calls(step, chunks), totals


def _state_factory(
    stats_mode: str, frozen: dict | None, max_latents: int, totals: dict
) -> Callable[[Tile | None], StreamState]:
    """New states of one pass (all counting into ``totals``), for whole frames or a tile."""

    def new_state(tile: Tile | None) -> StreamState:
        return StreamState(stats_mode, frozen, max_latents, totals, tile.own_part if tile else None)

    return new_state


def _collect(calls: Iterator[torch.Tensor], out_frames: int | None = None) -> torch.Tensor:
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
    frozen: dict | None = None,
    order: str = "lockstep",
    sampling: int = 0,
) -> torch.Tensor:
    """Run a trunk, cut into ``parts`` (each on whole frames or tiles, see :class:`Stage`), over
    consecutive time chunks of one clip; the output has ``out_frames`` frames; ``max_latents``
    caps each conv's output per call. ``stats`` is the statistics mode (module docstring);
    ``frozen`` statistics, when given, are used instead.

    ``order``: ``"lockstep"``, every call runs all parts, tiles one after the other
    (:class:`Stage`: all tiles' caches stay alive); ``"sequential"``, each part over the whole
    clip in turn and a tiled part tile by tile (:func:`_part_by_part`: one tile's caches alive,
    the clip kept between parts), always with two passes of statistics. ``sampling``: lockstep
    tiles with running statistics sample each call's moments first (:class:`TileSampler`).
    """
    if stats not in STATS_MODES:
        raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")
    if order not in TILE_ORDERS:
        raise ValueError(f"tile order must be one of {TILE_ORDERS}, got {order!r}")
    if order == "sequential" and any(tiles for _, tiles, _ in parts):
        if frozen is None:
            frozen = _as_stats(_part_by_part(parts, chunks, "running", max_latents)[1])
        out = _part_by_part(parts, chunks, "frozen", max_latents, frozen)[0]
        if out.shape[2] != out_frames:
            raise RuntimeError(
                f"chunked pass produced {out.shape[2]} frames, expected {out_frames}"
            )
        return out
    if frozen is None and stats == "two_pass":
        calls, totals = _chunked_pass(parts, chunks, "running", max_latents, sampling=sampling)
        for _ in calls:  # statistics only: each call's output is dropped at once
            pass
        frozen = _as_stats(totals)
    mode = "frozen" if frozen is not None else stats
    calls, _ = _chunked_pass(parts, chunks, mode, max_latents, frozen, sampling)
    return _collect(calls, out_frames)


def _part_by_part(
    parts: list[Part],
    chunks: list[torch.Tensor],
    stats_mode: str,
    max_latents: int,
    frozen: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    """One chunked pass in ``"sequential"`` order: its output and the clip totals it counted
    (tiles normalised with what the tiles before them pooled, when ``"running"``)."""
    totals: dict = {}
    new_state = _state_factory(stats_mode, frozen, max_latents, totals)

    def run(part: Callable, part_chunks: list[torch.Tensor], tile: Tile | None) -> torch.Tensor:
        """``part`` over the whole clip (a tile's, when given), as one whole-frame stage."""
        return _collect(
            chunk_calls(Stage(part, None, (1, 1), lambda _: new_state(tile)), part_chunks)
        )

    for part, tiles, scale in parts:
        if tiles is None:
            y = run(part, chunks, None)
        else:
            y = None
            for tile in tiles:
                y = _place(
                    y,
                    run(part, [c[..., tile.padded[0], tile.padded[1]] for c in chunks], tile),
                    tile,
                    chunks[0].shape[3:],
                    scale,
                )
        chunks = list(torch.tensor_split(y, len(chunks), dim=2))
    return y, totals


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


def encoder_parts(
    encoder: nn.Module, height: int, width: int, tile: int | None, tile_levels: int
) -> list[Part]:
    """The encoder trunk as parts: whole frames, or (with ``tile`` pixels) its first
    ``tile_levels`` levels by tiles with halos and the rest on whole frames."""
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
    decoder: nn.Module, height: int, width: int, tile: int | None, tile_levels: int
) -> list[Part]:
    """The decoder trunk as parts for ``height x width`` output: whole frames, or (with
    ``tile`` pixels) its first levels on whole frames and its last ``tile_levels`` (the finest)
    by tiles with halos."""
    num_levels = len(decoder.up)
    if tile is not None:
        scale = tiled_scale(tile_levels, num_levels)
        halo = decoder_halo(len(decoder.up[0].block) - 1, tile_levels, num_levels)
        tiles = tile_grid(height // scale, width // scale, max(1, tile // scale), halo, align=1)
        if len(tiles) > 1:
            high, low = range(tile_levels), range(tile_levels, num_levels)
            parts = [(functools.partial(decoder.trunk, levels=high), tiles, (scale, 1))]
            if low:
                parts.insert(0, (functools.partial(decoder.trunk, levels=low), None, (1, 1)))
            return parts
    return [(decoder.trunk, None, (1, 1))]


@torch.no_grad()
def encode_moments(
    encoder: nn.Module,
    x: torch.Tensor,
    chunk_frames: int,
    stats: str,
    tile: int | None = None,
    tile_levels: int = 2,
    tile_order: str = "lockstep",
    tile_sampling: int = 0,
) -> torch.Tensor:
    """Encoder moments of ``(B, 3, 1 + 4k, H, W)`` with the trunk run ``chunk_frames`` at a time
    (its first ``tile_levels`` levels over ``tile``-pixel spatial tiles with halos, in
    ``tile_order``, sampled per call with ``tile_sampling`` (see :class:`Stage`), when given)."""
    latent_frames = 1 + (x.shape[2] - 1) // 4
    per_chunk = max(4, chunk_frames) // 4 + 1  # the first chunk's 1 + n frames pass in one call
    parts = encoder_parts(encoder, x.shape[3], x.shape[4], tile, tile_levels)
    h = run_parts(
        parts,
        split_encoder_input(x, chunk_frames),
        stats,
        latent_frames,
        per_chunk,
        order=tile_order,
        sampling=tile_sampling,
    )
    return encoder.head(h)


@torch.no_grad()
def decode_latents(
    decoder: nn.Module,
    z: torch.Tensor,
    chunk_latents: int,
    stats: str,
    tile: int | None = None,
    tile_levels: int = 2,
    tile_order: str = "lockstep",
    tile_sampling: int = 0,
) -> torch.Tensor:
    """Decoded video of latents ``(B, C, t, h, w)``, the trunk run ``chunk_latents`` latent
    frames at a time (its last ``tile_levels`` levels over ``tile``-pixel output tiles with
    halos, in ``tile_order``, sampled per call with ``tile_sampling``, when given)."""
    frames = 1 + 4 * (z.shape[2] - 1)
    h = decoder.head(z)
    size = 2 ** (len(decoder.up) - 1)
    parts = decoder_parts(decoder, h.shape[3] * size, h.shape[4] * size, tile, tile_levels)
    return run_parts(
        parts,
        split_time(h, chunk_latents),
        stats,
        frames,
        chunk_latents,
        order=tile_order,
        sampling=tile_sampling,
    )
