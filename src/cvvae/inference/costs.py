"""What a network's chunked and tiled passes cost, counted on the ``meta`` device.

:class:`PlanCosts` runs a ``meta`` copy of an encoder or a decoder (shapes only: nothing is
computed or allocated) under :class:`~.memory.PeakMemory` at a few small probe shapes and fits
the terms of the planner's cost model (:mod:`.plan`) to the peaks counted there: bytes per
pixel of the trunk's fixed part, per chunk frame and per clip frame, and of the head per clip
frame; with tiles in lockstep, per padded tile pixel (mostly all tiles' caches) and per encoder
chunk frame; with tiles one at a time, per tile pixel, per frame pixel (the whole-frame part)
and per clip frame (the clip kept between the trunk's parts). A peak is the highest of its
phases (trunk, head; tiles, whole frames). Per pixel, a 64 x 64 probe and a 720p run agree
within 1%, and peaks are linear in the chunk frames; clips of 17 and 33 frames get past the
ends' effects. Each regime is probed the first time a plan needs it (seconds) and cached per
architecture, direction and dtype; a plan costs milliseconds after that.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from .engine import decode_latents, decoder_parts, encode_moments, encoder_parts
from .memory import FusedAttentionOnMeta, PeakMemory
from .plan import MIN_ENCODE_FRAMES, InferencePlan

PROBE = 64  # side of the untiled probes' frames, in video pixels
FRAMES = (17, 33)  # probe clip lengths, in video frames (1 + 4k; shorter ones end too soon)
LOCKSTEP_PROBE = ((256, 256), 128)  # frame (height, width) and tile side: 2 x 2 tiles
SEQUENTIAL_PROBE = ((256, 512), 256)  # 1 x 2 tiles (decoder halos are ~40 px)
WIDE = 8  # the whole-frame phase is probed on a frame this many times wider (1 x 16 tiles)
_CACHE: dict[tuple, PlanCosts] = {}


def plan_costs(network: nn.Module, direction: str) -> PlanCosts:
    """The (cached) costs of ``network``, the encoder (``direction="encode"``) or the decoder."""
    dtype = next(network.parameters()).dtype
    key = (direction, dtype, repr(network))
    if key not in _CACHE:
        _CACHE[key] = PlanCosts(network, direction)
    return _CACHE[key]


def _meta_copy(network: nn.Module) -> nn.Module:
    """``network`` with its parameters and buffers on ``meta`` (nothing copied), in eval mode
    (unseen by the caller's meters)."""
    with _disable_current_modes():
        memo = {
            id(t): nn.Parameter(t.to("meta"), False)
            if isinstance(t, nn.Parameter)
            else t.to("meta")
            for t in itertools.chain(network.parameters(), network.buffers())
        }
        return copy.deepcopy(network, memo).eval()


@contextlib.contextmanager
def _isolated() -> Iterator[PeakMemory]:
    """A meter of its own for a probe, unseen by the caller's meters (a plan made inside one)."""
    with _disable_current_modes(), torch.no_grad(), FusedAttentionOnMeta(), PeakMemory() as meter:
        yield meter


class PlanCosts:
    """Peak bytes of one direction of ``network`` under chunks and tiles (``frames``: video
    frames, chunks in video frames too, ``pixels``: video pixels per frame)."""

    def __init__(self, network: nn.Module, direction: str):
        self.direction = direction
        self.network = _meta_copy(network)
        self.dtype = next(network.parameters()).dtype
        levels = len(network.down if direction == "encode" else network.up)
        self.scale = 2 ** (levels - 1)  # video pixels per latent pixel, along a side

    def _run(self, frames: int, size: tuple[int, int], plan: InferencePlan | None) -> int:
        """Peak bytes of one call on a ``frames x height x width`` clip under ``plan``
        (``None``: the head alone, its input counted)."""
        net, meta = self.network, dict(device="meta", dtype=self.dtype)
        latent = (1 + (frames - 1) // 4, size[0] // self.scale, size[1] // self.scale)
        channels = net.conv_in.in_channels
        if plan is None:
            if self.direction == "encode":
                channels = net.norm_out.num_channels
            with _isolated() as meter:
                net.head(torch.empty(1, channels, *latent, **meta))
            return meter.peak_bytes
        if self.direction == "encode":
            x = torch.empty(1, channels, frames, *size, **meta)
            run = functools.partial(encode_moments, net, x, plan)
        else:
            z = torch.empty(1, channels, *latent, **meta)
            run = functools.partial(decode_latents, net, z, plan)
        with _isolated() as meter:
            run()
        return meter.peak_bytes

    def _plan(self, chunk_frames: int, tile: int | None = None, order: str = "lockstep"):
        """The plan of ``chunk_frames`` video frames per chunk (a multiple of 4)."""
        return InferencePlan(chunk_frames, chunk_frames // 4, tile, tile, tile_order=order)

    @functools.cached_property
    def chunked(self) -> tuple[float, float, float]:
        """Bytes per pixel of the untiled trunk: fixed (caches), per chunk frame, per clip frame."""
        (short, long), size, c = FRAMES, (PROBE, PROBE), MIN_ENCODE_FRAMES
        base = self._run(short, size, self._plan(c)) / PROBE**2
        peak = self._run(long, size, self._plan(c)) / PROBE**2
        per_chunk = (self._run(long, size, self._plan(2 * c)) / PROBE**2 - peak) / c
        per_clip = (peak - base) / (long - short)
        return peak - c * per_chunk - long * per_clip, per_chunk, per_clip

    @functools.cached_property
    def head(self) -> float:
        """Bytes per pixel and clip frame of the head on the whole clip."""
        return self._run(FRAMES[0], (PROBE, PROBE), None) / (FRAMES[0] * PROBE**2)

    @functools.cached_property
    def lockstep(self) -> tuple[float, float]:
        """With tiles in lockstep: bytes per padded tile pixel (summed over the tiles: mostly
        their caches) at the smallest chunks, and per encoder chunk frame beyond them, per pixel
        of the largest padded tile."""
        (size, tile), frames, c = LOCKSTEP_PROBE, FRAMES[0], MIN_ENCODE_FRAMES
        areas = self.padded_areas(*size, tile)
        clip = self.chunked[2] * frames * size[0] * size[1]
        peak = self._run(frames, size, self._plan(c, tile))
        per_chunk = 0.0
        if self.direction == "encode":
            per_chunk = (self._run(frames, size, self._plan(2 * c, tile)) - peak) / c / max(areas)
        return (peak - clip) / sum(areas), per_chunk

    @functools.cached_property
    def sequential(self) -> tuple[float, float, float]:
        """With tiles one at a time: bytes per pixel and clip frame (the clip kept between the
        trunk's parts), per pixel of the largest padded tile (while tiles run) and per pixel
        (while the other part runs on whole frames, measured on a frame of many tiles)."""
        (size, tile), (short, long) = SEQUENTIAL_PROBE, FRAMES
        plan = self._plan(MIN_ENCODE_FRAMES, tile, "sequential")
        base, peak = (self._run(frames, size, plan) for frames in (short, long))
        per_clip = (peak - base) / (long - short) / (size[0] * size[1])
        tiles = (base - per_clip * short * size[0] * size[1]) / max(self.padded_areas(*size, tile))
        wide = (size[0], WIDE * size[1])
        frame = self._run(short, wide, plan) / (wide[0] * wide[1]) - per_clip * short
        return per_clip, tiles, frame

    def padded_areas(self, height: int, width: int, tile: int) -> list[int]:
        """Video pixels of each ``tile``-px tile with its halo, as the engine cuts the frame."""
        parts = (encoder_parts if self.direction == "encode" else decoder_parts)(
            self.network, height, width, (tile, tile), InferencePlan.tile_levels
        )
        for _, tiles, (num, _) in parts:
            if tiles:
                return [
                    num**2
                    * (t.padded[0].stop - t.padded[0].start)
                    * (t.padded[1].stop - t.padded[1].start)
                    for t in tiles
                ]
        return [height * width]

    def _head_phase(self, frames: int, pixels: int, trunk_phase: float) -> float:
        """The peak: the trunk's phase or the head's on the whole clip, whichever is higher."""
        return max(trunk_phase, self.head * frames * pixels)

    def chunked_peak(self, shape: tuple[int, int, int], chunk_frames: int) -> float:
        """Peak bytes on a ``(frames, height, width)`` video, ``chunk_frames`` per chunk."""
        frames, height, width = shape
        fixed, per_chunk, per_clip = self.chunked
        trunk = (fixed + per_chunk * chunk_frames + per_clip * frames) * height * width
        return self._head_phase(frames, height * width, trunk)

    def lockstep_peak(self, shape: tuple[int, int, int], tile: int, chunk_frames: int) -> float:
        """Peak bytes with ``tile``-px tiles in lockstep, ``chunk_frames`` per encoder chunk."""
        frames, height, width = shape
        per_tile_pixel, per_chunk = self.lockstep
        areas = self.padded_areas(height, width, tile)
        longer = per_chunk * max(areas) * (chunk_frames - MIN_ENCODE_FRAMES)
        clip = self.chunked[2] * frames * height * width
        return self._head_phase(frames, height * width, per_tile_pixel * sum(areas) + longer + clip)

    def sequential_peak(self, shape: tuple[int, int, int], tile: int) -> float:
        """Peak bytes with ``tile``-px tiles one at a time, the smallest chunks."""
        frames, height, width = shape
        per_clip, per_tile_pixel, per_pixel = self.sequential
        tiles = per_tile_pixel * max(self.padded_areas(height, width, tile))
        trunk = max(tiles, per_pixel * height * width) + per_clip * frames * height * width
        return self._head_phase(frames, height * width, trunk)
