"""LPIPS (VGG16 variant) without torchvision: our own VGG16 feature stack plus the linear heads.

:func:`load_lpips` takes one local file, either

- a combined safetensors file with keys ``vgg.convs.{i}.weight|bias`` (the 13 VGG16 conv layers
  in order) and ``lins.{k}.weight`` (the 5 linear heads, shape ``(1, C_k, 1, 1)``), or
- torchvision's ``vgg16`` ImageNet weights alone (``features.{n}.weight|bias``, as
  ``vgg16-397923af.pth`` or safetensors); the linear heads then come from the installed
  ``lpips`` package (``pip install lpips``), which ships them as ``weights/v0.1/vgg.pth``.

``.pth`` files are read with ``torch.load(weights_only=True)``: tensors only, no code.
:func:`convert_lpips_weights` builds the combined tensors from the two parts; see
``docs/training.md``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cvvae.errors import UserInputError

# VGG16 "D": conv widths per stage; each stage ends with a feature tap, then max-pooling.
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Index of each conv in torchvision's ``vgg16().features`` Sequential.
_TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """VGG16 conv stack returning the 5 ReLU taps ``relu1_2 .. relu5_3`` for ``(N, 3, H, W)``."""

    def __init__(self):
        super().__init__()
        convs, in_ch = [], 3
        for stage in _STAGES:
            for out_ch in stage:
                convs.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, layer = [], 0
        for stage_index, stage in enumerate(_STAGES):
            if stage_index:
                x = F.max_pool2d(x, 2)
            for _ in stage:
                x = F.relu(self.convs[layer](x))
                layer += 1
            taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Learned perceptual distance. ``forward(a, b)``: two ``(N, 3, H, W)`` in [-1, 1] -> ``(N,)``."""

    def __init__(self):
        super().__init__()
        self.vgg = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(stage[-1], 1, 1, bias=False) for stage in _STAGES)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feats_a = self.vgg((a - self.shift) / self.scale)
        feats_b = self.vgg((b - self.shift) / self.scale)
        total = 0
        for lin, fa, fb in zip(self.lins, feats_a, feats_b, strict=True):
            diff = (_unit_channels(fa) - _unit_channels(fb)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x**2).sum(dim=1, keepdim=True) + eps) + eps)


def load_lpips(path: str | Path) -> LPIPS:
    """Frozen, eval-mode LPIPS from a combined file, or from VGG16 backbone weights plus the
    heads of the installed ``lpips`` package (see the module docstring)."""
    path = Path(path)
    state = read_weights(path)
    if any(k.startswith("features.") for k in state):
        state = convert_lpips_weights(state, read_weights(package_heads_path(), "LPIPS heads"))
    model = LPIPS()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserInputError(
            f"LPIPS weights {path}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        )
    return model.requires_grad_(False).eval()


def read_weights(path: Path, what: str = "LPIPS weights") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``torch.save`` file read with
    ``weights_only=True``; UserInputError naming the file otherwise."""
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # both loaders raise several types for damaged or refused files
        raise UserInputError(
            f"{what}: not a safetensors or plain tensor file (nothing else is loaded): {path}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"{what}: not a state dict of tensors: {path}")
    return state


def package_heads_path() -> Path:
    """The VGG linear heads shipped by the installed ``lpips`` package (not imported: it needs
    torchvision). Raises UserInputError if it is not installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(
            "loss.lpips_path holds the VGG16 backbone only; its linear heads come from the "
            "lpips package, which is not installed (pip install lpips --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"


def convert_lpips_weights(
    vgg_state: dict[str, torch.Tensor], lin_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our LPIPS state dict from torchvision ``vgg16`` weights and LPIPS ``vgg.pth`` heads.

    ``vgg_state`` keys ``features.{n}.weight|bias`` (extra keys such as ``classifier.*`` are
    ignored); ``lin_state`` keys ``lin{k}.model.1.weight``.
    """
    out = {}
    for i, n in enumerate(_TORCHVISION_CONV_INDEX):
        for kind in ("weight", "bias"):
            out[f"vgg.convs.{i}.{kind}"] = _take(vgg_state, f"features.{n}.{kind}")
    for k in range(len(_STAGES)):
        out[f"lins.{k}.weight"] = _take(lin_state, f"lin{k}.model.1.weight")
    return out


def _take(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise UserInputError(f"LPIPS weights: missing key {key}")
    return state[key].float().contiguous()


def save_lpips_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a converted LPIPS state dict as safetensors (checked by building the model)."""
    LPIPS().load_state_dict(state, strict=True)
    save_file(state, str(path))
