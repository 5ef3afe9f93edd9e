"""Inflation from an image VAE: image mode reproduces it; a static clip gives its latent repeated."""

import pytest
import torch
from builders import tiny_image_vae
from diffusers import AutoencoderKL

from cvvae import CVVAE, inflate_from_image_vae

TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    image_vae = tiny_image_vae()
    return image_vae, inflate_from_image_vae(image_vae)


@torch.no_grad()
def test_image_mode_reproduces_image_vae(pair):
    image_vae, model = pair
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    ref = image_vae.encode(x).latent_dist
    ours = model.encode(x).latent_dist
    assert (ref.mean - ours.mean).abs().max() < TOL
    assert (ref.logvar - ours.logvar).abs().max() < TOL
    assert (image_vae.decode(ref.mean).sample - model.decode(ref.mean).sample).abs().max() < TOL


@torch.no_grad()
def test_static_video_encodes_to_repeated_image_latent(pair):
    image_vae, model = pair
    frame = torch.rand(1, 3, 32, 48) * 2 - 1
    clip = frame.unsqueeze(2).expand(-1, -1, 9, -1, -1)
    latent = model.encode(clip).latent_dist.mean
    image_latent = image_vae.encode(frame).latent_dist.mean
    assert latent.shape == (1, 4, 3, 4, 6)
    assert (latent - image_latent.unsqueeze(2)).abs().max() < TOL
    decoded = model.decode(latent).sample
    expected = image_vae.decode(image_latent).sample.unsqueeze(2).expand_as(decoded)
    assert (decoded - expected).abs().max() < TOL


def test_nonzero_post_quant_bias_is_kept_as_a_layer(pair):
    image_vae, model = pair
    assert image_vae.post_quant_conv.bias.abs().max() > 0
    assert model.config.use_post_quant_conv


@torch.no_grad()
def test_zero_post_quant_bias_folds_into_released_layout():
    image_vae = tiny_image_vae(1)
    image_vae.post_quant_conv.bias.zero_()
    model = inflate_from_image_vae(image_vae)
    assert not model.config.use_post_quant_conv
    assert not any("quant" in k for k in model.state_dict())
    z = torch.randn(1, 4, 4, 6)
    assert (image_vae.decode(z).sample - model.decode(z).sample).abs().max() < TOL


def test_inflated_model_round_trips(tmp_path, pair):
    _, model = pair
    model.save_pretrained(tmp_path)
    loaded = CVVAE.from_pretrained(tmp_path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_rejects_image_vae_with_other_depth():
    image_vae = AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with pytest.raises(ValueError, match="4 levels"):
        inflate_from_image_vae(image_vae)
