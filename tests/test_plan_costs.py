"""The memory planner's costs are counted on the meta device from the model itself, and the plans
a budget picks keep it: counted on meta (shapes only, nothing computed; attention as the fused
kernels allocate it), in both directions, for the bundled model and tiny models of both
flavours, at 720p."""

import logging
from pathlib import Path

import pytest
import torch

from cvvae import CVVAE, InferencePlan
from cvvae.inference.costs import plan_costs
from cvvae.inference.memory import FusedAttentionOnMeta, PeakMemory
from cvvae.inference.plan import plan_for_budget

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "cvvae" / "assets" / "model"
TINY = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1)  # the reference's tiny size
SD3 = dict(latent_channels=16, decoder_temporal_attention=False, padding_mode="replicate")
CONFIGS = {"sd21_tiny": TINY, "sd3_tiny": {**TINY, **SD3}, "sd21_full": {}, "sd3_full": SD3}


def _meta_model(name: str) -> CVVAE:
    """The named model on ``meta`` in bfloat16 (``bundled``: the bundled model's config)."""
    config = CVVAE.load_config(BUNDLED) if name == "bundled" else CONFIGS[name]
    with torch.device("meta"):
        model = CVVAE.from_config(config) if name == "bundled" else CVVAE(**config)
    return torch.nn.Module.to(model, torch.bfloat16).eval()


def _peak(model: CVVAE, direction: str, shape: tuple[int, int, int]) -> int:
    """Bytes the call peaks at on a ``(frames, height, width)`` video, counted on meta."""
    frames, height, width = shape
    if direction == "encode":
        x = torch.empty(1, 3, frames, height, width, device="meta", dtype=torch.bfloat16)
        run = lambda: model.encode(x)  # noqa: E731
    else:
        size = (model.config.latent_channels, 1 + (frames - 1) // 4, height // 8, width // 8)
        z = torch.empty(1, *size, device="meta", dtype=torch.bfloat16)
        run = lambda: model.decode(z)  # noqa: E731
    with torch.no_grad(), FusedAttentionOnMeta(), PeakMemory() as meter:
        run()
    return meter.peak_bytes


@pytest.mark.slow  # 1-2.5 minutes each on the shared 2-core CPU
@pytest.mark.parametrize("name", ["bundled", "sd21_tiny", "sd3_tiny"])
@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_budget_plans_keep_their_budget_counted_on_meta(name, direction, caplog):
    """From 60% of the full pass's peak down to 10%: whole frames in chunks, tiles in lockstep,
    tiles one at a time, each peaking within its budget and above 30% of it."""
    model, shape = _meta_model(name), (17, 720, 1280)
    model.disable_tiling()
    full = _peak(model, direction, shape)
    kinds = set()
    for share in (0.6, 0.25, 0.1):
        model.set_memory_budget(share * full / 2**30)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cvvae"):
            peak = _peak(model, direction, shape)
        assert 0.3 * share * full < peak <= share * full, (share, peak / full)
        line = caplog.text.split(f"{direction}: ")[1]
        kinds.add(
            "sequential" if "sequential" in line else "lockstep" if "tiles" in line else "chunks"
        )
    assert kinds == {"chunks", "lockstep", "sequential"}, kinds


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd21_tiny", "sd3_tiny"])
def test_estimates_match_the_counted_peaks(name):
    """Each regime's estimate is at or above the peak counted for its plan at 720p, and within
    30% of it (so budgets are kept without wasting them; lockstep is the loosest, its probe's
    four tiles lumping one tile's activations with all tiles' caches)."""
    model, shape, ratios = _meta_model(name), (17, 720, 1280), {}
    for direction, network in (("encode", model.encoder), ("decode", model.decoder)):
        costs = plan_costs(network, direction)
        cases = {
            InferencePlan(8, 2): costs.chunked_peak(shape, 8),
            InferencePlan(8, 1, 360, 360): costs.lockstep_peak(
                shape, 360, 8 if direction == "encode" else 4
            ),
            InferencePlan(4, 1, 192, 192, tile_order="sequential"): costs.sequential_peak(
                shape, 192
            ),
        }
        for plan, estimate in cases.items():
            model.enable_tiling(plan=plan)
            ratios[direction, plan.tile_order if plan.tile else "chunks"] = estimate / _peak(
                model, direction, shape
            )
    assert all(1 <= ratio <= 1.3 for ratio in ratios.values()), ratios


def test_costs_are_cached_per_architecture_and_dtype():
    """A second model of the same config reuses the probes; another dtype probes anew."""
    first, second = _meta_model("sd21_tiny"), _meta_model("sd21_tiny")
    assert plan_costs(first.decoder, "decode") is plan_costs(second.decoder, "decode")
    other = torch.nn.Module.to(second, torch.float32)
    assert plan_costs(other.decoder, "decode") is not plan_costs(first.decoder, "decode")


def test_costs_of_a_real_model_are_probed_on_a_meta_copy():
    """The probes copy no weights: the model's own parameters stay where they are."""
    model = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
    costs = plan_costs(model.encoder, "encode")
    assert all(p.device.type == "meta" for p in costs.network.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    plan = plan_for_budget(2**30, (17, 720, 1280), costs)
    assert plan.tile is None and plan.encode_frames >= 4


@pytest.mark.slow  # about a minute: the full-size networks' probes
def test_full_size_sd21_costs_are_near_the_old_hand_set_constants():
    """In the old constants' units (``C0 x H x W`` tensors, bfloat16), the counted costs of the
    full-size SD 2.1 architecture: per chunk frame about half the old ACTIVATION_COPIES (6 / 13,
    which were upper bounds: 3.2 / 7.0 counted), the fixed part near the old two cached frames
    (12.4 / 18.8 against 12 / 26), the lockstep caches near TILED_FRAMES (12.8 / 23.3 per padded
    tile pixel against 12 / 30 per frame pixel), the encoder's lockstep chunk cost near
    TILED_CHUNK_COPIES (2.9 against 3)."""
    model = _meta_model("sd21_full")
    unit = 2 * 128  # bytes of one C0 = 128 channel pixel in bfloat16
    old = {"encode": (6, 12, 12, 3), "decode": (13, 26, 30, 0)}
    for direction, network in (("encode", model.encoder), ("decode", model.decoder)):
        costs = plan_costs(network, direction)
        fixed, per_chunk, _ = (value / unit for value in costs.chunked)
        tiled, tiled_chunk = (value / unit for value in costs.lockstep)
        copies, cached, frames, chunk_copies = old[direction]
        assert 0.45 * copies < per_chunk < 0.6 * copies, per_chunk
        assert 0.7 * cached < fixed < 1.1 * cached, fixed
        assert 0.75 * frames < tiled < 1.1 * frames, tiled
        assert tiled_chunk == pytest.approx(chunk_copies, abs=0.2), tiled_chunk
