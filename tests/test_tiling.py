"""Spatial tiles with halos at the high-resolution levels: exact under shared statistics, and no seams."""

import logging

import pytest
import torch
from builders import clip_statistics, load_benchmark

from cvvae import CVVAE, InferencePlan
from cvvae.inference.chunks import run_parts, split_encoder_input, split_time
from cvvae.inference.engine import decoder_parts, encoder_parts
from cvvae.inference.tiling import Tile, tile_grid


def _models(reference_dir):
    yield CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    yield CVVAE.from_pretrained(reference_dir / "cvvae_sd3_tiny")
    torch.manual_seed(0)  # two ResNet blocks per level, as in the released full-size models
    yield CVVAE(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        padding_mode="replicate",
    ).eval()


@pytest.mark.parametrize(
    "height,width,tile,align",
    [(720, 1280, 360, 8), (720, 1280, 640, 8), (90, 160, 45, 1), (96, 224, 64, 8), (64, 64, 64, 8)],
)
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
@pytest.mark.parametrize(
    "levels,order",
    [(1, "lockstep"), (2, "lockstep"), (3, "lockstep"), (4, "lockstep"), (2, "sequential")],
)
def test_tiles_with_halos_equal_the_full_pass_given_clip_statistics(reference_dir, levels, order):
    """The first ``levels`` encoder levels (last decoder levels) by tiles with halos, the rest on
    whole frames, chunk by chunk, in either tile order: with the clip's statistics, exactly the
    full pass."""
    for model in _models(reference_dir):
        x = torch.rand(1, 3, 9, 96, 224) * 2 - 1
        full = model.encoder.trunk(x)
        parts = encoder_parts(model.encoder, 96, 224, (64, 64), levels)
        assert len(parts[0][1]) == 8 and len(parts) == (1 if levels == 4 else 2)
        tiled = run_parts(
            parts,
            split_encoder_input(x, 4),
            "two_pass",
            full.shape[2],
            2,
            frozen=clip_statistics(model.encoder.trunk, x),
            order=order,
        )
        assert (tiled - full).abs().max() < 1e-4

        h = model.decoder.head(torch.randn(1, model.config.latent_channels, 3, 12, 28))
        full = model.decoder.trunk(h)
        parts = decoder_parts(model.decoder, 96, 224, (64, 64), levels)
        assert len(parts[-1][1]) == 8
        tiled = run_parts(
            parts,
            split_time(h, 1),
            "two_pass",
            full.shape[2],
            1,
            frozen=clip_statistics(model.decoder.trunk, h),
            order=order,
        )
        assert (tiled - full).abs().max() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("levels", [1, 2])
def test_halos_are_as_wide_as_the_tiled_levels_reach(reference_dir, levels, monkeypatch):
    """One alignment step less halo (tiling.encoder_halo / decoder_halo) and the tiles'
    own regions are no longer exact: the halos are not wider than they need to be."""
    from cvvae.inference import engine, tiling

    model = list(_models(reference_dir))[-1]  # two ResNet blocks per level
    monkeypatch.setattr(engine, "encoder_halo", lambda *a: tiling.encoder_halo(*a) - 2**levels)
    monkeypatch.setattr(engine, "decoder_halo", lambda *a: tiling.decoder_halo(*a) - 1)
    x = torch.rand(1, 3, 9, 96, 224) * 2 - 1
    full = model.encoder.trunk(x)
    tiled = run_parts(
        encoder_parts(model.encoder, 96, 224, (64, 64), levels),
        split_encoder_input(x, 4),
        "two_pass",
        full.shape[2],
        2,
        frozen=clip_statistics(model.encoder.trunk, x),
    )
    assert (tiled - full).abs().max() > 1e-3
    h = model.decoder.head(torch.randn(1, model.config.latent_channels, 3, 12, 28))
    full = model.decoder.trunk(h)
    tiled = run_parts(
        decoder_parts(model.decoder, 96, 224, (64, 64), levels),
        split_time(h, 1),
        "two_pass",
        full.shape[2],
        1,
        frozen=clip_statistics(model.decoder.trunk, h),
    )
    assert (tiled - full).abs().max() > 1e-4


def _seams(error: torch.Tensor, every: int) -> torch.Tensor:
    """Mask of the two-pixel bands around tile borders every ``every`` pixels of an ``(h, w)`` map."""
    seams = torch.zeros_like(error, dtype=torch.bool)
    for axis in (0, 1):
        for edge in range(every, error.shape[axis], every):
            seams.narrow(axis, edge - 1, 2).fill_(True)
    return seams


