"""Compatibility metrics, baselines and averages on cases whose answer is known."""

import pytest
import torch
from builders import tiny_image_vae

from cvvae import CVVAE, inflate_from_image_vae
from cvvae.evaluation import (
    PSI_MODES,
    Compatibility,
    FrameScores,
    baseline_reconstructions,
    evaluate_image,
    evaluate_video,
    image_vae_on_psi,
    latent_compatibility,
    lpips_per_frame,
    psnr,
    relative_error,
    summarize_videos,
)
from cvvae.evaluation.codecs import image_decode, image_reconstruct, video_latents
from cvvae.evaluation.runner import VideoResult
from cvvae.training.lpips import LPIPS

TOL = 1e-4  # float32 round-off through the two networks (as in test_inflation.py)


@pytest.fixture(scope="module")
def image_vae():
    return tiny_image_vae()


@pytest.fixture(scope="module")
def inflated(image_vae) -> CVVAE:
    return inflate_from_image_vae(image_vae)


@pytest.fixture(scope="module")
def static_clip() -> torch.Tensor:
    frame = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return frame[:, None].expand(-1, 9, -1, -1).contiguous()


def test_inflated_model_on_a_static_clip_is_as_compatible_as_the_image_vae(
    image_vae, inflated, static_clip
):
    z = video_latents(inflated, static_clip)
    reference = image_vae_on_psi(image_vae, static_clip)
    result = latent_compatibility(image_vae, static_clip, z, reference)
    assert set(result) == set(PSI_MODES)
    own = image_reconstruct(image_vae, static_clip[:, :3])  # 3 latent frames, all the same frame
    for mode, c in result.items():
        assert c.decoded.psnr.shape == (3,), mode
        torch.testing.assert_close(c.decoded.psnr, c.image_vae.psnr, rtol=0, atol=1e-3)
        torch.testing.assert_close(c.decoded.ssim, c.image_vae.ssim, rtol=0, atol=1e-5)
        expected = 10 * torch.log10(
            4 / (own.double() - static_clip[:, :3].double()).pow(2).mean((0, 2, 3))
        )
        torch.testing.assert_close(c.image_vae.psnr, expected, rtol=0, atol=1e-3)


