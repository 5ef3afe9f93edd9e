"""Loss terms, LPIPS (own VGG16, local weights), 3D PatchGAN, hinge and adaptive GAN weight,
and the latent regularization through a frozen image VAE."""

import importlib.util

import pytest
import torch
from diffusers import AutoencoderKL

from cvvae.errors import UserInputError
from cvvae.training.discriminator import (
    PatchDiscriminator3D,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from cvvae.training.latent_reg import LatentRegularization, frames_to_images, images_to_frames
from cvvae.training.losses import KLLoss, L1Loss, PerceptualLoss, weighted_sum
from cvvae.training.lpips import LPIPS, convert_lpips_weights, load_lpips, save_lpips_weights


def test_l1_and_weighted_sum():
    x, y = torch.zeros(1, 3, 5, 4, 4), torch.full((1, 3, 5, 4, 4), 0.5)
    terms = {**L1Loss()(x, y), "kl": torch.tensor(2.0)}
    assert terms["l1"].item() == pytest.approx(0.5)
    assert weighted_sum(terms, {"l1": 2.0, "kl": 0.25}).item() == pytest.approx(1.5)


def test_kl_is_zero_at_prior_and_averages_every_axis_time_included():
    mean, logvar = torch.zeros(2, 4, 3, 2, 2), torch.zeros(2, 4, 3, 2, 2)
    assert KLLoss()(mean, logvar)["kl"].item() == 0.0
    mean[:, :, 2] = 1.0  # only the last latent frame moves: 0.5 per element of a third of them
    assert KLLoss()(mean, logvar)["kl"].item() == pytest.approx(0.5 / 3)


def _random_lpips_state(seed=0):
    torch.manual_seed(seed)
    model = LPIPS()
    for lin in model.lins:
        lin.weight.data.abs_()  # LPIPS heads are non-negative
    return model.state_dict()


def test_lpips_weights_round_trip_and_zero_on_identical(tmp_path):
    state = _random_lpips_state()
    save_lpips_weights(state, tmp_path / "lpips.safetensors")
    model = load_lpips(tmp_path / "lpips.safetensors")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(a, a), torch.zeros(2))
    d = model(a, b)
    assert d.shape == (2,) and (d > 0).all()


def test_lpips_converter_maps_torchvision_and_lpips_names():
    state = _random_lpips_state(1)
    conv_index = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    vgg = {
        f"features.{n}.{k}": state[f"vgg.convs.{i}.{k}"]
        for i, n in enumerate(conv_index)
        for k in ("weight", "bias")
    }
    vgg["classifier.0.weight"] = torch.zeros(1)
    lin = {f"lin{k}.model.1.weight": state[f"lins.{k}.weight"] for k in range(5)}
    converted = convert_lpips_weights(vgg, lin)
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


def _vgg_and_heads(state):
    conv_index = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    vgg = {
        f"features.{n}.{k}": state[f"vgg.convs.{i}.{k}"]
        for i, n in enumerate(conv_index)
        for k in ("weight", "bias")
    }
    return vgg, {f"lin{k}.model.1.weight": state[f"lins.{k}.weight"] for k in range(5)}


@pytest.mark.parametrize("backbone_name", ["vgg16.pth", "vgg16.safetensors"])
def test_lpips_heads_come_from_the_installed_lpips_package(tmp_path, monkeypatch, backbone_name):
    from safetensors.torch import save_file

    state = _random_lpips_state(2)
    vgg, heads = _vgg_and_heads(state)
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported: needs torchvision')")
    torch.save(heads, package / "weights" / "v0.1" / "vgg.pth")  # as the package ships them
    backbone = tmp_path / backbone_name
    if backbone.suffix == ".pth":
        torch.save(vgg, backbone)
    else:
        save_file(vgg, str(backbone))
    if importlib.util.find_spec("lpips") is None:  # the real package is not installed here
        with pytest.raises(UserInputError, match="lpips package, which is not installed"):
            load_lpips(backbone)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = load_lpips(backbone)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_lpips_missing_or_wrong_file_is_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_lpips(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserInputError, match="missing keys"):
        load_lpips(tmp_path / "bad.safetensors")


def test_perceptual_loss_runs_per_frame_and_passes_gradients():
    torch.manual_seed(0)
    lpips = LPIPS().requires_grad_(False).eval()
    loss = PerceptualLoss(lpips)
    assert list(loss.parameters()) == []
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    value = loss(x, x_hat)["lpips"]
    per_frame = lpips(frames_to_images(x), frames_to_images(x_hat.detach())).mean()
    assert torch.allclose(value.detach(), per_frame)
    value.backward()
    assert x_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("frames", [1, 9])
def test_patch_discriminator_shapes(frames):
    disc = PatchDiscriminator3D(3, channels=8, layers=2, norm_groups=4)
    out = disc(torch.randn(2, 3, frames, 32, 32))
    assert out.shape == (2, 1, 1 if frames == 1 else 3, 8, 8)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_adaptive_weight_is_gradient_norm_ratio_at_last_layer():
    w = torch.nn.Parameter(torch.randn(4))
    nll, g = (3.0 * w).sum(), (0.5 * w).sum()
    expected = (3.0 * 2) / (0.5 * 2 + 1e-4)  # |grad| = c * sqrt(4)
    weight = adaptive_gan_weight(nll, g, w)
    assert weight.item() == pytest.approx(expected, rel=1e-6) and not weight.requires_grad
    nll.backward()  # graphs are retained for the real backward
    assert torch.equal(w.grad, torch.full((4,), 3.0))


def _image_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )


def test_frames_images_round_trip():
    x = torch.randn(2, 3, 5, 4, 4)
    assert torch.equal(images_to_frames(frames_to_images(x), 2), x)
    assert torch.equal(frames_to_images(x)[6], x[1, :, 1])


def test_image_vae_is_frozen_eval_and_outside_the_state_dict():
    vae = _image_vae()
    reg = LatentRegularization(vae).train()
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert list(reg.parameters()) == [] and reg.state_dict() == {}


def test_decoder_reg_matches_per_frame_image_decoding_and_grads_reach_latents_only():
    vae = _image_vae()
    reg = LatentRegularization(vae, psi_mode="slice")
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    latents = torch.randn(1, 4, 3, 8, 8, requires_grad=True)
    target = reg.target(video, None)
    loss = reg.decoder_reg(latents, target)["decoder_reg"]
    with torch.no_grad():
        frames = [vae.decode(latents[:, :, t]).sample for t in range(3)]
    expected = torch.stack(
        [(f - target[:, :, t]).abs().mean() for t, f in enumerate(frames)]
    ).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert latents.grad.abs().sum() > 0 and all(p.grad is None for p in vae.parameters())


def test_encoder_reg_encodes_psi_frames_with_the_image_encoder():
    vae = _image_vae()
    reg = LatentRegularization(vae, psi_mode="first", distance_kind="l2")
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = reg.encode_frames(reg.target(video, None))
    assert latents.shape == (2, 4, 2, 8, 8) and not latents.requires_grad
    with torch.no_grad():
        assert torch.allclose(
            latents[:, :, 1], vae.encode(video[:, :, 1]).latent_dist.mode(), atol=1e-6
        )
    decoded = torch.zeros_like(video, requires_grad=True)
    loss = reg.encoder_reg(video, decoded)["encoder_reg"]
    assert torch.allclose(loss, (video**2).mean())
