"""Small models and helpers that several test files build the same way."""

import importlib.util
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from cvvae.inference.state import StreamState


def tiny_image_vae(seed: int = 0, latent_channels: int = 4) -> AutoencoderKL:
    """A seeded 4-level (8x) diffusers image VAE with 8-16 channels, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()


def clip_statistics(trunk, x: torch.Tensor) -> dict:
    """The exact clip-wide GroupNorm statistics of ``trunk`` on ``x`` (one pass, one chunk)."""
    state = StreamState("running")
    state.begin_call(final=True)
    trunk(x, state)
    return state.clip_stats()


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (registered, so its dataclasses resolve)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
