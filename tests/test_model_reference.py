"""Parity with the released implementation's reference vectors, and the released layouts."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cvvae import CVVAE
from cvvae.models.checkpoint import config_from_released

FLAVOURS = ["cvvae_sd21_tiny", "cvvae_sd3_tiny"]
CASES = ["video17", "batch2_video9", "image", "video33"]
TOL = 1e-4


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request, reference_dir):
    folder = reference_dir / request.param
    model = CVVAE.from_pretrained(folder)
    return model, load_file(folder / "reference_io.safetensors")


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_matches_reference(flavour, case):
    model, ref = flavour
    x = ref[f"{case}.input"]
    posterior = model.encode(x).latent_dist
    decoded = model.decode(posterior.mean).sample
    if x.dim() == 4:  # image mode: 4-D latents and output; the reference keeps a time axis of 1
        assert posterior.mean.dim() == 4 and decoded.shape == x.shape
        moments, decoded = posterior.parameters.unsqueeze(2), decoded.unsqueeze(2)
    else:
        moments = posterior.parameters
    assert moments.shape == ref[f"{case}.moments"].shape
    assert (moments - ref[f"{case}.moments"]).abs().max() < TOL
    assert decoded.shape == ref[f"{case}.decoded"].shape
    assert (decoded - ref[f"{case}.decoded"]).abs().max() < TOL


@pytest.mark.parametrize("name", ["cvvae_sd21_full", "cvvae_sd3_full"])
def test_released_layouts(reference_dir, name):
    layout = json.loads((reference_dir / "released_state_dict_layouts.json").read_text())[name]
    class_name = "CVVAEModel" if "sd21" in name else "CVVAESD3Model"
    config = config_from_released({"_class_name": class_name, **layout["config"]}, name)
    with torch.device("meta"):
        model = CVVAE(**config)
    got = {k: list(v.shape) for k, v in model.layout_state_dict().items()}
    assert got == layout["state_dict"]


def test_released_sd3_gets_sd3_latent_normalisation(reference_dir):
    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd3_tiny")
    assert model.config.latent_channels == 16
    z = torch.randn(1, 16, 2, 3, 3)
    assert torch.allclose(model.unscale_latents(model.scale_latents(z)), z, atol=1e-6)
    assert model.config.scaling_factor == pytest.approx(1.5305)
