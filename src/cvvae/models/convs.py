"""The CV-VAE's convolutions: explicit padding, 3D convolutions, the per-frame 2D convolution.

All tensors are video feature maps ``(B, C, T, H, W)``. Two padding conventions exist in the
released checkpoints and are selected with ``padding_mode``:

- ``"zeros"`` (SD 2.1 flavour, LDM code): spatial zero padding; causal convolutions repeat the
  first frame in time; the decoder's 3D convolutions zero-pad in time, except the temporal
  upsampler, which repeats the edge frames.
- ``"replicate"`` (SD3 flavour, diffusers code): every 3D convolution repeats edge values in space
  and time.

The per-frame 2D convolution of each ResNet block always zero-pads, in both flavours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .layers import ChunkRunner

PADDING_MODES = ("zeros", "replicate")


@dataclass(frozen=True)
class Padding:
    """Explicit padding of a 3D convolution input.

    ``space`` is ``(left, right, top, bottom)``; ``time`` is ``(before, after)``.
    Modes are ``"zeros"`` or ``"replicate"``.
    """

    space: tuple[int, int, int, int]
    space_mode: str
    time: tuple[int, int]
    time_mode: str


def causal_padding(padding_mode: str) -> Padding:
    """Padding of a causal 3x3x3 convolution: two past frames made by repeating the first."""
    return Padding((1, 1, 1, 1), padding_mode, (2, 0), "replicate")


def centered_padding(padding_mode: str) -> Padding:
    """Padding of a non-causal 3x3x3 decoder convolution."""
    return Padding((1, 1, 1, 1), padding_mode, (1, 1), padding_mode)


def downsample_padding(padding_mode: str) -> Padding:
    """Padding of the strided encoder downsampler (LDM pads right/bottom only)."""
    space = (0, 1, 0, 1) if padding_mode == "zeros" else (1, 1, 1, 1)
    return Padding(space, padding_mode, (2, 0), "replicate")


def upsample_padding(padding_mode: str) -> Padding:
    """Padding of the decoder upsampler convolution (always repeats edge frames in time)."""
    return Padding((1, 1, 1, 1), padding_mode, (1, 1), "replicate")


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """``F.conv3d`` (no dilation, no groups), run by oneDNN for float32 on the CPU.

    PyTorch picks its reference kernel (``slow_conv3d``) for a batch-1 3D convolution whenever
    ``C x T x H`` of the input is at most 20480, which clips, chunks and tiles of common sizes
    often are, and that kernel is much slower than oneDNN on the same input (numbers in
    benchmarks/RESULTS.md). Results agree within
    float32 rounding; gradients flow as through ``F.conv3d``. Under ``torch.compile`` the plain
    ``F.conv3d`` is traced (the oneDNN op has no fake-tensor kernel), and the compiler picks.
    """
    if (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and _onednn_enabled()
    ):
        return torch.ops.aten.mkldnn_convolution(
            x, weight, bias, list(padding), list(stride), [1, 1, 1], 1
        )
    return F.conv3d(x, weight, bias, stride, padding)


def _onednn_enabled() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (zero padding, no dilation or groups) computed by :func:`conv3d`."""

    def _conv_forward(self, x, weight, bias):
        return conv3d(x, weight, bias, self.stride, self.padding)


def _no_frames(x: torch.Tensor, channels: int, scale: int = 1) -> torch.Tensor:
    """An empty clip (zero frames) as a layer would output it; chunked execution passes these."""
    return x.new_empty(x.shape[0], channels, 0, x.shape[3] * scale, x.shape[4] * scale)


class PaddedConv3d(Conv3d):
    """A 3D convolution whose padding is given explicitly (see :class:`Padding`).

    Symmetric spatial zero padding is left to the convolution itself (no copy); the rest is
    applied before it. Time padding is always explicit, so that chunked execution can put
    cached frames in its place. Input ``(B, Cin, T, H, W)``, output ``(B, Cout, T', H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: Padding,
        stride: int | tuple[int, int, int] = 1,
    ):
        left, right, top, bottom = padding.space
        space_in_conv = padding.space_mode == "zeros" and left == right == top == bottom
        # time padding always stays explicit, so chunked execution can replace it with a cache
        conv_padding = (0, top, left) if space_in_conv else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=conv_padding
        )
        self.pad_spec = padding
        self.frames_per_latent = 1  # its output frames per latent frame (set by the network)
        self._pad_space = None if space_in_conv or not any(padding.space) else padding.space
        self._pad_time = padding.time if any(padding.time) else None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the padding that the convolution does not do itself."""
        spec = self.pad_spec
        if self._pad_space and self._pad_time and spec.space_mode == spec.time_mode == "replicate":
            return F.pad(x, (*self._pad_space, *self._pad_time), mode="replicate")
        if self._pad_time:
            x = self.pad_time(x, *self._pad_time)
        return self.pad_space(x)

    def pad_time(self, x: torch.Tensor, before: int, after: int) -> torch.Tensor:
        """Pad ``before``/``after`` frames in this conv's time mode (see :meth:`time_pad_frames`)."""
        if not (before or after):
            return x
        parts = [
            self.time_pad_frames(x[:, :, :1], before),
            x,
            self.time_pad_frames(x[:, :, -1:], after),
        ]
        return torch.cat([part for part in parts if part.shape[2]], dim=2)

    def time_pad_frames(self, edge: torch.Tensor, frames: int) -> torch.Tensor:
        """``frames`` padding frames next to the edge frame ``edge`` ``(B, C, 1, H, W)``, in this
        conv's time mode (a broadcast view, copied only when concatenated)."""
        shape = (edge.shape[0], edge.shape[1], frames, *edge.shape[3:])
        if self.pad_spec.time_mode == "replicate":
            return edge.expand(shape)
        return edge.new_zeros(()).expand(shape)

    def pad_space(self, x: torch.Tensor) -> torch.Tensor:
        if not self._pad_space:
            return x
        if self.pad_spec.space_mode == "zeros":
            return F.pad(x, self._pad_space)
        return F.pad(x, (*self._pad_space, 0, 0), mode="replicate")

    @property
    def streams_time(self) -> bool:
        """Whether chunked execution must carry frames between chunks for this conv."""
        return self.kernel_size[0] > 1 or self.stride[0] > 1

    def conv_valid_time(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution over frames that are already time-padded (space padded here)."""
        return super().forward(self.pad_space(x))

    def forward(self, x: torch.Tensor, stream: ChunkRunner | None = None) -> torch.Tensor:
        if stream is not None and self.streams_time:
            return stream.conv(self, x)
        return super().forward(self.pad(x))


class FrameConv2d(nn.Module):
    """A 3x3 2D convolution applied to every frame (zero padding), stored as a 2D kernel.

    Implemented as a 3D convolution with a ``(1, 3, 3)`` kernel view, so no reshaping of the
    video is needed. ``(B, Cin, T, H, W) -> (B, Cout, T, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels))
        reference = nn.Conv2d(in_channels, out_channels, 3)
        with torch.no_grad():
            self.weight.copy_(reference.weight)
            self.bias.copy_(reference.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 0:
            return _no_frames(x, self.weight.shape[0])
        return conv3d(x, self.weight.unsqueeze(2), self.bias, padding=(0, 1, 1))
