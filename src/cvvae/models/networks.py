"""The CV-VAE encoder and decoder networks (one implementation for both released flavours).

Encoder level ``i`` halves H and W (all levels but the last) and halves time at levels 0 and 2;
the decoder mirrors it, doubling time at levels 1 and 3. With four levels a clip of
``T = 1 + 4k`` frames maps to ``1 + k`` latent frames, and ``H x W`` to ``H/8 x W/8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .convs import PaddedConv3d, causal_padding, centered_padding
from .layers import ChunkRunner, Downsample, MidAttention, ResnetBlock, Upsample, VideoGroupNorm


def encoder_level_halves_time(level: int, num_levels: int) -> bool:
    """Whether encoder level ``level`` downsamples time (even levels that have a downsampler)."""
    return level % 2 == 0 and level < num_levels - 1


def decoder_level_doubles_time(level: int) -> bool:
    """Whether decoder level ``level`` (LDM numbering, 0 = full resolution) upsamples time."""
    return level % 2 == 1


class _MidBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        conv_padding,
        groups: int,
        eps: float,
        dropout: float,
        attention: bool,
        temporal_attention: bool,
    ):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, conv_padding, groups, eps, dropout)
        self.attn_1 = MidAttention(channels, groups, eps, temporal_attention) if attention else None
        self.block_2 = ResnetBlock(channels, channels, conv_padding, groups, eps, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


def _run(module: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint:
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


class Encoder(nn.Module):
    """Causal video encoder: ``(B, in_channels, T, H, W) -> (B, 2 * latent_channels, t, h, w)``
    (posterior mean and log-variance concatenated on channels)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        norm_eps: float,
        padding_mode: str,
        mid_attention: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        pad = causal_padding(padding_mode)
        num_levels = len(block_out_channels)
        self.conv_in = PaddedConv3d(in_channels, block_out_channels[0], 3, pad)
        self.down = nn.ModuleList()
        channels = block_out_channels[0]
        for level, out_channels in enumerate(block_out_channels):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(layers_per_block):
                stage.block.append(
                    ResnetBlock(channels, out_channels, pad, norm_num_groups, norm_eps, dropout)
                )
                channels = out_channels
            if level < num_levels - 1:
                stage.downsample = Downsample(
                    channels, encoder_level_halves_time(level, num_levels), padding_mode
                )
            self.down.append(stage)
        self.mid = _MidBlock(
            channels, pad, norm_num_groups, norm_eps, dropout, mid_attention, False
        )
        self.norm_out = VideoGroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.conv_out = PaddedConv3d(channels, 2 * latent_channels, 3, pad)
        self.gradient_checkpointing = False
        rate = 4  # frames per latent frame, for chunked execution's per-call caps
        self.conv_in.frames_per_latent = rate
        for level, stage in enumerate(self.down):
            for block in stage.block:
                block.conv1.frames_per_latent = rate
            if hasattr(stage, "downsample"):
                rate //= 2 if encoder_level_halves_time(level, num_levels) else 1
                stage.downsample.conv.frames_per_latent = rate

    def trunk(
        self, x: torch.Tensor, stream: ChunkRunner | None = None, levels: range | None = None
    ) -> torch.Tensor:
        """Full-resolution part: ``(B, 3, T, H, W) -> (B, C_top, t, H/8, W/8)``; local in time
        and space (all but its GroupNorm statistics), so it can run in chunks and tiles.

        ``levels`` (default all) runs only those resolution levels, in order: level ``i``
        is its ResNet blocks at ``1 / 2**i`` of the input size and its downsampler (level 0
        starts with the input conv), so ``trunk(trunk(x, levels=range(0, s)), levels=range(s, L))``
        is the whole trunk.
        """
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled() and stream is None
        levels = range(len(self.down)) if levels is None else levels
        if 0 in levels:
            x = self.conv_in(x, stream)
        for level in levels:
            stage = self.down[level]
            for block in stage.block:
                x = _run(block, x, use_ckpt) if stream is None else block(x, stream)
            if hasattr(stage, "downsample"):
                x = stage.downsample(x, stream)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Latent-resolution part (mid block with attention, output conv) on the whole clip."""
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        x = _run(self.mid, x, use_ckpt)
        return self.conv_out(F.silu(self.norm_out(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class Decoder(nn.Module):
    """Non-causal video decoder: ``(B, latent_channels, t, h, w) -> (B, out_channels, T, H, W)``
    with ``T = 1 + 4 (t - 1)`` for four levels."""

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        norm_eps: float,
        padding_mode: str,
        mid_attention: bool,
        temporal_attention: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        pad = centered_padding(padding_mode)
        channels = block_out_channels[-1]
        self.conv_in = PaddedConv3d(latent_channels, channels, 3, pad)
        self.mid = _MidBlock(
            channels, pad, norm_num_groups, norm_eps, dropout, mid_attention, temporal_attention
        )
        stages = []
        for level in reversed(range(len(block_out_channels))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                stage.block.append(
                    ResnetBlock(
                        channels, block_out_channels[level], pad, norm_num_groups, norm_eps, dropout
                    )
                )
                channels = block_out_channels[level]
            if level > 0:
                stage.upsample = Upsample(channels, decoder_level_doubles_time(level), padding_mode)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = VideoGroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.conv_out = PaddedConv3d(channels, out_channels, 3, pad)
        self.gradient_checkpointing = False
        rate = 1  # frames per latent frame, for chunked execution's per-call caps
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                block.conv1.frames_per_latent = rate
            if hasattr(stage, "upsample"):
                stage.upsample.conv.frames_per_latent = rate
                rate *= stage.upsample.time_factor
        self.conv_out.frames_per_latent = rate

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Latent-resolution part (input conv, mid block with attention) on the whole clip."""
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        return _run(self.mid, self.conv_in(z), use_ckpt)

    def trunk(
        self, x: torch.Tensor, stream: ChunkRunner | None = None, levels: range | None = None
    ) -> torch.Tensor:
        """Upsampling part to pixels, local in time and space, so it can run in chunks and tiles.

        ``levels`` (default all) runs only those resolution levels, coarsest first: level ``i``
        is the upsampler into it from level ``i + 1`` (if any) and its ResNet blocks at
        ``1 / 2**i`` of the output size (level 0 ends with the output conv), so
        ``trunk(trunk(h, levels=range(s, L)), levels=range(0, s))`` is the whole trunk.
        """
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled() and stream is None
        levels = range(len(self.up)) if levels is None else levels
        for level in sorted(levels, reverse=True):
            if level + 1 < len(self.up):
                x = self.up[level + 1].upsample(x, stream)
            for block in self.up[level].block:
                x = _run(block, x, use_ckpt) if stream is None else block(x, stream)
        if 0 in levels:
            x = self.conv_out(
                F.silu(self.norm_out(x)) if stream is None else stream.norm_silu_(self.norm_out, x),
                stream,
            )
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.head(z))
