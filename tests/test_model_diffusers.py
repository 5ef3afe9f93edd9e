"""The diffusers VAE contract: what code written for AutoencoderKL / AutoencoderKLWan calls."""

import pytest
import torch
from diffusers.models.autoencoders.vae import (
    AutoencoderMixin,
    DecoderOutput,
    DiagonalGaussianDistribution,
)
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from cvvae import CVVAE, InferencePlan, UserInputError

TINY = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CVVAE(**TINY).eval()


def test_diffusers_classes_and_attributes(model):
    assert isinstance(model, AutoencoderMixin)
    assert (model.spatial_compression_ratio, model.temporal_compression_ratio) == (8, 4)
    assert model.use_tiling is False and model.use_slicing is False
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model.encode(x)
        assert isinstance(out, AutoencoderKLOutput)
        assert isinstance(out.latent_dist, DiagonalGaussianDistribution)
        decoded = model.decode(out.latent_dist.mode())
        assert isinstance(decoded, DecoderOutput) and decoded.sample.shape == x.shape
        assert isinstance(model(x), DecoderOutput)
        (posterior,) = model.encode(x, return_dict=False)
        (video,) = model.decode(posterior.mode(), False)
        (again,) = model(x, False, False)
    assert torch.equal(video, decoded.sample) and torch.equal(again, video)


