"""3D PatchGAN discriminator and the hinge GAN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Conv3d


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: ``(B, 3, T, H, W)`` -> patch logits ``(B, 1, T', H / 2**layers, W / 2**layers)``.

    ``layers`` stride-2 convs (3x3x3, stride 2 in time and space; a ``T = 1`` image stays one
    frame), each but the first followed by GroupNorm and LeakyReLU(0.2), then a stride-1 conv
    block and a 1-channel output conv. Widths double per layer from ``channels`` up to 8x.
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, layers: int = 3, norm_groups: int = 32
    ):
        super().__init__()
        blocks: list[nn.Module] = [
            Conv3d(in_channels, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for n in range(1, layers):
            out = channels * min(2**n, 8)
            blocks += [
                Conv3d(width, out, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(norm_groups, out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        out = channels * min(2**layers, 8)
        blocks += [
            Conv3d(width, out, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups, out),
            nn.LeakyReLU(0.2),
            Conv3d(out, 1, 3, padding=1),
        ]
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss ``-mean(logits_fake)``."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """``|grad nll| / (|grad g_loss| + 1e-4)`` at the decoder's last layer, clamped, detached.

    Both losses must still hold their graphs (they are differentiated with ``retain_graph``).
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