def test_random_video_vae_is_not_compatible(image_vae, static_clip):
    torch.manual_seed(3)
    stranger = CVVAE(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
    result = evaluate_video(static_clip, {"stranger": stranger}, image_vae)
    assert result.first_frame_error["stranger"] > 0.1


def test_image_mode_latent_error_of_an_inflated_model_is_zero(image_vae, inflated, static_clip):
    image = static_clip[:, 0]
    result = evaluate_image(image, {"inflated": inflated}, image_vae, baselines=True)
    assert result.latent_error["inflated"] < TOL
    torch.testing.assert_close(
        result.scores["inflated"].psnr, result.scores["image-vae"].psnr, rtol=0, atol=1e-3
    )
    video = evaluate_video(static_clip, {"inflated": inflated}, image_vae)
    assert video.first_frame_error["inflated"] < TOL  # a static clip: no motion to see


def test_baselines_keep_keyframes_and_count_latents(image_vae):
    clip = torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = baseline_reconstructions(image_vae, clip)
    per_frame, n = out["image-vae-per-frame"]
    assert n == 9 and per_frame.shape == clip.shape
    for name in ("uniform-repeat", "uniform-linear"):
        recon, n = out[name]
        assert n == 3 and recon.shape == clip.shape
        torch.testing.assert_close(recon[:, [0, 4, 8]], per_frame[:, [0, 4, 8]])
    repeat, linear = out["uniform-repeat"][0], out["uniform-linear"][0]
    torch.testing.assert_close(repeat[:, 1:4], per_frame[:, :1].expand(-1, 3, -1, -1))
    torch.testing.assert_close(linear[:, 2], (per_frame[:, 0] + per_frame[:, 4]) / 2)


def test_evaluate_video_scores_every_method(image_vae, inflated, static_clip):
    result = evaluate_video(static_clip, {"m": inflated}, image_vae, baselines=True)
    names = ["m", "image-vae-per-frame", "uniform-repeat", "uniform-linear"]
    assert list(result.scores) == names
    assert result.latent_frames == {
        "m": 3,
        "image-vae-per-frame": 9,
        "uniform-repeat": 3,
        "uniform-linear": 3,
    }
    for name in names:
        assert result.scores[name].psnr.shape == (9,) and result.scores[name].lpips is None
    # a static clip: every method reconstructs the same frame the image VAE does
    torch.testing.assert_close(
        result.scores["m"].psnr, result.scores["uniform-linear"].psnr, rtol=0, atol=1e-3
    )
    with pytest.raises(ValueError, match="image VAE"):
        evaluate_video(static_clip, {"m": inflated}, None, baselines=True)


def test_lpips_is_scored_for_every_method_and_latent_frame(image_vae, inflated):
    torch.manual_seed(0)
    lpips = LPIPS().eval()
    clip = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    result = evaluate_video(clip, {"m": inflated}, image_vae, lpips=lpips)
    assert result.scores["m"].lpips.shape == (5,)
    torch.testing.assert_close(
        result.scores["m"].lpips, lpips_per_frame(lpips, clip, result.reconstructions["m"])
    )
    for c in result.compatibility["m"].values():
        assert c.decoded.lpips.shape == (2,) and c.image_vae.lpips.shape == (2,)


def test_summary_averages_frames_then_clips():
    def clip(psnr_values, gap):
        scores = FrameScores(
            torch.tensor(psnr_values, dtype=torch.float64),
            torch.full((3,), 0.5, dtype=torch.float64),
        )
        own = FrameScores(scores.psnr + gap, scores.ssim)
        return VideoResult(
            {"m": scores}, {"m": 2}, {}, {"m": {"slice": Compatibility(scores, own)}}, {"m": 0.25}
        )

    summary = summarize_videos([clip([10.0, 20.0, 30.0], 1.0), clip([20.0, 20.0, 20.0], 3.0)])
    m = summary["methods"]["m"]
    assert m["psnr"] == pytest.approx(20.0) and m["ssim"] == pytest.approx(0.5)
    assert m["lpips"] is None and m["latent_frames"] == 2
    assert m["psnr_per_frame"] == pytest.approx([15.0, 20.0, 25.0])
    c = summary["compatibility"]["m"]
    assert c["first_frame_latent_error"] == 0.25
    assert c["slice"]["psnr_gap"] == pytest.approx(2.0)
    assert c["slice"]["image_vae_psnr"] == pytest.approx(22.0)


def test_relative_error():
    b = torch.tensor([3.0, 4.0])
    assert relative_error(b, b) == 0
    assert relative_error(torch.zeros(2), b) == pytest.approx(1.0)
    assert relative_error(b + torch.tensor([0.5, 0.0]), b) == pytest.approx(0.1)


def test_lpips_per_frame_matches_the_model_frame_by_frame():
    torch.manual_seed(0)
    model = LPIPS().eval()
    for lin in model.lins:  # real LPIPS heads are non-negative
        lin.weight.data.abs_()
    x = torch.rand(3, 2, 32, 32) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    values = lpips_per_frame(model, x, y)
    assert values.shape == (2,) and values.dtype == torch.float64
    with torch.no_grad():
        for t in range(2):
            expected = model(x[None, :, t], y[None, :, t]).double()[0]
            assert values[t].item() == pytest.approx(expected.item(), rel=1e-5)
    assert lpips_per_frame(model, x, x).abs().max() < 1e-6
    assert values.min() > 0


def test_each_psi_mode_scores_against_its_own_frames(image_vae):
    """psi on a 5-frame clip: first -> frames 0, 1; slice -> frames 0, 4; mean -> 0, mean(1..4)."""
    clip = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    result = latent_compatibility(image_vae, clip, z, image_vae_on_psi(image_vae, clip))
    decoded = image_decode(image_vae, z)
    targets = {
        "first": clip[:, [0, 1]],
        "slice": clip[:, [0, 4]],
        "mean": torch.stack([clip[:, 0], clip[:, 1:5].mean(1)], dim=1),
    }
    for mode, target in targets.items():
        torch.testing.assert_close(result[mode].decoded.psnr, psnr(target, decoded))
        torch.testing.assert_close(
            result[mode].image_vae.psnr, psnr(target, image_reconstruct(image_vae, target))
        )
