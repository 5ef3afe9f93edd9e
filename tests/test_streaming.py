"""Chunked (streaming) inference: exact cache mechanics, bounded deviation, flat memory."""

import pytest
import torch
from builders import clip_statistics, load_benchmark
from safetensors.torch import load_file

from cvvae import CVVAE, InferencePlan
from cvvae.inference.chunks import run_parts, split_encoder_input, split_time
from cvvae.inference.engine import decoder_parts, encoder_parts
from cvvae.inference.memory import PeakMemory
from cvvae.inference.plan import STATS_MODES

FLAVOURS = ["cvvae_sd21_tiny", "cvvae_sd3_tiny"]


@pytest.fixture(scope="module", params=FLAVOURS)
def reference(request, reference_dir):
    folder = reference_dir / request.param
    return CVVAE.from_pretrained(folder), load_file(folder / "reference_io.safetensors")


@torch.no_grad()
@pytest.mark.parametrize("chunk_frames", [4, 20])
def test_encoder_chunks_equal_full_pass_given_clip_statistics(reference, chunk_frames):
    """With the clip's GroupNorm statistics, chunking changes nothing: the caches are exact."""
    model, ref = reference
    x = ref["video33.input"]
    full = model.encoder.trunk(x)
    chunked = run_parts(
        encoder_parts(model.encoder, *x.shape[3:], None, 1),
        split_encoder_input(x, chunk_frames),
        "two_pass",
        full.shape[2],
        chunk_frames // 4,
        frozen=clip_statistics(model.encoder.trunk, x),
    )
    assert (chunked - full).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("chunk_latents", [1, 3])
def test_decoder_chunks_equal_full_pass_given_clip_statistics(reference, chunk_latents):
    model, ref = reference
    z = ref["video33.moments"][:, : model.config.latent_channels]
    h = model.decoder.head(z)
    full = model.decoder.trunk(h)
    chunked = run_parts(
        decoder_parts(model.decoder, 8 * h.shape[3], 8 * h.shape[4], None, 1),
        split_time(h, chunk_latents),
        "two_pass",
        full.shape[2],
        chunk_latents,
        frozen=clip_statistics(model.decoder.trunk, h),
    )
    assert (chunked - full).abs().max() < 1e-4


def _psnr(a, b):
    return (10 * torch.log10(4 / (a - b).pow(2).mean())).item()


@torch.no_grad()
@pytest.mark.parametrize("stats", STATS_MODES)
def test_streaming_is_closer_to_full_pass_than_reference_chunking(reference, stats):
    """Every statistics mode beats the released code's 16-frame windows on its own reference
    clip, for the latents and for the video decoded from them."""
    model, ref = reference
    x = ref["video33.input"]
    full, official = ref["video33.moments"], ref["video33.moments_official_chunked"]
    model.enable_tiling(plan=InferencePlan(16, 4, encode_stats=stats, decode_stats=stats))
    try:
        ours = model.encode(x).latent_dist.parameters
    finally:
        model.disable_tiling()
    assert (ours - full).abs().max() < 0.5 * (official - full).abs().max()
    c = model.config.latent_channels
    decoded_full = model.decode(full[:, :c]).sample
    assert (
        _psnr(model.decode(ours[:, :c]).sample, decoded_full)
        > _psnr(model.decode(official[:, :c]).sample, decoded_full) + 5
    )


@torch.no_grad()
def test_two_pass_latents_agree_across_chunk_sizes(reference):
    """Stated bound (random tiny reference weights, the hardest case): chunk sizes 4..32 give
    latents within 0.12 of each other and of the full pass; one chunk is the full pass."""
    model, ref = reference
    x = ref["video33.input"]
    full = model.encode(x).latent_dist.mean
    results = {}
    for frames in (4, 12, 32):
        model.enable_tiling(plan=InferencePlan(frames, encode_stats="two_pass"))
        results[frames] = model.encode(x).latent_dist.mean
    model.disable_tiling()
    assert (results[32] - full).abs().max() < 1e-5
    for a in results.values():
        assert (a - full).abs().max() < 0.12
        for b in results.values():
            assert (a - b).abs().max() < 0.12


def test_group_moments_of_a_tile_region_match_float64():
    """The streaming GroupNorm moments (float32 row sums pooled in float64) of a strided region
    with means far from zero agree with float64 ones."""
    from cvvae.inference.norms import Moments

    torch.manual_seed(0)
    x = (
        torch.randn(2, 16, 5, 70, 90) * torch.rand(1, 16, 1, 1, 1) * 3
        + torch.randn(1, 16, 1, 1, 1) * 10
    )
    region = x[..., 3:61, 7:83]  # a tile's own region: a view, not a copy
    moments = Moments.of_groups(region, groups=4)
    var, mean = torch.var_mean(region.double().reshape(2, 4, -1), dim=-1, correction=0)
    assert moments.count == 4 * 5 * 58 * 76
    assert torch.allclose(moments.mean, mean, rtol=1e-7, atol=1e-7)
    assert torch.allclose(moments.var, var, rtol=1e-6)