@torch.no_grad()
def test_decode_second_positional_argument_is_return_dict(model):
    """``decode(z, False)`` is ``return_dict=False`` as in diffusers, not a frame count; the
    sizes are keyword-only and checked: at least 1, at most the decoded size, not a bool."""
    z = torch.randn(1, 4, 3, 2, 2)
    (video,) = model.decode(z, False)
    assert video.shape == (1, 3, 9, 16, 16)
    assert model.decode(z, num_frames=7, height=15, width=9).sample.shape == (1, 3, 7, 15, 9)
    with pytest.raises(TypeError):
        model.decode(z, True, 7)
    for kwargs, match in [
        (dict(num_frames=False), "num_frames must be an int"),
        (dict(num_frames=0), r"num_frames must be between 1 and 9.*got 0"),
        (dict(num_frames=-1), r"between 1 and 9"),
        (dict(num_frames=100), r"between 1 and 9.*got 100"),
        (dict(height=-8), r"height must be between 1 and 16"),
        (dict(width=2.5), "width must be an int"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.decode(z, **kwargs)


@torch.no_grad()
def test_wrong_inputs_raise_value_errors_naming_expected_and_given(model):
    with pytest.raises(ValueError, match=r"4 channels.*got shape \(1, 3, 2, 2, 2\)"):
        model.decode(torch.randn(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match=r"3 channels.*got shape \(1, 4, 5, 8, 8\)"):
        model.encode(torch.randn(1, 4, 5, 8, 8))
    with pytest.raises(ValueError, match="float16 but the model is torch.float32"):
        model.decode(torch.randn(1, 4, 2, 2, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="empty"):
        model.encode(torch.randn(1, 3, 0, 8, 8))
    assert issubclass(UserInputError, ValueError)


@torch.no_grad()
def test_forward_argument_order_matches_autoencoder_kl(model):
    """``forward(sample, sample_posterior, return_dict, generator)``."""
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    a = model(x, True, True, torch.Generator().manual_seed(1)).sample
    b = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(1)).sample
    assert torch.equal(a, b) and not torch.equal(a, model(x).sample)


@torch.no_grad()
def test_slicing_runs_one_sample_at_a_time_with_the_same_result(model):
    x = torch.rand(3, 3, 5, 16, 16) * 2 - 1
    calls = []
    handle = model.encoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        whole = model.encode(x).latent_dist.mean
        model.enable_slicing()
        sliced = model.encode(x).latent_dist.mean
        video = model.decode(sliced).sample
        model.disable_slicing()
    finally:
        handle.remove()
    assert calls == [3, 1, 1, 1]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(video, model.decode(whole).sample, rtol=1e-5, atol=1e-5)


def test_kl_sums_over_every_latent_axis_unlike_diffusers_base_class(model):
    """diffusers' KL sums axes 1-3 only, leaving the width of video latents unsummed; ours sums
    all of them (training uses its own KL term too, training/losses.py)."""
    torch.manual_seed(0)
    moments = torch.randn(2, 8, 3, 4, 5)
    ours = model.encode(torch.rand(2, 3, 9, 32, 40) * 2 - 1).latent_dist
    assert ours.kl().shape == (2,)
    from cvvae import DiagonalGaussian

    posterior, base = DiagonalGaussian(moments), DiagonalGaussianDistribution(moments)
    per_element = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar)
    assert torch.allclose(posterior.kl(), per_element.sum(dim=(1, 2, 3, 4)))
    assert base.kl().shape == (2, 5)  # the reason for the subclass
    sample = posterior.sample(torch.Generator().manual_seed(0))
    assert posterior.nll(sample).shape == (2,)
    image = DiagonalGaussian(moments[:, :, 0])
    assert torch.allclose(image.kl(), DiagonalGaussianDistribution(moments[:, :, 0]).kl())


def test_forward_hook_as_model_cpu_offload_attaches_fires_on_encode_and_decode(model):
    """enable_model_cpu_offload attaches an accelerate hook to each component and relies on
    ``apply_forward_hook`` to run its ``pre_forward`` before encode/decode."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    seen = []

    class Record(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            seen.append(type(module).__name__)
            return args, kwargs

    add_hook_to_module(model, Record())
    try:
        with torch.no_grad():
            z = model.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1).latent_dist.mode()
            assert seen == ["CVVAE"]
            model.decode(z)
            assert seen == ["CVVAE", "CVVAE"]
    finally:
        remove_hook_from_module(model)


def test_enable_tiling_takes_diffusers_names_and_bounds_images_too(model):
    z = torch.randn(1, 4, 24, 24)  # a 192 x 192 image's latents
    with torch.no_grad():
        full = model.decode(z).sample
        model.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=96)
        assert model.use_tiling and model.tile_sample_min_height == 64
        tiled = model.decode(z).sample
        model.disable_tiling()
    assert tiled.shape == full.shape == (1, 3, 192, 192)
    assert 0 < (tiled - full).abs().max() < 1  # estimated statistics, not the full pass
    with pytest.raises(ValueError, match="tile_sample_min_height"):
        model.enable_tiling(tile_sample_min_height=10)
    with pytest.raises(ValueError, match="not both"):
        model.enable_tiling(64, plan=InferencePlan())
    assert not model.use_tiling


def test_image_tiles_bound_memory(model):
    from cvvae.inference.memory import PeakMemory

    x = torch.rand(1, 3, 256, 384) * 2 - 1
    peaks = []
    with torch.no_grad():
        for tiled in (False, True):
            model.enable_tiling(64, 64) if tiled else model.disable_tiling()
            with PeakMemory() as meter:
                model.decode(model.encode(x).latent_dist.mode())
            peaks.append(meter.peak_bytes)
    model.disable_tiling()
    assert peaks[1] < 0.5 * peaks[0], peaks


def test_from_pretrained_passes_or_refuses_diffusers_arguments(tmp_path, model):
    model.save_pretrained(tmp_path / "m", variant="fp16")
    assert (tmp_path / "m" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded, info = CVVAE.from_pretrained(
        tmp_path / "m",
        variant="fp16",
        torch_dtype=torch.bfloat16,
        device_map="cpu",
        low_cpu_mem_usage=True,
        use_safetensors=None,
        max_memory=None,
        quantization_config=None,
        output_loading_info=True,
    )
    assert loaded.dtype == torch.bfloat16 and info["missing_keys"] == []
    with pytest.raises(UserInputError, match="no diffusion_pytorch_model.safetensors"):
        CVVAE.from_pretrained(tmp_path / "m")  # only the variant was written
    for kwargs, match in [
        (dict(quantization_config=object()), "does not support quantization_config"),
        (dict(device_map="auto"), "one device"),
        (dict(use_safetensors=False), "safetensors"),
        (dict(revison="main"), "unknown argument 'revison'"),
    ]:
        with pytest.raises(ValueError, match=match):
            CVVAE.from_pretrained(tmp_path / "m", variant="fp16", **kwargs)
    with pytest.raises(ValueError, match="does not push to the Hub"):
        model.save_pretrained(tmp_path / "n", push_to_hub=True)
    with pytest.raises(ValueError, match="safetensors"):
        model.save_pretrained(tmp_path / "n", safe_serialization=False)
    assert not (tmp_path / "n").exists()
    model.save_pretrained(tmp_path / "n", is_main_process=False)
    assert not (tmp_path / "n").exists()


def test_mistyped_local_path_is_not_mistaken_for_a_hub_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="no such model folder"):
        CVVAE.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserInputError, match="no local folder 'models/vae3d'.*check the path"):
        CVVAE.from_pretrained("models/vae3d", local_files_only=True)
