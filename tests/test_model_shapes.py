"""Any frame count and size in, the same frame count and size out."""

import pytest
import torch

from cvvae import CVVAE

TINY = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def model():
    return CVVAE(**TINY).eval()


@pytest.mark.parametrize("frames", list(range(1, 41)))
@torch.no_grad()
def test_any_frame_count_round_trips(model, frames):
    x = torch.rand(1, 3, frames, 12, 20) * 2 - 1
    posterior = model.encode(x).latent_dist
    assert posterior.mean.shape[2:] == model.latent_shape(frames, 12, 20)
    out = model.decode(posterior.mean, num_frames=frames, height=12, width=20).sample
    assert out.shape == x.shape


@pytest.mark.parametrize("size", [(7, 9), (8, 8), (17, 30), (33, 1)])
@torch.no_grad()
def test_any_size_round_trips(model, size):
    x = torch.rand(2, 3, 5, *size) * 2 - 1
    assert model(x).sample.shape == x.shape
    image = x[:, :, 0]
    assert model(image).sample.shape == image.shape


def test_latent_shape_formula(model):
    assert model.latent_shape(1, 8, 8) == (1, 1, 1)
    assert model.latent_shape(17, 64, 96) == (5, 8, 12)
    assert model.latent_shape(18, 65, 95) == (6, 9, 12)


@torch.no_grad()
def test_padding_repeats_last_frame(model):
    """A clip padded internally encodes like the same clip padded by hand."""
    x = torch.rand(1, 3, 6, 16, 16) * 2 - 1
    by_hand = torch.cat([x, x[:, :, -1:].expand(-1, -1, 3, -1, -1)], dim=2)
    assert torch.equal(model.encode(x).latent_dist.mean, model.encode(by_hand).latent_dist.mean)


def test_kl_sums_over_time(model):
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    posterior = model.encode(x).latent_dist
    per_element = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar)
    assert torch.allclose(posterior.kl(), per_element.sum(dim=(1, 2, 3, 4)))


def test_rejects_bad_rank(model):
    with pytest.raises(ValueError, match="expected"):
        model.encode(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("stride,padding", [((1, 1, 1), (0, 1, 1)), ((2, 2, 2), (0, 0, 0))])
def test_conv3d_matches_torch_forward_and_backward(stride, padding):
    from cvvae.models.layers import conv3d

    x = torch.randn(1, 6, 5, 9, 9, requires_grad=True)
    w = torch.randn(4, 6, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    ours = conv3d(x, w, b, stride, padding)
    grads = torch.autograd.grad(ours.square().sum(), (x, w, b))
    expected = torch.nn.functional.conv3d(x, w, b, stride, padding)
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, w, b))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_torch_compile_traces_the_model(model):
    """The CPU oneDNN route has no fake-tensor kernel; compiled code must trace F.conv3d."""
    torch._dynamo.reset()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model(x, sample_posterior=False).sample
        compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
        got = compiled(x, sample_posterior=False).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