@torch.no_grad()
def test_streaming_encoder_memory_does_not_grow_with_length():
    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()
    model.enable_tiling(plan=InferencePlan(encode_frames=8))
    peaks = {}
    for frames in (65, 257):
        x = torch.rand(1, 3, frames, 16, 16) * 2 - 1
        with PeakMemory() as meter:
            model.encode(x)
        peaks[frames] = meter.peak_bytes
    assert peaks[257] <= 1.1 * peaks[65]
    model.disable_tiling()
    with PeakMemory() as meter:
        model.encode(x)
    assert meter.peak_bytes > 4 * peaks[257]  # the full pass grows with the clip


@torch.no_grad()
def test_streaming_decoder_memory_grows_with_chunk_not_clip():
    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()
    z = torch.randn(1, 4, 33, 4, 4)
    with PeakMemory() as full:
        model.decode(z)
    model.enable_tiling(plan=InferencePlan(decode_latents=1))
    with PeakMemory() as chunked:
        model.decode(z)
    output_bytes = 3 * 129 * 32 * 32 * 4
    assert chunked.peak_bytes - output_bytes < 0.25 * (full.peak_bytes - output_bytes)


@torch.no_grad()
def test_memory_budget_picks_chunks_and_logs(caplog):
    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()
    x = torch.rand(1, 3, 33, 32, 32) * 2 - 1
    model.set_memory_budget(0.002)
    with caplog.at_level("INFO", logger="cvvae"):
        z = model.encode(x).latent_dist.mean
    assert "-> encode:" in caplog.text and "frames per chunk" in caplog.text
    assert model.decode(z, num_frames=33).sample.shape == x.shape
    with pytest.raises(ValueError):
        model.set_memory_budget(0)


@torch.no_grad()
def test_non_finite_output_names_first_layer():
    from cvvae.inference.precision import NonFiniteError

    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()
    model.decoder.up[1].block[0].conv2.weight.data.fill_(float("inf"))
    z = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(NonFiniteError, match=r"first produced by layer 'up\.1\.block\.0\.conv2'"):
        model.decode(z)


def test_non_finite_outputs_raise_with_grad_in_eval_mode_not_in_training():
    """A NaN input reaches the caller as an error in inference with autograd on (guidance,
    notebooks); in training the trainer skips the step itself."""
    from cvvae.inference.precision import NonFiniteError

    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4).eval()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    x[0, 0, 2, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="encoder produced non-finite"):
        model.encode(x)
    z = torch.randn(1, 4, 2, 2, 2)
    z[0, 0, 1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="decoder produced non-finite"):
        model.decode(z)
    model.train()
    assert not torch.isfinite(model.decode(z).sample).all()  # returned for the trainer to judge


@torch.no_grad()
def test_peak_memory_on_meta_equals_the_real_run():
    model = CVVAE(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        mid_attention=False,
    ).eval()
    x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    peaks = []
    for device in ("cpu", "meta"):
        model.to(device)
        model.enable_tiling(plan=InferencePlan(4, 1))
        with PeakMemory() as meter:
            z = model.encode(x.to(device)).latent_dist.mean
            model.decode(z)
        peaks.append(meter.peak_bytes)
    assert peaks[0] > 0 and peaks[1] == peaks[0]


@torch.no_grad()
def test_chunk_sweep_measures_each_direction_against_its_own_full_pass(reference_dir):
    """bench_chunks: a chunk as long as the clip runs in one call and so equals the full pass of
    that direction (latents within float error; decoding the full pass's latents, not its own
    encoder's); shorter chunks with running statistics do not."""
    bench, inference = load_benchmark("bench_chunks"), load_benchmark("bench_inference")
    meter = inference.Meter(torch.device("cpu"), 1)
    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny").eval()
    x = inference.synthetic_clip(9, 32, 48)
    encode = bench.sweep(model, x, meter, "encode", [4, 8], None, 2)
    assert [row["chunk"] for row in encode] == [None, 4, 8] and encode[0]["latent_max_err"] == 0
    assert encode[2]["latent_max_err"] < 1e-4 < encode[1]["latent_max_err"]
    decode = bench.sweep(model, x, meter, "decode", [1, 3], None, 2)
    assert [row["chunk"] for row in decode] == [None, 1, 3] and decode[0]["decoded_psnr"] == float(
        "inf"
    )
    assert decode[2]["decoded_psnr"] > 80 > decode[1]["decoded_psnr"]
    assert all(row["peak_ratio"] > 0 and row["time_ratio"] > 0 for row in encode + decode)
