"""Explicit caches of the temporal convolutions for chunked execution.

Each temporal convolution keeps the input frames it has not consumed yet and pads only at the
true ends of the clip, so chunking adds no recomputation and no causality restart: with the same
GroupNorm statistics a chunked pass equals the full pass for any chunk size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:  # the engine reads what layers expose; it imports nothing of them at runtime
    from ..models.convs import PaddedConv3d


class Window(NamedTuple):
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


class ConvCaches:
    """The caches of every temporal conv of one pass (of one tile).

    Call :meth:`begin_call` before each call of the network, with ``final`` from the last chunk
    on; a convolution pads the end of the clip once everything before it has flowed.
    ``max_latents`` caps what one convolution emits per call to that many latent frames' worth
    (``conv.frames_per_latent`` each); the rest waits for the next call (at the end of the clip,
    calls with no new frames drain it), so the frames that the non-causal decoder holds back
    never all flow at once.
    """

    def __init__(self, max_latents: int | None = None):
        self.max_latents = max_latents
        self._upstream_done = False
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._padding: dict[nn.Module, tuple[int, int]] = {}  # padding frames at the cache's ends
        self._ended: set[nn.Module] = set()
        self._started: set[nn.Module] = set()

    def begin_call(self, final: bool) -> None:
        """Start one call of the network; ``final``: no new input frames will follow."""
        self._upstream_done = final

    @property
    def upstream_done(self) -> bool:
        """After a call: whether it flushed everything (its output is the last)."""
        return self._upstream_done

    def window(self, conv: PaddedConv3d, x: torch.Tensor) -> Window:
        """What ``conv`` reads in this call; the frames after those consumed become its cache."""
        if conv not in self._pending and x.shape[2] == 0:
            self._upstream_done = False
            return Window(x, 0, 0, 0, 0, False)
        if x.shape[2] == 0 and conv in self._ended and not self._pending[conv].shape[2]:
            return Window(x, 0, 0, 0, 0, False)  # done: everything flowed
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
        if conv in self._ended and n == available:  # the clip's end has flowed: nothing to keep
            kept = 0
        # a copy: a view would pin the whole chunk
        self._pending[conv] = x[:, :, x.shape[2] - kept :].clone()
        self._padding[conv] = (max(0, lead - n * s), min(tail, kept))
        read = (n - 1) * s + k if n else 0
        return Window(
            x[:, :, :read], n, min(lead, read), max(0, read - (x.shape[2] - tail)), offset, own
        )

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
    def run(conv: PaddedConv3d, window: torch.Tensor, n: int) -> torch.Tensor:
        """``conv`` over a window of ``n`` outputs (time-padded already; an empty clip for 0)."""
        if n:
            return conv.conv_valid_time(window)
        left, right, top, bottom = conv.pad_spec.space
        h = (window.shape[3] + top + bottom - conv.kernel_size[1]) // conv.stride[1] + 1
        w = (window.shape[4] + left + right - conv.kernel_size[2]) // conv.stride[2] + 1
        return window.new_empty(window.shape[0], conv.out_channels, 0, h, w)

    def is_first_output(self, owner: nn.Module, x: torch.Tensor) -> bool:
        """True exactly once per ``owner``: on its first non-empty output."""
        if owner in self._started or x.shape[2] == 0:
            return False
        self._started.add(owner)
        return True