@torch.no_grad()
@pytest.mark.parametrize(
    "folder,levels,stats",
    [
        ("cvvae_sd21_tiny", 2, "two_pass"),
        ("cvvae_sd3_tiny", 2, "two_pass"),
        ("cvvae_sd21_tiny", 1, "running"),
        ("cvvae_sd3_tiny", 2, "running"),
    ],
)
def test_tile_borders_are_no_worse_than_tile_interiors(reference_dir, folder, levels, stats):
    """With estimated statistics the error against the full pass comes from the statistics: along
    the tile borders it is no larger, relative to the tile interiors, than the untiled chunked
    pass's error at the same places (the error is not spatially uniform), in the latents and in
    the decoded video. (With an encoder halo 4 px too narrow, sd21_tiny's latent borders go from
    1.10x to 1.30x the interiors' error, against 1.10x untiled.)"""
    model = CVVAE.from_pretrained(reference_dir / folder)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 17, 128, 256) * 2 - 1
    full = model.encode(x).latent_dist.mean
    full_video = model.decode(full).sample
    border_ratio = {}
    for tile in (None, 64):
        size = dict(tile_height=tile, tile_width=tile) if tile else {}
        model.enable_tiling(
            plan=InferencePlan(
                8, 1, **size, tile_levels=levels, encode_stats=stats, decode_stats=stats
            )
        )
        latent_error = (
            (model.encode(x).latent_dist.mean - full).abs().mean(dim=(0, 1, 2))
        )  # (h, w) map
        video_error = (model.decode(full).sample - full_video).abs().mean(dim=(0, 1, 2))
        assert latent_error.max() > 0 and video_error.max() > 0  # the statistics are estimated
        border_ratio[tile] = [
            error[_seams(error, every)].mean() / error[~_seams(error, every)].mean()
            for error, every in ((latent_error, 8), (video_error, 64))
        ]  # 64-px tiles
    model.disable_tiling()
    for tiled, untiled in zip(border_ratio[64], border_ratio[None], strict=True):
        assert tiled <= 1.05 * untiled, border_ratio


