"""Spatial tiles with halos: exact under shared statistics, and no seams."""

import functools

import pytest
import torch
from builders import clip_statistics, load_benchmark

from cvvae import CVVAE
from cvvae.inference.streaming import (
    run_trunk_tiled,
    split_encoder_input,
    split_time,
    tile_statistics,
)
from cvvae.inference.tiling import decoder_halo, encoder_halo, tile_grid


def _models(reference_dir):
    yield CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    yield CVVAE.from_pretrained(reference_dir / "cvvae_sd3_tiny")
    torch.manual_seed(0)  # two ResNet blocks per level, as in the released full-size models
    yield CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=2, norm_num_groups=4,
                padding_mode="replicate").eval()


@pytest.mark.parametrize("height,width,tile,align", [(720, 1280, 360, 8), (720, 1280, 640, 8), (90, 160, 45, 1),
                                                     (96, 224, 64, 8), (64, 64, 64, 8)])
def test_tile_grid_covers_the_frame_once_with_near_equal_tiles(height, width, tile, align):
    halo = 20
    tiles = tile_grid(height, width, tile, halo, align)
    assert len(tiles) == -(-height // tile) * -(-width // tile)
    cover = torch.zeros(height, width, dtype=torch.int)
    for t in tiles:
        cover[t.own] += 1
        for axis, size in enumerate((height, width)):
            own, padded = t.own[axis], t.padded[axis]
            assert own.stop - own.start <= tile and own.start % align == 0
            assert padded.start == max(0, own.start - 24 if align == 8 else own.start - halo)
            assert padded.stop == min(size, own.stop + (24 if align == 8 else halo))
    assert (cover == 1).all()
    rows = {t.own[0].stop - t.own[0].start for t in tiles}
    cols = {t.own[1].stop - t.own[1].start for t in tiles}
    assert max(rows) - min(rows) <= align and max(cols) - min(cols) <= align


@torch.no_grad()
def test_tiles_with_halos_equal_the_full_pass_given_clip_statistics(reference_dir):
    for model in _models(reference_dir):
        blocks = len(model.encoder.down[0].block)
        x = torch.rand(1, 3, 9, 96, 224) * 2 - 1
        full = model.encoder.trunk(x)
        tiles = tile_grid(96, 224, 64, encoder_halo(blocks), align=8)
        assert len(tiles) == 8
        split = functools.partial(split_encoder_input, chunk_frames=4)
        tiled = run_trunk_tiled(model.encoder.trunk, x, split, full.shape[2], 1, tiles, (1, 8),
                                frozen=clip_statistics(model.encoder.trunk, x))
        assert (tiled - full).abs().max() < 1e-4

        h = model.decoder.head(torch.randn(1, model.config.latent_channels, 3, 12, 28))
        full = model.decoder.trunk(h)
        tiles = tile_grid(12, 28, 8, decoder_halo(blocks), align=1)
        tiled = run_trunk_tiled(model.decoder.trunk, h, functools.partial(split_time, chunk_frames=1),
                                full.shape[2], 1, tiles, (8, 1), frozen=clip_statistics(model.decoder.trunk, h))
        assert (tiled - full).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("folder,order", [("cvvae_sd21_tiny", "sequential"), ("cvvae_sd3_tiny", "sequential"),
                                          ("cvvae_sd21_tiny", "lockstep")])
def test_tile_borders_are_no_worse_than_tile_interiors(reference_dir, folder, order):
    """With the default (estimated) statistics, the error against the full pass comes from the
    statistics, which all tiles share: it is not larger along the seams."""
    model = CVVAE.from_pretrained(reference_dir / folder)
    x = torch.rand(1, 3, 17, 128, 256) * 2 - 1
    full = model.encode(x).latent_dist.mean
    model.enable_tiling(encode_frames=8, tile_size=64, tile_order=order)
    tiled = model.encode(x).latent_dist.mean
    model.disable_tiling()
    error = (tiled - full).abs().mean(dim=(0, 1, 2))  # (h, w) latent map
    seams = torch.zeros_like(error, dtype=torch.bool)
    seams[7:9, :] = True  # tile borders every 64 px = 8 latent px: one row border ...
    for edge in (8, 16, 24):  # ... and three column borders
        seams[:, edge - 1 : edge + 1] = True
    assert error.max() > 0  # the statistics are estimated, not exact
    assert error[seams].mean() <= 1.1 * error[~seams].mean()


@torch.no_grad()
def test_lockstep_tile_statistics_are_closer_to_the_clip_statistics(reference_dir):
    """Two tiles that differ (flat dark left, bright noise right): one after the other, the first
    tile is normalised with its own statistics only and biases the pooled ones; advancing in
    lockstep, both are normalised with statistics of the whole frame after the first chunk."""
    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 17, 64, 128) * 2 - 1
    x[..., :64] = x[..., :64] * 0.1 - 0.8
    h = model.decoder.head(torch.cat([torch.randn(1, 4, 5, 8, 8) * 0.1, torch.randn(1, 4, 5, 8, 8) * 2], dim=-1))
    cases = [
        (model.encoder.trunk, x, functools.partial(split_encoder_input, chunk_frames=4), 5, 2,
         tile_grid(64, 128, 64, encoder_halo(1), align=8)),
        (model.decoder.trunk, h, functools.partial(split_time, chunk_frames=1), 17, 1,
         tile_grid(8, 16, 8, decoder_halo(1), align=1)),
    ]
    for trunk, clip, split, out_frames, per_call, tiles in cases:
        assert len(tiles) == 2
        exact = clip_statistics(trunk, clip)

        def worst_variance_error(stats, exact=exact):
            return max(((stats[norm][1] - var).abs() / var).max().item() for norm, (_, var) in exact.items())

        errors = {order: worst_variance_error(tile_statistics(trunk, clip, split, out_frames, per_call, tiles, order))
                  for order in ("sequential", "lockstep")}
        assert errors["lockstep"] < 0.5 * errors["sequential"], errors


