"""The state of one chunked pass (of one tile): what the layers call under chunked execution.

:class:`StreamState` implements :class:`cvvae.models.layers.ChunkRunner` by combining the
convolution caches (:mod:`.caches`) and the GroupNorm statistics (:mod:`.norms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .caches import ConvCaches
from .norms import Moments, NormStatistics, Stats, as_stats

if TYPE_CHECKING:
    from ..models.convs import PaddedConv3d


class StreamState:
    """Per-pass state of chunked execution (of one tile): conv caches and norm statistics.

    ``stats_mode``: ``"running"``, ``"chunk"`` or ``"frozen"`` (use ``frozen_stats``);
    ``max_latents``: the per-call cap of :class:`~.caches.ConvCaches`; ``totals`` (clip moments
    per norm) may be shared by several states; ``region`` picks the part of an activation whose
    moments count (a tile's own region). Call :meth:`begin_call` before each network call.
    """

    def __init__(
        self,
        stats_mode: str,
        frozen_stats: Stats | None = None,
        max_latents: int | None = None,
        totals: dict[nn.Module, Moments] | None = None,
        region: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.caches = ConvCaches(max_latents)
        self.stats = NormStatistics(stats_mode, frozen_stats, totals, region)

    def begin_call(self, final: bool) -> None:
        """Start one call of the network; ``final``: no new input frames will follow."""
        self.caches.begin_call(final)

    @property
    def upstream_done(self) -> bool:
        """After a call: whether it flushed everything (its output is the last)."""
        return self.caches.upstream_done

    def clip_stats(self) -> Stats:
        """Per-norm ``(mean, var)`` of everything counted in this pass, ``(B, G)`` float64."""
        return as_stats(self.stats.totals)

    # -- what the layers call (cvvae.models.layers.ChunkRunner) ---------------------------
    def conv(
        self,
        conv: PaddedConv3d,
        x: torch.Tensor,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run ``conv`` on the frames now available; keep the unconsumed ones for later.
        ``prepare``, a per-frame map (the upsampler's nearest 2x), is applied to the frames the
        conv reads, so the cache holds them before it (four times smaller)."""
        w = self.caches.window(conv, x)
        return self.caches.run(conv, w.frames if prepare is None else prepare(w.frames), w.n)

    def block_conv(
        self, conv: PaddedConv3d, norm: nn.GroupNorm, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A ResNet block's ``conv(silu(norm(x)))`` on the frames now available, and the frames of
        ``x`` its outputs line up with (the skip). The cache holds ``x`` itself, normalised anew
        on each call, so the skip needs no cache of its own."""
        self.stats.count(norm, x)
        frames, n, lead, tail, offset, own = self.caches.window(conv, x)
        centre = conv.pad_spec.time[0]  # in the window: the frame each output is centred on
        if offset <= centre and centre - offset + n <= x.shape[2]:
            skip = x[:, :, centre - offset : centre - offset + n]  # a view of the caller's
        else:  # from the window, which is normalised in place below when it is our own
            skip = frames[:, :, centre : centre + n]
            skip = skip.clone() if own else skip
        if n:
            frames = F.silu(self.stats.normalise(norm, frames, inplace=own), inplace=True)
            if conv.pad_spec.time_mode == "zeros":  # padding is zeros after the norm
                frames[:, :, :lead] = 0
                frames[:, :, frames.shape[2] - tail :] = 0
        return self.caches.run(conv, frames, n), skip

    def norm_silu_(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        """``silu(norm(x))``, written over ``x`` (the caller's own); counts ``x``'s moments."""
        if x.shape[2] == 0:
            return x
        self.stats.count(norm, x)
        return F.silu(self.stats.normalise(norm, x, inplace=True), inplace=True)

    def is_first_output(self, owner: nn.Module, x: torch.Tensor) -> bool:
        """True exactly once per ``owner``: on its first non-empty output."""
        return self.caches.is_first_output(owner, x)
