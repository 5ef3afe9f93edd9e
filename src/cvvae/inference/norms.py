"""GroupNorm statistics for chunked execution.

A chunk of a clip cannot see the clip-wide GroupNorm statistics of the network's trunk.
:class:`NormStatistics` counts each norm's moments over what has flowed through it and normalises
with them by mode:

- ``"running"``: each chunk with the statistics of all frames seen so far (one pass);
- ``"chunk"``: each chunk with its own (as the released code's windows do);
- ``"frozen"``: with given clip statistics (the second pass of ``"two_pass"``, whose first pass
  runs ``"running"`` and keeps its totals).

Moments are kept per group in float64 and pooled exactly, so tiles that count their own regions
pool exactly the whole frame's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Stats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # norm -> (mean, var), (B, G)


class Moments:
    """Count, mean and variance of a group's values; ``merge`` pools two sets exactly (Chan)."""

    def __init__(self, count: int, mean: torch.Tensor, var: torch.Tensor):
        self.count, self.mean, self.var = count, mean, var

    @staticmethod
    def of_groups(x: torch.Tensor, groups: int) -> Moments:
        """Moments per group of ``x (B, C, ...)`` (float64 ``(B, groups)``), from float32 sums and
        sums of squares along rows, pooled in float64: faster than ``torch.var_mean`` on the CPU,
        as precise, and no copy of a strided region."""
        b, c = x.shape[:2]
        sums = x.sum(dim=-1, dtype=torch.float32).double().reshape(b, groups, -1).sum(-1)
        squares = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).double().square()
        squares = squares.reshape(b, groups, -1).sum(-1)
        count = x[0, 0].numel() * (c // groups)
        mean = sums / count
        return Moments(count, mean, (squares / count - mean.square()).clamp_min(0))

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = (
            self.var * self.count
            + other.var * other.count
            + delta.square() * (self.count * other.count / n)
        )
        return Moments(n, mean, m2 / n)


class NormStatistics:
    """Per-norm moments of one pass, and normalisation with them (module docstring).

    ``totals`` (clip moments per norm) may be shared by several instances (the tiles of one
    pass); ``region`` picks the part of an activation whose moments count (a tile's own region).
    """

    def __init__(
        self,
        mode: str,
        frozen: Stats | None = None,
        totals: dict[nn.Module, Moments] | None = None,
        region: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.mode = mode
        self.frozen = frozen or {}
        self.totals: dict[nn.Module, Moments] = {} if totals is None else totals
        self.region = region
        self._latest: dict[nn.Module, Moments] = {}  # each norm's moments in its latest call

    def count(self, norm: nn.GroupNorm, x: torch.Tensor) -> None:
        """Add the moments of ``x`` (of its ``region``) per group to the totals (not when the
        statistics are frozen, or ``x`` has no frames)."""
        if self.mode == "frozen" or x.shape[2] == 0:
            return
        moments = Moments.of_groups(x if self.region is None else self.region(x), norm.num_groups)
        total = self.totals.get(norm)
        self.totals[norm] = moments if total is None else total.merge(moments)
        self._latest[norm] = moments

    def normalise(self, norm: nn.GroupNorm, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``norm(x)`` with this mode's statistics, written over ``x`` when ``inplace``."""
        b, c = x.shape[:2]
        g = norm.num_groups
        if self.mode == "frozen":
            mean, var = self.frozen[norm]
        else:
            use = self._latest[norm] if self.mode == "chunk" else self.totals[norm]
            mean, var = use.mean, use.var
        rstd = torch.rsqrt(var + norm.eps)
        scale = norm.weight.double().view(1, g, c // g) * rstd.unsqueeze(-1)
        shift = norm.bias.double().view(1, g, c // g) - mean.unsqueeze(-1) * scale
        view = (b, c) + (1,) * (x.dim() - 2)
        scale, shift = scale.reshape(view).to(x.dtype), shift.reshape(view).to(x.dtype)
        if inplace:
            return x.mul_(scale).add_(shift)
        return torch.addcmul(shift, x, scale)


def as_stats(totals: dict[nn.Module, Moments]) -> Stats:
    """Per-norm ``(mean, var)`` of pooled moments, ``(B, G)`` float64."""
    return {norm: (m.mean, m.var) for norm, m in totals.items()}
