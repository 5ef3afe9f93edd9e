"""Building blocks of the CV-VAE: ResNet blocks, resampling, attention, and what chunked
execution must provide to them (:class:`ChunkRunner`). The convolutions are in :mod:`.convs`.

All tensors are video feature maps ``(B, C, T, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .convs import (
    PADDING_MODES,
    Conv3d,
    FrameConv2d,
    PaddedConv3d,
    Padding,
    _no_frames,
    conv3d,
    downsample_padding,
    upsample_padding,
)

__all__ = ["PADDING_MODES", "ChunkRunner", "Conv3d", "PaddedConv3d", "conv3d"]


class ChunkRunner(Protocol):
    """What the layers need from chunked execution (the network runs a few frames per call).

    Layers take one as ``stream`` (``None``: the ordinary full pass) and leave to it what
    chunking changes: convolutions over time (which keep the frames not yet consumed between
    calls) and GroupNorm statistics (which span the whole clip). For that, a
    :class:`PaddedConv3d` exposes its padding (``pad_spec``, ``time_pad_frames``), its
    convolution over already-padded frames (``conv_valid_time``) and ``frames_per_latent``.
    """

    def conv(
        self,
        conv: PaddedConv3d,
        x: torch.Tensor,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``conv`` over the frames available so far (``prepare``: a per-frame map first)."""
        ...

    def block_conv(
        self, conv: PaddedConv3d, norm: nn.GroupNorm, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv(silu(norm(x)))`` over the frames available so far, and the frames of ``x``
        its outputs line up with."""
        ...

    def norm_silu_(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        """``silu(norm(x))`` with clip-wide statistics, in place."""
        ...

    def is_first_output(self, owner: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``x`` is ``owner``'s first non-empty output of the pass."""
        ...


class VideoGroupNorm(nn.GroupNorm):
    """GroupNorm over channels-in-group x T x H x W; under chunked execution the
    :class:`ChunkRunner` normalises with its statistics instead."""


class ResnetBlock(nn.Module):
    """Pre-norm ResNet block, "half 3D": a 3D first conv and a per-frame 2D second conv.

    GroupNorm statistics span channels-in-group x T x H x W (the whole clip).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        conv1_padding: Padding,
        norm_num_groups: int,
        norm_eps: float,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = VideoGroupNorm(norm_num_groups, in_channels, eps=norm_eps)
        self.conv1 = PaddedConv3d(in_channels, out_channels, 3, conv1_padding)
        self.norm2 = VideoGroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = FrameConv2d(out_channels, out_channels)
        self.nin_shortcut = (
            Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, stream: ChunkRunner | None = None) -> torch.Tensor:
        if stream is None:
            h, skip = self.conv1(F.silu(self.norm1(x))), x
        else:  # chunked: the non-causal conv1 lags behind, the skip is lined up with it
            h, skip = stream.block_conv(self.conv1, self.norm1, x)
        if stream is None:
            h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        else:  # h is this block's own: normalised in place
            h = self.conv2(self.dropout(stream.norm_silu_(self.norm2, h)))
        if self.nin_shortcut is not None:
            skip = (
                self.nin_shortcut(skip)
                if skip.shape[2]
                else _no_frames(skip, self.nin_shortcut.out_channels)
            )
        return skip + h


class Downsample(nn.Module):
    """Strided 3x3x3 causal conv: halves H and W, and T (as ``1 + (T - 1) // 2``) if ``time``."""

    def __init__(self, channels: int, time: bool, padding_mode: str):
        super().__init__()
        stride = (2, 2, 2) if time else (1, 2, 2)
        self.conv = PaddedConv3d(channels, channels, 3, downsample_padding(padding_mode), stride)

    def forward(self, x: torch.Tensor, stream: ChunkRunner | None = None) -> torch.Tensor:
        return self.conv(x, stream)


class Upsample(nn.Module):
    """Nearest 2x spatial upsampling then a 3x3x3 conv; with ``time`` the conv emits 2x channels
    that become two frames each, and the first frame is dropped: ``T -> 2T - 1``."""

    def __init__(self, channels: int, time: bool, padding_mode: str):
        super().__init__()
        self.time_factor = 2 if time else 1
        self.conv = PaddedConv3d(
            channels, channels * self.time_factor, 3, upsample_padding(padding_mode)
        )

    @staticmethod
    def _double_size(x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 0:
            return _no_frames(x, x.shape[1], scale=2)
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")

    def forward(self, x: torch.Tensor, stream: ChunkRunner | None = None) -> torch.Tensor:
        if stream is None:
            x = self.conv(self._double_size(x))
        else:  # the stream caches frames before the (per-frame) upsampling
            x = stream.conv(self.conv, x, prepare=self._double_size)
        if self.time_factor == 1:
            return x
        b, c2, t, h, w = x.shape
        n = self.time_factor
        x = (
            x.view(b, n, c2 // n, t, h, w)
            .permute(0, 2, 3, 1, 4, 5)
            .reshape(b, c2 // n, t * n, h, w)
        )
        if stream is None or stream.is_first_output(self, x):
            x = x[:, :, 1:]
        return x


def _group_norm_per_frame(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with statistics per frame: ``(B, C, T, H, W)`` -> same shape."""
    b, c, t, h, w = x.shape
    g = norm.num_groups
    grouped = x.view(b, g, c // g, t, h * w).float()
    var, mean = torch.var_mean(grouped, dim=(2, 4), keepdim=True, correction=0)
    normed = ((grouped - mean) * torch.rsqrt(var + norm.eps)).view(b, c, t, h, w).to(x.dtype)
    return normed * norm.weight.view(1, c, 1, 1, 1) + norm.bias.view(1, c, 1, 1, 1)


def _single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention with one head over ``(N, L, C)`` tokens, scale ``C ** -0.5``."""
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


class MidAttention(nn.Module):
    """Mid-block self-attention, single head.

    Spatial attention runs per frame (GroupNorm statistics per frame too). With ``temporal``
    (SD 2.1 decoder), its output then goes through attention over time at every pixel
    (LayerNorm, Linear q/k/v, Linear out) before the residual is added:
    ``x + temporal(spatial(x))``; otherwise ``x + spatial(x)``.
    """

    def __init__(self, channels: int, norm_num_groups: int, norm_eps: float, temporal: bool):
        super().__init__()
        self.norm = VideoGroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        self.temporal = temporal
        if temporal:
            self.norm_t = nn.LayerNorm(channels, eps=norm_eps)
            self.q_t = nn.Linear(channels, channels)
            self.k_t = nn.Linear(channels, channels)
            self.v_t = nn.Linear(channels, channels)
            self.proj_out_t = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = _group_norm_per_frame(x, self.norm).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        out = self.proj_out(_single_head_attention(self.q(tokens), self.k(tokens), self.v(tokens)))
        if self.temporal:
            seq = self.norm_t(out.view(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c))
            out = self.proj_out_t(
                _single_head_attention(self.q_t(seq), self.k_t(seq), self.v_t(seq))
            )
            out = out.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        else:
            out = out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + out