def test_tile_order_is_checked():
    from cvvae.inference.planner import ChunkPlan

    with pytest.raises(ValueError, match="tile_order"):
        ChunkPlan(tile_size=128, tile_order="random")


def test_memory_budget_tiles_the_frame_when_a_chunk_does_not_fit():
    from cvvae.inference.planner import describe_plan, plan_for_budget

    plan = plan_for_budget(2 * 2**30, 33, 720, 1280, 128, 512, 4, "decode", 2)
    assert plan.tile_size is not None and 64 <= plan.tile_size < 720
    assert f"spatial tiles of {plan.tile_size} px" in describe_plan(plan, "decode")
    assert plan_for_budget(64 * 2**30, 33, 720, 1280, 128, 512, 4, "decode", 2).tile_size is None


@torch.no_grad()
def test_tile_statistics_study_counts_own_regions_exactly(reference_dir):
    """benchmarks/tile_statistics.py: tiles with full halos, counting only their own regions,
    see exactly the full pass's activations, so under the clip's statistics they pool to them;
    the study's ``exact`` alternative is the clip's statistics."""
    from cvvae.inference.streaming import StreamState, chunk_calls, drain

    study = load_benchmark("tile_statistics")
    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    x = torch.rand(1, 3, 9, 96, 160) * 2 - 1
    exact = clip_statistics(model.encoder.trunk, x)
    trunk = study.Trunk(model.encoder.trunk, x, functools.partial(split_encoder_input, chunk_frames=4), 3, 2,
                        64, encoder_halo(1), 8, (1, 8))
    totals: dict = {}
    drain([chunk_calls(trunk.trunk, trunk.split(x[..., tile.padded[0], tile.padded[1]]),
                       study.OwnRegionState(tile, "frozen", frozen_stats=exact, max_latents=2, totals=totals), 3)
           for tile in trunk.halo_tiles(1.0)], "sequential")
    pooled = StreamState("running", totals=totals).clip_stats()
    one_call = study.ALTERNATIVES["exact"](trunk)  # the study's lower bound: the clip's statistics
    for estimate in (pooled, one_call):
        assert estimate.keys() == exact.keys()
        for norm, (mean, var) in exact.items():
            torch.testing.assert_close(estimate[norm][0], mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(estimate[norm][1], var, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("folder", ["cvvae_sd21_tiny", "cvvae_sd3_tiny"])
def test_memory_budget_is_kept_counted_on_meta(reference_dir, folder, monkeypatch):
    """The plan a budget picks peaks within it, for both directions (counted on the meta device,
    where the model allocates shapes only, with attention counted as the fused kernels
    allocate it); the full pass needs two to three times this budget."""
    import torch.nn.functional as F

    from cvvae.inference.memory import PeakMemory

    bench = load_benchmark("bench_inference")
    monkeypatch.setattr(F, "scaled_dot_product_attention", F.scaled_dot_product_attention)  # restored after
    bench.count_fused_attention_on_meta()

    model = torch.nn.Module.to(CVVAE.from_pretrained(reference_dir / folder), "meta", torch.bfloat16).eval()
    x = torch.empty(1, 3, 9, 360, 640, device="meta", dtype=torch.bfloat16)
    z = torch.empty(1, model.config.latent_channels, 3, 45, 80, device="meta", dtype=torch.bfloat16)
    gib = 0.3
    model.set_memory_budget(gib)
    for run in (lambda: model.encode(x), lambda: model.decode(z)):
        with PeakMemory() as meter:
            run()
        assert 0 < meter.peak_bytes <= gib * 2**30, (gib, meter.peak_bytes / 2**30)
    model.disable_tiling()