@torch.no_grad()
def test_tiles_count_statistics_over_their_own_regions(reference_dir):
    """Each tile counts only its own region, so a tiled pass pools as many values per norm as
    the whole frame; the first norm sees the input conv's output, which no statistics touch,
    so its clip moments are exact."""
    from cvvae.inference.chunks import lockstep_pass

    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    x = torch.rand(1, 3, 9, 96, 160) * 2 - 1
    exact = clip_statistics(model.encoder.trunk, x)
    for levels in (1, 2):
        calls, totals = lockstep_pass(
            encoder_parts(model.encoder, 96, 160, (48, 48), levels),
            split_encoder_input(x, 4),
            "running",
            2,
        )
        for _ in calls:
            pass
        untiled_calls, untiled = lockstep_pass(
            encoder_parts(model.encoder, 96, 160, None, 1), split_encoder_input(x, 4), "running", 2
        )
        for _ in untiled_calls:
            pass
        assert {norm: m.count for norm, m in totals.items()} == {
            norm: m.count for norm, m in untiled.items()
        }
        first = model.encoder.down[0].block[0].norm1
        torch.testing.assert_close(totals[first].mean, exact[first][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(totals[first].var, exact[first][1], rtol=1e-5, atol=1e-6)


def test_own_part_crops_the_own_region_at_any_scale():
    tile = Tile((slice(16, 32), slice(0, 24)), (slice(8, 40), slice(0, 32)))
    for scale in (1, 2, 4):
        rows = torch.arange(32 * scale).view(-1, 1).expand(-1, 32 * scale)
        cols = torch.arange(32 * scale).view(1, -1).expand(32 * scale, -1)
        own = tile.own_part(torch.stack([rows, cols]))
        assert own[0, :, 0].tolist() == list(range(8 * scale, 24 * scale))
        assert own[1, 0, :].tolist() == list(range(0, 24 * scale))


def test_tile_levels_are_checked():
    with pytest.raises(ValueError, match="tile_levels"):
        InferencePlan(tile_height=128, tile_width=128, tile_levels=0)
    with pytest.raises(ValueError, match="together"):
        InferencePlan(tile_height=128)


def test_memory_budget_tiles_the_frame_when_a_chunk_does_not_fit(reference_dir):
    from cvvae.inference.costs import plan_costs
    from cvvae.inference.plan import describe_plan, plan_for_budget

    model = CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny")
    costs = plan_costs(model.decoder, "decode")
    plan = plan_for_budget(4 * 2**30, (33, 720, 1280), costs)
    assert plan.tile_height is not None and 64 <= plan.tile_height < 720
    size = f"{plan.tile_height}x{plan.tile_width}"
    assert f"spatial tiles of {size} px" in describe_plan(plan, "decode")
    assert plan_for_budget(64 * 2**30, (33, 720, 1280), costs).tile is None


@torch.no_grad()
def test_memory_budget_left_over_buys_longer_encoder_chunks(reference_dir, monkeypatch, caplog):
    """With tiles in lockstep, what the budget leaves above their caches goes to longer encoder
    chunks (closer statistics), up to the whole clip, and the counted peak (meta device, fused
    attention) stays within it."""
    import torch.nn.functional as F

    from cvvae.inference.memory import PeakMemory

    monkeypatch.setattr(
        F, "scaled_dot_product_attention", F.scaled_dot_product_attention
    )  # restored after
    load_benchmark("bench_inference").count_fused_attention_on_meta()
    model = torch.nn.Module.to(
        CVVAE.from_pretrained(reference_dir / "cvvae_sd21_tiny"), "meta", torch.bfloat16
    ).eval()
    x = torch.empty(1, 3, 33, 360, 640, device="meta", dtype=torch.bfloat16)
    chunks = []
    for gib in (0.2, 0.24, 0.28):  # below that, tiles one at a time; above, whole frames
        caplog.clear()
        model.set_memory_budget(gib)
        with caplog.at_level(logging.INFO, logger="cvvae"), PeakMemory() as meter:
            model.encode(x)
        assert 0 < meter.peak_bytes <= gib * 2**30, (gib, meter.peak_bytes / 2**30)
        assert "spatial tiles" in caplog.text and "(lockstep)" in caplog.text
        chunks.append(int(caplog.text.split("encode: ")[1].split(" frames per chunk")[0]))
    assert chunks[0] < chunks[1] < chunks[2] <= 32, chunks
    model.disable_tiling()


@torch.no_grad()
@pytest.mark.parametrize("folder", ["cvvae_sd21_tiny", "cvvae_sd3_tiny"])
def test_memory_budget_is_kept_counted_on_meta(reference_dir, folder, monkeypatch, caplog):
    """The plan a budget picks peaks within it, for both directions (counted on the meta device,
    where the model allocates shapes only, with attention counted as the fused kernels
    allocate it); the full pass needs more (twice, to decode). Tiles advance together while
    their caches fit, one at a time below that; a budget below what 64-px tiles need one at a
    time is not kept, and says so."""
    import torch.nn.functional as F

    from cvvae.inference.memory import PeakMemory

    bench = load_benchmark("bench_inference")
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", F.scaled_dot_product_attention
    )  # restored after
    bench.count_fused_attention_on_meta()

    model = torch.nn.Module.to(
        CVVAE.from_pretrained(reference_dir / folder), "meta", torch.bfloat16
    ).eval()
    x = torch.empty(1, 3, 9, 360, 640, device="meta", dtype=torch.bfloat16)
    z = torch.empty(1, model.config.latent_channels, 3, 45, 80, device="meta", dtype=torch.bfloat16)
    for gib, order in ((0.45, "lockstep"), (0.15, "sequential")):
        caplog.clear()
        model.set_memory_budget(gib)
        with caplog.at_level(logging.INFO, logger="cvvae"):
            for run in (lambda: model.encode(x), lambda: model.decode(z)):
                with PeakMemory() as meter:
                    run()
                assert 0 < meter.peak_bytes <= gib * 2**30, (gib, meter.peak_bytes / 2**30)
        assert (
            f"decode: 1 latent frames per chunk, {'running' if order == 'lockstep' else 'two_pass'} statistics, "
            f"spatial tiles"
            in caplog.text
            and f"({order})" in caplog.text
        )
        assert "below what" not in caplog.text
    model.set_memory_budget(0.02)
    with caplog.at_level(logging.WARNING, logger="cvvae"):
        model.decode(z)
    assert "memory budget 0.02 GiB is below what 64-px tiles need to decode" in caplog.text
    model.disable_tiling()


@torch.no_grad()
@pytest.mark.parametrize("folder", ["cvvae_sd21_tiny", "cvvae_sd3_tiny"])
def test_enable_tiling_without_arguments_keeps_720p_within_a_quarter(
    reference_dir, folder, monkeypatch
):
    """``enable_tiling()`` as a diffusers user calls it: 17x720p peaks at most a quarter of the
    full pass's memory in both directions (counted on the meta device, fused attention)."""
    import torch.nn.functional as F

    from cvvae.inference.memory import PeakMemory

    monkeypatch.setattr(F, "scaled_dot_product_attention", F.scaled_dot_product_attention)
    load_benchmark("bench_inference").count_fused_attention_on_meta()
    model = torch.nn.Module.to(
        CVVAE.from_pretrained(reference_dir / folder), "meta", torch.bfloat16
    ).eval()
    x = torch.empty(1, 3, 17, 720, 1280, device="meta", dtype=torch.bfloat16)
    z = torch.empty(
        1, model.config.latent_channels, 5, 90, 160, device="meta", dtype=torch.bfloat16
    )
    peaks = {}
    for tiled in (False, True):
        model.enable_tiling() if tiled else model.disable_tiling()
        for name, run in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(z))):
            with PeakMemory() as meter:
                run()
            peaks[name, tiled] = meter.peak_bytes
    model.disable_tiling()
    for name in ("encode", "decode"):
        assert 0 < peaks[name, True] <= 0.25 * peaks[name, False], peaks
