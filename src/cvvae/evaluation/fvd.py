"""Fréchet video distance (FVD): an I3D network, its weights file, and the Fréchet distance.

FVD (Unterthiner et al. 2018) fits a Gaussian to I3D features of a set of reference clips and
one to the features of the generated (here: reconstructed) clips, and reports the Fréchet
distance between the two. Here the features are the Kinetics-400 I3D's logits averaged over
time (the original definition), of every clip resized to 224 x 224, pixels in [-1, 1].

The network is the Inception-v1 I3D of Carreira & Zisserman (2017), written here without
torchvision. Weights are one **safetensors** file (never a pickle or TorchScript file: loading
runs no code) whose keys are those of the common PyTorch port's ``InceptionI3d`` state dict,
``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_var``, ..., ``logits.conv3d.bias``
(``num_batches_tracked`` keys may be absent). See ``docs/evaluation.md`` for making that file.

``width_divisor`` divides every channel count; the real network has 1, larger values make
the small random networks of the tests. It is read from the file's first convolution.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from cvvae.errors import UserInputError

I3D_SIZE = 224  # frames are resized to I3D_SIZE x I3D_SIZE, the size I3D was trained at
CLIP_BATCH = 4  # clips per I3D call

# (name, in channels, branch widths b0, b1a, b1b, b2a, b2b, b3b) of the Inception modules
_MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
# max-pooling (kernel, stride) before the named layer; all use TensorFlow's "SAME" padding
_POOL_BEFORE = {
    "Conv3d_2b_1x1": ((1, 3, 3), (1, 2, 2)),
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),
}


def _same_padding(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Zero-pad ``(N, C, T, H, W)`` as TensorFlow's "SAME": output size ``ceil(size / stride)``,
    the odd pixel of padding at the end."""
    pad = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d (eps 1e-3) + ReLU, "SAME" padding; or with
    ``logits=True`` a biased 1x1x1 convolution alone (the classifier)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_padding(x, self.kernel, self.stride))
        return x if self.bn is None else F.relu(self.bn(x))


class Mixed(nn.Module):
    """Inception module: four branches (1x1; 1x1 then 3x3x3; 1x1 then 3x3x3; 3x3x3 max-pool
    then 1x1) concatenated on channels."""

    def __init__(self, cin: int, widths: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a = Unit3D(cin, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(cin, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3b = Unit3D(cin, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool3d(_same_padding(x, (3, 3, 3), (1, 1, 1)), 3, 1)
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], dim=1
        )


class I3D(nn.Module):
    """Inflated Inception-v1. ``forward(video)``: ``(N, 3, T, H, W)`` in [-1, 1] ->
    ``(N, num_classes)`` logits averaged over time (T >= 1; H, W of 224 as trained).

    Channel counts are the published ones divided by ``width_divisor`` (at least 1 each).
    """

    def __init__(self, num_classes: int = 400, width_divisor: int = 1):
        super().__init__()
        d = width_divisor

        def w(c: int) -> int:
            return max(1, c // d)

        self.Conv3d_1a_7x7 = Unit3D(3, w(64), (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        cin = w(192)
        for name, _, widths in _MIXED:
            widths = tuple(w(c) for c in widths)
            setattr(self, name, Mixed(cin, widths))
            cin = widths[0] + widths[2] + widths[4] + widths[5]
        self.logits = Unit3D(cin, num_classes, logits=True)
        self.layers = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [m[0] for m in _MIXED]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.layers:
            if name in _POOL_BEFORE:
                kernel, stride = _POOL_BEFORE[name]
                x = F.max_pool3d(_same_padding(x, kernel, stride), kernel, stride)
            x = getattr(self, name)(x)
        # average pool 2x7x7 (smaller if the features are), stride 1, no padding; then the
        # classifier and the mean over what is left of time and space
        window = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = self.logits(F.avg_pool3d(x, window, stride=1))
        return x.mean(dim=(2, 3, 4))


def load_i3d(path: str | Path) -> I3D:
    """Frozen, eval-mode I3D from a safetensors file in the layout of the module docstring.

    Raises :class:`UserInputError` naming the file when it is missing, not safetensors, or
    does not fit the network (missing, unexpected or misshaped tensors)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"I3D weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        state = load_file(str(path))
    except Exception:  # safetensors raises several exception types for other files
        raise UserInputError(f"I3D weights are not a readable safetensors file: {path}") from None
    try:
        first = state["Conv3d_1a_7x7.conv3d.weight"].shape[0]
        classes = state["logits.conv3d.weight"].shape[0]
    except KeyError as error:
        raise UserInputError(f"I3D weights have no tensor {error}: {path}") from None
    if first < 1 or 64 % first:
        raise UserInputError(f"I3D weights: first convolution has {first} channels: {path}")
    model = I3D(classes, width_divisor=64 // first)
    expected = set(model.state_dict())
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - keys - optional), sorted(keys - expected)
    if missing or unexpected:
        raise UserInputError(
            f"I3D weights {path}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserInputError(f"I3D weights do not fit the network ({error}): {path}") from None
    return model.requires_grad_(False).eval()


@torch.no_grad()
def i3d_features(model: I3D, clips: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """FVD features of clips ``(3, T, H, W)`` or ``(N, 3, T, H, W)`` in [-1, 1]: each frame
    resized to ``size x size`` (bilinear, antialiased), then ``model`` in float32 on its device.
    Returns float64 CPU features ``(D,)`` or ``(N, D)``."""
    single = clips.ndim == 4
    clips = clips[None] if single else clips
    device = next(model.parameters()).device
    out = []
    for batch in clips.split(CLIP_BATCH):
        n, c, t, h, w = batch.shape
        frames = batch.transpose(1, 2).reshape(n * t, c, h, w).float()
        if (h, w) != (size, size):
            frames = F.interpolate(
                frames, (size, size), mode="bilinear", align_corners=False, antialias=True
            )
        video = frames.reshape(n, t, c, size, size).transpose(1, 2).clamp(-1, 1)
        out.append(model(video.to(device)).double().cpu())
    features = torch.cat(out)
    return features[0] if single else features


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b``
    ``(M, D)`` (mean and unbiased covariance; N, M >= 2):

        |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)),

    computed in float64 with symmetric eigendecompositions: ``tr((S_a S_b)^(1/2))`` is the sum
    of square roots of the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)``.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) features, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if min(len(a), len(b)) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples in each set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(distance.item(), 0.0)
